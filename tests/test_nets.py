"""The Appendix D architectures and the MLP variants (gracheck.nets)."""

from __future__ import annotations

import pytest
import torch

from gracheck import nets
from gracheck.posteriors import block_mask


def _conv(cin, cout, k):
    return cin * cout * k * k + cout


def _bn(c):
    return 2 * c


def _lin(a, b):
    return a * b + b


# Parameter counts derived layer by layer from Appendix D and the paddings in nets' docstring
# (independent of the module code: a different computation from count_parameters).
def _expected_counts():
    mn_enc = (_conv(1, 64, 4) + _bn(64) + _conv(64, 128, 4) + _bn(128) + _conv(128, 256, 4) + _bn(256)
              + _conv(256, 512, 4) + _bn(512) + _conv(512, 512, 4) + _bn(512) + _lin(2 * 2 * 512, 12))
    mn_dec = (_lin(12, 7 * 7 * 256) + _bn(7 * 7 * 256) + _conv(256, 512, 4) + _bn(512) + _conv(512, 256, 4) + _bn(256)
              + _conv(256, 128, 4) + _bn(128) + _conv(128, 64, 4) + _conv(64, 1, 4))
    ce_enc = (_conv(3, 128, 5) + _bn(128) + _conv(128, 256, 5) + _bn(256) + _conv(256, 512, 5) + _bn(512)
              + _conv(512, 1024, 5) + _bn(1024) + _conv(1024, 1024, 5) + _bn(1024) + _lin(4 * 4 * 1024, 128))
    ce_dec = (_lin(128, 16 * 16 * 512) + _bn(16 * 16 * 512) + _conv(512, 1024, 5) + _bn(1024) + _conv(1024, 512, 5)
              + _bn(512) + _conv(512, 256, 5) + _bn(256) + _conv(256, 128, 5) + _conv(128, 3, 5))
    return mn_enc, mn_dec, ce_enc, ce_dec


def test_parameter_counts_match_layer_by_layer_derivation_and_docstring():
    mn_enc, mn_dec, ce_enc, ce_dec = _expected_counts()
    with torch.device("meta"):  # shapes only, no memory or compute
        m = nets.build_model("mnist", "grae", 12)
        c = nets.build_model("celeba", "grae", 128)
        mf = nets.build_model("mnist", "beta-vae", 12)
    assert nets.count_parameters(m.encoder) == mn_enc
    assert nets.count_parameters(m.decoder) == mn_dec
    assert nets.count_parameters(c.encoder) == ce_enc
    assert nets.count_parameters(c.decoder) == ce_dec
    assert nets.count_parameters(mf.encoder) - mn_enc == _lin(2048, 12)  # the mean-field head
    doc = nets.__doc__.replace(",", "")
    for n in (mn_enc, mn_dec, ce_enc, ce_dec, _lin(2048, 12)):
        assert str(n) in doc, n


@pytest.mark.parametrize("dataset, d, shape, flat", [("mnist", 12, (1, 28, 28), 2048), ("celeba", 128, (3, 64, 64), 16384)])
def test_paper_nets_reach_exact_image_size(dataset, d, shape, flat):
    """Width 1.0 (the paper's network), shapes propagated on the meta device: no cropping needed."""
    with torch.device("meta"):
        m = nets.build_model(dataset, "grae", d)
        x = torch.empty(4, *shape)
        mean, L = m.encode(x)
        y = m.decode(mean)
    assert m.encoder.flat_features == flat
    assert tuple(mean.shape) == (4, d) and L is None
    assert tuple(y.shape) == (4, *shape)


@pytest.mark.parametrize("dataset, shape", [("mnist", (1, 28, 28)), ("celeba", (3, 64, 64))])
def test_reduced_width_forward_values_and_gradients(dataset, shape):
    """Real compute at width 1/16: outputs in (0, 1); every parameter receives a finite, non-zero gradient."""
    torch.manual_seed(0)
    m = nets.build_model(dataset, "beta-vae", 6, width=1 / 16)
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(1))
    mean, L = m.encode(x)
    y = m.decode(mean + (L @ torch.ones(4, 6, 1)).squeeze(-1))
    assert y.shape == (4, *shape) and bool(((y > 0) & (y < 1)).all())
    assert mean.shape == (4, 6) and L.shape == (4, 6, 6)
    ((y - x) ** 2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", ["conv", "mlp"])
@pytest.mark.parametrize("posterior, block", [("mean-field", None), ("block-diagonal", 3), ("block-diagonal", 2), ("full", None)])
def test_posterior_heads_give_valid_structured_scale_tril(arch, posterior, block):
    d = 8
    m = nets.build_model("mnist", "beta-vae", d, posterior=posterior, block=block, width=1 / 16, arch=arch, hidden=(32,))
    with torch.no_grad():
        # push the head's raw outputs around so the check is not only at initialisation
        m.encoder.head.scale.bias.normal_(0, 1, generator=torch.Generator().manual_seed(2))
        mean, L = m.encode(torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(3)))
    assert L.shape == (5, d, d)
    diag = torch.diagonal(L, dim1=-2, dim2=-1)
    assert bool((diag > 0).all())
    assert torch.equal(L, torch.tril(L))
    if posterior == "mean-field":
        allowed = torch.eye(d, dtype=torch.bool)
    elif posterior == "block-diagonal":
        allowed = block_mask(d, block)
    else:
        allowed = torch.ones(d, d, dtype=torch.bool)
    assert bool((L[:, ~allowed] == 0).all())
    assert bool((L[:, allowed & torch.tril(torch.ones(d, d, dtype=torch.bool), -1)] != 0).all())  # free entries used
    # covariance is SPD and has the same block pattern
    Ld = L.double()
    cov = Ld @ Ld.transpose(-1, -2)
    assert bool((cov[:, ~allowed] == 0).all())
    assert bool((torch.linalg.cholesky_ex(cov).info == 0).all())


