"""Unit tests of the Fig. 3 / App. F statistics (gracheck.experiments.fig3_objectives); fast, no training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from gracheck.base import stats as bstats
from gracheck.experiments import fig3_objectives as f
from gracheck.experiments._common import ExperimentResult
from gracheck.nets import MLPDecoder
from gracheck.objectives import optimal_covariance
from gracheck.posteriors import block_mask

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared 2-core machine
    yield
    torch.set_num_threads(prev)


class _ToyVAE(nn.Module):
    """Encoder x ↦ (W x, L(x)) with a fixed block-diagonal Cholesky factor per point; any decoder."""

    def __init__(self, D, d, decoder, L=None, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(d, D, generator=g, dtype=F64) / D**0.5)
        if L is None:
            A = torch.randn(d, d, generator=g, dtype=F64) * 0.2
            L = torch.linalg.cholesky(A @ A.T * block_mask(d, 2, dtype=F64) + 0.1 * torch.eye(d, dtype=F64))
        self.register_buffer("L", L)
        self.decoder = decoder
        self.encoder = self._encode

    def _encode(self, x):
        xf = x.reshape(len(x), -1).to(self.W.dtype)
        mean = xf @ self.W.T
        L = self.L if self.L.dim() == 3 else self.L.expand(len(x), -1, -1)
        return mean, L


def _data(n=20, D=16, seed=1):
    return torch.rand(n, D, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _gens(a=0, b=1):
    return torch.Generator().manual_seed(a), torch.Generator().manual_seed(b)


# ---------------------------------------------------------------- rule 1: the gap identity
def test_measured_gap_equals_corrected_analytic_gap_and_not_the_printed_one():
    torch.manual_seed(0)
    D, d, beta = 16, 6, 0.4
    dec = MLPDecoder(d, D, (12,), "elu", "sigmoid").double()
    model = _ToyVAE(D, d, dec)
    g1, gm = _gens()
    ev = f.evaluate_objectives(model, _data(D=D), beta, n_mc=4, generator_1=g1, generator_mc=gm, eval_batch=7)
    assert set(ev) >= {"beta_vae_1", "beta_vae_mc", "taylor", "grae", "gap_measured", "gap_analytic", "gap_printed"}
    w = f.gap_worst(ev["gap_measured"].numpy(), ev["gap_analytic"].numpy(), 1e-8, 1e-8)
    assert w["passed"] and w["max_abs"] < 1e-10
    assert bool((ev["gap_analytic"] > 0).all())  # Σ is not the Eq. 11 optimum: positive gap
    # the as-printed expression is a different number (the erratum), so the identity check can fail
    assert not f.gap_worst(ev["gap_printed"].numpy(), ev["gap_measured"].numpy(), 1e-8, 1e-8)["passed"]


def test_gap_vanishes_at_the_eq11_covariance():
    """With Σ = (I + JᵀJ/β)⁻¹ (Eq. 11) at every point, GRAE = Taylor: both gaps ≈ 0."""
    from gracheck.autodiff import decoder_jacobian
    from gracheck.objectives import gauss_newton_curvature

    torch.manual_seed(1)
    D, d, beta = 10, 4, 0.7
    dec = MLPDecoder(d, D, (8,), "tanh", "none").double()
    x = _data(n=6, D=D)
    model = _ToyVAE(D, d, dec)
    with torch.no_grad():
        mean, _ = model.encoder(x)
        S = optimal_covariance(-gauss_newton_curvature(decoder_jacobian(dec, mean)), beta)
    model.L = torch.linalg.cholesky(S)
    g1, gm = _gens()
    ev = f.evaluate_objectives(model, x, beta, n_mc=2, generator_1=g1, generator_mc=gm)
    assert float(ev["gap_analytic"].abs().max()) < 1e-10
    assert float((ev["grae"] - ev["taylor"]).abs().max()) < 1e-10


def test_gap_worst_flags_a_real_discrepancy_and_nan():
    a = np.array([0.1, 0.2, 0.3])
    assert f.gap_worst(a + 1e-12, a, 1e-8, 1e-8)["passed"]
    assert not f.gap_worst(a + np.array([0, 1e-6, 0]), a, 1e-8, 1e-8)["passed"]
    assert not f.gap_worst(np.array([0.1, np.nan, 0.3]), a, 1e-8, 1e-8)["passed"]
    with pytest.raises(ValueError, match="measured, analytic"):
        f.gap_worst(a[:2], a, 1e-8, 1e-8)


# ---------------------------------------------------------------- the objectives themselves
def test_linear_decoder_taylor_is_exact_and_mc_estimates_agree():
    """For g(z) = Az + c the Taylor objective (Eq. 7) is exactly Eq. 2, so the 1- and many-sample
    β-VAE estimates must match it within their Monte Carlo error (independent computations)."""
    torch.manual_seed(2)
    D, d, beta = 12, 3, 0.5
    dec = nn.Linear(d, D).double()
    model = _ToyVAE(D, d, dec)
    x = _data(n=300, D=D, seed=3)
    g1, gm = _gens(5, 6)
    ev = f.evaluate_objectives(model, x, beta, n_mc=100, generator_1=g1, generator_mc=gm, eval_batch=150)
    diff_mc = (ev["beta_vae_mc"] - ev["taylor"]).numpy()
    diff_1 = (ev["beta_vae_1"] - ev["taylor"]).numpy()
    # per point the MC error of the 200-sample mean is small; on average over points it is ~0
    assert abs(diff_mc.mean()) < 4 * diff_mc.std() / np.sqrt(len(diff_mc)) + 1e-12
    assert abs(diff_1.mean()) < 4 * diff_1.std() / np.sqrt(len(diff_1)) + 1e-12
    assert diff_1.std() > 3 * diff_mc.std()  # one sample is noisier than 100


def test_control_variate_is_exact_for_a_linear_decoder():
    """g(z) = Az + c, N(x; g, I): log p(x|g(z)) is quadratic in z, so the control variate removes all sampling
    noise and one draw gives E_q‖x − g(z)‖² = ‖x − Ah − c‖² + tr(AᵀAΣ) exactly (a closed form, not the code's Q)."""
    from gracheck.autodiff import decoder_jacobian
    from gracheck.likelihoods import GaussianObs

    torch.manual_seed(3)
    D, d = 10, 3
    dec = nn.Linear(d, D).double()
    model = _ToyVAE(D, d, dec)
    x = _data(n=40, D=D, seed=4)
    with torch.no_grad():
        h, L = model.encoder(x)
        g, J = decoder_jacobian(dec, h, return_output=True)
        A, c = dec.weight, dec.bias
        Sigma = L @ L.transpose(-1, -2)
        exact = (-0.5 * ((x - h @ A.T - c).pow(2).sum(-1) + torch.einsum("ij,bjk,ik->b", A, Sigma, A))
                 - 0.5 * D * math.log(2 * math.pi))
        for n in (1, 7):
            got = f.cv_log_px(x, dec, h, L, J, g, GaussianObs(1.0), n, torch.Generator().manual_seed(n))
            torch.testing.assert_close(got, exact, atol=1e-10, rtol=1e-12)


def test_control_variate_agrees_with_plain_monte_carlo_and_is_less_noisy():
    """Nonlinear (ELU + sigmoid) decoder: the control-variate estimate of E_q log p(x|g(z)) and the plain average of
    the library's beta_vae_objective (its log_px term) estimate the same number: they agree within 4 combined standard
    errors per point, and the control variate's per-draw spread is smaller."""
    from gracheck.autodiff import decoder_jacobian
    from gracheck.likelihoods import GaussianObs
    from gracheck.objectives import beta_vae_objective

    torch.manual_seed(4)
    D, d, n = 16, 4, 400
    dec = MLPDecoder(d, D, (16,), "elu", "sigmoid").double()
    L = torch.linalg.cholesky(0.4 * torch.eye(d, dtype=F64) + 0.1)
    model = _ToyVAE(D, d, dec, L=L)
    x = _data(n=6, D=D, seed=5)
    obs = GaussianObs(1.0)
    with torch.no_grad():
        h, Lb = model.encoder(x)
        g, J = decoder_jacobian(dec, h, return_output=True)
        cv = torch.stack([f.cv_log_px(x, dec, h, Lb, J, g, obs, 1, torch.Generator().manual_seed(100 + i))
                          for i in range(n)])
        mc = torch.stack([beta_vae_objective(x, dec, h, Lb, 1.0, obs, n_samples=1,
                                             generator=torch.Generator().manual_seed(900 + i), return_terms=True)["log_px"]
                          for i in range(n)])
    se = torch.sqrt(cv.var(0) / n + mc.var(0) / n)
    assert bool(((cv.mean(0) - mc.mean(0)).abs() < 4 * se).all()), (cv.mean(0) - mc.mean(0)) / se
    assert bool((cv.std(0) < 0.7 * mc.std(0)).all())


def test_evaluate_objectives_rejects_bad_input():
    dec = MLPDecoder(3, 5, (4,), "elu", "sigmoid").double()
    model = _ToyVAE(5, 3, dec)
    g1, gm = _gens()
    with pytest.raises(ValueError, match="n_mc"):
        f.evaluate_objectives(model, _data(D=5), 0.5, n_mc=0, generator_1=g1, generator_mc=gm)
    with pytest.raises(ValueError, match="beta"):
        f.evaluate_objectives(model, _data(D=5), -1.0, n_mc=2, generator_1=g1, generator_mc=gm)


# ---------------------------------------------------------------- rule 2: slope statistics
def test_ols_slope_matches_polyfit():
    rng = np.random.default_rng(0)
    x = np.array([0.1, 0.3, 0.6, 1.0])
    Y = rng.normal(size=(4, 5))
    ours = bstats.ols_slope(x, Y)
    ref = np.array([np.polyfit(x, Y[:, j], 1)[0] for j in range(5)])
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="x"):
        bstats.ols_slope(np.array([1.0, 1.0]), np.zeros(2))


