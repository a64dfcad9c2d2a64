"""The decoder Jacobian engine: J = ∂g/∂z by forward mode, column by column.

GRAE (Eq. 12/13) needs the whole Jacobian J ∈ ℝ^{D×d} of the decoder at the
encoder mean; GRAE≈ (Eq. 14 and the text after it) needs only k sampled columns
J[:, c]. A column is one Jacobian–vector product (JVP) with a one-hot tangent, so
forward mode costs d JVPs for the whole of J (8–128 here) where reverse mode would
cost D backward passes (784 for MNIST, 12288 for CelebA).

Engine: three routes, chosen by ``method``. "auto" takes "chain" whenever the decoder
is made of pieces it supports, else "forward-ad" for k ≤ 2 columns and "vmap" beyond;
:func:`jacobian_route` says which route a decoder gets and why.

* "chain" (:mod:`gracheck._chain`): explicit tangents through a *plan* of the decoder: the
  layers a module's ``jacobian_chain()`` lists (every decoder in :mod:`gracheck.nets`), or else
  its forward traced with torch.fx, so a user's own forward needs no restating: Linear,
  Conv/ConvTranspose 1-3d, BatchNorm 1-3d, activations as modules, functions or tensor methods
  (ELU, ReLU, LeakyReLU, sigmoid, tanh, softplus, SiLU, GELU, exp), F.linear/F.conv* with the
  module's parameters, view/reshape/flatten/unflatten/permute/transpose, slicing and crops,
  padding, average pooling, interpolation, cat, sums over non-batch dimensions, sums and
  products of values, constant scaling and shifts, nested Sequentials and custom modules. One
  ordinary forward gives g(z) and each node's tangent action; the k tangents then go through
  the weights (no bias) and the derivatives on slices of the batch. The fastest route for full J
  (benchmarks/bench_core.py). With ``method="chain"`` a decoder it cannot take raises a
  ValueError naming the node. Under ``torch.compile`` the route is traced into the compiled graph
  (one graph when the decoder's plan is already cached, e.g. after one eager call; building a
  plan runs eagerly), and the generic routes below run eagerly.
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
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from gracheck._chain import (
    PLAIN_CONVS,
    ChainRefused,
    batch_stats,
    chain_plan,
    conv_linear_part,
    normalise,
    record_refusal,
    restore_running_stats,
    save_running_stats,
)
from gracheck.base.validate import check_tensor

Decoder = Callable[[Tensor], Tensor]


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


# Convolutions under dual tensors. PyTorch's forward-mode rule for convolution evaluates
# conv(x_t, W) + conv(x, W_t) and materialises a zero tangent for a weight that is not dual, so
# every conv layer costs three convolutions forward, and three more in the backward of a training
# step (measured with torch.profiler, torch 2.13: 15 convolution calls for the 5 layers of the
# Appendix D MNIST decoder). Only the input carries a tangent here, so the tangent is the same
# linear map without the bias: conv(x_t, W). Computing it directly takes the GRAE≈ training step
# from 2.8× to 2.2× a plain step (benchmarks/bench_core.py). Applied only to modules whose class
# is exactly a torch convolution (a subclass may override forward; it keeps the generic rule).
def _conv_dual(self: nn.modules.conv._ConvNd, x: Tensor, *args) -> Tensor:
    primal, tangent = fwAD.unpack_dual(x)
    if tangent is None or args:  # no tangent, or ConvTranspose's output_size: the generic rule
        return type(self).forward(self, x, *args)
    return fwAD.make_dual(type(self).forward(self, primal), conv_linear_part(self, tangent))


@contextlib.contextmanager
def _patched_convs(module: object) -> Iterator[None]:
    patched: list[nn.Module] = []
    if isinstance(module, nn.Module):
        for m in module.modules():
            if type(m) in PLAIN_CONVS and "forward" not in m.__dict__:
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


_METHODS = ("auto", "chain", "forward-ad", "vmap")


def _fallback(k: int) -> str:
    # Measured on the paper's MNIST decoder (benchmarks/bench_core.py): dual tensors win for one or
    # two columns (no separate primal pass), vmap wins beyond (the primal is not repeated k times).
    return "forward-ad" if k <= 2 else "vmap"


@dataclass(frozen=True)
class JacobianRoute:
    """Which route ``method="auto"`` takes for a decoder, and why (see :func:`jacobian_route`).

    ``method``: "chain", or the generic route it falls back to ("forward-ad" for k ≤ 2 columns,
    "vmap" beyond). ``plan``: how the chain was obtained ("jacobian_chain()" or "torch.fx trace of
    its forward"), None without one. ``reason``: why the chain route does not take the decoder
    ("" when it does). ``nodes``: the chain's z-dependent nodes in order (empty without one).
    """

    method: str
    plan: str | None
    reason: str
    nodes: tuple[str, ...] = ()


def jacobian_route(decoder: Decoder, z: Tensor | None = None, *, k: int | None = None) -> JacobianRoute:
    """The route ``method="auto"`` takes for ``decoder``, and why.

    Without ``z`` only the decoder's structure is examined (tracing uses a stand-in input of shape
    ``[2, d]`` with d read from a first Linear layer, else 1). With ``z [B, d]`` the plan is also
    run once on it without gradients (running statistics restored), so refusals that depend on the
    input (e.g. a reshape that would mix examples at this batch size) are found too.
    ``k``: columns per example (None: the full Jacobian, k = d; d > 2 when z is not given).
    """
    if z is None:
        zz = torch.zeros(2, _guess_d(decoder))
    else:
        _check_z(z)
        zz = z
    kk = k if k is not None else (zz.shape[1] if z is not None else 3)
    plan, why, key = chain_plan(decoder, zz)
    if plan is not None and z is not None:
        with torch.no_grad():
            saved = save_running_stats(plan.batchnorms)
            try:
                plan.run(decoder, z, torch.zeros(z.shape[0], 1, dtype=torch.long, device=z.device))
            except ChainRefused as e:
                why = str(e)
                plan = None
            finally:
                restore_running_stats(saved)
    if plan is None:
        return JacobianRoute(_fallback(kk), None, why)
    return JacobianRoute("chain", plan.source, "", plan.describe())


def _guess_d(decoder: object) -> int:
    if isinstance(decoder, nn.Module):
        for m in decoder.modules():
            if isinstance(m, nn.Linear):
                return m.in_features
    return 1


@torch.compiler.disable
def _chain_plan_eager(decoder: Decoder, z: Tensor):
    return chain_plan(decoder, z)


def _plan(decoder: Decoder, z: Tensor):
    # Under torch.compile a cached plan is looked up inside the traced code (dynamo then guards on the
    # decoder's modules, modes and attributes, as the fingerprint reads them, so a change recompiles);
    # building a plan (fx tracing) runs eagerly, a graph break on the first compile only. The plan's
    # evaluation, the objective and the backward are compiled (benchmarks/bench_jax.py).
    if not torch.compiler.is_compiling():
        return chain_plan(decoder, z)
    plan, why, key = chain_plan(decoder, z, build=False)
    return _chain_plan_eager(decoder, z) if why is None else (plan, why, key)


# The generic routes run eagerly under torch.compile (torch.func transforms inside a compiled region
# are not reliable in torch 2.13, e.g. vmap over jvp through layer_norm fails while tracing).
_forward_ad_eager = torch.compiler.disable(lambda decoder, z, tangents: _columns_forward_ad(decoder, z, tangents))
_vmap_eager = torch.compiler.disable(lambda decoder, z, tangents: _columns_vmap(decoder, z, tangents))


def _run_columns(decoder: Decoder, z: Tensor, columns: Tensor, method: str) -> tuple[Tensor, Tensor]:
    """g ``[B, D]`` and the columns ``[B, D, k]`` of J at ``columns [B, k]`` by the chosen route."""
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    if method in ("auto", "chain"):
        plan, why, key = _plan(decoder, z)
        if plan is not None:
            try:
                return plan.run(decoder, z, columns)
            except ChainRefused as e:
                why = str(e)
                record_refusal(decoder, key, why)
        if method == "chain":
            raise ValueError(f"method: 'chain' needs a decoder made of supported pieces; {why}")
        method = _fallback(columns.shape[1])
    tangents = F.one_hot(columns, z.shape[1]).to(z.dtype)  # [B, k, d]
    if torch.compiler.is_compiling():
        return (_forward_ad_eager if method == "forward-ad" else _vmap_eager)(decoder, z, tangents)
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
        method: "chain" (supported pieces, explicit tangents), "forward-ad" (dual tensors, one pass),
            "vmap" (torch.func), or "auto" (chain when the decoder allows it; see :func:`jacobian_route`).

    Returns:
        ``[B, D, k]`` with ``out[b, :, j] = ∂g(z_b)/∂z_b[columns[b, j]]`` (and g when asked).
    """
    _check_z(z)
    if not isinstance(columns, Tensor) or columns.dtype not in (torch.int64, torch.int32):
        raise TypeError("columns: expected an integer (Long) tensor of shape [B, k]")
    B, d = z.shape
    if columns.dim() != 2 or columns.shape[0] != B or columns.shape[1] < 1:
        raise ValueError(f"columns: expected shape [B={B}, k] with k ≥ 1, got {tuple(columns.shape)}")
    if columns.numel() and not torch.compiler.is_compiling() and (int(columns.min()) < 0 or int(columns.max()) >= d):
        raise ValueError(f"columns: indices must lie in [0, {d}), got range [{int(columns.min())}, {int(columns.max())}]")
    g, cols = _run_columns(decoder, z, columns.long().to(z.device), method)
    return (g, cols) if return_output else cols


def decoder_jacobian(
    decoder: Decoder, z: Tensor, *, return_output: bool = False, method: str = "auto"
) -> Tensor | tuple[Tensor, Tensor]:
    """The full decoder Jacobian J_g(z) ``[B, D, d]`` by d forward-mode JVPs (Eq. 11–13).

    ``return_output=True`` also returns g(z) ``[B, D]``; ``method`` as in :func:`jacobian_columns`.
    """
    _check_z(z)
    B, d = z.shape
    columns = torch.arange(d, device=z.device).expand(B, d)
    g, J = _run_columns(decoder, z, columns, method)
    return (g, J) if return_output else J
