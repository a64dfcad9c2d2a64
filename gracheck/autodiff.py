"""The decoder Jacobian engine: J = ∂g/∂z by forward mode, column by column.

GRAE (Eq. 12/13) needs the whole Jacobian J ∈ ℝ^{D×d} of the decoder at the
encoder mean; GRAE≈ (Eq. 14 and the text after it) needs only k sampled columns
J[:, c]. A column is one Jacobian–vector product (JVP) with a one-hot tangent, so
forward mode costs d JVPs for the whole of J (8–128 here) where reverse mode would
cost D backward passes (784 for MNIST, 12288 for CelebA).

Engine: three routes, chosen by ``method``. "auto" takes "chain" whenever the decoder
is a chain of known layers, else "forward-ad" for k ≤ 2 columns and "vmap" beyond.

* "chain": a decoder that is an ``nn.Sequential``, or a module whose
  ``jacobian_chain()`` lists the layers its forward composes (every decoder in
  :mod:`gracheck.nets`), built from Linear, Conv/ConvTranspose 1-3d, BatchNorm 1-3d,
  ELU/ReLU/LeakyReLU/Sigmoid/Tanh/Softplus, Identity/eval Dropout and
  Flatten/Unflatten. One ordinary forward gives g(z) and each layer's tangent
  action; the k tangents then go through the weights (no bias) and the activation
  derivatives on slices of the batch. The fastest route for full J (the full GRAE
  step on the MNIST decoder, B = 64: 12.1–12.4× a plain step, against 16.8–17.5× by vmap).
* "forward-ad": :mod:`torch.autograd.forward_ad` dual tensors; the decoder
  runs once on rows (example, column) carrying one-hot tangents, and the same pass
  returns the primal g(z), so a GRAE≈ step needs no separate reconstruction forward.
  Any decoder callable.
* "vmap": an ordinary forward for g(z), then ``torch.func.vmap`` over k
  ``torch.func.jvp`` calls; the primal inside is not batched, so it is computed
  once rather than k times. Any decoder callable.

All return tangents that are ordinary autograd tensors, so a loss built from them
back-propagates to the decoder's parameters (reverse-over-forward, i.e. double
backward through the JVP), in float32 and float64. The tests check the three
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

from gracheck.base.validate import check_tensor

Decoder = Callable[[Tensor], Tensor]


def normalise(self: nn.modules.batchnorm._BatchNorm, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
    if self.affine:
        y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
    return y


def batch_stats(self: nn.modules.batchnorm._BatchNorm, x: Tensor, rows_per_example: int) -> tuple[Tensor, Tensor]:
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
    mean, var = batch_stats(self, fwAD.unpack_dual(x).primal, self._gracheck_rows)
    return normalise(self, x, mean, var)


def _bn_record(self, x: Tensor) -> Tensor:
    # ordinary training forward that also remembers its statistics for the replay pass
    mean, var = batch_stats(self, x, 1)
    self._gracheck_stats = (mean, var)
    return normalise(self, x, mean, var)


def _bn_replay(self, x: Tensor) -> Tensor:
    # inside torch.func transforms: the recorded statistics are captured constants for the tangent
    mean, var = self._gracheck_stats
    return normalise(self, x, mean, var)


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


def _conv_linear_part(m: nn.modules.conv._ConvNd, x: Tensor) -> Tensor:
    """The convolution's linear map without its bias, i.e. its derivative applied to ``x``."""
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return _CONV_T[len(m.kernel_size)](x, m.weight, None, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
    return m._conv_forward(x, m.weight, None)  # honours padding_mode


def _conv_dual(self: nn.modules.conv._ConvNd, x: Tensor, *args) -> Tensor:
    primal, tangent = fwAD.unpack_dual(x)
    if tangent is None or args:  # no tangent, or ConvTranspose's output_size: the generic rule
        return type(self).forward(self, x, *args)
    return fwAD.make_dual(type(self).forward(self, primal), _conv_linear_part(self, tangent))


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


# ------------------------------------------------------------------ route 3: "chain"
# A decoder that is a chain of known layers (``nn.Sequential``, or a module whose
# ``jacobian_chain()`` returns the layers its forward composes) gets its tangents propagated
# by hand: one ordinary forward computes g(z) and, per layer, what the tangent needs (the
# elementwise derivative of an activation, the per-channel scale of a BatchNorm); then the
# k tangents of each example go through the linear maps (Linear/conv weights without bias)
# and those derivatives, on slices of about CHAIN_ROWS (example, column) rows. The primal is
# computed once and never re-run inside a transform, no convolution is spent on a zero weight
# tangent, and the backward of a training step is plain first-order autograd through these
# ops (the activation derivatives carry the second-derivative terms). A BatchNorm's scale is
# folded into the next activation's derivative. Measured on the paper's MNIST decoder, d = 12,
# B = 64 (benchmarks/bench_core.py): the full GRAE step falls from 16.8–17.5× a plain step
# (vmap route) to 12.1–12.4× (11.2× at B = 16). The tangent convolutions then run at the plain
# step's rate per row: 1 + d = 13 times the plain step's convolution time is 11.8× its whole time,
# and the elementwise work on k·B tangent rows makes up the rest. Slices of 96 rows were the
# fastest of 48–384 for every convolution of that decoder.
CHAIN_ROWS = 96
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_IDENTITIES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
TangentOp = Callable[[Tensor, int, int, int], Tensor]  # (T [b·k, ...], first example, b, k) → T


def channel_shape(x: Tensor) -> list[int]:
    return [1, -1] + [1] * (x.dim() - 2)


def _elu(m: nn.ELU, x: Tensor) -> tuple[Tensor, Tensor]:
    y = F.elu(x, m.alpha)
    # ELU'(x) = 1 for x > 0 and α eˣ = y + α for x ≤ 0 (where y ≤ 0): min(y, 0) + 1 when α = 1
    return y, (y.clamp(max=0) + 1 if m.alpha == 1.0 else torch.where(x > 0, torch.ones_like(y), y + m.alpha))


def _sigmoid(m: nn.Sigmoid, x: Tensor) -> tuple[Tensor, Tensor]:
    y = torch.sigmoid(x)
    return y, y * (1 - y)


def _tanh(m: nn.Tanh, x: Tensor) -> tuple[Tensor, Tensor]:
    y = torch.tanh(x)
    return y, 1 - y * y


def _softplus(m: nn.Softplus, x: Tensor) -> tuple[Tensor, Tensor]:
    bx = x * m.beta
    return F.softplus(x, m.beta, m.threshold), torch.where(bx > m.threshold, torch.ones_like(x), torch.sigmoid(bx))


# Elementwise activations: (module, x) → (y, dy/dx elementwise); differentiable in x, so the
# backward of a training step gets the second-derivative terms through them.
ACTIVATION_RULES: dict[type, Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]]] = {
    nn.ELU: _elu,
    nn.ReLU: lambda m, x: (F.relu(x), (x > 0).to(x.dtype)),
    nn.LeakyReLU: lambda m, x: (F.leaky_relu(x, m.negative_slope),
                                torch.full_like(x, m.negative_slope).masked_fill_(x > 0, 1.0)),
    nn.Sigmoid: _sigmoid,
    nn.Tanh: _tanh,
    nn.Softplus: _softplus,
}


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _chain_unsupported(m: nn.Module) -> str | None:
    """Why the chain route cannot take layer ``m`` (None: it can)."""
    if _hooked(m):
        return "it has hooks"
    t = type(m)
    if t in _IDENTITIES:
        return "dropout in training mode" if t is not nn.Identity and m.training and m.p > 0 else None
    if t in (nn.Linear, *_PLAIN_CONVS, *_BATCHNORMS, nn.Flatten, nn.Unflatten) or t in ACTIVATION_RULES:
        return None
    return f"{t.__name__} is not a layer the chain route knows"


