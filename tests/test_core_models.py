"""Observation models, posteriors, the Jacobian engine and the model-level objectives.

References are independent computations: torch.distributions, torch.func.hessian,
torch.autograd.functional.jacobian (reverse mode), closed forms for linear
decoders (where the Taylor objective is the exact expectation), Monte Carlo with
a stated number of standard errors.
"""

import math

import pytest
import torch
import torch.nn as nn

import gracheck as gc
from gracheck.posteriors import block_mask

DT = torch.float64
ROUTES = ["chain", "forward-ad", "vmap"]  # the Jacobian engine's three routes


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _mlp(d=3, D=7, act=nn.Tanh, bn=False, seed=0):
    torch.manual_seed(seed)
    layers = [nn.Linear(d, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers += [act(), nn.Linear(16, D)]
    return nn.Sequential(*layers).double()


# ------------------------------------------------------------- observations


def test_gaussian_log_prob_vs_torch_distributions():
    x, g = torch.randn(4, 6, generator=_gen(0), dtype=DT), torch.randn(4, 6, generator=_gen(1), dtype=DT)
    for var in (1.0, 0.3):
        ref = torch.distributions.Normal(g, math.sqrt(var)).log_prob(x).sum(-1)
        torch.testing.assert_close(gc.GaussianObs(var).log_prob(x, g), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("logits", [False, True])
def test_bernoulli_log_prob_and_hessian_vs_autograd(logits):
    x = (torch.rand(3, 5, generator=_gen(2), dtype=DT) > 0.5).to(DT)
    g = torch.rand(3, 5, generator=_gen(3), dtype=DT) * 0.9 + 0.05
    if logits:
        g = torch.logit(g)
    obs = gc.BernoulliObs(logits=logits)
    ref = (torch.distributions.Bernoulli(logits=g) if logits else torch.distributions.Bernoulli(probs=g)).log_prob(x)
    torch.testing.assert_close(obs.log_prob(x, g), ref.sum(-1), rtol=1e-12, atol=1e-12)
    for b in range(3):
        H = torch.func.hessian(lambda gg: obs.log_prob(x[b : b + 1], gg.unsqueeze(0)).sum())(g[b])
        torch.testing.assert_close(obs.hess_diag(x, g)[b], torch.diagonal(H), rtol=1e-10, atol=1e-12)
        assert float((H - torch.diag(torch.diagonal(H))).abs().max()) == 0.0
    if not logits:  # the paper's form for binary pixels (Sec. 5.1)
        torch.testing.assert_close(obs.hess_diag(x, g), -1 / (1 - x - g) ** 2, rtol=1e-12, atol=0)


def _bernoulli_logit_log_prob_mp(x, ell, digits=50):
    """Reference: Σᵢ xᵢ log σ(ℓᵢ) + (1 − xᵢ) log σ(−ℓᵢ) at ``digits`` significant digits (mpmath),
    with log σ(t) = −log(1 + e^{−t}); x and ℓ are read exactly from their float64 values."""
    import mpmath

    with mpmath.workdps(digits):
        total = mpmath.mpf(0)
        for xi, li in zip(x.tolist(), ell.tolist()):
            xi, li = mpmath.mpf(xi), mpmath.mpf(li)
            total += -xi * mpmath.log1p(mpmath.exp(-li)) - (1 - xi) * mpmath.log1p(mpmath.exp(li))
        return float(total)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_bernoulli_logit_log_prob_exact_at_large_logits(sign):
    """Issue 13 "Also": log p = xℓ − softplus(ℓ) with torch's softplus threshold (20) drops
    log1p(e^−|ℓ|) for ℓ > 20, and xℓ − softplus(ℓ) cancels for x = 1, ℓ ≫ 1. Compared with a
    50-digit mpmath evaluation on both sides (ℓ → ±∞), with binary and fractional x. Tolerance
    ``bernoulli-logit-exact`` in the tolerance table (a sum of ≤ 6 same-signed float64 terms)."""
    from gracheck.base.tolerances import tol

    t = tol("bernoulli-logit-exact")
    ell = sign * torch.tensor([[20.5, 24.0, 27.0, 31.0, 35.0, 40.0], [50.0, 100.0, 200.0, 400.0, 600.0, 700.0]], dtype=DT)
    for x in (torch.ones(2, 6, dtype=DT), torch.zeros(2, 6, dtype=DT), torch.full((2, 6), 0.3, dtype=DT),
              torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.25, 1.0]] * 2, dtype=DT)):
        got = gc.BernoulliObs(logits=True).log_prob(x, ell)
        for b in range(2):
            ref = _bernoulli_logit_log_prob_mp(x[b], ell[b])
            assert abs(float(got[b]) - ref) <= t.atol + t.rtol * abs(ref), (x[b].tolist(), ell[b].tolist(), float(got[b]), ref)
    # the gradient and Hessian in ℓ stay exact too: x − σ(ℓ) and −σ(ℓ)σ(−ℓ), which underflow only past |ℓ| ≈ 745
    x = torch.ones(1, 6, dtype=DT) if sign > 0 else torch.zeros(1, 6, dtype=DT)
    ell = sign * torch.tensor([[20.5, 24.0, 27.0, 31.0, 35.0, 40.0]], dtype=DT)
    obs = gc.BernoulliObs(logits=True)
    exact = torch.exp(-ell.abs())  # σ(−|ℓ|) = e^{−|ℓ|}/(1 + e^{−|ℓ|}) = e^{−|ℓ|}(1 − O(e^{−20}))
    torch.testing.assert_close(obs.grad(x, ell).abs(), exact, rtol=1e-8, atol=0)
    torch.testing.assert_close(-obs.hess_diag(x, ell), exact, rtol=1e-8, atol=0)


