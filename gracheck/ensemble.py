"""Many models as one computation: M models of one architecture trained as one batched step (issue 14).

The paper's grids are many small independent models (Fig. 3: b ∈ {1, 2, 3} × a β grid; Fig. 4:
10 β × 2 objectives × 5 runs). :func:`train_ensemble` trains M :class:`~gracheck.train.TrainConfig`s
that differ only in ``beta``, ``posterior``/``block`` (β-VAE) or ``seed`` as one computation: every
layer runs once for all M models, on parameters stacked along a leading model dimension, and one
Adam step updates all of them. Each model keeps its own BatchNorm statistics, Adam moments and
random streams (data order, reparameterisation noise, GRAE≈ columns), so each ends as the model
:func:`gracheck.train.train` trains from its own config alone (see "Equality" below). Configs that
cannot share one computation (any other field differs) are refused with a ValueError naming the field.

How the layers are batched (explicit batching, chosen by measurement on this CPU; torch 2.13, MKL, AVX2):

* Linear: batched GEMMs (``baddbmm``/``bmm``) on weights ``[M, out, in]`` and activations
  ``[M, B, in]``, in a custom autograd function whose backward forms the single model's products in
  the single model's orientation (autograd's ``mm`` backward forms a column-major weight's gradient as
  ``gradᵀ @ x``; ``bmm``'s own backward forms ``xᵀ @ grad`` and transposes it, which differs in the
  last bits for some sizes). Batched and per-model GEMMs agree bitwise for many shapes but not all
  (measured over 7128 (shape, threads) cases: 911 differ, e.g. 5 rows on 2 threads), so each GEMM shape
  is probed once per process against the single model's ``addmm``/``mm`` and runs batched only if it
  agrees, else model by model on 64-byte-aligned operands (a model's slice of a stacked tensor need not
  start where a tensor of its own would, and MKL takes other paths for displaced operands; measured).
  At every smoke-scale shape the batched form agrees. ``torch.func.stack_module_state`` +
  ``functional_call`` + ``vmap`` was measured as the alternative: ``vmap(F.linear)`` runs ``matmul``
  then adds the bias and differs from ``addmm`` in the last bit whenever the contraction is long
  (784 → 128); and vmap over models does not compose with the engine's public ``jacobian_columns``
  (it validates the column indices with ``.item()``, which vmap refuses; checked).
* Convolutions and BatchNorm: ``conv="per-model"`` (CPU default) runs them model by model on each
  model's own tensors (the "list" layout), i.e. the single model's ops and also its autograd graph:
  computing the M models' BatchNorm statistics from slices of one tensor regroups the gradient
  contributions of mean, variance and normalisation and changes the last bits (measured).
  ``conv="grouped"`` (CUDA default) uses the layout ``[B, M·C, H, W]`` (model m owns the channel block
  [mC, (m+1)C)): one grouped convolution (``groups = M``) and one BatchNorm over M·C channels per
  layer, one launch instead of M. oneDNN picks another kernel for a grouped convolution, whose sums
  differ from the ungrouped one in the last bits (measured: up to 1e-5 absolute on the App. D MNIST
  layers), and on this CPU a grouped convolution is not faster than M ordinary ones (measured at
  width 1/16 and 1/4: within ±30% per layer, either way).
* Elementwise ops (activations, the objectives' logs) run on the stacked tensor. PyTorch's CPU
  kernels compute transcendental functions (exp in ELU, sigmoid, softplus, log1p) with a
  vectorised routine in blocks of 2 SIMD vectors and with a scalar routine for the remainder of
  each block (and of each thread's chunk); the two differ in the last bit. A model's elements then
  land on the same routine as in the single model only when both tensor sizes fill whole blocks.
  :func:`_batched_ok` checks this exactly (SIMD width from ``torch.backends.cpu``, threads, and the
  32768-element grain at which PyTorch splits work between threads) and otherwise applies the op to
  each model's slice (M calls). With batch sizes that are multiples of 32 the batched call is used.
* The decoder Jacobian columns of GRAE≈ / GRAE are propagated layer by layer exactly as the
  engine's "chain" route does on a declared chain (its fixed schedule, :mod:`gracheck._chain`: one
  primal forward, BatchNorm statistics
  held constant for the tangents and folded into the next activation's derivative, the k tangents
  of each example through the weights without bias, in slices of the same number of rows), using
  the engine's own activation-derivative table and BatchNorm statistics functions on the stacked
  layers. The single trainer takes that route for every decoder in :mod:`gracheck.nets` (on CPU),
  so the columns are bitwise the same. vmap over models does not compose with the engine's public
  entry point ``jacobian_columns`` (it validates the column indices with ``int(columns.min())``,
  which a batched tensor refuses), which is one more reason for explicit batching.
* Posterior structure: the scale head's size differs between mean-field (d outputs), block-diagonal
  (Σ b(b+1)/2 per block) and full posteriors. The models are *grouped by head shape* for that one
  layer (one batched GEMM per distinct structure, each followed by
  :func:`gracheck.posteriors.scale_tril_from_params` for its structure); everything else stays one
  computation. Padding every head to the largest with masking would keep a single GEMM but change
  its N dimension (and with it the GEMM kernel's blocking, so the bits), waste FLOPs, and still need
  one parameter-to-Cholesky map per structure; the head is < 0.5% of a step, so grouping costs nothing.

Equality with one-at-a-time training. On CPU with ``deterministic=True`` each model's parameters,
BatchNorm buffers, Adam state, random-generator state, logged terms (log.csv) and held-out
evaluations (eval.jsonl) are bitwise equal to :func:`gracheck.train.train` on its config, same
machine and thread count (``tests/test_ensemble.py`` checks β-VAE with mean-field, block-diagonal
and full posteriors in one ensemble, GRAE≈ and GRAE, MLP and conv, sizes that trigger every per-model
fallback, 1 and 2 threads). What breaks bitwise equality, and where: ``conv="grouped"`` (oneDNN's
grouped kernels, above; the tests bound the difference by the tolerance
``ensemble-grouped-conv-float32``); any CUDA run (cuBLAS/cuDNN choose kernels by shape; no bitwise
promise, as for the trainer; ``tests/test_gpu.py`` compares CUDA with CPU in float64); and bf16
autocast (CUDA; the single trainer's AMP decoder takes the engine's forward-AD route, the ensemble
its chain route). Mixed objectives (β-VAE with GRAE≈) are separate ensembles.

Speed (``benchmarks/bench_ensemble.py``, results/bench_ensemble-cpu.json): on this 2-core CPU, one
thread, 8 smoke-size models train as one ensemble 1.7-1.8× faster than one after the other (whole
runs, files included). The batching saves per-op dispatch; the FLOPs, the elementwise Adam update and
the NaN/Inf checks scale with M, so a CPU gains little more. On a GPU the saving is the launch count.

Random streams per model, as the trainer's: data order from ``BatchStream(n, B, seed)``; posterior
noise (``torch.randn((n, B, d))``) and GRAE≈ columns (:func:`gracheck.objectives.sample_columns`)
from the model's own generator seeded from ``("noise", seed, 0)``; initialisation from
``build_model(config)``; evaluation noise from ``("eval", seed)``. Nothing reads the global RNG.

Files. ``out_dir`` holds the ensemble: ``ensemble.json`` (the configs, model folders, conv mode),
atomic checkpoints ``ckpt-*.pt`` of the whole ensemble (stacked weights and buffers, Adam state,
every generator's state, the step, per-model metrics; the last ``keep_checkpoints``), ``latest``
and, when complete, ``result.json`` (:class:`EnsembleResult`). Each model has its own folder
(``model_dirs``; default ``out_dir/models/NNN``) in the trainer's formats: ``config.json``,
``log.csv``/``log.jsonl`` (every step), ``eval.csv``/``eval.jsonl``, and at the end a trainer
checkpoint (weights, its Adam state, its generator state) that :func:`gracheck.train.load_checkpoint`
loads and :func:`gracheck.train.train` can resume or extend alone, plus ``result.json`` (a
:class:`~gracheck.train.TrainResult`; ``seconds`` is the model's share, total/M, of the ensemble's
wall time) and ``ensemble-member.json`` (which ensemble, which index, the total time). A cache keyed
by config (``experiments/_zoo.model_dir``) can thus pass its folders as ``model_dirs`` and pick each
model up as if trained alone. Intermediate checkpoints live only in ``out_dir``.

Deadline: under :func:`gracheck.base.deadline.deadline` (the report's ``--budget``) the loop checks after
every step; once the deadline has passed it writes an ensemble checkpoint of that step and raises
:class:`gracheck.base.deadline.DeadlineReached` (no member export); ``resume=True`` continues from it.

Resume: ``resume=True`` continues from the newest readable ensemble checkpoint (a corrupt newest one
is named in a warning and the previous one is used); killed at any step (SIGKILL) and resumed, the
ensemble ends bitwise equal on CPU to an uninterrupted run (tested). Checkpoint reading and writing
sit in one section below (``_write_ensemble_checkpoint``, ``_read_ensemble_checkpoint``) so that the
payload digests, run-folder lock and signal handling being added to :mod:`gracheck.train` can be
adopted in one place.

Cost model (for planning runs): :func:`step_flops` counts the FLOPs of one ensemble step
(``torch.utils.flop_counter``: matmul/conv FLOPs of forward, tangents and backward) and
:func:`time_steps` runs N steps on synthetic data and reports the measured time per step.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from gracheck import nets, posteriors
from gracheck.base import deadline as _deadline
from gracheck.base.files import atomic_write_bytes, atomic_write_text
from gracheck.base.stats import derive_seed
from gracheck import train as _tr
from gracheck._chain import ACTIVATION_RULES, CHAIN_ROWS, batch_stats, channel_shape, normalise
from gracheck.objectives import grae_regularizer, hadamard_bound, sample_columns
from gracheck.posteriors import GaussianPosterior
from gracheck.train import CheckpointError, ConfigMismatchError, TrainConfig, TrainingDiverged, TrainResult

__all__ = [
    "CONV_MODES",
    "VARYING",
    "Ensemble",
    "EnsembleDiverged",
    "EnsembleResult",
    "EnsembleRun",
    "check_configs",
    "load_ensemble_checkpoint",
    "step_flops",
    "time_steps",
    "train_ensemble",
]

VARYING = ("beta", "posterior", "block", "seed")  # the only TrainConfig fields the models of one ensemble may differ in
CONV_MODES = ("auto", "per-model", "grouped")
ENSEMBLE_FORMAT = "gracheck-ensemble/1"
ECKPT_FORMAT = "gracheck-ensemble-checkpoint/1"
_CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")


# ---------------------------------------------------------------------------------- configs


def check_configs(configs: Sequence[TrainConfig]) -> tuple[TrainConfig, ...]:
    """The configs as a tuple, after checking that they can share one computation.

    Raises TypeError for a non-sequence or a non-TrainConfig entry, and ValueError naming the first
    field outside :data:`VARYING` whose value differs between two configs (e.g. ``lr``, ``hidden``,
    ``model``, ``steps``), or for an empty sequence.
    """
    if isinstance(configs, (TrainConfig, str, bytes)) or not isinstance(configs, Sequence):
        raise TypeError(f"configs: expected a sequence of TrainConfig, got {type(configs).__name__}")
    cfgs = tuple(configs)
    if not cfgs:
        raise ValueError("configs: an ensemble needs at least one config, got none")
    for i, c in enumerate(cfgs):
        if not isinstance(c, TrainConfig):
            raise TypeError(f"configs[{i}]: expected a TrainConfig, got {type(c).__name__}")
    ref = cfgs[0].to_dict()
    for i, c in enumerate(cfgs[1:], 1):
        for k, v in c.to_dict().items():
            if k not in VARYING and v != ref[k]:
                raise ValueError(
                    f"{k}: configs[0] has {ref[k]!r}, configs[{i}] has {v!r}; the models of one ensemble "
                    f"share one computation and may differ only in {', '.join(VARYING)}"
                )
    return cfgs


def _resolve_conv(conv: str, device: torch.device) -> str:
    if conv not in CONV_MODES:
        raise ValueError(f"conv: expected one of {CONV_MODES}, got {conv!r}")
    if conv == "auto":
        return "grouped" if device.type == "cuda" else "per-model"
    return conv


# ---------------------------------------------------------------------------------- layouts
#
# An activation is one of
#   "mm"   model-major [M, R, ...]: Linear layers (a batched GEMM over the model dimension);
#   "grp"  grouped [R, M·C, ...]: convolutions and BatchNorm with conv="grouped" (model m owns channels
#          [mC, (m+1)C)), one grouped convolution / one BatchNorm over M·C channels;
#   "list" M separate tensors [R, C, ...]: convolutions and BatchNorm with conv="per-model", i.e. the
#          single model's own ops on each model's tensors (also its autograd graph, hence the order in
#          which gradient contributions are summed: a shared slicing node in front of the BatchNorm
#          statistics, for instance, regroups those sums and changes the last bits; measured).
# R is the batch, or for tangents the (example, column) rows.


@dataclasses.dataclass
class _A:
    t: Tensor | list[Tensor]
    kind: str  # "mm" | "grp" | "list"


_ALIGN = 64  # bytes: PyTorch's CPU allocator aligns every tensor to 64 bytes


def _aligned(t: Tensor) -> Tensor:
    """``t`` itself when its data starts on a 64-byte boundary (or on CUDA), else a differentiable copy that does.

    A tensor of its own starts on such a boundary, a model's slice of a stacked tensor need not; MKL's and
    oneDNN's kernels take other paths for displaced operands (measured: an input shifted by 4 or 8 bytes
    changes the last bits of x @ Wᵀ for narrow outputs)."""
    if t.device.type != "cpu" or t.data_ptr() % _ALIGN == 0:
        return t
    return t.clone()


def _mm(a: _A, M: int) -> Tensor:
    """``a`` as model-major ``[M, R, ...]``."""
    if a.kind == "mm":
        return a.t
    if a.kind == "list":
        return torch.stack(a.t)
    t = a.t
    return t.reshape(t.shape[0], M, t.shape[1] // M, *t.shape[2:]).transpose(0, 1).contiguous()


def _grp(a: _A, M: int) -> Tensor:
    """``a`` as grouped ``[R, M·C, ...]``."""
    if a.kind == "grp":
        return a.t
    if a.kind == "list":
        return torch.cat(a.t, 1)
    t = a.t
    return t.transpose(0, 1).reshape(t.shape[1], M * t.shape[2], *t.shape[3:]).contiguous()


def _lst(a: _A, M: int) -> list[Tensor]:
    """``a`` as M tensors ``[R, C, ...]``, each aligned as a tensor of its own."""
    if a.kind == "list":
        return a.t
    if a.kind == "mm":
        return [_aligned(t) for t in a.t.unbind(0)]
    t = a.t
    C = t.shape[1] // M
    return [t[:, m * C : (m + 1) * C].contiguous() for m in range(M)]


def _section(a: _A, M: int, kind: str) -> Tensor | list[Tensor]:
    return _lst(a, M) if kind == "list" else _grp(a, M)


_GRAIN = 32768  # at::internal::GRAIN_SIZE: elementwise kernels split work between threads above this size


def _block(dtype: torch.dtype) -> int:
    """Elements per iteration of PyTorch's vectorised CPU loop (2 SIMD vectors; the remainder is scalar)."""
    width = 64 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 32
    return max(1, 2 * width // torch.empty((), dtype=dtype).element_size())


def _all_vector(n: int, block: int, threads: int) -> bool:
    """Whether every element of an n-element contiguous elementwise op goes through the vectorised routine."""
    if n % block:
        return False
    if n >= _GRAIN and threads > 1:
        chunks = min(threads, -(-n // _GRAIN))
        return (-(-n // chunks)) % block == 0
    return True


def _batched_ok(t: Tensor, M: int) -> bool:
    """Whether an elementwise op on the stacked ``t`` gives each model's elements bitwise its single-model values."""
    if M == 1 or t.device.type != "cpu":
        return True
    blk, thr = _block(t.dtype), torch.get_num_threads()
    return _all_vector(t.numel() // M, blk, thr) and _all_vector(t.numel(), blk, thr)


def _elementwise(fn: Callable, a: _A, M: int):
    """``fn`` applied to ``a`` in its layout: once on the stacked tensor, or per model when the stacked call could
    change the bits (and always per model for the "list" layout). Returns a tensor, a list, or a tuple of them."""
    if a.kind == "list":
        outs = [fn(t) for t in a.t]
        if isinstance(outs[0], tuple):
            return tuple([o[i] for o in outs] for i in range(len(outs[0])))
        return outs
    t = a.t
    if _batched_ok(t, M):
        return fn(t)
    if a.kind == "grp":
        C = t.shape[1] // M
        outs = [fn(t[:, m * C : (m + 1) * C].contiguous()) for m in range(M)]
        join = lambda xs: torch.cat(xs, 1)  # noqa: E731
    else:
        outs = [fn(_aligned(t[m])) for m in range(M)]
        join = torch.stack
    if isinstance(outs[0], tuple):
        return tuple(join([o[i] for o in outs]) for i in range(len(outs[0])))
    return join(outs)


def _per_model(fn: Callable, M: int, probe: Tensor, *args: Tensor) -> Tensor:
    """``fn`` on model-major ``args`` at once when its elementwise work on ``probe``'s size keeps each model's bits
    (see :func:`_batched_ok`), else model by model, stacked."""
    if _batched_ok(probe, M):
        return fn(*args)
    return torch.stack([fn(*(a[m] for a in args)) for m in range(M)])


# ---------------------------------------------------------------------------------- batched GEMMs
#
# The single model's Linear is F.linear = addmm(b, x, Wᵀ) (mm without a bias), and its backward forms
# grad @ W and gradᵀ @ x (autograd's mm_mat1/mm_mat2_backward for the column-major Wᵀ). The batched
# forms (baddbmm/bmm over the model dimension) give each model bitwise those results for many shapes
# but not all (measured on this CPU over 7128 (shape, threads) cases: MKL blocks a batched GEMM
# differently for some sizes, e.g. 5 rows on 2 threads, or a one-wide contraction). So each GEMM shape
# is probed once per process: the batched form against the per-model form on random inputs of that
# shape, dtype and thread count; a shape that agrees bitwise runs batched from then on, one that does not
# runs model by model on aligned operands (the single model's own call). Different code paths sum in
# different orders and differ on random data of this size with overwhelming probability, so a probe
# that agrees means the same path. CUDA runs batched (no bitwise promise there).

_GEMM_EXACT: dict[tuple, bool] = {}


def _gemm(kind: str, a: Tensor, b: Tensor, bias: Tensor | None = None, *, probe: bool = True) -> Tensor:
    """One of the four per-model GEMMs of a Linear layer on stacked operands; ``[M, ...]`` out.

    kind "fwd": a = x [M, R, in], b = W [M, out, in] → x @ Wᵀ (+ bias [M, out]); "gx": a = grad [M, R, out],
    b = W → grad @ W; "gW": a = grad, b = x [M, R, in] → gradᵀ @ x.
    """
    def batched():
        if kind == "fwd":
            Wt = b.transpose(1, 2)
            return torch.baddbmm(bias.unsqueeze(1), a, Wt) if bias is not None else torch.bmm(a, Wt)
        if kind == "gx":
            return torch.bmm(a, b)
        return torch.bmm(a.transpose(1, 2), b)

    M = a.shape[0]
    if a.device.type != "cpu" or M == 1 or not probe:
        return batched()
    key = (kind, tuple(a.shape), tuple(b.shape), bias is not None, a.dtype, torch.get_num_threads(),
           torch.backends.cpu.get_cpu_capability())
    if key not in _GEMM_EXACT:
        g = torch.Generator().manual_seed(0)
        pa = torch.randn(a.shape, generator=g, dtype=a.dtype)
        pb = torch.randn(b.shape, generator=g, dtype=b.dtype)
        pbias = None if bias is None else torch.randn(bias.shape, generator=g, dtype=bias.dtype)
        got = _gemm(kind, pa, pb, pbias, probe=False)
        ref = torch.stack([_gemm_single(kind, pa[m].clone(), pb[m].clone(), None if pbias is None else pbias[m].clone())
                           for m in range(M)])
        _GEMM_EXACT[key] = bool(torch.equal(got, ref))
    if _GEMM_EXACT[key]:
        return batched()
    return torch.stack([_gemm_single(kind, _aligned(a[m]), _aligned(b[m]), None if bias is None else _aligned(bias[m]))
                        for m in range(M)])


def _gemm_single(kind: str, a: Tensor, b: Tensor, bias: Tensor | None) -> Tensor:
    """The single model's GEMM (F.linear's addmm/mm and their backward's mm) on one model's operands."""
    if kind == "fwd":
        return torch.addmm(bias, a, b.t()) if bias is not None else torch.mm(a, b.t())
    if kind == "gx":
        return torch.mm(a, b)
    return torch.mm(a.t(), b)


class _LinearFn(torch.autograd.Function):
    """Per model ``x @ Wᵀ + b`` on ``x [M, R, in]``, ``W [M, out, in]``, ``b [M, out]`` (or None).

    Forward and backward are the single model's GEMMs in the single model's orientation (:func:`_gemm`):
    for F.linear the weight enters addmm/mm as the column-major ``Wᵀ``, so autograd forms its gradient
    as ``gradᵀ @ x``; bmm's own backward would form ``xᵀ @ grad`` and transpose it, which differs in the
    last bits for some sizes (measured). Not twice differentiable: nothing here needs it (the chain
    route's tangents are explicit ops, and a training step differentiates them once).
    """

    @staticmethod
    def forward(ctx, x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        ctx.dtypes = (x.dtype, W.dtype, None if b is None else b.dtype)
        dev = x.device.type
        if torch.is_autocast_enabled(dev):  # as addmm/mm under autocast: compute in the autocast dtype
            dt = torch.get_autocast_dtype(dev)
            x, W, b = x.to(dt), W.to(dt), None if b is None else b.to(dt)
        x = x.contiguous()
        ctx.save_for_backward(x, W)
        ctx.has_bias = b is not None
        with torch.autocast(dev, enabled=False):
            return _gemm("fwd", x, W, b)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, W = ctx.saved_tensors
        grad = grad.to(x.dtype).contiguous()
        dx, dW, db = ctx.dtypes
        gx = _gemm("gx", grad, W).to(dx) if ctx.needs_input_grad[0] else None
        gW = _gemm("gW", grad, x).to(dW) if ctx.needs_input_grad[1] else None
        gb = grad.sum(1).to(db) if ctx.has_bias and ctx.needs_input_grad[2] else None  # addmm's bias: sum over the batch
        return gx, gW, gb


# ---------------------------------------------------------------------------------- stacked layers
#
# Each layer holds the parameters of its rows (models) stacked along dim 0 under the single model's
# attribute names, runs an ordinary forward (``forward``) and the chain route's primal + tangent
# action (``chain``), mirroring the rules of gracheck._chain on a declared chain.

TangentOp = Callable[[_A, int, int, int], _A]


class _Stacked(nn.Module):
    """Base: ``prefix`` is the layer's name in the single model's state dict (e.g. ``encoder.body.0.``)."""

    prefix: str = ""
    tensor_names: tuple[str, ...] = ()

    def chain(self, a: _A) -> tuple[_A, tuple[str, object] | None]:
        return self(a), None


class _SLinear(_Stacked):
    tensor_names = ("weight", "bias")

    def __init__(self, mods: Sequence[nn.Linear], M: int) -> None:
        super().__init__()
        if any(m.bias is None for m in mods):
            raise ValueError("model: the ensemble supports Linear layers with a bias only")
        self.M = M
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in mods]).clone())
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in mods]).clone())

    def forward(self, a: _A) -> _A:
        return _A(self.linear(_mm(a, self.M)), "mm")

    def linear(self, x: Tensor) -> Tensor:
        """Model-major ``x [rows, R, in]`` → ``[rows, R, out]`` (the head groups call this directly)."""
        return _LinearFn.apply(x, self.weight, self.bias)

    def chain(self, a):
        W = self.weight
        return self(a), ("map", lambda T, s, b, k: _A(_LinearFn.apply(_mm(T, self.M), W, None), "mm"))


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class _SConv(_Stacked):
    tensor_names = ("weight", "bias")

    def __init__(self, mods: Sequence[nn.modules.conv._ConvNd], M: int, mode: str) -> None:
        super().__init__()
        m0 = mods[0]
        if m0.bias is None or m0.padding_mode != "zeros" or isinstance(m0.padding, str):
            raise ValueError(f"model: unsupported convolution {m0!r} (needs a bias, zero padding given as numbers)")
        self.M, self.kind = M, "list" if mode == "per-model" else "grp"
        self.transposed = isinstance(m0, nn.modules.conv._ConvTransposeNd)
        self.nd = len(m0.kernel_size)
        self.stride, self.padding, self.dilation, self.groups = m0.stride, m0.padding, m0.dilation, m0.groups
        self.output_padding = m0.output_padding
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in mods]).clone())
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in mods]).clone())

    def _one(self, x: Tensor, W: Tensor, b: Tensor | None, groups: int) -> Tensor:
        # nn.ConvNd.forward (and, without the bias, gracheck._chain.conv_linear_part)
        if self.transposed:
            return _CONV_T[self.nd](x, W, b, self.stride, self.padding, self.output_padding, groups, self.dilation)
        return _CONV[self.nd](x, W, b, self.stride, self.padding, self.dilation, groups)

    def _run(self, a: _A, bias: bool) -> _A:
        M, W = self.M, self.weight
        x = _section(a, M, self.kind)
        if self.kind == "grp":
            b = self.bias.reshape(-1) if bias else None
            return _A(self._one(x, W.reshape(M * W.shape[1], *W.shape[2:]), b, self.groups * M), "grp")
        return _A([self._one(x[m], _aligned(W[m]), _aligned(self.bias[m]) if bias else None, self.groups)
                   for m in range(M)], "list")

    def forward(self, a: _A) -> _A:
        return self._run(a, True)

    def chain(self, a):
        return self(a), ("map", lambda T, s, b, k: self._run(T, False))


