"""Fig. 4, Table 1, App. G: CelebA samples of β-VAE and GRAE≈ have close distances to real images across β.

Claim ``fig4-fid-agree``. For each β we train a β-VAE (Eq. 2: factored Gaussian q, standard normal
prior, Gaussian observations with unit variance) and a GRAE≈ (Eq. 13 with the regulariser replaced
by the stochastic estimate of the Hadamard upper bound, Eq. 14; ``grae_k`` = 1 sampled Jacobian
column) on CelebA 64×64 with the same d, data, steps and seed, through the shared model cache
:func:`gracheck.experiments._zoo.trained`. From each model we decode ``n_samples`` draws
z ~ N(0, I) (decoder means, eval-mode BatchNorm) and compare them with ``n_heldout`` held-out
CelebA images: the *last* ``n_heldout`` images of the archive sorted by name, which the trainer
holds out (its ``eval_size``) and never trains on. The paper measures FID over 5 runs per β.

Distances (what is and is not FID)
----------------------------------
* **Domain Fréchet distance** (:func:`gracheck.fid.domain_frechet_distance`): the Fréchet distance
  between Gaussians fitted to the 128 penultimate features of gracheck's CelebA rotation-prediction
  net (:func:`gracheck.fid.train_domain_features`, trained once with a fixed seed and cached; its
  training is counted in the smoke time). It is **not FID** and is not comparable with the paper's
  numbers; it ranks sample sets the same way only in so far as both feature spaces see the same
  defects (blur is one: tests/test_fid.py checks that it grows with Gaussian blur).
* **KID** (:func:`gracheck.fid.kid`) in the same features, mean ± standard error over random
  subsets (the SE is Monte-Carlo error of the subset average only). Reported, no decision.
* **Inception FID** (:func:`gracheck.fid.inception_fid`) only when ``$GRACHECK_INCEPTION_WEIGHTS``
  names pytorch-fid's weights file; otherwise the result says "Inception FID: not run here" and
  carries no number. Nothing is downloaded. Reported, no decision.

Decision rule (fixed before any result was seen; the numbers are Config fields)
-------------------------------------------------------------------------------
Uncertainty: a hierarchical percentile bootstrap with ``bootstrap`` = 200 replicates, ``ci_level``
= 95 %, seeded by the experiment seed. Each replicate resamples, per (model, β), the ``runs``
training runs with replacement and, inside each chosen run, its samples with replacement; the
held-out set is resampled once per replicate and shared by all models (a paired comparison). With
one run per β only sample-to-sample variation is captured, not run-to-run variation; with several
(smoke 3, paper 5) both are. Plug-in Fréchet distances are biased upwards at finite n;
both models use the same n, so the bias largely cancels in the ratio below (the real-vs-real
distance at the same n is reported as the floor).

1. *Agreement* (the paper's Fig. 4): per β, ``r_β = D(GRAE≈) / D(β-VAE)`` with D the domain
   Fréchet distance averaged over runs. **Passes iff for every β the 95 % CI of r_β lies inside
   [1/``ratio_band``, ``ratio_band``] = [0.8, 1.25].** Why a ratio band and not a CI overlap: an
   overlap test passes more easily the noisier the estimate is; requiring the CI *inside* a band is
   an equivalence test, so too little data can only refute, never confirm. Why ±25 %: the paper
   reports close FID curves (standard deviations over runs below 1 FID unit) and shows sample grids
   of visibly equal blur; a quarter of the distance is far smaller than the differences across its
   β range, yet allows for the much weaker smoke-scale models.
2. *Blur trend* (the paper's Table 1 / App. G: "large β values resulting in more blurry samples"):
   sharpness of a sample = its **high-frequency energy fraction**: the share of the power spectrum
   of the (mean-subtracted) luma image at radial frequencies ≥ ``hf_cutoff`` = 1/8 cycles/pixel
   (periods of 8 pixels or less on a 64-pixel face), over all non-zero frequencies
   (:func:`hf_energy_fraction`). Statistic: the least-squares slope of log(mean sharpness) against
   log β over the β grid, per model. **Passes iff the 95 % CI's upper end is < 0, for each model
   separately.** Why this statistic at smoke scale: it is invariant to image contrast and brightness
   (a weak model's low-contrast samples are not mistaken for blurry ones, a Laplacian variance
   would be), Gaussian blur lowers it monotonically (unit-tested), it needs no feature network,
   and its per-sample average over a few hundred samples has small sampling error.

Three outcomes (:mod:`gracheck.base.verdicts`). Rule 1 is an equivalence test: **verified** iff the
CI of r_β lies inside [0.8, 1.25], **refuted** iff it lies entirely outside (wholly above 1.25 or
below 0.8), **inconclusive** when it crosses an end of the band. Rule 2 is a one-sided trend test:
verified iff the CI's upper end is < 0, refuted iff its lower end is ≥ 0, inconclusive when it
straddles 0. An inconclusive result says how many samples per model would decide it at the observed
spread (CI half-width ∝ 1/√n; with one run per β this ignores run-to-run variation, which only more
runs measure) and whether ``--scale paper`` (10,000 samples, 5 runs per β) provides them. The
claim is verified when every check is, refuted when any is refuted, inconclusive otherwise. This
three-outcome reading replaced the two-outcome one ("refuted" whenever a CI was not inside the
band / below 0) before rerunning; no threshold or band changed. Thresholds are not retuned after
seeing results.

Preconditions (stated before the rerun that first applied them; unmet → inconclusive, naming the
measured value; numbers are Config fields):

* *Several runs* (rules 1 and 2): ≥ ``min_runs`` = 3 training runs per (model, β). One run shows
  sample-to-sample variation only; the bootstrap over runs needs at least three to say anything about
  run-to-run variation (with two, a resample of runs takes only three values).
* *A feature network that sees faces* (rule 1): the rotation-prediction net's held-out 4-way accuracy
  ≥ ``min_feature_accuracy`` = 0.90 (chance 0.25). Predicting a face's orientation needs its layout
  (eyes above mouth); a net below 90 % has not learned it, and distances in its features would not be
  about faces.
* *Enough samples for a covariance* (rule 1): ``n_samples`` ≥ ``min_samples_per_feature`` = 2 per
  feature dimension (256 for the 128 features), so the fitted covariances are full rank with room.
* *Samples not absurdly far from the data* (rule 1): every model's run-averaged D is below the
  distance D_G of a trivial, closed-form generator: a Gaussian with the mean and covariance of the
  ``n_samples`` real training images (the floor's set) in pixel space, ``n_samples`` draws (exact
  draws μ + Σᵢ wᵢ(xᵢ − μ)/√(n − 1), w ~ N(0, I)), clipped to [0, 1] like the models' outputs, seeded
  by the experiment seed. A model that does not beat a Gaussian fit of the pixels has not learned
  the image distribution beyond its second moments, and a ratio of two such distances compares two
  failures, not two models' sample quality. The position of each model between the floor and this
  baseline, u = (D − D_floor)/(D_G − D_floor), is reported (u < 1 is the precondition).

Reported besides (no decision): D per model and β with CIs, the real-vs-real floor (``n_samples``
training images vs the held-out set), the pixel-Gaussian baseline D_G, the run-to-run standard
deviation of D per (model, β) (Fig. 4's caption says "all standard deviations are less than 1":
that is a statement about Inception FID at the paper's scale, which needs pytorch-fid's weights and
a GPU; domain Fréchet distances have another scale and cannot test it), KID ± SE, the sharpness
ratio GRAE≈/β-VAE per β, the real images' sharpness, the held-out objectives of each model, the
domain net's held-out rotation accuracy and weight hash.

Scales
------
smoke (CPU, 1 torch thread): the shipped subset (first 10,000 aligned
CelebA images at half resolution, resized to 64×64), β ∈ {0.1, 1.0} (the fewest a trend allows),
``runs`` = 2 runs per β (seeds seed, seed + 1; the first versions had one; 3 runs put the cold default
report at 637 s, over its 10-minute budget, with fig4 taking 287 s of it — measured 2026-12-02 on the
2-core development machine, before any 2-run result was seen; at smoke scale the samples-near-the-data
precondition fails by ~70×, so the run count cannot change the verdict there; with 2 runs the ≥ 3 runs
precondition of rules 1 and 2 is unmet at smoke by this choice and says so), d = 32, and a
one-hidden-layer ELU **MLP** (12288-128-d) instead of the App. D conv net: that net costs 1-2.5 s
per step on 2 CPU cores even at width 1/32 (its first and last layers run 5×5 kernels at 64×64),
so no conv width fits the budget; 300 Adam steps of 32 images; 400 samples per model vs 400
held-out images; the domain net trained for 150 steps on the first 2,000 images. One thread
because two threads on two shared cores stall (measured 4-20× slower under load).
paper (GPU): the full aligned CelebA (``img_align_celeba.zip`` + ``list_eval_partition.txt``,
required: the run stops with an error naming the missing file otherwise), App. D conv nets at full
width, d = 128, β ∈ {0.02, 0.04, 0.06, 0.08, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0}, 5 runs per β, 50k Adam
steps of 64 images (Sec. 7; batch size and learning rate are not given in the paper), 10,000
samples per model vs the last 10,000 images (all in the official test split), the domain net
trained for 5,000 steps on the official train split. At both scales the models are trained as two
ensembles (β-VAEs; GRAE≈s: each differs only in β and seed) by :func:`gracheck.experiments._zoo.train_grid`
(on this CPU the 12288-wide MLP layers are memory-bound, so the ensemble saves little there).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gracheck.base import verdicts
from gracheck.base.evidence import CheckResult, decided
from gracheck.base.files import save_figure
from gracheck.base.stats import derive_seed, percentile_interval
from gracheck.base.validate import check_positive_int
from gracheck.experiments import _zoo
from gracheck.experiments._common import (
    ExperimentResult,
    Metric,
    config_dict,
    config_from_dict,
    experiment_claim,
    now_utc,
    scale_of,
    torch_threads,
)

CLAIM = experiment_claim(
    __name__,
    id="fig4-fid-agree",
    source="Fig. 4; Table 1; App. G",
    statement="On CelebA 64×64, samples of β-VAE and GRAE≈ trained at the same β have close Fréchet "
              "distances to held-out images across β, and both blur as β grows.",
    title="Fig. 4 and Table 1 (App. G): Fréchet distances on CelebA",
    shows="Fréchet distance of β-VAE and GRAE≈ samples to held-out CelebA images across β.",
)
CLAIM_ID = CLAIM.id
MODELS = ("beta-vae", "grae-approx")
MODEL_LABELS = {"beta-vae": "β-VAE", "grae-approx": "GRAE≈"}
INCEPTION_NOT_RUN = "Inception FID: not run here (no weights file; set $GRACHECK_INCEPTION_WEIGHTS)"


def cache_key_inputs() -> dict[str, Any]:
    """What outside the config changes this result: the Inception weights file named by the environment.

    The experiment cache (:func:`gracheck.experiments._common.run_experiment`) joins this to its key, so
    setting, changing or removing ``$GRACHECK_INCEPTION_WEIGHTS`` never reuses a stale FID status.
    """
    from gracheck.fid import INCEPTION_ENV_VAR

    path = os.environ.get(INCEPTION_ENV_VAR)
    if not path:
        return {"inception_weights": None}
    p = Path(path)
    st = p.stat() if p.is_file() else None
    return {"inception_weights": str(p.resolve()), "size": st.st_size if st else None,
            "mtime_ns": st.st_mtime_ns if st else None}


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of the experiment (saved with the result)."""

    betas: tuple[float, ...]
    runs: int
    latent_dim: int
    steps: int
    arch: str = "conv"
    width: float = 1.0
    hidden: tuple[int, ...] = (128,)
    activation: str = "elu"
    batch_size: int = 64
    lr: float = 1e-3
    grae_k: int = 1
    n_samples: int = 10_000
    n_heldout: int = 10_000
    feature_steps: int = 5000
    feature_batch: int = 64
    feature_limit: int | None = None
    kid_subset_size: int = 1000
    kid_subsets: int = 50
    hf_cutoff: float = 0.125
    ratio_band: float = 1.25
    min_runs: int = 3
    min_feature_accuracy: float = 0.90
    min_samples_per_feature: int = 2
    bootstrap: int = 200
    ci_level: float = 0.95
    grid_side: int = 6
    require_full_celeba: bool = True
    num_threads: int | None = 1
    eval_batch: int = 500


