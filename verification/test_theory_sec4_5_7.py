"""Sec. 4, 5 and 7: every claim by every method, plus hypothesis-driven property tests.

One test per (claim, method), named ``test_claim[<claim-id>[<method>]]``; each runs
``claim.check(method, seed=0)`` and asserts that every :class:`CheckResult` passed (printing
``failure_message()`` otherwise) and carries its evidence (both sides, error, tolerance, seed,
time). For an erratum, passing means the printed statement was refuted and the corrected one
verified.

The property tests at the end draw dimensions, β and the seeds of random SPD matrices /
Jacobians from the shared strategies (``gracheck.theory.strategies``; ``ci`` profile by
default, ``HYPOTHESIS_PROFILE=dev`` for more) and test the library's pure-math functions
against independent routes, with the tolerances of the one tolerance table.
"""

from __future__ import annotations

import math

import pytest
import torch

from gracheck.claims import get
from gracheck.theory import strategies as S
from gracheck.base.tolerances import tol

pytestmark = pytest.mark.usefixtures("single_thread")

DT = torch.float64

# claim id -> the methods it must have (a missing check fails here; it is never a silent skip)
EXPECTED_METHODS = {
    "eq4-second-order-objective": ("symbolic", "autograd"),
    "eq5-hessian-decomposition": ("symbolic", "autograd"),
    "eq6-piecewise-linear-exact": ("symbolic", "autograd"),
    "eq8-concave-in-covariance": ("symbolic", "autograd", "property"),
    "eq9-optimal-covariance": ("symbolic", "autograd", "property"),
    "eq10-optimal-value": ("symbolic", "autograd"),
    "eq11-gauss-newton-covariance": ("symbolic", "autograd"),
    "eq12-general-grae": ("symbolic", "autograd"),
    "eq13-gaussian-grae": ("symbolic", "autograd", "closed-form"),
    "eq14-hadamard-bound": ("symbolic", "property"),
    "eq14-column-estimator-unbiased": ("closed-form", "montecarlo"),
    "sec5.1-observation-hessians": ("symbolic", "autograd"),
    "sec5.2-pullback-metric": ("symbolic", "autograd"),
    "sec5.3-log1p-series": ("symbolic", "property"),
    "sec7-taylor-gap": ("symbolic", "autograd", "property"),
    "erratum-sec7-gap-as-printed": ("symbolic", "autograd"),
    "erratum-sec7-decoder-variance": ("symbolic", "autograd"),
    "erratum-sec5.3-frobenius-order": ("symbolic", "autograd"),
    "erratum-eq9-maximiser-condition": ("symbolic", "autograd"),  # new erratum (not in PAPER.md's list)
    # issue 13: statements not covered before, and new errata
    "eq14-mean-field-taylor-optimum": ("symbolic", "autograd", "property"),
    "sec5.3-orthogonality-penalty": ("symbolic", "closed-form", "montecarlo"),
    "sec5.1-bernoulli-parameterisation": ("symbolic", "autograd"),
    "erratum-sec5.2-fixed-covariance": ("closed-form", "autograd"),
    "erratum-sec7-relu-eq6-exact": ("autograd", "symbolic"),
}
CANDIDATE_CLAIMS = ("eq9-optimal-covariance", "eq14-hadamard-bound", "sec7-taylor-gap", "eq12-general-grae",
                    "eq13-gaussian-grae", "eq14-column-estimator-unbiased")  # (and issue 16's new claims: test_model_candidates.py)

CASES = [pytest.param(cid, m, id=f"{cid}[{m}]") for cid, ms in EXPECTED_METHODS.items() for m in ms]


@pytest.mark.parametrize("claim_id", list(EXPECTED_METHODS))
def test_claim_metadata(claim_id):
    c = get(claim_id)
    assert set(c.methods) == set(EXPECTED_METHODS[claim_id]), (claim_id, c.methods)
    assert c.statement and c.source
    assert c.kind == ("erratum" if claim_id.startswith("erratum-") else "derivation")
    assert c.takes_candidate == (claim_id in CANDIDATE_CLAIMS)
    if c.kind == "erratum":
        assert c.corrected, f"{claim_id}: an erratum states its correction"
    else:
        assert len(c.methods) >= 2, f"{claim_id}: every derivation is checked by at least two routes"


