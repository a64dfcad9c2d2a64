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


# ---------------------------------------------------------------- routes of non-candidate checks (issue 13)
#
# Four checks used to compare a formula with itself, so a wrong formula in the part they were meant to test could not
# fail them. Each now computes that part by a route of its own, read through a module-level function; a mutant replaces
# that function with a plausible wrong formula and the check must fail. Before the change none of these could be caught:
# * erratum-sec5.3-frobenius-order: "the unhalved form is 2×" was 2·(corrected − first), twice the residual already
#   tested, so no value of the unhalved form entered the check;
# * erratum-appB-eq15-jacobian[montecarlo]: the "corrected line 3" estimate sampled f(r(z)), z ~ q, i.e. line 2, so the
#   line-3 weight q(r⁻¹(z'))|det J_(r⁻¹)(z')| was never evaluated;
# * sec5.2-pullback-metric[autograd]: Σ came from optimal_covariance(−JᵀJ, β), for which β(Σ⁻¹ − I) = JᵀJ holds by
#   construction, so Eq. 7 (whose maximiser the claim is about) was never evaluated;
# * eq6-piecewise-linear-exact[autograd]: torch differentiates ReLU's derivative as 0, so a decoder that is smooth but
#   whose AD second derivative is 0 agreed with Eq. 6 by the AD rule (shown in the test itself).


def _half_unhalved_sym(J, w):
    import sympy as sp

    return sp.expand((J.T * sp.diag(*w) * J).trace()) / 2  # claims the unhalved reading *is* the first-order term


def _half_unhalved_torch(J, hess_diag):
    return torch.einsum("ki,k,ki->", J, -hess_diag, J) / 2


def _line3_wrong_direction(case, zp):
    from gracheck.theory import sec3_uniqueness as s3

    _, r, r_inv, *_ = case
    qm, qs = case[6], case[7]
    return s3.gaussian_diag_log_prob(r_inv(zp), qm, qs) + s3.log_abs_det_jacobian(r, zp)  # |det J_r(z')|, not J_(r⁻¹)


def _line3_no_jacobian(case, zp):
    from gracheck.theory import sec3_uniqueness as s3

    _, _, r_inv, *_ = case
    return s3.gaussian_diag_log_prob(r_inv(zp), case[6], case[7])  # the printed line 3


def _eq7_kl_weight_beta(JtJ, Sigma, beta):
    from gracheck.theory.routes import eq8_cov_terms

    return eq8_cov_terms(-JtJ, Sigma, 2 * beta)  # β·KL instead of β/2·(tr Σ − log|Σ| − d)


def _eq7_without_half(JtJ, Sigma, beta):
    from gracheck.theory.routes import eq8_cov_terms

    return eq8_cov_terms(-2 * JtJ, Sigma, beta)  # tr(JᵀH_pJΣ) without its ½


def _smooth_act_with_zero_ad_curvature(t):
    """t + t²/10 (smooth, not piecewise linear) written so that AD's first derivative is right (1 + t/5) and its second is 0."""
    return t + 0.2 * t * t.detach() - 0.1 * t.detach() ** 2


ROUTE_MUTANTS = {
    "unhalved-form-is-the-first-order-term[symbolic]": (
        "erratum-sec5.3-frobenius-order", "symbolic", "gracheck.theory.sec5_grae", "_unhalved_frobenius_sym", _half_unhalved_sym),
    "unhalved-form-is-the-first-order-term[autograd]": (
        "erratum-sec5.3-frobenius-order", "autograd", "gracheck.theory.sec5_grae", "_unhalved_frobenius_torch", _half_unhalved_torch),
    "line3-jacobian-of-r-instead-of-r-inverse": (
        "erratum-appB-eq15-jacobian", "montecarlo", "gracheck.theory.sec3_uniqueness", "_line3_log_weight", _line3_wrong_direction),
    "line3-without-jacobian": (
        "erratum-appB-eq15-jacobian", "montecarlo", "gracheck.theory.sec3_uniqueness", "_line3_log_weight", _line3_no_jacobian),
    "eq7-kl-weighted-beta": (
        "sec5.2-pullback-metric", "autograd", "gracheck.theory.sec5_grae", "_sec52_cov_objective", _eq7_kl_weight_beta),
    "eq7-trace-without-half": (
        "sec5.2-pullback-metric", "autograd", "gracheck.theory.sec5_grae", "_sec52_cov_objective", _eq7_without_half),
}


@pytest.mark.parametrize("name", list(ROUTE_MUTANTS))
def test_route_mutant_is_caught(name, monkeypatch):
    import importlib

    claim_id, method, module, attr, mutant = ROUTE_MUTANTS[name]
    monkeypatch.setattr(importlib.import_module(module), attr, mutant)
    results = get(claim_id).check(method, seed=0)
    assert any(not r.passed for r in results), f"route mutant {name!r} of {claim_id}[{method}] passed every check"


def test_relu_ad_rule_mutant_is_caught(monkeypatch):
    """A 'ReLU' that is really t + t²/10 with zero AD curvature: the AD Hessian agrees with JᵀH_pJ (the old route is
    blind to it, checked here), the finite-difference route of eq6-piecewise-linear-exact[autograd] is not."""
    from gracheck.theory import routes as _sec457
    from gracheck.theory import strategies as S
    from gracheck.likelihoods import GaussianObs

    monkeypatch.setitem(_sec457.ACTS, "relu", _smooth_act_with_zero_ad_curvature)
    gen = S.generator(0)
    net = _sec457.MLP(gen, 3, 6, hidden=16, act="relu", scale=2.0)
    z, obs = S.normal(gen, 3), GaussianObs(0.7)
    x = net(z) + S.normal(gen, 6)
    f = lambda zz: obs.log_prob(x[None], net(zz)[None])[0]  # noqa: E731
    J = torch.func.jacrev(net)(z)
    gn = J.T @ torch.func.hessian(lambda gg: obs.log_prob(x[None], gg[None])[0])(net(z)) @ J
    assert torch.allclose(torch.func.hessian(f)(z), gn, rtol=1e-12, atol=1e-12)  # the AD rule hides the curvature
    results = get("eq6-piecewise-linear-exact").check("autograd", seed=0)
    caught = [r for r in results if not r.passed]
    assert caught and all("central differences" in r.detail for r in caught), [r.detail[:80] for r in caught]