def _chain_layers(decoder: object) -> tuple[list[nn.Module] | None, str]:
    """The decoder as a flat list of supported layers, or (None, the reason it is not one)."""
    if isinstance(decoder, nn.Module) and _hooked(decoder):
        return None, "the decoder has hooks, which only its own forward would run"
    if type(decoder) is nn.Sequential:
        todo = list(decoder)
    elif isinstance(decoder, nn.Module) and callable(getattr(decoder, "jacobian_chain", None)):
        todo = list(decoder.jacobian_chain())
    else:
        return None, "the decoder is neither an nn.Sequential nor a module with jacobian_chain()"
    layers: list[nn.Module] = []
    while todo:
        m = todo.pop(0)
        if type(m) is nn.Sequential and not _hooked(m):
            todo[:0] = list(m)
            continue
        why = _chain_unsupported(m) if isinstance(m, nn.Module) else "it is not an nn.Module"
        if why is not None:
            return None, f"layer {len(layers)} ({type(m).__name__}): {why}"
        layers.append(m)
    return layers, ""


def _chain_step(m: nn.Module, x: Tensor) -> tuple[Tensor, tuple[str, object] | None]:
    """One layer's primal output and what it does to tangents: ("map", TangentOp), ("scale", a
    per-channel factor), ("times", an elementwise derivative [B, ...] per example), or None."""
    t = type(m)
    if t is nn.Linear:
        if x.shape[-1] != m.in_features:
            raise ValueError(f"z: the decoder's Linear layer expects {m.in_features} inputs, got shape {tuple(x.shape)}")
        W = m.weight
        return m(x), ("map", lambda T, s, b, k: F.linear(T, W))
    if t in _PLAIN_CONVS:
        return m(x), ("map", lambda T, s, b, k: _conv_linear_part(m, T))
    if t in _BATCHNORMS:
        if m.training or m.running_var is None:  # batch statistics, held constant for the tangent
            mean, var = batch_stats(m, x, 1)
            y = normalise(m, x, mean, var)
        else:
            var, y = m.running_var, m(x)
        scale = torch.rsqrt(var + m.eps)
        return y, ("scale", scale * m.weight if m.affine else scale)
    if t in _IDENTITIES:
        return x, None
    if t is nn.Flatten or t is nn.Unflatten:
        dim = m.start_dim if t is nn.Flatten else m.dim
        if dim % x.dim() == 0:
            raise ValueError(f"decoder: {t.__name__}({dim}) would reshape the batch dimension")
        return m(x), ("map", lambda T, s, b, k: m(T))
    if t in ACTIVATION_RULES:
        y, deriv = ACTIVATION_RULES[t](m, x)
        return y, ("times", deriv)
    raise AssertionError(f"unsupported layer {t.__name__} reached _chain_step")  # _chain_layers filters these