def test_observation_bad_input():
    with pytest.raises(ValueError, match="variance"):
        gc.GaussianObs(0.0)
    with pytest.raises(ValueError, match="g: Bernoulli"):
        gc.BernoulliObs().log_prob(torch.ones(1, 2, dtype=DT), torch.tensor([[0.5, 1.0]], dtype=DT))
    with pytest.raises(ValueError, match="x: Bernoulli"):
        gc.BernoulliObs().log_prob(torch.full((1, 2), 2.0, dtype=DT), torch.full((1, 2), 0.5, dtype=DT))
    with pytest.raises(ValueError, match="x, g"):
        gc.GaussianObs().log_prob(torch.zeros(2, 3), torch.zeros(2, 4))


# --------------------------------------------------------------- posteriors


@pytest.mark.parametrize("structure,block", [("mean-field", None), ("block-diagonal", 2), ("block-diagonal", 3), ("full", None)])
def test_posterior_structures(structure, block):
    d = 8  # 8 = 3 + 3 + 2 for block 3: the last block is smaller
    P = gc.num_params(structure, d, block)
    params = torch.randn(5, P, generator=_gen(4), dtype=DT)
    L = gc.scale_tril_from_params(params, d, structure, block)
    assert L.shape == (5, d, d)
    assert bool((torch.diagonal(L, dim1=-2, dim2=-1) > 0).all())
    assert float(torch.triu(L, 1).abs().max()) == 0.0
    b = {"mean-field": 1, "full": d}.get(structure, block)
    outside = ~block_mask(d, b)
    assert float(L[:, outside].abs().sum()) == 0.0
    assert gc.block_sizes(8, 3) == [3, 3, 2]
    expected_P = {"mean-field": 8, "full": 36}.get(structure, {2: 4 * 3, 3: 6 + 6 + 3}.get(block))
    assert P == expected_P
    mean = torch.randn(5, d, generator=_gen(5), dtype=DT)
    q = gc.GaussianPosterior(mean, L)
    ref = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(mean, scale_tril=L),
        torch.distributions.MultivariateNormal(torch.zeros(d, dtype=DT), torch.eye(d, dtype=DT)),
    )
    torch.testing.assert_close(q.kl_standard_normal(), ref, rtol=1e-10, atol=1e-12)
    z = q.sample(3, generator=_gen(6))
    lp = torch.distributions.MultivariateNormal(mean, scale_tril=L).log_prob(z)
    torch.testing.assert_close(q.log_prob(z), lp, rtol=1e-10, atol=1e-10)


def test_posterior_sampling_moments_and_generator():
    L = torch.tensor([[[1.0, 0.0], [0.8, 0.5]]], dtype=DT)
    q = gc.GaussianPosterior(torch.tensor([[1.0, -2.0]], dtype=DT), L)
    n = 200_000
    z = q.sample(n, generator=_gen(7))[:, 0]
    cov = torch.cov(z.T)
    # Standard error of a sample covariance entry ≤ sqrt(2/n)·max var ≈ 0.0032; allow 5 s.e.
    torch.testing.assert_close(cov, (L @ L.mT)[0], atol=0.02, rtol=0)
    torch.testing.assert_close(z.mean(0), q.mean[0], atol=0.02, rtol=0)
    assert torch.equal(q.sample(2, generator=_gen(1)), q.sample(2, generator=_gen(1)))
    with pytest.raises(ValueError, match="scale_tril: diagonal"):
        gc.GaussianPosterior(torch.zeros(1, 2, dtype=DT), -torch.eye(2, dtype=DT).unsqueeze(0))
    with pytest.raises(ValueError, match="params: expected last dimension"):
        gc.scale_tril_from_params(torch.zeros(1, 5, dtype=DT), 4, "mean-field")


# ---------------------------------------------------------- Jacobian engine


def _reverse_jacobian(decoder, z):
    """Reference: reverse-mode Jacobian, one example at a time (no batch coupling possible)."""
    out = []
    for i in range(z.shape[0]):
        Ji = torch.autograd.functional.jacobian(lambda zi: decoder(zi.unsqueeze(0)).reshape(-1), z[i])
        out.append(Ji)
    return torch.stack(out)


