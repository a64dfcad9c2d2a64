"""Distances between image distributions: Fréchet distance, KID, and the feature networks behind them.

The paper compares β-VAE and GRAE≈ by FID on CelebA samples (Fig. 4, Table 1, App. G). This
module provides the pieces, each verified in ``tests/test_fid.py`` against a different
computation:

* :func:`frechet_distance`: the Fréchet (2-Wasserstein) distance between two Gaussians
  (Dowson & Landau 1982), the formula behind FID (Heusel et al. 2017)::

      d² = ‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2 (C₁^{1/2} C₂ C₁^{1/2})^{1/2})

  computed in float64 from Cholesky factors and symmetric eigen- or singular values (no complex
  square roots to truncate); :func:`fit_gaussian` and :func:`frechet_distance_from_features`
  fit the Gaussians.
* :func:`kid` / :func:`kid_unbiased_mmd2`: the kernel inception distance (Bińkowski et al.
  2018), an unbiased MMD² with the cubic polynomial kernel; unlike the Fréchet distance its
  estimator has no bias at small sample sizes, which is what a CPU can afford.
* :class:`InceptionV3Features` / :func:`load_inception`: the Inception-v3 network of FID
  (pytorch-fid's port of the 2015-12-05 TensorFlow graph), written without torchvision. The
  weights (``pt_inception-2015-12-05-6726825d.pth``) are never downloaded: the user gives a
  local file (argument or ``$GRACHECK_INCEPTION_WEIGHTS``); without one FID is reported as
  "not run here" (:func:`inception_fid`).
* :class:`DomainFeatureNet` / :func:`train_domain_features`: small in-domain feature networks
  trained once by gracheck with a fixed seed (MNIST: digit classifier; CelebA: rotation
  predictor). Distances computed with them are **domain Fréchet distances**, never FID: the
  numbers are not comparable with published FID values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import pickle
import tempfile
import time
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FrechetResult",
    "frechet_distance",
    "frechet_distance_details",
    "fit_gaussian",
    "frechet_distance_from_features",
    "kid",
    "kid_unbiased_mmd2",
    "InceptionWeightsUnavailable",
    "InceptionV3Features",
    "INCEPTION_ENV_VAR",
    "INCEPTION_FILENAME",
    "INCEPTION_SHA256",
    "load_inception",
    "inception_state_dict_spec",
    "inception_features",
    "inception_fid",
    "DomainFeatureNet",
    "DOMAIN_TASKS",
    "FEATURE_NET_VERSION",
    "train_domain_features",
    "domain_features",
    "domain_frechet_distance",
    "state_dict_sha256",
]

# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _as_float64(name: str, x: Any, ndim: int) -> Tensor:
    """``x`` (torch tensor or numpy array) as a CPU float64 tensor with ``ndim`` dims, all finite."""
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name}: expected a real numeric array, got dtype {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    elif isinstance(x, Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name}: expected a real floating tensor, got dtype {x.dtype}")
        t = x.detach().to(device="cpu", dtype=torch.float64)
    else:
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        raise ValueError(f"{name}: contains {int(bad.sum())} NaN/Inf value(s) (shape {tuple(t.shape)})")
    return t


def _check_images(name: str, images: Any, channels: int | None = None) -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor [N, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name}: expected shape [N, C, H, W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name}: expected floating values in [0, 1], got dtype {images.dtype}")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channel(s), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: no images (shape {tuple(images.shape)})")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name}: contains NaN/Inf values")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name}: values must lie in [0, 1], got min {lo:.4g}, max {hi:.4g} "
            "(clamp decoder means to [0, 1] before measuring, or rescale 0..255 / [-1, 1] inputs)"
        )
    return images


def _check_positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if v <= 0:
        raise ValueError(f"{name}: must be > 0, got {v}")
    return v


# --------------------------------------------------------------------------------------------
# Fréchet distance between Gaussians
# --------------------------------------------------------------------------------------------

DEFAULT_RTOL = 1e-6


@dataclasses.dataclass(frozen=True)
class FrechetResult:
    """The Fréchet distance with the evidence of how it was computed.

    ``value = max(raw_value, 0)``; ``raw_value = mean_term + tr_cov1 + tr_cov2 − 2·tr_sqrt``.
    ``route`` names the computation of ``tr_sqrt`` (see :func:`frechet_distance_details`):
    ``"cholesky-both"`` (both covariances numerically positive definite), ``"cholesky-one"``
    (one of them) or ``"eigh"`` (neither). ``n_clamped`` counts eigenvalues that rounding left
    slightly negative and that were set to 0 (``"cholesky-both"``: of the Gram matrix KᵀK,
    K = L₂ᵀL₁; ``"cholesky-one"``: of LᵀCL; ``"eigh"``: of C₁ and of C₁^{1/2} C₂ C₁^{1/2});
    ``max_clamped_rel`` is the largest such |eigenvalue| relative to its matrix's scale (each
    one is ≤ ``rtol``, else ValueError): ‖KᵀK‖; tr(LLᵀ)·‖C‖; ‖C₁‖ and ‖C₁‖‖C₂‖ respectively.
    """

    value: float
    raw_value: float
    mean_term: float
    tr_cov1: float
    tr_cov2: float
    tr_sqrt: float
    n_clamped: int
    max_clamped_rel: float
    rtol: float
    dim: int
    route: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _symmetrised(name: str, C: Tensor, rtol: float) -> Tensor:
    """``(C + Cᵀ)/2`` after checking that ``C`` is symmetric within ``rtol`` relative to max|C|."""
    scale = float(C.abs().max())
    asym = float((C - C.mT).abs().max())
    if asym > rtol * max(scale, 1e-300):
        raise ValueError(f"{name}: must be symmetric; max |C - Cᵀ| = {asym:.3g} > {rtol:g} · max|C| = {scale:.3g}")
    return 0.5 * (C + C.mT)


def _sym_eig(name: str, Cs: Tensor, rtol: float, vectors: bool = True) -> tuple[Tensor, Tensor | None, float]:
    """Eigenvalues (and vectors) of the symmetric matrix ``Cs``, checked PSD within ``rtol``."""
    w, V = torch.linalg.eigh(Cs) if vectors else (torch.linalg.eigvalsh(Cs), None)
    top = float(w.abs().max()) if w.numel() else 0.0
    if w.numel() and float(w[0]) < -rtol * top:
        raise ValueError(
            f"{name}: not positive semi-definite: smallest eigenvalue {float(w[0]):.4g}, largest "
            f"|eigenvalue| {top:.4g} (a negative eigenvalue beyond rtol={rtol:g} relative is not rounding; "
            "is this a covariance matrix?)"
        )
    return w, V, top


def _cholesky_psd_bound(n: int) -> float:
    """c_n such that a Cholesky factorisation of a symmetric [n, n] A that completes proves λ_min(A) ≥ −c_n‖A‖₂.

    Higham (2002), *Accuracy and Stability of Numerical Algorithms*, Thm 10.3: the computed factor
    satisfies L̂L̂ᵀ = A + ΔA with |ΔA| ≤ γ_{n+1}|L̂||L̂ᵀ|, γ_k = ku/(1 − ku), u = 2⁻⁵³ (the analysis
    bounds the rounding of the inner products that define L̂; it holds in any summation order,
    blocked or not, whenever the algorithm completes). With ‖|L̂|‖₂² ≤ n‖L̂‖₂² = n‖A + ΔA‖₂:
    ‖ΔA‖₂ ≤ c_n‖A‖₂, c_n = nγ_{n+1}/(1 − nγ_{n+1}), and A + ΔA = L̂L̂ᵀ is PSD. At n = 2048,
    c_n ≈ 4.7e-10.
    """
    u = 2.0**-53
    g = (n + 1) * u / (1.0 - (n + 1) * u)
    return n * g / (1.0 - n * g) if n * g < 1.0 else math.inf


def _cholesky_or_none(Cs: Tensor) -> Tensor | None:
    """Lower Cholesky factor of the symmetric ``Cs`` if the factorisation completes, else None."""
    L, info = torch.linalg.cholesky_ex(Cs)
    return L if int(info) == 0 else None


def _sum_sqrt_clamped(m: Tensor, m_scale: float, rtol: float, what: str) -> tuple[float, int, float]:
    """(Σ √max(mᵢ, 0), count of mᵢ < 0, largest |mᵢ < 0| / m_scale); ValueError if some mᵢ < −rtol·m_scale."""
    if m.numel() and float(m[0]) < -rtol * m_scale:
        raise ValueError(
            f"cov1, cov2: {what} has eigenvalue {float(m[0]):.4g} < -rtol·{m_scale:.4g}; "
            "one of the covariances is not positive semi-definite"
        )
    n_neg = int((m < 0).sum())
    rel = float(m.clamp_max(0).abs().max()) / m_scale if m_scale > 0 and m.numel() else 0.0
    return float(m.clamp_min(0).sqrt().sum()), n_neg, rel


def _trace_sqrt_eigh(C1s: Tensor, C2s: Tensor, rtol: float) -> tuple[float, int, float]:
    """tr (C₁^{1/2} C₂ C₁^{1/2})^{1/2} by eigendecompositions: (value, n_clamped, max_clamped_rel).

    S = C₁^{1/2} = V diag(√λ₊) Vᵀ from eigh(C₁) (λ₊: rounding-sized negative λ clamped to 0);
    the eigenvalues m of the symmetric PSD M = S C₂ S are those of C₁C₂; the trace is Σ √m₊.
    Validates both matrices as PSD within ``rtol`` (eigvalsh of C₂ gives its scale).
    """
    w1, V1, top1 = _sym_eig("cov1", C1s, rtol)
    _, _, top2 = _sym_eig("cov2", C2s, rtol, vectors=False)  # validation and scale only
    n_clamped = int((w1 < 0).sum())
    max_rel = float(w1.clamp_max(0).abs().max()) / top1 if top1 > 0 else 0.0
    S = (V1 * w1.clamp_min(0).sqrt()) @ V1.mT
    M = S @ C2s @ S
    m = torch.linalg.eigvalsh(0.5 * (M + M.mT))
    # ‖M‖ ≤ ‖C1‖·‖C2‖; an eigenvalue of M below −rtol·‖C1‖‖C2‖ cannot come from rounding.
    tr_sqrt, n_m, rel_m = _sum_sqrt_clamped(m, max(top1 * top2, float(m.abs().max())), rtol, "C1^(1/2) C2 C1^(1/2)")
    return tr_sqrt, n_clamped + n_m, max(max_rel, rel_m)


def _trace_sqrt_congruent(L: Tensor, Q: Tensor, top_q: float, rtol: float) -> tuple[float, int, float]:
    """tr (C₁^{1/2} C₂ C₁^{1/2})^{1/2} from a Cholesky factor L of one covariance P = LLᵀ and the other, Q.

    M = LᵀQL is symmetric PSD with the eigenvalues of QLLᵀ = QP, i.e. of C₁C₂ (eig(AB) = eig(BA));
    the trace is Σ √m₊ over its eigenvalues. Forming M rounds by about ε‖P‖‖Q‖, so rounding-sized
    negative eigenvalues are clamped and counted against the scale tr(P)·‖Q‖ ≥ ‖P‖‖Q‖ ≥ ‖M‖
    (tr P = ‖L‖²_F costs nothing, ‖P‖ would cost an eigvalsh; ``top_q`` = ‖Q‖ from Q's
    validation). Q was validated PSD within rtol and P is PD, so by Ostrowski's theorem
    λ_min(M) ≥ ‖P‖·λ_min(Q) ≥ −rtol·‖P‖‖Q‖: the ValueError there is a consistency check only.
    """
    M = L.mT @ Q @ L
    m = torch.linalg.eigvalsh(0.5 * (M + M.mT))
    scale = max(float(L.square().sum()) * top_q, float(m.abs().max()))
    return _sum_sqrt_clamped(m, scale, rtol, "L^T C L (C1·C2 congruent)")


def _trace_sqrt_gram(L1: Tensor, L2: Tensor, rtol: float) -> tuple[float, int, float]:
    """tr (C₁^{1/2} C₂ C₁^{1/2})^{1/2} for C₁ = L₁L₁ᵀ, C₂ = L₂L₂ᵀ: (value, n_clamped, max_clamped_rel).

    The eigenvalues of C₁^{1/2}C₂C₁^{1/2} are those of C₁C₂ = L₁(L₁ᵀL₂L₂ᵀ) and hence of the Gram
    matrix KᵀK = L₁ᵀL₂L₂ᵀL₁, K = L₂ᵀL₁ (the squared singular values of K); the trace is Σ √m₊
    over them. KᵀK is PSD by construction and its computed eigenvalues are off by a few ε‖KᵀK‖,
    so rounding-sized negative ones are clamped and counted against the scale ‖KᵀK‖.
    """
    K = L2.mT @ L1
    M = K.mT @ K
    m = torch.linalg.eigvalsh(0.5 * (M + M.mT))
    return _sum_sqrt_clamped(m, float(m.abs().max()), rtol, "the Gram matrix (L2^T L1)^T (L2^T L1)")


def frechet_distance_details(
    mu1: Any, cov1: Any, mu2: Any, cov2: Any, *, rtol: float = DEFAULT_RTOL
) -> FrechetResult:
    """Fréchet distance between N(μ₁, C₁) and N(μ₂, C₂) with the details of the computation.

    d² = ‖μ₁ − μ₂‖² + tr C₁ + tr C₂ − 2·tr (C₁^{1/2} C₂ C₁^{1/2})^{1/2} (Dowson & Landau 1982; FID,
    Heusel et al. 2017). The trace term is Σ √λᵢ over the eigenvalues λ of C₁C₂, which are real
    and ≥ 0. Three float64 routes, chosen by which covariances are numerically positive definite
    (their Cholesky factorisation completes; ``FrechetResult.route`` says which ran). None forms
    a non-symmetric product or takes complex square roots, as ``scipy.linalg.sqrtm(C₁ @ C₂)`` and
    the eigenvalues of C₁C₂ do (rounding moves those eigenvalues off the real axis, and FID
    code then drops the imaginary parts):

    * ``"cholesky-both"``, both C_i = L_iL_iᵀ numerically positive definite (the usual case for
      fits from N > F samples): Σ √m₊ over the eigenvalues m of the Gram matrix KᵀK, K = L₂ᵀL₁
      (two Cholesky factorisations, two products, one eigvalsh without vectors).
    * ``"cholesky-one"``, exactly one of them positive definite, P = LLᵀ, the other Q:
      Σ √m₊ over the eigenvalues m of the symmetric M = LᵀQL, which equal those of C₁C₂.
    * ``"eigh"``, neither (e.g. both fitted from N ≤ F samples): S = C₁^{1/2} = V diag(√λ₊) Vᵀ
      from a full eigendecomposition of C₁, then Σ √m₊ over the eigenvalues of S C₂ S.

    λ₊, m₊ clamp to 0 eigenvalues that rounding made slightly negative; they are counted in
    ``n_clamped``. No regularising εI is added: singular covariances give the distance between
    the (degenerate) Gaussians themselves.

    Accuracy (tests/test_fid.py, against a 60-digit mpmath evaluation of the same float64
    matrices): on nearly singular positive definite pairs (graded spectra to condition 1e14,
    low rank plus a ridge down to 1e-13) the ``cholesky-both`` trace term was within 1.7e-12
    relative, where the ``eigh`` route lost up to 1.7e-8 (square roots of eigenvalues of C₁ known
    only to ±ε‖C₁‖), the eigenvalues of C₁C₂ up to 9e-8 and scipy's sqrtm up to 3.4e-8. (The
    sum of the singular values of L₂ᵀL₁, one SVD instead of the Gram eigenvalues, was within
    4e-15, but at F = 2048 the SVD took 1.5–3× as long as the Gram eigenvalues and, in some
    runs on a loaded 2-core machine, as long as the eigenvalues of C₁C₂:
    benchmarks/bench_fid.py, route ``cholesky_svd``.) With singular
    covariances every route is limited the same way: an eigenvalue near 0 is known only to
    about ε·‖M‖ (ε = 2.2e-16), so its square root to about √(ε‖M‖), and the trace term can be
    off by up to about F·1.5e-8·√‖M‖ when many eigenvalues vanish (3e-5·√‖M‖ at F = 2048), far
    below the sampling error of any Fréchet distance estimated from data.

    Validation (ValueError naming the argument): shapes ``mu [F]``, ``cov [F, F]``, same F, finite,
    symmetric to ``rtol`` relative, PSD to ``rtol`` relative (smallest eigenvalue ≥ −rtol·largest
    |eigenvalue|). A Cholesky factorisation that completes proves the PSD condition when
    rtol ≥ 2c_F (c_F ≈ 4.7e-10 at F = 2048, see :func:`_cholesky_psd_bound`); for a smaller
    ``rtol`` the eigenvalues are computed as well. The default ``rtol = 1e-6`` accepts float64
    and float32 rounding of covariance matrices of moderate size; a float32 covariance at
    F ≈ 2048 may need a larger value.
    """
    if not (isinstance(rtol, float) and 0 < rtol < 1):
        raise ValueError(f"rtol: expected a float in (0, 1), got {rtol!r}")
    m1 = _as_float64("mu1", mu1, 1)
    m2 = _as_float64("mu2", mu2, 1)
    C1 = _as_float64("cov1", cov1, 2)
    C2 = _as_float64("cov2", cov2, 2)
    n = m1.shape[0]
    if n == 0:
        raise ValueError("mu1: empty")
    if m2.shape[0] != n:
        raise ValueError(f"mu2: expected shape [{n}] to match mu1, got {tuple(m2.shape)}")
    for name, C in (("cov1", C1), ("cov2", C2)):
        if tuple(C.shape) != (n, n):
            raise ValueError(f"{name}: expected shape [{n}, {n}] to match mu1, got {tuple(C.shape)}")
    C1s = _symmetrised("cov1", C1, rtol)
    C2s = _symmetrised("cov2", C2, rtol)

    L1, L2 = _cholesky_or_none(C1s), _cholesky_or_none(C2s)
    if L1 is not None and L2 is not None:
        if rtol < 2.0 * _cholesky_psd_bound(n):  # completion alone does not prove PSD within rtol
            _sym_eig("cov1", C1s, rtol, vectors=False)
            _sym_eig("cov2", C2s, rtol, vectors=False)
        route = "cholesky-both"
        tr_sqrt, n_clamped, max_rel = _trace_sqrt_gram(L1, L2, rtol)
    elif L1 is not None or L2 is not None:
        (p_name, P, L), (q_name, Q) = (("cov1", C1s, L1), ("cov2", C2s)) if L1 is not None else \
            (("cov2", C2s, L2), ("cov1", C1s))
        _, _, top_q = _sym_eig(q_name, Q, rtol, vectors=False)  # the one Cholesky refused: validate
        if rtol < 2.0 * _cholesky_psd_bound(n):
            _sym_eig(p_name, P, rtol, vectors=False)
        route = "cholesky-one"
        tr_sqrt, n_clamped, max_rel = _trace_sqrt_congruent(L, Q, top_q, rtol)
    else:
        route = "eigh"
        tr_sqrt, n_clamped, max_rel = _trace_sqrt_eigh(C1s, C2s, rtol)

    diff = m1 - m2
    mean_term = float(diff @ diff)
    tr1 = float(torch.diagonal(C1).sum())
    tr2 = float(torch.diagonal(C2).sum())
    raw = mean_term + tr1 + tr2 - 2.0 * tr_sqrt
    return FrechetResult(
        value=max(raw, 0.0),
        raw_value=raw,
        mean_term=mean_term,
        tr_cov1=tr1,
        tr_cov2=tr2,
        tr_sqrt=tr_sqrt,
        n_clamped=n_clamped,
        max_clamped_rel=max_rel,
        rtol=rtol,
        dim=n,
        route=route,
    )


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any, *, rtol: float = DEFAULT_RTOL) -> float:
    """Squared Fréchet distance ‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2 (C₁^{1/2} C₂ C₁^{1/2})^{1/2}), float64.

    The quantity called FID when the Gaussians are fitted to Inception pool3 features (Heusel et
    al. 2017; the paper's Fig. 4). Route, singular covariances and validation: see
    :func:`frechet_distance_details`, which also reports how many eigenvalues were clamped.
    """
    return frechet_distance_details(mu1, cov1, mu2, cov2, rtol=rtol).value


def fit_gaussian(features: Any) -> tuple[Tensor, Tensor]:
    """Mean ``[F]`` and unbiased covariance ``[F, F]`` (divisor N − 1) of ``features [N, F]``, float64.

    The covariance is computed from centred float64 features (no E[xxᵀ] − μμᵀ cancellation)
    and symmetrised. With N ≤ F it is singular (rank ≤ N − 1); :func:`frechet_distance` accepts it.
    """
    X = _as_float64("features", features, 2)
    N, Fdim = X.shape
    if N < 2:
        raise ValueError(f"features: need at least 2 rows to estimate a covariance, got shape {tuple(X.shape)}")
    if Fdim == 0:
        raise ValueError(f"features: no feature columns (shape {tuple(X.shape)})")
    mu = X.mean(0)
    Xc = X - mu
    cov = Xc.mT @ Xc / (N - 1)
    return mu, 0.5 * (cov + cov.mT)


def frechet_distance_from_features(f1: Any, f2: Any, *, rtol: float = DEFAULT_RTOL) -> float:
    """Fréchet distance between Gaussians fitted (:func:`fit_gaussian`) to ``f1 [N1, F]`` and ``f2 [N2, F]``.

    A plug-in estimate: biased upwards at finite N (the bias falls roughly like 1/N), so compare
    values only at equal sample sizes, or use :func:`kid`, which is unbiased.
    """
    X1 = _as_float64("f1", f1, 2)
    X2 = _as_float64("f2", f2, 2)
    if X1.shape[1] != X2.shape[1]:
        raise ValueError(f"f2: expected {X1.shape[1]} feature columns like f1, got shape {tuple(X2.shape)}")
    mu1, c1 = fit_gaussian(X1)
    mu2, c2 = fit_gaussian(X2)
    return frechet_distance(mu1, c1, mu2, c2, rtol=rtol)


# --------------------------------------------------------------------------------------------
# KID: unbiased MMD² with the cubic polynomial kernel
# --------------------------------------------------------------------------------------------


def _poly_kernel(X: Tensor, Y: Tensor) -> Tensor:
    return (X @ Y.mT / X.shape[1] + 1.0) ** 3


def _mmd2_u(X: Tensor, Y: Tensor) -> float:
    m, n = X.shape[0], Y.shape[0]
    Kxx = _poly_kernel(X, X)
    Kyy = _poly_kernel(Y, Y)
    Kxy = _poly_kernel(X, Y)
    sxx = (Kxx.sum() - torch.diagonal(Kxx).sum()) / (m * (m - 1))
    syy = (Kyy.sum() - torch.diagonal(Kyy).sum()) / (n * (n - 1))
    return float(sxx + syy - 2.0 * Kxy.mean())


def _kid_inputs(f1: Any, f2: Any) -> tuple[Tensor, Tensor]:
    X = _as_float64("f1", f1, 2)
    Y = _as_float64("f2", f2, 2)
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"f2: expected {X.shape[1]} feature columns like f1, got shape {tuple(Y.shape)}")
    if X.shape[1] == 0:
        raise ValueError("f1: no feature columns")
    for name, A in (("f1", X), ("f2", Y)):
        if A.shape[0] < 2:
            raise ValueError(f"{name}: need at least 2 rows for the unbiased estimator, got {A.shape[0]}")
    return X, Y


def kid_unbiased_mmd2(f1: Any, f2: Any) -> float:
    """Unbiased MMD² between ``f1 [m, F]`` and ``f2 [n, F]`` with k(x, y) = (xᵀy/F + 1)³ (KID's kernel).

    MMD²_u = Σ_{i≠j} k(xᵢ,xⱼ)/(m(m−1)) + Σ_{i≠j} k(yᵢ,yⱼ)/(n(n−1)) − 2 Σ_{i,j} k(xᵢ,yⱼ)/(mn)
    (Gretton et al. 2012, Lemma 6). Its expectation is the population MMD², exactly 0 when both
    sets come from one distribution, so single values can be negative. Float64; memory O((m+n)²).
    """
    X, Y = _kid_inputs(f1, f2)
    return _mmd2_u(X, Y)


def kid(
    f1: Any,
    f2: Any,
    *,
    subset_size: int = 1000,
    n_subsets: int = 100,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> tuple[float, float]:
    """Kernel inception distance (Bińkowski et al. 2018): mean and standard error of MMD²_u over subsets.

    Each of ``n_subsets`` rounds draws ``subset_size`` rows of ``f1`` and of ``f2`` without
    replacement and computes :func:`kid_unbiased_mmd2`; returns ``(mean, std / √n_subsets)``.
    The randomness comes from ``generator`` (or a fresh one seeded with ``seed``; one of them is
    required: nothing reads the global RNG).

    The standard error is approximate: the subsets overlap (all are drawn from the same rows), so
    it measures the Monte-Carlo spread of the subset average around the all-subsets average for
    *these* feature sets; it does not include the variation from drawing new samples. Bińkowski
    et al. report the subsets' standard deviation instead (``stderr · √n_subsets``).
    """
    X, Y = _kid_inputs(f1, f2)
    _check_positive_int("subset_size", subset_size)
    _check_positive_int("n_subsets", n_subsets)
    if subset_size < 2:
        raise ValueError(f"subset_size: must be ≥ 2 for the unbiased estimator, got {subset_size}")
    if subset_size > min(X.shape[0], Y.shape[0]):
        raise ValueError(
            f"subset_size: {subset_size} exceeds the smaller set ({X.shape[0]} rows in f1, {Y.shape[0]} in f2); "
            f"pass subset_size ≤ {min(X.shape[0], Y.shape[0])}"
        )
    if generator is None:
        if seed is None:
            raise ValueError("generator: pass a torch.Generator or a seed (KID draws random subsets)")
        generator = torch.Generator().manual_seed(int(seed))
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    vals = torch.empty(n_subsets, dtype=torch.float64)
    for s in range(n_subsets):
        ix = torch.randperm(X.shape[0], generator=generator)[:subset_size]
        iy = torch.randperm(Y.shape[0], generator=generator)[:subset_size]
        vals[s] = _mmd2_u(X[ix], Y[iy])
    mean = float(vals.mean())
    se = float(vals.std(unbiased=True)) / math.sqrt(n_subsets) if n_subsets > 1 else float("nan")
    return mean, se


# --------------------------------------------------------------------------------------------
# Inception-v3 as used for FID (pytorch-fid's port of the TF 2015-12-05 graph), no torchvision
# --------------------------------------------------------------------------------------------

INCEPTION_ENV_VAR = "GRACHECK_INCEPTION_WEIGHTS"
INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# SHA-256 of pytorch-fid's file (95,628,359 bytes). The filename follows torch.hub's convention
# "<name>-<first 8 hex digits of the file's SHA-256>.<ext>" and the full digest below is the one
# published independently by several projects that pin this file (it begins with 6726825d).
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
_HASH_POLICIES = ("warn", "error", "ignore")


class InceptionWeightsUnavailable(FileNotFoundError):
    """No Inception weights file was given (or it does not exist): FID is "not run here"."""


class _ConvBN(nn.Module):
    """Conv (no bias) → BatchNorm (eps 1e-3, TF's value) → ReLU; keys ``conv.weight``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: Tensor) -> Tensor:
    # TensorFlow's SAME average pool divides by the number of real (unpadded) pixels.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _Block35(nn.Module):
    """35×35 grid block (Mixed_5b/c/d): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool→1×1."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg3(x))
        return torch.cat((a, b, c, d), 1)


class _Reduce35to17(nn.Module):
    """Grid reduction 35→17 (Mixed_6a): 3×3/2 | 1×1→3×3→3×3/2 | max-pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat((a, b, F.max_pool2d(x, 3, stride=2)), 1)


class _Block17(nn.Module):
    """17×17 grid block with factorised 7×7 convolutions (Mixed_6b..e)."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_avg3(x))
        return torch.cat((a, b, c, d), 1)


class _Reduce17to8(nn.Module):
    """Grid reduction 17→8 (Mixed_7a): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = layer(b)
        return torch.cat((a, b, F.max_pool2d(x, 3, stride=2)), 1)


class _Block8(nn.Module):
    """8×8 grid block with split 1×3 / 3×1 outputs (Mixed_7b, Mixed_7c).

    ``pool="avg"`` (Mixed_7b): average pool without padded zeros. ``pool="max"`` (Mixed_7c): the
    FID graph uses a max pool here (pytorch-fid's FIDInceptionE_2; the Inception paper and
    torchvision use an average pool).
    """

    def __init__(self, cin: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool: expected 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b = torch.cat((self.branch3x3_2a(t), self.branch3x3_2b(t)), 1)
        u = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat((self.branch3x3dbl_3a(u), self.branch3x3dbl_3b(u)), 1)
        p = _avg3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat((a, b, c, self.branch_pool(p)), 1)


class InceptionV3Features(nn.Module):
    """Inception-v3 of FID: images ``[B, 3, H, W]`` in [0, 1] → pool3 features ``[B, 2048]``.

    The network of pytorch-fid (``FIDInceptionA/C/E_1/E_2`` patches of torchvision's Inception3:
    average pools exclude padding, the last block max-pools; BatchNorm eps 1e-3; a 1008-way
    ``fc`` as in the TF graph, kept so the weights file loads strictly, unused for features).
    Preprocessing as pytorch-fid: bilinear resize to 299×299 (``align_corners=False``), then
    x ↦ 2x − 1. Parameter names match the weights file (``Conv2d_1a_3x3.conv.weight``, ...).
    Freshly constructed weights are PyTorch's default initialisation: useless for FID until
    :func:`load_inception` fills them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _Block35(192, 32)
        self.Mixed_5c = _Block35(256, 64)
        self.Mixed_5d = _Block35(288, 64)
        self.Mixed_6a = _Reduce35to17(288)
        self.Mixed_6b = _Block17(768, 128)
        self.Mixed_6c = _Block17(768, 160)
        self.Mixed_6d = _Block17(768, 160)
        self.Mixed_6e = _Block17(768, 192)
        self.Mixed_7a = _Reduce17to8(768)
        self.Mixed_7b = _Block8(1280, "avg")
        self.Mixed_7c = _Block8(2048, "max")
        self.fc = nn.Linear(2048, 1008)

    def pool3(self, x: Tensor) -> Tensor:
        """Network body on preprocessed input ``[B, 3, 299, 299]`` in [−1, 1] → ``[B, 2048]``."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, images: Tensor) -> Tensor:
        images = _check_images("images", images, channels=3)
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        return self.pool3(2.0 * x - 1.0)


def inception_state_dict_spec() -> dict[str, tuple[int, ...]]:
    """Required keys of a pytorch-fid weights file and their shapes (``num_batches_tracked`` optional)."""
    return {
        k: tuple(v.shape)
        for k, v in InceptionV3Features().state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _resolve_weights_path(path: str | os.PathLike | None) -> Path:
    how = (
        f"FID is not run here: it needs pytorch-fid's Inception weights ({INCEPTION_FILENAME}, about 95 MB), "
        f"which gracheck never downloads. Obtain the file on a machine with network access "
        f"(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILENAME}) "
        f"and pass its path (load_inception(path=...), or the report's option) or set ${INCEPTION_ENV_VAR}."
    )
    if path is None:
        env = os.environ.get(INCEPTION_ENV_VAR)
        if not env:
            raise InceptionWeightsUnavailable(f"no Inception weights file given. {how}")
        p, origin = Path(env).expanduser(), f"${INCEPTION_ENV_VAR}"
    else:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        p, origin = Path(path).expanduser(), "path"
    if not p.is_file():
        raise InceptionWeightsUnavailable(f"{origin}: {p} is not a file. {how}")
    return p


def _read_state_dict(p: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError,
            AttributeError, ImportError, KeyError, IndexError, TypeError) as e:
        raise ValueError(
            f"path: {p} is not a readable PyTorch weights file (truncated, corrupted, or not a "
            f"plain state dict; loaded with weights_only=True): {type(e).__name__}: {str(e)[:300]}"
        ) from e
    if not isinstance(obj, Mapping):
        raise ValueError(f"path: {p} holds a {type(obj).__name__}, expected a state dict (mapping name -> tensor)")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        raise ValueError(f"path: {p}: entries that are not (str -> Tensor): {bad[:10]}")
    return dict(obj)


def _check_state_dict(p: Path, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    spec = inception_state_dict_spec()
    missing = sorted(set(spec) - set(sd))
    unexpected = sorted(k for k in set(sd) - set(spec) if not k.endswith("num_batches_tracked"))
    shapes = sorted(f"{k}: {tuple(sd[k].shape)} (expected {spec[k]})" for k in set(spec) & set(sd)
                    if tuple(sd[k].shape) != spec[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {missing[:12]}{' ...' if len(missing) > 12 else ''}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {unexpected[:12]}{' ...' if len(unexpected) > 12 else ''}")
    if shapes:
        problems.append(f"{len(shapes)} mis-shaped: {shapes[:12]}{' ...' if len(shapes) > 12 else ''}")
    if problems:
        raise ValueError(f"path: {p} is not a pytorch-fid Inception-v3 state dict: " + "; ".join(problems))
    nonfloat = sorted(k for k in spec if not sd[k].is_floating_point())
    if nonfloat:
        raise ValueError(f"path: {p}: non-floating tensors for {nonfloat[:12]}")
    nonfinite = sorted(k for k in spec if not bool(torch.isfinite(sd[k]).all()))
    if nonfinite:
        raise ValueError(f"path: {p}: NaN/Inf values in {nonfinite[:12]}")
    return {k: sd[k] for k in spec}


def load_inception(
    path: str | os.PathLike | None = None, *, check_sha256: str = "warn", device: str | torch.device = "cpu"
) -> InceptionV3Features:
    """The FID Inception-v3 with weights from a local pytorch-fid file, in eval mode, gradients off.

    ``path``: the weights file; when None, ``$GRACHECK_INCEPTION_WEIGHTS``. Neither given, or not a
    file: :class:`InceptionWeightsUnavailable` (a FileNotFoundError) saying FID is "not run here"
    and how to supply the file. Nothing is downloaded.

    The file is read with ``torch.load(..., weights_only=True)`` (no code runs), then checked
    strictly: every key of the architecture present with its shape, no other keys (BatchNorm
    ``num_batches_tracked`` entries are accepted either way), floating and finite values. A
    truncated / corrupted / non-torch file, or a state dict that does not match: ValueError
    naming the path and listing the missing, unexpected and mis-shaped keys.

    ``check_sha256``: compare the file's SHA-256 with :data:`INCEPTION_SHA256`, the digest of the
    published file. ``"warn"`` (default): a mismatch warns (a re-saved copy can hold the same
    tensors, but its FID is then not traceable to the published weights); ``"error"``: ValueError;
    ``"ignore"``: skip. The result is stored in ``model.weights_info``.
    """
    if check_sha256 not in _HASH_POLICIES:
        raise ValueError(f"check_sha256: expected one of {_HASH_POLICIES}, got {check_sha256!r}")
    p = _resolve_weights_path(path)
    sd = _check_state_dict(p, _read_state_dict(p))
    info: dict[str, Any] = {"path": str(p), "bytes": p.stat().st_size, "sha256": None, "sha256_verified": None}
    if check_sha256 != "ignore":
        digest = _sha256_file(p)
        info["sha256"] = digest
        info["sha256_verified"] = digest == INCEPTION_SHA256
        if digest != INCEPTION_SHA256:
            msg = (f"path: {p} has SHA-256 {digest[:16]}..., not the published {INCEPTION_FILENAME} "
                   f"({INCEPTION_SHA256[:16]}...); its FID values may not be comparable with published ones")
            if check_sha256 == "error":
                raise ValueError(msg)
            warnings.warn(msg, stacklevel=2)
    model = InceptionV3Features()
    model.load_state_dict(sd, strict=False)  # strictness checked above; num_batches_tracked stays as built
    model.weights_info = info
    model.eval().requires_grad_(False)
    return model.to(device)


@torch.no_grad()
def inception_features(model: InceptionV3Features, images: Tensor, *, batch_size: int = 50) -> Tensor:
    """Pool3 features ``[N, 2048]`` (float64) of ``images [N, 3, H, W]`` in [0, 1], in batches."""
    if not isinstance(model, InceptionV3Features):
        raise TypeError(f"model: expected an InceptionV3Features, got {type(model).__name__}")
    _check_positive_int("batch_size", batch_size)
    images = _check_images("images", images, channels=3)
    model.eval()
    dev = next(model.parameters()).device
    out = [model(images[i:i + batch_size].to(dev, torch.float32)).to("cpu", torch.float64)
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


def inception_fid(
    images_a: Tensor,
    images_b: Tensor,
    *,
    weights: str | os.PathLike | None = None,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """FID between two image sets ``[N, 3, H, W]`` in [0, 1]: a dict, with ``status`` "ok" or "not run here".

    Without a weights file (``weights`` or ``$GRACHECK_INCEPTION_WEIGHTS``) the dict says
    ``{"metric": "fid", "status": "not run here", "value": None, "reason": ...}``; a file that is
    there but broken raises (ValueError), it is never reported as "not run".
    """
    _check_images("images_a", images_a, channels=3)
    _check_images("images_b", images_b, channels=3)
    try:
        model = load_inception(weights, device=device)
    except InceptionWeightsUnavailable as e:
        return {"metric": "fid", "status": "not run here", "value": None, "reason": str(e)}
    fa = inception_features(model, images_a, batch_size=batch_size)
    fb = inception_features(model, images_b, batch_size=batch_size)
    mu_a, c_a = fit_gaussian(fa)
    mu_b, c_b = fit_gaussian(fb)
    det = frechet_distance_details(mu_a, c_a, mu_b, c_b)
    return {
        "metric": "fid",
        "status": "ok",
        "value": det.value,
        "n_a": int(fa.shape[0]),
        "n_b": int(fb.shape[0]),
        "weights_sha256": model.weights_info["sha256"],
        "weights_sha256_verified": model.weights_info["sha256_verified"],
        "n_clamped": det.n_clamped,
    }


# --------------------------------------------------------------------------------------------
# In-domain feature networks ("domain Fréchet distance", never FID)
# --------------------------------------------------------------------------------------------

FEATURE_NET_VERSION = 1

# dataset -> (feature_net name, what it is trained to do, in channels, image side, conv channels, outputs)
DOMAIN_TASKS: dict[str, dict[str, Any]] = {
    "mnist": {
        "feature_net": "mnist-digit-classifier",
        "task": "classify the digit (10 classes) of MNIST training images (60,000, labels); "
                "held-out accuracy on the 10,000 MNIST test images",
        "in_channels": 1,
        "image_size": 28,
        "channels": (32, 64),
        "n_outputs": 10,
        "lr": 2e-3,
    },
    "celeba": {
        "feature_net": "celeba-rotation-predictor",
        "task": "self-supervised: predict which rotation (0/90/180/270 degrees, torch.rot90) was applied to "
                "a 64x64 CelebA face; held-out accuracy over all 4 rotations of the last 10% of the images "
                "loaded (not trained on)",
        "in_channels": 3,
        "image_size": 64,
        "channels": (16, 32, 64, 64),
        "n_outputs": 4,
        "lr": 2e-3,
    },
}


class DomainFeatureNet(nn.Module):
    """Small conv net whose penultimate layer gives the features of the domain Fréchet distance.

    ``len(channels)`` stride-2 convolutions (the first 5×5, the others 3×3, ReLU after each) →
    flatten → Linear to ``feature_dim`` (the features: pre-activation, so no unit is identically
    zero) → ReLU → Linear to ``n_outputs`` (the training head). No BatchNorm: eval and train mode
    compute the same function, and features of one image do not depend on its batch.
    """

    def __init__(self, in_channels: int, image_size: int, channels: tuple[int, ...], n_outputs: int,
                 feature_dim: int = 128):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("image_size", image_size), ("n_outputs", n_outputs),
                        ("feature_dim", feature_dim)):
            _check_positive_int(name, v)
        if not channels:
            raise ValueError("channels: need at least one conv layer")
        layers: list[nn.Module] = []
        c, side = in_channels, image_size
        for i, cout in enumerate(channels):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(c, cout, k, stride=2, padding=k // 2), nn.ReLU()]
            c, side = cout, (side - 1) // 2 + 1
        self.in_channels, self.image_size, self.feature_dim = in_channels, image_size, feature_dim
        self.body = nn.Sequential(*layers)
        self.features = nn.Linear(c * side * side, feature_dim)
        self.head = nn.Linear(feature_dim, n_outputs)

    def embed(self, x: Tensor) -> Tensor:
        """Features ``[B, feature_dim]`` of images ``[B, C, H, W]`` in [0, 1] (centred to [−0.5, 0.5] inside)."""
        return self.features(self.body(x - 0.5).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.embed(x)))


def _make_net(dataset: str) -> DomainFeatureNet:
    t = DOMAIN_TASKS[dataset]
    return DomainFeatureNet(t["in_channels"], t["image_size"], t["channels"], t["n_outputs"])


def state_dict_sha256(module_or_sd: nn.Module | Mapping[str, Tensor]) -> str:
    """SHA-256 of a state dict in canonical form: keys sorted; per key its name, dtype, shape and raw bytes."""
    sd = module_or_sd.state_dict() if isinstance(module_or_sd, nn.Module) else module_or_sd
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().to("cpu").contiguous()
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def _rotations(x: Tensor, k: Tensor) -> Tensor:
    out = torch.empty_like(x)
    for r in range(4):
        sel = k == r
        if bool(sel.any()):
            out[sel] = torch.rot90(x[sel], r, dims=(2, 3))
    return out


def _load_domain_data(dataset: str, limit: int | None):
    """(train images, train labels or None, held-out images, held-out labels or None, description)."""
    import gracheck.data as gd

    if dataset == "mnist":
        xtr, ytr = gd.mnist_images("train", limit=limit)
        xte, yte = gd.mnist_images("test")
        return xtr, ytr, xte, yte
    x = gd.load_celeba("train", limit=limit)
    n_hold = max(1, x.shape[0] // 10)
    return x[:-n_hold], None, x[-n_hold:], None


def _batch(dataset: str, x: Tensor, y: Tensor | None, idx: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    xb = x[idx]
    if dataset == "mnist":
        return xb, y[idx]
    k = torch.randint(0, 4, (idx.shape[0],), generator=gen)
    return _rotations(xb, k), k


@torch.no_grad()
def _heldout_accuracy(dataset: str, net: nn.Module, x: Tensor, y: Tensor | None, device) -> float:
    net.eval()
    correct = total = 0
    for i in range(0, x.shape[0], 1000):
        xb = x[i:i + 1000]
        if dataset == "mnist":
            pairs = [(xb, y[i:i + 1000])]
        else:
            pairs = [(torch.rot90(xb, r, dims=(2, 3)), torch.full((xb.shape[0],), r)) for r in range(4)]
        for xi, yi in pairs:
            pred = net(xi.to(device)).argmax(1).cpu()
            correct += int((pred == yi).sum())
            total += yi.shape[0]
    return correct / total


def _cache_path(dataset: str, seed: int, steps: int, batch_size: int, limit: int | None) -> Path:
    from gracheck.experiments._common import cache_dir

    n = "all" if limit is None else str(limit)
    return cache_dir() / "features" / f"{dataset}-seed{seed}-steps{steps}-bs{batch_size}-n{n}-v{FEATURE_NET_VERSION}.pt"


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _load_cached(path: Path, dataset: str, config: dict[str, Any]) -> tuple[DomainFeatureNet, dict] | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("config") != config:
            raise ValueError("config differs")
        net = _make_net(dataset)
        net.load_state_dict(blob["state_dict"])
        info = dict(blob["info"])
        if state_dict_sha256(net) != info["feature_hash"]:
            raise ValueError("feature_hash does not match the stored weights")
    except Exception as e:  # a stale or damaged cache entry is retrained, never trusted
        warnings.warn(f"feature-net cache {path} unusable ({type(e).__name__}: {e}); retraining", stacklevel=3)
        return None
    info["cached"] = True
    return net, info


def train_domain_features(
    dataset: str,
    *,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    device: str | torch.device = "cpu",
    cache: bool = True,
) -> tuple[DomainFeatureNet, dict[str, Any]]:
    """Train (or load from the cache) the in-domain feature network for ``dataset``, once, with a fixed seed.

    ``"mnist"``: a digit classifier trained on the MNIST training set's labels; held-out
    accuracy on the test set. ``"celeba"``: CelebA ships without labels here, so the net is
    trained on a self-supervised task, predicting which of 4 rotations (0/90/180/270°) was
    applied, on the CelebA training images loaded (``limit``; the shipped subset has 10,000),
    the last 10% held out. Its features must see facial structure and, at 64×64, fine detail: a
    sanity test checks that the domain Fréchet distance grows with Gaussian blur.

    Adam, cosine-decayed learning rate, ``steps`` minibatches of ``batch_size`` drawn with a
    generator seeded by ``seed``; the weights are initialised under ``torch.manual_seed(seed)``
    inside ``torch.random.fork_rng`` (the caller's global RNG is untouched). Defaults: MNIST
    1000 steps × 128, CelebA 1500 steps × 64.

    Returns ``(net, info)``; ``info`` holds ``metric`` ("domain-frechet-distance"), ``feature_net``,
    ``task``, ``seed``, ``steps``, ``batch_size``, ``heldout_accuracy``, ``n_train``, ``n_heldout``,
    ``train_seconds``, ``feature_hash`` (:func:`state_dict_sha256`), ``version``, ``cached``.
    Training is deterministic for a given torch build, device and thread count; another thread
    count changes float32 summation order and so the weights (measured: same MNIST accuracy,
    different hash). The hash identifies the weights actually used, so store it with results.
    With ``cache=True`` the trained net is stored under ``cache_dir()/features`` keyed by
    (dataset, seed, steps, batch_size, limit, version), written atomically and read back with
    ``weights_only=True``; a damaged entry is retrained (with a warning).
    """
    if dataset not in DOMAIN_TASKS:
        raise ValueError(f"dataset: expected one of {sorted(DOMAIN_TASKS)}, got {dataset!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    steps = _check_positive_int("steps", steps if steps is not None else (1000 if dataset == "mnist" else 1500))
    batch_size = _check_positive_int("batch_size", batch_size if batch_size is not None else
                                     (128 if dataset == "mnist" else 64))
    if limit is not None:
        _check_positive_int("limit", limit)
    task = DOMAIN_TASKS[dataset]
    config = {"dataset": dataset, "seed": seed, "steps": steps, "batch_size": batch_size, "limit": limit,
              "version": FEATURE_NET_VERSION, "lr": task["lr"], "channels": list(task["channels"])}
    path = _cache_path(dataset, seed, steps, batch_size, limit)
    if cache:
        hit = _load_cached(path, dataset, config)
        if hit is not None:
            net, info = hit
            return net.to(device), info

    xtr, ytr, xho, yho = _load_domain_data(dataset, limit)
    if xtr.shape[0] < 1:
        raise ValueError(f"limit: {limit} leaves no training images")
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _make_net(dataset)
    net.to(device).train()
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(net.parameters(), lr=task["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * t / steps)))
    n = xtr.shape[0]
    perm, pos = torch.randperm(n, generator=gen), 0
    last_loss = float("nan")
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        xb, yb = _batch(dataset, xtr, ytr, idx, gen)
        loss = F.cross_entropy(net(xb.to(device)), yb.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        last_loss = loss.item()
    seconds = time.perf_counter() - t0
    acc = _heldout_accuracy(dataset, net, xho, yho, device)
    net.eval()
    cpu_sd = {k: v.detach().to("cpu") for k, v in net.state_dict().items()}
    info = {
        "metric": "domain-frechet-distance",
        "feature_net": task["feature_net"],
        "dataset": dataset,
        "task": task["task"],
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "limit": limit,
        "lr": task["lr"],
        "feature_dim": net.feature_dim,
        "n_train": int(n),
        "n_heldout": int(xho.shape[0]),
        "heldout_accuracy": acc,
        "final_train_loss": last_loss,
        "train_seconds": seconds,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "feature_hash": state_dict_sha256(cpu_sd),
        "version": FEATURE_NET_VERSION,
        "cached": False,
    }
    if cache:
        _atomic_save({"config": config, "state_dict": cpu_sd, "info": info}, path)
    return net, info


@torch.no_grad()
def domain_features(net: DomainFeatureNet, images: Tensor, batch_size: int = 512) -> Tensor:
    """Penultimate-layer features ``[N, feature_dim]`` (float64) of ``images [N, C, H, W]`` in [0, 1]."""
    if not isinstance(net, DomainFeatureNet):
        raise TypeError(f"net: expected a DomainFeatureNet, got {type(net).__name__}")
    _check_positive_int("batch_size", batch_size)
    images = _check_images("images", images, channels=net.in_channels)
    if tuple(images.shape[2:]) != (net.image_size, net.image_size):
        raise ValueError(f"images: expected {net.image_size}x{net.image_size} pixels, got shape {tuple(images.shape)}")
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    out = [net.embed(images[i:i + batch_size].to(dev, torch.float32)).to("cpu", torch.float64)
           for i in range(0, images.shape[0], batch_size)]
    net.train(was_training)
    return torch.cat(out)


def domain_frechet_distance(
    images_a: Tensor, images_b: Tensor, net: DomainFeatureNet, info: Mapping[str, Any], *, batch_size: int = 512
) -> dict[str, Any]:
    """Domain Fréchet distance (NOT FID) between two image sets, in the features of a gracheck domain net.

    Fréchet distance (:func:`frechet_distance`) between Gaussians fitted to
    :func:`domain_features` of each set. Comparable only with values computed with the same
    ``feature_hash`` and equal sample sizes. Returns ``{"metric": "domain-frechet-distance",
    "value", "feature_net", "feature_hash", "n_a", "n_b", "feature_dim", "n_clamped"}``.
    """
    if not isinstance(info, Mapping) or "feature_hash" not in info or "feature_net" not in info:
        raise ValueError("info: expected the info dict returned by train_domain_features (feature_net, feature_hash)")
    fa = domain_features(net, images_a, batch_size)
    fb = domain_features(net, images_b, batch_size)
    mu_a, c_a = fit_gaussian(fa)
    mu_b, c_b = fit_gaussian(fb)
    det = frechet_distance_details(mu_a, c_a, mu_b, c_b)
    return {
        "metric": "domain-frechet-distance",
        "value": det.value,
        "feature_net": info["feature_net"],
        "feature_hash": info["feature_hash"],
        "n_a": int(fa.shape[0]),
        "n_b": int(fb.shape[0]),
        "feature_dim": int(fa.shape[1]),
        "n_clamped": det.n_clamped,
    }
