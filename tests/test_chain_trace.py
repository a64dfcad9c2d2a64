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


def _compare(make, z, ref_method="vmap", rtol=1e-10, atol=1e-12, grad_rtol=1e-9, grad_atol=1e-11, columns=None):
    """Chain route vs ``ref_method`` on identical copies: g, J (or columns), parameter gradients of a
    loss on both, and BatchNorm running statistics afterwards."""
    dec_a = make()
    dec_b = copy.deepcopy(dec_a)
    out = []
    for dec, method in ((dec_a, "chain"), (dec_b, ref_method)):
        if columns is None:
            g, J = gc.decoder_jacobian(dec, z, return_output=True, method=method)
        else:
            g, J = gc.jacobian_columns(dec, z, columns, return_output=True, method=method)
        params = [p for p in dec.parameters()]
        grads = torch.autograd.grad(_loss(g, J), params, allow_unused=True)
        out.append((g, J, grads))
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


def test_slicing_the_batch_changes_nothing(monkeypatch):
    """Uneven slices, one example per slice and one slice give the same g, J and gradients."""
    z = torch.randn(5, 3, generator=_gen(31), dtype=DT)
    cols = torch.randint(0, 3, (5, 2), generator=_gen(32))
    for per in (1, 2, 100):
        monkeypatch.setattr(chain, "slice_examples", lambda k, row_bytes, per=per: per)
        _compare(lambda: _user_mnist(True), z, ref_method="forward-ad", columns=cols)