class _SBatchNorm(_Stacked):
    tensor_names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def __init__(self, mods: Sequence[nn.modules.batchnorm._BatchNorm], M: int, mode: str) -> None:
        super().__init__()
        m0 = mods[0]
        if not (m0.affine and m0.track_running_stats) or m0.momentum is None:
            raise ValueError(f"model: unsupported BatchNorm {m0!r} (needs affine, running statistics, a momentum)")
        self.M, self.kind, self.eps, self.momentum = M, "list" if mode == "per-model" else "grp", m0.eps, m0.momentum
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in mods]).clone())
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in mods]).clone())
        self.register_buffer("running_mean", torch.stack([m.running_mean for m in mods]).clone())
        self.register_buffer("running_var", torch.stack([m.running_var for m in mods]).clone())
        self.register_buffer("num_batches_tracked", torch.stack([m.num_batches_tracked for m in mods]).clone())

    def _proxy(self, m: int | None):
        """What gracheck._chain.batch_stats/normalise read from a BatchNorm module: one model's, or all (flattened)."""
        sl = (lambda t: t.reshape(-1)) if m is None else (lambda t: t[m])
        w = (lambda t: t.reshape(-1)) if m is None else (lambda t: _aligned(t[m]))
        return types.SimpleNamespace(
            track_running_stats=True, momentum=self.momentum, eps=self.eps, affine=True,
            running_mean=sl(self.running_mean), running_var=sl(self.running_var),
            num_batches_tracked=self.num_batches_tracked if m is None else self.num_batches_tracked[m],
            weight=w(self.weight), bias=w(self.bias),
        )

    def forward(self, a: _A) -> _A:
        # nn.BatchNorm's training forward: count the batch, then F.batch_norm updates the running statistics in place
        x = _section(a, self.M, self.kind)
        self.num_batches_tracked.add_(1)
        if self.kind == "grp":
            return _A(F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1), self.weight.view(-1),
                                   self.bias.view(-1), True, self.momentum, self.eps), "grp")
        return _A([F.batch_norm(x[m], self.running_mean[m], self.running_var[m], _aligned(self.weight[m]),
                                _aligned(self.bias[m]), True, self.momentum, self.eps) for m in range(self.M)], "list")

    def chain(self, a):
        # the engine's chain step for a training-mode BatchNorm: batch statistics (constants for the
        # tangent), running statistics updated once, tangent scale rsqrt(var + eps)·weight
        x = _section(a, self.M, self.kind)
        if self.kind == "grp":
            p = self._proxy(None)
            mean, var = batch_stats(p, x, 1)
            return _A(normalise(p, x, mean, var), "grp"), ("scale", torch.rsqrt(var + self.eps) * p.weight)
        ys, scales = [], []
        for m in range(self.M):
            p = self._proxy(m)
            mean, var = batch_stats(p, x[m], 1)
            ys.append(normalise(p, x[m], mean, var))
            scales.append(torch.rsqrt(var + self.eps) * p.weight)
        return _A(ys, "list"), ("scale", scales)


