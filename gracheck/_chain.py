"""The Jacobian engine's "chain" route: explicit tangents through a decoder made of supported pieces.

A decoder's forward is turned into a *plan*, a list of nodes in evaluation order, in one of two
ways:

* ``jacobian_chain()``: a module may list the layers its forward composes (every decoder in
  :mod:`gracheck.nets` does); the plan is that sequence.
* tracing: otherwise an ``nn.Module``'s forward is traced symbolically with :mod:`torch.fx`. The
  plan keeps fx's module calls (Linear, Conv, BatchNorm, ELU, ... as the layers themselves, so
  parameters, buffers and train/eval mode are read live at every call), functional forms
  (``F.elu``, ``torch.sigmoid``, ``F.linear``, ``F.pad``, ...), tensor methods (``.view``,
  ``.flatten``, ...), slicing and arithmetic with constants. During the trace the decoder's input
  reports its real number of dimensions, feature sizes, dtype and device (its batch size stays
  symbolic), so a forward that validates its input (``if z.dim() != 2: raise ...``) traces too; a
  plan built on such facts is cached per input signature.

  torch.fx rather than torch.export: fx records the user's own modules and functions, in
  milliseconds, with the module objects themselves as call targets; torch.export lowers everything
  to ATen operators, lifts parameters and buffers into graph inputs (running-statistics updates
  become functional outputs), specialises on example shapes and takes seconds per export, so the
  plan would have to be mapped back to the live parameters and re-exported whenever a shape changed.

Evaluation (one call): one ordinary forward pass through the plan computes g(z) and, for every
node that depends on z, what it does to tangents: a linear map (Linear/convolution weights
without bias, reshapes, crops, padding, pooling, interpolation), an elementwise factor (an
activation's derivative, a BatchNorm's per-channel scale, a constant), or a linear combination
(sums and products of z-dependent values). Elementwise factors are combined before they touch the
tangents (a BatchNorm scale and the next activation's derivative cost one multiplication per
tangent). A plan traced from a forward gets the adaptive schedule, one of two:

* sliced (a first call, or tangent rows too wide for one slice): the primal pass records the
  steps; the k tangents of each example then run through them on slices of the batch (see
  :func:`slice_examples`), which keeps a conv decoder's activations in cache;
* lockstep (all k·B tangent rows fit one slice, known from an earlier call): the tangents are
  computed in the primal pass, and a Linear layer or convolution takes the primal and the tangent
  rows in one call (one larger GEMM forward, one for the weight gradient backward, as XLA's dot
  merger does for JAX): on the 12-512-512-784 MLP, B = 64, one thread, a GRAE≈ step written by
  hand both ways took 22–28 ms merged against 32–34 ms separate (fastest of 20–30 steps, two runs
  on a busy machine; benchmarks/bench_jax.py times the library's steps).

and in both a first Linear layer applied to the one-hot tangents is a gather of its weight's
columns. A declared chain (``jacobian_chain()``, every decoder in :mod:`gracheck.nets`) gets the
*fixed* schedule: the steps recorded in the primal pass, the tangents on slices of about
:data:`CHAIN_ROWS` (example, column) rows, a first Linear layer as a GEMM on the one-hot rows. Its
bits depend on the call's inputs only, never on earlier calls (the adaptive schedule's lockstep mode
starts with the second call of a plan, and a plan is rebuilt after a train/eval switch), which the
trainer's exact resume needs, and :mod:`gracheck.ensemble` computes exactly these operations on its
stacked layers, so an ensemble's models stay bitwise equal to their one-at-a-time runs.

Every factor is an ordinary differentiable tensor, so the backward of a training step is
first-order autograd through these operations.

BatchNorm follows the per-example rule of :mod:`gracheck.autodiff`: training-mode statistics come
from the batch, with autograd through them in the output, and are held constant for the tangents;
running statistics are updated once per call. An unsupported node is refused (:class:`ChainRefused`,
naming the node) before any statistics change, or, for a refusal found while evaluating (e.g. a
reshape that would mix examples), after restoring the running statistics.

Plans are cached per module (weakly) and rebuilt when anything they depend on changes: a submodule
replaced, a forward reassigned, any module's train/eval mode, a plain Python attribute read by a
traced forward (ints, floats, strings, ...), a tensor attribute reassigned, hooks added. Global
state read by a forward (module-level variables) is not tracked.
"""

from __future__ import annotations

import inspect
import math
import operator
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ACTIVATION_RULES",
    "ChainPlan",
    "ChainRefused",
    "batch_stats",
    "CHAIN_ROWS",
    "chain_plan",
    "channel_shape",
    "conv_linear_part",
    "normalise",
    "PLAIN_CONVS",
    "record_refusal",
    "restore_running_stats",
    "save_running_stats",
    "slice_examples",
    "SLICE_BYTES",
]


class ChainRefused(Exception):
    """The chain route cannot take this decoder (or this input); the message says which node and why."""


# ------------------------------------------------------------------ shared helpers


def channel_shape(x: Tensor) -> list[int]:
    """The shape ``[1, C, 1, ...]`` that broadcasts a per-channel vector against ``x [N, C, ...]``."""
    return [1, -1] + [1] * (x.dim() - 2)


