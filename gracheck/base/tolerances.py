"""Every tolerance used by a check, in one table, each with its reason and its kind.

Checks look tolerances up by name with :func:`tol`; nothing else in gracheck
hard-codes an atol/rtol for a claim. A tolerance states *why* the two routes
being compared may differ by that much (float64 rounding accumulated over a
stated number of operations, Monte Carlo standard error, a fitted trend's slack).

What a number means is in its type, not in a convention:

* :class:`ErrorBound`: ``atol`` an absolute error (in the compared quantity's units) and ``rtol`` a
  relative error; two values agree iff |m − e| ≤ atol + rtol·|e| (or a refutation/control must
  *exceed* that);
* :class:`StandardErrors`: ``k``, a multiple of a Monte Carlo standard error (|z| ≤ k agrees;
  |z| > k refutes);
* :class:`SignificanceLevel`: ``alpha``, the level of a hypothesis test (a p-value ≥ alpha passes).
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """A named allowance and why it is that size; the subclass says what its number means."""

    reason: str


@dataclasses.dataclass(frozen=True)
class ErrorBound(Tolerance):
    """|m − e| ≤ ``atol`` + ``rtol``·|e|: ``atol`` an absolute error, ``rtol`` a relative error."""

    atol: float
    rtol: float


@dataclasses.dataclass(frozen=True)
class StandardErrors(Tolerance):
    """|m − e| ≤ ``k`` standard errors of the Monte Carlo mean m (a refutation needs more than k)."""

    k: float


@dataclasses.dataclass(frozen=True)
class SignificanceLevel(Tolerance):
    """A hypothesis test at level ``alpha``: a true null fails with probability ``alpha``."""

    alpha: float


TOLERANCES: dict[str, Tolerance] = {
    # Two float64 computations of the same smooth quantity by different routes
    # (e.g. a Cholesky log-det vs an eigenvalue sum, forward vs reverse mode):
    # each costs O(d^3) flops on O(1)-conditioned inputs, so rounding stays near
    # 1e-13 relative; 1e-9 leaves four orders of margin and still catches any
    # formula error, which shows up at O(1e-2) or more.
    "float64-exact": ErrorBound(
        atol=1e-10,
        rtol=1e-9,
        reason="two float64 routes to the same value; rounding ~1e-13, any formula error is O(1e-2)",
    ),
    # float32 routes (library code in training precision) against float64 references.
    "float32-vs-float64": ErrorBound(
        atol=1e-4,
        rtol=1e-4,
        reason="float32 has 6e-8 unit roundoff; O(d^2) accumulated ops on O(1) values stay below 1e-5",
    ),
    # grae_regularizer / taylor_gap on a float32 J against float64 closed forms from the singular
    # values s ∈ [1e-3, 1e3] J was built from, β ∈ [0.02, 1] (tests/test_core_math.py). Rounding J to
    # float32 alone moves f = β/2 log det(I + JᵀJ/β) by |⟨JA⁻¹, δJ⟩| ≤ (√β/2)·‖δJ‖_F, ‖δJ‖_F ≤
    # 6e-8·‖J‖_F ≈ 1e-4, i.e. ≲ 1e-5 of f (f ≥ 0.1 here); a backward-stable factorisation (QR of
    # [J/√β; I]) adds the same order. Measured ≤ 1.4e-6 relative; the float32 Gram-matrix route was
    # off by 0.2–2% (and failed Cholesky at β = 0.02).
    "float32-logdet-value": ErrorBound(
        atol=0.0,
        rtol=1e-5,
        reason="float32 J with s up to 1e3, β ≥ 0.02: perturbation bound ≲ 1e-5 relative, measured ≤ 1.4e-6; the Gram route misses by ≥ 2e-3",
    ),
    # Its gradient G = JA⁻¹: a perturbation δJ moves G by ≤ 3‖A⁻¹‖‖δJ‖ ≤ 3·6e-8·‖J‖ ≈ 2e-4 against
    # ‖G‖_F ≥ max s/(1 + s²/β) ≈ √β/2 ≥ 0.07, i.e. ≲ 3e-3 relative (Frobenius); measured ≤ 9.4e-4
    # (the "about 1e-3"). The Gram route was off by 2.2% at β = 1, 16% at β = 0.1, 180% at 0.02.
    "float32-logdet-grad": ErrorBound(
        atol=0.0,
        rtol=5e-3,
        reason="gradient of the float32 log-det: perturbation bound ≲ 3e-3 (Frobenius, relative), measured ≤ 9.4e-4; the Gram route is off by ≥ 2e-2",
    ),
    # Symbolic identities are simplified to exactly zero by sympy; numerical
    # evaluation of the residual at random rational points is exact up to this.
    "symbolic": ErrorBound(
        atol=1e-12,
        rtol=0.0,
        reason="sympy residuals are exact; evaluated in float64 at sample points they round at ~1e-15",
    ),
    # Finite differences (central, step h = 1e-5 in float64) have truncation
    # error O(h^2 * f''') ~ 1e-10 and rounding O(eps/h) ~ 1e-11 per entry.
    "finite-difference": ErrorBound(
        atol=1e-6,
        rtol=1e-6,
        reason="central differences with h=1e-5 in float64: truncation ~h^2, rounding ~eps/h",
    ),
    # ---- Sec. 3 / App. A / App. B family (sec3_uniqueness.py) ----
    # Midpoint sums on a 2-D grid (400²/500² cells over [−32, 32]², 300² over [−12, 12]², or 120² over
    # the image of a ±9σ box) of analytic integrands that are < 1e-14 at the box edge, against
    # Gauss–Hermite (96² nodes) or a second grid sum. Such sums converge geometrically: measured, 250²
    # over [−32, 32]² is off by 3e-11 and the grids used by ≤ 1e-14 (80²..150² on the ±9σ image agree
    # to 1e-15); 64² Gauss–Hermite nodes were off by 5e-11, 96² agree with the grids to ≤ 1e-13.
    # 1e-9 leaves margin; the effects the checks must see (|log det J_r| ~ 5e-2, a missing Jacobian
    # ~ 1e-3) are ≥ 1e6 times larger.
    "sec3-grid-quadrature": ErrorBound(
        atol=1e-9,
        rtol=1e-9,
        reason="2-D midpoint sums of analytic, edge-negligible integrands vs Gauss–Hermite: measured ≤ 1e-13; effects sought ≥ 1e-3",
    ),
    # The App. A transform chains ndtri, log_ndtr, exp and a rotation; ndtri's relative error grows as
    # ~eps/min(u, 1−u) in the tails, ≲ 1e-11 for the ≤ 1000 prior samples per check (min(u, 1−u) ≳ 1e-5).
    # Measured: ≤ 4e-15 on log densities.
    "sec3-appA-autograd": ErrorBound(
        atol=1e-9,
        rtol=1e-9,
        reason="float64 ndtri/log_ndtr chains on prior samples: tail loss ≲ 1e-11, measured ≤ 4e-15; a wrong Jacobian is ≥ 1e-3 off",
    ),
    # 40-digit mpmath evaluation of sympy expressions: residuals ~1e-38 before conversion to float64.
    "sec3-mpmath": ErrorBound(
        atol=1e-14,
        rtol=0.0,
        reason="40-digit evaluation, then one float64 rounding (≤ 1.1e-16 relative on O(1) values)",
    ),
    # An erratum is refuted only by a discrepancy far above rounding: exact/float64 routes here
    # round at ≤ 1e-12, and the printed statements miss by ≥ 1e-3 (smallest: 1.9e-3, det J_r at 40
    # digits). Also the floor for quantities that must be non-zero in every case (controls).
    "sec3-refute-floor": ErrorBound(
        atol=1e-6,
        rtol=0.0,
        reason="a printed equality counts as false only if it misses by > 1e-6, ≥ 1e6 × the float64 rounding of these routes",
    ),
    # A Monte Carlo refutation: the printed value must be more than 10 standard errors away.
    "sec3-refute-se": StandardErrors(
        k=10.0,
        reason="|z| > 10 s.e.: a true statement is declared false with probability < 1e-22 (CLT-normal mean, N ≥ 1e5)",
    ),
    # Randomised quasi-Monte Carlo: the mean of R = 32 independently scrambled Sobol replicates, its standard error from the
    # replicate spread. The standardised error is then t-distributed with 31 degrees of freedom (replicates are i.i.d.),
    # P(|t₃₁| > 5) ≈ 2e-5. Measured on the Eq. 15 counterexample: |z| ≤ 1.3 for three seeds; a missing or inverted
    # Jacobian in line 3 is off by 300-3000 s.e.
    "sec3-rqmc-5se": StandardErrors(
        k=5.0,
        reason="|z| ≤ 5 replicate s.e. over 32 scrambled-Sobol replicates: a true statement fails with probability ≈ 2e-5 (t, 31 dof)",
    ),
    # An optimum's rotation angle counted as "not 0": the LBFGS + Newton optimum of a fixed data set is exact to ~1e-10 rad
    # (its angle agrees across starts to ≲ 1e-9 degrees, measured), so 1° is far above optimiser error; it is not a
    # finite-sample allowance (the data set is fixed) and the angles found on App. C data are 2.5°–31°.
    "appC-angle-nonzero": ErrorBound(
        atol=1.0,
        rtol=0.0,
        reason="|optimum angle| > 1°: optimiser error on a fixed data set is ≲ 1e-9°, the rotations found are ≥ 2.5°",
    ),
    # Kolmogorov–Smirnov p-values of samples that follow the null: each is uniform on (0, 1).
    "sec3-ks-level": SignificanceLevel(
        alpha=1e-4,
        reason="KS p-value ≥ 1e-4 per coordinate: a true null fails with probability 1e-4 per test (6 tests: 6e-4; seeded, so fixed)",
    ),
    # ---- Sec. 4 / 5 / 7 families (sec4_taylor.py, sec5_grae.py, sec7_gap.py) ----
    # A candidate implementation (Eq. 9 Σ*, Eq. 14 bound, Sec. 7 gap) against an
    # independent float64 route on inputs with condition number ≤ 1e3: rounding
    # stays below 1e-12 relative, so 1e-9 catches a Σ scaled by (1 + 1e-3), a
    # bound loosened by 1e-3 and a float32 implementation (error ~1e-7).
    "candidate-float64": ErrorBound(
        atol=1e-10,
        rtol=1e-9,
        reason="float64 routes on cond ≤ 1e3 inputs round at ≲1e-12; the subtlest wrong formula is off by ≥1e-6",
    ),
    # An inequality a ≥ b checked in float64: a − b may come out as −(rounding).
    "inequality-rounding": ErrorBound(
        atol=1e-10,
        rtol=1e-12,
        reason="a ≥ b may read a − b ≈ −1e-13 after float64 rounding; a real violation is ≥ 1e-6",
    ),
    # Strict inequality: the measured margin must be at least half the margin an
    # independent route predicts (margins in the test cases are ≥ 1e-3).
    "strict-margin-fraction": ErrorBound(
        atol=0.0,
        rtol=0.5,
        reason="a strict inequality must hold by ≥ 50% of the independently computed margin (≥1e-3 here)",
    ),
    # Maximising Eq. 7/8 over Σ = LLᵀ with LBFGS (strong Wolfe, float64) stops at a
    # gradient norm ~1e-11: the optimal *value* is then off by ~|grad|²/curvature
    # ≪ 1e-12, the *maximiser* by ~|grad|/curvature ~ 1e-9 (curvature ≥ 1e-2 here).
    "optimiser-value": ErrorBound(
        atol=1e-9,
        rtol=1e-9,
        reason="LBFGS maximum of a smooth strictly concave function: value error ~|grad|² ≪ 1e-12",
    ),
    "optimiser-argmax": ErrorBound(
        atol=1e-6,
        rtol=1e-6,
        reason="LBFGS maximiser: error ~|grad|/curvature ≲ 1e-9 at gradient norm 1e-11, curvature ≥ 1e-2",
    ),
    # Exact Gauss–Hermite quadrature (degree ≤ 2n−1 exact) of a quadratic vs the closed form,
    # and high-order quadrature of a smooth network's log-likelihood (n = 24 nodes per dim).
    "quadrature": ErrorBound(
        atol=1e-11,
        rtol=1e-10,
        reason="Gauss–Hermite sums of ≤ 600 float64 terms of size O(10): rounding ≲ 1e-13",
    ),
    # Monte Carlo mean vs exact expectation: pass iff |mean − E| ≤ 5 standard errors
    # (the CheckResult stores 5·s.e. as its absolute allowance).
    "montecarlo-5se": StandardErrors(
        k=5.0,
        reason="|z| ≤ 5 standard errors: false-fail probability < 6e-7 for a CLT-normal mean (N ≥ 4000)",
    ),
    # A stochastic *candidate* (issue 16: a β-VAE or GRAE≈ implementation under test) against an exact expectation.
    # The independent draws are its calls (N = 40, each averaging its rows of one example; a candidate may share one
    # draw across its batch), so the standard error has N − 1 = 39 degrees of freedom: |t| > 5 has probability
    # 2·P(t₃₉ > 5) = 1.3e-5 under a correct candidate, per example compared. Plus the 'candidate-float64' rounding
    # floor, so that a candidate whose draws all agree (s.e. 0) is held to float64 rounding instead.
    "montecarlo-calls-5se": StandardErrors(
        k=5.0,
        reason="|t| ≤ 5 with the s.e. of N = 40 independent calls (39 dof): false-fail probability 1.3e-5 per example",
    ),
    # BernoulliObs(logits=True).log_prob against a 50-digit mpmath sum: each term −x·softplus(−ℓ) −
    # (1 − x)·softplus(ℓ) is one logaddexp (exact to ≤ 2 ulp) times x, and ≤ 6 same-signed terms
    # are summed, so the relative error is ≤ ~8·2⁻⁵³ ≈ 1e-15. The threshold-20 softplus missed by
    # 1.3e-9 nats (ℓ in 20.5–40), and xℓ − softplus(ℓ) loses all digits of a 1e-17 term at x = 1.
    "bernoulli-logit-exact": ErrorBound(
        atol=1e-300,
        rtol=2e-15,
        reason="≤ 6 same-signed float64 terms, each one logaddexp (≤ 2 ulp): ≤ 1e-15 relative; the old form was off by 1.3e-9 nats",
    ),
    # Fitted log-log slopes (diffrax-style order checks).
    "rate-slope": ErrorBound(
        atol=0.15,
        rtol=0.0,
        reason="least-squares slope over ≥ 6 points in the asymptotic range; higher-order terms bias it by ≲ 0.05",
    ),
    # Geometric rate of the log1p matrix series: slope of log|Rₙ|(n+1) in n vs log(s_max²/β).
    "series-rate": ErrorBound(
        atol=0.02,
        rtol=0.0,
        reason="log|Rₙ|+log(n+1) = n log r + O(1) + O((r₂/r)ⁿ); fitted over n ∈ [20, 60] the slope error is ≲ 0.01",
    ),
    # An erratum's printed formula is "shown false" when it misses the true value by
    # more than this: far above float64 rounding (1e-13) and optimiser error (1e-9).
    "erratum-separation": ErrorBound(
        atol=1e-6,
        rtol=1e-6,
        reason="a printed formula counts as refuted only if it misses by > 1e-6 + 1e-6·|true|, 1e3× above rounding/optimiser error",
    ),
    # A negative control must be measurably non-zero: relative residual above this floor.
    "negative-control": ErrorBound(
        atol=1e-4,
        rtol=0.0,
        reason="a genuinely non-zero effect is ≥ 1e-2 relative; float64 rounding is ≤ 1e-13, so 1e-4 separates them",
    ),
    # ---- the ensemble trainer (gracheck.ensemble; tests/test_ensemble.py, tests/test_gpu.py) ----
    # conv="grouped" against conv="per-model" on CPU in float32, one training step: oneDNN's grouped
    # kernels sum each output's window (≤ 2048 products in the App. D nets) in another order, so values
    # differ by ~√n·6e-8 ≈ 3e-6 relative. Measured at width 1/16: terms 6e-7 relative to max(|v|, 1),
    # gradients 1.5e-6 relative to the model's largest gradient entry (per tensor the relative error
    # is O(1) for conv biases in front of BatchNorm, whose exact gradient is 0: only rounding is left).
    # A wrong channel grouping or a mixed-up model changes values at O(1).
    "ensemble-grouped-conv-float32": ErrorBound(
        atol=1e-4,
        rtol=1e-4,
        reason="float32 conv sums in another order (~3e-6 relative); terms vs max(|v|,1), gradients vs the largest gradient",
    ),
    # The same ensemble on CUDA and on CPU in float64, a few Adam steps: cuBLAS/cuDNN and MKL/oneDNN sum
    # in different orders (~1e-16 relative per op, ~1e-13 after a few layers); Adam's eps = 1e-8 keeps
    # rounding-level gradients from being amplified to lr-sized steps. A kernel or layout error is O(1).
    "ensemble-cuda-vs-cpu-float64": ErrorBound(
        atol=1e-9,
        rtol=1e-8,
        reason="float64 on two devices, different summation orders (~1e-13 after a few steps); errors are O(1)",
    ),
}


T = TypeVar("T", bound=Tolerance)


def tol(name: str, kind: type[T] = Tolerance) -> T:  # type: ignore[assignment]
    """The tolerance registered under ``name`` (KeyError naming the known ones otherwise).

    ``kind``: the type the caller needs (e.g. :class:`ErrorBound` for a comparison); a tolerance of
    another kind raises TypeError, so a multiple of a standard error is never read as an absolute error.
    """
    try:
        t = TOLERANCES[name]
    except KeyError:
        raise KeyError(f"name: no tolerance {name!r}; known: {sorted(TOLERANCES)}") from None
    if not isinstance(t, kind):
        raise TypeError(f"name: tolerance {name!r} is a {type(t).__name__}, not a {kind.__name__}")
    return t  # type: ignore[return-value]
