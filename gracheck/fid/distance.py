"""Fréchet distance and KID between two sets of features, in float64.

* :func:`frechet_distance`: the Fréchet (2-Wasserstein) distance between two Gaussians
  (Dowson & Landau 1982), the formula behind FID (Heusel et al. 2017)::

      d² = ‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2 (C₁^{1/2} C₂ C₁^{1/2})^{1/2})

  computed in float64 from Cholesky factors and symmetric eigenvalues (no complex square roots to
  truncate; the route taken is recorded in :class:`FrechetResult`); :func:`fit_gaussian` and :func:`frechet_distance_from_features` fit the Gaussians.
* :func:`kid` / :func:`kid_unbiased_mmd2`: the kernel inception distance (Bińkowski et al.
  2018), an unbiased MMD² with the cubic polynomial kernel; unlike the Fréchet distance its
  estimator has no bias at small sample sizes, which is what a CPU can afford.

Verified in ``tests/test_fid.py`` against different computations (scipy's sqrtm, closed forms,
a direct U-statistic).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gracheck.base.validate import check_positive_int

__all__ = [
    "FrechetResult",
    "check_images",
    "frechet_distance",
    "frechet_distance_details",
    "fit_gaussian",
    "frechet_distance_from_features",
    "kid",
    "kid_unbiased_mmd2",
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


def check_images(name: str, images: Any, channels: int | None = None) -> Tensor:
    """``images`` ``[N, C, H, W]`` checked: a finite floating tensor with values in [0, 1] (``channels`` if given)."""
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


def symmetrised(name: str, C: Tensor, rtol: float) -> Tensor:
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


def trace_sqrt_eigh(C1s: Tensor, C2s: Tensor, rtol: float) -> tuple[float, int, float]:
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
    C1s = symmetrised("cov1", C1, rtol)
    C2s = symmetrised("cov2", C2, rtol)

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
        tr_sqrt, n_clamped, max_rel = trace_sqrt_eigh(C1s, C2s, rtol)

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
    check_positive_int("subset_size", subset_size)
    check_positive_int("n_subsets", n_subsets)
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
