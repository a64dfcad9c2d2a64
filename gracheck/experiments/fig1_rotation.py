"""Fig. 1, 5, 6 / App. C: a mean-field posterior picks out the true latent axes; a full one does not.

Claim ``fig1-rotation-uniqueness``. On the 2-D data ``x = ν(Wz) + ε`` of App. C
(:mod:`gracheck.data.synthetic`), VAEs with decoder ``ν(Az) + b`` are trained by full-batch gradient
descent for a varying number of iterations; for each run we read the rotation angle between the
true latents and the inferred posterior means (orthogonal Procrustes, permutation and reflection
removed) and the run's ELBO. Paper: with diagonal Σ the angle goes to 0 as the ELBO approaches its
optimum; with full Σ it does not (the full-Σ ELBO is exactly invariant under z → Rz).

The model, per trial (everything below is batched over a leading trial dimension)
---------------------------------------------------------------------------------
- Likelihood ``N(x; ν(Az) + b, s²I)`` with ``s = Config.obs_std = 0.05``, the data's noise, fixed
  (App. C lists A, b, C, d, Σ as learned and nothing else; the decoder has "the same form as the
  generative model"). Prior ``N(0, I₂)``, β = 1.
- Posterior: amortised ``N(Cx + d, Σ)`` with ``C = O₁C′`` and ``Σ = O₂D′D′ᵀO₂ᵀ``; unamortised
  ``N(μᵢ, Σᵢ)`` with ``Σᵢ = O D′ᵢD′ᵢᵀ Oᵀ``; O₁, O₂, O random rotations fixed per trial, D′ lower
  triangular (3 free entries, raw, no positivity constraint: D′D′ᵀ does not care about signs).
- Diagonal Σ (our reading of App. C: "we learn only diagonal elements of Σ that appear in the
  objective, leaving the off-diagonal elements free"): the same rotated parameterisation builds a
  full matrix ``O₂D′D′ᵀO₂ᵀ`` and the mean-field ELBO reads only its diagonal, i.e. q is the factorised
  Gaussian with variances ``diag(O₂D′D′ᵀO₂ᵀ)``. Full Σ uses the whole matrix.
  Note: with *plain* gradient descent C = O₁C′ is a no-op (GD is equivariant under orthogonal
  reparameterisation); O₂ is not, because D′ is triangular. We implement both as written.
- W has orthogonal columns of norms 2 and 1 (``w_columns="orthogonal"``): App. C's literal recipe
  (Gaussian columns rescaled, not orthogonalised) puts even the PPCA optimum at the angle of W's right
  singular vectors, not 0 (erratum claim ``erratum-appC-gaussian-w``).
- ELBO per point, in nats: ``−log(2πs²) − E_q‖x − ν(Az) − b‖²/(2s²) − KL(q‖N(0, I))``. Because ν acts
  elementwise, ``(Az)_j`` is a 1-D Gaussian ``N(a_jᵀμ, a_jᵀΣa_j)`` under q, so the expectation is a
  sum of two 1-D integrals: exact in closed form for ν = identity, and by Gauss–Hermite quadrature
  with ``gh_train`` nodes in training, ``gh_ref`` for the reference optimum and ``gh_eval`` nodes for
  every reported ELBO otherwise (posterior variances of ``(Az)_j`` are ≈ s², where 5 nodes are already
  accurate to ~1e-9; the tests compare quadrature and closed form with Monte Carlo). For ν = identity
  with amortisation the data enter only through their mean and second moment, so a step costs O(1)
  per trial.

Training (App. C's gradient descent) and why short runs stall
-------------------------------------------------------------
- Gradient descent on ``s² · (−mean ELBO)`` (= ½·mean E‖x − ν(Az) − b‖² + s²·KL: the β-VAE objective
  with a unit-variance decoder and β = s², same maximiser as the ELBO). The paper's lr 0.1 on the
  unscaled per-point ELBO with s = 0.05 diverges at once (the curvature in b alone is 1/s² = 400 >
  2/0.1); the paper does not state its normalisation, this one makes lr 0.1 stable. Unamortised
  per-point parameters (μᵢ, D′ᵢ) each appear in one term of the mean over N points, so their step is
  multiplied by N (each takes a GD step of size lr on its own point's objective, curvature ≤ 8, so
  lr 0.1 is stable for them too; with a shared lr they would move N times slower than the decoder).
  Documented, not in the paper.
- Gradients are written out by hand (:func:`gd_gradient`; the tests compare them with autograd of
  :func:`recon_and_kl` to rounding): the moment route (ν = identity, amortised) is a few dozen numpy
  operations on ``[T, 2, 2]`` arrays per step whatever the number of points, and always runs on the
  CPU (its cost is per-operation overhead, which a GPU's kernel launches would only raise); the
  per-point route (nonlinear ν, or unamortised) is torch on ``[T, N, 2, K]`` tensors, on any device.
- Schedule: lr0 = 0.1, divided by 10 after a first stage of n iterations and then after every
  ``later_stages·n`` iterations, down to 1e-5 (App. C: ``later_stages = 1``, 5n iterations), n from
  ``schedule_n`` with ``trials_per_n`` trials each; every trial has its own data draw (W, z, ε) and
  initialisation (A, C′ ~ N(0, 0.5²), b = d = 0, D′ = I, μᵢ ~ N(0, 0.1²)); the diagonal-Σ and full-Σ
  trial with the same index share data and initialisation (a paired design).
- Why the smoke runs of rule v1 (n ≤ 6k) stalled at ≥ 0.017 nats/point from the optimum (measured on a
  1000-point identity draw; research runs, not part of the check): the Hessian of s²·(−ELBO) at the
  PPCA optimum has λ_max = 17.2 (lr 0.1 is 0.86 of GD's stability limit 2/λ_max) and six slow modes,
  λ ∈ {4.9e-4, 5.0e-4, 1.2e-3, 1.2e-3, 2.5e-3, 4.5e-3}: the gauge of the latent space (scales, shear,
  shift of z against A, C, d, b, and for diagonal Σ the rotation, 83% of the 4.9e-4 mode), which only
  the KL term, weighted s² against the reconstruction, pins down. At lr 0.1 the slowest decays by e
  every 1/(0.1·4.9e-4) ≈ 20k steps (the ELBO gap every 10k), and stages 2–5 of App. C's schedule add
  only ~11% of the first stage's progress. At constant lr 0.1 (16 draws, median gap): full Σ 0.0072
  nats/point after 10k steps, 0.0005 after 20k; diagonal Σ 0.016 after 20k, 0.0027 after 40k, 0.0010
  after 50k. Neither the lr (already near the stability limit: the condition number, not the
  normalisation, sets the pace), nor the unamortised step scaling, nor O₂D′D′ᵀO₂ᵀ (its diagonal
  family adds one exactly flat direction, the free off-diagonal, and no slow one) is the cause: the
  first stage is too short. So the smoke scale lengthens the first stage (n up to 40k) and shortens
  stages 2–5 to ``later_stages = 0.1`` of n (at lr ≤ 0.01 the slow modes move ≤ 10% as far per step,
  so this keeps 91% of the slow modes' progress of App. C's 5n steps in 1.4n). The paper scale keeps App. C's
  schedule exactly (n ≤ 20k ≈ 22k steps at lr 0.1: by the constant-lr measurements diagonal runs end near a median gap of
  0.01, so precondition N may be unmet for diagonal Σ there).
- Batching: all trials of one (ν, amortised?) — both Σ types, every n — form one batched computation
  with a leading trial dimension and per-trial learning rates; trials are sorted by n and drop out of
  the batch when their schedule ends, so one experiment is one loop of max steps.
- Angle: orthogonal Procrustes ``min_O ‖Z − OM‖_F`` with Z, M ``[2, N]`` (true latents, posterior
  means): ``O = UVᵀ`` from the SVD of ``ZMᵀ`` ``[2, 2]``. If ``det O < 0`` a reflection of one axis of
  M is removed (``O ← O·diag(1, −1)``), then the rotation angle is reduced modulo 90° (a rotation by a
  multiple of 90° is a signed permutation) into (−45°, 45°]. The difference of two angles is read the
  same way (circular, modulo 90°).

The optimum each run is measured against (per data draw and Σ family)
---------------------------------------------------------------------
- ν = identity: closed form, the PPCA maximum log-likelihood (:func:`ppca_max_elbo`; both families,
  amortised or not, attain it with orthogonal decoder columns, Sec. 3.1), and the angle θ* of that
  optimum's mean-field posterior means (A = U(Λ − s²)^{1/2}, C = (AᵀA + s²I)⁻¹Aᵀ, d = −C x̄). θ* is
  not exactly 0 on a finite sample: the sample's principal axes differ from W's by ≈ 2/(3√N) rad
  (1.2° at N = 1000).
- nonlinear ν: a deterministic optimiser in float64 (:func:`reference_optimum`), started from the
  closed-form PPCA fit of the draw with its latents rotated by a random angle (``ref_starts`` starts).
  Amortised: damped saddle-free Newton (the Hessian from finite differences of :func:`gd_gradient`,
  each step accepted only if the exact objective of :func:`recon_and_kl` with ``gh_ref`` nodes
  improves) in the full family, best start; the diagonal optimum is that optimum rotated into its Σ's
  eigenbasis and polished by Newton in the diagonal family (the diagonal family is a subset of the full
  one, and the rotation attains the full maximum, so this is the diagonal maximum). Unamortised:
  L-BFGS in each family, best start. θ* is the angle of the diagonal optimum.
- A run's *gap* is ``optimum − ELBO`` of its own draw and family, nats/point, both evaluated with
  ``gh_eval`` nodes in float64.

Decision rule v2 (fixed before any v2 run; the numbers are Config fields)
-------------------------------------------------------------------------
Per setting (ν, amortised?). Preconditions, each reported as its own result (met → verified,
unmet → inconclusive naming the measured value); a rule whose precondition is unmet is inconclusive
with that reason:

- R, *the optimum is the optimum*: no run's ELBO exceeds its reference by more than ``ref_tol`` =
  1e-5 nats/point; for amortised nonlinear ν the polished diagonal maximum equals the full maximum
  within ``ref_tol`` and the polish moved the angle by at most ``ref_angle_tol_deg`` = 0.5° on every
  draw (with one Σ shared by all points the ELBO is invariant under z → Rz, Σ → RᵀΣR, so the two
  families have one maximum: theory claim ``appC-shared-covariance-rotation``).
- N, *enough runs near the optimum*, per Σ type: a run is *near-optimal* when its gap ≤ ``gap_near`` =
  0.002 nats/point, and at least ``min_near_optimal`` = 10 runs are. Why 0.002: at the identity
  optimum (column norms 2 and 1, s = 0.05) rotating the latents by θ costs
  ½·log(1 + ((a−b)²/ab)·sin²θ·cos²θ) nats/point with a, b = 1 + 4/s², 1 + 1/s², i.e. 0.0084 for 5°
  and 0.0021 for 2.5°: runs within 0.002 are closer to the optimum than a quarter of the price of the
  rule's 5° rotation, so a rotation that large would show in their ELBO.

Rules (three outcomes each, one-sided tests of a percentile-bootstrap CI, ``bootstrap`` = 1000
resamples, ``ci_level`` = 95%, seeded by the run's seed; :mod:`gracheck.base.verdicts`):

1. *The paper's statement, diagonal Σ*: the median |angle| of the near-optimal diagonal runs
   (resampling those runs). Verified iff the CI's upper end < ``theta_small_deg`` = 5°; refuted iff its
   lower end ≥ 5°. Needs R and N(diagonal).
2. *Consistency with the optimum, diagonal Σ*: the median circular |angle − θ*(own draw)| of the same
   runs. Verified iff the upper end < 5°, refuted iff the lower end ≥ 5°. Needs R and N(diagonal).
   For ν = identity θ* ≈ 0 and rules 1 and 2 read nearly the same numbers.
3. *The limit, diagonal Σ*: the median |θ*| over data draws, resampling draws: the trained runs'
   draws, or, when ``optimum_draws`` is set, that many separate draws of ``optimum_points`` points
   (the smoke scale trains tanh on few points, whose sample error would blur θ*). Verified iff the
   upper end < 5°, refuted iff the lower end ≥ 5°. Needs R only: no training has to converge, since
   θ* is the angle the claim says the runs approach.
4. *Full Σ does not pick the axes*: the median |angle| of the near-optimal full runs. Verified iff the
   lower end > ``theta_large_deg`` = 10°, refuted iff the upper end ≤ 10° (uniform angles: 22.5°).
   Needs R and N(full).
5. *The trend, diagonal Σ*: Spearman correlation between gap and |angle| over all diagonal runs
   (resampling runs). Verified iff the lower end > 0 (the angle falls as the ELBO rises), refuted iff
   the upper end ≤ 0. Needs R.

The claim is verified when every rule of every setting is, refuted when any is, inconclusive
otherwise (:func:`gracheck.base.verdicts.combine`). An inconclusive rule says what would decide it:
for a CI that straddles its threshold, how many runs (rules 1, 2, 4, 5) or draws (rule 3) at the
observed spread, and whether ``--scale paper`` has them; for an unmet precondition N, the steps the
slowest mode needs at lr 0.1 and whether the paper's schedule gives them.

How the rule treats ν = tanh (and any ν where the optimum's angle is not 0). With one Σ shared by all
points, the diagonal family reaches the full-Σ maximum by rotating the latents into the eigenbasis
of the optimal Σ; for ν = identity that basis is the true axes, for a nonlinear ν the shared Σ
averages posteriors whose curvature varies with x and the basis is in general not the true axes
(theory claim ``appC-shared-covariance-rotation``: optimum angles of +7.7°, +30.7°, +4.8°, −28.6°,
−8.0°, +2.5° on six 4,000-point tanh draws). Rules 1 and 3 read the paper's statement as written
(compare with 0); rule 2 separately asks whether the converged runs go to the optimum's angle
whatever it is. If rules 1 or 3 refute while rule 2 verifies, the honest reading is: the mean-field
optimum is unique and training finds it, but its angle is not 0, so the statement "the angle goes to
0" is false in that setting (Fig. 1 itself is ν = tanh, amortised); the claim is then refuted, with
the setting named. We do not exempt such settings, because the paper states the claim for them.

Why v2 replaces v1 (v1: median |angle| of the top 25% of runs by ELBO < 5°, Spearman(ELBO, |angle|)
< 0, full-Σ median > 10°, no preconditions). v1 at smoke read 8.13° (95% CI 3.07–12.24°):
inconclusive, and uninformative, because no smoke run came within 0.017 nats/point of its optimum,
the price of a ≈ 7° rotation, so "top 25% by ELBO" selected runs that had not yet had to choose their
axes. v2 selects by distance to a computed optimum, states that distance, checks that the runs get
there, adds the optimum's own angle (rules 2, 3) and a nonlinear ν. The thresholds 5° and 10° are
v1's, unchanged. Changed before any v2 result was seen; thresholds are not retuned after seeing results.

v2 at smoke (seed 0, 2026-12-02; the numbers the report shows, recorded here so a change is visible):
ν = identity, amortised, 128 runs per Σ type: R and N met (54 diagonal and 104 full runs within 0.002),
rules 1–5 verified (rule 1: 1.60°, 95% CI 1.32–2.10°; rule 3: 0.84°, 0.68–1.15° over 40 draws; rule 4:
18.37°, 13.16–21.24°; rule 5: Spearman 0.893, 0.823–0.935). ν = tanh, amortised, 16 runs per Σ type of
128 points: R met, N unmet (0 diagonal, 6 full runs within 0.002), so rules 1, 2, 4 inconclusive; rule 3
refuted (median |θ*| 17.5°, 95% CI 13.7–22.5° over 40 draws of 1000 points); rule 5 verified (0.579,
0.112–0.854). So the claim is refuted at smoke, in the tanh setting (Fig. 1's own), by the optimum's
angle, as the reading above states. The identity setting's last-stage trial count was raised from 40 to
104 in edits made before this run; whether after an earlier v2 run is not recorded. The verdict rests on
rule 3, which reads 40 separate draws and does not depend on it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gracheck.base import stats as bstats
from gracheck.base import verdicts
from gracheck.base.evidence import CheckResult, decided
from gracheck.base.files import save_figure
from gracheck.data.synthetic import NONLINEARITIES, make_synthetic, nonlinearity_fn
from gracheck.experiments._common import (
    ExperimentResult,
    Metric,
    cached_piece,
    config_dict,
    config_from_dict,
    experiment_claim,
    now_utc,
    scale_of,
    torch_threads,
)

CLAIM = experiment_claim(
    __name__,
    id="fig1-rotation-uniqueness",
    source="Fig. 1, 5, 6; App. C",
    statement="On the 2-D synthetic data, the rotation between true and inferred latents goes to 0 as the "
              "ELBO approaches its optimum when the posterior covariance is diagonal, and does not when it is full.",
    title="Fig. 1 (and Fig. 5, 6; App. C): rotation of the inferred latents",
    shows="Rotation angle between true and inferred latents against the ELBO's distance to its optimum, "
          "diagonal vs full posterior covariance, on the 2-D synthetic data.",
)
CLAIM_ID = CLAIM.id
COVARIANCES = ("diagonal", "full")
_LOG2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of the experiment (saved with the result).

    ``n_points``, ``schedule_n``, ``trials_per_n`` size the ν = identity settings; the ``nl_`` fields
    size the nonlinear ones (None: the same as identity). ``optimum_draws`` (None: rule 3 reads the
    trained runs' draws) separate data draws of ``optimum_points`` points (None: the setting's
    ``n_points``) whose optimum's angle enters rule 3.
    """

    nonlinearities: tuple[str, ...]
    amortised: tuple[bool, ...]
    n_points: int
    schedule_n: tuple[int, ...]
    trials_per_n: tuple[int, ...]
    optimum_draws: int | None = None
    optimum_points: int | None = None
    nl_n_points: int | None = None
    nl_schedule_n: tuple[int, ...] | None = None
    nl_trials_per_n: tuple[int, ...] | None = None
    lr0: float = 0.1
    lr_decay: float = 0.1
    lr_stages: int = 5  # 0.1 → 1e-5
    later_stages: float = 1.0  # stages 2..5 last later_stages·n iterations (App. C: 1)
    noise_std: float = 0.05
    obs_std: float = 0.05
    w_columns: str = "orthogonal"
    init_std: float = 0.5
    mu_init_std: float = 0.1
    local_lr_per_point: bool = True
    gh_train: int = 5
    gh_ref: int = 8
    gh_eval: int = 32
    dtype: str = "float64"
    ref_starts: int = 2
    ref_newton_iters: int = 80
    ref_lbfgs_iters: int = 3000
    # decision rule v2 (module docstring)
    gap_near: float = 0.002
    min_near_optimal: int = 10
    ref_tol: float = 1e-5
    ref_angle_tol_deg: float = 0.5
    theta_small_deg: float = 5.0
    theta_large_deg: float = 10.0
    bootstrap: int = 1000
    ci_level: float = 0.95

    def sizes(self, nonlinearity: str) -> tuple[int, tuple[int, ...], tuple[int, ...], int]:
        """(points, schedule n values, trials per n, rule-3 draws) for the settings of ``nonlinearity``."""
        nl = nonlinearity != "identity"
        n_points = self.nl_n_points if nl and self.nl_n_points is not None else self.n_points
        sched = self.nl_schedule_n if nl and self.nl_schedule_n is not None else self.schedule_n
        tpn = self.nl_trials_per_n if nl and self.nl_trials_per_n is not None else self.trials_per_n
        draws = int(sum(tpn)) if self.optimum_draws is None else int(self.optimum_draws)
        return int(n_points), tuple(sched), tuple(tpn), draws

    def optimum_size(self, nonlinearity: str) -> int:
        """Points per rule-3 draw."""
        return int(self.optimum_points) if self.optimum_points is not None else self.sizes(nonlinearity)[0]

    def trials(self, nonlinearity: str) -> int:
        """Trained trials per Σ type of one setting with ``nonlinearity``."""
        return int(sum(self.sizes(nonlinearity)[2]))

    @property
    def trials_per_setting(self) -> int:
        """Trials per Σ type of the ν = identity settings (the paper's 420 at paper scale)."""
        return self.trials("identity")