def test_slope_rule_detects_a_trend_and_not_noise():
    rng = np.random.default_rng(1)
    betas = np.array([0.1, 0.3, 0.6, 1.0])
    growing = 0.5 * betas[:, None] + rng.normal(0, 0.3, size=(4, 400))
    s, lo, hi = f.slope_of_abs_mean(betas, growing, B=500, level=0.95, rng=np.random.default_rng(2))
    assert lo > 0 and lo < 0.5 < hi + 0.1 and s == pytest.approx(0.5, abs=0.1)
    flat = 0.3 + rng.normal(0, 0.3, size=(4, 400))
    s, lo, hi = f.slope_of_abs_mean(betas, flat, B=500, level=0.95, rng=np.random.default_rng(3))
    assert lo < 0 < hi
    # negative gaps that grow in size count as growing (|mean|)
    s, lo, _ = f.slope_of_abs_mean(betas, -growing, B=500, level=0.95, rng=np.random.default_rng(4))
    assert lo > 0


def test_bootstrap_mean_ci_covers_the_mean():
    x = np.random.default_rng(5).normal(2.0, 1.0, 2000)
    m, lo, hi = bstats.bootstrap_mean_ci(x, B=500, level=0.95, rng=np.random.default_rng(6))
    assert lo < m < hi and lo < 2.0 < hi and hi - lo < 0.15