CONFIGS: dict[str, Config] = {
    # CPU, 1 thread: 2 β × (β-VAE + GRAE≈) × 2 runs = 8 MLPs of 300 steps on the shipped
    # 10k subset, 400 samples vs 400 held-out images, domain net 150 steps on 2,000 images.
    "smoke": Config(
        betas=(0.1, 1.0), runs=2, latent_dim=32, steps=300, arch="mlp", hidden=(128,), batch_size=32,
        n_samples=400, n_heldout=400, feature_steps=150, feature_batch=64, feature_limit=2000,
        kid_subset_size=200, kid_subsets=50, require_full_celeba=False, num_threads=1, grid_side=6,
    ),
    # The paper's settings (Sec. 7, Fig. 4, Table 1, App. G), for a GPU: 100 models.
    "paper": Config(
        betas=(0.02, 0.04, 0.06, 0.08, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0), runs=5, latent_dim=128, steps=50_000,
        arch="conv", width=1.0, batch_size=64, n_samples=10_000, n_heldout=10_000, feature_steps=5000,
        feature_batch=64, feature_limit=None, kid_subset_size=1000, kid_subsets=100, require_full_celeba=True,
        num_threads=None, grid_side=8,
    ),
}


# ----------------------------------------------------------------------------------------------
# Statistics (pure functions; float64)
# ----------------------------------------------------------------------------------------------
def _radial_frequency(h: int, w: int) -> Tensor:
    """|f| in cycles/pixel on the ``h × w`` DFT grid (float64)."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)
    fx = torch.fft.fftfreq(w, dtype=torch.float64)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def hf_energy_fraction(images: Tensor, cutoff: float = 0.125) -> Tensor:
    """Sharpness per image ``[N]``: share of the luma image's spectral power at radial frequency ≥ ``cutoff``.

    ``images [N, C, H, W]`` in [0, 1] (C = 3: luma = 0.299 R + 0.587 G + 0.114 B; C = 1: as is).
    The per-image mean is removed, so the DC term is 0 and the fraction is
    Σ_{|f| ≥ cutoff} |X(f)|² / Σ_f |X(f)|² over the full 2-D DFT grid (f in cycles/pixel,
    :func:`torch.fft.fftfreq`). Invariant to brightness and contrast (x ↦ a x + b, a ≠ 0). A
    constant image (no power at all) has no detail and gets 0. Float64.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images: expected a torch.Tensor [N, C, H, W], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images: expected shape [N, 1 or 3, H, W] with N ≥ 1, got {tuple(images.shape)}")
    if not images.is_floating_point() or not bool(torch.isfinite(images).all()):
        raise ValueError("images: expected finite floating-point values")
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not (0 < cutoff <= 0.5 * math.sqrt(2)):
        raise ValueError(f"cutoff: expected a number in (0, √2/2] cycles/pixel, got {cutoff!r}")
    x = images.detach().to("cpu", torch.float64)
    if x.shape[1] == 3:
        x = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    else:
        x = x[:, 0]
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2)
    high = (_radial_frequency(*x.shape[-2:]) >= cutoff).to(torch.float64)
    total = power.sum((-2, -1))
    hi = (power * high).sum((-2, -1))
    return torch.where(total > 0, hi / total.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(total))