@pytest.mark.parametrize("method", ROUTES)
def test_decoder_jacobian_vs_reverse_mode_mlp(method):
    dec = _mlp()
    z = torch.randn(4, 3, generator=_gen(8), dtype=DT)
    J = gc.decoder_jacobian(dec, z, method=method)
    torch.testing.assert_close(J, _reverse_jacobian(dec, z), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("method", ROUTES)
def test_decoder_jacobian_conv_decoder(method):
    torch.manual_seed(1)
    dec = nn.Sequential(
        nn.Linear(2, 4 * 3 * 3), nn.ELU(), nn.Unflatten(1, (4, 3, 3)),
        nn.ConvTranspose2d(4, 3, 4, 2, 1), nn.ELU(), nn.Conv2d(3, 1, 3, 1, 1), nn.Sigmoid(),
    ).double().eval()
    z = torch.randn(3, 2, generator=_gen(9), dtype=DT)
    J = gc.decoder_jacobian(dec, z, method=method)
    assert J.shape == (3, 36, 2)
    torch.testing.assert_close(J, _reverse_jacobian(dec, z), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("method", ROUTES)
def test_jacobian_columns_match_full_jacobian(method):
    dec = _mlp(d=5)
    z = torch.randn(6, 5, generator=_gen(10), dtype=DT)
    cols = torch.randint(0, 5, (6, 3), generator=_gen(11))
    Jc = gc.jacobian_columns(dec, z, cols, method=method)
    J = _reverse_jacobian(dec, z)
    torch.testing.assert_close(Jc, torch.gather(J, 2, cols.unsqueeze(1).expand(6, 7, 3)), rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="columns: indices"):
        gc.jacobian_columns(dec, z, torch.full((6, 1), 5))
    with pytest.raises(ValueError, match="columns: expected shape"):
        gc.jacobian_columns(dec, z, torch.zeros(5, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="k ≥ 1"):
        gc.jacobian_columns(dec, z, torch.zeros(6, 0, dtype=torch.long), method=method)
    with pytest.raises(ValueError, match="z: expected shape"):
        gc.decoder_jacobian(dec, z[0])


@pytest.mark.parametrize("method", ROUTES)
def test_batchnorm_train_mode_is_per_example(method):
    """DESIGN pitfall: a naive batched JVP through train-mode BN mixes examples (a shared
    one-hot tangent gives exactly zero after the first Linear+BN). The engine holds the
    batch statistics constant for tangents: equal to the per-example Jacobian with the
    normalisation frozen at this batch's statistics, while outputs, parameter gradients
    and running statistics match an ordinary training-mode forward."""
    dec = nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.ELU(), nn.Linear(16, 5)).double().train()
    z = torch.randn(8, 3, generator=_gen(12), dtype=DT)

    import copy

    naive_dec = copy.deepcopy(dec)
    naive_dec[1].track_running_stats, naive_dec[1].running_mean, naive_dec[1].running_var = False, None, None
    naive = torch.func.jvp(naive_dec, (z,), (torch.zeros_like(z).index_fill_(1, torch.tensor([0]), 1.0),))[1]
    assert float(naive.detach().abs().max()) < 1e-12  # the pitfall is real

    ref_out = dec(z)
    ref_out.pow(2).sum().backward()
    ref_grads = [p.grad.clone() for p in dec.parameters()]
    ref_running = dec[1].running_mean.clone(), dec[1].running_var.clone()
    dec[1].reset_running_stats()
    dec.zero_grad()

    g, J = gc.decoder_jacobian(dec, z, return_output=True, method=method)
    torch.testing.assert_close(g, ref_out.detach(), rtol=1e-12, atol=1e-13)
    g.pow(2).sum().backward()
    for p, r in zip(dec.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, r, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dec[1].running_mean, ref_running[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(dec[1].running_var, ref_running[1], rtol=1e-12, atol=1e-14)

    with torch.no_grad():
        pre = dec[0](z)
        mu, var = pre.mean(0), pre.var(0, unbiased=False)
    frozen = nn.Sequential(dec[0], nn.BatchNorm1d(16).double().eval(), dec[2], dec[3])
    frozen[1].running_mean.copy_(mu)
    frozen[1].running_var.copy_(var)
    frozen[1].weight.data.copy_(dec[1].weight.data)
    frozen[1].bias.data.copy_(dec[1].bias.data)
    torch.testing.assert_close(J, _reverse_jacobian(frozen, z), rtol=1e-10, atol=1e-12)


def test_batchnorm_gradient_of_jacobian_agrees_between_routes():
    """With train-mode BN, ∂‖J‖²/∂θ (statistics differentiable, tangent-constant) must agree
    between the chain route, the dual-tensor route and the record/replay vmap route."""
    dec = nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.ELU(), nn.Linear(16, 5)).double().train()
    z = torch.randn(8, 3, generator=_gen(31), dtype=DT)
    params = list(dec.parameters())
    grads = []
    for method in ROUTES:
        g, J = gc.decoder_jacobian(dec, z, return_output=True, method=method)
        grads.append(torch.autograd.grad(J.pow(2).sum() + g.pow(3).sum(), params))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ROUTES)
def test_double_backward_through_jvp_vs_reverse_route(method):
    """Gradient of Σ‖J[:, c]‖² w.r.t. parameters: forward-mode engine + backward vs
    reverse-mode Jacobian built with create_graph=True + backward."""
    dec = _mlp(d=4)
    z = torch.randn(3, 4, generator=_gen(13), dtype=DT)
    cols = torch.tensor([[0], [2], [3]])
    dec.zero_grad()
    params = list(dec.parameters())
    g1 = torch.autograd.grad(gc.jacobian_columns(dec, z, cols, method=method).pow(2).sum(), params, allow_unused=True)
    dec.zero_grad()
    total = 0
    for i in range(3):
        Ji = torch.autograd.functional.jacobian(lambda zi: dec(zi.unsqueeze(0)).reshape(-1), z[i], create_graph=True)
        total = total + Ji[:, cols[i, 0]].pow(2).sum()
    g2 = torch.autograd.grad(total, params, allow_unused=True)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)  # the last bias does not enter J
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


class _ScaledConv(nn.Conv2d):
    """A conv subclass with its own forward: the engine must not replace its tangent rule."""

    def forward(self, x):
        return 0.5 * super().forward(x)


def _conv_zoo(seed=41):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(3, 8 * 3 * 3), nn.Unflatten(1, (8, 3, 3)), nn.BatchNorm2d(8), nn.ELU(),
        nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1, output_padding=1),  # 3 → 7
        nn.ELU(), nn.Conv2d(6, 5, 3, padding=1, padding_mode="reflect"),
        nn.Softplus(), _ScaledConv(5, 4, 3, padding=1, bias=True),
        nn.Flatten(2), nn.Conv1d(4, 2, 3, padding=1, padding_mode="circular"), nn.Sigmoid(),
    ).double()


