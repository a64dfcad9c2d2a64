"""The decoder Jacobian engine: J = ∂g/∂z by forward mode, column by column.

GRAE (Eq. 12/13) needs the whole Jacobian J ∈ ℝ^{D×d} of the decoder at the
encoder mean; GRAE≈ (Eq. 14 and the text after it) needs only k sampled columns
J[:, c]. A column is one Jacobian–vector product (JVP) with a one-hot tangent, so
forward mode costs d JVPs for the whole of J (8–128 here) where reverse mode would
cost D backward passes (784 for MNIST, 12288 for CelebA).

Engine: two routes, chosen by ``method`` ("auto" picks by the number of columns k).

* "forward-ad" (k ≤ 2): :mod:`torch.autograd.forward_ad` dual tensors; the decoder
  runs once on rows (example, column) carrying one-hot tangents, and the same pass
  returns the primal g(z), so a GRAE≈ step needs no separate reconstruction forward.
* "vmap" (k > 2, the full Jacobian): an ordinary forward for g(z), then
  ``torch.func.vmap`` over k ``torch.func.jvp`` calls; the primal inside is not
  batched, so it is computed once rather than k times.

Both return tangents that are ordinary autograd tensors, so a loss built from them
back-propagates to the decoder's parameters (reverse-over-forward, i.e. double
backward through the JVP), in float32 and float64. The tests check the two
routes against each other and against reverse-mode Jacobians.

BatchNorm (DESIGN.md pitfalls). In training mode BatchNorm normalises with the
statistics of the whole batch, so example i's output depends on every example's
latent; a JVP through it mixes examples (with the same one-hot tangent for every
row the batch-mean subtraction even cancels the column to exactly zero). While
the engine runs, every BatchNorm layer of a decoder that is an ``nn.Module`` and
is in training mode is switched to *batch statistics held constant for the
tangent*: the output values, and their reverse-mode gradients, are exactly those
of ordinary training-mode BatchNorm (mean and variance of the current batch, with
autograd through them, also inside J), but the tangents see the statistics as
constants, so each row's tangent is the per-example derivative ∂g(zᵢ)/∂zᵢ with
the normalisation frozen at this batch's statistics. Running statistics are
updated once per call, as one ordinary training-mode forward would. In eval mode nothing changes (running
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


def _normalise(self: nn.modules.batchnorm._BatchNorm, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
    if self.affine:
        y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
    return y


def _batch_stats(self: nn.modules.batchnorm._BatchNorm, x: Tensor, rows_per_example: int) -> tuple[Tensor, Tensor]:
    """Batch mean/variance of ``x`` (autograd kept) and the running-statistics update of one training forward."""
    dims = [0] + list(range(2, x.dim()))
    mean = x.mean(dims)
    var = x.var(dims, unbiased=False)
    if self.track_running_stats and self.running_mean is not None:
        n = x.numel() // x.shape[1] // rows_per_example
        with torch.no_grad():
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
            self.running_var.lerp_((var.detach() * (n / max(n - 1, 1))).to(self.running_var.dtype), m)
    return mean, var


def _bn_dual(self, x: Tensor) -> Tensor:
    # forward_ad route: statistics from the primal (no tangent, autograd history kept).
    mean, var = _batch_stats(self, fwAD.unpack_dual(x).primal, self._gracheck_rows)
    return _normalise(self, x, mean, var)


def _bn_record(self, x: Tensor) -> Tensor:
    # ordinary training forward that also remembers its statistics for the replay pass
    mean, var = _batch_stats(self, x, 1)
    self._gracheck_stats = (mean, var)
    return _normalise(self, x, mean, var)


def _bn_replay(self, x: Tensor) -> Tensor:
    # inside torch.func transforms: the recorded statistics are captured constants for the tangent
    mean, var = self._gracheck_stats
    return _normalise(self, x, mean, var)


@contextlib.contextmanager
def _patched_batchnorm(module: object, forward, rows: int = 1) -> Iterator[list]:
    patched: list[nn.Module] = []
    if isinstance(module, nn.Module):
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
                m.forward = types.MethodType(forward, m)
                m._gracheck_rows = rows
                patched.append(m)
    try:
        yield patched
    finally:
        for m in patched:
            del m.forward
            del m._gracheck_rows


@contextlib.contextmanager
def per_example_batchnorm(module: object) -> Iterator[None]:
    """Within the block, training-mode BatchNorm layers of ``module`` take their statistics from the
    primal of forward-mode dual inputs, so tangents see them as constants (per-example Jacobians)
    while values, autograd and running statistics are those of an ordinary training forward.
    For use with :mod:`torch.autograd.forward_ad`; a no-op for non-modules and eval mode."""
    with _patched_batchnorm(module, _bn_dual):
        yield


# Convolutions under dual tensors. PyTorch's forward-mode rule for convolution evaluates
# conv(x_t, W) + conv(x, W_t) and materialises a zero tangent for a weight that is not dual, so
# every conv layer costs three convolutions forward, and three more in the backward of a training
# step (measured with torch.profiler, torch 2.13: 15 convolution calls for the 5 layers of the
# Appendix D MNIST decoder). Only the input carries a tangent here, so the tangent is the same
# linear map without the bias: conv(x_t, W). Computing it directly takes the GRAE≈ training step
# from 2.8× to 2.2× a plain step (benchmarks/bench_core.py). Applied only to modules whose class
# is exactly a torch convolution (a subclass may override forward; it keeps the generic rule).
_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv_dual(self: nn.modules.conv._ConvNd, x: Tensor, *args) -> Tensor:
    primal, tangent = fwAD.unpack_dual(x)
    if tangent is None or args:  # no tangent, or ConvTranspose's output_size: the generic rule
        return type(self).forward(self, x, *args)
    out = type(self).forward(self, primal)
    if isinstance(self, nn.modules.conv._ConvTransposeNd):
        tan = _CONV_T[len(self.kernel_size)](tangent, self.weight, None, self.stride, self.padding,
                                             self.output_padding, self.groups, self.dilation)
    else:
        tan = self._conv_forward(tangent, self.weight, None)  # honours padding_mode
    return fwAD.make_dual(out, tan)


@contextlib.contextmanager
def _patched_convs(module: object) -> Iterator[None]:
    patched: list[nn.Module] = []
    if isinstance(module, nn.Module):
        for m in module.modules():
            if type(m) in _PLAIN_CONVS and "forward" not in m.__dict__:
                m.forward = types.MethodType(_conv_dual, m)
                patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _check_z(z: Tensor) -> None:
    check_tensor("z", z)
    if z.dim() != 2:
        raise ValueError(f"z: expected shape [B, d], got {tuple(z.shape)}")


def _columns_forward_ad(decoder: Decoder, z: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:
    """Route 1 (few columns): one forward pass with dual tensors over rows (example, column).
    z ``[B, d]``, tangents ``[B, k, d]`` → (g ``[B, D]``, columns ``[B, D, k]``)."""
    B, k, d = tangents.shape
    zz = z.repeat_interleave(k, dim=0)  # fresh memory: make_dual rejects expanded/aliased views
    with _patched_batchnorm(decoder, _bn_dual, rows=k), _patched_convs(decoder), fwAD.dual_level():
        out = decoder(fwAD.make_dual(zz, tangents.reshape(B * k, d).contiguous()))
        _check_out(out, B * k)
        primal, tangent = fwAD.unpack_dual(out)
    if tangent is None:  # the output does not depend on z at all
        tangent = torch.zeros_like(primal)
    return primal.reshape(B, k, -1)[:, 0], tangent.reshape(B, k, -1).transpose(1, 2)


_VMAP_ROWS = 96  # (example, column) rows per tangent pass of the vmap route; see _columns_vmap


def _columns_vmap(decoder: Decoder, z: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:
    """Route 2 (many columns): an ordinary forward for g (recording BatchNorm statistics), then
    ``torch.func.vmap`` over k ``torch.func.jvp`` calls that replay those statistics; the primal
    inside the JVP is not batched, so it is computed once, not k times."""
    B, k, d = tangents.shape
    with _patched_batchnorm(decoder, _bn_record) as bns:
        out = decoder(z)
    _check_out(out, B)
    g = out.reshape(B, -1)
    # The tangent passes run on slices of the batch, about _VMAP_ROWS (example, column) rows at a time:
    # one pass over all k·B rows spills the activations out of cache (full GRAE step on the MNIST
    # decoder, B = 64, d = 12: 26.9× a plain step in one pass, 15.7× in slices of 8 examples;
    # benchmarks/bench_core.py). Per-example results do not depend on the slicing: BatchNorm replays
    # the whole batch's recorded statistics.
    step = max(1, _VMAP_ROWS // max(k, 1))
    parts = []
    try:
        with _patched_batchnorm(decoder, _bn_replay):
            for s in range(0, B, step):
                zs = z[s : s + step]
                vs = tangents[s : s + step].transpose(0, 1).contiguous()  # [k, b, d]
                t = torch.func.vmap(lambda v, zs=zs: torch.func.jvp(decoder, (zs,), (v,))[1])(vs)
                parts.append(t.reshape(k, zs.shape[0], -1))
    finally:
        for m in bns:
            del m._gracheck_stats
    return g, torch.cat(parts, 1).permute(1, 2, 0)


def _check_out(out: object, rows: int) -> None:
    if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != rows:
        raise ValueError(f"decoder: must map [B, d] to [B, ...]; got output of shape {getattr(out, 'shape', None)}")


_METHODS = ("auto", "forward-ad", "vmap")


def _run_columns(decoder: Decoder, z: Tensor, tangents: Tensor, method: str) -> tuple[Tensor, Tensor]:
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    if method == "auto":
        # Measured on the paper's MNIST decoder (benchmarks/bench_core.py): dual tensors win for one or
        # two columns (no separate primal pass), vmap wins beyond (the primal is not repeated k times).
        method = "forward-ad" if tangents.shape[1] <= 2 else "vmap"
    if method == "forward-ad":
        return _columns_forward_ad(decoder, z, tangents)
    return _columns_vmap(decoder, z, tangents)


def jacobian_columns(
    decoder: Decoder, z: Tensor, columns: Tensor, *, return_output: bool = False, method: str = "auto"
) -> Tensor | tuple[Tensor, Tensor]:
    """Columns J[:, c] of the decoder Jacobian at z, one JVP per column (Eq. 14, GRAE≈).

    Args:
        decoder: any callable ``[B, d] → [B, ...]`` (an ``nn.Module`` gets per-example BatchNorm).
        z: latents ``[B, d]``.
        columns: LongTensor ``[B, k]`` of per-example column indices in ``[0, d)``.
        return_output: also return the decoder output g(z) ``[B, D]`` from the same computation.
        method: "forward-ad" (dual tensors, one pass), "vmap" (torch.func), or "auto".

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
    g, cols = _run_columns(decoder, z, tangents, method)
    return (g, cols) if return_output else cols


def decoder_jacobian(
    decoder: Decoder, z: Tensor, *, return_output: bool = False, method: str = "auto"
) -> Tensor | tuple[Tensor, Tensor]:
    """The full decoder Jacobian J_g(z) ``[B, D, d]`` by d forward-mode JVPs (Eq. 11–13).

    ``return_output=True`` also returns g(z) ``[B, D]``; ``method`` as in :func:`jacobian_columns`.
    """
    _check_z(z)
    B, d = z.shape
    eye = torch.eye(d, dtype=z.dtype, device=z.device).expand(B, d, d)
    g, J = _run_columns(decoder, z, eye, method)
    return (g, J) if return_output else J


def jtj(J: Tensor, hess_diag: Tensor | None = None) -> Tensor:
    """Jᵀ(−H_p)J ``[..., d, d]`` from J ``[..., D, d]`` and diag(H_p) ``[..., D]`` (None: H_p = −I)."""
    if hess_diag is None:
        return J.transpose(-1, -2) @ J
    return J.transpose(-1, -2) @ (J * (-hess_diag).unsqueeze(-1))