def loglog_slope(betas, values) -> float:
    """Least-squares slope of log(values) against log(betas) (values > 0)."""
    b = np.log(np.asarray(betas, dtype=np.float64))
    v = np.asarray(values, dtype=np.float64)
    if b.shape != v.shape or b.ndim != 1 or len(b) < 2:
        raise ValueError(f"values: expected one value per β (≥ 2 β), got shapes {b.shape} and {v.shape}")
    if not np.all(v > 0):
        raise ValueError(f"values: log-log slope needs positive values, got {v.tolist()}")
    y = np.log(v)
    bc = b - b.mean()
    return float((bc * (y - y.mean())).sum() / (bc * bc).sum())


def hierarchical_bootstrap(
    runs: list[dict[str, np.ndarray]],
    heldout: np.ndarray,
    *,
    B: int,
    rng: np.random.Generator,
    held_idx: np.ndarray | None = None,
    held_fits: list[tuple[Any, Any]] | None = None,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates ``{"fd": [B], "hf": [B]}`` of the run-averaged distance and sharpness.

    ``runs``: one dict per training run with ``"features" [n, F]`` (domain features of its samples)
    and ``"hf" [n]`` (their sharpness). Replicate b draws the runs with replacement, inside each
    chosen run its samples with replacement (the same indices for features and sharpness), and
    computes the mean over chosen runs of the Fréchet distance to ``heldout[held_idx[b]]`` and of the
    mean sharpness. ``held_idx [B, n_held]`` lets several models share the held-out resample
    (a paired comparison); default: drawn here. ``held_fits``: the Gaussians fitted to those held-out
    resamples (:func:`heldout_fits`), to share the work between models.
    """
    from gracheck.fid import fit_gaussian, frechet_distance

    if not runs:
        raise ValueError("runs: need at least one run")
    nh = heldout.shape[0]
    if held_idx is None:
        held_idx = rng.integers(0, nh, size=(B, nh))
    if held_idx.shape[0] != B:
        raise ValueError(f"held_idx: expected {B} rows, got {held_idx.shape[0]}")
    if held_fits is None:
        held_fits = heldout_fits(heldout, held_idx)
    if len(held_fits) != B:
        raise ValueError(f"held_fits: expected {B} fits, got {len(held_fits)}")
    fd = np.empty(B)
    hf = np.empty(B)
    R = len(runs)
    for b in range(B):
        mu_h, c_h = held_fits[b]
        chosen = rng.integers(0, R, size=R)
        fds, hfs = [], []
        for r in chosen:
            n = runs[r]["features"].shape[0]
            idx = rng.integers(0, n, size=n)
            mu, c = fit_gaussian(runs[r]["features"][idx])
            fds.append(frechet_distance(mu, c, mu_h, c_h))
            hfs.append(float(np.mean(runs[r]["hf"][idx])))
        fd[b], hf[b] = float(np.mean(fds)), float(np.mean(hfs))
    return {"fd": fd, "hf": hf}


def pixel_gaussian_samples(real: Tensor, n: int, *, seed: int) -> Tensor:
    """``n`` draws from the Gaussian with the pixel mean and covariance of ``real [N, C, H, W]``, clipped to [0, 1].

    Exact draws without forming the covariance: μ + Σᵢ wᵢ (xᵢ − μ)/√(N − 1) with w ~ N(0, I_N) from a CPU
    generator seeded with ``seed`` (float64 arithmetic, float32 result ``[n, C, H, W]``). The precondition
    "samples not absurdly far from the data" compares every model with this closed-form generator.
    """
    if not isinstance(real, Tensor) or real.dim() != 4 or real.shape[0] < 2:
        raise ValueError(f"real: expected images [N ≥ 2, C, H, W], got {getattr(real, 'shape', type(real))}")
    check_positive_int("n", n)
    X = real.reshape(real.shape[0], -1).to(torch.float64)
    mu = X.mean(0)
    C = (X - mu) / math.sqrt(X.shape[0] - 1)
    w = torch.randn(n, X.shape[0], generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    return (mu + w @ C).clamp_(0.0, 1.0).to(torch.float32).reshape(n, *real.shape[1:])


def heldout_fits(heldout: np.ndarray, held_idx: np.ndarray) -> list[tuple[Any, Any]]:
    """Gaussian fits (:func:`gracheck.fid.fit_gaussian`) of ``heldout[held_idx[b]]`` for every replicate b."""
    from gracheck.fid import fit_gaussian

    return [fit_gaussian(heldout[idx]) for idx in held_idx]


def _bkey(beta: float) -> str:
    return f"{float(beta):g}"


# ----------------------------------------------------------------------------------------------
# Decision statistics from the stored replicates (used by run's metrics and by check)
# ----------------------------------------------------------------------------------------------
def statistics(data: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Point values and CIs of every reported statistic, from ``data`` (point values + replicates)."""
    lvl = cfg.ci_level
    betas = [float(b) for b in data["betas"]]
    out: dict[str, Any] = {"per_beta": {}, "slope": {}}
    for beta in betas:
        k = _bkey(beta)
        e = data["per_beta"][k]
        st: dict[str, Any] = {}
        for m in MODELS:
            fd_reps = np.asarray(e[m]["fd_boot"], dtype=np.float64)
            hf_reps = np.asarray(e[m]["hf_boot"], dtype=np.float64)
            st[m] = {"fd": (e[m]["fd"], *percentile_interval(fd_reps, lvl)), "hf": (e[m]["hf"], *percentile_interval(hf_reps, lvl))}
        ratio = e["grae-approx"]["fd"] / e["beta-vae"]["fd"]
        ratio_reps = np.asarray(e["grae-approx"]["fd_boot"]) / np.asarray(e["beta-vae"]["fd_boot"])
        st["ratio"] = (ratio, *percentile_interval(ratio_reps, lvl))
        hr = e["grae-approx"]["hf"] / e["beta-vae"]["hf"]
        hr_reps = np.asarray(e["grae-approx"]["hf_boot"]) / np.asarray(e["beta-vae"]["hf_boot"])
        st["hf_ratio"] = (hr, *percentile_interval(hr_reps, lvl))
        out["per_beta"][k] = st
    for m in MODELS:
        pts = [data["per_beta"][_bkey(b)][m]["hf"] for b in betas]
        reps = np.stack([np.asarray(data["per_beta"][_bkey(b)][m]["hf_boot"], dtype=np.float64) for b in betas], 1)
        slope_reps = np.array([loglog_slope(betas, row) if np.all(row > 0) else math.nan for row in reps])
        out["slope"][m] = (loglog_slope(betas, pts), *percentile_interval(slope_reps, lvl))
    return out


# ----------------------------------------------------------------------------------------------
# Models, samples, data
# ----------------------------------------------------------------------------------------------
def grid_configs(cfg: Config, *, seed: int, device: str) -> list:
    """The TrainConfigs of every (model, β, run) of ``cfg``; run r has seed ``seed + r``. Two ensembles."""
    return [train_config(cfg, model=m, beta=beta, seed=seed + r, device=device)
            for m in MODELS for beta in cfg.betas for r in range(cfg.runs)]


def train_config(cfg: Config, *, model: str, beta: float, seed: int, device: str):
    """The :class:`~gracheck.train.TrainConfig` of one model (Gaussian obs with unit variance, Sec. 7)."""
    return _zoo.train_config(
        dataset="celeba", model=model, posterior="mean-field", latent_dim=cfg.latent_dim, beta=float(beta),
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, device=device, obs="gaussian",
        obs_variance=1.0, arch=cfg.arch, width=cfg.width, hidden=cfg.hidden, activation=cfg.activation,
        grae_k=cfg.grae_k, eval_size=cfg.n_heldout, keep_checkpoints=1, num_threads=cfg.num_threads,
    )  # one checkpoint per model: at width 1 a checkpoint (weights + Adam state) is ~1.1 GB


@torch.no_grad()
def prior_samples(model, n: int, *, seed: int, device: str, batch: int = 500) -> Tensor:
    """``n`` decoder means g(z), z ~ N(0, I) from a generator seeded with ``seed``; CPU float32 in [0, 1]."""
    model = model.to(device).eval()
    d = model.decoder.d
    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, d, generator=g)
    out = [model.decoder(z[i:i + batch].to(device)).float().cpu() for i in range(0, n, batch)]
    return torch.cat(out).reshape(n, 3, 64, 64).clamp_(0.0, 1.0)


