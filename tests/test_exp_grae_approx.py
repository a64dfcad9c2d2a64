"""Unit tests of the GRAE≈-vs-β-VAE experiment's math (gracheck.experiments.grae_approx_training); no training."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from gracheck.base.stats import wilson_interval
from gracheck.base.verdicts import equivalence
from gracheck.experiments import grae_approx_training as g
from gracheck.experiments._common import ExperimentResult, config_dict
from gracheck.fid import frechet_distance_from_features
from gracheck.objectives import gaussian_kl, grae_objective
from gracheck.likelihoods import GaussianObs

F64 = torch.float64


def _jtj(B, d, D=20, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    J = scale * torch.randn(B, D, d, generator=gen, dtype=F64)
    return J.transpose(-1, -2) @ J


# ---------------------------------------------------------------- Σ* (Eq. 9/11)
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_optimal_scale_tril_is_beta_times_inverse(beta):
    """LLᵀ = β(JᵀJ + βI)⁻¹, by an explicit matrix inverse (a different computation)."""
    M = _jtj(4, 5, seed=int(beta * 10))
    L = g.optimal_scale_tril(M, beta)
    assert torch.allclose(L, torch.tril(L))
    expected = beta * torch.linalg.inv(M + beta * torch.eye(5, dtype=F64))
    assert torch.allclose(L @ L.transpose(-1, -2), expected, atol=1e-12, rtol=1e-10)


def test_optimal_scale_tril_maximises_eq8():
    """Σ* maximises the Σ-part of Eq. 8 (H_f = −JᵀJ): random SPD perturbations never do better."""
    beta, d = 0.4, 4
    M = _jtj(1, d, seed=3)[0]
    L = g.optimal_scale_tril(M, beta)

    def f(S):
        return -0.5 * torch.trace(M @ S) - 0.5 * beta * (torch.trace(S) - torch.logdet(S))

    S0 = L @ L.T
    best = f(S0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        E = 0.05 * torch.randn(d, d, generator=gen, dtype=F64)
        A = torch.linalg.matrix_exp(0.5 * (E + E.T))
        assert f(A @ S0 @ A.T) <= best + 1e-12


def test_optimal_scale_tril_rejects_bad_input():
    with pytest.raises(TypeError, match="JtJ"):
        g.optimal_scale_tril(np.eye(3), 1.0)
    with pytest.raises(ValueError, match="obs_variance"):
        g.optimal_scale_tril(torch.eye(3, dtype=F64), 1.0, obs_variance=0.0)


# ---------------------------------------------------------------- the two yardsticks on a linear decoder
class _Enc(nn.Module):
    def __init__(self, mean, L=None):
        super().__init__()
        self.register_buffer("m", mean)
        self.L = L

    def forward(self, x):
        n = x.shape[0]
        return self.m[:n].to(x.dtype), (None if self.L is None else self.L[:n].to(x.dtype))


class _Model(nn.Module):
    def __init__(self, enc, dec):
        super().__init__()
        self.encoder, self.decoder = enc, dec


def _linear_setup(N=6, d=3, beta=0.5, seed=0):
    torch.manual_seed(seed)
    dec = nn.Linear(d, 784).double()
    with torch.no_grad():
        dec.weight.mul_(0.3)
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(N, d, generator=gen, dtype=F64)
    with torch.no_grad():
        x = (dec(h) + 0.05 * torch.randn(N, 784, generator=gen, dtype=F64)).clamp(0, 1).reshape(N, 1, 28, 28)
    return dec, h, x


def test_linear_decoder_exact_elbo_at_sigma_star_equals_eq13():
    """Theory behind yardstick 1: for a linear decoder the Taylor expansion is exact, so the exact ELBO
    at q = N(h, Σ*) equals the GRAE objective (Eq. 10/13); the ELBO is computed in closed form here."""
    beta = 0.5
    dec, h, x = _linear_setup(beta=beta)
    A = dec.weight  # [D, d]
    M = (A.T @ A).expand(len(h), -1, -1)
    L = g.optimal_scale_tril(M, beta)
    S = L @ L.transpose(-1, -2)
    obs = GaussianObs(1.0)
    with torch.no_grad():
        logp_mean = obs.log_prob(x, dec(h))
        exact = logp_mean - 0.5 * torch.einsum("bij,bji->b", M, S) - beta * gaussian_kl(h, S)
        eq13 = grae_objective(x, dec, h, beta, obs)
    assert torch.allclose(exact, eq13, atol=1e-9, rtol=0)


@pytest.mark.parametrize("kind", ["grae-approx", "beta-vae"])
def test_evaluate_objectives_linear_decoder(kind):
    """evaluate_objectives: with Σ* (computed inside for GRAE≈, given as the encoder's q for the β-VAE),
    the many-sample ELBO matches Eq. 13 within Monte-Carlo error, and its 'grae' column is Eq. 13."""
    beta = 0.5
    dec, h, x = _linear_setup(beta=beta)
    A = dec.weight.detach()
    L = g.optimal_scale_tril((A.T @ A).expand(len(h), -1, -1), beta)
    model = _Model(_Enc(h, None if kind == "grae-approx" else L), dec)
    ev = g.evaluate_objectives(model, kind, x, beta, device="cpu", eval_batch=16, elbo_samples=4000, seed=3)
    with torch.no_grad():
        eq13 = grae_objective(x.double(), dec, h, beta, GaussianObs(1.0)).numpy()
    np.testing.assert_allclose(ev["grae"], eq13, atol=1e-9)
    # MC error of 4000 samples: sd of log p(x|z) here is < 2 nats per sample -> SE < 0.04; allow 0.2 nats
    np.testing.assert_allclose(ev["elbo"], eq13, atol=0.2)
    assert ev["elbo"].shape == (len(h),)


def test_evaluate_objectives_rejects_mismatched_models():
    dec, h, x = _linear_setup()
    with pytest.raises(ValueError, match="scale_tril"):
        g.evaluate_objectives(_Model(_Enc(h, None), dec), "beta-vae", x, 0.5, device="cpu", eval_batch=4,
                              elbo_samples=2, seed=0)
    with pytest.raises(ValueError, match="kind"):
        g.evaluate_objectives(_Model(_Enc(h, None), dec), "vae", x, 0.5, device="cpu", eval_batch=4,
                              elbo_samples=2, seed=0)


# ---------------------------------------------------------------- statistics
def test_relative_difference_exact_shift():
    """a = b + δ|b − c| pointwise ⇒ r = δ, and every bootstrap replicate gives δ too."""
    rng = np.random.default_rng(0)
    c = -720.0
    b = c - rng.uniform(10, 30, 300)
    a = b + 0.07 * np.abs(b.mean() - c)
    r, lo, hi = g.relative_difference_ci(a, b, c, B=200, level=0.95, rng=np.random.default_rng(1))
    assert r == pytest.approx(0.07, abs=1e-12)
    assert lo <= 0.07 + 1e-12 and hi >= 0.07 - 1e-12  # shift relative to the resample's own mean
    assert hi - lo < 0.02


def test_relative_difference_ci_coverage():
    """Percentile bootstrap CI of (mean a − mean b)/|mean b − c| covers the truth about 95% of the time."""
    c, mu_b, delta = 0.0, -20.0, 1.0
    truth = delta / abs(mu_b - c)
    hits = 0
    reps = 120
    for s in range(reps):
        rng = np.random.default_rng(100 + s)
        b = mu_b + rng.normal(0, 5, 200)
        a = b + delta + rng.normal(0, 2, 200)
        _, lo, hi = g.relative_difference_ci(a, b, c, B=300, level=0.95, rng=rng)
        hits += lo <= truth <= hi
    assert 0.87 <= hits / reps <= 1.0


def test_relative_difference_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="b:"):
        g.relative_difference_ci(np.zeros(5), np.zeros(4), 0.0, B=10, level=0.95, rng=rng)
    with pytest.raises(ValueError, match="a, b"):
        g.relative_difference_ci(np.array([0.0, np.nan]), np.zeros(2), 0.0, B=10, level=0.95, rng=rng)
    with pytest.raises(ValueError, match="level"):
        g.relative_difference_ci(np.zeros(3), np.ones(3), 0.0, B=10, level=1.5, rng=rng)


def test_fd_ratio_bootstrap_same_and_shifted():
    rng = np.random.default_rng(0)
    F = 6
    ref = rng.normal(size=(800, F))
    a = rng.normal(size=(800, F)) + 0.5
    b_same = rng.normal(size=(800, F)) + 0.5
    b_far = rng.normal(size=(800, F)) + 1.5
    out = g.fd_ratio_bootstrap(a, b_same, ref, B=100, level=0.95, rng=np.random.default_rng(1))
    assert out["fd_a"][0] == pytest.approx(frechet_distance_from_features(a, ref), rel=1e-12)
    # population FD = ‖0.5·1‖² = 1.5 for both; the ratio's CI contains 1 and lies in the 1.5 band
    assert out["ratio"][1] <= 1.0 <= out["ratio"][2]
    assert equivalence(out["ratio"][1:], 1 / 1.5, 1.5, what="ratio").verified
    far = g.fd_ratio_bootstrap(a, b_far, ref, B=100, level=0.95, rng=np.random.default_rng(2))
    # population ratio 13.5 / 1.5 = 9
    assert far["ratio"][1] > 5 and not equivalence(far["ratio"][1:], 1 / 1.5, 1.5, what="ratio").verified
    for k in ("fd_a", "fd_b", "ratio"):
        v, lo, hi = far[k]
        assert lo <= v <= hi or abs(v - lo) < 1e-9


def test_fd_ratio_rejects_bad_input():
    with pytest.raises(ValueError, match="f_b"):
        g.fd_ratio_bootstrap(np.zeros((5, 3)), np.zeros((5, 2)), np.zeros((5, 3)), B=5, level=0.95,
                             rng=np.random.default_rng(0))


def test_within_band_and_wilson():
    assert equivalence((0.9, 1.2), 1 / 1.5, 1.5, what="r").verified
    assert not equivalence((0.6, 1.2), 1 / 1.5, 1.5, what="r").verified
    assert not equivalence((0.9, math.inf), 1 / 1.5, 1.5, what="r").verified
    lo, hi = wilson_interval(5, 10, 0.95)
    # textbook value for 5/10 at 95 %: (0.2366, 0.7634)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    with pytest.raises(ValueError, match="k, n"):
        wilson_interval(11, 10)


def test_train_configs_differ_only_in_the_model():
    from gracheck.train import config_diff

    cfg = g.CONFIGS["smoke"]
    a = g.train_config(cfg, model="beta-vae", beta=0.5, seed=3, device="cpu")
    b = g.train_config(cfg, model="grae-approx", beta=0.5, seed=3, device="cpu")
    assert set(config_diff(a, b)) == {"model"}
    assert b.grae_k == cfg.grae_k and a.seed == b.seed == 3
    with pytest.raises(ValueError, match="model"):
        g.train_config(cfg, model="ae", beta=0.5, seed=0, device="cpu")


def test_configs_are_valid_and_paper_scale_is_the_papers():
    for c in g.CONFIGS.values():
        g._validate(c)
    p = g.CONFIGS["paper"]
    assert (p.arch, p.width, p.latent_dim, p.steps, p.n_test) == ("conv", 1.0, 12, 20_000, 5000)
    with pytest.raises(ValueError, match="n_test"):
        g._validate(dataclasses.replace(p, n_test=6000))
    with pytest.raises(ValueError, match="betas"):
        g._validate(dataclasses.replace(p, betas=(0.5, -1.0)))


# ---------------------------------------------------------------- the decision rule, wired end to end
def _fake_result(shift_frac: float, fd_grae: float, tmp_path=None, acc=0.98, gauss=1000.0, n_min=100):
    cfg = dataclasses.replace(g.CONFIGS["smoke"], betas=(0.5,), bootstrap=200, n_test=300, min_points=n_min)
    rng = np.random.default_rng(0)
    c = -0.5 * 784 * math.log(2 * math.pi)
    v_elbo = c - rng.uniform(15, 25, 300)
    v_grae = c - rng.uniform(14, 24, 300)
    s = {
        "beta": 0.5,
        "beta-vae": {"elbo": v_elbo.tolist(), "grae": v_grae.tolist(), "kid": [0.1, 0.01],
                     "samples": np.zeros((10, 28, 28)).tolist()},
        "grae-approx": {"elbo": (v_elbo + shift_frac * 20).tolist(), "grae": (v_grae + shift_frac * 19).tolist(),
                        "kid": [0.1, 0.01], "samples": np.ones((10, 28, 28)).tolist()},
        "fd": {"beta-vae": [100.0, 95.0, 105.0], "grae-approx": [fd_grae, fd_grae * 0.95, fd_grae * 1.05],
               "ratio": [fd_grae / 100, fd_grae / 100 * 0.93, fd_grae / 100 * 1.07]},
    }
    data = {"settings": [s], "gaussian_const": c, "fd_floor": 5.0, "fd_pixel_gaussian": gauss,
            "feature_net": {"feature_hash": "0" * 64, "heldout_accuracy": acc, "n_heldout": 10000, "feature_dim": 128}}
    return ExperimentResult(claim_id=g.CLAIM_ID, scale="custom", config=config_dict(cfg), seeds=[0], device="cpu",
                            metrics={}, figures=[], seconds=0.0, data=data), cfg


def test_check_passes_and_fails_by_the_rule():
    ok, _ = _fake_result(0.0, 110.0)
    res = g.check(ok)
    assert len(res) == 3 + 4 and all(r.passed for r in res)  # three equivalence tests + four preconditions
    bad_obj, _ = _fake_result(0.25, 110.0)  # GRAE≈ better by 25 % of the constant-free objective
    r = g.check(bad_obj)
    assert not r[0].passed and not r[1].passed and r[2].passed
    bad_fd, _ = _fake_result(0.0, 200.0)  # FD twice the β-VAE's
    r = g.check(bad_fd)
    assert r[0].passed and r[1].passed and not r[2].passed
    assert all(x.claim_id == g.CLAIM_ID for x in r)
    assert [x.outcome for x in g.check(_fake_result(0.25, 110.0)[0])[:3]] == ["refuted", "refuted", "verified"]
    straddle = g.check(_fake_result(0.0, 145.0)[0])[2]  # ratio CI 1.35–1.55 crosses the band's end 1.5
    assert straddle.outcome == "inconclusive" and "samples per model" in straddle.reason


@pytest.mark.parametrize("change, needle", [
    (dict(acc=0.9), "held-out accuracy 0.9000"),
    (dict(gauss=105.0), "× the pixel-Gaussian baseline's 105"),
    (dict(n_min=400), "300 per model"),
])
def test_unmet_preconditions_make_the_claim_inconclusive_naming_the_value(change, needle):
    from gracheck.base.verdicts import combine

    out = g.check(_fake_result(0.0, 110.0, **change)[0])
    bad = [c for c in out[3:] if c.outcome != "verified"]
    assert len(bad) == 1 and bad[0].outcome == "inconclusive" and needle in bad[0].reason, [c.reason for c in out[3:]]
    assert all(c.outcome == "verified" for c in out[:3]) and combine(c.outcome for c in out) == "inconclusive"


def test_figure_draws(tmp_path):
    res, cfg = _fake_result(0.0, 110.0)
    stats = g.setting_statistics(res.data, cfg, 0)
    p = g.draw_figure(res.data, stats, cfg, tmp_path, seed=0)
    assert p.is_file() and p.stat().st_size > 10_000
