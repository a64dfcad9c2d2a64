"""Statistics shared by the checks and the experiments: one bootstrap, one percentile interval, one
Gauss–Hermite rule, least-squares slopes and a binomial interval (float64, numpy).

Every bootstrap in gracheck is :func:`bootstrap_ci`: a *paired* percentile bootstrap over rows. A
replicate draws ``n`` row indices with replacement, once, and evaluates the statistic on those rows
of every sample, so statistics of two arrays measured on the same points (two models on the same
test images, ELBO and angle of the same runs) are resampled together. Experiments whose resampling
has more structure (runs, then samples within a run; a held-out set shared by two models) draw
their replicates themselves and read the interval with :func:`percentile_interval`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import numpy as np

from gracheck.base.validate import check_positive_int


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    return float(level)


def percentile_interval(replicates: Any, level: float) -> tuple[float, float]:
    """(low, high): the central ``level`` percentile interval of the finite ``replicates`` (NaN, NaN if none)."""
    _check_level(level)
    r = np.asarray(replicates, dtype=np.float64).reshape(-1)
    r = r[np.isfinite(r)]
    if len(r) == 0:
        return math.nan, math.nan
    a = (1.0 - level) / 2.0
    return float(np.quantile(r, a)), float(np.quantile(r, 1.0 - a))


def bootstrap_ci(
    statistic: Callable[..., Any],
    *samples: Any,
    B: int,
    level: float,
    rng: np.random.Generator,
    vectorised: bool = False,
) -> tuple[float, float, float]:
    """(statistic(*samples), low, high): paired percentile bootstrap over the rows of ``samples``.

    ``samples``: arrays with the same number of rows n ≥ 1 (``[n, ...]``). Replicate b takes the rows
    ``idx[b]`` of every sample, ``idx = rng.integers(0, n, (B, n))``, and evaluates ``statistic``;
    with ``vectorised=True`` it is called once on arrays ``[B, n, ...]`` and returns ``[B]``.
    Non-finite replicates are left out of the interval (:func:`percentile_interval`).
    """
    if not samples:
        raise ValueError("samples: need at least one array")
    arrs = [np.asarray(s, dtype=np.float64) for s in samples]
    n = arrs[0].shape[0] if arrs[0].ndim else 0
    if n < 1:
        raise ValueError(f"samples: expected arrays with at least one row, got shape {arrs[0].shape}")
    for i, a in enumerate(arrs[1:], 1):
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(f"samples: array {i} has shape {a.shape}, expected {n} rows like array 0")
    check_positive_int("B", B)
    _check_level(level)
    point = float(statistic(*arrs))
    idx = rng.integers(0, n, (B, n))
    if vectorised:
        reps = np.asarray(statistic(*(a[idx] for a in arrs)), dtype=np.float64)
    else:
        reps = np.array([statistic(*(a[i] for a in arrs)) for i in idx], dtype=np.float64)
    return (point, *percentile_interval(reps, level))


def bootstrap_mean_ci(x: Any, *, B: int, level: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """(mean, low, high) of a 1-D array: :func:`bootstrap_ci` of the mean over its points."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"x: expected a non-empty 1-D array, got shape {x.shape}")
    return bootstrap_ci(lambda v: v.mean(-1), x, B=B, level=level, rng=rng, vectorised=True)


def ols_slope(x: Any, y: Any) -> np.ndarray:
    """Least-squares slope of y on x along the first axis: x ``[K]``, y ``[K, ...]`` → ``[...]``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2 or y.shape[0] != len(x):
        raise ValueError(f"x, y: need x of shape [K ≥ 2] and y of shape [K, ...], got {x.shape} and {y.shape}")
    xc = x - x.mean()
    if not np.any(xc != 0):
        raise ValueError("x: all values are equal, the slope is undefined")
    yc = y - y.mean(0)
    return np.tensordot(xc, yc, axes=(0, 0)) / (xc @ xc)


def gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes x ``[n]`` and weights w ``[n]`` with E f(Z) ≈ Σ wᵢ f(xᵢ) for Z ~ N(0, 1) (Σ w = 1).

    The probabilists' Gauss–Hermite rule (weight e^{−x²/2}) normalised by √(2π): exact for
    polynomials of degree ≤ 2n − 1. For u ~ N(m, v): E g(u) ≈ Σ wᵢ g(m + √v xᵢ).
    """
    check_positive_int("n", n)
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / math.sqrt(2.0 * math.pi)


def gauss_hermite_grid(n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Tensor-product rule for N(0, I_d): nodes ``[n^d, d]`` and weights ``[n^d]`` (Σ w = 1)."""
    check_positive_int("d", d)
    x, w = gauss_hermite(n)
    nodes = np.stack([g.reshape(-1) for g in np.meshgrid(*([x] * d), indexing="ij")], -1)
    weights = np.prod(np.stack([g.reshape(-1) for g in np.meshgrid(*([w] * d), indexing="ij")], -1), -1)
    return nodes, weights


def derive_seed(*keys: Any) -> int:
    """A 63-bit seed from a tuple of keys: the first 8 bytes of SHA-256(repr(keys)), stable across processes
    and platforms (``hash()`` is salted per process)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(keys).encode()).digest()[:8], "little") & ((1 << 63) - 1)


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"k, n: need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    z = NormalDist().inv_cdf(0.5 + _check_level(level) / 2)
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, c - h), min(1.0, c + h)