@pytest.mark.parametrize("train_mode", [False, True])
def test_dual_tensor_convolutions_match_vmap_route_values_and_gradients(train_mode):
    """The dual-tensor route computes conv tangents directly (conv(x_t, W), no bias, no zero weight
    tangent); check it against the torch.func route on transposed, reflect- and circular-padded,
    1-D and subclassed convolutions: columns, primal and the parameter gradient of a loss on both."""
    import gracheck.autodiff as ad

    dec = _conv_zoo().train(train_mode)
    z = torch.randn(5, 3, generator=_gen(43), dtype=DT)
    cols = torch.tensor([[0], [2], [1], [1], [0]])
    params = list(dec.parameters())
    out = {}
    for method in ("forward-ad", "vmap"):
        g, Jc = gc.jacobian_columns(dec, z, cols, return_output=True, method=method)
        out[method] = (g, Jc, torch.autograd.grad(Jc.pow(2).sum() + g.pow(2).sum(), params))
    (g1, J1, gr1), (g2, J2, gr2) = out["forward-ad"], out["vmap"]
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(J1, J2, rtol=1e-10, atol=1e-12)
    assert float(J1.detach().abs().max()) > 1e-3  # the columns are not trivially zero
    for a, b in zip(gr1, gr2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # the patch is scoped: no instance-level forward is left behind, the subclass was never patched
    assert not any("forward" in m.__dict__ for m in dec.modules())
    seen = []
    orig = ad._conv_dual

    def spy(self, x, *args):
        seen.append(type(self).__name__)
        return orig(self, x, *args)

    ad._conv_dual = spy
    try:
        gc.jacobian_columns(dec, z, cols, method="forward-ad")
    finally:
        ad._conv_dual = orig
    assert sorted(seen) == ["Conv1d", "Conv2d", "ConvTranspose2d"]


@pytest.mark.parametrize("rows", [1, 5, 1000])
@pytest.mark.parametrize("method,knob", [("vmap", "_VMAP_ROWS"), ("chain", "CHAIN_ROWS")])
def test_route_batch_slicing_changes_nothing(monkeypatch, method, knob, rows):
    """The vmap and chain routes run their tangent passes on slices of the batch (about _VMAP_ROWS /
    CHAIN_ROWS rows each). Uneven slices, one example per slice, and one slice must all give the
    dual-tensor route's g and J, the same parameter gradient, and one running-statistics update
    (train-mode BatchNorm)."""
    import gracheck.autodiff as ad

    monkeypatch.setattr(ad, knob, rows)
    torch.manual_seed(5)
    make = lambda: nn.Sequential(nn.Linear(3, 12), nn.BatchNorm1d(12), nn.ELU(), nn.Linear(12, 6)).double().train()
    dec_a, dec_b = make(), make()
    dec_b.load_state_dict(dec_a.state_dict())
    z = torch.randn(7, 3, generator=_gen(44), dtype=DT)
    g_a, J_a = gc.decoder_jacobian(dec_a, z, return_output=True, method="forward-ad")
    g_b, J_b = gc.decoder_jacobian(dec_b, z, return_output=True, method=method)
    torch.testing.assert_close(g_b, g_a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(J_b, J_a, rtol=1e-10, atol=1e-12)
    ga = torch.autograd.grad(J_a.pow(2).sum() + g_a.pow(2).sum(), list(dec_a.parameters()))
    gb = torch.autograd.grad(J_b.pow(2).sum() + g_b.pow(2).sum(), list(dec_b.parameters()))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)
    assert int(dec_b[1].num_batches_tracked) == 1
    torch.testing.assert_close(dec_b[1].running_mean, dec_a[1].running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dec_b[1].running_var, dec_a[1].running_var, rtol=1e-12, atol=1e-12)


def _chain_zoo(train_mode: bool, seed: int = 51):
    """Every layer type the chain route knows, nested once, in float64."""
    torch.manual_seed(seed)
    inner = nn.Sequential(nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(6), nn.ELU(0.7))
    return nn.Sequential(
        nn.Linear(3, 8 * 3 * 3), nn.BatchNorm1d(72), nn.LeakyReLU(0.2), nn.Unflatten(1, (8, 3, 3)),
        inner, nn.Dropout(0.0), nn.Conv2d(6, 5, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.Conv2d(5, 4, 3, padding=1), nn.ELU(), nn.Identity(), nn.Flatten(2),
        nn.Conv1d(4, 3, 3, padding=1, padding_mode="circular"), nn.Softplus(beta=2.0, threshold=1.0),
        nn.Flatten(), nn.Linear(147, 20), nn.Tanh(), nn.Linear(20, 10), nn.Sigmoid(),
    ).double().train(train_mode)


@pytest.mark.parametrize("train_mode", [False, True])
def test_chain_route_every_layer_vs_reverse_mode_and_vmap_gradients(train_mode):
    """The chain route propagates tangents by hand (Linear/conv weights, BatchNorm scales folded into
    the next activation's derivative, reshapes). Check its J against per-example reverse mode (eval
    mode; train mode with frozen statistics is covered against the vmap route) and the parameter
    gradient of a loss on (g, J) against the vmap route, on a decoder using every supported layer."""
    import gracheck.autodiff as ad

    dec = _chain_zoo(train_mode)
    layers, why = ad._chain_layers(dec)
    assert layers is not None, why
    assert len(layers) == 21  # the nested Sequential was flattened
    z = torch.randn(6, 3, generator=_gen(52), dtype=DT)
    params = list(dec.parameters())
    out = {}
    for method in ("chain", "vmap"):
        g, J = gc.decoder_jacobian(dec, z, return_output=True, method=method)
        out[method] = (g, J, torch.autograd.grad(J.pow(2).sum() + g.pow(2).sum(), params))
    (g1, J1, gr1), (g2, J2, gr2) = out["chain"], out["vmap"]
    if not train_mode:
        torch.testing.assert_close(J1, _reverse_jacobian(dec, z), rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(J1, J2, rtol=1e-10, atol=1e-12)
    assert float(J1.detach().abs().max()) > 1e-3
    for a, b in zip(gr1, gr2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_chain_route_takes_the_papers_nets_through_jacobian_chain():
    """gracheck.nets decoders declare their layers (jacobian_chain); composing them must reproduce
    forward, and "auto" must then take the chain route and agree with the vmap route."""
    import gracheck.autodiff as ad
    from gracheck.nets import CelebADecoder, MLPDecoder, MNISTDecoder

    torch.manual_seed(7)
    decs = [MNISTDecoder(4, width=0.125), CelebADecoder(5, width=1 / 64), MLPDecoder(3, 12, (8,), out_shape=(3, 4))]
    for dec in decs:
        dec = dec.double().eval()
        z = torch.randn(3, dec.d, generator=_gen(54), dtype=DT)
        x = z
        for m in dec.jacobian_chain():
            x = m(x)
        torch.testing.assert_close(x, dec(z), rtol=0, atol=0)
        assert ad._chain_layers(dec)[0] is not None
        calls = []
        orig = ad._columns_chain
        ad._columns_chain = lambda *a: calls.append(1) or orig(*a)
        try:
            J = gc.decoder_jacobian(dec, z)
        finally:
            ad._columns_chain = orig
        assert calls == [1]
        torch.testing.assert_close(J, gc.decoder_jacobian(dec, z, method="vmap"), rtol=1e-10, atol=1e-12)


def test_chain_route_refuses_unknown_layers_and_auto_falls_back():
    """A layer the chain route does not know (a conv subclass with its own forward, a hooked module,
    training-mode dropout, a plain callable) makes method="chain" raise a ValueError naming it, while
    "auto" falls back to the generic routes and still gives the right Jacobian."""
    import gracheck.autodiff as ad

    z = torch.randn(4, 3, generator=_gen(55), dtype=DT)
    scaled = nn.Sequential(nn.Linear(3, 2 * 3 * 3), nn.Unflatten(1, (2, 3, 3)), _ScaledConv(2, 1, 3, padding=1)).double()
    hooked = _mlp()
    hooked[1].register_forward_hook(lambda m, i, o: 2 * o)
    dropout = nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.5)).double().train()
    top_hooked = _mlp()
    top_hooked.register_forward_pre_hook(lambda m, i: (2 * i[0],))
    for dec, name in ((scaled, "_ScaledConv"), (hooked, "has hooks"), (top_hooked, "decoder has hooks"),
                      (dropout, "dropout in training mode")):
        with pytest.raises(ValueError, match=name):
            gc.decoder_jacobian(dec, z, method="chain")
    for dec in (scaled, hooked, top_hooked):
        torch.testing.assert_close(gc.decoder_jacobian(dec, z), _reverse_jacobian(dec, z), rtol=1e-11, atol=1e-13)
    with pytest.raises(ValueError, match="neither an nn.Sequential"):
        gc.decoder_jacobian(lambda zz: zz.sin(), z, method="chain")
    with pytest.raises(ValueError, match="Linear layer expects 3 inputs"):
        gc.decoder_jacobian(_mlp(), torch.randn(4, 5, dtype=DT), method="chain")
    assert ad._chain_layers(_mlp())[0] is not None


# ----------------------------------------------------- model-level objectives


def _linear_decoder(d=3, D=6, seed=14):
    W = torch.randn(D, d, generator=_gen(seed), dtype=DT)
    c = torch.randn(D, generator=_gen(seed + 1), dtype=DT)
    return (lambda z: z @ W.T + c), W, c


def test_taylor_is_exact_for_linear_gaussian_closed_form_and_mc():
    """Linear decoder + Gaussian obs: E_q log p(x|z) = log p(x|Wμ+c) − tr(WᵀWΣ)/(2σ²) exactly.
    Route 1: taylor_objective. Route 2: the closed form written out. Route 3: β-VAE Monte Carlo."""
    dec, W, c = _linear_decoder()
    x = torch.randn(2, 6, generator=_gen(16), dtype=DT)
    mean = torch.randn(2, 3, generator=_gen(17), dtype=DT) * 0.5
    Lm = torch.randn(2, 3, 3, generator=_gen(18), dtype=DT) * 0.3
    L = torch.tril(Lm, -1) + torch.diag_embed(torch.rand(2, 3, generator=_gen(19), dtype=DT) + 0.2)
    cov = L @ L.mT
    beta, var = 0.7, 0.5
    obs = gc.GaussianObs(var)
    tay = gc.taylor_objective(x, dec, mean, cov, beta, obs)
    mu_x = mean @ W.T + c
    logp = -((x - mu_x) ** 2).sum(-1) / (2 * var) - 3.0 * math.log(2 * math.pi * var)
    exp_ll = logp - torch.einsum("ij,bjk,ik->b", W.T @ W, cov, torch.eye(3, dtype=DT)) / (2 * var)
    kl = 0.5 * (torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1) + (mean**2).sum(-1) - 3 - torch.logdet(cov))
    torch.testing.assert_close(tay, exp_ll - beta * kl, rtol=1e-12, atol=1e-12)

    n = 100_000
    mc = gc.beta_vae_objective(x, dec, mean, L, beta, obs, n_samples=n, generator=_gen(20))
    # Standard error from the same draws (same generator seed): sd of log p over samples / sqrt(n).
    z = gc.GaussianPosterior(mean, L).sample(n, generator=_gen(20))
    lp = obs.log_prob(x.repeat(n, 1), dec(z.reshape(-1, 3))).reshape(n, 2)
    se = lp.std(0) / math.sqrt(n)
    assert bool(((mc - tay).abs() < 5 * se).all()), f"MC {mc} vs exact {tay}, 5 s.e. = {5 * se}"  # P(false fail) < 1e-6


def test_grae_equals_taylor_at_optimal_covariance_gaussian_and_bernoulli():
    """Eq. 10–12: GRAE is Eq. 7 evaluated at Σ* = (I − JᵀH_pJ/β)⁻¹. Route 1: grae_objective
    (log det). Route 2: taylor_objective at optimal_covariance (trace + KL)."""
    dec = _mlp(d=3, D=7, act=nn.Softplus)
    mean = torch.randn(4, 3, generator=_gen(21), dtype=DT) * 0.5
    for obs, x, out in [
        (gc.GaussianObs(0.8), torch.randn(4, 7, generator=_gen(22), dtype=DT), dec),
        (gc.BernoulliObs(), (torch.rand(4, 7, generator=_gen(23), dtype=DT) > 0.5).to(DT), lambda z: torch.sigmoid(dec(z))),
        (gc.BernoulliObs(logits=True), torch.rand(4, 7, generator=_gen(24), dtype=DT), dec),
    ]:
        beta = 0.3
        g, J = gc.decoder_jacobian(out, mean, return_output=True)
        H = J.mT @ (J * obs.hess_diag(x, g).unsqueeze(-1))
        Sig = gc.optimal_covariance(H, beta)
        torch.testing.assert_close(
            gc.grae_objective(x, out, mean, beta, obs), gc.taylor_objective(x, out, mean, Sig, beta, obs), rtol=1e-10, atol=1e-10
        )


def test_grae_approx_exact_expectation_and_monte_carlo():
    """Eq. 14: averaging GRAE≈ (k=1) over all d columns gives the Hadamard-bound objective
    exactly; the sampled estimator's mean converges to it (unbiased), and the bound ≤ GRAE."""
    dec = _mlp(d=4, D=9)
    x = torch.randn(3, 9, generator=_gen(25), dtype=DT)
    mean = torch.randn(3, 4, generator=_gen(26), dtype=DT)
    beta, obs = 0.5, gc.GaussianObs()
    per_col = torch.stack([
        gc.grae_approx_objective(x, dec, mean, beta, obs, columns=torch.full((3, 1), c)) for c in range(4)
    ])
    g, J = gc.decoder_jacobian(dec, mean, return_output=True)
    hb_obj = obs.log_prob(x, g) - beta / 2 * mean.pow(2).sum(-1) - gc.hadamard_bound(J, beta)
    torch.testing.assert_close(per_col.mean(0), hb_obj, rtol=1e-12, atol=1e-12)
    assert bool((hb_obj < gc.grae_objective(x, dec, mean, beta, obs)).all())
    gen = _gen(27)
    draws = torch.stack([gc.grae_approx_objective(x, dec, mean, beta, obs, k=2, generator=gen) for _ in range(400)])
    se = draws.std(0) / math.sqrt(400)
    assert bool(((draws.mean(0) - hb_obj).abs() < 5 * se + 1e-12).all())
    full = gc.grae_approx_objective(x, dec, mean, beta, obs, k=4, generator=gen)  # k = d: exact bound
    torch.testing.assert_close(full, hb_obj, rtol=1e-12, atol=1e-12)


def test_objectives_agree_across_engine_routes():
    """taylor/grae/grae_approx with method = chain, forward-ad and vmap: equal values and parameter
    gradients (Gaussian and Bernoulli-with-logits observations, one decoder with BatchNorm)."""
    dec = _mlp(d=3, D=7, act=nn.ELU, bn=True).eval()
    mean = torch.randn(5, 3, generator=_gen(56), dtype=DT)
    cov = torch.diag_embed(torch.rand(5, 3, generator=_gen(57), dtype=DT) + 0.1)
    cols = torch.rand(5, 3, generator=_gen(58), dtype=DT).argsort(1)[:, :2]  # two distinct columns per row
    for obs, x in [(gc.GaussianObs(0.5), torch.randn(5, 7, generator=_gen(59), dtype=DT)),
                   (gc.BernoulliObs(logits=True), torch.rand(5, 7, generator=_gen(60), dtype=DT))]:
        calls = [
            lambda m: gc.taylor_objective(x, dec, mean, cov, 0.4, obs, method=m),
            lambda m: gc.grae_objective(x, dec, mean, 0.4, obs, method=m),
            lambda m: gc.grae_approx_objective(x, dec, mean, 0.4, obs, columns=cols, method=m),
        ]
        for f in calls:
            vals = [f(m) for m in ROUTES]
            grads = [torch.autograd.grad(v.sum(), list(dec.parameters())) for v in vals]
            for v, gr in zip(vals[1:], grads[1:]):
                torch.testing.assert_close(v, vals[0], rtol=1e-12, atol=1e-12)
                for a, b in zip(gr, grads[0]):
                    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="method: expected one of"):
        gc.grae_objective(x, dec, mean, 0.4, obs, method="reverse")