def require_full_celeba() -> Path:
    """The official archive's path; FileNotFoundError naming what is missing when only the shipped subset is found."""
    from gracheck.data.celeba import HOW_TO_GET_FULL, OFFICIAL_DIR, OFFICIAL_ZIP, SPLIT_FILE, SUBSET_ZIP, find_celeba

    archive, split = find_celeba()  # raises FileNotFoundError listing the places searched
    if archive.name == SUBSET_ZIP:
        raise FileNotFoundError(
            f"fig4-fid-agree at paper scale needs the full aligned CelebA: {OFFICIAL_ZIP} (or an unpacked "
            f"{OFFICIAL_DIR}/) beside {SPLIT_FILE}; found only the shipped 10k subset {archive}. {HOW_TO_GET_FULL}"
        )
    return archive


def _validate(cfg: Config) -> None:
    if len(cfg.betas) < 2 or len(set(cfg.betas)) != len(cfg.betas):
        raise ValueError(f"betas: need at least two distinct values for the blur trend, got {cfg.betas}")
    for b in cfg.betas:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b <= 0:
            raise ValueError(f"betas: expected finite numbers > 0, got {b!r}")
    for name in ("runs", "latent_dim", "steps", "n_samples", "n_heldout", "bootstrap", "feature_steps",
                 "kid_subset_size", "kid_subsets", "grid_side"):
        check_positive_int(name, getattr(cfg, name))
    if cfg.n_samples < 2 or cfg.n_heldout < 2:
        raise ValueError(f"n_samples, n_heldout: need at least 2 each, got {cfg.n_samples}, {cfg.n_heldout}")
    if cfg.kid_subset_size < 2:
        raise ValueError(f"kid_subset_size: must be ≥ 2, got {cfg.kid_subset_size}")
    if not (isinstance(cfg.ratio_band, (int, float)) and cfg.ratio_band > 1):
        raise ValueError(f"ratio_band: expected a number > 1, got {cfg.ratio_band!r}")
    for name in ("min_runs", "min_samples_per_feature"):
        check_positive_int(name, getattr(cfg, name))
    if not (0 < cfg.min_feature_accuracy < 1):
        raise ValueError(f"min_feature_accuracy: expected a number in (0, 1), got {cfg.min_feature_accuracy!r}")
    if not (0 < cfg.ci_level < 1):
        raise ValueError(f"ci_level: expected a number in (0, 1), got {cfg.ci_level!r}")
    if not (isinstance(cfg.hf_cutoff, (int, float)) and 0 < cfg.hf_cutoff <= 0.5 * math.sqrt(2)):
        raise ValueError(f"hf_cutoff: expected a number in (0, √2/2] cycles/pixel, got {cfg.hf_cutoff!r}")


def _fmt_ci(t) -> str:
    return f"{t[0]:.4g} ({t[1]:.4g}–{t[2]:.4g})"


# ----------------------------------------------------------------------------------------------
# run / check
# ----------------------------------------------------------------------------------------------
def plan(config: Config, *, seed: int = 0, device: str = "cpu") -> list:
    """The work of ``config`` (:mod:`gracheck.experiments._plan`): the β × objective × run grid as ensembles
    (one group per objective), then ``n_samples`` prior samples per model and their distances."""
    from gracheck.experiments._plan import final_job, measure_probe, training_jobs
    from gracheck.train import build_model

    _validate(config)
    cfgs = grid_configs(config, seed=seed, device=device)  # what ``run`` trains through _zoo.train_grid

    def blocked() -> str | None:
        if not config.require_full_celeba:
            return None
        try:
            require_full_celeba()
        except FileNotFoundError as e:
            return str(e).splitlines()[0]
        return None

    def probe(dev: str, k: int) -> None:
        with torch_threads(config.num_threads):
            prior_samples(build_model(cfgs[0]), k, seed=0, device=dev, batch=config.eval_batch)

    return [*training_jobs(CLAIM_ID, cfgs, blocked=blocked), final_job(
        CLAIM_ID, what=f"{config.n_samples} prior samples × {len(cfgs)} models; the domain feature net "
                       f"({config.feature_steps} steps, once), features, KID/FD and the figures not timed",
        measure=lambda dev: measure_probe(probe, units=len(cfgs) * config.n_samples, batch=config.eval_batch, device=dev,
                                          key=(CLAIM_ID, repr(config)), what="prior_samples"),
        blocked=blocked)]