# ---------------------------------------------------------------- check() and configs
def _fake_result(gap_shift=0.0, slope=1.0, seed=0, shrink=False, n_min=20):
    rng = np.random.default_rng(seed)
    cfg = f.Config(blocks=(1,), betas=(0.1, 0.5, 1.0), steps=1, n_test=50, bootstrap=200, min_points=n_min)
    models = []
    for beta in cfg.betas:
        n = 50
        grae = -700 + rng.normal(0, 1, n)
        size = (1.2 - beta) if shrink else slope * beta  # shrink: every gap's size falls as β grows
        gap = size * (0.5 + rng.random(n))
        taylor = grae - gap
        bmc = taylor - size * 0.3 + rng.normal(0, 0.05, n)
        models.append({"block": 1, "beta": beta, "beta_vae_1": list(bmc + rng.normal(0, 1, n)), "beta_vae_mc": list(bmc),
                       "taylor": list(taylor), "grae": list(grae), "gap_measured": list(grae - taylor),
                       "gap_analytic": list(gap + gap_shift), "gap_printed": list(gap * 1.3)})
    from gracheck.experiments._common import config_dict

    return ExperimentResult(claim_id=f.CLAIM_ID, scale="custom", config=config_dict(cfg), seeds=[seed], device="cpu",
                            metrics={}, figures=[], seconds=0.0, data={"models": models})


def _slopes(out):
    return [c for c in out if "slope" in c.measured]


def test_check_passes_on_consistent_growing_data_and_fails_otherwise():
    ok = f.check(_fake_result())
    assert len(_slopes(ok)) == 3 and len(ok) == 5 and all(c.passed for c in ok)  # 3 trend tests (b = 1) + 2 preconditions
    assert {c.outcome for c in ok} == {"verified"}
    # the gap identity is a library consistency test (below), not part of Fig. 3's verdict
    bad_gap = f.check(_fake_result(gap_shift=1e-5))
    assert len(bad_gap) == 5 and all(c.passed for c in bad_gap)
    flat = f.check(_fake_result(slope=0.0))
    assert not any(c.passed for c in _slopes(flat))
    shrinking = f.check(_fake_result(shrink=True))
    assert {c.outcome for c in _slopes(shrinking)} == {"refuted"}, [c.reason for c in shrinking]


def test_preconditions_unmet_are_inconclusive_and_name_the_measured_value():
    """Too few held-out points, or only two β for a b: inconclusive, whatever the slopes say."""
    from gracheck.base.verdicts import combine

    few = f.check(_fake_result(n_min=100))  # 50 points per model < 100
    pre = [c for c in few if "min_points" in c.measured]
    assert [c.outcome for c in pre] == ["inconclusive"] and "50 points per model" in pre[0].reason
    assert "5,000" in pre[0].reason and combine(c.outcome for c in few) == "inconclusive"
    res = _fake_result()
    res.data["models"] = [m for m in res.data["models"] if m["beta"] != 0.5]
    pair = f.check(res)
    grid = [c for c in pair if "betas_per_block" in c.measured]
    assert [c.outcome for c in grid] == ["inconclusive"] and "2 distinct β for b = 1" in grid[0].reason
    assert {c.outcome for c in _slopes(pair)} == {"verified"} and combine(c.outcome for c in pair) == "inconclusive"