def _tangent_ops(steps: list[tuple[str, object]]) -> list[TangentOp]:
    """The per-layer tangent actions as functions; a BatchNorm scale directly followed by an
    activation is folded into the activation's derivative (one multiplication per tangent, not two)."""
    ops: list[TangentOp] = []
    i = 0
    while i < len(steps):
        kind, v = steps[i]
        if kind == "scale" and i + 1 < len(steps) and steps[i + 1][0] == "times":
            deriv = steps[i + 1][1]
            kind, v, i = "times", deriv * v.reshape(channel_shape(deriv)), i + 1
        if kind == "map":
            ops.append(v)
        elif kind == "scale":
            ops.append(lambda T, s, b, k, a=v: T * a.reshape(channel_shape(T)))
        else:  # "times": one derivative per example, shared by its k tangents
            def times(T: Tensor, s: int, b: int, k: int, deriv: Tensor = v) -> Tensor:
                rest = T.shape[1:]
                return (T.reshape(b, k, *rest) * deriv[s : s + b].unsqueeze(1)).reshape(b * k, *rest)

            ops.append(times)
        i += 1
    return ops


def _columns_chain(layers: list[nn.Module], z: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:
    """Route 3: explicit tangent propagation through a chain of known layers (see above)."""
    B, k, d = tangents.shape
    x, steps = z, []
    for m in layers:
        x, step = _chain_step(m, x)
        if step is not None:
            steps.append(step)
    _check_out(x, B)
    g = x.reshape(B, -1)
    ops = _tangent_ops(steps)
    rows = max(1, CHAIN_ROWS // max(k, 1))
    parts = []
    for s in range(0, B, rows):
        b = min(rows, B - s)
        T = tangents[s : s + b].reshape(b * k, d)
        for op in ops:
            T = op(T, s, b, k)
        parts.append(T.reshape(b, k, -1))
    J = parts[0] if len(parts) == 1 else torch.cat(parts)
    return g, J.transpose(1, 2)


def _check_out(out: object, rows: int) -> None:
    if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != rows:
        raise ValueError(f"decoder: must map [B, d] to [B, ...]; got output of shape {getattr(out, 'shape', None)}")


_METHODS = ("auto", "chain", "forward-ad", "vmap")


def _run_columns(decoder: Decoder, z: Tensor, tangents: Tensor, method: str) -> tuple[Tensor, Tensor]:
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    if method in ("auto", "chain"):
        layers, why = _chain_layers(decoder)
        if layers is not None:
            return _columns_chain(layers, z, tangents)
        if method == "chain":
            raise ValueError(f"method: 'chain' needs a decoder made of known layers; {why}")
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
        method: "chain" (known layers, explicit tangents), "forward-ad" (dual tensors, one pass),
            "vmap" (torch.func), or "auto" (chain when the decoder allows it; see the module docstring).

    Returns:
        ``[B, D, k]`` with ``out[b, :, j] = ∂g(z_b)/∂z_b[columns[b, j]]`` (and g when asked).
    """
    _check_z(z)
    if not isinstance(columns, Tensor) or columns.dtype not in (torch.int64, torch.int32):
        raise TypeError("columns: expected an integer (Long) tensor of shape [B, k]")
    B, d = z.shape
    if columns.dim() != 2 or columns.shape[0] != B or columns.shape[1] < 1:
        raise ValueError(f"columns: expected shape [B={B}, k] with k ≥ 1, got {tuple(columns.shape)}")
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