PAPER_N = (100, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000, 20000)
CONFIGS: dict[str, Config] = {
    # CPU. ν = identity, amortised (the moment route: a step is O(1) per trial): 1000 points, 128 runs
    # per Σ type, first stages up to 40k iterations (the slow modes need ≈ 45k steps at lr 0.1 to bring
    # diagonal runs within gap_near, see the docstring), stages 2–5 shortened to 0.1·n. ν = tanh,
    # amortised: 128 points (a step costs N·2·gh_train quadrature nodes per trial and the CPU allows
    # ~20k of them), 16 runs per Σ type, first stages up to 15k (enough for full Σ, not for diagonal
    # Σ). Rule 3: the optimum of 40 separate 1000-point draws per ν.
    "smoke": Config(
        nonlinearities=("identity", "tanh"),
        amortised=(True,),
        n_points=1000,
        schedule_n=(1000, 4000, 12000, 40000),
        trials_per_n=(8, 8, 8, 104),
        nl_n_points=128,
        nl_schedule_n=(2000, 15000),
        nl_trials_per_n=(4, 12),
        optimum_draws=40,
        optimum_points=1000,
        later_stages=0.1,
        ref_starts=1,
        dtype="float64",
    ),
    # The paper's settings (App. C): 4k points, 420 trials per experiment, App. C's schedule (5n
    # iterations), all four ν, amortised and unamortised, diagonal and full Σ. Meant for a GPU (float32
    # training; optima and ELBOs in float64).
    "paper": Config(
        nonlinearities=NONLINEARITIES,
        amortised=(True, False),
        n_points=4000,
        schedule_n=PAPER_N,
        trials_per_n=(20,) * 11 + (100, 100),
        dtype="float32",
    ),
}


# ----------------------------------------------------------------------------------------------
# Model pieces (batched over a leading trial dimension T)
# ----------------------------------------------------------------------------------------------
def rotation(theta: Tensor) -> Tensor:
    """Rotation matrices ``[..., 2, 2]`` for angles ``theta`` ``[...]`` (radians)."""
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def sigma_from_params(dp: Tensor, rot: Tensor, diagonal: Tensor) -> tuple[Tensor, Tensor]:
    """Σ and log det Σ from the raw lower-triangular D′ entries.

    ``dp`` ``[T, ..., 3]`` = (D′₁₁, D′₂₁, D′₂₂); ``rot`` ``[T, 2, 2]``; ``diagonal`` ``[T]`` bool.
    Full: Σ = R D′D′ᵀ Rᵀ, log det Σ = log D′₁₁² + log D′₂₂². Diagonal: Σ = diag of that matrix,
    log det = Σₖ log Σₖₖ. Returns Σ ``[T, ..., 2, 2]``, log det ``[T, ...]``.
    """
    l11, l21, l22 = dp.unbind(-1)
    p11, p12, p22 = l11 * l11, l11 * l21, l21 * l21 + l22 * l22
    p = torch.stack([torch.stack([p11, p12], -1), torch.stack([p12, p22], -1)], -2)
    extra = p.dim() - 3
    r = rot.reshape(rot.shape[0], *([1] * extra), 2, 2)
    full = r @ p @ r.transpose(-1, -2)
    dg = torch.diagonal(full, dim1=-2, dim2=-1)
    mask = diagonal.reshape(-1, *([1] * extra))
    sigma = torch.where(mask[..., None, None], torch.diag_embed(dg), full)
    logdet_full = torch.log(l11 * l11) + torch.log(l22 * l22)
    logdet = torch.where(mask, torch.log(dg).sum(-1), logdet_full)
    return sigma, logdet


def _expected_sq(xr: Tensor, m: Tensor, v: Tensor, nonlinearity: str, gh: tuple[Tensor, Tensor] | None) -> Tensor:
    """E (xr − ν(u))², u ~ N(m, v), elementwise (exact for identity, Gauss–Hermite otherwise)."""
    if nonlinearity == "identity":
        return (xr - m) ** 2 + v
    x, w = gh
    fn = nonlinearity_fn(nonlinearity)
    u = m.unsqueeze(-1) + torch.sqrt(v).unsqueeze(-1) * x
    return (((xr.unsqueeze(-1) - fn(u)) ** 2) * w).sum(-1)


