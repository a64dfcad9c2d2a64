"""The 2-D synthetic data of Appendix C (Fig. 1, 5, 6): ``x = ν(W z) + ε``.

Implementing App. C of Kumar & Poole (2020): ``z ~ N(0, I₂)``, ``ε ~ N(0, 0.05² I₂)``, ν acting
elementwise, one of identity (probabilistic PCA), tanh, sigmoid, elu. The paper: "Entries of W are
sampled from N(0, 1) and normalized such that columns have different ℓ2 norms (2 and 1,
respectively)".

How W is drawn (a documented reading of the paper). Taken literally, Gaussian columns rescaled to
norms 2 and 1 are *not* orthogonal. For ν = identity the data are then N(0, WWᵀ + σ²I), and the
mean-field optimum (the PPCA solution with orthogonal decoder columns, Sec. 3.1) recovers the
latents only up to the right singular vectors V of W: the inferred-vs-true angle at the optimum is
the angle of V (up to |26.6°| for norms 2 and 1), not 0, and differs from run to run. The paper's
own uniqueness argument (Sec. 3.1: a factorised posterior iff A has *orthogonal* columns, unique iff
their norms differ) and its claim that the angle goes to 0 only make sense for orthogonal columns of
different norms. So the default, ``w_columns="orthogonal"``, draws a 2×2 matrix with N(0, 1)
entries, orthogonalises it (QR with the signs of R's diagonal moved into Q, which makes Q Haar
distributed on O(2)) and sets ``W = Q diag(2, 1)``: columns orthogonal with norms exactly 2 and 1
and a uniformly random direction. ``w_columns="gaussian"`` is the literal reading (N(0, 1) entries,
each column rescaled to its norm), kept for comparison.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

NONLINEARITIES = ("identity", "tanh", "sigmoid", "elu")
W_COLUMNS = ("orthogonal", "gaussian")
COLUMN_NORMS = (2.0, 1.0)


def nonlinearity_fn(name: str):
    """The elementwise ν for ``name`` (one of :data:`NONLINEARITIES`)."""
    if name == "identity":
        return lambda u: u
    if name == "tanh":
        return torch.tanh
    if name == "sigmoid":
        return torch.sigmoid
    if name == "elu":
        return torch.nn.functional.elu
    raise ValueError(f"nonlinearity: expected one of {NONLINEARITIES}, got {name!r}")


@dataclasses.dataclass(frozen=True)
class SyntheticData:
    """One draw of the App. C data set.

    ``x`` ``[n, 2]`` observations, ``z`` ``[n, 2]`` the latents that generated them, ``W`` ``[2, 2]``
    the mixing matrix (column norms 2 and 1), ``nonlinearity`` the name of ν, ``noise_std`` the
    standard deviation of ε, ``seed`` the seed of the draw, ``w_columns`` how W was drawn.
    """

    x: Tensor
    z: Tensor
    W: Tensor
    nonlinearity: str
    noise_std: float
    seed: int
    w_columns: str = "orthogonal"


def draw_w(generator: torch.Generator, *, w_columns: str = "orthogonal", dtype=torch.float64) -> Tensor:
    """A 2×2 W with column norms 2 and 1 (see the module docstring for ``w_columns``)."""
    if w_columns not in W_COLUMNS:
        raise ValueError(f"w_columns: expected one of {W_COLUMNS}, got {w_columns!r}")
    g = torch.randn(2, 2, generator=generator, dtype=torch.float64)
    norms = torch.tensor(COLUMN_NORMS, dtype=torch.float64)
    if w_columns == "orthogonal":
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # Haar on O(2)
        w = q * norms.unsqueeze(0)
    else:
        w = g / torch.linalg.vector_norm(g, dim=0, keepdim=True) * norms.unsqueeze(0)
    return w.to(dtype)


def make_synthetic(
    nonlinearity: str,
    n: int = 4000,
    *,
    noise_std: float = 0.05,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    w_columns: str = "orthogonal",
) -> SyntheticData:
    """Draw ``n`` points ``x = ν(W z) + ε`` of App. C; same ``seed`` → same data, bit for bit.

    Draw order from one ``torch.Generator(seed)`` (CPU, float64): W's Gaussian entries, then
    z ``[n, 2]``, then ε ``[n, 2]``; the result is cast to ``dtype`` at the end.
    Raises ValueError for an unknown ``nonlinearity`` or ``w_columns``, ``n < 1`` or
    ``noise_std < 0`` (or not finite).
    """
    fn = nonlinearity_fn(nonlinearity)  # validates the name
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n: expected at least 1 point, got {n}")
    noise_std = float(noise_std)
    if not noise_std >= 0.0 or noise_std == float("inf"):
        raise ValueError(f"noise_std: expected a finite value >= 0, got {noise_std}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if w_columns not in W_COLUMNS:
        raise ValueError(f"w_columns: expected one of {W_COLUMNS}, got {w_columns!r}")
    gen = torch.Generator().manual_seed(seed)
    w = draw_w(gen, w_columns=w_columns, dtype=torch.float64)
    z = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(n, 2, generator=gen, dtype=torch.float64) * noise_std
    x = fn(z @ w.T) + eps
    return SyntheticData(
        x=x.to(dtype),
        z=z.to(dtype),
        W=w.to(dtype),
        nonlinearity=nonlinearity,
        noise_std=noise_std,
        seed=seed,
        w_columns=w_columns,
    )