def test_a_slope_whose_ci_straddles_zero_is_inconclusive_and_says_what_would_decide():
    """Three outcomes: CI above 0 → verified, below → refuted, straddling → inconclusive with a sample size."""
    rng = np.random.default_rng(7)
    betas = np.array([0.1, 0.3, 0.6, 1.0])
    n = 60
    # the gap's size grows by 0.01 per unit β against a per-point spread of 0.5: undecidable at n = 60
    Y = np.stack([0.5 + 0.01 * b + rng.normal(0, 0.5, n) for b in betas])
    s, lo, hi = f.slope_of_abs_mean(betas, Y, B=400, level=0.95, rng=np.random.default_rng(8))
    assert lo < 0 < hi
    cfg = f.Config(blocks=(1,), betas=tuple(betas), steps=1, n_test=n, bootstrap=400, min_points=20)
    models = [{"block": 1, "beta": float(b), "beta_vae_1": list(-700 + Y[k]), "beta_vae_mc": list(-700 + Y[k]),
               "taylor": list(np.full(n, -700.0)), "grae": list(-700 + Y[k]), "gap_measured": list(Y[k]),
               "gap_analytic": list(Y[k]), "gap_printed": list(Y[k])} for k, b in enumerate(betas)]
    from gracheck.experiments._common import config_dict

    res = ExperimentResult(claim_id=f.CLAIM_ID, scale="custom", config=config_dict(cfg), seeds=[0], device="cpu",
                           metrics={}, figures=[], seconds=0.0, data={"models": models})
    out = f.check(res)
    und = [c for c in out if c.outcome == "inconclusive"]
    assert und and not any(c.passed for c in und)
    assert "straddles 0" in und[0].reason and "held-out points" in und[0].reason and "--scale paper" in und[0].reason


def test_gap_identity_holds_on_a_trained_beta_vae(tmp_path):
    """Moved from Fig. 3's decision rules (issue 12): GRAE − Taylor, computed as the difference of the two
    objectives, equals the corrected Sec. 7 gap ``taylor_gap(J, Σ, β)`` at every held-out point of a
    *trained* β-VAE, to 1e-8 nats + 1e-8 relative (a consistency test of three library functions)."""
    from gracheck.data import mnist_images
    from gracheck.train import load_checkpoint, train

    cfg = f.model_config(f.Config(blocks=(2,), betas=(0.5,), steps=60, arch="mlp", hidden=(32,), n_test=50,
                                  train_eval_size=50, num_threads=1), beta=0.5, block=2, seed=0, device="cpu")
    train(cfg, tmp_path / "run", progress=False)
    model, _, _ = load_checkpoint(tmp_path / "run")
    x, _ = mnist_images("test", limit=50)
    g1, gm = _gens()
    ev = f.evaluate_objectives(model, x, 0.5, n_mc=2, generator_1=g1, generator_mc=gm, eval_batch=25)
    w = f.gap_worst(ev["gap_measured"].numpy(), ev["gap_analytic"].numpy(), 1e-8, 1e-8)
    assert w["passed"], w
    assert bool((ev["gap_analytic"] > 0).all())  # a trained amortised Σ is not the Eq. 11 optimum


def test_configs_and_train_configs():
    s = f.CONFIGS["smoke"]
    p = f.CONFIGS["paper"]
    assert s.latent_dim == p.latent_dim == 12 and p.blocks == (1, 2, 3) and p.n_test == 5000 and p.steps == 20_000
    assert p.arch == "conv" and p.width == 1.0 and s.num_threads is not None and s.num_threads <= 2
    tc1 = f.model_config(s, beta=0.3, block=1, seed=0, device="cpu")
    tc2 = f.model_config(s, beta=0.3, block=2, seed=0, device="cpu")
    assert tc1.posterior == "mean-field" and tc1.block is None and tc1.obs == "gaussian" and tc1.obs_variance == 1.0
    assert tc2.posterior == "block-diagonal" and tc2.block == 2 and tc2.model == "beta-vae"
    with pytest.raises(ValueError, match="block"):
        f.model_config(s, beta=0.3, block=0, seed=0, device="cpu")
    with pytest.raises(ValueError, match="betas"):
        f._validate(f.Config(blocks=(1,), betas=(0.5,), steps=1))