def run(config: Config, *, seed: int, device: str, out_dir, progress: Callable[[str], None] | None = None) -> ExperimentResult:
    """Train (or load) every model, decode prior samples, measure distances and sharpness, draw the figures."""
    from gracheck import fid
    from gracheck.data import load_celeba
    from gracheck.experiments._zoo import trained

    _validate(config)
    t0 = time.perf_counter()
    if config.require_full_celeba:
        require_full_celeba()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda s: None)
    with torch_threads(config.num_threads):
        say("fig4: domain feature net (CelebA rotation predictor)")
        fnet, finfo = fid.train_domain_features(
            "celeba", seed=seed, steps=config.feature_steps, batch_size=config.feature_batch,
            limit=config.feature_limit, device=device,
        )
        fnet = fnet.to(device)
        allx = load_celeba("all")
        if config.n_heldout + config.n_samples > len(allx):
            raise ValueError(f"n_heldout + n_samples: {config.n_heldout} + {config.n_samples} exceed the "
                             f"{len(allx)} CelebA images available")
        held = allx[len(allx) - config.n_heldout:].clone()
        real = allx[: config.n_samples].clone()  # training images: the real-vs-real floor at this n
        del allx
        f_held = fid.domain_features(fnet, held).numpy()
        f_real = fid.domain_features(fnet, real).numpy()
        hf_held = hf_energy_fraction(held, config.hf_cutoff).numpy()
        hf_real = hf_energy_fraction(real, config.hf_cutoff).numpy()
        f_gauss = fid.domain_features(fnet, pixel_gaussian_samples(real, config.n_samples,
                                                                   seed=derive_seed("fig4-gauss", seed))).numpy()
        # Inception FID only with a user-supplied weights file; the real-vs-held-out value doubles as the probe
        # (no file, or a path that is not a file: "not run here"; a broken file raises).
        fid_ref = fid.inception_fid(real, held, device=device) if os.environ.get(fid.INCEPTION_ENV_VAR) else None
        want_fid = fid_ref is not None and fid_ref.get("status") == "ok"
        fid_line = ("Inception FID computed with the weights file named by $GRACHECK_INCEPTION_WEIGHTS "
                    "(reported, no decision)." if want_fid else INCEPTION_NOT_RUN if fid_ref is None
                    else f"Inception FID: not run here ({fid_ref.get('reason', 'no usable weights file')})")
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
        grids: dict[str, dict[str, list]] = {}
        model_eval: dict[str, Any] = {}
        seeds = [seed + r for r in range(config.runs)]
        grid = _zoo.train_grid(grid_configs(config, seed=seed, device=device), progress=progress)
        train_s = grid["seconds"]
        for beta in config.betas:
            k = _bkey(beta)
            raw[k], grids[k] = {}, {}
            for m in MODELS:
                raw[k][m] = []
                for r, s in enumerate(seeds):
                    say(f"fig4: β={beta:g}, {MODEL_LABELS[m]}, run {r + 1}/{config.runs} (seed {s}): samples")
                    tc = train_config(config, model=m, beta=beta, seed=s, device=device)
                    model, tres = trained(tc, say=progress)
                    model_eval[f"{m},beta={k},seed={s}"] = tres.get("eval_metrics", {})
                    x = prior_samples(model, config.n_samples, seed=derive_seed("fig4-z", s, k), device=device,
                                      batch=config.eval_batch)
                    feats = fid.domain_features(fnet, x).numpy()
                    kid_m, kid_se = fid.kid(feats, f_held, subset_size=min(config.kid_subset_size, config.n_samples,
                                                                           config.n_heldout),
                                            n_subsets=config.kid_subsets, seed=derive_seed("fig4-kid", s, k, m))
                    entry = {
                        "seed": s, "features": feats, "hf": hf_energy_fraction(x, config.hf_cutoff).numpy(),
                        "kid": kid_m, "kid_se": kid_se,
                        "fd": fid.frechet_distance_from_features(feats, f_held),
                    }
                    if want_fid:
                        entry["inception_fid"] = fid.inception_fid(x, held, device=device)
                    raw[k][m].append(entry)
                    if r == 0:
                        grids[k][m] = x[: config.grid_side ** 2].numpy()
        say("fig4: bootstrap")
        rng = np.random.default_rng([seed, 4, 4])
        B = config.bootstrap
        held_idx = rng.integers(0, config.n_heldout, size=(B, config.n_heldout))
        hfits = heldout_fits(f_held, held_idx)
        per_beta: dict[str, Any] = {}
        for beta in config.betas:
            k = _bkey(beta)
            per_beta[k] = {}
            for m in MODELS:
                runs = raw[k][m]
                boot = hierarchical_bootstrap(runs, f_held, B=B, rng=rng, held_idx=held_idx, held_fits=hfits)
                kids = np.array([e["kid"] for e in runs])
                kse = np.array([e["kid_se"] for e in runs])
                per_beta[k][m] = {
                    "fd": float(np.mean([e["fd"] for e in runs])),
                    "fd_runs": [float(e["fd"]) for e in runs],
                    "hf": float(np.mean([np.mean(e["hf"]) for e in runs])),
                    "kid": float(kids.mean()), "kid_se": float(math.sqrt(float((kse ** 2).sum())) / len(kse)),
                    "kid_runs": kids.tolist(),
                    "fd_boot": boot["fd"].tolist(), "hf_boot": boot["hf"].tolist(),
                    "inception_fid": [e.get("inception_fid") for e in runs] if want_fid else None,
                }
        real_boot = hierarchical_bootstrap([{"features": f_real, "hf": hf_real}], f_held, B=B, rng=rng, held_idx=held_idx,
                                           held_fits=hfits)
        kid_real = fid.kid(f_real, f_held, subset_size=min(config.kid_subset_size, config.n_samples, config.n_heldout),
                           n_subsets=config.kid_subsets, seed=derive_seed("fig4-kid-real", seed))

    data: dict[str, Any] = {
        "betas": [float(b) for b in config.betas],
        "seeds": seeds,
        "per_beta": per_beta,
        "real": {
            "fd": fid.frechet_distance_from_features(f_real, f_held), "fd_boot": real_boot["fd"].tolist(),
            "hf": float(hf_real.mean()), "hf_boot": real_boot["hf"].tolist(),
            "hf_heldout": float(hf_held.mean()), "kid": kid_real[0], "kid_se": kid_real[1],
        },
        "pixel_gaussian": {"fd": fid.frechet_distance_from_features(f_gauss, f_held),
                           "note": f"{config.n_samples} draws from N(μ, S) of the {config.n_samples} real training "
                                   "images' pixels, clipped to [0, 1]"},
        "feature_dim": int(f_held.shape[1]),
        "grid": grid,
        "feature_net": {k: finfo[k] for k in ("feature_net", "task", "seed", "steps", "batch_size", "limit",
                                               "heldout_accuracy", "feature_hash", "n_train", "n_heldout",
                                               "train_seconds", "cached")},
        "inception_fid": ({"status": "run", "real_vs_heldout": fid_ref} if want_fid
                          else {"status": "not run here", "line": fid_line}),
        "model_eval": model_eval,
        "train_seconds": train_s,
    }
    stats = statistics(data, config)
    lvl = config.ci_level
    metrics: dict[str, Metric] = {}
    n, nh = config.n_samples, config.n_heldout
    boot_note = (f"hierarchical percentile bootstrap ({config.bootstrap} replicates) over runs ({config.runs}) and "
                 "samples, held-out set resampled (paired across models)")
    for beta in config.betas:
        k = _bkey(beta)
        st = stats["per_beta"][k]
        metrics[f"beta={k}/domain_frechet_ratio_grae_over_betavae"] = Metric(
            *st["ratio"], level=lvl, n=n, unit="",
            note=f"decision: CI inside [{1 / config.ratio_band:.3g}, {config.ratio_band:g}]; {boot_note}")
        for m in MODELS:
            lab = MODEL_LABELS[m]
            metrics[f"beta={k}/{m}/domain_frechet_distance"] = Metric(
                *st[m]["fd"], level=lvl, n=n, unit="",
                note=f"{lab}: domain Fréchet distance (rotation-net features, NOT FID), {n} samples vs {nh} held-out; "
                     f"mean over {config.runs} run(s)")
            pb = data["per_beta"][k][m]
            metrics[f"beta={k}/{m}/kid"] = Metric(
                pb["kid"], pb["kid"] - 1.96 * pb["kid_se"], pb["kid"] + 1.96 * pb["kid_se"], level=0.95, n=n, unit="",
                note=f"{lab}: KID (rotation-net features), ±1.96 SE over {config.kid_subsets} subsets of "
                     f"{min(config.kid_subset_size, n, nh)} (Monte-Carlo error only)")
            metrics[f"beta={k}/{m}/sharpness_hf_fraction"] = Metric(
                *st[m]["hf"], level=lvl, n=n, unit="",
                note=f"{lab}: mean share of luma spectral power at ≥ {config.hf_cutoff:g} cycles/px; real images "
                     f"{data['real']['hf']:.4g}")
        metrics[f"beta={k}/sharpness_ratio_grae_over_betavae"] = Metric(
            *st["hf_ratio"], level=lvl, n=n, unit="", note="reported, no decision")
    for m in MODELS:
        metrics[f"{m}/sharpness_loglog_slope_vs_beta"] = Metric(
            *stats["slope"][m], level=lvl, n=len(config.betas), unit="",
            note=f"{MODEL_LABELS[m]}: d log(mean sharpness)/d log β, least squares over β; decision: CI upper end < 0")
    rf = data["real"]
    shift = float(np.mean(rf["fd_boot"])) - rf["fd"]
    flo, fhi = percentile_interval(np.asarray(rf["fd_boot"]) - shift, lvl)
    metrics["real_vs_heldout/domain_frechet_distance"] = Metric(
        rf["fd"], max(flo, 0.0), fhi, level=lvl, n=n, unit="",
        note=f"floor: {n} real training images vs the {nh} held-out images (same n as the models); bootstrap "
             f"re-centred on the point value (resampling with duplicates inflates a small Fréchet distance by "
             f"{shift:.3g}); reported, no decision")
    metrics["real_vs_heldout/kid"] = Metric(
        rf["kid"], rf["kid"] - 1.96 * rf["kid_se"], rf["kid"] + 1.96 * rf["kid_se"], level=0.95, n=n, unit="",
        note="floor: KID of real training images vs held-out (unbiased; ≈ 0 expected), ±1.96 SE")
    dg = data["pixel_gaussian"]["fd"]
    metrics["pixel_gaussian_vs_heldout/domain_frechet_distance"] = Metric(
        dg, n=n, unit="", note=f"baseline of the precondition 'samples not absurdly far': {data['pixel_gaussian']['note']}; "
                               "every model's D must lie below it")
    for beta in config.betas:
        k = _bkey(beta)
        for m in MODELS:
            fr = data["per_beta"][k][m]["fd_runs"]
            if len(fr) > 1:
                metrics[f"beta={k}/{m}/domain_frechet_run_sd"] = Metric(
                    float(np.std(fr, ddof=1)), n=len(fr), unit="",
                    note=f"{MODEL_LABELS[m]}: standard deviation over {len(fr)} runs of the domain Fréchet distance "
                         "(not FID; Fig. 4's 'all standard deviations < 1' is about Inception FID at paper scale)")
            u = (data["per_beta"][k][m]["fd"] - rf["fd"]) / (dg - rf["fd"]) if dg > rf["fd"] else math.inf
            metrics[f"beta={k}/{m}/position_floor_to_pixel_gaussian"] = Metric(
                u, n=n, unit="", note="u = (D − D_floor)/(D_G − D_floor); the precondition needs u < 1")
    acc, nacc = float(finfo["heldout_accuracy"]), int(finfo["n_heldout"]) * 4
    half = 1.96 * math.sqrt(max(acc * (1 - acc), 0.0) / nacc)
    metrics["feature_net/heldout_rotation_accuracy"] = Metric(
        acc, max(acc - half, 0.0), min(acc + half, 1.0), level=0.95, n=nacc, unit="",
        note=f"rotation-prediction net, {finfo['steps']} steps × {finfo['batch_size']}, seed {finfo['seed']}, "
             f"hash {finfo['feature_hash'][:12]}; chance 0.25; normal-approximation CI")
    if want_fid:
        for beta in config.betas:
            k = _bkey(beta)
            for m in MODELS:
                vals = [e["value"] for e in data["per_beta"][k][m]["inception_fid"] if e and e.get("status") == "ok"]
                if vals:
                    sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
                    metrics[f"beta={k}/{m}/inception_fid"] = Metric(
                        float(np.mean(vals)), None if sd is None else float(np.mean(vals)) - 1.96 * sd / math.sqrt(len(vals)),
                        None if sd is None else float(np.mean(vals)) + 1.96 * sd / math.sqrt(len(vals)), n=n, unit="",
                        note=f"Inception FID (pytorch-fid weights), mean over {len(vals)} run(s); no decision")
    grids["real"] = real[: config.grid_side ** 2].numpy()
    figures = [str(p) for p in draw_figures(data, stats, grids, config, out_dir, scale=scale_of(CONFIGS, config))]
    arch = (f"one-hidden-layer {config.activation.upper()} MLP {config.hidden} (not the App. D conv net)"
            if config.arch == "mlp" else f"App. D conv nets, width {config.width:g}")
    from gracheck.data.celeba import SUBSET_ZIP, find_celeba

    src = find_celeba()[0]
    src_txt = ("the shipped subset (first 10,000 aligned CelebA images at half resolution, 64×64 after crop/resize)"
               if src.name == SUBSET_ZIP else f"{src.name}")
    notes = [
        f"Scale {scale_of(CONFIGS, config)}: CelebA from {src_txt}; {arch}, d = {config.latent_dim}, "
        f"{config.steps} Adam steps (lr {config.lr:g}, batch {config.batch_size}), β ∈ {list(config.betas)}, "
        f"{config.runs} run(s) per β (seeds {seeds}); {n} prior samples per model vs the last {nh} images "
        "(held out by the trainer).",
        "Distances are domain Fréchet distances in the features of gracheck's CelebA rotation-prediction net, "
        "NOT FID: not comparable with the paper's Fig. 4 values.",
        fid_line,
        f"Domain net: {finfo['steps']} steps × {finfo['batch_size']} on {finfo['n_train']} images, held-out rotation "
        f"accuracy {finfo['heldout_accuracy']:.3f}, {'loaded from cache' if finfo.get('cached') else 'trained in this run'} "
        f"({finfo['train_seconds']:.1f} s when trained).",
        f"Training in this run: {train_s:.1f} s for {grid['trained']} of {grid['models']} models (ensembles of "
        f"{grid['ensembles'] or 'none'}; {grid['cached']} loaded from the model cache).",
    ]
    noisy = [f"{MODEL_LABELS[m]} at β={_bkey(b)}" for b in config.betas for m in MODELS
             if data["per_beta"][_bkey(b)][m]["hf"] > data["real"]["hf"]]
    if noisy:
        notes.append(
            f"Caveat on the sharpness statistic: the samples of {', '.join(noisy)} carry MORE high-frequency energy "
            f"than real images ({data['real']['hf']:.4f}), i.e. pixel noise of an under-trained decoder rather than "
            "detail; there the blur-trend check measures noise shrinking with β as much as blur growing.")
    if config.runs == 1:
        notes.append("One run per β: the CIs cover sample-to-sample variation only, not run-to-run variation "
                     "(the paper averages 5 runs).")
    return ExperimentResult(
        claim_id=CLAIM_ID, scale=scale_of(CONFIGS, config), config=config_dict(config), seeds=seeds, device=device,
        metrics=metrics, figures=figures, seconds=time.perf_counter() - t0, created=now_utc(), data=data, notes=notes,
    )