def test_objectives_float32_training_path_and_terms():
    dec = _mlp(d=3, D=5, bn=True).float().train()
    x = torch.rand(6, 5)
    mean = torch.randn(6, 3, requires_grad=True)
    L = torch.diag_embed(torch.rand(6, 3) + 0.1).requires_grad_(True)
    obs = gc.GaussianObs()
    for fn, args in [
        (gc.beta_vae_objective, (x, dec, mean, L, 0.5, obs)),
        (gc.grae_objective, (x, dec, mean, 0.5, obs)),
        (gc.grae_approx_objective, (x, dec, mean, 0.5, obs)),
    ]:
        terms = fn(*args, return_terms=True) if fn is not gc.beta_vae_objective else fn(*args, generator=_gen(1), return_terms=True)
        assert terms["objective"].dtype == torch.float32 and terms["objective"].shape == (6,)
        dec.zero_grad()
        (-terms["objective"].mean()).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dec.parameters())


def test_orthogonality_penalty():
    Q, _ = torch.linalg.qr(torch.randn(8, 3, generator=_gen(28), dtype=DT))
    orth = lambda z: z @ (Q * torch.tensor([1.0, 2.0, 3.0], dtype=DT)).T
    mean = torch.randn(5, 3, generator=_gen(29), dtype=DT)
    assert float(gc.orthogonality_penalty(orth, mean, _gen(0)).abs().max()) < 1e-24
    W = torch.randn(8, 3, generator=_gen(30), dtype=DT)
    cos2 = (W.T @ W) ** 2 / torch.outer((W**2).sum(0), (W**2).sum(0))
    pen = gc.orthogonality_penalty(lambda z: z @ W.T, mean, _gen(0))
    offdiag = cos2[~torch.eye(3, dtype=torch.bool)]
    assert bool(torch.isin(pen.round(decimals=10), offdiag.round(decimals=10)).all())


