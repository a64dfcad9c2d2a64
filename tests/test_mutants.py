"""Mutation tests for the three claims that take a candidate implementation.

Each mutant is a plausible wrong formula (sign errors, missing or extra factors,
the paper's misprint, transposes, a bound that is too loose or too tight, float32
arithmetic, clamping, ...). ``claim.check(candidate=mutant)`` must return at least
one failing CheckResult for every mutant; correct alternative implementations
(different algebra, numpy) must pass every result, so the checks are not merely
strict. Run with ``pytest tests/test_mutants.py -q``; ``-rA`` lists which method
caught each mutant.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gracheck.claims import get


def _eye(M: torch.Tensor) -> torch.Tensor:
    return torch.eye(M.shape[-1], dtype=M.dtype)


def _mT(M: torch.Tensor) -> torch.Tensor:
    return M.transpose(-1, -2)


def _sqnorms(J: torch.Tensor) -> torch.Tensor:
    return (J * J).sum(-2)  # ‖J[:, i]‖², [..., d]


def _A(J, beta):
    return torch.eye(J.shape[-1], dtype=J.dtype) + _mT(J) @ J / beta


def _gap_from(AS: torch.Tensor, beta, factor=0.5, d_term=True):
    d = AS.shape[-1]
    tr = torch.diagonal(AS, dim1=-2, dim2=-1).sum(-1)
    return factor * beta * (tr - torch.linalg.slogdet(AS)[1] - (d if d_term else 0))


def _clamp_eig(Sigma: torch.Tensor, hi: float) -> torch.Tensor:
    lam, V = torch.linalg.eigh(Sigma)
    return (V * lam.clamp(max=hi).unsqueeze(-2)) @ _mT(V)


def _psd_projection_H(H: torch.Tensor) -> torch.Tensor:
    lam, V = torch.linalg.eigh(H)
    return (V * lam.clamp(max=0).unsqueeze(-2)) @ _mT(V)


# ---------------------------------------------------------------- eq9: candidate(H, beta) -> Σ*

EQ9_MUTANTS = {
    "no-inverse": lambda H, b: _eye(H) - H / b,
    "sign-of-H-flipped": lambda H, b: torch.linalg.inv(_eye(H) + H / b),
    "H-over-beta-squared": lambda H, b: torch.linalg.inv(_eye(H) - H / b**2),
    "beta-times-H": lambda H, b: torch.linalg.inv(_eye(H) - b * H),
    "missing-1/beta": lambda H, b: torch.linalg.inv(_eye(H) - H),
    "half-H": lambda H, b: torch.linalg.inv(_eye(H) - H / (2 * b)),
    "extra-beta-factor": lambda H, b: b * torch.linalg.inv(_eye(H) - H / b),
    "missing-beta-factor": lambda H, b: torch.linalg.inv(b * _eye(H) - H),
    "inverse-of-diagonal-only": lambda H, b: torch.diag_embed(1.0 / (1.0 - torch.diagonal(H, dim1=-2, dim2=-1) / b)),
    "scaled-by-1.001": lambda H, b: 1.001 * torch.linalg.inv(_eye(H) - H / b),
    "shifted-by-1e-6-I": lambda H, b: torch.linalg.inv(_eye(H) - H / b) + 1e-6 * _eye(H),
    "cholesky-factors-transposed": lambda H, b: (
        lambda Li: Li @ _mT(Li)  # L⁻¹L⁻ᵀ instead of L⁻ᵀL⁻¹
    )(torch.linalg.inv(torch.linalg.cholesky(_eye(H) - H / b))),
    "float32-arithmetic": lambda H, b: torch.linalg.inv((_eye(H) - H / b).float()).double(),
    "eigenvalues-clamped-at-5": lambda H, b: _clamp_eig(torch.linalg.inv(_eye(H) - H / b), 5.0),
    "H-projected-to-negative-semidefinite": lambda H, b: torch.linalg.inv(_eye(H) - _psd_projection_H(H) / b),
    "inverse-of-H-term-only": lambda H, b: torch.linalg.pinv(-H / b),
    "precision-instead-of-covariance-halved": lambda H, b: 0.5 * (_eye(H) + torch.linalg.inv(_eye(H) - H / b)),
}

EQ9_CORRECT = {
    "solve": lambda H, b: torch.linalg.solve(_eye(H) - H / b, _eye(H).expand_as(H)),
    "beta-times-inverse-of-betaI-minus-H": lambda H, b: b * torch.linalg.inv(b * _eye(H) - H),
    "numpy": lambda H, b: np.linalg.inv(np.eye(H.shape[-1]) - H.numpy() / b),
}

# ---------------------------------------------------------------- eq14: candidate(J, beta) -> Σᵢ log(1 + ‖J[:, i]‖²/β)

EQ14_MUTANTS = {
    "sign-flip-1-minus": lambda J, b: torch.log(1 - _sqnorms(J) / b).sum(-1),
    "missing-1/beta": lambda J, b: torch.log1p(_sqnorms(J)).sum(-1),
    "beta-squared": lambda J, b: torch.log1p(_sqnorms(J) / b**2).sum(-1),
    "sqrt-beta": lambda J, b: torch.log1p(_sqnorms(J) / b**0.5).sum(-1),
    "rows-instead-of-columns": lambda J, b: torch.log1p((J * J).sum(-1) / b).sum(-1),
    "log-without-1": lambda J, b: torch.log(_sqnorms(J) / b).sum(-1),
    "log-off-by-constant": lambda J, b: torch.log(2 + _sqnorms(J) / b).sum(-1),
    "mean-instead-of-sum": lambda J, b: torch.log1p(_sqnorms(J) / b).mean(-1),
    "factor-2": lambda J, b: 2 * torch.log1p(_sqnorms(J) / b).sum(-1),
    "factor-half": lambda J, b: 0.5 * torch.log1p(_sqnorms(J) / b).sum(-1),
    "library-convention-beta/2": lambda J, b: b / 2 * torch.log1p(_sqnorms(J) / b).sum(-1),
    "norm-not-squared": lambda J, b: torch.log1p(_sqnorms(J).sqrt() / b).sum(-1),
    "abs-instead-of-square": lambda J, b: torch.log1p(J.abs().sum(-2) / b).sum(-1),
    "log-det-itself-too-tight": lambda J, b: torch.linalg.slogdet(_A(J, b))[1],
    "halfway-to-log-det": lambda J, b: 0.5 * (torch.log1p(_sqnorms(J) / b).sum(-1) + torch.linalg.slogdet(_A(J, b))[1]),
    "too-loose-plus-1e-3": lambda J, b: torch.log1p(_sqnorms(J) / b).sum(-1) + 1e-3,
    "float32-arithmetic": lambda J, b: torch.log1p(_sqnorms(J.float()) / b).sum(-1).double(),
    "clamped-ratio-at-10": lambda J, b: torch.log1p((_sqnorms(J) / b).clamp(max=10.0)).sum(-1),
    "clamped-norm-below-1e-6": lambda J, b: torch.log1p(_sqnorms(J).clamp(min=1e-6) / b).sum(-1),
    "max-instead-of-sum": lambda J, b: torch.log1p(_sqnorms(J) / b).amax(-1),
    "trace-inside-log": lambda J, b: torch.log1p(_sqnorms(J).sum(-1) / b),
}

EQ14_CORRECT = {
    "vector-norm": lambda J, b: torch.log1p(torch.linalg.vector_norm(J, dim=-2) ** 2 / b).sum(-1),
    "log-of-diagonal-product": lambda J, b: torch.log(torch.diagonal(_A(J, b), dim1=-2, dim2=-1).prod(-1)),
    "numpy": lambda J, b: np.log1p((J.numpy() ** 2).sum(-2) / b).sum(-1),
}

# ---------------------------------------------------------------- sec7: candidate(J, Sigma, beta) -> gap (with β/2)


def _printed(J, S, b):
    P = torch.eye(J.shape[-1], dtype=J.dtype) + _mT(J) @ J @ S / b
    return _gap_from(P, b)


GAP_MUTANTS = {
    "paper-misprint-I-plus-JtJSigma/beta": _printed,
    "A-with-minus-sign": lambda J, S, b: _gap_from((torch.eye(J.shape[-1], dtype=J.dtype) - _mT(J) @ J / b) @ S, b),
    "without-beta/2": lambda J, S, b: _gap_from(_A(J, b) @ S, b) * (2 / b),
    "beta-instead-of-beta/2": lambda J, S, b: _gap_from(_A(J, b) @ S, b, factor=1.0),
    "Sigma-inverse-instead-of-Sigma": lambda J, S, b: _gap_from(_A(J, b) @ torch.linalg.inv(S), b),
    "A-inverse-instead-of-A": lambda J, S, b: _gap_from(torch.linalg.inv(_A(J, b)) @ S, b),
    "missing-minus-d": lambda J, S, b: _gap_from(_A(J, b) @ S, b, d_term=False),
    "forgot-log-det-A": lambda J, S, b: 0.5 * b * (
        torch.diagonal(_A(J, b) @ S, dim1=-2, dim2=-1).sum(-1) - torch.linalg.slogdet(S)[1] - J.shape[-1]),
    "log-sign-flipped": lambda J, S, b: 0.5 * b * (
        torch.diagonal(_A(J, b) @ S, dim1=-2, dim2=-1).sum(-1) + torch.linalg.slogdet(_A(J, b) @ S)[1] - J.shape[-1]),
    "A-with-beta-squared": lambda J, S, b: _gap_from((torch.eye(J.shape[-1], dtype=J.dtype) + _mT(J) @ J / b**2) @ S, b),
    "A-with-beta-times": lambda J, S, b: _gap_from((torch.eye(J.shape[-1], dtype=J.dtype) + b * _mT(J) @ J) @ S, b),
    "JJt-instead-of-JtJ": lambda J, S, b: _gap_from((torch.eye(J.shape[-2], dtype=J.dtype) + J @ _mT(J) / b) @ S, b),
    "scaled-by-1.001": lambda J, S, b: 1.001 * _gap_from(_A(J, b) @ S, b),
    "offset-1e-6": lambda J, S, b: _gap_from(_A(J, b) @ S, b) + 1e-6,
    "negated-taylor-minus-grae": lambda J, S, b: -_gap_from(_A(J, b) @ S, b),
    "mean-field-diagonal-Sigma": lambda J, S, b: _gap_from(_A(J, b) @ torch.diag_embed(torch.diagonal(S, dim1=-2, dim2=-1)), b),
    "float32-arithmetic": lambda J, S, b: _gap_from(_A(J.float(), b) @ S.float(), b).double(),
    "quarter-beta": lambda J, S, b: _gap_from(_A(J, b) @ S, b, factor=0.25),
    "trace-only": lambda J, S, b: 0.5 * b * (torch.diagonal(_A(J, b) @ S, dim1=-2, dim2=-1).sum(-1) - J.shape[-1]),
    "abs-of-misprint": lambda J, S, b: _printed(J, S, b).abs(),
}


def _kl_gap(J, S, b):
    from torch.distributions import MultivariateNormal, kl_divergence

    z = torch.zeros(S.shape[:-1], dtype=S.dtype)
    return b * kl_divergence(MultivariateNormal(z, covariance_matrix=S), MultivariateNormal(z, precision_matrix=_A(J, b)))


GAP_CORRECT = {
    "slogdet-formula": lambda J, S, b: _gap_from(_A(J, b) @ S, b),
    "kl-divergence": _kl_gap,
    "eigenvalues-of-A-Sigma": lambda J, S, b: 0.5 * b * (
        lambda lam: (lam - 1 - torch.log(lam)).sum(-1))(torch.linalg.eigvals(_A(J, b) @ S).real),
}

CLAIMS = {"eq9-optimal-covariance": (EQ9_MUTANTS, EQ9_CORRECT),
          "eq14-hadamard-bound": (EQ14_MUTANTS, EQ14_CORRECT),
          "sec7-taylor-gap": (GAP_MUTANTS, GAP_CORRECT)}


def _params(which: int):
    return [pytest.param(cid, name, fn, id=f"{cid}[{name}]") for cid, tables in CLAIMS.items() for name, fn in tables[which].items()]


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("claim_id,name,mutant", _params(0))
def test_mutant_is_caught(claim_id, name, mutant):
    results = get(claim_id).check(candidate=mutant, seed=0)
    caught = [f"{r.method}: {r.detail[:90]}" for r in results if not r.passed]
    assert caught, f"mutant {name!r} of {claim_id} passed every check ({len(results)} results)"


@pytest.mark.parametrize("claim_id,name,impl", _params(1))
@pytest.mark.parametrize("seed", [0, 1])
def test_correct_alternative_passes(claim_id, name, impl, seed):
    results = get(claim_id).check(candidate=impl, seed=seed)
    bad = [r.failure_message() for r in results if not r.passed]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("claim_id", list(CLAIMS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_library_default_passes(claim_id, seed):
    results = get(claim_id).check(seed=seed)
    bad = [r.failure_message() for r in results if not r.passed]
    assert not bad, "\n".join(bad)


def test_every_method_runs_the_candidate():
    """A wrong candidate is visible to every method of the claim (no method silently ignores it)."""
    for cid, (mutants, _) in CLAIMS.items():
        claim = get(cid)
        wrong = next(iter(mutants.values()))
        for m in claim.methods:
            res = claim.check(m, candidate=wrong, seed=0)
            assert any(not r.passed for r in res), f"{cid}[{m}] ignores the candidate"