def gauss_hermite(k: int, dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
    """The ``k``-node rule of :func:`gracheck.base.stats.gauss_hermite` as tensors: E g(u) = Σ w g(m + √v x)."""
    x, w = bstats.gauss_hermite(k)
    return torch.as_tensor(x, dtype=dtype, device=device), torch.as_tensor(w, dtype=dtype, device=device)


def recon_and_kl(
    params: dict[str, Tensor],
    fixed: dict[str, Tensor],
    *,
    nonlinearity: str,
    amortised: bool,
    gh: tuple[Tensor, Tensor] | None,
    moments: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per trial: mean over points of E_q‖x − ν(Az) − b‖² and of KL(q ‖ N(0, I)); both ``[T]``.

    ``params``: A ``[T,2,2]``, b ``[T,2]``; amortised: Cp ``[T,2,2]``, d ``[T,2]``, Dp ``[T,3]``;
    unamortised: mu ``[T,N,2]``, Dp ``[T,N,3]``. ``fixed``: x ``[T,N,2]``, O1, O2 ``[T,2,2]``,
    diagonal ``[T]`` bool, and for the moment route xm ``[T,2]``, xx ``[T,2,2]`` (mean, mean xxᵀ).
    Written with autograd-friendly tensor algebra: the reference the hand-written :func:`gd_gradient`
    is tested against, and the value every reported ELBO is computed from.
    """
    A, b = params["A"], params["b"]
    sigma, logdet = sigma_from_params(params["Dp"], fixed["O2"], fixed["diagonal"])
    if amortised:
        C = fixed["O1"] @ params["Cp"]
        d = params["d"]
        v = torch.einsum("tjk,tkl,tjl->tj", A, sigma, A)  # var of (Az)_j, [T,2]
        tr_sigma = torch.diagonal(sigma, dim1=-2, dim2=-1).sum(-1)
        if nonlinearity == "identity" and moments and "xx" in fixed:
            xm, xx = fixed["xm"], fixed["xx"]
            eye = torch.eye(2, dtype=A.dtype, device=A.device)
            B = eye - A @ C
            e = torch.einsum("tjk,tk->tj", A, d) + b
            recon = (
                torch.einsum("tjk,tkl,tjl->t", B, xx, B)
                - 2.0 * torch.einsum("tj,tjk,tk->t", e, B, xm)
                + (e * e).sum(-1)
                + v.sum(-1)
            )
            mu_sq = torch.einsum("tjk,tkl,tjl->t", C, xx, C) + 2.0 * torch.einsum("tj,tjk,tk->t", d, C, xm) + (d * d).sum(-1)
            kl = 0.5 * (mu_sq + tr_sigma - logdet - 2.0)
            return recon, kl
        mu = torch.einsum("tjk,tnk->tnj", C, fixed["x"]) + d.unsqueeze(1)
        m = torch.einsum("tjk,tnk->tnj", A, mu)
        recon = _expected_sq(fixed["x"] - b.unsqueeze(1), m, v.unsqueeze(1), nonlinearity, gh).sum(-1).mean(-1)
        kl = 0.5 * ((mu * mu).sum(-1).mean(-1) + tr_sigma - logdet - 2.0)
        return recon, kl
    mu = params["mu"]
    m = torch.einsum("tjk,tnk->tnj", A, mu)
    v = torch.einsum("tjk,tnkl,tjl->tnj", A, sigma, A)
    recon = _expected_sq(fixed["x"] - b.unsqueeze(1), m, v, nonlinearity, gh).sum(-1).mean(-1)
    tr_sigma = torch.diagonal(sigma, dim1=-2, dim2=-1).sum(-1)
    kl = 0.5 * ((mu * mu).sum(-1) + tr_sigma - logdet - 2.0).mean(-1)
    return recon, kl


def ppca_max_elbo(x: Tensor, obs_std: float) -> Tensor:
    """Exact optimum of the ELBO for ν = identity on data ``x`` ``[T, N, 2]``, per point, ``[T]``.

    With s fixed, the maximum of the ELBO over A, b and a Gaussian q (full Σ, amortised with a
    linear encoder, or per point) is the PPCA maximum log-likelihood, where the posterior is exact:
    b = mean, model covariance eigenvalues max(λₖ, s²) for the eigenvalues λₖ of the sample
    covariance, value −log 2π − ½Σₖ log cₖ − ½Σₖ λₖ/cₖ. Diagonal Σ attains it too (choose A with
    orthogonal columns, Sec. 3.1).
    """
    xc = x - x.mean(1, keepdim=True)
    lam = torch.linalg.eigvalsh(torch.einsum("tni,tnj->tij", xc, xc) / x.shape[1])
    c = torch.clamp(lam, min=obs_std * obs_std)
    return -_LOG2PI - 0.5 * torch.log(c).sum(-1) - 0.5 * (lam / c).sum(-1)


def ppca_optimum(x: Tensor, obs_std: float) -> dict[str, Tensor]:
    """The closed-form mean-field optimum for ν = identity on ``x`` ``[T, N, 2]`` (float64).

    A = U (Λ − s²)₊^{1/2} (columns along the sample's principal axes, orthogonal), b = x̄,
    C = (AᵀA + s²I)⁻¹Aᵀ, d = −C x̄, Σ = s²(AᵀA + s²I)⁻¹ (diagonal: the exact posterior, factorised
    because AᵀA is diagonal). Returns A, b, C, d ``[T, ...]`` and Σ's diagonal ``[T, 2]``.
    """
    s2 = obs_std * obs_std
    xm = x.mean(1)
    xc = x - xm.unsqueeze(1)
    lam, U = torch.linalg.eigh(torch.einsum("tni,tnj->tij", xc, xc) / x.shape[1])
    A = U * torch.sqrt(torch.clamp(lam - s2, min=0.0)).unsqueeze(-2)
    ata = torch.einsum("tji,tjk->tik", A, A)
    eye = torch.eye(2, dtype=x.dtype, device=x.device)
    C = torch.linalg.solve(ata + s2 * eye, A.transpose(-1, -2))
    d = -torch.einsum("tjk,tk->tj", C, xm)
    var = s2 / (torch.diagonal(ata, dim1=-2, dim2=-1) + s2)
    return {"A": A, "b": xm, "C": C, "d": d, "var": var}


def elbo_per_point(recon: Tensor, kl: Tensor, obs_std: float) -> Tensor:
    """ELBO per point in nats (D = 2): −log(2πs²) − recon/(2s²) − KL."""
    s2 = obs_std * obs_std
    return -(_LOG2PI + math.log(s2)) - recon / (2.0 * s2) - kl


def rotation_cost(theta_deg: float, obs_std: float = 0.05, norms: tuple[float, float] = (2.0, 1.0)) -> float:
    """ELBO cost (nats/point) of rotating the latents of the population identity optimum by θ, diagonal Σ.

    At the optimum AᵀA = diag(‖w₁‖², ‖w₂‖²) and the mean-field Σ is exact; rotated by θ the best
    diagonal Σ keeps only the diagonal of the precision P = I + AᵀA/s² in the new basis, which loses
    ½·log(P′₁₁P′₂₂/det P) = ½·log(1 + ((a−b)²/ab)·sin²θ cos²θ), a, b the eigenvalues of P.
    """
    s2 = obs_std * obs_std
    a, b = 1.0 + norms[0] ** 2 / s2, 1.0 + norms[1] ** 2 / s2
    sc = math.sin(math.radians(theta_deg)) * math.cos(math.radians(theta_deg))
    return 0.5 * math.log1p((a - b) ** 2 / (a * b) * sc * sc)


def init_params(
    trial_seeds: list[int], *, amortised: bool, n_points: int, init_std: float, mu_init_std: float,
    dp_init: float = 1.0,
) -> dict[str, Tensor]:
    """Initial parameters ``[T, ...]`` (float64, CPU), one generator per trial seed (D′ = dp_init·I)."""
    out: dict[str, list[Tensor]] = {}
    for s in trial_seeds:
        g = torch.Generator().manual_seed(s)
        p = {"A": torch.randn(2, 2, generator=g, dtype=torch.float64) * init_std, "b": torch.zeros(2, dtype=torch.float64)}
        dp = torch.tensor([dp_init, 0.0, dp_init], dtype=torch.float64)
        if amortised:
            p["Cp"] = torch.randn(2, 2, generator=g, dtype=torch.float64) * init_std
            p["d"] = torch.zeros(2, dtype=torch.float64)
            p["Dp"] = dp
        else:
            p["mu"] = torch.randn(n_points, 2, generator=g, dtype=torch.float64) * mu_init_std
            p["Dp"] = dp.expand(n_points, 3).clone()
        for k, val in p.items():
            out.setdefault(k, []).append(val)
    return {k: torch.stack(v) for k, v in out.items()}


def random_rotations(trial_seeds: list[int]) -> tuple[Tensor, Tensor]:
    """O₁, O₂ ``[T, 2, 2]``: rotations by angles uniform on [0, 2π), one generator per trial seed."""
    th = []
    for s in trial_seeds:
        g = torch.Generator().manual_seed(s + 7919)
        th.append(torch.rand(2, generator=g, dtype=torch.float64) * 2.0 * math.pi)
    th = torch.stack(th)
    return rotation(th[:, 0]), rotation(th[:, 1])


# ----------------------------------------------------------------------------------------------
# Hand-written gradients of s²·(−ELBO) + const = ½·recon + s²·KL (tested against autograd)
# ----------------------------------------------------------------------------------------------
def _mm(X, Y):
    """Batched 2×2 products ``[..., 2, 2]`` by broadcasting (no per-matrix kernel loop; numpy or torch)."""
    return X[..., :, 0:1] * Y[..., None, 0, :] + X[..., :, 1:2] * Y[..., None, 1, :]


def _mv(X, v):
    """Batched 2×2 matrix times vector ``[..., 2]``."""
    return X[..., :, 0] * v[..., 0:1] + X[..., :, 1] * v[..., 1:2]


def _tr(X):
    return X.swapaxes(-1, -2)


def _outer(u, v):
    return u[..., :, None] * v[..., None, :]


def _rows_times(X, M):
    """Every row of X ``[T, N, 2]`` times Mᵀ (M ``[T, 2, 2]``): ``X @ M.mT`` by broadcasting."""
    return X[..., 0:1] * M[:, None, :, 0] + X[..., 1:2] * M[:, None, :, 1]


def _sum_outer(U, X):
    """Σ_n U_n X_nᵀ ``[T, 2, 2]`` for U, X ``[T, N, 2]`` (``U.mT @ X``)."""
    return torch.stack([(U * X[..., 0:1]).sum(1), (U * X[..., 1:2]).sum(1)], -1)


def _sigma_entries(dp, c, s):
    """F = O P Oᵀ with P = D′D′ᵀ, O = [[c, −s], [s, c]]: (F₁₁, F₁₂, F₂₂) and (D′₁₁, D′₂₁, D′₂₂)."""
    l11, l21, l22 = dp[..., 0], dp[..., 1], dp[..., 2]
    p11, p12, p22 = l11 * l11, l11 * l21, l21 * l21 + l22 * l22
    cc, ss, cs = c * c, s * s, c * s
    f11 = cc * p11 - 2 * cs * p12 + ss * p22
    f22 = ss * p11 + 2 * cs * p12 + cc * p22
    f12 = cs * (p11 - p22) + (cc - ss) * p12
    return (f11, f12, f22), (l11, l21, l22)


def _sigma_backward(g11, g12, g22, c, s, l, f, diag, w_logdet, xp):
    """∂loss/∂D′ ``[..., 3]`` from ∂loss/∂Σ (entries g₁₁, g₁₂ = g₂₁, g₂₂ of the symmetric matrix
    derivative) plus the loss term −w_logdet·log det Σ; diagonal Σ reads only F's diagonal."""
    l11, l21, l22 = l
    f11, _, f22 = f
    zero = g12 * 0
    g11 = g11 - xp.where(diag, w_logdet / f11, zero)
    g22 = g22 - xp.where(diag, w_logdet / f22, zero)
    g12 = xp.where(diag, zero, g12)
    cc, ss, cs = c * c, s * s, c * s
    h11 = cc * g11 + 2 * cs * g12 + ss * g22  # Oᵀ G O
    h22 = ss * g11 - 2 * cs * g12 + cc * g22
    h12 = cs * (g22 - g11) + (cc - ss) * g12
    gl11 = 2 * (h11 * l11 + h12 * l21) - xp.where(diag, zero, 2 * w_logdet / l11)
    gl21 = 2 * (h12 * l11 + h22 * l21)
    gl22 = 2 * h22 * l22 - xp.where(diag, zero, 2 * w_logdet / l22)
    return xp.stack([gl11, gl21, gl22], -1)


def moment_gradient(p: dict, fx: dict, obs_std: float, xp=np) -> dict:
    """Gradient of ½·recon + s²·KL for ν = identity, amortised, from the data's moments (O(1) per trial).

    ``p``: A, Cp ``[T,2,2]``, b, d ``[T,2]``, Dp ``[T,3]``; ``fx``: O1 ``[T,2,2]``, c2, s2 ``[T]`` (O₂'s
    cosine and sine), xm ``[T,2]``, xx ``[T,2,2]``, diagonal ``[T]`` bool. ``xp``: numpy or torch
    (arrays of that kind). With B = I − AC and e = Ad + b, recon = E‖Bx − e‖² + tr(AΣAᵀ) and
    E‖μ‖² = tr(C E[xxᵀ] Cᵀ) + 2dᵀC x̄ + ‖d‖².
    """
    s2 = obs_std * obs_std
    A, b, Cp, d, Dp = p["A"], p["b"], p["Cp"], p["d"], p["Dp"]
    O1, xm, xx, diag = fx["O1"], fx["xm"], fx["xx"], fx["diagonal"]
    c, s = fx["c2"], fx["s2"]
    f, l = _sigma_entries(Dp, c, s)
    f11, f12, f22 = f
    s12 = xp.where(diag, f12 * 0, f12)
    C = _mm(O1, Cp)
    B = -_mm(A, C)
    B[..., 0, 0] += 1.0
    B[..., 1, 1] += 1.0
    e = _mv(A, d) + b
    GB = _mm(B, xx) - _outer(e, xm)  # ½ ∂/∂B of E‖Bx − e‖²
    Ge = e - _mv(B, xm)  # ½ ∂/∂e
    a1, a2 = A[..., :, 0], A[..., :, 1]  # columns
    AS = xp.stack([a1 * f11[..., None] + a2 * s12[..., None], a1 * s12[..., None] + a2 * f22[..., None]], -1)
    gA = -_mm(GB, _tr(C)) + _outer(Ge, d) + AS
    gC = -_mm(_tr(A), GB) + s2 * (_mm(C, xx) + _outer(d, xm))
    gd = _mv(_tr(A), Ge) + s2 * (_mv(C, xm) + d)
    g11 = 0.5 * (a1 * a1).sum(-1) + 0.5 * s2  # ∂/∂Σ of ½tr(AΣAᵀ) + ½s² tr Σ
    g22 = 0.5 * (a2 * a2).sum(-1) + 0.5 * s2
    g12 = 0.5 * (a1 * a2).sum(-1)
    gDp = _sigma_backward(g11, g12, g22, c, s, l, f, diag, 0.5 * s2, xp)
    return {"A": gA, "b": Ge, "Cp": _mm(_tr(O1), gC), "d": gd, "Dp": gDp}


_DERIV = {
    "tanh": lambda u, a: 1.0 - a * a,
    "sigmoid": lambda u, a: a * (1.0 - a),
    "elu": lambda u, a: torch.where(u > 0, torch.ones_like(a), a + 1.0),
}


def pointwise_gradient(
    p: dict[str, Tensor], fx: dict[str, Tensor], *, nonlinearity: str, amortised: bool,
    gh: tuple[Tensor, Tensor] | None, obs_std: float,
) -> dict[str, Tensor]:
    """Gradient of ½·recon + s²·KL over the points (any ν; amortised or not), torch, ``[T, N, 2, K]`` work.

    With μ the posterior means, m = Aμ, v_j = a_jᵀΣa_j (a_j the rows of A) and ρ = x − b − ν(m + √v t_k)
    at the Gauss–Hermite nodes t_k (weights w_k): ∂/∂m = −Σ_k w_k ρ ν′/N, ∂/∂√v = −Σ_k w_k t_k ρ ν′/N,
    ∂/∂b = −Σ_{n,k} w_k ρ/N; ν = identity uses the exact (x − b − m)² + v. Then through m = Aμ,
    μ = O₁C′x + d (or the free μᵢ), v = a_jᵀΣa_j and Σ = O₂D′D′ᵀO₂ᵀ (:func:`_sigma_backward`).
    """
    s2 = obs_std * obs_std
    A, b, Dp, x = p["A"], p["b"], p["Dp"], fx["x"]
    N = x.shape[1]
    diag = fx["diagonal"]
    c, s = fx["O2"][:, 0, 0], fx["O2"][:, 1, 0]
    if not amortised:
        c, s, diag = c[:, None], s[:, None], diag[:, None]
    f, l = _sigma_entries(Dp, c, s)
    f11, f12, f22 = f
    s12 = torch.where(diag, torch.zeros_like(f12), f12)
    # Products with 2×2 matrices are written as broadcasts: a bmm per trial of 2×2 blocks costs ~10×
    # more on the CPU (measured), and the [.., K] @ [K] reductions as matrix-vector products.
    if amortised:
        C = _mm(fx["O1"], p["Cp"])
        mu = _rows_times(x, C) + p["d"][:, None]
    else:
        mu = p["mu"]
    m = _rows_times(mu, A)  # [T,N,2]
    A0, A1 = A[..., 0], A[..., 1]  # [T,2]: entries (j, 0) and (j, 1) of the rows a_j
    if amortised:
        v = A0 * A0 * f11[:, None] + 2 * A0 * A1 * s12[:, None] + A1 * A1 * f22[:, None]  # [T,2]
    else:
        v = (A0[:, None] * A0[:, None] * f11[..., None] + 2 * A0[:, None] * A1[:, None] * s12[..., None]
             + A1[:, None] * A1[:, None] * f22[..., None])  # [T,N,2]
    y = x - b[:, None]
    if nonlinearity == "identity":
        r = (y - m) / N
        gm = -r
        gy = r
        gv = torch.full_like(v, 0.5) if amortised else torch.full_like(v, 0.5 / N)
    else:
        t, w = gh
        fn, dfn = nonlinearity_fn(nonlinearity), _DERIV[nonlinearity]
        sv = torch.sqrt(v)
        u = m[..., None] + (sv[:, None, :, None] if amortised else sv[..., None]) * t
        a = fn(u)
        rho = y[..., None] - a
        h = rho * dfn(u, a)
        wn = w / N
        gm = -(h @ wn)  # [T,N,2]: −Σ_k w ρν′/N
        gsv = -(h @ (wn * t))
        if amortised:
            gsv = gsv.sum(1)
        gv = gsv / (2.0 * sv)
        gy = rho @ wn
    gb = -gy.sum(1)
    if amortised:
        W11, W12, W22 = gv * f11[:, None], gv * s12[:, None], gv * f22[:, None]  # [T,2(j)]
        g11 = (gv * A0 * A0).sum(-1) + 0.5 * s2
        g22 = (gv * A1 * A1).sum(-1) + 0.5 * s2
        g12 = (gv * A0 * A1).sum(-1)
        w_logdet = 0.5 * s2
    else:
        W11, W12, W22 = ((gv * f11[..., None]).sum(1), (gv * s12[..., None]).sum(1), (gv * f22[..., None]).sum(1))
        g11 = (gv * (A0 * A0)[:, None]).sum(-1) + 0.5 * s2 / N
        g22 = (gv * (A1 * A1)[:, None]).sum(-1) + 0.5 * s2 / N
        g12 = (gv * (A0 * A1)[:, None]).sum(-1)
        w_logdet = 0.5 * s2 / N
    gA = _sum_outer(gm, mu)
    gA = gA + 2 * torch.stack([A0 * W11 + A1 * W12, A0 * W12 + A1 * W22], -1)
    gDp = _sigma_backward(g11, g12, g22, c, s, l, f, diag, w_logdet, torch)
    gmu = _rows_times(gm, _tr(A)) + (s2 / N) * mu
    out = {"A": gA, "b": gb, "Dp": gDp}
    if amortised:
        out["Cp"] = _mm(_tr(fx["O1"]), _sum_outer(gmu, x))
        out["d"] = gmu.sum(1)
    else:
        out["mu"] = gmu
    return out


def gd_gradient(params: dict, fixed: dict, *, nonlinearity: str, amortised: bool, gh, obs_std: float) -> dict:
    """The gradient GD follows: :func:`moment_gradient` for ν = identity amortised with moments in
    ``fixed`` (torch tensors; computed in torch here), else :func:`pointwise_gradient`."""
    if nonlinearity == "identity" and amortised and "xx" in fixed:
        fx = {"O1": fixed["O1"], "c2": fixed["O2"][:, 0, 0], "s2": fixed["O2"][:, 1, 0], "xm": fixed["xm"],
              "xx": fixed["xx"], "diagonal": fixed["diagonal"]}
        return moment_gradient({k: v.clone() for k, v in params.items()}, fx, obs_std, xp=torch)
    return pointwise_gradient(params, fixed, nonlinearity=nonlinearity, amortised=amortised, gh=gh, obs_std=obs_std)


# ----------------------------------------------------------------------------------------------
# Gradient descent, batched over trials
# ----------------------------------------------------------------------------------------------
def stage_bounds(n: int, cfg: Config) -> list[int]:
    """Steps at which the lr drops (``lr_stages − 1`` of them) and, last, the step the run ends at."""
    later = max(1, int(round(cfg.later_stages * n)))
    return [n + i * later for i in range(cfg.lr_stages)]


def schedule_steps(n: int, cfg: Config) -> int:
    """Iterations of one run with first stage ``n`` (App. C: 5n)."""
    return stage_bounds(n, cfg)[-1]


def train_batched(
    params: dict[str, Tensor],
    fixed: dict[str, Tensor],
    n_sched: Tensor,
    *,
    nonlinearity: str,
    amortised: bool,
    cfg: Config,
    gh: tuple[Tensor, Tensor] | None,
    progress: Callable[[str], None] | None = None,
    max_steps: int | None = None,
) -> tuple[dict[str, Tensor], int]:
    """Full-batch GD of every trial together; returns the final parameters and the steps taken.

    Trial t uses lr ``lr0 · lr_decay^k`` in stage k of :func:`stage_bounds` and stops at the last
    bound. ``n_sched`` ``[T]`` must be sorted ascending (trials leave the batch in that order).
    ``max_steps`` truncates every schedule (for tests and benchmarks). ν = identity amortised with
    moments in ``fixed`` runs the numpy moment route on the CPU (float64) whatever the tensors'
    device; everything else runs :func:`pointwise_gradient` in the tensors' dtype and device.
    """
    n_list = [int(v) for v in n_sched.tolist()]
    if any(a > b for a, b in zip(n_list, n_list[1:])):
        raise ValueError("n_sched: trials must be sorted by n (ascending)")
    bounds = [stage_bounds(n, cfg) for n in n_list]
    ends = [bd[-1] for bd in bounds]
    if max_steps is not None:
        ends = [min(e, max_steps) for e in ends]
    if nonlinearity == "identity" and amortised and "xx" in fixed:
        return _gd_moments(params, fixed, bounds, ends, cfg=cfg, progress=progress)
    # Measured on a 2-core CPU: intra-op threads make these small kernels ~50× slower (0.43 ms vs
    # 20 ms for tanh of 128k float64), so CPU training runs single-threaded; restored on exit.
    with torch_threads(1 if fixed["x"].device.type == "cpu" else None):
        return _gd_pointwise(params, fixed, bounds, ends, nonlinearity=nonlinearity, amortised=amortised,
                             cfg=cfg, gh=gh, progress=progress)


def _segments(ends: list[int]):
    """(first active trial, step the segment ends at) for a batch whose trials leave in order."""
    T, start, step = len(ends), 0, 0
    while start < T:
        stop = ends[start]
        yield start, stop
        step = stop
        while start < T and ends[start] <= step:
            start += 1


def _gd_moments(params, fixed, bounds, ends, *, cfg, progress):
    """The moment route (ν = identity, amortised): numpy float64 on the CPU, O(1) work per trial-step."""
    out = {k: v.detach().to("cpu", torch.float64).numpy().copy() for k, v in params.items()}
    fx_all = {"O1": fixed["O1"].to("cpu", torch.float64).numpy(), "c2": fixed["O2"][:, 0, 0].to("cpu", torch.float64).numpy(),
              "s2": fixed["O2"][:, 1, 0].to("cpu", torch.float64).numpy(), "xm": fixed["xm"].to("cpu", torch.float64).numpy(),
              "xx": fixed["xx"].to("cpu", torch.float64).numpy(), "diagonal": fixed["diagonal"].cpu().numpy()}
    bd = np.array([b[:-1] for b in bounds], dtype=np.int64)  # [T, stages-1]
    step, t_last, total = 0, time.perf_counter(), ends[-1] if ends else 0
    for start, stop in _segments(ends):
        p = {k: v[start:] for k, v in out.items()}  # views: updated in place
        fx = {k: v[start:] for k, v in fx_all.items()}
        b_act = bd[start:]
        while step < stop:
            stage = (step >= b_act).sum(-1)
            lr = cfg.lr0 * cfg.lr_decay ** stage
            g = moment_gradient(p, fx, cfg.obs_std, xp=np)
            for k, v in p.items():
                v -= lr.reshape(-1, *([1] * (v.ndim - 1))) * g[k]
            step += 1
            if progress is not None and time.perf_counter() - t_last > 10.0:
                t_last = time.perf_counter()
                progress(f"identity amortised (moments): step {step}/{total}, {len(b_act)} trials active")
    dev, dt = params["A"].device, params["A"].dtype
    return {k: torch.from_numpy(v).to(dev, dt) for k, v in out.items()}, step


def _gd_pointwise(params, fixed, bounds, ends, *, nonlinearity, amortised, cfg, gh, progress):
    out = {k: v.detach().clone() for k, v in params.items()}
    x = fixed["x"]
    n_points = x.shape[1]
    local = {"mu", "Dp"} if not amortised else set()
    bd = torch.tensor([b[:-1] for b in bounds], dtype=torch.float64, device=x.device)
    step, t_last, total = 0, time.perf_counter(), ends[-1] if ends else 0
    for start, stop in _segments(ends):
        p = {k: v[start:].clone() for k, v in out.items()}
        fx = {k: v[start:] for k, v in fixed.items()}
        b_act = bd[start:]
        scale = {k: (float(n_points) if (k in local and cfg.local_lr_per_point) else 1.0) for k in p}
        while step < stop:
            stage = (step >= b_act).sum(-1).to(out["A"].dtype)
            lr = cfg.lr0 * torch.pow(torch.full_like(stage, cfg.lr_decay), stage)
            g = pointwise_gradient(p, fx, nonlinearity=nonlinearity, amortised=amortised, gh=gh, obs_std=cfg.obs_std)
            for k, v in p.items():
                v.sub_((lr * scale[k]).reshape(-1, *([1] * (v.dim() - 1))) * g[k])
            step += 1
            if progress is not None and time.perf_counter() - t_last > 10.0:
                t_last = time.perf_counter()
                progress(f"{nonlinearity} {'amortised' if amortised else 'unamortised'}: step {step}/{total}, "
                         f"{len(b_act)} trials active")
        for k, v in p.items():
            out[k][start:] = v
    return out, step


# ----------------------------------------------------------------------------------------------
# Angle: orthogonal Procrustes with permutation and reflection removed
# ----------------------------------------------------------------------------------------------
def procrustes_rotation(z: Tensor, m: Tensor) -> Tensor:
    """O = argmin over O(2) of ‖Z − OM‖_F, batched: z, m ``[..., N, 2]`` (rows = points) → ``[..., 2, 2]``.

    In the paper's notation Z, M are ``[2, N]``; ZMᵀ = Σᵢ zᵢmᵢᵀ = ``z.mT @ m`` ``[2, 2]`` = U S Vᵀ, O = UVᵀ.
    """
    u, _, vh = torch.linalg.svd(z.transpose(-1, -2) @ m)
    return u @ vh


def rotation_angle_deg(o: Tensor) -> Tensor:
    """The angle in (−45°, 45°] of an orthogonal ``o`` ``[..., 2, 2]`` after removing reflection and permutation.

    det O is checked first: if it is −1 (a reflection), O ← O·diag(1, −1) (reflecting one axis of M)
    makes it a rotation. The angle atan2(O₁₀, O₀₀) is then reduced modulo 90°, since a rotation by a
    multiple of 90° is a signed permutation of the axes.
    """
    o = o.to(torch.float64)
    det = torch.linalg.det(o)
    flip = torch.tensor([1.0, -1.0], dtype=o.dtype, device=o.device)
    o = torch.where((det < 0)[..., None, None], o * flip, o)
    theta = torch.rad2deg(torch.atan2(o[..., 1, 0], o[..., 0, 0]))
    return 45.0 - torch.remainder(45.0 - theta, 90.0)


def procrustes_angle_deg(z: Tensor, m: Tensor) -> Tensor:
    """Rotation angle (degrees, in (−45°, 45°]) between true latents z and inferred means m, ``[..., N, 2]``."""
    return rotation_angle_deg(procrustes_rotation(z.to(torch.float64), m.to(torch.float64)))


def angle_difference_deg(a: Any, b: Any) -> np.ndarray:
    """|a − b| for angles defined modulo 90° (degrees), in [0°, 45°]."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return np.abs(45.0 - np.remainder(45.0 - d, 90.0))


# ----------------------------------------------------------------------------------------------
# The optimum of each data draw (reference for the gap; θ* for rules 2 and 3)
# ----------------------------------------------------------------------------------------------
_AMORT_KEYS = (("A", (2, 2)), ("b", (2,)), ("Cp", (2, 2)), ("d", (2,)), ("Dp", (3,)))


def _pack(p: dict[str, Tensor]) -> Tensor:
    return torch.cat([p[k].reshape(p[k].shape[0], -1) for k, _ in _AMORT_KEYS], -1)


def _unpack(v: Tensor) -> dict[str, Tensor]:
    out, i = {}, 0
    for k, shp in _AMORT_KEYS:
        n = math.prod(shp)
        out[k] = v[:, i:i + n].reshape(v.shape[0], *shp)
        i += n
    return out


def _objective(p, fx, nonlinearity, amortised, gh, obs_std) -> Tensor:
    """½·recon + s²·KL per problem ``[P]`` (= s²·(−ELBO) + const), from :func:`recon_and_kl`."""
    r, k = recon_and_kl(p, fx, nonlinearity=nonlinearity, amortised=amortised, gh=gh, moments=False)
    return 0.5 * r + obs_std * obs_std * k


def newton_maximise(
    v0: Tensor, fx: dict[str, Tensor], *, nonlinearity: str, gh, obs_std: float, iters: int, gtol: float = 1e-10,
    info: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Maximise the amortised ELBO from packed starts ``v0`` ``[P, 15]`` (float64), every problem at once.

    Damped saddle-free Newton: the Hessian ``[P, 15, 15]`` by forward differences of
    :func:`pointwise_gradient` (symmetrised), step −V (|Λ| + λ)⁻¹ Vᵀ g, accepted per problem only if
    the objective of :func:`recon_and_kl` decreases (then λ ← λ/4, else λ ← 8λ and the step is
    retried next iteration); stops when every problem's largest |gradient| is below ``gtol`` (of the
    s²-scaled objective: the ELBO is then within ~gtol²/λ_min ≪ 1e-12 nats/point of its maximum).
    Returns (parameters, objective ``[P]``, largest |gradient| ``[P]``); ``info["iterations"]`` if given.
    """
    v = v0.clone()
    P, D = v.shape
    lam = torch.full((P,), 1e-3, dtype=v.dtype, device=v.device)

    def sub(rows):
        return fx if rows is None else {k: val[rows] for k, val in fx.items()}

    def grad(w, rows):
        g = pointwise_gradient(_unpack(w), sub(rows), nonlinearity=nonlinearity, amortised=True, gh=gh, obs_std=obs_std)
        return _pack(g)

    def obj(w, rows=None):
        with torch.no_grad():
            o = _objective(_unpack(w), sub(rows), nonlinearity, True, gh, obs_std)
        return torch.where(torch.isfinite(o), o, torch.full_like(o, math.inf))

    f = obj(v)
    eye = torch.eye(D, dtype=v.dtype, device=v.device)
    it = 0
    for it in range(iters):
        g_all = grad(v, None)
        act = torch.nonzero(g_all.abs().max(-1).values >= gtol).flatten()
        if act.numel() == 0:
            break
        va, g, la = v[act], g_all[act], lam[act]
        h = 1e-6 * torch.clamp(va.abs(), min=0.05)  # [P', D]
        cols = [(grad(va + h[:, i:i + 1] * eye[i], act) - g) / h[:, i:i + 1] for i in range(D)]
        H = torch.stack(cols, -1)
        H = 0.5 * (H + H.transpose(-1, -2))
        ev, V = torch.linalg.eigh(H)
        step = -V @ ((V.transpose(-1, -2) @ g.unsqueeze(-1)) / (ev.abs() + la[:, None]).unsqueeze(-1))
        v_new = va + step.squeeze(-1)
        f_new = obj(v_new, act)
        ok = f_new <= f[act]
        v[act] = torch.where(ok[:, None], v_new, va)
        f[act] = torch.where(ok, f_new, f[act])
        lam[act] = torch.where(ok, torch.clamp(la / 4, min=1e-12), la * 8)
    if info is not None:
        info["iterations"] = it
    return v, f, grad(v, None).abs().max(-1).values


def lbfgs_maximise(
    p0: dict[str, Tensor], fx: dict[str, Tensor], *, nonlinearity: str, amortised: bool, gh, obs_std: float,
    iters: int,
) -> dict[str, Tensor]:
    """Maximise the ELBO of every problem from ``p0`` by L-BFGS on the sum of their objectives (float64,
    autograd of :func:`recon_and_kl`; the problems are independent, so the sum's maximiser is each one's)."""
    leaves = [v.detach().clone().requires_grad_(True) for v in p0.values()]
    keys = list(p0)
    opt = torch.optim.LBFGS(leaves, lr=1.0, max_iter=iters, tolerance_grad=1e-12, tolerance_change=1e-16,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _objective(dict(zip(keys, leaves)), fx, nonlinearity, amortised, gh, obs_std).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return {k: v.detach() for k, v in zip(keys, leaves)}


def _means(p: dict[str, Tensor], x: Tensor, amortised: bool, O1: Tensor | None = None) -> Tensor:
    if not amortised:
        return p["mu"]
    C = p["Cp"] if O1 is None else O1 @ p["Cp"]
    return torch.einsum("tjk,tnk->tnj", C, x) + p["d"].unsqueeze(1)


def ppca_starts(x: Tensor, seeds: list[int], *, amortised: bool, obs_std: float) -> dict[str, Tensor]:
    """Starts for the optimiser: the closed-form PPCA fit of each row's data ``x`` ``[P, N, 2]`` (right in
    the fast directions for any ν that is near-linear over the data, as tanh, sigmoid, elu are at the
    scale of s) with its latents rotated by a random angle (uniform, one generator per seed), so the
    slow rotation starts anywhere: A → AR, C → RᵀC, d → Rᵀd, Σ → RᵀΣR (D′ its Cholesky factor)."""
    opt = ppca_optimum(x, obs_std)
    th = torch.stack([torch.rand((), generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds])
    R = rotation(2.0 * math.pi * th).to(x.device)
    Rt = R.transpose(-1, -2)
    A = opt["A"] @ R
    C = Rt @ opt["C"]
    d = torch.einsum("tjk,tk->tj", Rt, opt["d"])
    S = Rt @ torch.diag_embed(opt["var"]) @ R
    L = torch.linalg.cholesky(0.5 * (S + S.transpose(-1, -2)))
    dp = torch.stack([L[:, 0, 0], L[:, 1, 0], L[:, 1, 1]], -1)
    if amortised:
        return {"A": A, "b": opt["b"].clone(), "Cp": C, "d": d, "Dp": dp}
    mu = torch.einsum("tjk,tnk->tnj", C, x) + d.unsqueeze(1)
    return {"A": A, "b": opt["b"].clone(), "mu": mu, "Dp": dp.unsqueeze(1).expand(-1, x.shape[1], 3).clone()}


def reference_optimum(
    x: Tensor, z: Tensor, *, nonlinearity: str, amortised: bool, cfg: Config, start_seeds: list[list[int]],
    device: str = "cpu",
) -> dict[str, list[float]]:
    """The ELBO's maximum (nats/point) per data draw and Σ family, and the diagonal optimum's angle θ*.

    ``x``, ``z`` ``[D, N, 2]`` (one row per draw); ``start_seeds[i]`` the seeds of draw i's random
    starts (``cfg.ref_starts`` per family). ν = identity: closed form (:func:`ppca_max_elbo`,
    :func:`ppca_optimum`). Otherwise :func:`newton_maximise` (amortised) or :func:`lbfgs_maximise`
    (unamortised) in float64 with ``gh_ref`` nodes, every draw × start × family as one batch, the best
    start per family; values re-evaluated with ``gh_eval`` nodes. Returns lists over draws:
    ``diagonal``, ``full`` (maxima), ``theta_star``, and for nonlinear ν ``spread_diagonal``,
    ``spread_full`` (best − worst start), ``theta_full_rotated`` (amortised: the full optimum's angle
    in its Σ's eigenbasis) and ``max_grad``.
    """
    x64, z64 = x.to(device, torch.float64), z.to(device, torch.float64)
    D, N, _ = x64.shape
    if nonlinearity == "identity":
        best = ppca_max_elbo(x64, cfg.obs_std)
        opt = ppca_optimum(x64, cfg.obs_std)
        mu = torch.einsum("tjk,tnk->tnj", opt["C"], x64) + opt["d"].unsqueeze(1)
        th = procrustes_angle_deg(z64, mu)
        return {"diagonal": best.tolist(), "full": best.tolist(), "theta_star": th.tolist()}
    k = cfg.ref_starts
    gh_r = gauss_hermite(cfg.gh_ref, torch.float64, device)
    gh_e = gauss_hermite(cfg.gh_eval, torch.float64, device)
    eye2 = torch.eye(2, dtype=torch.float64, device=device)

    def fixed_for(idx: Tensor, diag: bool) -> dict[str, Tensor]:
        e = eye2.expand(len(idx), 2, 2)
        return {"x": x64[idx], "O1": e, "O2": e, "diagonal": torch.full((len(idx),), diag, device=device)}

    def evaluate(p, fx, idx):
        with torch.no_grad():
            r, kl = recon_and_kl(p, fx, nonlinearity=nonlinearity, amortised=amortised, gh=gh_e, moments=False)
            elbo = elbo_per_point(r, kl, cfg.obs_std)
            elbo = torch.where(torch.isfinite(elbo), elbo, torch.full_like(elbo, -math.inf))
            return elbo, procrustes_angle_deg(z64[idx], _means(p, fx["x"], amortised))

    ar_ = torch.arange(D, device=device)
    if amortised:
        # full family from k starts per draw; the diagonal optimum is the best full optimum rotated into its Σ's
        # eigenbasis (one maximum for both families with a shared Σ), polished by Newton in the diagonal family
        idx = torch.arange(D, device=device).repeat_interleave(k)
        seeds = [start_seeds[i][j] for i in range(D) for j in range(k)]
        fx_f = fixed_for(idx, False)
        v, _, g_f = newton_maximise(_pack(ppca_starts(x64[idx], seeds, amortised=True, obs_std=cfg.obs_std)), fx_f,
                                    nonlinearity=nonlinearity, gh=gh_r, obs_std=cfg.obs_std, iters=cfg.ref_newton_iters)
        e_f, _ = evaluate(_unpack(v), fx_f, idx)
        e_f = e_f.reshape(D, k)
        best = e_f.argmax(-1)
        v_best = v.reshape(D, k, -1)[ar_, best]
        fx_d = fixed_for(ar_, True)
        v_rot = rotate_to_eigenbasis(v_best)
        theta_rot = procrustes_angle_deg(z64, _means(_unpack(v_rot), x64, True))
        v_d, _, g_d = newton_maximise(v_rot, fx_d, nonlinearity=nonlinearity, gh=gh_r, obs_std=cfg.obs_std,
                                      iters=cfg.ref_newton_iters)
        e_d, a_d = evaluate(_unpack(v_d), fx_d, ar_)
        g = torch.maximum(g_f.reshape(D, k)[ar_, best], g_d)
        return {"diagonal": e_d.tolist(), "full": e_f.max(-1).values.tolist(),
                "spread_full": (e_f.max(-1).values - e_f.min(-1).values).tolist(),
                "theta_star": a_d.tolist(), "theta_full_rotated": theta_rot.tolist(), "max_grad": g.tolist()}
    # unamortised: both families from k starts per draw (no shared Σ, so no common maximum), L-BFGS
    rows = [(i, fam, j) for fam in (True, False) for i in range(D) for j in range(k)]
    idx = torch.tensor([i for i, _, _ in rows], device=device)
    p0 = ppca_starts(x64[idx], [start_seeds[i][j] for i, _, j in rows], amortised=False, obs_std=cfg.obs_std)
    fx = fixed_for(idx, False)
    fx["diagonal"] = torch.tensor([fam for _, fam, _ in rows], device=device)
    p = lbfgs_maximise(p0, fx, nonlinearity=nonlinearity, amortised=False, gh=gh_r, obs_std=cfg.obs_std,
                       iters=cfg.ref_lbfgs_iters)
    elbo, ang = evaluate(p, fx, idx)
    e = elbo.reshape(2, D, k)  # [family (diag, full), draw, start]
    best_j = e.argmax(-1)
    return {"diagonal": e[0].max(-1).values.tolist(), "full": e[1].max(-1).values.tolist(),
            "spread_diagonal": (e[0].max(-1).values - e[0].min(-1).values).tolist(),
            "spread_full": (e[1].max(-1).values - e[1].min(-1).values).tolist(),
            "theta_star": ang.reshape(2, D, k)[0, ar_, best_j[0]].tolist()}


def rotate_to_eigenbasis(v: Tensor) -> Tensor:
    """Packed amortised parameters ``[P, 15]`` (O₁ = O₂ = I) in the eigenbasis R of their Σ = D′D′ᵀ:
    A → AR, C → RᵀC, d → Rᵀd, Σ → RᵀΣR (diagonal: D′ = diag of its square roots). The ELBO of the full
    family at v equals the diagonal family's at the result (theory claim appC-shared-covariance-rotation)."""
    p = _unpack(v)
    l11, l21, l22 = p["Dp"].unbind(-1)
    S = torch.stack([torch.stack([l11 * l11, l11 * l21], -1), torch.stack([l11 * l21, l21 * l21 + l22 * l22], -1)], -2)
    ev, R = torch.linalg.eigh(S)
    Rt = R.transpose(-1, -2)
    sd = torch.sqrt(torch.clamp(ev, min=0.0))
    return _pack({"A": p["A"] @ R, "b": p["b"], "Cp": Rt @ p["Cp"], "d": torch.einsum("tjk,tk->tj", Rt, p["d"]),
                  "Dp": torch.stack([sd[:, 0], torch.zeros_like(sd[:, 0]), sd[:, 1]], -1)})


# ----------------------------------------------------------------------------------------------
# One experiment: one (ν, amortised?) setting, both Σ types, all n, batched
# ----------------------------------------------------------------------------------------------
def _setting_key(nonlinearity: str, amortised: bool, cov: str | None = None) -> str:
    k = f"{nonlinearity}/{'amortised' if amortised else 'unamortised'}"
    return k if cov is None else f"{k}/{cov}"


def trial_plan(cfg: Config, nonlinearity: str = "identity") -> list[tuple[int, int, bool]]:
    """(trial index j, n, diagonal?) for every run of one setting, sorted by n (stable)."""
    _, sched, tpn, _ = cfg.sizes(nonlinearity)
    if len(sched) != len(tpn):
        raise ValueError("trials_per_n: must have one entry per schedule_n value")
    js = []
    j = 0
    for n, k in zip(sched, tpn):
        for _ in range(k):
            js.append((j, n))
            j += 1
    plan = [(j, n, diag) for diag in (True, False) for (j, n) in js]
    return sorted(plan, key=lambda r: r[1])


def _data_seed(seed: int, j: int) -> int:
    return seed * 1_000_003 + j


def _init_seed(seed: int, j: int) -> int:
    return seed * 1_000_003 + 500_000 + j


def _ref_seeds(seed: int, j: int, k: int) -> list[int]:
    return [seed * 1_000_003 + 700_000 + 16 * j + i for i in range(k)]


_LIMIT_OFFSET = 100_000  # rule 3's separate draws: data seeds seed·1000003 + 100000 + j


def setting_batch(cfg: Config, nonlinearity: str, amortised: bool, *, seed: int, device: str):
    """The batch of one setting: (plan, params, fixed, z, n_sched, datasets) on ``device`` in cfg.dtype."""
    dtype = getattr(torch, cfg.dtype)
    n_points, _, _, _ = cfg.sizes(nonlinearity)
    plan = trial_plan(cfg, nonlinearity)
    js = sorted({j for j, _, _ in plan})
    datasets = {j: make_synthetic(nonlinearity, n_points, noise_std=cfg.noise_std, seed=_data_seed(seed, j),
                                  w_columns=cfg.w_columns) for j in js}
    init_seeds = [_init_seed(seed, j) for j, _, _ in plan]
    params = init_params(init_seeds, amortised=amortised, n_points=n_points, init_std=cfg.init_std,
                         mu_init_std=cfg.mu_init_std)
    o1, o2 = random_rotations(init_seeds)
    x = torch.stack([datasets[j].x for j, _, _ in plan])
    z = torch.stack([datasets[j].z for j, _, _ in plan])
    fixed = {"x": x, "O1": o1, "O2": o2, "diagonal": torch.tensor([d for _, _, d in plan])}
    if nonlinearity == "identity" and amortised:
        fixed["xm"] = x.mean(1)
        fixed["xx"] = torch.einsum("tni,tnj->tij", x, x) / x.shape[1]
    fixed = {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)) for k, v in fixed.items()}
    params = {k: v.to(device=device, dtype=dtype) for k, v in params.items()}
    n_sched = torch.tensor([n for _, n, _ in plan], dtype=torch.float64)
    return plan, params, fixed, z, n_sched, datasets


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_setting(
    cfg: Config, nonlinearity: str, amortised: bool, *, seed: int, device: str, progress=None
) -> dict[str, Any]:
    """Train every run of one (ν, amortised?) setting as one batched computation; per-run results and
    the optimum of every data draw."""
    dtype = getattr(torch, cfg.dtype)
    n_points, _, _, n_draws = cfg.sizes(nonlinearity)
    plan, params, fixed, z, n_sched, datasets = setting_batch(cfg, nonlinearity, amortised, seed=seed, device=device)
    gh = None if nonlinearity == "identity" else gauss_hermite(cfg.gh_train, dtype, device)
    _sync(device)
    t0 = time.perf_counter()
    final, steps = train_batched(params, fixed, n_sched, nonlinearity=nonlinearity, amortised=amortised, cfg=cfg,
                                 gh=gh, progress=progress)
    _sync(device)
    train_s = time.perf_counter() - t0
    # Evaluation in float64 with a fine quadrature.
    f64 = {k: (v.to(device, torch.float64) if v.is_floating_point() else v.to(device)) for k, v in fixed.items()}
    p64 = {k: v.to(device, torch.float64) for k, v in final.items()}
    gh_e = None if nonlinearity == "identity" else gauss_hermite(cfg.gh_eval, torch.float64, device)
    with torch.no_grad():
        recon, kl = recon_and_kl(p64, f64, nonlinearity=nonlinearity, amortised=amortised, gh=gh_e, moments=False)
        elbo = elbo_per_point(recon, kl, cfg.obs_std)
        means = _means(p64, f64["x"], amortised, f64["O1"])
        angle = procrustes_angle_deg(z.to(device), means)
    # The optimum of every trained run's draw (gaps, rule 2), and of rule 3's draws when separate.
    how = "closed form" if nonlinearity == "identity" else ("Newton" if amortised else "L-BFGS")
    if progress is not None:
        progress(f"fig1: optimum of {len(datasets)} {nonlinearity} draws ({how})")
    t1 = time.perf_counter()
    js = sorted(datasets)
    xd = torch.stack([datasets[j].x for j in js])
    zd = torch.stack([datasets[j].z for j in js])
    ref = reference_optimum(xd, zd, nonlinearity=nonlinearity, amortised=amortised, cfg=cfg, device=device,
                            start_seeds=[_ref_seeds(seed, j, cfg.ref_starts) for j in js])
    if cfg.optimum_draws is None:
        limit = ref
    else:
        n_opt = cfg.optimum_size(nonlinearity)
        if progress is not None:
            progress(f"fig1: optimum of {n_draws} separate {n_opt}-point {nonlinearity} draws for rule 3 ({how})")
        extra = [make_synthetic(nonlinearity, n_opt, noise_std=cfg.noise_std, seed=_data_seed(seed, _LIMIT_OFFSET + j),
                                w_columns=cfg.w_columns) for j in range(n_draws)]
        limit = reference_optimum(torch.stack([d.x for d in extra]), torch.stack([d.z for d in extra]),
                                  nonlinearity=nonlinearity, amortised=amortised, cfg=cfg, device=device,
                                  start_seeds=[_ref_seeds(seed, _LIMIT_OFFSET + j, cfg.ref_starts) for j in range(n_draws)])
        limit["n_points"] = n_opt
    _sync(device)
    ref_s = time.perf_counter() - t1
    return {
        "nonlinearity": nonlinearity,
        "amortised": amortised,
        "n_points": n_points,
        "trial": [j for j, _, _ in plan],
        "n": [n for _, n, _ in plan],
        "steps_run": [schedule_steps(n, cfg) for _, n, _ in plan],
        "covariance": ["diagonal" if d else "full" for _, _, d in plan],
        "elbo": elbo.cpu().tolist(),
        "angle_deg": angle.cpu().tolist(),
        "optimum": ref,
        "limit": limit,
        "train_seconds": train_s,
        "optimum_seconds": ref_s,
        "steps": steps,
        "runs": len(plan),
        "flops": flops_per_trial_step(nonlinearity, amortised, n_points, cfg.gh_train) * sum(
            schedule_steps(n, cfg) for _, n, _ in plan),
    }


# ----------------------------------------------------------------------------------------------
# Statistics (numpy; bootstrap seeded) and the decision rule
# ----------------------------------------------------------------------------------------------
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def _median(a: np.ndarray) -> float:
    return float(np.median(a))


def run_table(s: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per run of a setting: covariance, gap to its own draw's optimum (nats/point), angle, θ*, n."""
    cov = np.array(s["covariance"])
    trial = np.array(s["trial"], dtype=np.int64)
    opt = s["optimum"]
    ref = np.where(cov == "diagonal", np.array(opt["diagonal"])[trial], np.array(opt["full"])[trial])
    return {"cov": cov, "trial": trial, "gap": ref - np.array(s["elbo"], dtype=np.float64),
            "angle": np.array(s["angle_deg"], dtype=np.float64), "theta_star": np.array(opt["theta_star"])[trial],
            "n": np.array(s["n"], dtype=np.int64)}


def setting_statistics(s: dict[str, Any], cfg: Config, seed: int, si: int) -> dict[str, Any]:
    """Everything rule v2 reads for one setting (module docstring), with percentile-bootstrap CIs."""
    tb = run_table(s)
    opt = s["optimum"]
    st: dict[str, Any] = {"runs": {c: int((tb["cov"] == c).sum()) for c in COVARIANCES}}
    # precondition R, over both references (the trained runs' draws and rule 3's)
    refs = [opt] + ([s["limit"]] if s.get("limit") is not None and s["limit"] is not opt else [])
    excess = float(np.max(-tb["gap"])) if len(tb["gap"]) else -math.inf
    fam_diff = max(float(np.max(np.abs(np.array(r["diagonal"]) - np.array(r["full"])))) for r in refs)
    ang_diff = max((float(np.max(angle_difference_deg(r["theta_star"], r["theta_full_rotated"])))
                    if "theta_full_rotated" in r and s["amortised"] else 0.0) for r in refs)
    st["R"] = {"excess": excess, "family_diff": fam_diff, "angle_diff": ang_diff}
    st["R_met"] = bool(excess <= cfg.ref_tol and fam_diff <= cfg.ref_tol and ang_diff <= cfg.ref_angle_tol_deg)
    lvl = cfg.ci_level
    for ci, c in enumerate(COVARIANCES):
        sel = tb["cov"] == c
        gap, ang = tb["gap"][sel], tb["angle"][sel]
        near = gap <= cfg.gap_near
        st[c] = {"near": int(near.sum()), "min_gap": float(gap.min()) if len(gap) else math.nan,
                 "median_gap": float(np.median(gap)) if len(gap) else math.nan}
        rng = np.random.default_rng([seed, si, ci])
        if near.sum() >= 1:
            a_near = np.abs(ang[near])
            st[c]["median_abs"] = bstats.bootstrap_ci(_median, a_near, B=cfg.bootstrap, level=lvl, rng=rng)
            if c == "diagonal":
                dev = angle_difference_deg(ang[near], tb["theta_star"][sel][near])
                st[c]["median_dev"] = bstats.bootstrap_ci(_median, dev, B=cfg.bootstrap, level=lvl, rng=rng)
        if c == "diagonal" and len(gap) >= 3:
            st[c]["spearman"] = bstats.bootstrap_ci(spearman, gap, np.abs(ang), B=cfg.bootstrap, level=lvl, rng=rng)
    th = np.abs(np.array(refs[-1]["theta_star"], dtype=np.float64))
    st["theta_star"] = bstats.bootstrap_ci(_median, th, B=cfg.bootstrap, level=lvl,
                                           rng=np.random.default_rng([seed, si, 7]))
    st["draws"] = len(th)
    return st


def _steps_needed(gap: float, target: float, cfg: Config) -> int:
    """Steps at lr 0.1 for the slowest mode (λ = 4.9e-4, the ELBO gap's e-fold every 1/(2·lr·λ)) to take
    a gap from ``gap`` to ``target`` (a planning figure from the measured Hessian, not a promise)."""
    if not (gap > target > 0):
        return 0
    return int(math.ceil(math.log(gap / target) / (2 * cfg.lr0 * 4.9e-4)))


def check(res: ExperimentResult) -> list[CheckResult]:
    """Apply decision rule v2 of the module docstring to ``res.data`` (per setting: preconditions R and
    N, rules 1–5, three outcomes each)."""
    cfg = config_from_dict(Config, res.config)
    seed = res.seeds[0] if res.seeds else 0
    lvl = f"{cfg.ci_level:.0%}"
    paper = CONFIGS["paper"]
    out: list[CheckResult] = []
    for si, s in enumerate(res.data["settings"]):
        base = _setting_key(s["nonlinearity"], s["amortised"])
        st = setting_statistics(s, cfg, seed, si)
        tag = f"[{base}, {res.scale}, {s['n_points']} points, seed {seed}]"
        paper_runs = paper.trials(s["nonlinearity"])
        # ---- precondition R
        R = st["R"]
        dR = verdicts.precondition(
            st["R_met"], name=f"R 'the optimum is the optimum' [{base}]",
            measured=(f"largest run ELBO − optimum {R['excess']:.2e} nats/point, |diagonal − full maximum| ≤ "
                      f"{R['family_diff']:.2e}, |θ*(diagonal) − θ*(full, eigenbasis)| ≤ {R['angle_diff']:.3f}°"),
            required=f"≤ {cfg.ref_tol:g}, ≤ {cfg.ref_tol:g}, ≤ {cfg.ref_angle_tol_deg:g}°")
        out.append(decided(CLAIM_ID, dR, seed=seed, measured=dict(R), abs_err=max(R["excess"], R["family_diff"], 0.0),
                           atol=cfg.ref_tol, expected=f"every run at or below its draw's optimum (+{cfg.ref_tol:g}); "
                           "the two families' optima agree",
                           detail=f"{tag} precondition R: the reference optimum is a maximum ({st['draws']} draws)."))
        # ---- precondition N per Σ type
        dN = {}
        for c in COVARIANCES:
            sc = st[c]
            met = sc["near"] >= cfg.min_near_optimal
            dN[c] = verdicts.precondition(
                met, name=f"N 'enough runs near the optimum' [{base}, {c} Σ]",
                measured=(f"{sc['near']} of {st['runs'][c]} runs within {cfg.gap_near:g} nats/point (smallest gap "
                          f"{sc['min_gap']:.2e}, median {sc['median_gap']:.2e})"),
                required=f"≥ {cfg.min_near_optimal} runs with gap ≤ {cfg.gap_near:g}")
            out.append(decided(CLAIM_ID, dN[c], seed=seed, measured={"near_optimal_runs": sc["near"], "min_gap": sc["min_gap"],
                               "median_gap": sc["median_gap"]}, abs_err=float(sc["near"]), atol=float(cfg.min_near_optimal),
                               sense="exceeds", expected=f"≥ {cfg.min_near_optimal} runs within {cfg.gap_near:g} nats/point",
                               detail=f"{tag} precondition N, {c} Σ: runs near their draw's optimum."))

        def unmet_note(c: str) -> str:
            sc = st[c]
            need = _steps_needed(sc["median_gap"], cfg.gap_near, cfg)
            longest = max(s["steps_run"])
            pap = schedule_steps(max(paper.schedule_n), paper)
            return (f"What would decide it: longer first stages (from the median gap {sc['median_gap']:.2e} to "
                    f"{cfg.gap_near:g} the slowest mode needs ≈ {need:,} more steps at lr {cfg.lr0:g}; the longest run here "
                    f"had {longest:,} steps; --scale paper (App. C's schedule, ≤ {pap:,} steps) "
                    + ("may provide it)." if pap >= longest + need else "does not provide it)."))

        def one(rule: str, c: str | None, est_ci, threshold: float, claimed: str, what: str, unit: str, n_now: int,
                paper_n: int, pre: list[verdicts.Decision], measured_key: str, expl: str, note_pre: str = ""):
            est, lo, hi = est_ci if est_ci is not None else (math.nan, math.nan, math.nan)
            blocking = [d for d in pre if d.outcome != "verified"]
            if blocking:
                d = verdicts.Decision("inconclusive", f"{what}: " + "; ".join(b.reason for b in blocking))
                note = note_pre
            else:
                d = verdicts.one_sided((lo, hi), threshold, claimed=claimed, what=what, level=cfg.ci_level)
                side = {"high": threshold} if claimed == "below" else {"low": threshold}
                note = "" if d.outcome != "inconclusive" else verdicts.decide_sentence(
                    est, (lo, hi), n_now, unit=unit, paper_n=paper_n, **side)
            m = {measured_key: est if math.isfinite(est) else 0.0, "ci": [lo if math.isfinite(lo) else 0.0,
                                                                          hi if math.isfinite(hi) else 0.0]}
            err = hi if claimed == "below" else lo
            out.append(decided(CLAIM_ID, d, seed=seed, note=note, measured=m,
                               expected=f"{lvl} CI entirely {claimed} {threshold:g}",
                               abs_err=err if math.isfinite(err) else None, atol=threshold,
                               sense="within" if claimed == "below" else "exceeds",
                               detail=f"{tag} rule {rule}{'' if c is None else f', {c} Σ'}: {expl}"))

        dg, fu = st["diagonal"], st["full"]
        n_d = dg["near"]
        fmt = (lambda t: f"{t[0]:.2f}° ({lvl} CI {t[1]:.2f}–{t[2]:.2f}°)")
        if "median_abs" in dg:
            e1 = fmt(dg["median_abs"])
            e2 = fmt(dg["median_dev"])
        else:
            e1 = e2 = "no near-optimal run"
        one("1", "diagonal", dg.get("median_abs"), cfg.theta_small_deg, "below",
            f"median |angle| of near-optimal diagonal runs [{base}]", "near-optimal runs", max(n_d, 1), paper_runs,
            [dR, dN["diagonal"]], "median_abs_angle_deg",
            f"median |angle| of the {n_d} runs within {cfg.gap_near:g} nats/point of their optimum: {e1}; verified iff "
            f"the upper end < {cfg.theta_small_deg:g}°, refuted iff the lower end ≥ {cfg.theta_small_deg:g}°.",
            note_pre=unmet_note("diagonal") if dN["diagonal"].outcome != "verified" else "")
        one("2", "diagonal", dg.get("median_dev"), cfg.theta_small_deg, "below",
            f"median |angle − θ*| of near-optimal diagonal runs [{base}]", "near-optimal runs", max(n_d, 1), paper_runs,
            [dR, dN["diagonal"]], "median_abs_deviation_deg",
            f"median circular |angle − θ*(own draw)| of the same runs: {e2}; verified iff the upper end < "
            f"{cfg.theta_small_deg:g}°, refuted iff the lower end ≥ {cfg.theta_small_deg:g}°.",
            note_pre=unmet_note("diagonal") if dN["diagonal"].outcome != "verified" else "")
        one("3", "diagonal", st["theta_star"], cfg.theta_small_deg, "below",
            f"median |θ*| of the diagonal optimum over data draws [{base}]", "data draws", st["draws"],
            paper.sizes(s["nonlinearity"])[3], [dR], "median_abs_theta_star_deg",
            f"median |θ*| (the angle of the mean-field ELBO's maximiser, per draw) over {st['draws']} draws of "
            f"{(s.get('limit') or {}).get('n_points', s['n_points'])} points: "
            f"{fmt(st['theta_star'])}; verified iff the upper end < {cfg.theta_small_deg:g}°, refuted iff the lower "
            f"end ≥ {cfg.theta_small_deg:g}°.")
        n_f = fu["near"]
        e4 = fmt(fu["median_abs"]) if "median_abs" in fu else "no near-optimal run"
        one("4", "full", fu.get("median_abs"), cfg.theta_large_deg, "above",
            f"median |angle| of near-optimal full runs [{base}]", "near-optimal runs", max(n_f, 1), paper_runs,
            [dR, dN["full"]], "median_abs_angle_deg",
            f"median |angle| of the {n_f} runs within {cfg.gap_near:g} nats/point: {e4}; verified iff the lower end > "
            f"{cfg.theta_large_deg:g}° (uniform angles: 22.5°), refuted iff the upper end ≤ {cfg.theta_large_deg:g}°.",
            note_pre=unmet_note("full") if dN["full"].outcome != "verified" else "")
        sp = dg.get("spearman")
        e5 = f"{sp[0]:.3f} ({lvl} CI {sp[1]:.3f} to {sp[2]:.3f})" if sp is not None else "too few runs"
        one("5", "diagonal", sp, 0.0, "above", f"Spearman(gap, |angle|) of diagonal runs [{base}]", "runs",
            st["runs"]["diagonal"], paper_runs, [dR], "spearman",
            f"Spearman(gap to the optimum, |angle|) over {st['runs']['diagonal']} runs: {e5}; verified iff the lower "
            "end > 0, refuted iff the upper end ≤ 0.")
    if not out:
        raise RuntimeError("check: the result holds no runs")
    return out


# ----------------------------------------------------------------------------------------------
# Counted FLOPs and the cost of a configuration (for the paper-scale plan)
# ----------------------------------------------------------------------------------------------
_MATMULS = {"mm", "bmm", "addmm", "baddbmm", "addbmm", "matmul", "dot", "mv"}
_REDUCTIONS = {"sum", "mean", "amax", "amin", "prod"}
_COPIES = {"clone", "copy", "_to_copy", "lift_fresh_copy", "alias"}  # tagged pointwise by aten, no arithmetic


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (torch operations only), counted op by op at dispatch.

    Convention: a matrix product of [m, k] by [k, n] costs 2mkn (batched: times the batch); an
    elementwise operation (addition, product, tanh, exp, sqrt, comparison, where, ...) one FLOP per
    output element; a reduction one per input element; copies, views, stacking and indexing none.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    total = [0]

    class _Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__.rstrip("_")
            if name in _MATMULS:
                a, b = args[0], args[1]
                if name in ("addmm", "baddbmm", "addbmm"):
                    a, b = args[1], args[2]
                batch = math.prod(a.shape[:-2]) if a.dim() > 2 else 1
                m = a.shape[-2] if a.dim() >= 2 else 1
                k = a.shape[-1]
                n = b.shape[-1] if b.dim() >= 2 else 1
                total[0] += 2 * batch * m * k * n
            elif name in _REDUCTIONS:
                total[0] += args[0].numel()
            elif name in _COPIES:
                pass
            elif torch.Tag.pointwise in func.tags and isinstance(out, Tensor):
                total[0] += out.numel()
            return out

    with _Counter():
        fn()
    return int(total[0])


# Counted FLOPs of one GD step of one trial (gradient and update) as a0 + a3·K + N·(c1 + c2·K), K the
# Gauss–Hermite nodes: read off count_flops on two-trial batches at N ∈ {10, 20}, K ∈ {3, 5}
# (tests/test_fig1.py recounts other sizes). The moment route (ν = identity, amortised) is 302 per step.
_FLOP_TABLE: dict[tuple[str, bool], tuple[float, float, float, float]] = {
    ("identity", False): (60.0, 0.0, 142.0, 0.0),
    ("tanh", True): (200.0, 3.0, 52.0, 24.0),
    ("tanh", False): (60.0, 1.0, 146.0, 26.0),
    ("sigmoid", True): (200.0, 3.0, 52.0, 24.0),
    ("sigmoid", False): (60.0, 1.0, 146.0, 26.0),
    ("elu", True): (200.0, 3.0, 52.0, 26.0),
    ("elu", False): (60.0, 1.0, 146.0, 28.0),
}


def flops_per_trial_step(nonlinearity: str, amortised: bool, n_points: int, gh_k: int) -> float:
    """Counted FLOPs of one GD step of one trial (gradient and update; :func:`count_flops`'s convention)."""
    if nonlinearity == "identity" and amortised:
        return 302.0
    a0, a3, c1, c2 = _FLOP_TABLE[(nonlinearity, bool(amortised))]
    return a0 + a3 * gh_k + n_points * (c1 + c2 * gh_k)


def counted_flops_per_trial_step(nonlinearity: str, amortised: bool, n_points: int, gh_k: int) -> float:
    """:func:`count_flops` of one GD step (gradient and update) on a two-trial batch, per trial (the route
    the table of :func:`flops_per_trial_step` was read from; the moment route counted in its torch form)."""
    seeds = [11, 12]
    p = init_params(seeds, amortised=amortised, n_points=n_points, init_std=0.5, mu_init_std=0.1)
    o1, o2 = random_rotations(seeds)
    x = torch.stack([make_synthetic(nonlinearity, n_points, seed=s).x for s in seeds])
    fx = {"x": x, "O1": o1, "O2": o2, "diagonal": torch.tensor([True, False])}
    if nonlinearity == "identity" and amortised:
        fx["xm"], fx["xx"] = x.mean(1), torch.einsum("tni,tnj->tij", x, x) / n_points
    gh = None if nonlinearity == "identity" else gauss_hermite(gh_k, torch.float64, "cpu")
    lr = torch.full((2,), 0.1, dtype=torch.float64)

    def step():
        g = gd_gradient(p, fx, nonlinearity=nonlinearity, amortised=amortised, gh=gh, obs_std=0.05)
        for k, v in p.items():
            v.sub_(lr.reshape(-1, *([1] * (v.dim() - 1))) * g[k])

    return count_flops(step) / 2.0


def estimate_cost(
    config: Config, *, device: str = "cpu", warmup_steps: int = 20, settings: list[tuple[str, bool]] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """What ``config`` costs on ``device``, from a short measured warm-up (nothing is trained to completion).

    Per setting (ν, amortised?): models (runs: both Σ types), the longest run's steps, trial-steps
    (the sum of every run's steps), counted FLOPs (:func:`flops_per_trial_step` × trial-steps), and
    seconds: the training loop is timed for ``warmup_steps`` steps on the full batch and on a quarter
    of it, which fits seconds/step = a + b·(active trials), so training takes a·steps + b·trial-steps
    (trials leave the batch as their schedules end); the optimum is timed for one Newton iteration
    (amortised nonlinear; ``ref_newton_iters`` of them) or one objective-and-gradient evaluation
    (unamortised nonlinear; ``ref_lbfgs_iters`` × 1.25 of them); ν = identity's optimum is closed
    form. Returns {"settings": [...], "total_seconds", "total_flops", "device"}: each setting with
    models, steps, trial_steps, flops, seconds_per_step_full, train_seconds, optimum_seconds, seconds,
    flops_per_second (counted FLOPs / training seconds, the warm-up's rate).
    """
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 2:
        raise ValueError(f"warmup_steps: expected an int >= 2, got {warmup_steps!r}")
    _validate(config)
    todo = settings if settings is not None else [(nl, a) for a in config.amortised for nl in config.nonlinearities]
    rows = []
    for nl, amortised in todo:
        plan, params, fixed, z, n_sched, datasets = setting_batch(config, nl, amortised, seed=seed, device=device)
        dtype = getattr(torch, config.dtype)
        gh = None if nl == "identity" else gauss_hermite(config.gh_train, dtype, device)
        T = len(plan)
        steps_each = [schedule_steps(n, config) for _, n, _ in plan]

        def timed(k: int) -> float:
            sl = slice(T - k, T)
            p = {kk: v[sl] for kk, v in params.items()}
            f = {kk: v[sl] for kk, v in fixed.items()}
            big = torch.full((k,), float(10**9), dtype=torch.float64)
            train_batched(p, f, big, nonlinearity=nl, amortised=amortised, cfg=config, gh=gh, max_steps=2)
            _sync(device)
            t0 = time.perf_counter()
            train_batched(p, f, big, nonlinearity=nl, amortised=amortised, cfg=config, gh=gh, max_steps=warmup_steps)
            _sync(device)
            return (time.perf_counter() - t0) / warmup_steps

        t_full = timed(T)
        k4 = max(1, T // 4)
        t_q = timed(k4)
        b = max((t_full - t_q) / (T - k4), 0.0) if T > k4 else 0.0
        a = max(t_full - b * T, 0.0)
        trial_steps = int(sum(steps_each))
        train_s = a * max(steps_each) + b * trial_steps
        n_points, _, _, n_draws = config.sizes(nl)
        fl = flops_per_trial_step(nl, amortised, n_points, config.gh_train) * trial_steps
        opt_s = 0.0
        if nl != "identity":
            one = dataclasses.replace(config, ref_newton_iters=1, ref_lbfgs_iters=1)
            iters = config.ref_newton_iters if amortised else 1.25 * config.ref_lbfgs_iters
            groups = [(n_points, config.trials(nl), 0)]
            if config.optimum_draws is not None:
                groups.append((config.optimum_size(nl), n_draws, _LIMIT_OFFSET))
            for pts, draws, off in groups:
                ds = [make_synthetic(nl, pts, seed=_data_seed(seed, off + j), w_columns=config.w_columns)
                      for j in range(min(draws, 4))]
                _sync(device)
                t0 = time.perf_counter()
                reference_optimum(torch.stack([d.x for d in ds]), torch.stack([d.z for d in ds]), nonlinearity=nl,
                                  amortised=amortised, cfg=one, device=device,
                                  start_seeds=[_ref_seeds(seed, off + j, config.ref_starts) for j in range(len(ds))])
                _sync(device)
                opt_s += (time.perf_counter() - t0) * draws / len(ds) * iters
        rows.append({"nonlinearity": nl, "amortised": amortised, "models": T, "steps": max(steps_each),
                     "trial_steps": trial_steps, "flops": fl, "seconds_per_step_full": t_full,
                     "seconds_per_step_fit": [a, b], "train_seconds": train_s, "optimum_seconds": opt_s,
                     "seconds": train_s + opt_s, "flops_per_second": fl / train_s if train_s > 0 else math.nan})
    return {"device": device, "dtype": config.dtype, "warmup_steps": warmup_steps, "settings": rows,
            "total_seconds": sum(r["seconds"] for r in rows), "total_flops": sum(r["flops"] for r in rows)}


# ----------------------------------------------------------------------------------------------
# run / figure
# ----------------------------------------------------------------------------------------------
def _validate(cfg: Config) -> None:
    for nl in cfg.nonlinearities:
        if nl not in NONLINEARITIES:
            raise ValueError(f"nonlinearities: unknown {nl!r}; expected a subset of {NONLINEARITIES}")
    for nl in ("identity", "tanh"):
        n_points, sched, tpn, _ = cfg.sizes(nl)
        if n_points < 2:
            raise ValueError(f"n_points: expected at least 2, got {n_points}")
        if any(n < 1 for n in sched):
            raise ValueError(f"schedule_n: every n must be >= 1, got {sched}")
        if len(sched) != len(tpn):
            raise ValueError("trials_per_n: must have one entry per schedule_n value")
    if cfg.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {cfg.dtype!r}")
    if not cfg.later_stages > 0:
        raise ValueError(f"later_stages: expected > 0, got {cfg.later_stages!r}")
    if cfg.ref_starts < 1:
        raise ValueError(f"ref_starts: expected >= 1, got {cfg.ref_starts!r}")


def run(config: Config, *, seed: int, device: str, out_dir, progress=None) -> ExperimentResult:
    """Train every setting of ``config`` (one batched computation per (ν, amortised?)), find every draw's
    optimum, draw the figure."""
    _validate(config)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = []
    for amortised in config.amortised:
        for nl in config.nonlinearities:
            if progress is not None:
                progress(f"fig1: training {_setting_key(nl, amortised)} ({2 * config.trials(nl)} runs, batched)")
            settings.append(_setting_piece(config, nl, amortised, seed=seed, device=device, progress=progress))
    data = {"settings": settings}
    metrics: dict[str, Metric] = {}
    for si, s in enumerate(settings):
        key = _setting_key(s["nonlinearity"], s["amortised"])
        st = setting_statistics(s, config, seed, si)
        for c in COVARIANCES:
            sc = st[c]
            metrics[f"{key}/{c}/near_optimal_runs"] = Metric(
                float(sc["near"]), n=st["runs"][c], unit="runs",
                note=f"runs within {config.gap_near:g} nats/point of their draw's optimum (smallest gap {sc['min_gap']:.2e})")
            if "median_abs" in sc:
                metrics[f"{key}/{c}/near_opt_median_abs_angle"] = Metric(
                    *sc["median_abs"], level=config.ci_level, n=sc["near"], unit="deg",
                    note="median |angle| of the near-optimal runs; percentile bootstrap")
            if "median_dev" in sc:
                metrics[f"{key}/{c}/near_opt_median_abs_angle_minus_theta_star"] = Metric(
                    *sc["median_dev"], level=config.ci_level, n=sc["near"], unit="deg",
                    note="median circular |angle − θ*| of the near-optimal runs; percentile bootstrap")
            if "spearman" in sc:
                metrics[f"{key}/{c}/spearman_gap_abs_angle"] = Metric(
                    *sc["spearman"], level=config.ci_level, n=st["runs"][c], unit="",
                    note="Spearman rank correlation of gap to the optimum and |angle| over all runs; percentile bootstrap")
        metrics[f"{key}/median_abs_theta_star"] = Metric(
            *st["theta_star"], level=config.ci_level, n=st["draws"], unit="deg",
            note="median |θ*| (angle of the mean-field optimum) over data draws; percentile bootstrap")
        metrics[f"{key}/train_flops_per_second"] = Metric(
            s["flops"] / s["train_seconds"] if s["train_seconds"] > 0 else math.nan, n=s["runs"], unit="FLOP/s",
            note=f"counted FLOPs {s['flops']:.3e} in {s['train_seconds']:.1f} s on {device} ({config.dtype}; "
                 f"{'numpy moment route, CPU' if s['nonlinearity'] == 'identity' and s['amortised'] else 'torch per-point route'})")
    runs = sum(s["runs"] for s in settings)
    train_s = sum(s["train_seconds"] for s in settings)
    metrics["trials_per_second"] = Metric(
        runs / train_s if train_s > 0 else float("nan"), n=runs, unit="runs/s",
        note=f"{runs} runs trained in {train_s:.1f} s on {device} (batched; every run its full schedule)",
    )
    figures = [str(p) for p in draw_figure(data, config, out_dir)]
    notes = [
        "W = Q·diag(2, 1) with Q Haar-orthogonal (App. C read as 'orthogonal columns of norms 2 and 1'; "
        "see gracheck.data.synthetic and erratum-appC-gaussian-w).",
        "GD on s²·(−ELBO) with s = 0.05 fixed (lr 0.1 on the unscaled ELBO diverges); unamortised "
        "per-point parameters step N times the shared lr.",
        f"Schedule: first stage n at lr {config.lr0:g}, then {config.lr_stages - 1} stages of "
        f"{config.later_stages:g}·n (App. C: 1).",
        f"{config.dtype} training on {device} (ν = identity amortised: numpy float64 on the CPU); ELBO and optima "
        f"in float64 (Gauss–Hermite, {config.gh_eval} nodes, for nonlinear ν).",
    ]
    return ExperimentResult(
        claim_id=CLAIM_ID,
        scale=scale_of(CONFIGS, config),
        config=config_dict(config),
        seeds=[seed],
        device=device,
        metrics=metrics,
        figures=figures,
        seconds=time.perf_counter() - t0,
        created=now_utc(),
        data=data,
        notes=notes,
    )


def _setting_piece(config: Config, nl: str, amortised: bool, *, seed: int, device: str, progress=None) -> dict[str, Any]:
    """:func:`run_setting` cached as a piece of the experiment (one per (ν, amortised?); see ``_common.cached_piece``),
    so that a budget can run the settings in separate processes."""
    return cached_piece(CLAIM_ID, config, seed, device, _setting_key(nl, amortised),
                        lambda: run_setting(config, nl, amortised, seed=seed, device=device, progress=progress))


# ----------------------------------------------------------------------------------------------
# plan: one job per (ν, amortised?) setting, then the statistics (gracheck.experiments._plan)
# ----------------------------------------------------------------------------------------------
def plan(config: Config, *, seed: int = 0, device: str = "cpu") -> list:
    """The work of ``config``: one job per (ν, amortised?) setting (all its runs batched), then the statistics.

    A setting's cost is :func:`estimate_cost`'s: a short warm-up of :func:`train_batched` on the full
    batch and on a quarter of it, extrapolated over the schedule as the trials leave the batch
    (time = a·max_t(steps_t) + b·Σ_t steps_t), plus the optimum search timed per iteration.
    """
    from gracheck.experiments._common import piece_done
    from gracheck.experiments._plan import Estimate, Job, final_job

    _validate(config)
    jobs = []
    for amortised in config.amortised:
        for nl in config.nonlinearities:
            key = _setting_key(nl, amortised)
            runs = trial_plan(config, nl)
            n_points, sched, _, _ = config.sizes(nl)
            jobs.append(Job(
                claim_id=CLAIM_ID, name=f"trials {key}", kind="trials", runs=len(runs),
                steps=max(schedule_steps(n, config) for _, n, _ in runs),
                what=(f"{len(runs)} runs batched ({config.trials(nl)} trials × diagonal/full Σ), ν = {nl}, "
                      f"{'amortised' if amortised else 'unamortised'}, {n_points} points, n ∈ "
                      f"{{{', '.join(str(n) for n in sched)}}}, {config.dtype}, then the optimum of every draw"),
                measure=lambda dev, nl=nl, am=amortised: _measure_setting(config, nl, am, seed=seed, device=dev),
                execute=lambda dev, prog, nl=nl, am=amortised: _setting_piece(config, nl, am, seed=seed, device=dev,
                                                                             progress=prog),
                done=lambda key=key: piece_done(CLAIM_ID, config, seed, device, key),
                blocked=None,
            ))
    assumed = Estimate(30.0, None, "assumed, not measured: bootstrap statistics and one figure from the cached settings")
    jobs.append(final_job(CLAIM_ID, what=f"statistics ({config.bootstrap} bootstrap resamples per setting) and the figure",
                          measure=lambda dev: assumed, blocked=None))
    return jobs


def _measure_setting(cfg: Config, nl: str, amortised: bool, *, seed: int, device: str):
    """Estimate of one setting's work on ``device`` (its batched training and its optimum search), from
    :func:`estimate_cost`'s short measured warm-up (see :func:`plan`)."""
    from gracheck.experiments._plan import Estimate

    # 2 warm-up steps (the fewest estimate_cost takes): at paper scale a full-batch step of a nonlinear setting
    # takes seconds on a CPU, and the plan must finish in minutes
    row = estimate_cost(cfg, device=device, settings=[(nl, amortised)], seed=seed, warmup_steps=2)["settings"][0]
    a, b = row["seconds_per_step_fit"]
    return Estimate(
        row["seconds"], int(row["flops"]),
        f"estimate_cost on {device}: train_batched timed on the full batch and a quarter of it (seconds/step = a + "
        f"b·trials, a = {a * 1e3:.3g} ms, b = {b * 1e3:.3g} ms per trial), summed over the schedule "
        f"({row['trial_steps']} trial-steps, {row['steps']} steps); the optimum search timed per iteration",
        {k: row[k] for k in ("models", "steps", "trial_steps", "train_seconds", "optimum_seconds",
                              "seconds_per_step_full", "seconds_per_step_fit")},
        not_counted="the optimum search (Newton / L-BFGS) and the float64 evaluation; FLOPs by the counted table "
                    "of flops_per_trial_step")


def draw_figure(data: dict[str, Any], cfg: Config, out_dir: Path) -> list[Path]:
    """Angle vs ELBO gap to the run's own optimum, diagonal vs full Σ, one panel per (ν, amortised?)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = data["settings"]
    k = len(settings)
    ncol = min(4, k)
    nrow = int(math.ceil(k / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(max(6.0, 4.2 * ncol), 3.9 * nrow), squeeze=False)
    colors = {"diagonal": "tab:blue", "full": "tab:orange"}
    floor = 1e-6
    for ax, s in zip(axes.ravel(), settings):
        tb = run_table(s)
        gap = np.maximum(tb["gap"], floor)
        for c in COVARIANCES:
            sel = tb["cov"] == c
            ax.scatter(gap[sel], tb["angle"][sel], s=10, alpha=0.6, color=colors[c], label=f"{c} Σ", edgecolors="none")
        th = np.array((s.get("limit") or s["optimum"])["theta_star"])
        ax.scatter(np.full(len(th), floor), th, marker="_", s=40, color="k", alpha=0.5,
                   label=f"θ* of {len(th)} draws (mean-field optimum, rule 3)")
        ax.axvline(cfg.gap_near, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_ylim(-46, 46)
        ax.set_yticks([-45, -30, -15, 0, 15, 30, 45])
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(f"ν = {s['nonlinearity']}, {'amortised (VAE)' if s['amortised'] else 'unamortised VI'}", fontsize=10)
        ax.set_xlabel(f"optimum − ELBO (nats/point, own draw; dashed: {cfg.gap_near:g})", fontsize=9)
        ax.set_ylabel("rotation angle (degrees)", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[k:]:
        ax.axis("off")
    fig.suptitle("Rotation angle between true and inferred latents vs distance to the ELBO's optimum (App. C)\n"
                 "each dot one run; the ELBO improves to the right", fontsize=10)
    fig.tight_layout()
    path = save_figure(fig, out_dir / "fig1_rotation_angle_vs_elbo.png", dpi=110)
    plt.close(fig)
    return [path]