class _SAct(_Stacked):
    """An elementwise activation (or Identity) from the engine's table."""

    def __init__(self, mod: nn.Module, M: int) -> None:
        super().__init__()
        self.mod, self.M = mod, M

    def forward(self, a: _A) -> _A:
        if type(self.mod) is nn.Identity:
            return a
        return _A(_elementwise(self.mod, a, self.M), a.kind)

    def chain(self, a):
        if type(self.mod) is nn.Identity:
            return a, None
        fn = ACTIVATION_RULES[type(self.mod)]
        y, deriv = _elementwise(lambda t: fn(self.mod, t), a, self.M)
        return _A(y, a.kind), ("times", _A(deriv, a.kind))


class _SUnflatten(_Stacked):
    def __init__(self, mod: nn.Unflatten, M: int) -> None:
        super().__init__()
        if mod.dim != 1:
            raise ValueError(f"model: unsupported {mod!r} (the ensemble reshapes dimension 1 only)")
        self.shape, self.M = tuple(mod.unflattened_size), M

    def forward(self, a: _A) -> _A:
        if a.kind == "list":
            return _A([t.reshape(t.shape[0], *self.shape) for t in a.t], "list")
        t = a.t
        if a.kind == "grp":
            return _A(t.reshape(t.shape[0], self.M * self.shape[0], *self.shape[1:]), "grp")
        return _A(t.reshape(t.shape[0], t.shape[1], *self.shape), "mm")

    def chain(self, a):
        return self(a), ("map", lambda T, s, b, k: self(T))


