"""The chain route on decoders with their own forward, reached by tracing (torch.fx).

References are independent computations: the "vmap" route (torch.func JVPs through the
decoder's own forward), the "forward-ad" route (PyTorch's dual-tensor rules) and per-example
reverse-mode Jacobians (torch.autograd.functional.jacobian, which cannot mix examples). Train-mode
BatchNorm is checked against reverse mode through an eval-mode copy whose running statistics are
this batch's statistics (the per-example rule: batch statistics held constant for the tangents).

Tolerances (float64): values 1e-12, Jacobians rtol 1e-10 (a few hundred accumulated roundings of
O(1) terms), gradients rtol 1e-9 (one more differentiation). float32: rtol 2e-4 / atol 1e-6 on the
Jacobian against the vmap route in float32 (both ~1e-6 relative from float64, summed over conv
windows of a few hundred terms) and against float64.
"""

from __future__ import annotations

import copy
import importlib.util
import operator
import os
import pathlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gracheck as gc
import gracheck._chain as chain

DT = torch.float64
_spec = importlib.util.spec_from_file_location(
    "user_decoders", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "user_decoders.py")
user_decoders = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(user_decoders)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny networks: torch's intra-op thread pool only adds latency, and on a busy 2-core machine a
    # 2-thread pool slows these small convolutions down 50-fold (measured: 3 ms vs 180 ms a forward).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _reverse_jacobian(decoder, z, create_graph=False):
    """Per-example reverse-mode Jacobian [B, D, d] (one example at a time: no batch coupling)."""
    return torch.stack([
        torch.autograd.functional.jacobian(lambda zi: decoder(zi.unsqueeze(0)).reshape(-1), z[i],
                                           create_graph=create_graph, vectorize=True)
        for i in range(z.shape[0])
    ])


def _reverse_rows(decoder, z, rows, create_graph=False):
    """Rows ``rows`` of the per-example reverse-mode Jacobian, [B, len(rows), d]: one backward pass
    per (example, output) pair (for decoders whose full reverse Jacobian would cost 784 passes)."""
    out = []
    for i in range(z.shape[0]):
        zi = z[i : i + 1].detach().clone().requires_grad_(True)
        gi = decoder(zi).reshape(-1)
        out.append(torch.stack([torch.autograd.grad(gi[r], zi, retain_graph=True, create_graph=create_graph)[0][0] for r in rows]))
    return torch.stack(out)


# output pixels checked by reverse mode on the 28×28 decoders: a spread over the image and the crop's last row/column
_ROWS = sorted(set(range(0, 784, 37)) | {27, 755, 783})


def _frozen_copy(dec, z):
    """An eval-mode copy whose BatchNorm running statistics are the batch statistics of dec at z."""
    frozen = copy.deepcopy(dec)
    stats = {}
    hooks = [m.register_forward_pre_hook(lambda m, inp, name=name: stats.__setitem__(name, inp[0].detach()))
             for name, m in frozen.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    frozen.train()
    with torch.no_grad():
        frozen(z)
    for h in hooks:
        h.remove()
    for name, m in frozen.named_modules():
        if name in stats:
            x = stats[name]
            dims = [0] + list(range(2, x.dim()))
            m.running_mean.copy_(x.mean(dims))
            m.running_var.copy_(x.var(dims, unbiased=False))
    return frozen.eval()


def _route(dec, z=None):
    return gc.jacobian_route(dec, z)


def _loss(g, J):
    return J.pow(2).sum() + (g * torch.linspace(0.5, 1.5, g.shape[1], dtype=g.dtype)).pow(2).sum()


def _compare(make, z, ref_method="vmap", rtol=1e-10, atol=1e-12, grad_rtol=1e-9, grad_atol=1e-11, columns=None,
             modes=("sliced", "lockstep")):
    """Chain route vs ``ref_method`` on identical copies: g, J (or columns), parameter gradients of a
    loss on both, and BatchNorm running statistics afterwards. The chain route runs in each of
    ``modes``: "sliced" (a first call: primal pass, then tangents on slices) and "lockstep" (after
    a dry run has recorded the widest row: tangents in the primal pass, merged GEMMs/convolutions)."""
    for mode in modes:
        dec_a = make()
        dec_b = copy.deepcopy(dec_a)
        if mode == "lockstep":
            gc.jacobian_route(dec_a, z)  # records the widest row; running statistics restored
        out = []
        for dec, method in ((dec_a, "chain"), (dec_b, ref_method)):
            if columns is None:
                g, J = gc.decoder_jacobian(dec, z, return_output=True, method=method)
            else:
                g, J = gc.jacobian_columns(dec, z, columns, return_output=True, method=method)
            params = [p for p in dec.parameters()]
            grads = torch.autograd.grad(_loss(g, J), params, allow_unused=True)
            out.append((g, J, grads))
        plan = chain.chain_plan(dec_a, z)[0]
        assert plan.last_mode == mode or (mode == "lockstep" and z.shape[0] > chain.slice_examples(J.shape[2], 1 << 40)), plan.last_mode
        (g1, J1, gr1), (g2, J2, gr2) = out
        torch.testing.assert_close(g1, g2, rtol=1e-12 if z.dtype == DT else 1e-5, atol=1e-12 if z.dtype == DT else 1e-6)
        torch.testing.assert_close(J1, J2, rtol=rtol, atol=atol)
        # atol relative to the whole gradient's scale: some entries are zero up to roundoff (e.g. a bias
        # before a train-mode BatchNorm, whose shift the batch mean removes)
        scale = max([1.0] + [float(b.abs().max()) for b in gr2 if b is not None])
        for a, b in zip(gr1, gr2):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=grad_rtol, atol=grad_atol * scale)
        for ma, mb in zip(dec_a.modules(), dec_b.modules()):
            if isinstance(ma, nn.modules.batchnorm._BatchNorm) and ma.running_var is not None:
                torch.testing.assert_close(ma.running_mean, mb.running_mean, rtol=1e-12, atol=1e-13)
                torch.testing.assert_close(ma.running_var, mb.running_var, rtol=1e-12, atol=1e-13)
                assert int(ma.num_batches_tracked) == int(mb.num_batches_tracked)
    return dec_a, g1, J1