def normalise(bn: nn.modules.batchnorm._BatchNorm, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """BatchNorm's output with the given per-channel statistics (affine part included)."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.reshape(shape) + bn.bias.reshape(shape)
    return y


def batch_stats(bn: nn.modules.batchnorm._BatchNorm, x: Tensor, rows_per_example: int) -> tuple[Tensor, Tensor]:
    """Batch mean/variance of ``x`` (autograd kept) and the running-statistics update of one training forward."""
    dims = [0] + list(range(2, x.dim()))
    mean = x.mean(dims)
    var = x.var(dims, unbiased=False)
    if bn.track_running_stats and bn.running_mean is not None:
        n = x.numel() // x.shape[1] // rows_per_example
        with torch.no_grad():
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), m)
            bn.running_var.lerp_((var.detach() * (n / max(n - 1, 1))).to(bn.running_var.dtype), m)
    return mean, var


PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def conv_linear_part(m: nn.modules.conv._ConvNd, x: Tensor) -> Tensor:
    """The convolution's linear map without its bias, i.e. its derivative applied to ``x``."""
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return _CONV_T[len(m.kernel_size)](x, m.weight, None, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
    return m._conv_forward(x, m.weight, None)  # honours padding_mode


# ------------------------------------------------------------------ activations
# (x, parameters) → (y, dy/dx elementwise); differentiable in x and the parameters, so the
# backward of a training step gets the second-derivative terms through them.


def _d_elu(x: Tensor, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    y = F.elu(x, alpha)
    # ELU'(x) = 1 for x > 0 and α eˣ = y + α for x ≤ 0 (where y ≤ 0): min(y, 0) + 1 when α = 1
    return y, (y.clamp(max=0) + 1 if alpha == 1.0 else torch.where(x > 0, torch.ones_like(y), y + alpha))


def _d_relu(x: Tensor) -> tuple[Tensor, Tensor]:
    return F.relu(x), (x > 0).to(x.dtype)


def _d_leaky_relu(x: Tensor, negative_slope: float = 0.01) -> tuple[Tensor, Tensor]:
    return F.leaky_relu(x, negative_slope), torch.full_like(x, negative_slope).masked_fill_(x > 0, 1.0)


def _d_sigmoid(x: Tensor) -> tuple[Tensor, Tensor]:
    y = torch.sigmoid(x)
    return y, y * (1 - y)


def _d_tanh(x: Tensor) -> tuple[Tensor, Tensor]:
    y = torch.tanh(x)
    return y, 1 - y * y


def _d_softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> tuple[Tensor, Tensor]:
    bx = x * beta
    return F.softplus(x, beta, threshold), torch.where(bx > threshold, torch.ones_like(x), torch.sigmoid(bx))


def _d_silu(x: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(x)
    y = x * s
    return y, s + y * (1 - s)


def _d_gelu(x: Tensor, approximate: str = "none") -> tuple[Tensor, Tensor]:
    y = F.gelu(x, approximate=approximate)
    if approximate == "tanh":
        c = math.sqrt(2 / math.pi)
        t = torch.tanh(c * (x + 0.044715 * x**3))
        return y, 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    return y, cdf + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _d_exp(x: Tensor) -> tuple[Tensor, Tensor]:
    y = torch.exp(x)
    return y, y


# activation modules: derivative rule and how to read its parameters off the module
_ACT_MODULES: dict[type, tuple[Callable, Callable[[nn.Module], dict]]] = {
    nn.ELU: (_d_elu, lambda m: {"alpha": m.alpha}),
    nn.ReLU: (_d_relu, lambda m: {}),
    nn.LeakyReLU: (_d_leaky_relu, lambda m: {"negative_slope": m.negative_slope}),
    nn.Sigmoid: (_d_sigmoid, lambda m: {}),
    nn.Tanh: (_d_tanh, lambda m: {}),
    nn.Softplus: (_d_softplus, lambda m: {"beta": m.beta, "threshold": m.threshold}),
    nn.SiLU: (_d_silu, lambda m: {}),
    nn.GELU: (_d_gelu, lambda m: {"approximate": m.approximate}),
}
# functional activations: derivative rule, argument names after the input, defaults
_ACT_FUNCTIONS: dict[object, tuple[Callable, tuple[str, ...], dict]] = {
    F.elu: (_d_elu, ("alpha", "inplace"), {"alpha": 1.0, "inplace": False}),
    F.relu: (_d_relu, ("inplace",), {"inplace": False}),
    torch.relu: (_d_relu, (), {}),
    F.leaky_relu: (_d_leaky_relu, ("negative_slope", "inplace"), {"negative_slope": 0.01, "inplace": False}),
    torch.sigmoid: (_d_sigmoid, (), {}),
    torch.tanh: (_d_tanh, (), {}),
    F.softplus: (_d_softplus, ("beta", "threshold"), {"beta": 1.0, "threshold": 20.0}),
    F.silu: (_d_silu, ("inplace",), {"inplace": False}),
    F.gelu: (_d_gelu, ("approximate",), {"approximate": "none"}),
    torch.exp: (_d_exp, (), {}),
}
_ACT_METHODS: dict[str, Callable] = {"relu": _d_relu, "sigmoid": _d_sigmoid, "tanh": _d_tanh, "exp": _d_exp}

# activation modules as (module, x) → (y, dy/dx elementwise): the table the ensemble trainer's
# stacked layers use (gracheck.ensemble), so its tangents are computed as the chain route's are
ACTIVATION_RULES: dict[type, Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]]] = {
    t: (lambda m, x, rule=rule, params=params: rule(x, **params(m))) for t, (rule, params) in _ACT_MODULES.items()
}

# ------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class _Ref:
    """An argument that is the value of plan node ``index``."""

    index: int


@dataclass
class _Node:
    op: str  # "input" | "attr" | "const" | "module" | "function" | "method" | "output"
    target: object  # the module, function, method name, attribute path or constant
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    name: str = ""
    users: int = 0
    carrying: bool = False  # depends on the decoder input through tensor values
    rule: Callable | None = None
    src: int | None = None  # the only z-dependent argument, when it is the first one
    merge: Callable | None = None  # (node, x, T) → (y, tangent) by one call on primal and tangent rows
    frees: tuple[int, ...] = ()  # values whose last reader is this node
    nested: bool = True  # args/kwargs hold containers or slices with references (slow path of _load)


def _describe(node: _Node) -> str:
    if node.op == "module":
        return f"node '{node.name}' ({type(node.target).__name__})"
    if node.op == "function":
        try:
            what = fx.node._get_qualified_name(node.target)
        except Exception:  # noqa: BLE001 - private fx helper; any name will do in a message
            what = getattr(node.target, "__name__", repr(node.target))
        return f"node '{node.name}' (function {what})"
    if node.op == "method":
        return f"node '{node.name}' (tensor method .{node.target}())"
    return f"node '{node.name}'"


@dataclass
class _Step:
    """What one z-dependent node does to the tangents (see _tangent_pass)."""

    out: int
    ins: tuple[int, ...]
    kind: str  # "map" | "mul" | "sum" | "cat"
    fn: Callable[[Tensor], Tensor] | None = None  # map: a linear map applied to each tangent row
    weight: Tensor | None = None  # map of a Linear layer: W [out, in] (one-hot tangents → gather)
    factor: object = None  # mul: a number or a tensor broadcasting against the value
    per_example: bool = False  # mul: factor is [B, ...], one per example, shared by its k tangents
    terms: tuple = ()  # sum: (factor, per_example) per input
    parts: tuple = ()  # cat: per part, an input position or the per-example shape of a constant part
    dim: int = 0  # cat
    shape: tuple = ()  # the value's per-example shape y.shape[1:]
    expand: bool = False  # mul: the value is larger than its input (a constant operand broadcast it)


class ChainPlan:
    """A decoder as a plan of supported nodes; :meth:`run` gives g(z) and Jacobian columns."""

    def __init__(self, nodes: list[_Node], source: str) -> None:
        self.nodes = nodes
        self.source = source
        self.input = next(i for i, n in enumerate(nodes) if n.op == "input")
        self.batchnorms = [n.target for n in nodes if n.op == "module" and isinstance(n.target, nn.modules.batchnorm._BatchNorm)]
        self._row_bytes: dict[tuple, int] = {}  # widest per-example row seen, per input signature
        self.last_mode = ""  # "lockstep", "sliced" or "fixed": how the last run went (for tests and benchmarks)
        # the fixed schedule for declared chains (see run); the adaptive one for traced forwards
        self.fixed = source == "jacobian_chain()"

    def describe(self) -> tuple[str, ...]:
        """One line per node that carries tangents, in evaluation order."""
        return tuple(_describe(n) for n in self.nodes if n.carrying and n.op not in ("input", "output"))

    def run(self, root: object, z: Tensor, columns: Tensor) -> tuple[Tensor, Tensor]:
        """g(z) ``[B, D]`` and the Jacobian columns ``[B, D, k]`` at ``columns [B, k]``.

        When all k·B tangent rows fit in one slice (see :func:`slice_examples`; the widest row is
        known from an earlier call with inputs of this signature), the tangents are computed in the
        same pass as the primal ("lockstep"), and a Linear layer or convolution then runs the primal
        rows and the tangent rows through one call (one larger GEMM forward and backward). Otherwise
        the primal pass records the tangent steps and the tangent pass runs them on slices. A
        declared chain always takes the fixed schedule (see the module docstring).

        Raises ChainRefused (running statistics restored) when a node turns out to be unsupported
        for this input."""
        B, k = columns.shape
        key = (z.dim(), tuple(z.shape[1:]), z.dtype, z.device)
        known = self._row_bytes.get(key)
        env = None
        if not self.fixed and known is not None and slice_examples(k, known) >= B:
            env = _Env(self.input, columns.reshape(-1), z, 0, B, k)
        self.last_mode = "fixed" if self.fixed else "sliced" if env is None else "lockstep"
        saved = save_running_stats([bn for bn in self.batchnorms if bn.training])
        try:
            out, steps, result, row_bytes = self._primal_pass(root, z, env)
        except ChainRefused:
            restore_running_stats(saved)
            raise
        self._row_bytes[key] = row_bytes
        g = out.reshape(B, -1)
        if result is None:  # the output does not depend on z
            return g, g.new_zeros(B, g.shape[1], k)
        if env is not None:
            return g, env.get(result).reshape(B, k, -1).transpose(1, 2)
        return g, _tangent_pass(steps, self.input, result, columns, z, row_bytes, fixed=self.fixed)

    def _primal_pass(self, root: object, z: Tensor, env: _Env | None) -> tuple[Tensor, list[_Step], int | None, int]:
        """One forward through the plan: the output, the tangent steps, the index of the output's
        z-dependent value (None: the output does not depend on z) and the widest row in bytes.
        With ``env`` (lockstep) the tangents are computed on the way, in ``env``."""
        B = z.shape[0]
        vals: list[object] = [None] * len(self.nodes)
        steps: list[_Step] = []
        row_bytes = z.numel() // B * z.element_size()
        for i, node in enumerate(self.nodes):
            op = node.op
            if op == "input":
                vals[i] = z
                continue
            if op == "attr":
                vals[i] = _fetch(root, node.target)
                continue
            if op == "const":
                vals[i] = node.target
                continue
            if node.nested:
                args, kwargs = _load(node.args, vals), _load(node.kwargs, vals)
            else:
                args = tuple(vals[a.index] if type(a) is _Ref else a for a in node.args)
                kwargs = node.kwargs
            if op == "output":
                out = args[0]
                if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != B:
                    raise ValueError(f"decoder: must map [B, d] to [B, ...]; got output of shape {getattr(out, 'shape', None)}")
                if not node.carrying:
                    return out, [], None, row_bytes
                result = node.args[0].index
                return out, ([] if env is not None else _fold(_needed(steps, result), self.nodes)), result, row_bytes
            if not node.carrying:
                vals[i] = _call(node, args, kwargs)
                continue
            if env is not None and node.merge is not None and node.src != self.input:
                y, T = node.merge(node, args[0], env.get(node.src))
                env.put(i, T)
            else:
                y, step = node.rule(self, node, args, kwargs, B)
                if not isinstance(y, Tensor) or y.dim() < 1 or y.shape[0] != B:
                    raise ChainRefused(f"{_describe(node)} does not keep the batch dimension first "
                                       f"(output shape {tuple(getattr(y, 'shape', ()))} from a batch of {B})")
                step.out, step.shape = i, tuple(y.shape[1:])
                if step.kind == "mul" and tuple(vals[step.ins[0]].shape[1:]) != step.shape:
                    step.expand = True  # a constant operand broadcast the value to a larger shape
                if env is not None:
                    env.run(step)
                else:
                    steps.append(step)
            vals[i] = y
            row_bytes = max(row_bytes, y.numel() // B * y.element_size())
            if env is not None:
                for j in node.frees:
                    env.drop(j)
        raise AssertionError("plan without an output node")

    def is_carrying(self, arg: object) -> bool:
        return isinstance(arg, _Ref) and self.nodes[arg.index].carrying


def save_running_stats(bns: list[nn.Module]) -> list[tuple]:
    """Copies of the running statistics of BatchNorm layers, for :func:`restore_running_stats`."""
    return [(bn, tuple(None if t is None else t.clone() for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)))
            for bn in bns]


def restore_running_stats(saved: list[tuple]) -> None:
    with torch.no_grad():
        for bn, state in saved:
            for t, v in zip((bn.running_mean, bn.running_var, bn.num_batches_tracked), state):
                if t is not None:
                    t.copy_(v)


def _fetch(root: object, path: str) -> object:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _load(a: object, vals: list) -> object:
    if isinstance(a, _Ref):
        return vals[a.index]
    if isinstance(a, tuple):
        return tuple(_load(x, vals) for x in a)
    if isinstance(a, list):
        return [_load(x, vals) for x in a]
    if isinstance(a, dict):
        return {k: _load(v, vals) for k, v in a.items()}
    if isinstance(a, slice):
        return slice(_load(a.start, vals), _load(a.stop, vals), _load(a.step, vals))
    return a


def _call(node: _Node, args: tuple, kwargs: dict) -> object:
    if node.op == "module":
        return node.target(*args, **kwargs)
    if node.op == "function":
        return node.target(*args, **kwargs)
    return getattr(args[0], node.target)(*args[1:], **kwargs)


# ------------------------------------------------------------------ folding and the tangent pass


def _needed(steps: list[_Step], result: int) -> list[_Step]:
    """The steps the output's tangent depends on (a forward may compute values it does not return)."""
    need, out = {result}, []
    for st in reversed(steps):
        if st.out in need:
            need.update(st.ins)
            out.append(st)
    return out[::-1]


def _is_one(f: object) -> bool:
    return isinstance(f, (int, float)) and not isinstance(f, bool) and f == 1


def _fold(steps: list[_Step], nodes: list[_Node]) -> list[_Step]:
    """Merge an elementwise factor into the next one when its value has no other use (a BatchNorm
    scale into the following activation's derivative, a constant into a derivative, ...): one
    multiplication per tangent instead of several."""
    out: list[_Step] = []
    for st in steps:
        prev = out[-1] if out else None
        if (st.kind == "mul" and prev is not None and prev.kind == "mul" and st.ins[0] == prev.out
                and nodes[prev.out].users == 1):
            f = st.factor if _is_one(prev.factor) else prev.factor if _is_one(st.factor) else prev.factor * st.factor
            out[-1] = _Step(st.out, prev.ins, "mul", factor=f, per_example=prev.per_example or st.per_example, shape=st.shape)
            continue
        out.append(st)
    return out


# Slices of the batch for the tangent pass: as many examples as keep the widest tangent slice
# under SLICE_BYTES. One pass over all k·B rows spills the activations out of cache on the
# conv decoders (measured on the Appendix D MNIST decoder, d = 12: slices of 96 rows = 12 MiB of
# its widest activation were the fastest of 48–384 rows); an MLP's tangents fit in one slice.
SLICE_BYTES = 12 * 2**20


# The fixed schedule's slices: about CHAIN_ROWS (example, column) rows, whatever the layer widths
# (the fastest of 48–384 rows for every convolution of the Appendix D MNIST decoder at d = 12).
CHAIN_ROWS = 96


def slice_examples(k: int, row_bytes: int) -> int:
    """Examples per slice of the tangent pass for k tangents per example and rows of row_bytes."""
    return max(1, SLICE_BYTES // max(1, k * row_bytes))


def _times(T: Tensor, f: object, per_example: bool, s: int, b: int, k: int) -> Tensor:
    if not per_example:
        return T * f
    rest = T.shape[1:]
    y = T.reshape(b, k, *rest) * f[s : s + b].unsqueeze(1)
    return y.reshape(b * k, *y.shape[2:])


class _Env:
    """The tangents of one slice of the batch (examples s … s+b−1, k rows each) by value index.

    Each entry is (T, factor, per_example): the tangent is T times the factor (None: T itself).
    An elementwise step only combines factors (one per batch, not per tangent row); the product
    touches the tangent rows once, when a linear map, a sum or the output needs them."""

    def __init__(self, input_index: int, cols: Tensor, z: Tensor, s: int, b: int, k: int, gather: bool = True) -> None:
        self.input, self.cols, self.z, self.s, self.b, self.k = input_index, cols, z, s, b, k
        self.gather = gather  # a first Linear layer on the one-hot tangents: gather its weight's columns
        self.vals: dict[int, tuple] = {}

    def lazy(self, i: int) -> tuple:
        entry = self.vals.get(i)
        if entry is None:
            if i != self.input:
                raise AssertionError(f"tangent of value {i} requested before it was computed")
            entry = self.vals[i] = (F.one_hot(self.cols, self.z.shape[1]).to(self.z.dtype), None, False)
        return entry

    def get(self, i: int) -> Tensor:
        T, f, pe = self.lazy(i)
        if f is not None:
            T = _times(T, f, pe, self.s, self.b, self.k)
            self.vals[i] = (T, None, False)
        return T

    def put(self, i: int, T: Tensor) -> None:
        self.vals[i] = (T, None, False)

    def drop(self, i: int) -> None:
        self.vals.pop(i, None)

    def run(self, st: _Step) -> None:
        kind = st.kind
        if kind == "mul":
            src = st.ins[0]
            if st.expand:
                T = self.get(src)
                T = T if _is_one(st.factor) else _times(T, st.factor, st.per_example, self.s, self.b, self.k)
                self.vals[st.out] = (T.expand(T.shape[0], *st.shape) if tuple(T.shape[1:]) != st.shape else T, None, False)
                return
            T, f, pe = self.lazy(src)
            if _is_one(st.factor):
                self.vals[st.out] = (T, f, pe)
            elif f is None:
                self.vals[st.out] = (T, st.factor, st.per_example)
            else:
                self.vals[st.out] = (T, f * st.factor, pe or st.per_example)
            return
        if kind == "map":
            src = st.ins[0]
            if st.weight is not None and src == self.input and src not in self.vals and self.gather:
                T = st.weight.t()[self.cols]  # a Linear layer on one-hot tangents: its weight's columns
            else:
                T = st.fn(self.get(src))
        elif kind == "sum":
            T = None
            for i, (f, pe) in zip(st.ins, st.terms):
                Ti, fi, pei = self.lazy(i)
                if not _is_one(f):
                    fi, pei = (f, pe) if fi is None else (fi * f, pei or pe)
                t = Ti if fi is None else _times(Ti, fi, pei, self.s, self.b, self.k)
                T = t if T is None else T + t
        else:  # cat
            ref = self.get(st.ins[0])
            T = torch.cat([self.get(st.ins[p]) if isinstance(p, int) else ref.new_zeros(ref.shape[0], *p) for p in st.parts], st.dim)
        if tuple(T.shape[1:]) != st.shape:  # a constant operand broadcast the value
            T = T.expand(T.shape[0], *st.shape)
        self.vals[st.out] = (T, None, False)


def _tangent_pass(steps: list[_Step], input_index: int, result: int, columns: Tensor, z: Tensor, row_bytes: int,
                  fixed: bool = False) -> Tensor:
    """The k tangents of each example through the steps, on slices of the batch → ``[B, D, k]``
    (``fixed``: the fixed schedule, see :class:`ChainPlan`)."""
    B, k = columns.shape
    last_use: dict[int, int] = {}
    for j, st in enumerate(steps):
        for i in st.ins:
            last_use[i] = j
    per = max(1, CHAIN_ROWS // max(k, 1)) if fixed else slice_examples(k, row_bytes)
    parts = []
    for s in range(0, B, per):
        b = min(per, B - s)
        env = _Env(input_index, columns[s : s + b].reshape(-1), z, s, b, k, gather=not fixed)
        for j, st in enumerate(steps):
            env.run(st)
            for i in st.ins:
                if last_use.get(i) == j and i != result:
                    env.drop(i)
        parts.append(env.get(result).reshape(b, k, -1))
    J = parts[0] if len(parts) == 1 else torch.cat(parts)
    return J.transpose(1, 2)


# ------------------------------------------------------------------ rules: one per kind of node
# rule(plan, node, args, kwargs, B) → (y, _Step without out/shape); args are values.


def _factor(f: object, y: Tensor, B: int) -> tuple[object, bool]:
    """A multiplier of a tangent: (value, per_example). A tensor [B, ...] of y's rank is one per example."""
    if isinstance(f, Tensor) and f.dim() == y.dim() and f.shape[0] == B and B > 1:
        return f, True
    return f, False


def _one_input(plan: ChainPlan, node: _Node) -> int:
    """The index of the only z-dependent argument, which must be the first one."""
    if node.src is None:
        raise ChainRefused(f"{_describe(node)} depends on z through an argument other than its input")
    return node.src


def _refs(a: object) -> list[_Ref]:
    if isinstance(a, _Ref):
        return [a]
    if isinstance(a, (tuple, list)):
        return [r for x in a for r in _refs(x)]
    if isinstance(a, dict):
        return [r for x in a.values() for r in _refs(x)]
    if isinstance(a, slice):
        return _refs((a.start, a.stop, a.step))
    return []


def _bind(node: _Node, args: tuple, kwargs: dict, names: tuple[str, ...], defaults: dict) -> dict:
    """The arguments after the input, by name (a refusal for anything unexpected)."""
    if len(args) - 1 > len(names) or any(k not in names for k in kwargs):
        raise ChainRefused(f"{_describe(node)}: unexpected arguments")
    out = dict(defaults)
    out.update(zip(names, args[1:]))
    out.update(kwargs)
    return out


def _rule_activation_module(plan, node, args, kwargs, B):
    m = node.target
    deriv, params = _ACT_MODULES[type(m)]
    y, dy = deriv(args[0], **params(m))
    return y, _Step(0, (_one_input(plan, node),), "mul", factor=dy, per_example=True)


def _rule_activation_function(plan, node, args, kwargs, B):
    deriv, names, defaults = _ACT_FUNCTIONS[node.target]
    p = _bind(node, args, kwargs, names, defaults)
    p.pop("inplace", None)
    y, dy = deriv(args[0], **p)
    return y, _Step(0, (_one_input(plan, node),), "mul", factor=dy, per_example=True)


def _rule_activation_method(plan, node, args, kwargs, B):
    if len(args) != 1 or kwargs:
        raise ChainRefused(f"{_describe(node)}: unexpected arguments")
    y, dy = _ACT_METHODS[node.target](args[0])
    return y, _Step(0, (_one_input(plan, node),), "mul", factor=dy, per_example=True)


def _rule_linear_module(plan, node, args, kwargs, B):
    m, x = node.target, args[0]
    if len(args) != 1 or kwargs:
        raise ChainRefused(f"{_describe(node)}: unexpected arguments")
    if x.shape[-1] != m.in_features:
        raise ValueError(f"z: the decoder's Linear layer expects {m.in_features} inputs, got shape {tuple(x.shape)} ({_describe(node)})")
    src = _one_input(plan, node)
    W = m.weight
    return m(x), _Step(0, (src,), "map", fn=lambda T: F.linear(T, W), weight=W if x.dim() == 2 else None)


def _merge_linear(node, x: Tensor, T: Tensor) -> tuple[Tensor, Tensor]:
    """A Linear layer on primal and tangent rows in one GEMM (the bias on the primal rows only)."""
    m = node.target
    if x.shape[-1] != m.in_features:
        raise ValueError(f"z: the decoder's Linear layer expects {m.in_features} inputs, got shape {tuple(x.shape)} ({_describe(node)})")
    out = F.linear(torch.cat([x, T]), m.weight)
    B = x.shape[0]
    return (out[:B] if m.bias is None else out[:B] + m.bias), out[B:]


def _merge_conv(node, x: Tensor, T: Tensor) -> tuple[Tensor, Tensor]:
    """A convolution on primal and tangent rows in one call (the bias on the primal rows only)."""
    m = node.target
    out = conv_linear_part(m, torch.cat([x, T]))
    B = x.shape[0]
    y = out[:B] if m.bias is None else out[:B] + m.bias.reshape([1, -1] + [1] * (out.dim() - 2))
    return y, out[B:]


def _rule_conv_module(plan, node, args, kwargs, B):
    m = node.target
    if len(args) != 1 or kwargs:  # ConvTranspose's output_size
        raise ChainRefused(f"{_describe(node)}: only the one-argument call is supported")
    return m(args[0]), _Step(0, (_one_input(plan, node),), "map", fn=lambda T: conv_linear_part(m, T))


def _rule_batchnorm(plan, node, args, kwargs, B):
    m, x = node.target, args[0]
    if len(args) != 1 or kwargs:
        raise ChainRefused(f"{_describe(node)}: unexpected arguments")
    if m.training or m.running_var is None:  # batch statistics, held constant for the tangent
        mean, var = batch_stats(m, x, 1)
        y = normalise(m, x, mean, var)
    else:
        var, y = m.running_var, m(x)
    scale = torch.rsqrt(var + m.eps)
    if m.affine:
        scale = scale * m.weight
    return y, _Step(0, (_one_input(plan, node),), "mul", factor=scale.reshape([1, -1] + [1] * (x.dim() - 2)))


def _rule_same_map_module(plan, node, args, kwargs, B):
    """A module that is linear in its input and acts on each example alone (padding, pooling by
    averages, interpolation, pixel shuffles, Flatten/Unflatten): the tangent is the module applied to it."""
    m = node.target
    if len(args) != 1 or kwargs:
        raise ChainRefused(f"{_describe(node)}: unexpected arguments")
    y = m(args[0])
    if isinstance(m, (nn.Flatten, nn.Unflatten)):
        return y, _reshape_step(plan, node, args[0], y)
    return y, _Step(0, (_one_input(plan, node),), "map", fn=m)


def _rule_identity_module(plan, node, args, kwargs, B):
    m = node.target
    if type(m) is not nn.Identity and m.training and m.p > 0:
        raise ChainRefused(f"{_describe(node)}: dropout in training mode")
    return args[0], _Step(0, (_one_input(plan, node),), "mul", factor=1)


def _reshape_step(plan, node, x: Tensor, y: Tensor) -> _Step:
    # A row-major reshape that keeps the batch size first keeps each example's values in its own row.
    if not isinstance(y, Tensor) or y.dim() < 1 or y.shape[0] != x.shape[0]:
        raise ChainRefused(f"{_describe(node)} would reshape the batch dimension "
                           f"({tuple(x.shape)} → {tuple(getattr(y, 'shape', ()))})")
    rest = tuple(y.shape[1:])
    return _Step(0, (_one_input(plan, node),), "map", fn=lambda T: T.reshape(T.shape[0], *rest))


def _rule_reshape(plan, node, args, kwargs, B):
    y = _call(node, args, kwargs)
    return y, _reshape_step(plan, node, args[0], y)


def _norm_dim(d: int, n: int) -> int:
    return d % n if n else d


def _rule_permute(plan, node, args, kwargs, B):
    x = args[0]
    dims = kwargs.get("dims", args[1:] if not (len(args) == 2 and isinstance(args[1], (tuple, list))) else args[1])
    if len(dims) != x.dim() or _norm_dim(dims[0], x.dim()) != 0:
        raise ChainRefused(f"{_describe(node)} would move the batch dimension (dims {tuple(dims)})")
    dims = tuple(dims)
    return x.permute(dims), _Step(0, (_one_input(plan, node),), "map", fn=lambda T: T.permute(dims))


def _rule_transpose(plan, node, args, kwargs, B):
    p = _bind(node, args, kwargs, ("dim0", "dim1"), {})
    x = args[0]
    a, b = _norm_dim(p["dim0"], x.dim()), _norm_dim(p["dim1"], x.dim())
    if 0 in (a, b) and a != b:
        raise ChainRefused(f"{_describe(node)} would move the batch dimension (dims {a}, {b})")
    return x.transpose(a, b), _Step(0, (_one_input(plan, node),), "map", fn=lambda T: T.transpose(a, b))


def _tangent_index(idx: object, ndim: int, B: int) -> tuple | None:
    """The same index for tangents ([B·k, ...] rows), or None when it touches the batch dimension."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    for e in idx:
        if not (e is None or e is Ellipsis or isinstance(e, slice) or (isinstance(e, int) and not isinstance(e, bool))):
            return None  # tensor, list or boolean indices
        if isinstance(e, slice) and not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (e.start, e.stop, e.step)):
            return None
    consuming = sum(1 for e in idx if e is not None and e is not Ellipsis)
    for pos, e in enumerate(idx):
        if e is None:
            return None  # a new axis before the batch dimension
        if e is Ellipsis:
            if ndim - consuming >= 1:
                return idx  # the ellipsis spans the batch dimension
            continue
        if isinstance(e, slice) and range(B)[e] == range(B):
            return idx[:pos] + (slice(None),) + idx[pos + 1 :]
        return None
    return idx


def _rule_getitem(plan, node, args, kwargs, B):
    x, idx = args
    if not isinstance(x, Tensor):
        raise ChainRefused(f"{_describe(node)}: indexing a value that is not a tensor")
    t_idx = _tangent_index(idx, x.dim(), B)
    if t_idx is None:
        raise ChainRefused(f"{_describe(node)}: the index {idx!r} selects along the batch dimension or uses tensors")
    return x[idx], _Step(0, (_one_input(plan, node),), "map", fn=lambda T: T[t_idx])


def _rule_pad(plan, node, args, kwargs, B):
    p = _bind(node, args, kwargs, ("pad", "mode", "value"), {"mode": "constant", "value": None})
    x = args[0]
    pad, mode = tuple(p["pad"]), p["mode"]
    if len(pad) % 2 or len(pad) // 2 > x.dim() - 1:
        raise ChainRefused(f"{_describe(node)} pads the batch dimension (pad {pad} on a {x.dim()}-d value)")
    y = F.pad(x, pad, mode, p["value"])
    return y, _Step(0, (_one_input(plan, node),), "map", fn=lambda T: F.pad(T, pad, mode, 0.0 if mode == "constant" else None))


def _rule_same_map_function(plan, node, args, kwargs, B):
    """A function linear in its first argument acting per example (pooling by averages,
    interpolation, pixel shuffles): the tangent is the same call on the tangent."""
    src = _one_input(plan, node)
    rest, kw = args[1:], kwargs
    return node.target(*args, **kwargs), _Step(0, (src,), "map", fn=lambda T: node.target(T, *rest, **kw))


_LINEAR_FUNCTIONS: dict[object, tuple[str, ...]] = {
    F.linear: ("weight", "bias"),
    F.conv1d: ("weight", "bias", "stride", "padding", "dilation", "groups"),
    F.conv2d: ("weight", "bias", "stride", "padding", "dilation", "groups"),
    F.conv3d: ("weight", "bias", "stride", "padding", "dilation", "groups"),
    F.conv_transpose1d: ("weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"),
    F.conv_transpose2d: ("weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"),
    F.conv_transpose3d: ("weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"),
}


def _rule_linear_function(plan, node, args, kwargs, B):
    """F.linear / F.conv* with z-independent weights: the tangent is the map without its bias."""
    src = _one_input(plan, node)
    p = _bind(node, args, kwargs, _LINEAR_FUNCTIONS[node.target], {"bias": None})
    if "weight" not in p:
        raise ChainRefused(f"{_describe(node)}: no weight")
    y = node.target(*args, **kwargs)
    p["bias"] = None
    fn = node.target
    W = p["weight"]
    weight = W if fn is F.linear and args[0].dim() == 2 else None
    return y, _Step(0, (src,), "map", fn=lambda T: fn(T, **p), weight=weight)


def _rule_cat(plan, node, args, kwargs, B):
    p = _bind(node, args, kwargs, ("dim",), {"dim": 0})
    raw = node.args[0] if node.args else node.kwargs.get("tensors")
    tensors = args[0] if args else kwargs["tensors"]
    y = torch.cat(tensors, p["dim"])
    dim = _norm_dim(p["dim"], y.dim())
    if dim == 0:
        raise ChainRefused(f"{_describe(node)} concatenates along the batch dimension")
    ins, parts = [], []
    for r, t in zip(raw, tensors):
        if plan.is_carrying(r):
            parts.append(len(ins))
            ins.append(r.index)
        else:
            parts.append(tuple(t.shape[1:]))
    if not ins:
        raise ChainRefused(f"{_describe(node)}: no z-dependent part")
    return y, _Step(0, tuple(ins), "cat", parts=tuple(parts), dim=dim)


def _rule_reduce(plan, node, args, kwargs, B):
    """sum/mean over dimensions other than the batch dimension (dims given explicitly)."""
    p = _bind(node, args, kwargs, ("dim", "keepdim", "dtype"), {"dim": None, "keepdim": False, "dtype": None})
    x, dims = args[0], p["dim"]
    dims_t = (dims,) if isinstance(dims, int) else tuple(dims or ())
    if dims is None or not dims_t or any(_norm_dim(d, x.dim()) == 0 for d in dims_t) or p["dtype"] is not None:
        raise ChainRefused(f"{_describe(node)} reduces over the batch dimension (dim={dims!r})")
    name = node.target if node.op == "method" else node.target.__name__
    keep = p["keepdim"]
    y = getattr(x, name)(dims, keep)
    return y, _Step(0, (_one_input(plan, node),), "map", fn=lambda T: getattr(T, name)(dims, keep))


def _rule_expand(plan, node, args, kwargs, B):
    x = args[0]
    y = _call(node, args, kwargs)
    if y.dim() != x.dim():
        raise ChainRefused(f"{_describe(node)} adds leading dimensions")
    rest = tuple(y.shape[1:])
    return y, _Step(0, (_one_input(plan, node),), "map", fn=lambda T: T.expand(T.shape[0], *rest))


def _rule_alias(plan, node, args, kwargs, B):
    """contiguous(), clone(), F.dropout outside training: the value itself, for the tangent too."""
    if node.target is F.dropout:
        p = _bind(node, args, kwargs, ("p", "training", "inplace"), {"p": 0.5, "training": True, "inplace": False})
        if p["training"] and p["p"] > 0:
            raise ChainRefused(f"{_describe(node)}: dropout in training mode")
        y = args[0]
    elif len(args) != 1 or kwargs:
        raise ChainRefused(f"{_describe(node)}: unexpected arguments")
    else:
        y = _call(node, args, kwargs)
    return y, _Step(0, (_one_input(plan, node),), "mul", factor=1)


_ARITH = {
    operator.add: "add", torch.add: "add", "add": "add",
    operator.sub: "sub", torch.sub: "sub", "sub": "sub",
    operator.mul: "mul", torch.mul: "mul", "mul": "mul",
    operator.truediv: "div", torch.div: "div", torch.true_divide: "div", "div": "div", "true_divide": "div",
    operator.neg: "neg", torch.neg: "neg", "neg": "neg",
    operator.pow: "pow", torch.pow: "pow", "pow": "pow",
}


def _rule_arith(plan, node, args, kwargs, B):
    """+, −, ×, ÷, negation and constant powers: the tangent is Σ ∂y/∂aⱼ · Tⱼ over the z-dependent operands."""
    kind = _ARITH[node.target]
    allowed = {"add": ("alpha",), "sub": ("alpha",), "div": ("rounding_mode",)}.get(kind, ())
    if any(k not in allowed for k in kwargs) or kwargs.get("rounding_mode") is not None:
        raise ChainRefused(f"{_describe(node)}: unsupported arguments {sorted(kwargs)}")
    n_ops = 1 if kind == "neg" else 2
    if len(args) != n_ops:
        raise ChainRefused(f"{_describe(node)}: unexpected arguments")
    y = _call(node, args, kwargs)
    raw = node.args
    alpha = kwargs.get("alpha", 1)
    ins, terms = [], []
    for pos in range(n_ops):
        if not plan.is_carrying(raw[pos]):
            continue
        a = args[pos]
        if a.dim() != y.dim():
            raise ChainRefused(f"{_describe(node)} broadcasts a z-dependent value of shape {tuple(a.shape)} to {tuple(y.shape)}")
        other = args[1 - pos] if n_ops == 2 else None
        if kind == "add":
            f = 1 if pos == 0 else alpha
        elif kind == "sub":
            f = 1 if pos == 0 else -alpha
        elif kind == "neg":
            f = -1
        elif kind == "mul":
            f = other
        elif kind == "div":
            f = 1 / other if pos == 0 else -y / other
        else:  # pow
            if pos == 1 or plan.is_carrying(raw[1]) or not isinstance(other, (int, float)):
                raise ChainRefused(f"{_describe(node)}: only powers with a constant number as exponent are supported")
            f = other * a.pow(other - 1)
        ins.append(raw[pos].index)
        terms.append(_factor(f, y, B))
    if len(ins) == 1:
        f, pe = terms[0]
        return y, _Step(0, tuple(ins), "mul", factor=f, per_example=pe)
    return y, _Step(0, tuple(ins), "sum", terms=tuple(terms))


# node → rule tables
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_SAME_MAP_MODULES = (
    nn.Flatten, nn.Unflatten, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
    nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
    nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.PixelShuffle, nn.PixelUnshuffle,
)
_ZERO_PADS = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

_FUNCTION_RULES: dict[object, Callable] = {
    **{f: _rule_activation_function for f in _ACT_FUNCTIONS},
    **{f: _rule_linear_function for f in _LINEAR_FUNCTIONS},
    **{f: _rule_arith for f in _ARITH if not isinstance(f, str)},
    operator.getitem: _rule_getitem,
    F.pad: _rule_pad,
    torch.reshape: _rule_reshape, torch.flatten: _rule_reshape, torch.squeeze: _rule_reshape,
    torch.unsqueeze: _rule_reshape, torch.unflatten: _rule_reshape,
    torch.permute: _rule_permute, torch.transpose: _rule_transpose,
    torch.cat: _rule_cat, torch.concat: _rule_cat,
    torch.sum: _rule_reduce, torch.mean: _rule_reduce,
    torch.clone: _rule_alias, F.dropout: _rule_alias,
    F.interpolate: _rule_same_map_function, F.avg_pool1d: _rule_same_map_function,
    F.avg_pool2d: _rule_same_map_function, F.avg_pool3d: _rule_same_map_function,
    F.adaptive_avg_pool1d: _rule_same_map_function, F.adaptive_avg_pool2d: _rule_same_map_function,
    F.adaptive_avg_pool3d: _rule_same_map_function, F.pixel_shuffle: _rule_same_map_function,
    F.pixel_unshuffle: _rule_same_map_function,
}
_METHOD_RULES: dict[str, Callable] = {
    **{m: _rule_activation_method for m in _ACT_METHODS},
    **{m: _rule_arith for m in _ARITH if isinstance(m, str)},
    "view": _rule_reshape, "reshape": _rule_reshape, "flatten": _rule_reshape, "unflatten": _rule_reshape,
    "squeeze": _rule_reshape, "unsqueeze": _rule_reshape, "view_as": _rule_reshape, "reshape_as": _rule_reshape,
    "permute": _rule_permute, "transpose": _rule_transpose, "expand": _rule_expand,
    "contiguous": _rule_alias, "clone": _rule_alias, "sum": _rule_reduce, "mean": _rule_reduce,
}
_SHAPE_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "layout", "requires_grad"}
_SHAPE_METHODS = {"size", "dim", "numel", "nelement", "ndimension", "element_size", "get_device"}
_VIEWS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "permute", "transpose", "expand",
          "view_as", "reshape_as"}


def _module_rule(m: nn.Module) -> tuple[Callable | None, str]:
    t = type(m)
    if t is nn.Linear:
        return _rule_linear_module, ""
    if t in PLAIN_CONVS:
        return _rule_conv_module, ""
    if t in _BATCHNORMS:
        return _rule_batchnorm, ""
    if t in _ACT_MODULES:
        return _rule_activation_module, ""
    if t in _SAME_MAP_MODULES:
        return _rule_same_map_module, ""
    if t in _IDENTITY_MODULES:
        if t is not nn.Identity and m.training and m.p > 0:
            return None, "dropout in training mode"
        return _rule_identity_module, ""
    return None, f"{t.__name__} is not a layer the chain route knows"


def _in_place(node: _Node) -> bool:
    if node.op == "module":
        return bool(getattr(node.target, "inplace", False))
    if node.op == "function" and node.target in (F.elu, F.relu, F.leaky_relu, F.silu, F.dropout):
        names = _ACT_FUNCTIONS[node.target][1] if node.target in _ACT_FUNCTIONS else ("p", "training", "inplace")
        pos = 1 + names.index("inplace")
        return bool(node.kwargs.get("inplace", node.args[pos] if len(node.args) > pos else False))
    return False


def _check_plan(nodes: list[_Node]) -> str:
    """Mark the z-dependent nodes, attach their rules; '' or why the plan is not supported."""
    for node in nodes:
        for r in _refs(node.args) + _refs(node.kwargs):
            nodes[r.index].users += 1
        node.nested = bool(_refs(node.kwargs)) or any(not isinstance(a, _Ref) and _refs(a) for a in node.args)
    for node in nodes:
        if node.op == "input":
            node.carrying = True
            continue
        deps = [r for r in _refs(node.args) + _refs(node.kwargs) if nodes[r.index].carrying]
        if len({r.index for r in deps}) == 1 and node.args and isinstance(node.args[0], _Ref) \
                and node.args[0].index == deps[0].index and len(deps) == 1:
            node.src = deps[0].index
        if not deps or node.op in ("attr", "const"):
            continue
        if node.op == "function" and node.target is getattr and len(node.args) == 2 and node.args[1] in _SHAPE_ATTRS:
            continue  # x.shape, x.dtype, ...: no tangent
        if node.op == "method" and node.target in _SHAPE_METHODS:
            continue
        node.carrying = True
        if node.op == "output":
            if not isinstance(node.args[0], _Ref):
                return "the decoder returns a tuple, list or dict, not one tensor"
            continue
        if node.op == "module":
            node.rule, why = _module_rule(node.target)
        elif node.op == "function":
            node.rule, why = _FUNCTION_RULES.get(node.target), "not a function the chain route knows"
        else:
            node.rule, why = _METHOD_RULES.get(node.target), "not a tensor method the chain route knows"
        if node.rule is None:
            return f"{_describe(node)}: {why}"
        if _in_place(node):
            src = nodes[deps[0].index]
            if src.users > 1 or src.op == "input" or (src.op == "method" and src.target in _VIEWS):
                return f"{_describe(node)} works in place on a value that is used elsewhere"
        if node.op == "module" and node.src is not None and len(node.args) == 1 and not node.kwargs:
            if type(node.target) is nn.Linear:
                node.merge = _merge_linear
            elif type(node.target) in PLAIN_CONVS:
                node.merge = _merge_conv
    last: dict[int, int] = {}
    for j, node in enumerate(nodes):
        for r in _refs(node.args) + _refs(node.kwargs):
            last[r.index] = j
    for i, j in last.items():
        nodes[j].frees += (i,)
    return ""


# ------------------------------------------------------------------ building plans


def _plan_from_layers(layers: list[object]) -> tuple[ChainPlan | None, str]:
    """A plan for a module's ``jacobian_chain()``: its layers in sequence, nested nn.Sequentials flattened."""
    nodes = [_Node("input", None, name="z")]
    todo = list(layers)
    while todo:
        m = todo.pop(0)
        if type(m) is nn.Sequential and not _hooked(m):
            todo[:0] = list(m)
            continue
        name = f"layer {len(nodes) - 1}"
        if not isinstance(m, nn.Module):
            return None, f"{name} ({type(m).__name__}): it is not an nn.Module"
        if _hooked(m):
            return None, f"{name} ({type(m).__name__}): it has hooks"
        nodes.append(_Node("module", m, (_Ref(len(nodes) - 1),), name=name))
    nodes.append(_Node("output", None, (_Ref(len(nodes) - 1),), name="output"))
    why = _check_plan(nodes)
    return (None, why) if why else (ChainPlan(nodes, "jacobian_chain()"), "")


class _InputProxy(fx.Proxy):
    """The decoder input while tracing: its rank, feature sizes, dtype and device are those of the
    z at hand (recorded, so the plan is cached per input signature); the batch size stays symbolic."""

    def __init__(self, node, tracer, example: Tensor) -> None:
        super().__init__(node, tracer)
        self._example = example

    def _used(self) -> None:
        self.tracer.used_signature = True

    @property
    def shape(self):
        self._used()
        return (fx.Proxy.__getattr__(self, "shape")[0], *self._example.shape[1:])

    def size(self, dim=None):
        self._used()
        if dim is None:
            return self.shape
        return self.shape[dim] if _norm_dim(dim, self._example.dim()) else fx.Proxy.__getattr__(self, "size")(dim)

    def dim(self) -> int:
        self._used()
        return self._example.dim()

    ndimension = dim

    @property
    def ndim(self) -> int:
        return self.dim()

    @property
    def dtype(self):
        self._used()
        return self._example.dtype

    @property
    def device(self):
        self._used()
        return self._example.device

    def __len__(self) -> int:  # the batch size, concretely: the plan is then cached per batch size
        self._used()
        self.tracer.used_batch = True
        return self._example.shape[0]


class _Tracer(fx.Tracer):
    def __init__(self, example: Tensor) -> None:
        super().__init__(param_shapes_constant=True)
        self.example = example
        self.used_signature = False
        self.used_batch = False
        self.constants: dict[str, Tensor] = {}
        self._inputs = 0

    def proxy(self, node):
        if node.op == "placeholder" and self._inputs == 0:
            self._inputs += 1
            return _InputProxy(node, self, self.example)
        return super().proxy(node)

    def create_arg(self, a):
        # Tensors that are neither parameters, buffers nor attributes of the module (closures, globals,
        # torch.tensor(...) in forward) are kept in the plan instead of being set on the user's module.
        if isinstance(a, Tensor) and not isinstance(a, nn.Parameter) and self.tensor_attrs.get(a) is None \
                and not any(a is b for b in self.root.buffers()):
            name = f"_gracheck_constant{len(self.constants)}"
            self.constants[name] = a
            return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks() -> bool:
    mod = nn.modules.module
    return bool(mod._global_forward_hooks or mod._global_forward_pre_hooks or mod._global_backward_hooks
                or mod._global_backward_pre_hooks)


def _trace(root: nn.Module, z: Tensor) -> tuple[ChainPlan | None, str, tuple | None]:
    """(plan, why not, the input signature the plan depends on or None)."""
    tracer = _Tracer(z)
    try:
        # arguments after the input keep their defaults (a branch such as ``if y is not None`` must see None)
        params = list(inspect.signature(root.forward).parameters.values())[1:]
        concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        graph = tracer.trace(root, concrete_args=concrete or None)
    except Exception as e:  # noqa: BLE001 - any failure to trace means: not this route
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return None, f"torch.fx could not trace its forward ({type(e).__name__}: {msg})", None
    signature = None
    if tracer.used_signature:
        signature = (z.dim(), tuple(z.shape[1:]), z.dtype, z.device, z.shape[0] if tracer.used_batch else None)
    index: dict[fx.Node, int] = {}
    nodes: list[_Node] = []

    def conv(a):
        return fx.node.map_arg(a, lambda n: _Ref(index[n]))

    for n in graph.nodes:
        if n.op == "placeholder":
            if nodes and not n.args:
                return None, f"its forward takes more than one input ('{n.target}' has no default)", signature
            node = _Node("input", None, name=n.name) if not nodes else _Node("const", n.args[0], name=n.name)
        elif n.op == "get_attr":
            if n.target in tracer.constants:
                node = _Node("const", tracer.constants[n.target], name=n.name)
            else:
                node = _Node("attr", n.target, name=n.name)
        elif n.op == "call_module":
            node = _Node("module", root.get_submodule(n.target), conv(n.args), conv(n.kwargs), name=n.name)
        elif n.op == "call_function":
            node = _Node("function", n.target, conv(n.args), conv(n.kwargs), name=n.name)
        elif n.op == "call_method":
            node = _Node("method", n.target, conv(n.args), conv(n.kwargs), name=n.name)
        else:  # output
            node = _Node("output", None, conv(n.args), name=n.name)
        index[n] = len(nodes)
        nodes.append(node)
    why = _check_plan(nodes)
    return (None, why, signature) if why else (ChainPlan(nodes, "torch.fx trace of its forward"), "", signature)


def _leaf(m: nn.Module) -> bool:
    t = type(m)
    leaf = _LEAF_TYPES.get(t)
    if leaf is None:
        leaf = _LEAF_TYPES[t] = t.__module__.startswith(("torch.nn", "torch.ao.nn")) and not issubclass(t, nn.Sequential)
    return leaf


_LEAF_TYPES: dict[type, bool] = {}


_PLAIN = (int, float, bool, str, type(None))


def _fingerprint(root: nn.Module) -> tuple | None:
    """What a cached plan depends on (None: a module has hooks, which a plan cannot honour)."""
    parts: list = []
    todo = [root]
    while todo:
        m = todo.pop()
        d = m.__dict__
        if d["_forward_hooks"] or d["_forward_pre_hooks"] or d["_backward_hooks"] or d["_backward_pre_hooks"]:
            return None
        children = d["_modules"]
        parts.append((id(m), d["training"], type(m).forward, d.get("forward"), len(children)))
        if not _leaf(m):  # a traced forward may have read its plain attributes
            for k, v in d.items():
                if isinstance(v, _PLAIN) or (type(v) is tuple and all(isinstance(x, _PLAIN) for x in v)):
                    parts.append((k, v))
                elif isinstance(v, Tensor):
                    parts.append((k, id(v)))
        todo.extend(c for c in children.values() if c is not None)
    return tuple(parts)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module → (fingerprint, {signature: entry})
_CACHE_SIGNATURES = 16


def chain_plan(decoder: object, z: Tensor, *, build: bool = True) -> tuple[ChainPlan | None, str | None, object]:
    """The decoder's plan for inputs like z, or (None, why it has none). Cached per module.
    The third value is the cache key under which a refusal found while running can be recorded.
    With ``build=False`` a plan that is not cached yet is not built: (None, None, key)."""
    if not isinstance(decoder, nn.Module):
        return None, "the decoder is not an nn.Module (a plain callable is neither traced nor declared)", None
    if _global_hooks():
        return None, "global module hooks are registered, which only the decoder's own forward would run", None
    fp = _fingerprint(decoder)
    if fp is None:
        return None, "the decoder or one of its submodules has hooks, which only its own forward would run", None
    cached = _CACHE.get(decoder)
    if cached is None or cached[0] != fp:
        cached = (fp, {})
        _CACHE[decoder] = cached
    entries = cached[1]
    full_key = (z.dim(), tuple(z.shape[1:]), z.dtype, z.device, z.shape[0])
    for key in (full_key, full_key[:4] + (None,), None):
        if key in entries:
            plan, why = entries[key]
            return plan, why, full_key
    if not build:
        return None, None, full_key
    if callable(getattr(decoder, "jacobian_chain", None)):
        plan, why = _plan_from_layers(list(decoder.jacobian_chain()))
        signature = None
    else:
        plan, why, signature = _trace(decoder, z)
    if len(entries) >= _CACHE_SIGNATURES:
        entries.pop(next(iter(entries)))
    entries[signature] = (plan, why)
    return plan, why, full_key


def record_refusal(decoder: object, key: object, why: str) -> None:
    """Remember that the plan was refused while running on inputs with this key (auto then skips it)."""
    cached = _CACHE.get(decoder) if isinstance(decoder, nn.Module) else None
    if cached is not None and key is not None:
        cached[1][key] = (None, why)