def test_model_level_bad_input():
    dec = _mlp()
    x = torch.randn(2, 7, dtype=DT)
    with pytest.raises(ValueError, match="x, mean"):
        gc.grae_objective(x, dec, torch.zeros(3, 3, dtype=DT), 1.0, gc.GaussianObs())
    with pytest.raises(ValueError, match="decoder: output"):
        gc.grae_objective(torch.randn(2, 5, dtype=DT), dec, torch.zeros(2, 3, dtype=DT), 1.0, gc.GaussianObs())
    with pytest.raises(ValueError, match="beta"):
        gc.grae_approx_objective(x, dec, torch.zeros(2, 3, dtype=DT), -0.1, gc.GaussianObs())
    with pytest.raises(ValueError, match="k: must be"):
        gc.grae_approx_objective(x, dec, torch.zeros(2, 3, dtype=DT), 0.1, gc.GaussianObs(), k=4)
    with pytest.raises(ValueError, match="mean: contains"):
        gc.grae_objective(x, dec, torch.full((2, 3), float("nan"), dtype=DT), 1.0, gc.GaussianObs())


def _objective_calls(x, dec, mean, L, obs, beta=0.5, columns=None):
    """The five model-level objectives on one set of inputs."""
    cov = L @ L.mT
    return {
        "beta_vae_objective": lambda: gc.beta_vae_objective(x, dec, mean, L, beta, obs, generator=_gen(0)),
        "taylor_objective": lambda: gc.taylor_objective(x, dec, mean, cov, beta, obs),
        "grae_objective": lambda: gc.grae_objective(x, dec, mean, beta, obs),
        "grae_approx_objective": lambda: gc.grae_approx_objective(x, dec, mean, beta, obs, generator=_gen(0), columns=columns),
        "orthogonality_penalty": lambda: gc.orthogonality_penalty(dec, mean, _gen(0)),
    }