@pytest.mark.parametrize("claim_id, method", CASES)
def test_claim(claim_id, method, check_claim):
    check_claim(claim_id, method, seed=0)


def test_checks_are_deterministic_given_seed():
    """Same seed ⇒ identical evidence (random sweeps, Monte Carlo, a cached symbolic case)."""
    for cid, m in (("eq9-optimal-covariance", "property"), ("eq14-column-estimator-unbiased", "montecarlo"),
                   ("sec7-taylor-gap", "symbolic")):
        a = get(cid).check(m, seed=3)
        b = get(cid).check(m, seed=3)
        assert [(r.measured, r.expected, r.abs_err) for r in a] == [(r.measured, r.expected, r.abs_err) for r in b]


def test_errata_record_their_counterexample():
    """Each erratum's evidence names the printed statement's failure with numbers (a counterexample)."""
    for cid, needle in (("erratum-sec7-gap-as-printed", "Counterexample"), ("erratum-sec7-decoder-variance", "counterexample"),
                        ("erratum-sec5.3-frobenius-order", "counterexample"),
                        ("erratum-eq9-maximiser-condition", "Counterexample"),
                        ("erratum-sec5.2-fixed-covariance", "COUNTEREXAMPLE"), ("erratum-sec7-relu-eq6-exact", "COUNTEREXAMPLE")):
        details = " ".join(r.detail for r in get(cid).check(seed=0))
        assert needle in details, (cid, details[:300])


def test_candidate_checks_reject_the_paper_misprint():
    """The gap as printed in Sec. 7 / App. F fails sec7-taylor-gap (the full mutant set is in tests/test_mutants.py)."""

    def printed(J, Sigma, beta):
        d = J.shape[-1]
        P = torch.eye(d, dtype=J.dtype) + J.transpose(-1, -2) @ J @ Sigma / beta
        return beta / 2 * (torch.diagonal(P, dim1=-2, dim2=-1).sum(-1) - torch.linalg.slogdet(P)[1] - d)

    res = get("sec7-taylor-gap").check(candidate=printed, seed=0)
    assert any(not r.passed for r in res)


def test_library_refuses_hessian_without_maximiser():
    """eq9's condition: when I − H/β is not positive definite Eq. 8 has no maximiser and the library raises."""
    from gracheck.objectives import optimal_covariance

    with pytest.raises(ValueError, match="positive definite"):
        optimal_covariance(torch.tensor([[2.0]], dtype=DT), 1.0)
    with pytest.raises(ValueError, match="positive definite"):
        optimal_covariance(torch.diag(torch.tensor([-1.0, 1.0], dtype=DT)), 1.0)  # eigenvalue exactly β


# ---------------------------------------------------------------- hypothesis-driven property tests


def _eq8(H, Sigma, beta):
    d = Sigma.shape[-1]
    return 0.5 * torch.trace(H @ Sigma) - beta / 2 * (torch.trace(Sigma) - torch.linalg.slogdet(Sigma)[1] - d)


def test_optimal_covariance_is_stationary_hypothesis():
    """eq9: for H with I − H/β ≻ 0 (d, β, H drawn), the autograd gradient of Eq. 8 vanishes at the library's Σ*."""
    hyp = pytest.importorskip("hypothesis")
    from hypothesis import given, note

    from gracheck.objectives import optimal_covariance

    t = tol("candidate-float64")

    @given(d=S.dims(1, 6), beta=S.betas(1e-2, 1e2), seed=S.seeds())
    def prop(d, beta, seed):
        H = S.symmetric_below(S.generator(seed), d, beta)
        Sig = optimal_covariance(H, beta).requires_grad_(True)
        (g,) = torch.autograd.grad(_eq8(H, Sig, beta), Sig)
        scale = beta / 2 * float(torch.linalg.matrix_norm(torch.eye(d, dtype=DT) - H / beta, ord=2))
        resid = float(g.abs().max()) / scale
        note(f"relative stationarity residual {resid:.3g}")
        assert resid <= t.atol + t.rtol

    assert hyp  # imported
    prop()