def test_deterministic_models_have_no_scale_head():
    for model in ("grae", "grae-approx", "ae"):
        m = nets.build_model("mnist", model, 4, arch="mlp", hidden=(16,))
        assert m.encoder.head.scale is None
        mean, L = m.encode(torch.rand(2, 1, 28, 28))
        assert L is None and mean.shape == (2, 4)


def test_relu_mlp_decoder_is_piecewise_linear_elu_is_not():
    """Eq. 6 is exact for piecewise-linear decoders: the Hessian of a ReLU MLP without sigmoid is 0 a.e.

    Two computations: the Hessian by torch.func (reverse-over-reverse) of a random projection of the
    decoder output, which must vanish for ReLU/out="none" and must not for ELU.
    """
    torch.manual_seed(0)
    z = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    w = torch.randn(20, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for act, zero in (("relu", True), ("elu", False)):
        dec = nets.MLPDecoder(3, 20, (16, 16), activation=act, out="none").double()
        H = torch.func.hessian(lambda v: dec(v.unsqueeze(0))[0] @ w)(z).detach()
        assert H.shape == (3, 3)
        if zero:
            assert float(H.abs().max()) == 0.0
        else:
            assert float(H.abs().max()) > 1e-6


def test_mlp_shapes_and_bad_input():
    enc = nets.MLPEncoder(784, 5, (32,), posterior="mean-field")
    dec = nets.MLPDecoder(5, 784, (32,), out_shape=(1, 28, 28))
    mean, L = enc(torch.rand(3, 1, 28, 28))
    assert mean.shape == (3, 5) and L.shape == (3, 5, 5)
    assert dec(mean).shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="x"):
        enc(torch.rand(3, 10))
    with pytest.raises(ValueError, match="z"):
        dec(torch.rand(3, 4))
    with pytest.raises(ValueError, match="activation"):
        nets.MLPDecoder(5, 10, (8,), activation="gelu")
    with pytest.raises(ValueError, match="out_shape"):
        nets.MLPDecoder(5, 10, (8,), out_shape=(3, 3))
    with pytest.raises(ValueError, match="x"):
        nets.MNISTEncoder(4, width=1 / 16)(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="width"):
        nets.MNISTDecoder(4, width=0)
    with pytest.raises(ValueError, match="block"):
        nets.build_model("mnist", "beta-vae", 4, posterior="block-diagonal")
    with pytest.raises(ValueError, match="dataset"):
        nets.build_model("cifar", "grae", 4)
    with pytest.raises(ValueError, match="model"):
        nets.build_model("mnist", "vae", 4)
    with pytest.raises(ValueError, match="latent_dim"):
        nets.build_model("mnist", "grae", 0)


def test_build_from_spec_round_trip():
    m = nets.build_model("mnist", "beta-vae", 6, posterior="block-diagonal", block=2, arch="mlp", hidden=(24, 12))
    m2 = nets.build_from_spec(m.spec)
    assert m2.spec == m.spec
    assert [(k, v.shape) for k, v in m.state_dict().items()] == [(k, v.shape) for k, v in m2.state_dict().items()]


def test_logit_output_is_the_sigmoid_preimage():
    """out="none" returns logits: sigmoid of them equals the sigmoid decoder with the same weights."""
    torch.manual_seed(0)
    a = nets.MNISTDecoder(4, width=1 / 16).eval()
    b = nets.MNISTDecoder(4, width=1 / 16, out="none").eval()
    b.load_state_dict(a.state_dict())
    z = torch.randn(2, 4, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(torch.sigmoid(b(z)), a(z), rtol=1e-6, atol=1e-7)