def check(res: ExperimentResult) -> list[CheckResult]:
    """Apply the module docstring's decision rules to the stored point values and bootstrap replicates."""
    cfg = config_from_dict(Config, res.config)
    seed = res.seeds[0] if res.seeds else 0
    stats = statistics(res.data, cfg)
    lvl = f"{cfg.ci_level:.0%}"
    lo_b, hi_b = 1.0 / cfg.ratio_band, cfg.ratio_band
    scale = f"{res.scale}, {cfg.runs} run(s)/β, {cfg.n_samples} samples vs {cfg.n_heldout} held-out, seeds {res.seeds}"
    paper_n = CONFIGS["paper"].n_samples
    out: list[CheckResult] = []
    for beta in res.data["betas"]:
        k = _bkey(beta)
        st = stats["per_beta"][k]
        r, rlo, rhi = st["ratio"]
        d = verdicts.equivalence((rlo, rhi), lo_b, hi_b, what=f"D(GRAE≈)/D(β-VAE) at β={k}", level=cfg.ci_level)
        note = "" if d.outcome != "inconclusive" else verdicts.decide_sentence(
            r, (rlo, rhi), cfg.n_samples, unit="samples per model", paper_n=paper_n, low=lo_b, high=hi_b)
        worst = max(abs(math.log(rlo)), abs(math.log(rhi))) if rlo > 0 and rhi > 0 else math.inf
        out.append(decided(
            CLAIM_ID, d, seed=seed, note=note,
            measured={"ratio": r, "ci": [rlo, rhi], "d_beta_vae": st["beta-vae"]["fd"][0],
                      "d_grae_approx": st["grae-approx"]["fd"][0]},
            expected=f"{lvl} CI of D(GRAE≈)/D(β-VAE) inside [{lo_b:.3g}, {hi_b:g}]",
            abs_err=worst, atol=math.log(hi_b),
            detail=(f"[β={k}, {scale}] domain Fréchet distance (NOT FID) to held-out CelebA: β-VAE "
                    f"{_fmt_ci(st['beta-vae']['fd'])}, GRAE≈ {_fmt_ci(st['grae-approx']['fd'])}; ratio GRAE≈/β-VAE "
                    f"{r:.3f} ({lvl} CI {rlo:.3f}–{rhi:.3f}); verified iff the CI lies inside [{lo_b:.3g}, {hi_b:g}], "
                    "refuted iff it lies entirely outside (abs err = worst |log ratio| at the CI ends, atol = log band)."),
        ))
    for m in MODELS:
        s, slo, shi = stats["slope"][m]
        hf_txt = ", ".join(f"β={_bkey(b)}: {stats['per_beta'][_bkey(b)][m]['hf'][0]:.4f}" for b in res.data["betas"])
        d = verdicts.one_sided((slo, shi), 0.0, claimed="below", level=cfg.ci_level,
                               what=f"d log(sharpness)/d log β of {MODEL_LABELS[m]}")
        note = "" if d.outcome != "inconclusive" else verdicts.decide_sentence(
            s, (slo, shi), cfg.n_samples, unit="samples per model", paper_n=paper_n, high=0.0)
        out.append(decided(
            CLAIM_ID, d, seed=seed, note=note,
            measured={"slope": s, "ci": [slo, shi]},
            expected=f"{lvl} CI of d log(sharpness)/d log β entirely below 0",
            abs_err=shi, atol=0.0,
            detail=(f"[{MODEL_LABELS[m]}, {scale}] blur with β: sharpness = share of luma spectral power at "
                    f"≥ {cfg.hf_cutoff:g} cycles/px ({hf_txt}; real images {res.data['real']['hf']:.4f}); log-log "
                    f"slope {s:+.3f} ({lvl} CI {slo:+.3f} to {shi:+.3f}); verified iff the upper end < 0, refuted iff "
                    "the lower end ≥ 0."),
        ))
    return out + preconditions(res.data, cfg, scale=scale, seed=seed)