# ------------------------------------------------------------- the App. D decoder as users write it


def _user_mnist(train_mode, dtype=DT, seed=0):
    torch.manual_seed(seed)
    return user_decoders.UserMNISTDecoder(3, width=1 / 32).to(dtype).train(train_mode)


@pytest.mark.parametrize("train_mode", [False, True])
def test_user_written_mnist_decoder_takes_the_traced_chain(train_mode):
    """F.elu after Linear + BatchNorm1d, .view, an nn.Sequential of ConvTranspose/BatchNorm/ELU, a
    crop [..., :28, :28] and torch.sigmoid: method="auto" traces it into the chain route, whose J
    equals per-example reverse mode (train mode: with this batch's statistics frozen) and the vmap
    route, with equal parameter gradients and one running-statistics update."""
    z = torch.randn(3, 3, generator=_gen(1), dtype=DT)
    route = _route(_user_mnist(train_mode))
    assert route.method == "chain" and route.plan == "torch.fx trace of its forward", route
    assert any("getitem" in n for n in route.nodes) and any("elu" in n for n in route.nodes)
    dec, g, J = _compare(lambda: _user_mnist(train_mode), z)
    assert J.shape == (3, 784, 3) and float(J.detach().abs().max()) > 1e-4
    ref = _frozen_copy(_user_mnist(train_mode), z) if train_mode else _user_mnist(False)
    torch.testing.assert_close(J[:, _ROWS], _reverse_rows(ref, z, _ROWS), rtol=1e-10, atol=1e-13)


def test_user_written_mnist_decoder_gradients_vs_reverse_mode():
    """∂(loss on g and J)/∂θ by the traced chain route vs reverse mode with create_graph (double
    backward through per-example VJPs), eval-mode BatchNorm, float64; the loss uses the J rows of
    _ROWS (every row depends on every layer)."""
    dec = _user_mnist(False)
    z = torch.randn(2, 3, generator=_gen(2), dtype=DT)
    params = list(dec.parameters())
    g, J = gc.decoder_jacobian(dec, z, return_output=True, method="chain")
    gr1 = torch.autograd.grad(_loss(g, J[:, _ROWS]), params)
    Jr = _reverse_rows(dec, z, _ROWS, create_graph=True)
    gr2 = torch.autograd.grad(_loss(dec(z).reshape(2, -1), Jr), params)
    scale = max(float(b.abs().max()) for b in gr2)
    for a, b in zip(gr1, gr2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11 * scale)


@pytest.mark.parametrize("train_mode", [False, True])
def test_user_written_mnist_decoder_float32(train_mode):
    """float32: the traced chain route agrees with the vmap route in float32 and with float64."""
    z64 = torch.randn(4, 3, generator=_gen(3), dtype=DT)
    z = z64.float()
    _compare(lambda: _user_mnist(train_mode, torch.float32), z, rtol=2e-4, atol=1e-6, grad_rtol=2e-3, grad_atol=1e-5)
    J32 = gc.decoder_jacobian(_user_mnist(train_mode, torch.float32), z, method="chain")
    J64 = gc.decoder_jacobian(_user_mnist(train_mode, DT), z64, method="chain")
    assert J32.dtype == torch.float32
    torch.testing.assert_close(J32.double(), J64, rtol=2e-4, atol=1e-6)