class _SFlatten(_Stacked):
    """The conv encoder's ``features(x).flatten(1)``: to model-major ``[M, R, C·H·W]``."""

    def __init__(self, M: int) -> None:
        super().__init__()
        self.M = M

    def forward(self, a: _A) -> _A:
        t = _mm(a, self.M)
        return _A(t.reshape(t.shape[0], t.shape[1], -1), "mm")


def _times(T: _A, s: int, b: int, k: int, d: _A, M: int) -> _A:
    """The engine's "times" tangent op (one derivative per example, shared by its k tangent rows) in d's layout."""
    if d.kind == "list":
        out = []
        for t, dm in zip(_lst(T, M), d.t):
            rest = t.shape[1:]
            out.append((t.reshape(b, k, *rest) * dm[s : s + b].unsqueeze(1)).reshape(b * k, *rest))
        return _A(out, "list")
    if d.kind == "grp":  # rows (example, column) lead, as in the engine
        t = _grp(T, M)
        rest = t.shape[1:]
        return _A((t.reshape(b, k, *rest) * d.t[s : s + b].unsqueeze(1)).reshape(b * k, *rest), "grp")
    t = _mm(T, M)
    rest = t.shape[2:]
    return _A((t.reshape(M, b, k, *rest) * d.t[:, s : s + b].unsqueeze(2)).reshape(M, b * k, *rest), "mm")


def _fold(steps: list[tuple[str, object]], M: int) -> list[TangentOp]:
    """The tangent actions, a BatchNorm scale folded into the next activation's derivative (as the engine does)."""
    ops: list[TangentOp] = []
    i = 0
    while i < len(steps):
        kind, v = steps[i]
        if kind == "scale" and i + 1 < len(steps) and steps[i + 1][0] == "times":
            d = steps[i + 1][1]
            if d.kind == "list":
                v = _A([dm * vm.reshape(channel_shape(dm)) for dm, vm in zip(d.t, v)], "list")
            else:
                v = _A(d.t * v.reshape(channel_shape(d.t)), d.kind)
            kind, i = "times", i + 1
        if kind == "map":
            ops.append(v)
        elif kind == "scale":
            def scale(T: _A, s: int, b: int, k: int, a=v) -> _A:
                if isinstance(a, list):
                    return _A([t * am.reshape(channel_shape(t)) for t, am in zip(_lst(T, M), a)], "list")
                t = _grp(T, M)
                return _A(t * a.reshape(channel_shape(t)), "grp")

            ops.append(scale)
        else:
            ops.append(lambda T, s, b, k, d=v: _times(T, s, b, k, d, M))
        i += 1
    return ops


def _stack_layer(mods: Sequence[nn.Module], M: int, mode: str) -> _Stacked:
    m0 = mods[0]
    t = type(m0)
    if any(type(m) is not t for m in mods):
        raise ValueError(f"model: layer types differ between models ({sorted({type(m).__name__ for m in mods})})")
    if t is nn.Linear:
        return _SLinear(mods, M)
    if isinstance(m0, nn.modules.conv._ConvNd):
        return _SConv(mods, M, mode)
    if isinstance(m0, nn.modules.batchnorm._BatchNorm):
        return _SBatchNorm(mods, M, mode)
    if t in ACTIVATION_RULES or t is nn.Identity:
        return _SAct(m0, M)
    if t is nn.Unflatten:
        return _SUnflatten(m0, M)
    raise ValueError(f"model: layer {t.__name__} is not supported by the ensemble")


# ---------------------------------------------------------------------------------- the stacked model


