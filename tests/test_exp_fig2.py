"""Unit tests of the Fig. 2/7 statistics (gracheck.experiments.fig2_precision); fast, no training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gracheck import optimal_covariance
from gracheck.autodiff import decoder_jacobian
from gracheck.objectives import gauss_newton_curvature
from gracheck.experiments import fig2_precision as f
from gracheck.posteriors import block_mask, block_sizes, scale_tril_from_params

F64 = torch.float64


def _random_jtj(B, d, D=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(B, D, d, generator=g, dtype=F64)
    return J.transpose(-1, -2) @ J


def _block_diag_spd(B, d, b, seed):
    """Random SPD matrices that are exactly block-diagonal with block size b."""
    g = torch.Generator().manual_seed(seed)
    M = torch.zeros(B, d, d, dtype=F64)
    s = 0
    for size in block_sizes(d, b):
        A = torch.randn(B, size + 3, size, generator=g, dtype=F64)
        M[:, s : s + size, s : s + size] = A.transpose(-1, -2) @ A
        s += size
    return M


# ---------------------------------------------------------------- the block-restricted Eq. 11 optimum
def _eq8_sigma_part(Sigma, M, beta):
    """The Σ-dependent part of Eq. 8 with H_f = −M: −½ tr(MΣ) − β/2 (tr Σ − log|Σ|)."""
    return -0.5 * torch.einsum("...ij,...ji->...", M, Sigma) - 0.5 * beta * (
        torch.diagonal(Sigma, dim1=-2, dim2=-1).sum(-1) - torch.logdet(Sigma)
    )


@pytest.mark.parametrize("d, b", [(6, 2), (7, 3), (8, 2)])
@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_block_optimum_matches_numerical_maximiser(d, b, beta):
    """Derivation check: maximising Eq. 8 over block-diagonal Σ numerically (L-BFGS on the Cholesky
    parameters of the block structure) gives Σ⁻¹ = I + P_B(JᵀJ)/β."""
    M = _random_jtj(1, d, seed=d * 10 + b)[0] / 10.0
    P = sum(s * (s + 1) // 2 for s in block_sizes(d, b))
    theta = torch.zeros(P, dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        L = scale_tril_from_params(theta[None], d, "block-diagonal", b)[0]
        loss = -_eq8_sigma_part(L @ L.T, M, beta)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    L = scale_tril_from_params(theta.detach()[None], d, "block-diagonal", b)[0]
    numeric_prec = torch.linalg.inv(L @ L.T)
    formula = f.block_optimal_precision(M, beta, b)
    torch.testing.assert_close(numeric_prec, formula, atol=1e-7, rtol=1e-7)
    # the optimal precision is block-diagonal and its in-block residual is 0 while the full one is not
    assert float(f.in_block_residual(formula, M, beta, b)) < 1e-12
    assert float(f.full_residual(formula, M, beta)) > 1e-3


def test_block_optimum_is_eq11_for_one_block_and_beats_perturbations():
    d, beta = 6, 0.7
    M = _random_jtj(4, d, seed=3)
    # b = d: the block family is every Σ and the formula is Eq. 11 (objectives.optimal_covariance)
    prec = f.block_optimal_precision(M, beta, d)
    torch.testing.assert_close(torch.linalg.inv(prec), optimal_covariance(-M, beta), atol=1e-10, rtol=1e-10)
    # b = 2: any block-diagonal perturbation of the optimum lowers Eq. 8 (second, independent route)
    b = 2
    S0 = torch.linalg.inv(f.block_optimal_precision(M, beta, b))
    v0 = _eq8_sigma_part(S0, M, beta)
    g = torch.Generator().manual_seed(5)
    mask = block_mask(d, b, dtype=F64)
    for _ in range(20):
        E = torch.randn(4, d, d, generator=g, dtype=F64) * 1e-4  # Σ entries are ~3e-2
        E = (E + E.transpose(-1, -2)) * mask
        assert bool((_eq8_sigma_part(S0 + E, M, beta) < v0).all())
    # and the block optimum is worse than the unconstrained one by Fischer's inequality (M not block-diag)
    Sfull = optimal_covariance(-M, beta)
    assert bool((_eq8_sigma_part(Sfull, M, beta) > v0 + 1e-9).all())


# ---------------------------------------------------------------- statistic 1
@pytest.mark.parametrize("d, b", [(8, 2), (8, 3), (12, 3), (20, 2)])
def test_chance_fraction_counts_positions(d, b):
    mask = block_mask(d, b).numpy()
    off = ~np.eye(d, dtype=bool)
    brute = float((off & ~mask).sum() / off.sum())
    assert f.chance_off_block_fraction(d, b) == pytest.approx(brute, abs=1e-15)
    if (d, b) == (8, 2):
        assert f.chance_off_block_fraction(d, b) == pytest.approx(48 / 56)


def test_off_block_fraction_known_cases():
    d, b = 8, 2
    # exactly block-diagonal: no off-block energy
    Mb = _block_diag_spd(5, d, b, seed=1)
    torch.testing.assert_close(f.off_block_energy_fraction(Mb, b), torch.zeros(5, dtype=F64), atol=1e-15, rtol=0)
    # uniform off-diagonal correlation ρ: fraction = chance
    rho = 0.3
    Mu = (1 - rho) * torch.eye(d, dtype=F64) + rho * torch.ones(d, d, dtype=F64)
    assert float(f.off_block_energy_fraction(Mu * 7.0, b)) == pytest.approx(f.chance_off_block_fraction(d, b), abs=1e-14)
    # scale-free: D M D for a positive diagonal D leaves the statistic unchanged
    M = _random_jtj(3, d, seed=2)
    D = torch.diag_embed(torch.rand(3, d, dtype=F64, generator=torch.Generator().manual_seed(0)) + 0.1)
    torch.testing.assert_close(f.off_block_energy_fraction(D @ M @ D, b), f.off_block_energy_fraction(M, b), atol=1e-13, rtol=0)
    # an explicit loop computes the same thing
    C = M / torch.sqrt(torch.diagonal(M, dim1=-2, dim2=-1)[:, :, None] * torch.diagonal(M, dim1=-2, dim2=-1)[:, None, :])
    mask = block_mask(d, b)
    for k in range(3):
        num = sum(float(C[k, i, j]) ** 2 for i in range(d) for j in range(d) if i != j and not mask[i, j])
        den = sum(float(C[k, i, j]) ** 2 for i in range(d) for j in range(d) if i != j)
        assert float(f.off_block_energy_fraction(M[k], b)) == pytest.approx(num / den, rel=1e-12)


def test_off_block_fraction_of_random_gram_is_near_chance_and_dead_latent_is_safe():
    d, b = 8, 2
    M = _random_jtj(4000, d, D=40, seed=7)
    med = float(f.off_block_energy_fraction(M, b).median())
    # rotation-invariant ensemble: energy spread evenly over positions, so the median is close to chance
    assert abs(med - f.chance_off_block_fraction(d, b)) < 0.05
    M0 = M[:2].clone()
    M0[:, 3, :] = 0.0
    M0[:, :, 3] = 0.0  # a collapsed latent: zero column of J
    assert bool(torch.isfinite(f.off_block_energy_fraction(M0, b)).all())
    assert torch.isnan(f.off_block_energy_fraction(torch.eye(d, dtype=F64), b))


def test_statistic_on_real_jacobians_of_a_decoder():
    """J from autodiff on a decoder whose latent blocks drive disjoint outputs: JᵀJ exactly block-diagonal."""
    d, b, D = 6, 2, 12
    W = torch.zeros(D, d, dtype=F64)
    g = torch.Generator().manual_seed(1)
    for k, s in enumerate(range(0, d, b)):
        W[4 * k : 4 * k + 4, s : s + b] = torch.randn(4, b, generator=g, dtype=F64)
    dec = lambda z: torch.tanh(z @ W.T)  # noqa: E731
    z = torch.randn(10, d, generator=g, dtype=F64)
    M = gauss_newton_curvature(decoder_jacobian(dec, z))
    assert float(f.off_block_energy_fraction(M, b).max()) < 1e-14
    # a random rotation of z mixes the blocks: the fraction moves towards chance
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    Mr = gauss_newton_curvature(decoder_jacobian(lambda z: dec(z @ Q.T), z))
    assert float(f.off_block_energy_fraction(Mr, b).median()) > 0.3


# ---------------------------------------------------------------- statistic 2
def test_in_block_residual_scales_and_ignores_off_block():
    d, b, beta = 8, 2, 0.5
    M = _random_jtj(6, d, seed=4)
    prec = f.block_optimal_precision(M, beta, b)
    # a relative error ε on the in-block part of β(Σ⁻¹ − I) gives residual exactly ε
    eps = 0.25
    prec_e = torch.eye(d, dtype=F64) + (1 + eps) * (prec - torch.eye(d, dtype=F64))
    torch.testing.assert_close(f.in_block_residual(prec_e, M, beta, b), torch.full((6,), eps, dtype=F64), atol=1e-12, rtol=0)
    # Σ⁻¹ = I (Σ carries no information) gives residual 1
    torch.testing.assert_close(f.in_block_residual(torch.eye(d, dtype=F64).expand(6, d, d), M, beta, b),
                               torch.ones(6, dtype=F64), atol=1e-12, rtol=0)
    # full residual of the unconstrained optimum (Eq. 11) is 0
    full_prec = torch.linalg.inv(optimal_covariance(-M, beta))
    assert float(f.full_residual(full_prec, M, beta).max()) < 1e-10


def test_bootstrap_ci_covers_and_pairs():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 400)
    m, lo, hi = f.bootstrap_median_ci(x, B=500, level=0.95, rng=np.random.default_rng(1))
    assert m == pytest.approx(np.median(x)) and lo < m < hi and hi - lo < 0.4
    # paired: y = x + 0.2 exactly gives a degenerate CI at −0.2
    m2, lo2, hi2 = f.bootstrap_median_ci(x, y=x + 0.2, B=200, level=0.95, rng=np.random.default_rng(2))
    assert m2 == pytest.approx(-0.2) and lo2 == pytest.approx(-0.2) and hi2 == pytest.approx(-0.2)


# ---------------------------------------------------------------- contract and bad input
def test_configs_and_contract():
    assert f.CLAIM_ID == "fig2-precision-matches-jtj"
    assert set(f.CONFIGS) == {"smoke", "paper"}
    p = f.CONFIGS["paper"]
    assert p.blocks == (2, 3) and p.latent_dims == (8, 12, 20) and p.steps == 20_000 and p.width == 1.0
    assert p.arch == "conv" and p.n_test == 5000 and len(p.betas) == 5
    for cfg in f.CONFIGS.values():
        f._validate(cfg)
        tc = f.train_config(cfg, d=cfg.latent_dims[0], beta=cfg.betas[0], posterior="block-diagonal",
                            block=cfg.blocks[0], seed=0, device="cpu")
        assert tc.model == "beta-vae" and tc.obs == "gaussian" and tc.obs_variance == 1.0 and tc.block == cfg.blocks[0]


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: f.chance_off_block_fraction(8, 0), "block"),
        (lambda: f.chance_off_block_fraction(8, 8), "block"),
        (lambda: f.off_block_energy_fraction(torch.zeros(3, 4, dtype=F64), 2), "M"),
        (lambda: f.block_optimal_precision(torch.eye(4, dtype=F64), -1.0, 2), "beta"),
        (lambda: f.in_block_residual(torch.eye(4, dtype=F64), torch.eye(3, dtype=F64), 0.5, 2), "precision"),
        (lambda: f.bootstrap_median_ci(np.ones(3), y=np.ones(4), B=10, level=0.9, rng=np.random.default_rng(0)), "y"),
    ],
)
def test_bad_inputs(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_bad_input_types():
    with pytest.raises(TypeError, match="M"):
        f.off_block_energy_fraction([[1.0]], 1)
    with pytest.raises(ValueError, match="control_posterior"):
        f._validate(f.Config(blocks=(2,), latent_dims=(8,), betas=(0.5,), steps=1, control_posterior="diag"))
    with pytest.raises(ValueError, match="betas"):
        f._validate(f.Config(blocks=(2,), latent_dims=(8,), betas=(math.nan,), steps=1))


# ---------------------------------------------------------------- check(): three outcomes and the precondition
def _fake(frac_shift, residual, n=300, nan=0, seed=0):
    """A result whose block model's off-block share is the control's + ``frac_shift`` and whose in-block residual
    sits near ``residual`` (per-point spread 0.1 / 0.05); ``nan`` points without off-diagonal energy."""
    from gracheck.experiments._common import ExperimentResult, config_dict

    rng = np.random.default_rng(seed)
    fc = np.clip(rng.normal(0.85, 0.1, n), 0, 1)
    fb = np.clip(fc + frac_shift + rng.normal(0, 0.02, n), 0, 1)
    fb[:nan] = np.nan
    r = residual + rng.normal(0, 0.05, n)
    cfg = f.Config(blocks=(2,), latent_dims=(8,), betas=(0.5,), steps=1, n_test=n, bootstrap=300)
    s = {"block": 2, "d": 8, "beta": 0.5, "chance": f.chance_off_block_fraction(8, 2), "frac_block": list(fb),
         "frac_control": list(fc), "in_block_residual": list(r), "full_residual_block": list(r + 0.1),
         "full_residual_control": list(r + 0.2)}
    return ExperimentResult(claim_id=f.CLAIM_ID, scale="custom", config=config_dict(cfg), seeds=[seed], device="cpu",
                            metrics={}, figures=[], seconds=0.0, data={"settings": [s]})


@pytest.mark.parametrize("shift, residual, outcomes", [
    (-0.1, 0.3, ["verified", "verified", "verified"]),
    (0.1, 0.7, ["refuted", "refuted", "verified"]),
    (0.0, 0.5, ["inconclusive", "inconclusive", "verified"]),  # both CIs straddle their thresholds
])
def test_check_reads_each_statistic_in_three_outcomes(shift, residual, outcomes):
    out = f.check(_fake(shift, residual))
    assert [c.outcome for c in out] == outcomes, [c.reason for c in out]
    for c in out[:2]:
        if c.outcome == "inconclusive":
            assert "test points" in c.reason and "--scale paper" in c.reason


def test_too_few_finite_points_is_inconclusive_naming_the_count():
    from gracheck.base.verdicts import combine

    out = f.check(_fake(-0.1, 0.3, n=150, nan=80))
    assert out[-1].outcome == "inconclusive" and "70 test points with a finite statistic 1" in out[-1].reason
    assert [c.outcome for c in out[:2]] == ["verified", "verified"] and combine(c.outcome for c in out) == "inconclusive"
