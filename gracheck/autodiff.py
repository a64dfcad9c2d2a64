"""The decoder Jacobian engine: J = ∂g/∂z by forward mode, column by column.

GRAE (Eq. 12/13) needs the whole Jacobian J ∈ ℝ^{D×d} of the decoder at the
encoder mean; GRAE≈ (Eq. 14 and the text after it) needs only k sampled columns
J[:, c]. A column is one Jacobian–vector product (JVP) with a one-hot tangent, so
forward mode costs d JVPs for the whole of J (8–128 here) where reverse mode would
cost D backward passes (784 for MNIST, 12288 for CelebA).

Engine. We use :mod:`torch.autograd.forward_ad` dual tensors: the decoder runs
once on a batch whose rows are (example, column) pairs, carrying the one-hot
tangents; the output's tangent holds the columns. The same pass returns the
primal output g(z), so a GRAE≈ step needs no separate reconstruction forward.
Tangents are ordinary autograd tensors, so a loss built from them can be
back-propagated to the decoder's parameters (reverse-over-forward; double
backward through the JVP), in float32 and float64.

BatchNorm (DESIGN.md pitfalls). In training mode BatchNorm normalises with the
statistics of the whole batch, so example i's output depends on every example's
latent; a JVP through it mixes examples (with the same one-hot tangent for every
row the batch-mean subtraction even cancels the column to exactly zero). While
the engine runs, every BatchNorm layer of a decoder that is an ``nn.Module`` and
is in training mode is switched to *batch statistics held constant for the
tangent*: the output values, and their reverse-mode gradients, are exactly those
of ordinary training-mode BatchNorm (mean and variance of the current batch, with
autograd through them), but the tangents see the statistics as constants, so
each row's tangent is the per-example derivative ∂g(zᵢ)/∂zᵢ with the
normalisation frozen. Running statistics are updated once per call, as one
ordinary training-mode forward would. In eval mode nothing changes (running
statistics are constants anyway). A decoder passed as a plain callable that
closes over a training-mode BatchNorm module cannot be detected: pass the module
itself, or put it in eval mode.

Shapes: z ``[B, d]``; decoder output ``[B, ...]`` flattened to ``[B, D]``;
``decoder_jacobian`` → ``[B, D, d]``; ``jacobian_columns`` → ``[B, D, k]``.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from gracheck._validate import check_tensor

Decoder = Callable[[Tensor], Tensor]


def _bn_forward_constant_stats(self: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Training-mode BatchNorm whose statistics carry no forward-mode tangent (see module docstring)."""
    primal = fwAD.unpack_dual(x).primal  # same values, autograd history kept, no tangent
    dims = [0] + list(range(2, x.dim()))
    mean = primal.mean(dims)
    var = primal.var(dims, unbiased=False)
    if self.track_running_stats and self.running_mean is not None:
        n = primal.numel() // primal.shape[1] // getattr(self, "_gracheck_rows_per_example", 1)
        with torch.no_grad():
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            unbiased = var.detach() * (n / max(n - 1, 1))
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
    # Written out (not F.batch_norm with training=False, which would not back-propagate into mean/var).
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
    if self.affine:
        y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
    return y


@contextlib.contextmanager
def per_example_batchnorm(module: object, rows_per_example: int = 1) -> Iterator[None]:
    """Within the block, training-mode BatchNorm layers of ``module`` hold their batch statistics
    constant for forward-mode tangents (per-example Jacobians); no-op for non-modules / eval mode.

    ``rows_per_example``: when the batch holds each example ``k`` times (one row per
    Jacobian column), the running-variance correction uses the true batch size.
    """
    patched: list[nn.Module] = []
    if isinstance(module, nn.Module):
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
                m.forward = types.MethodType(_bn_forward_constant_stats, m)
                m._gracheck_rows_per_example = rows_per_example
                patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward
            del m._gracheck_rows_per_example


def _check_z(z: Tensor) -> None:
    check_tensor("z", z)
    if z.dim() != 2:
        raise ValueError(f"z: expected shape [B, d], got {tuple(z.shape)}")


def _run_columns(decoder: Decoder, z: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:
    """Run the decoder on rows (example, column): z ``[B, d]``, tangents ``[B, k, d]`` →
    (g ``[B, D]``, columns ``[B, D, k]``)."""
    B, k, d = tangents.shape
    zz = z.unsqueeze(1).expand(B, k, d).reshape(B * k, d)
    with per_example_batchnorm(decoder, rows_per_example=k), fwAD.dual_level():
        out = decoder(fwAD.make_dual(zz, tangents.reshape(B * k, d)))
        if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != B * k:
            raise ValueError(f"decoder: must map [B, d] to [B, ...]; got output of shape {getattr(out, 'shape', None)}")
        primal, tangent = fwAD.unpack_dual(out)
    if tangent is None:  # the output does not depend on z at all
        tangent = torch.zeros_like(primal)
    g = primal.reshape(B, k, -1)[:, 0]
    cols = tangent.reshape(B, k, -1).transpose(1, 2)
    return g, cols


def jacobian_columns(
    decoder: Decoder, z: Tensor, columns: Tensor, *, return_output: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Columns J[:, c] of the decoder Jacobian at z, one JVP per column (Eq. 14, GRAE≈).

    Args:
        decoder: any callable ``[B, d] → [B, ...]`` (an ``nn.Module`` gets per-example BatchNorm).
        z: latents ``[B, d]``.
        columns: LongTensor ``[B, k]`` of per-example column indices in ``[0, d)``.
        return_output: also return the decoder output g(z) ``[B, D]`` from the same pass.

    Returns:
        ``[B, D, k]`` with ``out[b, :, j] = ∂g(z_b)/∂z_b[columns[b, j]]`` (and g when asked).
    """
    _check_z(z)
    if not isinstance(columns, Tensor) or columns.dtype not in (torch.int64, torch.int32):
        raise TypeError("columns: expected an integer (Long) tensor of shape [B, k]")
    B, d = z.shape
    if columns.dim() != 2 or columns.shape[0] != B:
        raise ValueError(f"columns: expected shape [B={B}, k], got {tuple(columns.shape)}")
    if columns.numel() and (int(columns.min()) < 0 or int(columns.max()) >= d):
        raise ValueError(f"columns: indices must lie in [0, {d}), got range [{int(columns.min())}, {int(columns.max())}]")
    tangents = F.one_hot(columns.long().to(z.device), d).to(z.dtype)  # [B, k, d]
    g, cols = _run_columns(decoder, z, tangents)
    return (g, cols) if return_output else cols


def decoder_jacobian(decoder: Decoder, z: Tensor, *, return_output: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """The full decoder Jacobian J_g(z) ``[B, D, d]`` by d forward-mode JVPs (Eq. 11–13).

    ``return_output=True`` also returns g(z) ``[B, D]`` computed in the same pass.
    """
    _check_z(z)
    B, d = z.shape
    eye = torch.eye(d, dtype=z.dtype, device=z.device).expand(B, d, d)
    g, J = _run_columns(decoder, z, eye)
    return (g, J) if return_output else J


def jtj(J: Tensor, hess_diag: Tensor | None = None) -> Tensor:
    """Jᵀ(−H_p)J ``[..., d, d]`` from J ``[..., D, d]`` and diag(H_p) ``[..., D]`` (None: H_p = −I)."""
    if hess_diag is None:
        return J.transpose(-1, -2) @ J
    return J.transpose(-1, -2) @ (J * (-hess_diag).unsqueeze(-1))
