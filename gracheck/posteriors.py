"""Gaussian posteriors q(z|x) = N(μ, LLᵀ): mean-field, block-diagonal and full covariance.

Every structure is represented by its lower-triangular Cholesky factor ``scale_tril``
``[B, d, d]`` with a positive diagonal, so sampling (z = μ + Lε), log-densities and
the KL to the prior N(0, I) (Eq. 2's regulariser) share one code path.

Network heads emit unconstrained parameters; :func:`scale_tril_from_params` maps
them to ``scale_tril``. The diagonal is made positive with softplus (plus a small
floor) rather than exp, which keeps gradients bounded for large raw values.

Block-diagonal with block size b when b does not divide d: the blocks are
[0, b), [b, 2b), …, and the last block is smaller (d mod b); e.g. d = 8, b = 3
gives blocks of sizes 3, 3, 2. :func:`block_sizes` returns them.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from gracheck.base.validate import FLOAT_DTYPES, check_positive_int, check_same_dtype, check_tensor, is_traced

STRUCTURES = ("mean-field", "block-diagonal", "full")
_DIAG_FLOOR = 1e-5  # smallest posterior standard deviation a head can produce


def block_sizes(d: int, block: int) -> list[int]:
    """Sizes of the diagonal blocks for latent dimension ``d`` and block size ``block`` (last may be smaller)."""
    check_positive_int("d", d)
    check_positive_int("block", block)
    return [min(block, d - s) for s in range(0, d, block)]


def _resolve(structure: str, d: int, block: int | None) -> int:
    if structure not in STRUCTURES:
        raise ValueError(f"structure: expected one of {STRUCTURES}, got {structure!r}")
    if structure == "mean-field":
        return 1
    if structure == "full":
        return d
    if block is None:
        raise ValueError("block: required for structure='block-diagonal'")
    return block


def num_params(structure: str, d: int, block: int | None = None) -> int:
    """Number of unconstrained head outputs that :func:`scale_tril_from_params` needs."""
    b = _resolve(structure, d, block)
    return sum(s * (s + 1) // 2 for s in block_sizes(d, b))


def block_mask(d: int, block: int, *, dtype: torch.dtype = torch.bool, device=None) -> Tensor:
    """``[d, d]`` mask that is 1 inside the diagonal blocks (used for block-structure statistics)."""
    m = torch.zeros(d, d, dtype=torch.bool, device=device)
    s = 0
    for size in block_sizes(d, block):
        m[s : s + size, s : s + size] = True
        s += size
    return m.to(dtype)


def scale_tril_from_params(params: Tensor, d: int, structure: str, block: int | None = None) -> Tensor:
    """Map head outputs ``[B, P]`` to a lower-triangular factor ``[B, d, d]`` of the given structure.

    Within each block the entries fill the lower triangle row by row; diagonal
    entries go through softplus(·) + 1e-5, off-diagonal entries are used as they are.
    """
    check_tensor("params", params, min_dim=2)
    b = _resolve(structure, d, block)
    P = num_params(structure, d, b if structure == "block-diagonal" else None)
    if params.shape[-1] != P:
        raise ValueError(f"params: expected last dimension {P} for {structure} (d={d}, block={b}), got {params.shape[-1]}")
    batch = params.shape[:-1]
    L = params.new_zeros(*batch, d, d)
    off = 0
    start = 0
    for size in block_sizes(d, b):
        n = size * (size + 1) // 2
        rows, cols = torch.tril_indices(size, size, device=params.device)
        L[..., start + rows, start + cols] = params[..., off : off + n]
        off += n
        start += size
    diag = torch.diagonal(L, dim1=-2, dim2=-1)
    pos = F.softplus(diag) + _DIAG_FLOOR
    return L - torch.diag_embed(diag) + torch.diag_embed(pos)


@dataclasses.dataclass
class GaussianPosterior:
    """q(z|x) = N(mean, scale_tril scale_trilᵀ); mean ``[B, d]``, scale_tril ``[B, d, d]``.

    ``scale_tril`` must be lower-triangular (every entry above the diagonal exactly 0) with a
    strictly positive diagonal, in mean's dtype (float32 or float64) and on mean's device.
    """

    mean: Tensor
    scale_tril: Tensor

    def __post_init__(self) -> None:
        check_tensor("mean", self.mean, min_dim=2, dtypes=FLOAT_DTYPES)
        check_tensor("scale_tril", self.scale_tril, min_dim=3, dtypes=FLOAT_DTYPES)
        check_same_dtype("scale_tril", self.scale_tril, "mean", self.mean)
        if self.scale_tril.device != self.mean.device:
            raise ValueError(f"scale_tril: on {self.scale_tril.device}, mean on {self.mean.device}; put both on one device")
        if self.scale_tril.shape[-2:] != (self.mean.shape[-1],) * 2 or self.scale_tril.shape[:-2] != self.mean.shape[:-1]:
            raise ValueError(
                f"scale_tril: expected shape {tuple(self.mean.shape) + (self.mean.shape[-1],)} "
                f"to match mean {tuple(self.mean.shape)}, got {tuple(self.scale_tril.shape)}"
            )
        if not is_traced(self.scale_tril) and self.scale_tril.numel():
            L = self.scale_tril.detach()
            diag = torch.diagonal(L, dim1=-2, dim2=-1)
            # one host sync for both checks
            bad_diag, bad_upper = torch.stack([(diag <= 0).any(), torch.triu(L, 1).ne(0).any()]).tolist()
            if bad_upper:
                up = float(torch.triu(L, 1).abs().max())
                raise ValueError(f"scale_tril: must be lower-triangular (an entry above the diagonal is {up:.3g}); "
                                 "for a covariance use GaussianPosterior.from_cov or torch.linalg.cholesky")
            if bad_diag:
                raise ValueError("scale_tril: diagonal must be strictly positive")

    @classmethod
    def mean_field(cls, mean: Tensor, std: Tensor) -> GaussianPosterior:
        """Diagonal covariance diag(std²); std ``[B, d]`` > 0."""
        check_tensor("std", std, min_dim=2)
        if std.shape != mean.shape:
            raise ValueError(f"std: expected shape {tuple(mean.shape)}, got {tuple(std.shape)}")
        return cls(mean, torch.diag_embed(std))

    @classmethod
    def from_cov(cls, mean: Tensor, cov: Tensor) -> GaussianPosterior:
        from gracheck.base.validate import check_symmetric, cholesky

        check_tensor("cov", cov, min_dim=3)
        check_symmetric("cov", cov)
        return cls(mean, cholesky("cov", cov, "the covariance"))

    @property
    def d(self) -> int:
        return self.mean.shape[-1]

    @property
    def cov(self) -> Tensor:
        """Σ = LLᵀ, ``[B, d, d]``."""
        return self.scale_tril @ self.scale_tril.transpose(-1, -2)

    def sample(self, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """``n`` reparameterised samples, ``[n, B, d]`` (z = μ + Lε, ε from ``generator``)."""
        check_positive_int("n", n)
        eps = torch.randn(
            (n, *self.mean.shape), generator=generator, dtype=self.mean.dtype, device=self.mean.device
        )
        return self.mean + torch.einsum("...ij,n...j->n...i", self.scale_tril, eps)

    def log_det_cov(self) -> Tensor:
        """log det Σ = 2 Σᵢ log Lᵢᵢ, ``[B]``."""
        return 2 * torch.log(torch.diagonal(self.scale_tril, dim1=-2, dim2=-1)).sum(-1)

    def kl_standard_normal(self) -> Tensor:
        """KL(q ‖ N(0, I)) = ½(tr Σ + ‖μ‖² − d − log det Σ), ``[B]`` (Eq. 2, 8)."""
        tr = self.scale_tril.pow(2).sum((-2, -1))
        return 0.5 * (tr + self.mean.pow(2).sum(-1) - self.d - self.log_det_cov())

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z|x) for z ``[..., B, d]`` → ``[..., B]``."""
        diff = (z - self.mean).unsqueeze(-1)
        L = self.scale_tril.expand(*diff.shape[:-2], self.d, self.d)
        sol = torch.linalg.solve_triangular(L, diff, upper=False).squeeze(-1)
        import math

        return -0.5 * sol.pow(2).sum(-1) - 0.5 * self.log_det_cov() - 0.5 * self.d * math.log(2 * math.pi)