def test_hadamard_bound_hypothesis():
    """eq14: for drawn J (dense and orthogonal-column) and β, the library's bound ≥ log det(I + JᵀJ/β) (eigvalsh),
    with equality for orthogonal columns, through the library's grae_regularizer as well."""
    pytest.importorskip("hypothesis")
    from hypothesis import given, note
    from hypothesis import strategies as st

    from gracheck.objectives import grae_regularizer, hadamard_bound

    t = tol("candidate-float64")
    ti = tol("inequality-rounding")

    @given(J=st.one_of(S.jacobians(), S.orthogonal_column_jacobians()), beta=S.betas())
    def prop(J, beta):
        d = J.shape[-1]
        logdet = float(torch.log(torch.linalg.eigvalsh(torch.eye(d, dtype=DT) + J.T @ J / beta)).sum())
        bound = float(hadamard_bound(J, beta)) * 2 / beta
        reg = float(grae_regularizer(J, beta)) * 2 / beta
        off = float((J.T @ J - torch.diag(torch.diagonal(J.T @ J))).abs().max())
        note(f"bound {bound:.6g}, logdet {logdet:.6g}, regulariser {reg:.6g}, max off-diagonal of JᵀJ {off:.3g}")
        assert abs(reg - logdet) <= t.atol + t.rtol * abs(logdet)
        assert bound >= logdet - ti.atol - ti.rtol * abs(logdet)
        if off < 1e-12:
            assert abs(bound - logdet) <= t.atol + t.rtol * abs(logdet)

    prop()


def test_taylor_gap_hypothesis():
    """sec7: for drawn (J, Σ, β) the library's gap equals β·KL(N(0,Σ)‖N(0,A⁻¹)), is ≥ 0, and is 0 at Σ = A⁻¹."""
    pytest.importorskip("hypothesis")
    from hypothesis import given, note
    from hypothesis import strategies as st

    from gracheck.objectives import taylor_gap

    t = tol("candidate-float64")

    @given(d=S.dims(1, 5), extra=st.integers(-1, 3), beta=S.betas(), seed=S.seeds())
    def prop(d, extra, beta, seed):
        from torch.distributions import MultivariateNormal, kl_divergence

        gen = S.generator(seed)
        J = S.jacobian(gen, max(1, d + extra), d)
        Sig = S.spd(gen, d, low=0.05, high=5.0)
        A = torch.eye(d, dtype=DT) + J.T @ J / beta
        z = torch.zeros(d, dtype=DT)
        kl = float(beta * kl_divergence(MultivariateNormal(z, Sig), MultivariateNormal(z, precision_matrix=A)))
        gap = float(taylor_gap(J, Sig, beta))
        Ainv = torch.linalg.inv(A)
        zero = float(taylor_gap(J, 0.5 * (Ainv + Ainv.T), beta))
        note(f"gap {gap:.6g}, β·KL {kl:.6g}, gap at A⁻¹ {zero:.3g}")
        assert abs(gap - kl) <= t.atol + t.rtol * abs(kl)
        assert gap >= 0 and abs(zero) <= t.atol

    prop()


def test_log1p_series_first_order_hypothesis():
    """sec5.3: β/2 times the first-order term of the series is ½‖J‖²_F for every β (β cancels); and for
    s_max² < β/2 the 40-term partial sum matches log det(I + JᵀJ/β) to within 2⁻⁴⁰·d."""
    pytest.importorskip("hypothesis")
    from hypothesis import given, note

    @given(J=S.jacobians(), beta=S.betas())
    def prop(J, beta):
        d = J.shape[-1]
        M = J.T @ J / beta
        first = beta / 2 * float(torch.trace(M))
        assert math.isclose(first, 0.5 * float(J.pow(2).sum()), rel_tol=1e-12, abs_tol=1e-15)
        smax2 = float(torch.linalg.eigvalsh(J.T @ J).max())
        Js = J * math.sqrt(0.5 * beta / smax2) if smax2 > 0 else J  # s_max² = β/2
        Ms = Js.T @ Js / beta
        P, s = torch.eye(d, dtype=DT), 0.0
        for k in range(1, 41):
            P = P @ Ms
            s += (-1) ** (k + 1) * float(torch.trace(P)) / k
        target = float(torch.linalg.slogdet(torch.eye(d, dtype=DT) + Ms)[1])
        note(f"partial sum {s:.15g} vs log det {target:.15g}")
        assert abs(s - target) <= d * 0.5**40 + 1e-13

    prop()