def test_symmetric_non_triangular_scale_tril_is_refused():
    """Issue 17 item 6: scale_tril [[1, 2], [2, 1]] was read as its lower triangle for the KL (4.0)
    but used whole for sampling; the KL of LLᵀ = [[5, 4], [4, 5]] is 2.90. Now a ValueError."""
    L = torch.tensor([[[1.0, 2.0], [2.0, 1.0]]], dtype=DT)
    dec = _mlp(d=2, D=7)
    x, mean = torch.zeros(1, 7, dtype=DT), torch.zeros(1, 2, dtype=DT)
    with pytest.raises(ValueError, match="scale_tril: must be lower-triangular"):
        gc.beta_vae_objective(x, dec, mean, L, 1.0, gc.GaussianObs(), return_terms=True)
    with pytest.raises(ValueError, match="scale_tril: must be lower-triangular"):
        gc.GaussianPosterior(mean, L)
    # the triangular factor of the same covariance gives the KL of LLᵀ
    Lc = torch.linalg.cholesky(L @ L.mT)
    kl = gc.beta_vae_objective(x, dec, mean, Lc, 1.0, gc.GaussianObs(), generator=_gen(0), return_terms=True)["kl"]
    torch.testing.assert_close(kl, gc.gaussian_kl(mean, L @ L.mT), rtol=1e-12, atol=1e-12)
    assert abs(float(kl) - (4 - math.log(3))) < 1e-12  # ½(tr − d − log det) = ½(10 − 2 − log 9)


def test_duplicate_columns_are_refused():
    """grae_approx_objective's docstring says S is k *distinct* columns; duplicates (which bias the
    estimator of Eq. 14) were accepted. jacobian_columns itself allows repeats; the objective does not."""
    dec = _mlp(d=3)
    x, mean = torch.randn(3, 7, generator=_gen(61), dtype=DT), torch.randn(3, 3, generator=_gen(62), dtype=DT)
    with pytest.raises(ValueError, match=r"columns: row 1 repeats a column \(\[1, 1\]\)"):
        gc.grae_approx_objective(x, dec, mean, 0.5, gc.GaussianObs(), columns=torch.tensor([[0, 2], [1, 1], [0, 1]]))
    ok = gc.grae_approx_objective(x, dec, mean, 0.5, gc.GaussianObs(), columns=torch.tensor([[0, 2], [2, 1], [0, 1]]))
    assert ok.shape == (3,)


