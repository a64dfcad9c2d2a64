"""Shared random inputs for the claim checks: seeded samplers and hypothesis strategies.

Two layers over the same constructions, so that claim checks and property tests
draw the same kinds of matrices:

* **Seeded samplers** (``torch.Generator`` in, float64 tensors out): used inside
  ``Claim.check`` so that every check is deterministic given its ``seed`` and needs
  no test-only dependency. Every sampler takes the generator first and a batch
  shape; nothing reads the global RNG.
* **Hypothesis strategies** (``spd_matrices``, ``jacobians``, ...): used by the
  property tests in ``verification/``; they draw the *shape* parameters (dims, β)
  from hypothesis and the entries from a seeded sampler (the seed itself drawn by
  hypothesis), so failures shrink on dims and β and replay exactly. Importing this
  module does not need hypothesis; calling a strategy does.

Profiles: ``ci`` (few examples, derandomised, no deadline; the default of
``verification/conftest.py``) and ``dev`` (many examples). Select with
``HYPOTHESIS_PROFILE=dev pytest verification``.

Conditioning. Samplers keep eigenvalues within stated ranges (condition number
≤ 1e3 by default), so two correct float64 routes agree to ~1e-12 and the
tolerances in :mod:`gracheck.base.tolerances` can be tight.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DTYPE = torch.float64

# β values used by the fixed sweeps of the checks: spread over 4 decades, and
# none equal to 1 or 2 (where β² = β or β/2 = 1 would hide a wrong formula).
BETAS = (0.013, 0.21, 0.77, 1.6, 3.7, 40.0)
# latent dims used by the sweeps (d = 1 included: transposes and sums are invisible there,
# so it is never the only one).
DIMS = (1, 2, 3, 5, 8)


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (the only source of randomness in the checks)."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def normal(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=DTYPE)


def uniform(gen: torch.Generator, *shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
    return low + (high - low) * torch.rand(*shape, generator=gen, dtype=DTYPE)


def log_uniform(gen: torch.Generator, *shape: int, low: float, high: float) -> Tensor:
    """Entries with log uniform on [log low, log high]."""
    return torch.exp(uniform(gen, *shape, low=math.log(low), high=math.log(high)))


def orthogonal(gen: torch.Generator, n: int, batch: tuple[int, ...] = ()) -> Tensor:
    """Haar-random orthogonal matrices ``[*batch, n, n]`` (QR of a Gaussian with the sign fix)."""
    Q, R = torch.linalg.qr(normal(gen, *batch, n, n))
    s = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    s = torch.where(s == 0, torch.ones_like(s), s)
    return Q * s.unsqueeze(-2)


def from_eigen(Q: Tensor, lam: Tensor) -> Tensor:
    """Q diag(λ) Qᵀ, exactly symmetrised."""
    M = (Q * lam.unsqueeze(-2)) @ Q.transpose(-1, -2)
    return 0.5 * (M + M.transpose(-1, -2))


def spd(
    gen: torch.Generator, d: int, batch: tuple[int, ...] = (), *, low: float = 0.05, high: float = 20.0
) -> Tensor:
    """Random SPD ``[*batch, d, d]`` with eigenvalues log-uniform in [low, high] and random eigenvectors."""
    return from_eigen(orthogonal(gen, d, batch), log_uniform(gen, *batch, d, low=low, high=high))


def symmetric_below(
    gen: torch.Generator, d: int, beta: float, batch: tuple[int, ...] = (), *, top: float = 0.9, bottom: float = 30.0
) -> Tensor:
    """Symmetric H ``[*batch, d, d]`` with eigenvalues in (−bottom·β, top·β): I − H/β ≻ 0, indefinite in general.

    Half the eigenvalues (rounded down) are drawn in (0, top·β) (a Hessian H_f of Eq. 5 may have
    positive eigenvalues), the rest log-uniform in (−bottom·β, −0.01β); eigenvectors random.
    """
    npos = d // 2
    pos = uniform(gen, *batch, npos, low=0.05, high=top) * beta
    neg = -log_uniform(gen, *batch, d - npos, low=0.01, high=bottom) * beta
    lam = torch.cat([pos, neg], -1)
    return from_eigen(orthogonal(gen, d, batch), lam)


def jacobian(
    gen: torch.Generator, D: int, d: int, batch: tuple[int, ...] = (), *, low: float = 0.05, high: float = 5.0
) -> Tensor:
    """Random dense J ``[*batch, D, d]``: Gaussian entries, columns rescaled to log-uniform norms in [low, high].

    Columns are not orthogonal (almost surely), so JᵀJ is not diagonal.
    """
    J = normal(gen, *batch, D, d)
    J = J / torch.linalg.vector_norm(J, dim=-2, keepdim=True)
    return J * log_uniform(gen, *batch, 1, d, low=low, high=high)


def orthogonal_columns(
    gen: torch.Generator, D: int, d: int, batch: tuple[int, ...] = (), *, low: float = 0.05, high: float = 5.0
) -> Tensor:
    """J ``[*batch, D, d]`` with exactly orthogonal columns (D ≥ d) of log-uniform norms: JᵀJ diagonal."""
    if D < d:
        raise ValueError(f"D: orthogonal columns need D ≥ d, got D={D}, d={d}")
    Q = orthogonal(gen, D, batch)[..., :d]
    return Q * log_uniform(gen, *batch, 1, d, low=low, high=high)


def hess_diag_bernoulli(gen: torch.Generator, D: int, batch: tuple[int, ...] = ()) -> tuple[Tensor, Tensor, Tensor]:
    """(x, g, diag H_p) for Bernoulli pixels: binary x, probabilities g ∈ (0.05, 0.95), H_p = −x/g² − (1−x)/(1−g)²."""
    x = (uniform(gen, *batch, D) < 0.5).to(DTYPE)
    g = uniform(gen, *batch, D, low=0.05, high=0.95)
    return x, g, -x / g**2 - (1 - x) / (1 - g) ** 2


def well_separated(lam: Tensor, gap: float) -> bool:
    """Whether sorted eigenvalues differ pairwise by at least ``gap`` (for eigenvector-based comparisons)."""
    s = torch.sort(lam, dim=-1).values
    return bool((s[..., 1:] - s[..., :-1] >= gap).all()) if s.shape[-1] > 1 else True


# ---------------------------------------------------------------- hypothesis layer


def register_profiles() -> None:
    """Register the ``ci`` and ``dev`` hypothesis profiles (idempotent)."""
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci",
        max_examples=15,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    settings.register_profile(
        "dev",
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )


def _st():
    from hypothesis import strategies as st

    return st


def dims(min_value: int = 1, max_value: int = 6):
    """Latent / data dimensions."""
    return _st().integers(min_value=min_value, max_value=max_value)


def betas(min_value: float = 1e-2, max_value: float = 1e2):
    """β > 0, log-uniform-ish over [min_value, max_value] (drawn as an exponent so it shrinks sensibly)."""
    st = _st()
    return st.floats(math.log(min_value), math.log(max_value)).map(math.exp)


def seeds():
    return _st().integers(min_value=0, max_value=2**31 - 1)


def spd_matrices(d: int | None = None, *, low: float = 0.05, high: float = 20.0):
    """SPD matrices ``[d, d]`` (d drawn when None) with eigenvalues in [low, high]."""
    st = _st()
    dd = st.just(d) if d is not None else dims()
    return st.tuples(dd, seeds()).map(lambda t: spd(generator(t[1]), t[0], low=low, high=high))


def jacobians(D: int | None = None, d: int | None = None, *, low: float = 0.05, high: float = 5.0):
    """Dense Jacobians ``[D, d]`` (non-orthogonal columns almost surely)."""
    st = _st()
    dd = st.just(d) if d is not None else dims()
    DD = st.just(D) if D is not None else dims(1, 8)
    return st.tuples(DD, dd, seeds()).map(lambda t: jacobian(generator(t[2]), t[0], t[1], low=low, high=high))


def orthogonal_column_jacobians(d: int | None = None, *, extra_rows: int = 3, low: float = 0.05, high: float = 5.0):
    """Jacobians ``[D, d]`` with exactly orthogonal columns (D = d + 0..extra_rows)."""
    st = _st()
    dd = st.just(d) if d is not None else dims()
    return st.tuples(dd, st.integers(0, extra_rows), seeds()).map(
        lambda t: orthogonal_columns(generator(t[2]), t[0] + t[1], t[0], low=low, high=high)
    )


def hessians_below(beta: float, d: int | None = None, *, top: float = 0.9):
    """Symmetric H ``[d, d]`` with I − H/β ≻ 0 (indefinite in general)."""
    st = _st()
    dd = st.just(d) if d is not None else dims()
    return st.tuples(dd, seeds()).map(lambda t: symmetric_below(generator(t[1]), t[0], beta, top=top))