def preconditions(data: dict[str, Any], cfg: Config, *, scale: str, seed: int) -> list[CheckResult]:
    """The module docstring's four preconditions as CheckResults (met → verified; unmet → inconclusive)."""
    paper = CONFIGS["paper"]
    out: list[CheckResult] = []

    def add(d, *, measured, expected, abs_err, atol, detail, note="", sense="exceeds"):
        out.append(decided(CLAIM_ID, d, seed=seed, measured=measured, expected=expected, abs_err=abs_err, atol=atol,
                           sense=sense, detail=f"[{scale}] precondition: {detail}", note="" if d.verified else note))

    runs = min(len(data["per_beta"][_bkey(b)][m]["fd_runs"]) for b in data["betas"] for m in MODELS)
    add(verdicts.precondition(runs >= cfg.min_runs, name="'several runs per (model, β)'", measured=f"{runs} run(s)",
                              required=f"≥ {cfg.min_runs}"),
        measured={"runs": runs}, expected=f"≥ {cfg.min_runs}", abs_err=float(runs), atol=float(cfg.min_runs),
        detail=f"{runs} training run(s) per (model, β); rules 1 and 2 need ≥ {cfg.min_runs} for run-to-run variation.",
        note=f"--scale paper trains {paper.runs} runs per (model, β).")
    fn = data["feature_net"]
    acc = float(fn["heldout_accuracy"])
    add(verdicts.precondition(acc >= cfg.min_feature_accuracy, name="'the feature network sees faces'",
                              measured=f"held-out rotation accuracy {acc:.3f}", required=f"≥ {cfg.min_feature_accuracy:g}"),
        measured={"heldout_accuracy": acc}, expected=f"≥ {cfg.min_feature_accuracy:g}", abs_err=acc,
        atol=cfg.min_feature_accuracy,
        detail=f"the CelebA rotation-prediction net ({fn['steps']} steps, hash {fn['feature_hash'][:12]}) predicts the "
               f"rotation of held-out faces with accuracy {acc:.3f} (chance 0.25); rule 1 needs ≥ {cfg.min_feature_accuracy:g}.",
        note="Train the feature net longer (feature_steps).")
    fdim = int(data.get("feature_dim", 128))
    need = cfg.min_samples_per_feature * fdim
    add(verdicts.precondition(cfg.n_samples >= need, name="'enough samples for a covariance'",
                              measured=f"{cfg.n_samples} samples per model", required=f"≥ {need} ({cfg.min_samples_per_feature} per feature)"),
        measured={"n_samples": cfg.n_samples, "feature_dim": fdim}, expected=f"≥ {need}", abs_err=float(cfg.n_samples),
        atol=float(need), detail=f"{cfg.n_samples} samples per model for {fdim}-dimensional features; rule 1 needs ≥ {need}.",
        note=f"--scale paper draws {paper.n_samples:,} samples per model.")
    pg = data.get("pixel_gaussian")
    floor = float(data["real"]["fd"])
    if pg is None:
        add(verdicts.precondition(False, name="'samples not absurdly far from the data'",
                                  measured="no pixel-Gaussian baseline in this result", required="every model's D < D_G"),
            measured={}, expected="D < D_G", abs_err=None, atol=None, sense="within",
            detail="the result predates the pixel-Gaussian baseline; rerun the experiment.")
        return out
    dg = float(pg["fd"])
    ds = {f"{MODEL_LABELS[m]}, β={_bkey(b)}": float(data["per_beta"][_bkey(b)][m]["fd"]) for b in data["betas"] for m in MODELS}
    worst = max(ds, key=ds.get)
    txt = ", ".join(f"{k}: {v:.4g}" for k, v in ds.items())
    add(verdicts.precondition(ds[worst] < dg, name="'samples not absurdly far from the data'",
                              measured=f"worst model D = {ds[worst]:.4g} ({worst}), {ds[worst] / dg:.3g}× the pixel-Gaussian "
                                       f"baseline's D_G = {dg:.4g} (real-vs-real floor {floor:.4g})",
                              required="every model's run-averaged D < D_G"),
        measured={"domain_fd": ds, "pixel_gaussian": dg, "floor": floor}, expected="every D < D_G",
        abs_err=ds[worst], atol=dg, sense="within",
        detail=f"domain Fréchet distances (NOT FID) {txt}; a Gaussian fitted to the pixels of {cfg.n_samples} real "
               f"training images gets D_G = {dg:.4g}, real vs held-out images {floor:.4g}; rule 1 needs every model "
               "below D_G.",
        note="What would decide it: models whose samples beat a Gaussian fit of the pixels (longer training, the App. "
             "D conv nets); whether --scale paper's models do is not yet measured.")
    return out


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
def _tile(images, side: int) -> np.ndarray:
    """``side × side`` images [N, 3, H, W] → one HWC array with 1-pixel white gaps."""
    x = np.asarray(images, dtype=np.float64)[: side * side]
    n, c, h, w = x.shape
    canvas = np.ones((side * (h + 1) - 1, side * (w + 1) - 1, 3))
    for i in range(n):
        r, q = divmod(i, side)
        canvas[r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w] = x[i].transpose(1, 2, 0)
    return canvas