def test_model_level_beta_shape_must_match_the_batch():
    dec = _mlp(d=3)
    x, mean = torch.randn(3, 7, generator=_gen(63), dtype=DT), torch.randn(3, 3, generator=_gen(64), dtype=DT)
    L = torch.eye(3, dtype=DT).expand(3, 3, 3)
    for name, call in _objective_calls(x, dec, mean, L, gc.GaussianObs(), beta=torch.full((3, 1), 0.5, dtype=DT)).items():
        if name == "orthogonality_penalty":
            continue
        with pytest.raises(ValueError, match=r"beta: shape \(3, 1\) .* batch shape \(3,\)"):
            call()
    per_example = torch.tensor([0.1, 0.5, 2.0], dtype=DT)
    got = gc.grae_objective(x, dec, mean, per_example, gc.GaussianObs())
    ref = torch.stack([gc.grae_objective(x[i:i + 1], dec, mean[i:i + 1], float(per_example[i]), gc.GaussianObs())[0]
                       for i in range(3)])
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_model_level_unclear_inputs_get_named_errors():
    """Issue 17 item 7: B = 0, obs=None (or the class instead of an instance), float32/float64 mixtures
    between mean, scale_tril/cov and the decoder, and half precision each get an error naming the argument."""
    dec = _mlp(d=3)
    x, mean = torch.randn(3, 7, generator=_gen(65), dtype=DT), torch.randn(3, 3, generator=_gen(66), dtype=DT)
    L = torch.eye(3, dtype=DT).expand(3, 3, 3).clone()
    obs = gc.GaussianObs()
    for name, call in _objective_calls(x[:0], dec, mean[:0], L[:0], obs).items():
        with pytest.raises(ValueError, match=r"mean: empty batch \(B = 0\)"):
            call()
    assert gc.GaussianObs().log_prob(x[:0], x[:0]).shape == (0,)  # the observation models: empty in, empty out
    assert gc.BernoulliObs(logits=True).hess_diag(x[:0].sigmoid(), x[:0]).shape == (0, 7)
    for bad, what in ((None, "None"), (gc.GaussianObs, "the class GaussianObs"), ("gaussian", "'gaussian'")):
        for name, call in _objective_calls(x, dec, mean, L, bad).items():
            if name == "orthogonality_penalty":
                continue
            with pytest.raises(TypeError, match=f"obs: expected an observation model.*got {what}"):
                call()
    # mean float64, scale_tril / cov float32
    with pytest.raises(TypeError, match="scale_tril: dtype torch.float32 differs from mean's torch.float64"):
        gc.beta_vae_objective(x, dec, mean, L.float(), 0.5, obs, generator=_gen(0))
    with pytest.raises(TypeError, match="cov: dtype torch.float32 differs from mean's torch.float64"):
        gc.taylor_objective(x, dec, mean, L.float(), 0.5, obs)
    # a float64 decoder fed a float32 mean, and a decoder returning float64 for a float32 mean
    for name, call in _objective_calls(x.float(), dec, mean.float(), L.float(), obs).items():
        with pytest.raises(TypeError, match="decoder: its parameters are torch.float64 but mean is torch.float32"):
            call()
    dec32 = _mlp(d=3).float()
    for name, call in _objective_calls(x.float(), lambda z: dec32(z).double(), mean.float(), L.float(), obs).items():
        with pytest.raises(TypeError, match="decoder: returned torch.float64 for a torch.float32 mean"):
            call()
    for dtype in (torch.float16, torch.bfloat16):
        for name, call in _objective_calls(x.to(dtype), dec.to(dtype), mean.to(dtype), L.to(dtype), obs).items():
            with pytest.raises(TypeError, match="is not supported.*float32 or float64"):
                call()
        with pytest.raises(TypeError, match="is not supported.*float32 or float64"):
            obs.log_prob(x.to(dtype), x.to(dtype))
    with pytest.raises(TypeError, match="decoder: expected a callable"):
        gc.grae_objective(x, None, mean, 0.5, obs)


# ------------------------------------------------- chain route, property-based


def _random_chain(data):
    """A random MLP decoder from the layers the chain route knows (float64), drawn by hypothesis."""
    from hypothesis import strategies as st

    d = data.draw(st.integers(1, 4), label="d")
    acts = [
        lambda: nn.ELU(data.draw(st.sampled_from([1.0, 0.5, 2.0]), label="alpha")),
        nn.ReLU,
        lambda: nn.LeakyReLU(data.draw(st.sampled_from([0.01, 0.3]), label="slope")),
        nn.Sigmoid,
        nn.Tanh,
        lambda: nn.Softplus(beta=data.draw(st.sampled_from([1.0, 3.0]), label="beta"), threshold=1.0),
    ]
    layers, width = [], d
    for _ in range(data.draw(st.integers(1, 3), label="depth")):
        w = data.draw(st.integers(1, 6), label="width")
        layers.append(nn.Linear(width, w))
        if data.draw(st.booleans(), label="batchnorm"):
            layers.append(nn.BatchNorm1d(w))
        layers.append(data.draw(st.sampled_from(acts), label="activation")())
        width = w
    layers.append(nn.Linear(width, data.draw(st.integers(1, 5), label="D")))
    if data.draw(st.booleans(), label="output sigmoid"):
        layers.append(nn.Sigmoid())
    return d, nn.Sequential(*layers).double().train(data.draw(st.booleans(), label="train mode"))


def test_chain_route_matches_dual_tensors_on_random_decoders():
    """Property: for random chains of Linear / BatchNorm (eval or train) / six activations, the chain
    route's g, J, parameter gradient of a loss on both and running statistics equal the dual-tensor
    route's (an independent implementation: PyTorch's own forward-mode rules)."""
    pytest.importorskip("hypothesis")
    import copy

    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(st.data())
    def prop(data):
        seed = data.draw(st.integers(0, 2**16), label="seed")
        torch.manual_seed(seed)
        d, dec_a = _random_chain(data)
        dec_b = copy.deepcopy(dec_a)
        B = data.draw(st.integers(2, 5), label="B")  # ≥ 2: train-mode BatchNorm needs a batch
        z = torch.randn(B, d, generator=_gen(seed), dtype=DT)
        out = []
        for dec, method in ((dec_a, "chain"), (dec_b, "forward-ad")):
            g, J = gc.decoder_jacobian(dec, z, return_output=True, method=method)
            out.append((g, J, torch.autograd.grad(J.pow(2).sum() + g.pow(2).sum(), list(dec.parameters()), allow_unused=True)))
        (g1, J1, gr1), (g2, J2, gr2) = out
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(J1, J2, rtol=1e-10, atol=1e-12)
        for a, b in zip(gr1, gr2):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
        for ba, bb in zip(dec_a.modules(), dec_b.modules()):
            if isinstance(ba, nn.BatchNorm1d):
                torch.testing.assert_close(ba.running_var, bb.running_var, rtol=1e-12, atol=1e-14)

    prop()
