"""Tests of the Fig. 4 / Table 1 experiment (gracheck.experiments.fig4_fid).

Fast unit tests of its statistics against independent computations, of the decision rule on
synthetic results, of the paper-scale guard, and one tiny end-to-end CelebA run (real data,
a few training steps) through ``run`` and ``check``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from gracheck import fid
from gracheck.base.stats import percentile_interval
from gracheck.experiments import fig4_fid as f
from gracheck.experiments._common import ExperimentResult, Metric

F64 = torch.float64


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _celeba_or_skip():
    import gracheck.data as gd

    try:
        gd.load_celeba("train", limit=1)
    except (FileNotFoundError, ValueError) as e:
        pytest.skip(f"CelebA not available: {e}")


# ---------------------------------------------------------------- sharpness statistic
@pytest.mark.parametrize("k, expected", [(4, 0.0), (7, 0.0), (8, 1.0), (20, 1.0)])
def test_hf_fraction_of_a_single_frequency(k, expected):
    """A cosine of k cycles across 64 px has all its power at k/64 cycles/px: fraction 0 or 1 at cutoff 1/8."""
    x = torch.arange(64, dtype=F64)
    img = 0.5 + 0.4 * torch.cos(2 * math.pi * k * x / 64)[None, :].expand(64, 64)
    got = f.hf_energy_fraction(img[None, None], 0.125)
    assert got.shape == (1,)
    assert abs(float(got[0]) - expected) < 1e-12


def test_hf_fraction_white_noise_matches_grid_count():
    """White noise spreads power evenly over the DFT grid: E[fraction] = share of non-DC grid points with |f| ≥ c
    (counted here with numpy, independently of the torch route)."""
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(300, 1, 64, 64, generator=g, dtype=F64)
    got = f.hf_energy_fraction(imgs, 0.125).mean().item()
    fy, fx = np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(64), indexing="ij")
    r = np.hypot(fy, fx)
    expected = float((r >= 0.125).sum()) / (64 * 64 - 1)
    assert abs(got - expected) < 0.01, (got, expected)


def test_hf_fraction_invariances_luma_and_blur():
    g = torch.Generator().manual_seed(1)
    gray = torch.rand(8, 1, 64, 64, generator=g, dtype=F64)
    base = f.hf_energy_fraction(gray)
    # brightness / contrast invariance (x -> a x + b)
    torch.testing.assert_close(f.hf_energy_fraction(0.3 * gray + 0.2), base, atol=1e-12, rtol=1e-10)
    # three equal channels: luma weights sum to 1, so the RGB route equals the gray one
    torch.testing.assert_close(f.hf_energy_fraction(gray.expand(8, 3, 64, 64)), base, atol=1e-12, rtol=1e-10)
    # Gaussian blur (multiplying the spectrum by exp(-2π²σ²|f|²)) lowers the fraction monotonically
    fy, fx = np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(64), indexing="ij")
    vals = []
    for sigma in (0.0, 0.5, 1.0, 2.0):
        H = np.exp(-2 * math.pi ** 2 * sigma ** 2 * (fy ** 2 + fx ** 2))
        blurred = np.real(np.fft.ifft2(np.fft.fft2(gray.numpy()[:, 0]) * H))
        vals.append(float(f.hf_energy_fraction(torch.from_numpy(blurred)[:, None]).mean()))
    assert all(b < a for a, b in zip(vals, vals[1:])), vals
    # a constant image has no detail: 0, not NaN
    assert float(f.hf_energy_fraction(torch.full((1, 3, 16, 16), 0.4))[0]) == 0.0


def test_hf_fraction_rejects_bad_input():
    with pytest.raises(TypeError, match="images"):
        f.hf_energy_fraction(np.zeros((1, 3, 8, 8)))
    with pytest.raises(ValueError, match="images"):
        f.hf_energy_fraction(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="cutoff"):
        f.hf_energy_fraction(torch.zeros(1, 3, 8, 8), cutoff=0.0)


# ---------------------------------------------------------------- slope and bootstrap
def test_loglog_slope_exact_and_against_polyfit():
    betas = [0.02, 0.1, 0.4, 1.0]
    assert abs(f.loglog_slope(betas, [3.0 * b ** -0.7 for b in betas]) + 0.7) < 1e-12
    rng = np.random.default_rng(0)
    v = rng.uniform(0.1, 1.0, size=4)
    assert abs(f.loglog_slope(betas, v) - np.polyfit(np.log(betas), np.log(v), 1)[0]) < 1e-12
    with pytest.raises(ValueError, match="values"):
        f.loglog_slope([0.1], [1.0])
    with pytest.raises(ValueError, match="positive"):
        f.loglog_slope([0.1, 1.0], [1.0, 0.0])


def test_hierarchical_bootstrap_replicate_matches_direct_computation():
    """Replicate b equals the Fréchet distance of the same resampled rows computed from features directly."""
    rng0 = np.random.default_rng(5)
    held = rng0.normal(size=(60, 6))
    runs = [{"features": rng0.normal(0.3, 1.0, size=(50, 6)), "hf": rng0.uniform(0, 1, size=50)}]
    B = 4
    rng = np.random.default_rng(11)
    held_idx = rng.integers(0, 60, size=(B, 60))
    out = f.hierarchical_bootstrap(runs, held, B=B, rng=np.random.default_rng(12), held_idx=held_idx)
    # replay the draws: per replicate, the run index (R = 1), then the sample indices
    replay = np.random.default_rng(12)
    for b in range(B):
        replay.integers(0, 1, size=1)
        idx = replay.integers(0, 50, size=50)
        direct = fid.frechet_distance_from_features(runs[0]["features"][idx], held[held_idx[b]])
        assert abs(out["fd"][b] - direct) < 1e-9 * max(1.0, direct)
        assert abs(out["hf"][b] - runs[0]["hf"][idx].mean()) < 1e-12
    # shared held-out fits give the same replicates
    again = f.hierarchical_bootstrap(runs, held, B=B, rng=np.random.default_rng(12), held_idx=held_idx,
                                     held_fits=f.heldout_fits(held, held_idx))
    np.testing.assert_allclose(again["fd"], out["fd"], rtol=1e-12)


def test_bootstrap_separates_equal_and_shifted_distributions():
    rng = np.random.default_rng(3)
    held = rng.normal(size=(300, 4))
    same = [{"features": rng.normal(size=(300, 4)), "hf": np.ones(300)}]
    shifted = [{"features": rng.normal(1.0, 1.0, size=(300, 4)), "hf": np.ones(300)}]
    idx = rng.integers(0, 300, size=(100, 300))
    a = f.hierarchical_bootstrap(same, held, B=100, rng=rng, held_idx=idx)["fd"]
    b = f.hierarchical_bootstrap(shifted, held, B=100, rng=rng, held_idx=idx)["fd"]
    assert np.quantile(a, 0.975) < np.quantile(b, 0.025)  # ‖Δμ‖² = 4 dominates
    lo, hi = percentile_interval(b, 0.95)
    assert lo < 4.0 < hi + 1.0


# ---------------------------------------------------------------- decision rule on synthetic results
def _synthetic(ratios, slopes, betas=(0.1, 0.4, 1.0), B=200, seed=0, runs=3, acc=0.98, gauss=1000.0):
    """Result data whose bootstrap replicates have known ratios (±2 %) and sharpness slopes; ``runs`` runs per
    (model, β), a feature net of accuracy ``acc`` and a pixel-Gaussian baseline at D_G = ``gauss``."""
    rng = np.random.default_rng(seed)
    per_beta = {}
    for beta, r in zip(betas, ratios):
        e = {}
        vae = 100.0 * (1 + 0.02 * rng.standard_normal(B))
        for m, fd_b in (("beta-vae", vae), ("grae-approx", vae * r * (1 + 0.02 * rng.standard_normal(B)))):
            s = slopes[m]
            hf = 0.1 * beta ** s
            e[m] = {"fd": float(np.median(fd_b)), "fd_runs": [float(np.median(fd_b))] * runs, "fd_boot": fd_b.tolist(), "hf": hf,
                    "hf_boot": (hf * (1 + 0.01 * rng.standard_normal(B))).tolist(), "kid": 1.0, "kid_se": 0.1}
        per_beta[f._bkey(beta)] = e
    cfg = dataclasses.replace(f.CONFIGS["smoke"], betas=tuple(betas))
    data = {"betas": list(betas), "seeds": list(range(runs)), "per_beta": per_beta, "real": {"hf": 0.1, "fd": 1.0},
            "feature_net": {"heldout_accuracy": acc, "steps": 150, "feature_hash": "ab" * 32},
            "pixel_gaussian": {"fd": gauss, "note": "test"}, "feature_dim": 128}
    return ExperimentResult(claim_id=f.CLAIM_ID, scale="custom", config=dataclasses.asdict(cfg), seeds=[0],
                            device="cpu", metrics={"x": Metric(1.0)}, figures=[], seconds=0.0, data=data)


def test_check_passes_when_ratios_close_and_both_blur():
    res = _synthetic([1.0, 1.05, 0.95], {"beta-vae": -0.3, "grae-approx": -0.2})
    out = f.check(res)
    assert len(out) == 3 + 2 + 4  # 3 ratios, 2 trends, 4 preconditions
    assert all(c.passed for c in out), [c.detail for c in out if not c.passed]
    for c in out[:5]:
        assert c.claim_id == f.CLAIM_ID and (c.atol is not None)
        assert all(math.isfinite(v) for v in json.loads(json.dumps(c.measured, default=list)).get("ci"))


def test_check_refutes_a_ratio_outside_the_band_and_a_flat_trend():
    out = f.check(_synthetic([1.0, 1.4, 1.0], {"beta-vae": -0.3, "grae-approx": 0.05}))
    passed = [c.passed for c in out[:5]]
    assert passed == [True, False, True, True, False], [c.detail for c in out]
    assert [c.outcome for c in out[:5]] == ["verified", "refuted", "verified", "verified", "refuted"]
    assert "ratio GRAE≈/β-VAE 1.4" in out[1].detail and "NOT FID" in out[1].detail
    # a ratio whose point is inside but whose CI pokes out of the band is not confirmed (equivalence test)
    out = f.check(_synthetic([1.23, 1.0, 1.0], {"beta-vae": -0.3, "grae-approx": -0.3}))
    assert not out[0].passed and out[0].measured["ci"][0] < 1.25 < out[0].measured["ci"][1]
    assert out[0].outcome == "inconclusive" and "samples per model" in out[0].reason


@pytest.mark.parametrize("change, needle", [
    (dict(runs=1), "1 run(s)"),
    (dict(acc=0.6), "held-out rotation accuracy 0.600"),
    (dict(gauss=50.0), "× the pixel-Gaussian baseline"),
])
def test_unmet_preconditions_make_the_claim_inconclusive_naming_the_value(change, needle):
    from gracheck.base.verdicts import combine

    out = f.check(_synthetic([1.0, 1.05, 0.95], {"beta-vae": -0.3, "grae-approx": -0.2}, **change))
    bad = [c for c in out[5:] if c.outcome != "verified"]
    assert len(bad) == 1 and bad[0].outcome == "inconclusive" and needle in bad[0].reason, [c.reason for c in out[5:]]
    assert all(c.outcome == "verified" for c in out[:5]) and combine(c.outcome for c in out) == "inconclusive"


def test_too_few_samples_for_the_feature_covariance_is_inconclusive():
    res = _synthetic([1.0, 1.0, 1.0], {"beta-vae": -0.3, "grae-approx": -0.3})
    res.config["n_samples"] = 100
    bad = [c for c in f.check(res) if c.outcome == "inconclusive"]
    assert len(bad) == 1 and "100 samples per model" in bad[0].reason and "10,000" in bad[0].reason


def test_pixel_gaussian_samples_have_the_images_mean_and_covariance():
    """Exact draws from N(μ, S) of the given images (checked on 4-pixel images against numpy's mean and cov),
    clipped to [0, 1], reproducible from the seed."""
    rng = np.random.default_rng(2)
    A = rng.normal(size=(4, 4)) * 0.05
    imgs = torch.tensor(0.5 + rng.normal(size=(30, 4)) @ A, dtype=torch.float32).reshape(30, 1, 2, 2)
    g = f.pixel_gaussian_samples(imgs, 40000, seed=3)
    assert g.shape == (40000, 1, 2, 2) and float(g.min()) >= 0 and float(g.max()) <= 1
    X, G = imgs.reshape(30, 4).double().numpy(), g.reshape(-1, 4).double().numpy()
    np.testing.assert_allclose(G.mean(0), X.mean(0), atol=4 * np.sqrt(np.cov(X.T).diagonal().max() / 40000))
    np.testing.assert_allclose(np.cov(G.T), np.cov(X.T), atol=0.05 * np.abs(np.cov(X.T)).max())
    assert torch.equal(g, f.pixel_gaussian_samples(imgs, 40000, seed=3))
    with pytest.raises(ValueError, match="real"):
        f.pixel_gaussian_samples(imgs[:1], 5, seed=0)


# ---------------------------------------------------------------- configs
def test_configs_state_the_paper_settings_and_validate():
    p = f.CONFIGS["paper"]
    assert p.betas == (0.02, 0.04, 0.06, 0.08, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert (p.runs, p.latent_dim, p.steps, p.arch, p.width, p.require_full_celeba) == (5, 128, 50_000, "conv", 1.0, True)
    s = f.CONFIGS["smoke"]
    assert s.num_threads is not None and s.num_threads <= 2 and not s.require_full_celeba
    for cfg in (p, s):
        f._validate(cfg)
    with pytest.raises(ValueError, match="betas"):
        f._validate(dataclasses.replace(s, betas=(0.1,)))
    with pytest.raises(ValueError, match="betas"):
        f._validate(dataclasses.replace(s, betas=(0.1, -1.0)))
    with pytest.raises(ValueError, match="ratio_band"):
        f._validate(dataclasses.replace(s, ratio_band=0.9))
    with pytest.raises(ValueError, match="runs"):
        f._validate(dataclasses.replace(s, runs=0))


def test_paper_scale_without_full_celeba_fails_naming_the_missing_file(tmp_path, monkeypatch):
    from gracheck.data.celeba import SUBSET_ZIP, find_celeba

    try:
        archive = find_celeba()[0]
    except FileNotFoundError:  # no CelebA at all: the search error names the files
        with pytest.raises(FileNotFoundError, match="list_eval_partition.txt"):
            f.run(f.CONFIGS["paper"], seed=0, device="cpu", out_dir=tmp_path)
        return
    if archive.name != SUBSET_ZIP:
        pytest.skip(f"the full CelebA is present ({archive}); the guard does not fire")
    monkeypatch.setenv("GRACHECK_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"img_align_celeba\.zip.*list_eval_partition\.txt"):
        f.run(f.CONFIGS["paper"], seed=0, device="cpu", out_dir=tmp_path)
    assert not (tmp_path / "cache").exists()  # failed before training or loading anything


# ---------------------------------------------------------------- a tiny end-to-end CelebA run
@pytest.mark.empirical
def test_tiny_celeba_run_end_to_end(tmp_path, monkeypatch):
    """run + check on real CelebA with a few steps: every figure, metric, note and check is produced."""
    _celeba_or_skip()
    monkeypatch.setenv("GRACHECK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(fid.INCEPTION_ENV_VAR, str(tmp_path / "no-such-weights.pth"))
    cfg = dataclasses.replace(
        f.CONFIGS["smoke"], steps=3, batch_size=16, n_samples=40, n_heldout=40, feature_steps=3, feature_limit=200,
        bootstrap=20, kid_subset_size=16, kid_subsets=4, grid_side=3,
    )
    with _threads(1):
        res = f.run(cfg, seed=0, device="cpu", out_dir=tmp_path / "figs")
    assert res.claim_id == f.CLAIM_ID and res.scale == "custom" and res.seeds == list(range(cfg.runs))
    names = sorted(p.rsplit("/", 1)[-1] for p in res.figures)
    assert names == ["fig4_samples_beta0.1.png", "fig4_samples_beta1.png", "fig4_summary.png", "fig4_table1_samples.png"]
    for p in res.figures:
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    for k, m in res.metrics.items():
        assert math.isfinite(m.value), k
        if k.startswith("beta=") and k.endswith("/domain_frechet_distance"):  # bootstrapped per model
            assert m.ci_low is not None and m.ci_high is not None and m.ci_low <= m.value <= m.ci_high, k
    for beta in ("0.1", "1"):
        for m in f.MODELS:
            assert f"beta={beta}/{m}/domain_frechet_distance" in res.metrics
    assert not any("inception_fid" in k for k in res.metrics)  # never a number without weights
    assert any(n.startswith("Inception FID: not run here") for n in res.notes)
    assert res.data["inception_fid"]["status"] == "not run here"
    assert any("NOT FID" in n for n in res.notes)
    # JSON round trip (what the cache and the report store) gives the same verdicts
    back = ExperimentResult.from_dict(json.loads(json.dumps(res.to_dict())))
    a, b = f.check(res), f.check(back)
    assert len(a) == len(b) >= 4
    assert [(c.passed, c.outcome, c.reason) for c in a] == [(c.passed, c.outcome, c.reason) for c in b]
    # 3 steps of training cannot meet the feature net's accuracy precondition: nothing is decided
    assert {c.outcome for c in a} <= {"verified", "inconclusive"} and any(c.outcome == "inconclusive" for c in a)
    # distances are between the models' samples and the trainer's held-out images: the point values agree
    # with the domain Fréchet distance recomputed from the stored per-run values
    for beta in ("0.1", "1"):
        for m in f.MODELS:
            e = res.data["per_beta"][beta][m]
            assert abs(e["fd"] - np.mean(e["fd_runs"])) < 1e-12 and e["fd"] > res.data["real"]["fd"]


def test_cache_key_follows_the_inception_weights_variable(tmp_path, monkeypatch):
    """A cached fig4 result must not survive setting or changing $GRACHECK_INCEPTION_WEIGHTS."""
    from gracheck.experiments import fig4_fid

    monkeypatch.delenv("GRACHECK_INCEPTION_WEIGHTS", raising=False)
    unset = fig4_fid.cache_key_inputs()
    w = tmp_path / "w.pth"
    w.write_bytes(b"0" * 10)
    monkeypatch.setenv("GRACHECK_INCEPTION_WEIGHTS", str(w))
    first = fig4_fid.cache_key_inputs()
    w.write_bytes(b"0" * 20)
    second = fig4_fid.cache_key_inputs()
    assert unset == {"inception_weights": None}
    assert first != unset and second != first and second["size"] == 20