def test_user_written_mnist_decoder_columns_and_objectives():
    """GRAE≈ columns and the objectives take the traced route and agree with the generic routes."""
    z = torch.randn(5, 3, generator=_gen(4), dtype=DT)
    cols = torch.randint(0, 3, (5, 2), generator=_gen(5))
    _compare(lambda: _user_mnist(True), z, ref_method="forward-ad", columns=cols)
    dec = _user_mnist(False)
    x = torch.rand(5, 1, 28, 28, generator=_gen(6), dtype=DT)
    obs = gc.GaussianObs()
    for f in (lambda m: gc.grae_objective(x, dec, z, 0.3, obs, method=m),
              lambda m: gc.grae_approx_objective(x, dec, z, 0.3, obs, columns=cols, method=m)):
        torch.testing.assert_close(f("auto"), f("vmap"), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------- functional forms and every piece


class _Block(nn.Module):
    """A nested custom module with its own forward (traced through)."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.w = nn.Parameter(torch.randn(c, c, 1, 1) * 0.5)

    def forward(self, x):
        h = F.leaky_relu(self.conv(x), 0.2) + x  # residual: two z-dependent values
        return F.conv2d(h, self.w, None) * torch.sigmoid(h)  # functional conv, product of two values


class _Pieces(nn.Module):
    """Every kind of piece the traced route supports, in one custom forward."""

    def __init__(self, d=3):
        super().__init__()
        self.d = d
        self.scale = 0.7
        self.fc = nn.Linear(d, 4 * 3 * 3)
        self.bn = nn.BatchNorm1d(36)
        self.register_buffer("shift", torch.linspace(-0.5, 0.5, 36))
        self.inner = nn.Sequential(nn.Sequential(nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3)), nn.ELU(0.5))
        self.block = _Block(3)
        self.w_out = nn.Parameter(torch.randn(10, 40) * 0.3)
        self.bias_out = nn.Parameter(torch.randn(10) * 0.1)

    def forward(self, z):
        if z.dim() != 2 or z.shape[1] != self.d:  # input validation traces (rank and d are concrete)
            raise ValueError("z: bad shape")
        h = F.elu(self.bn(self.fc(z)) - self.shift, alpha=1.0)
        h = h.view(z.shape[0], 4, 3, 3)  # the batch size stays symbolic
        h = self.inner(h)  # 5×5
        h = F.pad(h, (1, 1, 1, 1), mode="constant", value=0.25)  # 7×7
        h = F.pad(h, (1, 0, 0, 1), mode="reflect")[..., :7, 1:]  # pad then crop: 7×7
        h = self.block(h)
        h = F.softplus(h, beta=2.0, threshold=1.0) * self.scale + 1.0
        h = torch.tanh(h.flatten(2).transpose(1, 2)).permute(0, 2, 1)  # [B, 3, 49]
        h = torch.cat([h[:, :, :20], 2.0 - h[:, :, 29:]], dim=2)  # [B, 3, 40]
        h = F.silu(h).mean(1) + F.gelu(h, approximate="tanh").sum(1) / 3  # [B, 40]
        h = torch.add(h, h ** 2, alpha=0.5) / 1.5
        h = F.linear(h, self.w_out, self.bias_out)
        h = F.relu(h.reshape(-1, 2, 5)).flatten(1) + F.gelu(h)
        return h.sigmoid().unflatten(1, (2, 5)).contiguous().clone()


@pytest.mark.parametrize("train_mode", [False, True])
def test_every_piece_in_a_custom_forward(train_mode):
    """A forward with functional activations, view/flatten/unflatten/permute/transpose, crops and
    padding, constant scaling and additions, residual sums, products, cat, reductions over
    non-batch dimensions, F.linear / F.conv2d with its own parameters, nested custom modules and
    Sequentials, and an input-validation branch: traced into the chain route; J equals the vmap
    route and (eval) per-example reverse mode, gradients equal the vmap route's."""
    _check_pieces(train_mode)


def _check_pieces(train_mode):
    def make():
        torch.manual_seed(11)
        return _Pieces().double().train(train_mode)

    route = _route(make())
    assert route.method == "chain", route.reason
    z = torch.randn(4, 3, generator=_gen(12), dtype=DT)
    dec, g, J = _compare(make, z)
    assert J.shape == (4, 10, 3) and float(J.detach().abs().max()) > 1e-4
    ref = _frozen_copy(make(), z) if train_mode else make()
    torch.testing.assert_close(J, _reverse_jacobian(ref, z), rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="z: bad shape"):  # the forward's own check still runs eagerly
        dec(torch.zeros(2, 5, dtype=DT))


# ------------------------------------------------------------- property test: random compositions


_ACTS = {
    "elu": F.elu, "elu0.5": lambda t: F.elu(t, alpha=0.5), "relu": F.relu, "leaky": lambda t: F.leaky_relu(t, 0.1),
    "sigmoid": torch.sigmoid, "sigmoid_method": lambda t: t.sigmoid(), "tanh": torch.tanh, "silu": F.silu,
    "softplus": lambda t: F.softplus(t, beta=2.0, threshold=1.0), "gelu": F.gelu, "relu_method": lambda t: t.relu(),
}


class _Random(nn.Module):
    """A forward applying a list of pieces drawn by hypothesis (the list is a plain attribute)."""

    def __init__(self, ops, mods):
        super().__init__()
        self.ops = tuple(ops)
        self.mods = nn.ModuleList(mods)

    def forward(self, z):
        h, mi = z, 0
        for op, arg in self.ops:
            if op == "module":
                h = self.mods[mi](h)
                mi += 1
            elif op == "act":
                h = _ACTS[arg](h)
            elif op == "scale":
                h = h * arg if arg > 0 else arg * h - 0.5
            elif op == "shift":
                h = h + arg if arg > 0 else arg - h
            elif op == "div":
                h = h / arg
            elif op == "square":
                h = h ** 2 * 0.5
            elif op == "residual":
                h = h + torch.tanh(h) * h
            elif op == "to_image":
                h = h.view(-1, 1, 2, arg)
            elif op == "pad":
                h = F.pad(h, (1, 1, 0, 1), mode=arg)
            elif op == "crop":
                h = h[..., 1:, :-1]
            elif op == "flatten":
                h = h.flatten(1) if arg else torch.flatten(h, 1)
        return h


def _draw_random(data):
    from hypothesis import strategies as st

    d = data.draw(st.integers(1, 3), label="d")
    width = data.draw(st.sampled_from([2, 4, 6]), label="width")
    ops, mods = [("module", None)], [nn.Linear(d, width)]
    shape = ("flat", width)
    for _ in range(data.draw(st.integers(1, 5), label="depth")):
        choices = ["act", "scale", "shift", "div", "square", "residual", "module"]
        choices += ["to_image"] if shape[0] == "flat" else ["pad", "crop", "flatten", "conv"]
        kind = data.draw(st.sampled_from(choices), label="piece")
        if kind == "act":
            ops.append(("act", data.draw(st.sampled_from(sorted(_ACTS)), label="activation")))
        elif kind in ("scale", "shift", "div"):
            ops.append((kind, data.draw(st.sampled_from([-1.5, 0.5, 2.0]), label="constant")))
        elif kind in ("square", "residual"):
            ops.append((kind, None))
        elif kind == "module":
            if shape[0] == "flat":
                w = data.draw(st.sampled_from([2, 4, 6]), label="width")
                mods.append(nn.Linear(shape[1], w))
                shape = ("flat", w)
                if data.draw(st.booleans(), label="batchnorm"):
                    ops.append(("module", None))
                    mods.append(nn.BatchNorm1d(w))
            else:
                mods.append(nn.BatchNorm2d(shape[1]))
            ops.append(("module", None))
        elif kind == "to_image":
            ops.append(("to_image", shape[1] // 2))
            shape = ("image", 1, 2, shape[1] // 2)
        elif kind == "pad":
            mode = data.draw(st.sampled_from(["constant", "replicate"]), label="mode")
            ops.append(("pad", mode))
            shape = ("image", shape[1], shape[2] + 1, shape[3] + 2)
        elif kind == "crop" and shape[2] > 1 and shape[3] > 1:
            ops.append(("crop", None))
            shape = ("image", shape[1], shape[2] - 1, shape[3] - 1)
        elif kind == "conv":
            c = data.draw(st.integers(1, 2), label="channels")
            transposed = data.draw(st.booleans(), label="transposed")
            mods.append(nn.ConvTranspose2d(shape[1], c, 2) if transposed else nn.Conv2d(shape[1], c, 1))
            ops.append(("module", None))
            grow = 1 if transposed else 0
            shape = ("image", c, shape[2] + grow, shape[3] + grow)
        elif kind == "flatten":
            ops.append(("flatten", data.draw(st.booleans(), label="method")))
            shape = ("flat", shape[1] * shape[2] * shape[3])
    return d, _Random(ops, mods)


def test_traced_chain_matches_dual_tensors_on_random_compositions():
    """Property: random forwards composed of Linear/BatchNorm (eval or train)/conv layers, functional
    and method activations, constant scaling, shifts and division, squares, residual products,
    reshapes to images, padding, crops and flattening: the traced chain route's g, J, parameter
    gradients and running statistics equal the dual-tensor route's (PyTorch's own forward-mode rules)."""
    pytest.importorskip("hypothesis")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(st.data())
    def prop(data):
        seed = data.draw(st.integers(0, 2**16), label="seed")
        torch.manual_seed(seed)
        d, dec = _draw_random(data)
        dec = dec.double().train(data.draw(st.booleans(), label="train mode"))
        assert _route(dec).method == "chain", _route(dec).reason
        B = data.draw(st.integers(2, 4), label="B")
        z = torch.randn(B, d, generator=_gen(seed), dtype=DT)
        _compare(lambda: copy.deepcopy(dec), z, ref_method="forward-ad")

    prop()


# ------------------------------------------------------------- refusals, fallback and the reason


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 5)

    def forward(self, z):
        return torch.stack([torch.tanh(self.fc(z[i])) for i in range(z.shape[0])])  # a loop over the batch size


class _Unsupported(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(3, 6)
        self.bn = nn.BatchNorm1d(6)
        self.norm = nn.LayerNorm(6)

    def forward(self, z):
        h = self.bn(self.fc(z))
        if self.kind == "layernorm":
            return self.norm(h)
        if self.kind == "cumsum":
            return torch.cumsum(h, 1)
        if self.kind == "mix-batch":
            return h.reshape(1, -1)[:, : h.shape[0] * 6].reshape(-1, 3)  # examples' values end up in other rows
        if self.kind == "batch-slice":
            return h[1:]
        return h.t()


@pytest.mark.parametrize("kind,name", [("layernorm", r"node 'norm' \(LayerNorm\)"), ("cumsum", r"node 'cumsum' \(function torch.cumsum\)"),
                                        ("transpose-batch", r"node 't' \(tensor method .t\(\)\)"),
                                        ("mix-batch", "reshape the batch dimension"), ("batch-slice", "batch dimension")])
def test_unsupported_nodes_are_named_and_auto_falls_back(kind, name):
    """method="chain" raises a ValueError naming the node; "auto" falls back to a generic route and
    jacobian_route says why; a refusal found while evaluating restores the running statistics, so a
    call counts one update, the fallback's."""
    _check_refusal(kind, name)


def _check_refusal(kind, name):
    dec = _Unsupported(kind).double().train()
    z = torch.randn(4, 3, generator=_gen(20), dtype=DT)
    route = _route(dec, z)
    assert route.method in ("vmap", "forward-ad") and route.plan is None
    assert __import__("re").search(name, route.reason), route.reason
    with pytest.raises(ValueError, match=name):
        gc.decoder_jacobian(dec, z, method="chain")
    assert int(dec.bn.num_batches_tracked) == 0  # restored after the refusal
    if kind in ("layernorm", "cumsum"):
        ref = copy.deepcopy(dec)
        J = gc.decoder_jacobian(dec, z)
        torch.testing.assert_close(J, gc.decoder_jacobian(ref, z, method="vmap"), rtol=1e-12, atol=1e-13)
        assert int(dec.bn.num_batches_tracked) == 1
        torch.testing.assert_close(dec.bn.running_var, ref.bn.running_var, rtol=0, atol=0)


def test_untraceable_decoders_fall_back_with_the_reason():
    z = torch.randn(3, 3, generator=_gen(21), dtype=DT)
    dec = _Untraceable().double()
    route = _route(dec)
    assert route.method == "vmap" and "torch.fx could not trace" in route.reason
    with pytest.raises(ValueError, match="torch.fx could not trace"):
        gc.decoder_jacobian(dec, z, method="chain")
    torch.testing.assert_close(gc.decoder_jacobian(dec, z), _reverse_jacobian(dec, z), rtol=1e-12, atol=1e-13)
    assert "not an nn.Module" in _route(lambda t: t.sin()).reason
    assert gc.jacobian_route(lambda t: t.sin(), k=1).method == "forward-ad"
    hooked = nn.Sequential(nn.Linear(3, 4), nn.Tanh()).double()
    hooked[1].register_forward_hook(lambda m, i, o: 2 * o)
    assert "hooks" in _route(hooked).reason
    torch.testing.assert_close(gc.decoder_jacobian(hooked, z), _reverse_jacobian(hooked, z), rtol=1e-12, atol=1e-13)
    inplace = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True)).double()
    assert _route(inplace).method == "chain"  # in place on a value nothing else uses: fine

    class Shared(nn.Module):
        def forward(self, z):
            h = z * 2
            return F.relu(h, inplace=True) + h

    assert "in place" in _route(Shared()).reason

    class Defaults(nn.Module):  # arguments after the input keep their defaults while tracing
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, z, extra=None, scale=2.0):
            h = self.fc(z)
            return torch.tanh(h if extra is None else h + extra) * scale

    dec = Defaults().double()
    assert _route(dec).method == "chain"
    torch.testing.assert_close(gc.decoder_jacobian(dec, z), _reverse_jacobian(dec, z), rtol=1e-12, atol=1e-13)

    class TwoInputs(nn.Module):
        def forward(self, z, y):
            return z * y

    assert "more than one input" in _route(TwoInputs()).reason


# ------------------------------------------------------------- the plan cache


class _Moody(nn.Module):
    """A forward that branches on self.training and reads a plain attribute: both are baked into a trace."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.act = nn.Tanh()
        self.gain = 2.0

    def forward(self, z):
        h = self.act(self.fc(z)) * self.gain
        return h * 3.0 if self.training else h


def test_plan_cache_is_reused_and_invalidated():
    """One trace per module and input signature; a new plan after a submodule is replaced, the mode
    changes (a forward branching on self.training), a plain attribute changes or a hook is added.
    Each time the chain route must still equal the vmap route."""
    _check_cache()


def _check_cache():
    dec = _Moody().double()
    z = torch.randn(3, 3, generator=_gen(30), dtype=DT)

    def check():
        torch.testing.assert_close(gc.decoder_jacobian(dec, z), gc.decoder_jacobian(dec, z, method="vmap"), rtol=1e-12, atol=1e-13)

    check()
    plans = list(chain._CACHE[dec][1].values())
    check()
    assert list(chain._CACHE[dec][1].values()) == plans  # reused
    dec.eval()
    check()
    dec.gain = -1.0
    check()
    dec.act = nn.Sigmoid()
    check()
    dec.act = nn.LayerNorm(4).double()
    assert "LayerNorm" in _route(dec).reason
    check()
    dec.act = nn.ELU()
    assert _route(dec).method == "chain"
    dec.fc.register_forward_hook(lambda m, i, o: o + 1)
    assert "hooks" in _route(dec).reason
    check()


def test_slicing_the_batch_changes_nothing():
    """Uneven slices, one example per slice and one slice give the same g, J and gradients."""
    _check_slices()


def _check_slices(pers=(1, 2, 100)):
    z = torch.randn(5, 3, generator=_gen(31), dtype=DT)
    cols = torch.randint(0, 3, (5, 2), generator=_gen(32))
    original = chain.slice_examples
    try:
        for per in pers:
            chain.slice_examples = lambda k, row_bytes, per=per: per
            _compare(lambda: _user_mnist(True), z, ref_method="forward-ad", columns=cols)
    finally:
        chain.slice_examples = original


# ------------------------------------------------------------- mutants of the tracer and the route
# Each mutant is a plausible slip in the tracer or the chain route; TRACER_MUTANTS names the check (one
# of the tests above) that must fail under it.


def _mut_elu_alpha(mp):
    for table, key in ((chain._ACT_MODULES, nn.ELU), (chain._ACT_FUNCTIONS, F.elu)):
        entry = table[key]
        mp.setitem(table, key, (lambda x, alpha=1.0: chain._d_elu(x, 1.0),) + entry[1:])


def _mut_silu(mp):
    def wrong(x):
        s = torch.sigmoid(x)
        return x * s, s + x * (1 - s)
    mp.setitem(chain._ACT_FUNCTIONS, F.silu, (wrong,) + chain._ACT_FUNCTIONS[F.silu][1:])


def _mut_gelu_tanh(mp):
    def wrong(x, approximate="none"):
        y, d = chain._d_gelu(x, "none")
        return F.gelu(x, approximate=approximate), d  # the exact-GELU derivative for the tanh form
    mp.setitem(chain._ACT_FUNCTIONS, F.gelu, (wrong,) + chain._ACT_FUNCTIONS[F.gelu][1:])


def _mut_softplus_threshold(mp):
    def wrong(x, beta=1.0, threshold=20.0):
        return F.softplus(x, beta, threshold), torch.sigmoid(x * beta)
    mp.setitem(chain._ACT_FUNCTIONS, F.softplus, (wrong,) + chain._ACT_FUNCTIONS[F.softplus][1:])


def _mut_bn_scale_dropped(mp):
    orig = chain._rule_batchnorm
    def wrong(plan, node, args, kwargs, B):
        y, st = orig(plan, node, args, kwargs, B)
        st.factor = torch.ones_like(st.factor)
        return y, st
    mp.setattr(chain, "_rule_batchnorm", wrong)


def _mut_bn_running_var_in_train(mp):
    orig = chain._rule_batchnorm
    def wrong(plan, node, args, kwargs, B):
        y, st = orig(plan, node, args, kwargs, B)
        m = node.target
        if m.training:
            st.factor = (torch.rsqrt(m.running_var + m.eps) * m.weight).reshape(st.factor.shape)
        return y, st
    mp.setattr(chain, "_rule_batchnorm", wrong)


def _mut_bn_stats_twice(mp):
    orig = chain._rule_batchnorm
    def wrong(plan, node, args, kwargs, B):
        if node.target.training:
            chain.batch_stats(node.target, args[0], 1)
        return orig(plan, node, args, kwargs, B)
    mp.setattr(chain, "_rule_batchnorm", wrong)


def _mut_fold_keeps_last(mp):
    orig = chain._fold
    def wrong(steps, nodes):
        out = orig(steps, nodes)
        by_out = {st.out: st for st in steps}
        for st in out:
            if st.kind == "mul" and st.out in by_out and by_out[st.out] is not st:
                st.factor = by_out[st.out].factor
        return out
    mp.setattr(chain, "_fold", wrong)


def _mut_lazy_drops_pending(mp):
    orig = chain._Env.run
    def wrong(self, st):
        if st.kind == "mul" and not st.expand and not chain._is_one(st.factor):
            T, f, pe = self.lazy(st.ins[0])
            self.vals[st.out] = (T, st.factor, st.per_example)  # replaces a pending factor instead of combining
            return
        orig(self, st)
    mp.setattr(chain._Env, "run", wrong)


def _mut_pad_value(mp):
    orig = chain._rule_pad
    def wrong(plan, node, args, kwargs, B):
        y, st = orig(plan, node, args, kwargs, B)
        p = chain._bind(node, args, kwargs, ("pad", "mode", "value"), {"mode": "constant", "value": None})
        st.fn = lambda T: F.pad(T, tuple(p["pad"]), p["mode"], p["value"])
        return y, st
    mp.setitem(chain._FUNCTION_RULES, F.pad, wrong)


def _mut_index_shifted(mp):
    orig = chain._tangent_index
    def wrong(idx, ndim, B):
        t = orig(idx, ndim, B)
        return None if t is None else tuple(  # a crop of the same size, one pixel further on
            slice(1, e.stop + 1) if isinstance(e, slice) and e.start is None and e.stop is not None else e for e in t)
    mp.setattr(chain, "_tangent_index", wrong)


def _mut_sub_sign(mp):
    orig = chain._rule_arith
    def wrong(plan, node, args, kwargs, B):
        y, st = orig(plan, node, args, kwargs, B)
        if chain._ARITH[node.target] == "sub" and st.kind == "mul" and plan.is_carrying(node.args[1]):
            st.factor = -st.factor
        return y, st
    for key in [k for k, v in chain._ARITH.items() if v == "sub" and not isinstance(k, str)]:
        mp.setitem(chain._FUNCTION_RULES, key, wrong)


def _mut_add_alpha(mp):
    orig = chain._rule_arith
    def wrong(plan, node, args, kwargs, B):
        y, st = orig(plan, node, args, kwargs, B)
        if st.kind == "sum":
            st.terms = tuple((1, False) for _ in st.terms)
        return y, st
    mp.setitem(chain._FUNCTION_RULES, torch.add, wrong)


def _mut_pow(mp):
    orig = chain._rule_arith
    def wrong(plan, node, args, kwargs, B):
        y, st = orig(plan, node, args, kwargs, B)
        if chain._ARITH[node.target] == "pow":
            st.factor = args[0].pow(args[1] - 1)
        return y, st
    mp.setitem(chain._FUNCTION_RULES, operator.pow, wrong)


def _mut_permute(mp):
    orig = chain._rule_permute
    def wrong(plan, node, args, kwargs, B):
        y, st = orig(plan, node, args, kwargs, B)
        fn = st.fn
        st.fn = lambda T: fn(T).flip(-1)
        return y, st
    mp.setitem(chain._METHOD_RULES, "permute", wrong)


def _mut_gather_columns(mp):
    orig = chain._Env.run
    def wrong(self, st):
        if st.kind == "map" and st.weight is not None and st.ins[0] == self.input and st.ins[0] not in self.vals:
            self.vals[st.out] = (st.weight.t()[self.cols.flip(0)], None, False)
            return
        orig(self, st)
    mp.setattr(chain._Env, "run", wrong)


def _mut_merged_conv_bias(mp):
    def wrong(node, x, T):
        m = node.target
        out = m(torch.cat([x, T]))
        return out[: x.shape[0]], out[x.shape[0]:]
    orig = chain._check_plan
    def patched(nodes):
        why = orig(nodes)
        for n in nodes:
            if n.merge is chain._merge_conv:
                n.merge = wrong
        return why
    mp.setattr(chain, "_check_plan", patched)


def _mut_factor_not_sliced(mp):
    def wrong(T, f, per_example, s, b, k):
        if not per_example:
            return T * f
        y = T.reshape(b, k, *T.shape[1:]) * f[:b].unsqueeze(1)
        return y.reshape(b * k, *y.shape[2:])
    mp.setattr(chain, "_times", wrong)


def _mut_fingerprint_mode(mp):
    orig = chain._fingerprint
    def wrong(root):  # the fingerprint without any module's train/eval flag
        fp = orig(root)
        if fp is None:
            return None
        return tuple((p[0],) + p[2:] if len(p) == 5 else p for p in fp if not (len(p) == 2 and p[0] == "training"))
    mp.setattr(chain, "_fingerprint", wrong)


def _mut_fingerprint_attributes(mp):
    orig = chain._fingerprint
    def wrong(root):
        fp = orig(root)
        return None if fp is None else tuple(p for p in fp if not (isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)))
    mp.setattr(chain, "_fingerprint", wrong)


def _mut_no_restore(mp):
    mp.setattr(chain, "restore_running_stats", lambda saved: None)


def _mut_reshape_batch_unchecked(mp):
    def wrong(plan, node, x, y):
        rest = tuple(y.shape[1:])
        return chain._Step(0, (chain._one_input(plan, node),), "map", fn=lambda T: T.reshape(T.shape[0], *rest))
    mp.setattr(chain, "_reshape_step", wrong)


_CHECKS = {
    "pieces-eval": lambda: _check_pieces(False),  # test_every_piece_in_a_custom_forward[False]
    "pieces-train": lambda: _check_pieces(True),  # test_every_piece_in_a_custom_forward[True]
    "slices": lambda: _check_slices((1, 100)),  # test_slicing_the_batch_changes_nothing
    "plan-cache": lambda: _check_cache(),  # test_plan_cache_is_reused_and_invalidated
    "refusal": lambda: _check_refusal("mix-batch", "reshape the batch dimension"),  # test_unsupported_nodes_...
}
# mutant → (the slip, the check that catches it)
TRACER_MUTANTS = {
    "elu-derivative-ignores-alpha": (_mut_elu_alpha, "pieces-eval"),
    "silu-derivative-uses-x": (_mut_silu, "pieces-eval"),
    "gelu-tanh-form-gets-exact-derivative": (_mut_gelu_tanh, "pieces-eval"),
    "softplus-threshold-ignored": (_mut_softplus_threshold, "pieces-train"),
    "batchnorm-scale-dropped": (_mut_bn_scale_dropped, "pieces-eval"),
    "train-batchnorm-tangent-uses-running-variance": (_mut_bn_running_var_in_train, "pieces-train"),
    "train-batchnorm-statistics-updated-twice": (_mut_bn_stats_twice, "pieces-train"),
    "fold-keeps-only-the-last-factor": (_mut_fold_keeps_last, "pieces-eval"),
    "lockstep-drops-a-pending-factor": (_mut_lazy_drops_pending, "pieces-eval"),
    "pad-tangent-padded-with-the-value": (_mut_pad_value, "pieces-eval"),
    "crop-index-shifted-for-tangents": (_mut_index_shifted, "pieces-eval"),
    "sub-sign-of-second-operand-flipped": (_mut_sub_sign, "pieces-eval"),
    "add-alpha-ignored": (_mut_add_alpha, "pieces-eval"),
    "power-rule-without-exponent": (_mut_pow, "pieces-eval"),
    "permute-tangent-flipped": (_mut_permute, "pieces-eval"),
    "first-linear-gathers-other-examples-columns": (_mut_gather_columns, "pieces-eval"),
    "merged-conv-adds-bias-to-tangents": (_mut_merged_conv_bias, "pieces-eval"),
    "per-example-factor-not-sliced": (_mut_factor_not_sliced, "slices"),
    "plan-cache-ignores-train-eval-mode": (_mut_fingerprint_mode, "plan-cache"),
    "plan-cache-ignores-plain-attributes": (_mut_fingerprint_attributes, "plan-cache"),
    "refusal-leaves-running-statistics-updated": (_mut_no_restore, "refusal"),
    "reshape-mixing-examples-accepted": (_mut_reshape_batch_unchecked, "refusal"),
}


@pytest.mark.parametrize("name", sorted(TRACER_MUTANTS))
def test_tracer_mutant_is_caught(name, monkeypatch):
    """Every mutant makes its check fail (a failed comparison or an error); the same checks pass
    unmutated (the tests above)."""
    mutate, check = TRACER_MUTANTS[name]
    mutate(monkeypatch)
    with pytest.raises((AssertionError, RuntimeError, ValueError)):
        _CHECKS[check]()


# ------------------------------------------------------------- torch.compile, the validation fast path


@pytest.mark.parametrize("backend", [
    "aot_eager",
    pytest.param("inductor", marks=[pytest.mark.slow, pytest.mark.skipif(
        os.environ.get("GRACHECK_TEST_INDUCTOR") != "1",
        reason="compiles C++ kernels for ~90 s on 2 cores; set GRACHECK_TEST_INDUCTOR=1 to run")]),
])
def test_compiled_step_equals_eager_step(backend):
    """gracheck's objectives under torch.compile: the plan lookup runs eagerly (one graph break), the
    chain route's evaluation, the objective and the backward are traced (dynamo + AOT autograd; with
    "inductor", compiled to fused kernels). Values, gradients and running statistics equal the eager
    step's (float64: the order of roundings differs, 1e-12 / 1e-10 relative), with train-mode
    BatchNorm, in the sliced and the lockstep mode (first and later calls)."""
    torch.manual_seed(40)
    make = lambda: nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ELU(), nn.Linear(8, 6), nn.Sigmoid()).double().train()  # noqa: E731
    dec_e, dec_c = make(), make()
    dec_c.load_state_dict(dec_e.state_dict())
    x = torch.rand(4, 6, generator=_gen(41), dtype=DT)
    z = torch.randn(4, 3, generator=_gen(42), dtype=DT)
    obs = gc.GaussianObs()

    def loss(dec, h):
        return -gc.grae_objective(x, dec, h, 0.3, obs).mean()

    compiled = torch.compile(loss, backend=backend)
    for _ in range(2):  # sliced, then lockstep
        h_e, h_c = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
        le, lc = loss(dec_e, h_e), compiled(dec_c, h_c)
        ge = torch.autograd.grad(le, [*dec_e.parameters(), h_e])
        gcmp = torch.autograd.grad(lc, [*dec_c.parameters(), h_c])
        torch.testing.assert_close(lc, le, rtol=1e-12, atol=0)
        for a, b in zip(gcmp, ge):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(dec_c[1].running_var, dec_e[1].running_var, rtol=1e-12, atol=0)
        assert int(dec_c[1].num_batches_tracked) == int(dec_e[1].num_batches_tracked)
    assert chain.chain_plan(dec_e, z)[0].last_mode == "lockstep"


def test_finite_check_fast_path():
    """check_tensor clears a finite tensor with one reduction; a NaN or Inf anywhere is still reported
    with its count, and a finite tensor whose sum overflows still passes."""
    from gracheck.base.validate import check_tensor

    big = torch.full((8,), 3e38, dtype=torch.float32)  # finite, but its sum overflows to inf
    assert check_tensor("t", big) is big
    for bad, n in ((torch.tensor([1.0, float("nan"), 2.0]), 1), (torch.tensor([float("inf"), -float("inf")]), 2)):
        with pytest.raises(ValueError, match=f"t: contains {n} NaN/Inf"):
            check_tensor("t", bad)
    check_tensor("t", torch.zeros(0))


def test_declared_chain_takes_the_fixed_schedule():
    """A decoder declaring jacobian_chain() (gracheck.nets) runs on the fixed schedule on every call:
    g, J and the parameter gradients of a first call, a later call and a call after a train/eval
    switch (which rebuilds the plan) are bitwise equal (the trainer's exact resume and the ensemble's
    bitwise equality rest on this), and they agree with the traced adaptive schedule of the same
    layers as an nn.Sequential, in both of its modes."""
    from gracheck.nets import MLPDecoder

    torch.manual_seed(61)
    dec = MLPDecoder(4, 20, hidden=(16, 16)).double().train()
    z = torch.randn(5, 4, generator=_gen(62), dtype=DT)
    runs = []
    for i in range(3):
        if i == 2:
            dec.eval().train()
        g, J = gc.decoder_jacobian(dec, z, return_output=True)
        grads = torch.autograd.grad(_loss(g, J), list(dec.parameters()))
        assert chain.chain_plan(dec, z)[0].last_mode == "fixed"
        runs.append((g, J, grads))
    for g, J, grads in runs[1:]:
        assert torch.equal(g, runs[0][0]) and torch.equal(J, runs[0][1])
        assert all(torch.equal(a, b) for a, b in zip(grads, runs[0][2]))
    seq = nn.Sequential(*dec.jacobian_chain())
    assert gc.jacobian_route(seq).plan == "torch.fx trace of its forward"
    for _ in range(2):  # sliced, then lockstep
        g, J = gc.decoder_jacobian(seq, z, return_output=True)
        torch.testing.assert_close(J, runs[0][1], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g, runs[0][0], rtol=1e-12, atol=1e-14)
    assert chain.chain_plan(seq, z)[0].last_mode == "lockstep"