class Ensemble(nn.Module):
    """M models of one architecture as one module with stacked parameters.

    Built from M single models (:class:`gracheck.nets.VAEModel`, e.g. ``build_model(config)``) that
    differ at most in the posterior head's structure; ``conv`` is "per-model" or "grouped" (see the
    module docstring). :meth:`encode` maps model-major images ``x [M, B, ...]`` to
    ``(mean [M, B, d], scale_tril [M, B, d, d] or None)``; :meth:`decode` maps ``z [M, R, d]`` to
    ``[M, R, D]``; :meth:`decoder_columns` returns ``(g [M, B, D], J [M, B, D, k])`` for tangents
    ``[M, B, k, d]``. :meth:`member_state_dict` gives model m's state dict under the single model's
    names. The ensemble always runs in training mode (evaluation goes through single-model copies).
    """

    def __init__(self, members: Sequence[nets.VAEModel], *, conv: str = "per-model") -> None:
        super().__init__()
        if conv not in ("per-model", "grouped"):
            raise ValueError(f"conv: expected 'per-model' or 'grouped', got {conv!r}")
        if not members or not all(isinstance(m, nets.VAEModel) for m in members):
            raise TypeError("members: expected a non-empty sequence of gracheck.nets.VAEModel")
        M = self.M = len(members)
        self.conv = conv
        spec0 = {k: v for k, v in members[0].spec.items() if k not in ("posterior", "block")}
        for i, mm in enumerate(members[1:], 1):
            si = {k: v for k, v in mm.spec.items() if k not in ("posterior", "block")}
            if si != spec0:
                bad = sorted(k for k in si if si[k] != spec0.get(k))
                raise ValueError(f"members[{i}]: its architecture differs from members[0]'s in {bad}")
        self.spec = dict(members[0].spec)
        names = [{id(mod): n for n, mod in mm.named_modules()} for mm in members]

        enc0 = members[0].encoder
        if isinstance(enc0, nets.MLPEncoder):
            self.conv_encoder, trunks = False, [list(mm.encoder.body) for mm in members]
            self.in_shape = None
        elif hasattr(enc0, "features") and hasattr(enc0, "in_shape"):
            self.conv_encoder, trunks = True, [list(mm.encoder.features) for mm in members]
            self.in_shape = tuple(enc0.in_shape)
        else:
            raise ValueError(f"model: encoder {type(enc0).__name__} is not supported by the ensemble")
        self.enc = nn.ModuleList(self._stack_all(trunks, names, M, conv))
        self.flatten = _SFlatten(M) if self.conv_encoder else None

        heads = [mm.encoder.head for mm in members]
        self.d = heads[0].d
        self.head_mean = self._stack_all([[h.mean] for h in heads], names, M, conv)[0]
        self.stochastic = heads[0].scale is not None
        if any((h.scale is not None) != self.stochastic for h in heads):
            raise ValueError("members: some encoders have a posterior head and some do not")
        # the scale head grouped by posterior structure (its size differs between structures)
        self.groups: list[tuple[str, int | None, list[int]]] = []
        scale_layers = []
        if self.stochastic:
            keys: dict[tuple, list[int]] = {}
            for i, h in enumerate(heads):
                keys.setdefault((h.posterior, h.block), []).append(i)
            for (post, blk), rows in keys.items():
                lin = _SLinear([heads[i].scale for i in rows], len(rows))
                lin.prefix = names[rows[0]][id(heads[rows[0]].scale)] + "."
                lin.rows = rows
                scale_layers.append(lin)
                self.groups.append((post, blk, rows))
        self.head_scale = nn.ModuleList(scale_layers)
        order = [i for _, _, rows in self.groups for i in rows]
        self.register_buffer("_inverse", torch.tensor([order.index(i) for i in range(M)] if order else [], dtype=torch.long),
                             persistent=False)
        chains = [list(mm.decoder.jacobian_chain()) for mm in members]
        self.dec = nn.ModuleList(self._stack_all(chains, names, M, conv))

        # single-model state-dict name → (ensemble state-dict name, row), per member
        ens_names = {id(mod): n for n, mod in self.named_modules()}
        self._slots: list[dict[str, tuple[str, int]]] = [{} for _ in range(M)]
        for layer in self.modules():
            if isinstance(layer, _Stacked) and layer.tensor_names:
                rows = getattr(layer, "rows", list(range(M)))
                for r, i in enumerate(rows):
                    for t in layer.tensor_names:
                        self._slots[i][layer.prefix + t] = (ens_names[id(layer)] + "." + t, r)
        for i, mm in enumerate(members):
            missing = sorted(set(mm.state_dict()) - set(self._slots[i]))
            if missing:
                raise ValueError(f"model: the ensemble has no place for {missing} of members[{i}]")
        self._param_order = [[n for n, _ in mm.named_parameters()] for mm in members]
        self._norm_plan = None

    @staticmethod
    def _stack_all(per_member: list[list[nn.Module]], names, M: int, conv: str) -> list[_Stacked]:
        n = len(per_member[0])
        if any(len(p) != n for p in per_member):
            raise ValueError("members: their layer counts differ")
        out = []
        for j in range(n):
            mods = [p[j] for p in per_member]
            shapes = [tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in mods]
            if any(s != shapes[0] for s in shapes):
                raise ValueError(f"members: layer {j} ({type(mods[0]).__name__}) has different shapes in different models")
            layer = _stack_layer(mods, M, conv)
            if layer.tensor_names:
                name = names[0].get(id(mods[0]))
                if name is None:
                    raise ValueError(f"model: layer {j} ({type(mods[0]).__name__}) is not a named submodule of the model")
                layer.prefix = name + "."
            out.append(layer)
        return out

    # -------------------------------------------------------------- forward passes

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``x [M, B, ...]`` (each model's own batch) → ``(mean [M, B, d], scale_tril [M, B, d, d] or None)``."""
        M, B = x.shape[0], x.shape[1]
        if M != self.M:
            raise ValueError(f"x: expected {self.M} models in dimension 0, got shape {tuple(x.shape)}")
        if self.conv_encoder:
            a = _A(x.reshape(M, B, *self.in_shape), "mm")  # the first convolution takes it to its layout
        else:
            a = _A(x.reshape(M, B, -1), "mm")
        for layer in self.enc:
            a = layer(a)
        if self.flatten is not None:
            a = self.flatten(a)
        h = _mm(a, M)
        mean = self.head_mean.linear(h)
        if not self.stochastic:
            return mean, None
        Ls = []
        for (post, blk, rows), lin in zip(self.groups, self.head_scale):
            hg = h if len(rows) == M else h.index_select(0, torch.tensor(rows, device=h.device))
            p = lin.linear(hg)
            bad = ~torch.isfinite(p.detach()).reshape(len(rows), -1).all(1)
            if bool(bad.any()):
                i = rows[int(bad.nonzero()[0])]
                raise _MemberNonFinite(i, "encoder scale_tril", "the posterior head's raw outputs are not finite")
            Ls.append(posteriors.scale_tril_from_params(p, self.d, post, blk))
        L = Ls[0] if len(Ls) == 1 else torch.cat(Ls).index_select(0, self._inverse)
        return mean, L

    def decode(self, z: Tensor) -> Tensor:
        """``z [M, R, d]`` → decoder outputs flattened, ``[M, R, D]`` (training-mode BatchNorm)."""
        a = _A(z, "mm")
        for layer in self.dec:
            a = layer(a)
        t = _mm(a, self.M)
        return t.reshape(t.shape[0], t.shape[1], -1)

    def decoder_columns(self, z: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:
        """``(g [M, B, D], J·tangents [M, B, D, k])`` for ``z [M, B, d]`` and ``tangents [M, B, k, d]``.

        The engine's "chain" route on a declared chain (its fixed schedule) on the stacked layers: one primal
        forward, batch statistics held constant for the tangents, the tangents in slices of
        ``CHAIN_ROWS`` (example, column) rows.
        """
        M, B, k, d = tangents.shape
        a, steps = _A(z, "mm"), []
        for layer in self.dec:
            a, step = layer.chain(a)
            if step is not None:
                steps.append(step)
        g = _mm(a, M).reshape(M, B, -1)
        ops = _fold(steps, M)
        rows = max(1, CHAIN_ROWS // max(k, 1))
        parts = []
        for s in range(0, B, rows):
            b = min(rows, B - s)
            T = _A(tangents[:, s : s + b].reshape(M, b * k, d), "mm")
            for op in ops:
                T = op(T, s, b, k)
            parts.append(_mm(T, M).reshape(M, b, k, -1))
        J = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        return g, J.transpose(2, 3)

    # -------------------------------------------------------------- members

    def member_state_dict(self, m: int) -> dict[str, Tensor]:
        """Model m's parameters and buffers under the single model's names (detached copies)."""
        sd = self.state_dict()
        return {k: sd[name][row].detach().clone() for k, (name, row) in self._slots[m].items()}

    def member_optimizer_state(self, m: int, opt: torch.optim.Adam, template: dict) -> dict:
        """Model m's Adam state in ``torch.optim.Adam.state_dict()`` form (``template``: a fresh Adam's state dict
        over the single model's parameters, for the parameter groups)."""
        params = dict(self.named_parameters())
        state = {}
        for i, name in enumerate(self._param_order[m]):
            ens_name, row = self._slots[m][name]
            st = opt.state.get(params[ens_name])
            if st:
                state[i] = {k: (v.detach().clone() if k == "step" else v[row].detach().clone()) for k, v in st.items()}
        return {"state": state, "param_groups": template["param_groups"]}

    def grad_norms(self) -> Tensor:
        """Per model, the trainer's gradient norm: ‖(‖g_p‖)_p‖ over the single model's parameters in order, ``[M]``."""
        if self._norm_plan is None:  # per single-model parameter position: (stacked parameter, its rows' members)
            params = dict(self.named_parameters())
            plan = []
            for j, name in enumerate(self._param_order[0]):
                ens = {self._slots[m][self._param_order[m][j]][0] for m in range(self.M)}
                plan.append([(params[e], [m for m in range(self.M) if self._slots[m][self._param_order[m][j]][0] == e])
                             for e in sorted(ens)])
            self._norm_plan = plan
        cols = []
        for parts in self._norm_plan:
            if len(parts) == 1 and parts[0][0].grad is not None:
                p = parts[0][0]
                cols.append(torch.linalg.vector_norm(p.grad.reshape(p.shape[0], -1).float(), dim=1))
                continue
            col = None
            for p, members in parts:  # the posterior head's groups: scatter each group's norms to its members
                if p.grad is None:
                    continue
                v = torch.linalg.vector_norm(p.grad.reshape(p.shape[0], -1).float(), dim=1)
                if col is None:
                    col = v.new_zeros(self.M)
                col[torch.tensor(members, device=v.device)] = v
            if col is not None:
                cols.append(col)
        if not cols:
            return torch.zeros(self.M, device=next(self.parameters()).device)
        return torch.linalg.vector_norm(torch.stack(cols, 1), dim=1)


class _MemberNonFinite(Exception):
    def __init__(self, model: int, term: str, detail: str = "") -> None:
        super().__init__(term)
        self.model, self.term, self.detail = model, term, detail


class EnsembleDiverged(TrainingDiverged):
    """A non-finite value in one model of an ensemble; ``model`` is its index, ``step`` (1-based) and ``term`` as in
    :class:`~gracheck.train.TrainingDiverged`. The whole ensemble stops (as that model's own run would)."""

    def __init__(self, step: int, term: str, detail: str = "", checkpoint: str | None = None, *, model: int,
                 config: TrainConfig | None = None) -> None:
        self.model = model
        who = f"model {model}" + (f" (beta={config.beta:g}, seed={config.seed}, {config.posterior})" if config else "")
        super().__init__(step, f"{who}: {term}", detail, checkpoint)
        self.term = term


# ---------------------------------------------------------------------------------- objectives


def _terms(net: Ensemble, cfg: TrainConfig, obs, x: Tensor, gens: Sequence[torch.Generator], beta: Tensor,
           amp: str | None, betas: Sequence[float]) -> dict[str, Tensor]:
    """Per model and example, the trainer's objective terms ``{name: [M, B]}`` (train.TERMS[cfg.model]).

    The same computation as ``gracheck.train``'s objective module, model by model: Eq. 2 (β-VAE, one
    reparameterised sample per example by default, exact KL), Eq. 12/13 (GRAE, full decoder Jacobian),
    Eq. 14 (GRAE≈, ``grae_k`` sampled columns) or log p(x|g(h(x))) (ae). ``beta`` is ``[M, 1]``;
    ``betas`` the configs' own floats (the GRAE log-determinant divides by √β, which a float and a
    float32 tensor round differently, so each model gets the float its single run gets).
    """
    M, B = x.shape[0], x.shape[1]
    cast = (lambda f: f) if amp is None else _autocast(amp)
    mean, L = cast(net.encode)(x)
    for name, t in (("encoder mean", mean), ("encoder scale_tril", L)):
        if t is not None:
            bad = ~torch.isfinite(t.detach()).reshape(M, -1).all(1)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                n = int((~torch.isfinite(t[i].detach())).sum())
                raise _MemberNonFinite(i, name, f"{n} of {t[i].numel()} values")
    xf = x.reshape(M, B, -1)
    D, d = xf.shape[2], mean.shape[2]

    def log_prob(xx: Tensor, g: Tensor) -> Tensor:  # [M, R, D] → [M, R]
        try:  # the observation model validates g (NaN/Inf: a ValueError naming it); find the model only then
            return obs.log_prob(xx.reshape(-1, D), g.reshape(-1, D)).reshape(M, -1)
        except ValueError:
            bad = ~torch.isfinite(g.detach()).reshape(M, -1).all(1)
            if bool(bad.any()):
                raise _MemberNonFinite(int(bad.nonzero()[0]), "decoder output", "the decoder output is not finite") from None
            raise

    if cfg.model == "beta-vae":
        n = cfg.n_samples
        q = GaussianPosterior(mean, L)
        eps = torch.stack([torch.randn((n, B, d), generator=g, dtype=mean.dtype, device=g.device) for g in gens])
        eps = eps.to(mean.device)  # a no-op unless the run draws on another device (rng_device)
        z = mean.unsqueeze(1) + torch.einsum("mbij,mnbj->mnbi", L, eps)  # GaussianPosterior.sample, per model
        g = cast(net.decode)(z.reshape(M, n * B, d))
        lp = log_prob(xf.repeat(1, n, 1), g).reshape(M, n, B)
        logp = lp[:, 0] if n == 1 else torch.stack([lp[m].mean(0) for m in range(M)])
        kl = q.kl_standard_normal()
        return {"objective": logp - beta * kl, "log_px": logp, "kl": kl}
    if cfg.model == "ae":
        logp = log_prob(xf, cast(net.decode)(mean))
        return {"objective": logp, "log_px": logp}
    if cfg.model == "grae-approx":
        k = cfg.grae_k
        cols = torch.stack([sample_columns(B, d, k, g, device=mean.device) for g in gens])  # [M, B, k]
        tangents = F.one_hot(cols, d).to(mean.dtype)
    else:  # grae: the full Jacobian, d one-hot tangents per example
        k = d
        tangents = torch.eye(d, dtype=mean.dtype, device=mean.device).expand(M, B, d, d)
    g, J = cast(net.decoder_columns)(mean, tangents)
    logp = log_prob(xf, g)
    hess = obs.hess_diag(xf.reshape(-1, D), g.reshape(-1, D)).reshape(M, B, D)
    if cfg.model == "grae-approx":  # log1p on [M, B, k]: batched when that size keeps each model's bits
        probe = J[..., 0, :]
        reg = _per_model(hadamard_bound, M, probe, J, beta, hess) * (d / k)
    else:  # QR of [J/√β; I] per model with the config's float β, as the single run computes it
        reg = torch.stack([grae_regularizer(J[m], betas[m], hess[m]) for m in range(M)])
    prior = 0.5 * beta * mean.pow(2).sum(-1)
    return {"objective": logp - prior - reg, "log_px": logp, "prior": prior, "regularizer": reg}


def _autocast(device_type: str):
    def wrap(fn):
        def run(*args):
            with torch.autocast(device_type, dtype=torch.bfloat16):
                out = fn(*args)
            return tuple(o.float() if isinstance(o, Tensor) else o for o in out) if isinstance(out, tuple) else out.float()

        return run

    return wrap


# ---------------------------------------------------------------------------------- training state


class EnsembleRun:
    """The training state of an ensemble: stacked networks, one Adam over them, M generators and M batch streams.

    ``EnsembleRun(configs)`` initialises every model as ``build_model(config)`` does and
    :meth:`step` makes one training step of all of them (returns each model's logged metrics);
    :func:`train_ensemble` drives it with logs and checkpoints, :func:`time_steps` times it. ``device``
    (default: the configs' device), ``dtype`` (float32 as the trainer; float64 for checks) and
    ``data = (train_images, held_out_images)`` (default: the configs' data set, as the trainer loads it).
    ``rng_device``: where the generators draw (default: ``device``, as the trainer; "cpu" makes a CUDA run
    draw the same numbers as a CPU run, for comparing the two).
    """

    def __init__(self, configs: Sequence[TrainConfig], *, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float32, conv: str = "auto", data: tuple[Tensor, Tensor] | None = None,
                 data_root=None, rng_device: str | torch.device | None = None) -> None:
        self.configs = check_configs(configs)
        cfg = self.cfg = self.configs[0]
        self.M = len(self.configs)
        self.device = _tr.resolve_device(cfg.device, 0) if device is None else torch.device(device)
        self.conv = _resolve_conv(conv, self.device)
        self.dtype = dtype
        self.amp = self.device.type if (cfg.amp and self.device.type == "cuda") else None
        members = [_tr.build_model(c) for c in self.configs]
        self.net = Ensemble(members, conv=self.conv).to(self.device, dtype).train()
        self.obs = _tr.make_obs(cfg)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        rng = self.device if rng_device is None else torch.device(rng_device)
        self.gens = [torch.Generator(device=rng).manual_seed(derive_seed("noise", c.seed, 0)) for c in self.configs]
        self.beta = torch.tensor([[c.beta] for c in self.configs], dtype=dtype, device=self.device)
        if data is None:
            train_x, held, self.data_desc = _tr.load_data(cfg, data_root)
        else:
            (train_x, held), self.data_desc = data, {"train": "given", "held_out": "given"}
        if self.device.type == "cuda":
            train_x, held = train_x.to(self.device), held.to(self.device)
        self.train_x, self.held = train_x, held
        self.streams = [_tr.BatchStream(len(train_x), cfg.batch_size, c.seed) for c in self.configs]
        self.step_index = 0
        self._init_members: list[nets.VAEModel] | None = members  # reused (weights overwritten) for evaluation
        self._members: list[nets.VAEModel] | None = None

    def batch(self, step: int) -> Tensor:
        """The images of ``step`` (0-based) for every model, ``[M, B, ...]`` (each model's own data order)."""
        idx = torch.stack([s.indices(step) for s in self.streams])
        return self.train_x[idx.to(self.train_x.device)].to(self.device, self.dtype, non_blocking=True)

    def step(self) -> list[dict]:
        """One training step of every model; returns per model ``{term: batch mean, "loss", "grad_norm", "lr"}``.

        Raises :class:`_MemberNonFinite` (turned into :class:`EnsembleDiverged` by :func:`train_ensemble`)
        before the optimiser step when a term or a gradient of some model is not finite.
        """
        names = _tr.TERMS[self.cfg.model]
        x = self.batch(self.step_index)
        terms = _terms(self.net, self.cfg, self.obs, x, self.gens, self.beta, self.amp,
                       [c.beta for c in self.configs])
        means = torch.stack([terms[k].detach().float().mean(1) for k in names], 1)  # [M, T]
        bad = ~torch.isfinite(means)
        if bool(bad.any()):
            m, j = (int(v) for v in bad.nonzero()[0])
            raise _MemberNonFinite(m, f"term '{names[j]}'", f"batch mean {means[m, j].item()}")
        loss = (-terms["objective"].mean(1)).sum()  # Σ_m of each model's trainer loss: the gradients do not mix
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = self.net.grad_norms()
        if not bool(torch.isfinite(gnorm).all()):
            m = int((~torch.isfinite(gnorm)).nonzero()[0])
            bad_name = next(n for n in self.net._param_order[m]
                            if not bool(torch.isfinite(self._grad_of(m, n)).all()))
            raise _MemberNonFinite(m, f"the gradient of {bad_name}")
        self.opt.step()
        self.step_index += 1
        lr = self.opt.param_groups[0]["lr"]
        out = []
        for vals, gn in zip(means.tolist(), gnorm.tolist()):
            out.append({**dict(zip(names, vals)), "loss": -vals[0], "grad_norm": gn, "lr": lr})
        return out

    def _grad_of(self, m: int, name: str) -> Tensor:
        ens, row = self.net._slots[m][name]
        return dict(self.net.named_parameters())[ens].grad[row]

    # -------------------------------------------------------------- members and evaluation

    def _member_models(self) -> list[nets.VAEModel]:
        if self._members is None:
            self._members = [m.to(self.device, self.dtype) for m in self._init_members]
            self._init_members = None
        return self._members

    def members(self) -> list[nets.VAEModel]:
        """The M models as single :class:`~gracheck.nets.VAEModel`s holding the current weights (on the run's device)."""
        mods = self._member_models()
        for m, mod in enumerate(mods):
            mod.load_state_dict(self.net.member_state_dict(m))
        return mods

    def evaluate(self) -> list[dict]:
        """Each model's held-out evaluation by the trainer's own function (eval-mode BatchNorm)."""
        if self.dtype != torch.float32:
            raise ValueError(f"dtype: held-out evaluation runs in float32 as the trainer's; this run is {self.dtype}")
        return [_tr.evaluate(mod, self.held, c, self.obs, self.device, self.amp)
                for mod, c in zip(self.members(), self.configs)]

    # -------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {"step": self.step_index, "net": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                "rng": [g.get_state().cpu() for g in self.gens]}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["optimizer"])
        if len(state["rng"]) != self.M:
            raise CheckpointError(f"rng: the checkpoint holds {len(state['rng'])} generator states for {self.M} models")
        for g, s in zip(self.gens, state["rng"]):
            g.set_state(s)
        self.step_index = int(state["step"])

    def member_checkpoint(self, m: int, *, seconds: float, train_metrics: dict, eval_metrics: dict) -> dict:
        """Model m's checkpoint payload in :mod:`gracheck.train`'s format (loadable and resumable alone)."""
        cfg = self.configs[m]
        template = torch.optim.Adam(self._member_models()[m].parameters(), lr=cfg.lr).state_dict()
        return {
            "format": _tr.CKPT_FORMAT, "step": self.step_index, "config": cfg.to_dict(),
            "model": {k: v.cpu() for k, v in self.net.member_state_dict(m).items()},
            "optimizer": _to_cpu(self.net.member_optimizer_state(m, self.opt, template)),
            "rng": {"noise": [self.gens[m].get_state().cpu()]}, "world_size": 1, "seconds": seconds,
            "train_metrics": dict(train_metrics), "eval_metrics": dict(eval_metrics),
            "torch_version": str(torch.__version__), "num_threads": torch.get_num_threads(),
        }


def _to_cpu(obj):
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------- checkpoint I/O (one place)
#
# Everything that writes or reads the ensemble's own files is here, so that the trainer's coming
# payload digests, run-folder lock and signal handling can be adopted in one place.


def _ckpt_files(out: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _CKPT_RE.match(p.name))] if out.is_dir() else []
    return [p for _, p in sorted(found, reverse=True)]


def _write_ensemble_checkpoint(out: Path, step: int, payload: dict, keep: int) -> Path:
    path = out / f"ckpt-{step:08d}.pt"
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_text(out / "latest", path.name + "\n")
    for old in _ckpt_files(out)[keep:]:
        old.unlink(missing_ok=True)
    return path


def _read_ensemble_checkpoint(path: Path, map_location="cpu") -> dict:
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, disallowed contents
        raise CheckpointError(f"{path}: cannot be read as an ensemble checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ck, dict) or ck.get("format") != ECKPT_FORMAT:
        raise CheckpointError(f"{path}: not a gracheck ensemble checkpoint (format tag missing or wrong)")
    missing = [k for k in ("step", "configs", "net", "optimizer", "rng", "conv") if k not in ck]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return ck


def _newest_ensemble_checkpoint(out: Path, map_location="cpu") -> tuple[dict, Path] | None:
    errors = []
    for p in _ckpt_files(out):
        try:
            return _read_ensemble_checkpoint(p, map_location), p
        except CheckpointError as e:
            errors.append(str(e))
            warnings.warn(f"{e}; falling back to the previous checkpoint", RuntimeWarning, stacklevel=3)
    if errors:
        raise CheckpointError(f"no readable ensemble checkpoint in {out}:\n  " + "\n  ".join(errors))
    return None


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def load_ensemble_checkpoint(path_or_dir, *, map_location="cpu") -> tuple[EnsembleRun, int]:
    """``(run, step)``: an :class:`EnsembleRun` restored from an ensemble checkpoint file or folder (newest readable).

    Loading never executes code (``weights_only=True``); the run's data set is loaded as the configs say.
    """
    p = Path(path_or_dir)
    if p.is_dir():
        got = _newest_ensemble_checkpoint(p, map_location)
        if got is None:
            raise FileNotFoundError(f"path_or_dir: no ensemble checkpoint (ckpt-*.pt) in {p}")
        ck = got[0]
    elif p.is_file():
        ck = _read_ensemble_checkpoint(p, map_location)
    else:
        raise FileNotFoundError(f"path_or_dir: {p} does not exist")
    run = EnsembleRun([TrainConfig.from_dict(c) for c in ck["configs"]], device=map_location, conv=ck["conv"])
    run.load_state_dict(ck)
    return run, int(ck["step"])


# ---------------------------------------------------------------------------------- the training loop


@dataclasses.dataclass(frozen=True)
class EnsembleResult:
    """What :func:`train_ensemble` returns (also ``out_dir/result.json``); ``results[m]`` is model m's TrainResult."""

    configs: tuple[TrainConfig, ...]
    out_dir: str
    model_dirs: tuple[str, ...]
    step: int
    results: tuple[TrainResult, ...]
    seconds: float  # cumulative wall time of the whole ensemble over all sessions
    resumed_from: int | None
    device: str
    conv: str

    def to_dict(self) -> dict:
        return {"configs": [c.to_dict() for c in self.configs], "out_dir": self.out_dir,
                "model_dirs": list(self.model_dirs), "step": self.step, "results": [r.to_dict() for r in self.results],
                "seconds": self.seconds, "resumed_from": self.resumed_from, "device": self.device, "conv": self.conv}

    @classmethod
    def from_dict(cls, d: dict) -> EnsembleResult:
        res = tuple(TrainResult(**{**r, "config": TrainConfig.from_dict(r["config"])}) for r in d["results"])
        return cls(configs=tuple(TrainConfig.from_dict(c) for c in d["configs"]), out_dir=d["out_dir"],
                   model_dirs=tuple(d["model_dirs"]), step=d["step"], results=res, seconds=d["seconds"],
                   resumed_from=d["resumed_from"], device=d["device"], conv=d["conv"])


def _dir_key(out: Path, p: Path) -> str:
    """How ``ensemble.json`` records a model folder: relative to ``out`` when inside it, else absolute."""
    r, o = p.resolve(), out.resolve()
    try:
        return str(r.relative_to(o))
    except ValueError:
        return str(r)


def _saved_config(path: Path, where: str) -> TrainConfig | None:
    if not path.exists():
        return None
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise ConfigMismatchError(f"{where}: {path} cannot be read as a TrainConfig ({e})") from e


def _check_folders(out: Path, dirs: list[Path], cfgs, conv: str, resume: bool) -> tuple[dict | None, Path | None]:
    """Validate ``out`` and the model folders; return the ensemble checkpoint to resume from. Writes nothing."""
    manifest = out / "ensemble.json"
    if not resume:
        if manifest.exists() or _ckpt_files(out):
            raise FileExistsError(f"out_dir: {out} already holds an ensemble; pass resume=True to continue it or "
                                  "choose another folder")
        for i, p in enumerate(dirs):
            if (p / "config.json").exists() or _tr.latest_checkpoint(p) is not None:
                raise FileExistsError(f"model_dirs[{i}]: {p} already holds a run; pass resume=True or choose another folder")
        return None, None
    if manifest.exists():
        try:
            saved = json.loads(manifest.read_text())
            saved_cfgs = [TrainConfig.from_dict(c) for c in saved["configs"]]
        except (ValueError, TypeError, KeyError, json.JSONDecodeError) as e:
            raise ConfigMismatchError(f"{manifest}: cannot be read as an ensemble manifest ({e})") from e
        if len(saved_cfgs) != len(cfgs):
            raise ConfigMismatchError(f"configs: {manifest} holds {len(saved_cfgs)} models, {len(cfgs)} were given")
        for i, (a, b) in enumerate(zip(saved_cfgs, cfgs)):
            diff = {k: v for k, v in _tr.config_diff(a, b).items() if k not in _tr.EXTENDABLE}
            if diff:
                lines = [f"  {k}: saved {x!r}, given {y!r}" for k, (x, y) in diff.items()]
                raise ConfigMismatchError(f"cannot resume {out}: configs[{i}] differs from the saved one in "
                                          f"{sorted(diff)}:\n" + "\n".join(lines))
        if saved.get("model_dirs") != [_dir_key(out, p) for p in dirs]:
            raise ValueError(f"model_dirs: {manifest} records {saved.get('model_dirs')}, given "
                             f"{[_dir_key(out, p) for p in dirs]}")
        if saved.get("conv") != conv:
            raise ValueError(f"conv: {manifest} was trained with conv={saved.get('conv')!r}, this run resolves to "
                             f"{conv!r} (the two are not bitwise the same computation)")
    got = _newest_ensemble_checkpoint(out)
    ck, ck_path = got if got is not None else (None, None)
    start = int(ck["step"]) if ck is not None else 0
    if ck is not None:
        saved_cfgs = [TrainConfig.from_dict(c) for c in ck["configs"]]
        if len(saved_cfgs) != len(cfgs) or any(
            {k for k in _tr.config_diff(a, b) if k not in _tr.EXTENDABLE} for a, b in zip(saved_cfgs, cfgs)
        ):
            raise ConfigMismatchError(f"cannot resume from {ck_path}: its configs differ from the given ones")
        if ck["conv"] != conv:
            raise ValueError(f"conv: {ck_path} was written with conv={ck['conv']!r}, this run resolves to {conv!r}")
    if ck is not None and int(ck["step"]) > cfgs[0].steps:
        raise ValueError(f"steps: {cfgs[0].steps} is below the checkpoint's step {ck['step']} ({ck_path})")
    for i, (p, c) in enumerate(zip(dirs, cfgs)):
        saved = _saved_config(p / "config.json", f"model_dirs[{i}]")
        if saved is not None:
            diff = {k: v for k, v in _tr.config_diff(saved, c).items() if k not in _tr.EXTENDABLE}
            if diff:
                raise ConfigMismatchError(f"model_dirs[{i}]: {p}/config.json differs from configs[{i}] in {sorted(diff)}")
        newest = _tr.latest_checkpoint(p)
        if newest is not None and int(_CKPT_RE.match(newest.name).group(1)) > start and not _exported_by(p, out, i):
            raise FileExistsError(f"model_dirs[{i}]: {newest} is newer than the ensemble's state (step {start}); "
                                  "the folder holds a run this ensemble did not write")
    return ck, ck_path


def _exported_by(folder: Path, out: Path, index: int) -> bool:
    """Whether ``folder``'s checkpoints were exported by the ensemble in ``out`` as its model ``index``."""
    try:
        meta = json.loads((folder / "ensemble-member.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("ensemble") == str(out.resolve()) and meta.get("index") == index


def _prepare_folders(out: Path, dirs: list[Path], cfgs, conv: str, ck_path: Path | None, start: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, *dirs):
        folder.mkdir(parents=True, exist_ok=True)
        for p in folder.glob(".*.tmp-*"):
            p.unlink(missing_ok=True)
    if ck_path is not None:
        for p in _ckpt_files(out):
            if p.name > ck_path.name:  # newer but unreadable (we fell back past it): keep it out of the way
                p.rename(p.with_name(p.name + ".corrupt"))
    _write_json(out / "ensemble.json", {"format": ENSEMBLE_FORMAT, "size": len(cfgs), "conv": conv,
                                        "configs": [c.to_dict() for c in cfgs],
                                        "model_dirs": [_dir_key(out, p) for p in dirs]})
    for p, c in zip(dirs, cfgs):
        atomic_write_text(p / "config.json", json.dumps(c.to_dict(), indent=2) + "\n")
        if start < c.steps:  # training continues: an earlier export's result no longer describes the folder
            (p / "result.json").unlink(missing_ok=True)
        for f in _ckpt_files(p):  # our own exports past the resume point (we fell back): recomputed, bitwise
            if int(_CKPT_RE.match(f.name).group(1)) > start:
                f.unlink()


def train_ensemble(
    configs: Sequence[TrainConfig],
    out_dir,
    *,
    model_dirs: Sequence | None = None,
    resume: bool = False,
    progress: bool = True,
    data_root=None,
    callback: Callable[[int, list[dict], EnsembleRun], None] | None = None,
    conv: str = "auto",
) -> EnsembleResult:
    """Train ``configs`` as one ensemble into ``out_dir`` and one folder per model (see the module docstring).

    ``model_dirs``: the per-model folders (default ``out_dir/models/000`` …). ``resume=True``
    continues from the newest readable ensemble checkpoint (a complete ensemble returns at once; an
    empty folder starts fresh); only ``steps`` may change, to extend every model. ``callback(step,
    metrics, run)`` is called after every step with each model's metrics. ``conv``: "auto"
    (per-model convolutions on CPU, grouped on CUDA), "per-model" or "grouped". Raises
    :class:`EnsembleDiverged` (a :class:`~gracheck.train.TrainingDiverged`) naming the model, step and term.
    """
    cfgs = check_configs(configs)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("WORLD_SIZE: the ensemble trainer runs in one process (it is the batching); run it without torchrun")
    out = Path(out_dir)
    if model_dirs is None:
        dirs = [out / "models" / f"{i:03d}" for i in range(len(cfgs))]
    else:
        if isinstance(model_dirs, (str, bytes, os.PathLike)) or len(model_dirs) != len(cfgs):
            raise ValueError(f"model_dirs: expected one folder per config ({len(cfgs)}), got {model_dirs!r}")
        dirs = [Path(p) for p in model_dirs]
        if len({p.resolve() for p in dirs}) != len(dirs):
            raise ValueError("model_dirs: two models would share one folder")
        if any(p.resolve() == out.resolve() for p in dirs):
            raise ValueError("model_dirs: a model folder cannot be the ensemble's out_dir")
    device = _tr.resolve_device(cfgs[0].device, 0)
    conv = _resolve_conv(conv, device)
    with _tr.runtime(cfgs[0], device):
        return _train_ensemble(cfgs, out, dirs, resume, progress, data_root, callback, conv, device)


def _train_ensemble(cfgs, out: Path, dirs: list[Path], resume, progress, data_root, callback, conv, device) -> EnsembleResult:
    cfg, M = cfgs[0], len(cfgs)
    ck, ck_path = _check_folders(out, dirs, cfgs, conv, resume)
    start = int(ck["step"]) if ck is not None else 0
    _prepare_folders(out, dirs, cfgs, conv, ck_path, start)
    done_path = out / "result.json"
    if ck is not None and start == cfg.steps and done_path.exists():
        saved = EnsembleResult.from_dict(json.loads(done_path.read_text()))
        if saved.step == start and all((p / "result.json").exists() for p in dirs):
            return dataclasses.replace(saved, configs=cfgs, out_dir=str(out), resumed_from=start)

    run = EnsembleRun(cfgs, device=device, conv=conv, data_root=data_root)
    seconds0 = 0.0
    last_train: list[dict] = [{} for _ in range(M)]
    last_eval: list[dict] = [{} for _ in range(M)]
    if ck is not None:
        run.load_state_dict(ck)
        seconds0 = float(ck.get("seconds", 0.0))
        last_train, last_eval = [dict(t) for t in ck["train_metrics"]], [dict(e) for e in ck["eval_metrics"]]
    names = _tr.TERMS[cfg.model]
    train_fields = ["step", *names, "loss", "grad_norm", "lr", "seconds"]
    eval_fields = ["step", *names, "log_px_at_mean", "seconds"]
    logs = [(_tr.RunLog(p, "log", train_fields, start), _tr.RunLog(p, "eval", eval_fields, start)) for p in dirs]

    def write_ckpt(step: int, seconds: float) -> Path:
        for lt, le in logs:
            lt.flush()
            le.flush()
        payload = {"format": ECKPT_FORMAT, "conv": conv, "configs": [c.to_dict() for c in cfgs], **run.state_dict(),
                   "seconds": seconds, "train_metrics": last_train, "eval_metrics": last_eval,
                   "torch_version": str(torch.__version__), "num_threads": torch.get_num_threads()}
        return _write_ensemble_checkpoint(out, step, payload, cfg.keep_checkpoints)

    def do_eval(step: int, seconds: float) -> None:
        nonlocal last_eval
        last_eval = run.evaluate()
        for (_, le), ev in zip(logs, last_eval):
            le.write({"step": step, **ev, "seconds": seconds})
            le.flush()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"ensemble of {M} {cfg.model} {cfg.dataset}",
                   dynamic_ncols=True, file=sys.stderr)
    t_session = time.perf_counter()
    last_ckpt = ck_path
    try:
        if start == 0:
            do_eval(0, 0.0)
        for step in range(start, cfg.steps):
            done = step + 1
            try:
                metrics = run.step()
            except _MemberNonFinite as e:
                raise EnsembleDiverged(done, e.term, e.detail, str(last_ckpt) if last_ckpt else None,
                                       model=e.model, config=cfgs[e.model]) from None
            seconds = seconds0 + time.perf_counter() - t_session
            last_train = metrics
            for (lt, _), row in zip(logs, metrics):
                lt.write({"step": done, **row, "seconds": seconds})
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                do_eval(done, seconds)
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps:
                last_ckpt = write_ckpt(done, seconds)
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback(done, [dict(r) for r in metrics], run)
            if done < cfg.steps and _deadline.expired():  # the budget's deadline: checkpoint this step and stop
                if last_ckpt is None or last_ckpt.name != f"ckpt-{done:08d}.pt":
                    last_ckpt = write_ckpt(done, seconds)
                raise _deadline.DeadlineReached(f"ensemble of {M} {cfg.model} {cfg.dataset} models in {out}", done,
                                                cfg.steps, str(last_ckpt))
    finally:
        if bar is not None:
            bar.close()
        for lt, le in logs:
            lt.close()
            le.close()

    seconds = seconds0 + time.perf_counter() - t_session
    return _export(run, cfgs, out, dirs, conv, device, seconds, last_train, last_eval, start if ck is not None else None)


def _export(run: EnsembleRun, cfgs, out: Path, dirs, conv, device, seconds, last_train, last_eval, resumed_from):
    """Each model's final checkpoint (trainer format), result.json and ensemble-member.json; then the ensemble's result."""
    M = len(cfgs)
    results = []
    share = seconds / M
    for m, (p, c) in enumerate(zip(dirs, cfgs)):
        payload = run.member_checkpoint(m, seconds=share, train_metrics=last_train[m], eval_metrics=last_eval[m])
        path = _tr.save_checkpoint(p, run.step_index, payload, c.keep_checkpoints)
        res = TrainResult(config=c, out_dir=str(p), step=run.step_index, train_metrics=last_train[m],
                          eval_metrics=last_eval[m], checkpoint=str(path), seconds=share, resumed_from=resumed_from,
                          device=str(device), world_size=1, data=dict(run.data_desc))
        _write_json(p / "ensemble-member.json", {"ensemble": str(out.resolve()), "index": m, "size": M, "conv": conv,
                                                 "seconds_total": seconds, "seconds_share": share})
        _write_json(p / "result.json", res.to_dict())
        results.append(res)
    result = EnsembleResult(configs=cfgs, out_dir=str(out), model_dirs=tuple(str(p) for p in dirs), step=run.step_index,
                            results=tuple(results), seconds=seconds, resumed_from=resumed_from, device=str(device),
                            conv=conv)
    _write_json(out / "result.json", result.to_dict())
    return result


# ---------------------------------------------------------------------------------- cost model


def _synthetic(cfg: TrainConfig, n: int) -> tuple[Tensor, Tensor]:
    shape = nets.IMAGE_SHAPES[cfg.dataset]
    g = torch.Generator().manual_seed(derive_seed("synthetic", cfg.seed))
    return torch.rand(n, *shape, generator=g), torch.rand(min(n, cfg.eval_size), *shape, generator=g)


def step_flops(configs: Sequence[TrainConfig], *, conv: str = "auto", device: str | None = None) -> int:
    """FLOPs of one training step of the whole ensemble (matmul/conv FLOPs of forward, tangents and backward,
    counted by ``torch.utils.flop_counter.FlopCounterMode``; elementwise work is not counted). Divide by
    ``len(configs)`` for one model's share. Runs one step on synthetic data (values do not change the count)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfgs = check_configs(configs)
    run = EnsembleRun(cfgs, device=device, conv=conv, data=_synthetic(cfgs[0], 2 * cfgs[0].batch_size))
    with _tr.runtime(cfgs[0], run.device):
        run.step()  # first step: the one-time GEMM probes (see _gemm), which are not part of a step's work
        with FlopCounterMode(display=False) as fc:
            run.step()
    return int(fc.get_total_flops())


def time_steps(configs: Sequence[TrainConfig], steps: int, *, warmup: int = 1, conv: str = "auto",
               device: str | None = None) -> dict:
    """Run ``warmup`` + ``steps`` training steps of the ensemble on synthetic data and report the measured time.

    Returns ``{"models", "steps", "seconds_per_step" (median), "seconds_per_step_min", "seconds_per_step_max",
    "flops_per_step" (whole ensemble), "tflop_per_s", "device", "conv", "threads"}``. Step times do not depend
    on pixel values; no files are written. The first step of a process also runs the one-time GEMM probes
    (see :func:`_gemm`), so keep ``warmup`` ≥ 1.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup: expected an int >= 0, got {warmup!r}")
    cfgs = check_configs(configs)
    flops = step_flops(cfgs, conv=conv, device=device)
    run = EnsembleRun(cfgs, device=device, conv=conv, data=_synthetic(cfgs[0], 2 * cfgs[0].batch_size))
    sync = (lambda: torch.cuda.synchronize(run.device)) if run.device.type == "cuda" else (lambda: None)
    times = []
    with _tr.runtime(cfgs[0], run.device):
        for i in range(warmup + steps):
            sync()
            t0 = time.perf_counter()
            run.step()
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        threads = torch.get_num_threads()
    med = statistics.median(times)
    return {"models": len(cfgs), "steps": steps, "seconds_per_step": med, "seconds_per_step_min": min(times),
            "seconds_per_step_max": max(times), "flops_per_step": flops, "tflop_per_s": flops / med / 1e12,
            "device": str(run.device), "conv": run.conv, "threads": threads}