def draw_figures(
    data: dict[str, Any], stats: dict[str, Any], grids: dict[str, Any], cfg: Config, out_dir: Path, *, scale: str
) -> list[Path]:
    """Table 1 overview (rows = models, columns = β), one App. G grid pair per β, and the summary plot.

    ``grids``: ``{β key: {model: images [≥ side², 3, 64, 64]}, "real": images}`` (kept out of the result's
    data, which stays small enough for the report's JSON).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    betas = data["betas"]
    seeds = data["seeds"]
    side = cfg.grid_side
    arch = "MLP" if cfg.arch == "mlp" else f"App. D conv w={cfg.width:g}"
    tag = f"{scale} scale: {arch}, d={cfg.latent_dim}, {cfg.steps} steps, seed {seeds[0]}"

    # Table 1 layout: rows β-VAE / GRAE≈, one column per β (first run's samples), plus real images.
    small = min(side, 4)
    fig, axes = plt.subplots(2, len(betas) + 1, figsize=(2.6 * (len(betas) + 1), 5.9), squeeze=False)
    for i, m in enumerate(MODELS):
        for j, b in enumerate(betas):
            ax = axes[i, j]
            ax.imshow(_tile(grids[_bkey(b)][m], small), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"β = {b:g}", fontsize=11)
            if j == 0:
                ax.set_ylabel(MODEL_LABELS[m], fontsize=12)
        ax = axes[i, -1]
        if i == 0:
            ax.imshow(_tile(grids["real"], small), interpolation="nearest")
            ax.set_title("real (train) images", fontsize=10)
        ax.axis("off")
    fig.suptitle(f"Table 1 layout — CelebA 64×64 samples from N(0, I)\n{tag}", fontsize=10)
    fig.tight_layout()
    p = out_dir / "fig4_table1_samples.png"
    save_figure(fig, p, dpi=120)
    plt.close(fig)
    paths.append(p)

    # App. G: per β, the two models' sample grids side by side.
    for b in betas:
        k = _bkey(b)
        fig, axes = plt.subplots(1, 2, figsize=(9.6, 5.3))
        for ax, m in zip(axes, MODELS):
            st = stats["per_beta"][k][m]
            ax.imshow(_tile(grids[k][m], side), interpolation="nearest")
            ax.set_title(f"{MODEL_LABELS[m]}, β = {b:g}\ndomain Fréchet {st['fd'][0]:.3g}, sharpness {st['hf'][0]:.4f}",
                         fontsize=10)
            ax.axis("off")
        fig.suptitle(f"App. G layout — prior samples at β = {b:g} ({tag})", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.94))
        p = out_dir / f"fig4_samples_beta{k}.png"
        save_figure(fig, p, dpi=110)
        plt.close(fig)
        paths.append(p)

    # Summary: distance vs β, ratio vs β with the band, sharpness vs β.
    fig, axes = plt.subplots(1, 3, figsize=(15.5, 4.6))
    bx = np.array(betas)
    colors = {"beta-vae": "tab:blue", "grae-approx": "tab:orange"}
    for j, m in enumerate(MODELS):
        off = 1.0 + 0.03 * (j - 0.5)
        v = np.array([stats["per_beta"][_bkey(b)][m]["fd"] for b in betas])
        axes[0].errorbar(bx * off, v[:, 0], yerr=[v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]], marker="o", capsize=3,
                         color=colors[m], label=MODEL_LABELS[m])
        h = np.array([stats["per_beta"][_bkey(b)][m]["hf"] for b in betas])
        axes[2].errorbar(bx * off, h[:, 0], yerr=[h[:, 0] - h[:, 1], h[:, 2] - h[:, 0]], marker="o", capsize=3,
                         color=colors[m], label=f"{MODEL_LABELS[m]} (slope {stats['slope'][m][0]:+.2f})")
    rf = data["real"]
    axes[0].axhline(rf["fd"], color="k", ls="--", lw=0.9, label="real vs held-out (floor)")
    axes[0].set_title("Domain Fréchet distance to held-out images\n(rotation-net features, NOT FID; 95% CI)", fontsize=9)
    axes[0].set_ylabel("domain Fréchet distance")
    r = np.array([stats["per_beta"][_bkey(b)]["ratio"] for b in betas])
    axes[1].errorbar(bx, r[:, 0], yerr=[r[:, 0] - r[:, 1], r[:, 2] - r[:, 0]], marker="o", capsize=3, color="tab:green",
                     label="D(GRAE≈)/D(β-VAE)")
    axes[1].axhspan(1 / cfg.ratio_band, cfg.ratio_band, color="tab:green", alpha=0.12,
                    label=f"pass band [{1 / cfg.ratio_band:.2f}, {cfg.ratio_band:g}]")
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].set_title("Ratio of distances (decision: 95% CI inside the band)", fontsize=9)
    axes[1].set_ylabel("ratio")
    axes[2].axhline(rf["hf"], color="k", ls="--", lw=0.9, label="real images")
    axes[2].set_title(f"Sharpness: share of luma power ≥ {cfg.hf_cutoff:g} cycles/px\n(decision: log-log slope CI < 0)",
                      fontsize=9)
    axes[2].set_ylabel("high-frequency energy fraction")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("β")
        ax.set_xticks(bx)
        ax.set_xticklabels([f"{b:g}" for b in betas], fontsize=8)
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Fig. 4 quantified — {tag}, {cfg.runs} run(s)/β, {cfg.n_samples} samples vs {cfg.n_heldout} "
                 f"held-out; {'Inception FID not run here' if data['inception_fid']['status'] != 'run' else 'Inception FID in the metrics'}",
                 fontsize=10)
    fig.tight_layout()
    p = out_dir / "fig4_summary.png"
    save_figure(fig, p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
