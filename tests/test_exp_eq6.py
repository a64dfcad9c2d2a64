"""Unit tests of the Eq. 5/6 residual (gracheck.experiments.eq6_residual); fast, no training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from gracheck.experiments import eq6_residual as e
from gracheck.experiments import fig3_objectives as f3
from gracheck.experiments._common import ExperimentResult, config_dict
from gracheck.likelihoods import GaussianObs
from gracheck.nets import MLPDecoder

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _dec(act, out, d=4, D=9, hidden=(7,), seed=0):
    torch.manual_seed(seed)
    dec = MLPDecoder(d, D, hidden, act, out).double().eval()
    for p in dec.parameters():
        p.requires_grad_(False)
    return dec


def _xz(B=6, d=4, D=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, D, generator=g, dtype=F64), torch.randn(B, d, generator=g, dtype=F64)


def _rho(R, gn):
    return torch.linalg.matrix_norm(R) / torch.linalg.matrix_norm(gn)


def _brute_weighted(dec, lik, x, z):
    """Σ_k w_k ∇²g_k by an explicit loop over outputs k with torch.autograd.functional.hessian."""
    out = []
    for i in range(len(z)):
        g = dec(z[i : i + 1])[0]
        w = lik.grad(x[i], g)
        H = sum(w[k] * torch.autograd.functional.hessian(lambda zz, k=k: dec(zz[None])[0, k], z[i]) for k in range(len(w)))
        out.append(H)
    return torch.stack(out)


# ---------------------------------------------------------------- likelihoods of the two splits
def test_output_likelihood_matches_gaussianobs():
    x, _ = _xz()
    g = torch.rand_like(x)
    obs = GaussianObs(1.0)
    lik = e.GaussianOnOutput
    torch.testing.assert_close(lik.log_prob(x, g), obs.log_prob(x, g), atol=1e-12, rtol=0)
    torch.testing.assert_close(lik.grad(x, g), obs.grad(x, g), atol=1e-14, rtol=0)
    torch.testing.assert_close(lik.hess_diag(x, g), obs.hess_diag(x, g), atol=0, rtol=0)


def test_sigmoid_likelihood_derivatives_match_autograd():
    x, _ = _xz(B=3)
    u = torch.randn_like(x) * 2
    lik = e.GaussianOnSigmoid
    assert float(lik.log_prob(x, u)[0]) == pytest.approx(
        float(GaussianObs(1.0).log_prob(x[:1], torch.sigmoid(u[:1]))[0]), abs=1e-12)
    for i in range(3):
        gr = torch.func.grad(lambda uu: lik.log_prob(x[i], uu))(u[i])
        H = torch.func.hessian(lambda uu: lik.log_prob(x[i], uu))(u[i])
        torch.testing.assert_close(lik.grad(x[i], u[i]), gr, atol=1e-13, rtol=0)
        torch.testing.assert_close(torch.diag_embed(lik.hess_diag(x[i], u[i])), H, atol=1e-13, rtol=0)


def test_logits_decoder_strips_only_the_sigmoid_and_rejects_others():
    dec = _dec("elu", "sigmoid")
    _, z = _xz()
    u = e.logits_decoder(dec)
    torch.testing.assert_close(torch.sigmoid(u(z)), dec(z), atol=1e-15, rtol=0)
    assert isinstance(dec.body[-1], nn.Sigmoid)  # the original is untouched
    with pytest.raises(ValueError, match="decoder"):
        e.logits_decoder(_dec("elu", "none"))
    with pytest.raises(ValueError, match="name"):
        e.split(dec, "middle")


# ---------------------------------------------------------------- the two routes
@pytest.mark.parametrize("act, out, name", [("elu", "sigmoid", "output"), ("tanh", "none", "output"),
                                            ("softplus", "sigmoid", "logits")])
def test_routes_match_a_brute_force_sum_of_decoder_hessians(act, out, name):
    dec, lik = e.split(_dec(act, out), name)
    x, z = _xz(B=3)
    brute = _brute_weighted(dec, lik, x, z)
    RW = e.residual_weighted_route(dec, lik, x, z)
    RH, gn = e.residual_hessian_route(dec, lik, x, z)
    torch.testing.assert_close(RW, brute, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(RH, brute, atol=1e-12, rtol=1e-10)
    assert float(_rho(brute, gn).min()) > 1e-3  # smooth decoders: a real, non-zero residual


def test_full_hessian_matches_finite_differences():
    dec, lik = e.split(_dec("elu", "sigmoid"), "output")
    x, z = _xz(B=2)
    H = e.full_hessian(dec, lik, x, z)
    h = 1e-5
    f = lambda zz: lik.log_prob(x, dec(zz))  # noqa: E731
    d = z.shape[1]
    for i in range(d):
        for j in range(d):
            ei = torch.zeros_like(z)
            ej = torch.zeros_like(z)
            ei[:, i] = h
            ej[:, j] = h
            fd = (f(z + ei + ej) - f(z + ei - ej) - f(z - ei + ej) + f(z - ei - ej)) / (4 * h * h)
            torch.testing.assert_close(H[:, i, j], fd, atol=1e-5, rtol=1e-5)


def test_piecewise_linear_decoder_gives_zero_and_smooth_control_does_not():
    """Eq. 6: ReLU MLP without sigmoid under N(x; g, I) → R = 0 (route H to rounding, route W exactly).
    Negative controls, so the zero check can fail: the same ReLU net with its sigmoid, and an ELU net."""
    x, z = _xz(B=8, D=9)
    relu_lin = _dec("relu", "none", hidden=(16, 16))
    RH, gn = e.residual_hessian_route(relu_lin, e.GaussianOnOutput, x, z)
    RW = e.residual_weighted_route(relu_lin, e.GaussianOnOutput, x, z)
    assert float(_rho(RH, gn).max()) < 1e-12
    assert float(RW.abs().max()) == 0.0
    # the logits split of a ReLU + sigmoid net is the same piecewise-linear case
    relu_sig = _dec("relu", "sigmoid", hidden=(16, 16))
    dec, lik = e.split(relu_sig, "logits")
    RH, gn = e.residual_hessian_route(dec, lik, x, z)
    assert float(_rho(RH, gn).max()) < 1e-12
    # controls: the sigmoid output of the ReLU net, and ELU nets in either split
    RH, gn = e.residual_hessian_route(relu_sig, e.GaussianOnOutput, x, z)
    assert float(_rho(RH, gn).median()) > 1e-3
    for name in e.SPLITS:
        dec, lik = e.split(_dec("elu", "sigmoid", hidden=(16, 16)), name)
        RH, gn = e.residual_hessian_route(dec, lik, x, z)
        assert float(_rho(RH, gn).median()) > 1e-3


def test_wrong_curvature_would_be_caught():
    """If H_p were wrong (e.g. −I instead of the sigmoid-likelihood's ∂²/∂u²), route H would not be 0."""
    x, z = _xz(B=4)
    dec, lik = e.split(_dec("relu", "sigmoid", hidden=(16,)), "logits")

    class WrongHess(e.GaussianOnSigmoid):
        @staticmethod
        def hess_diag(x, u):
            return -torch.ones_like(u)

    RH, gn = e.residual_hessian_route(dec, WrongHess, x, z)
    assert float(_rho(RH, gn).min()) > 1e-3


class _ToyVAE(nn.Module):
    """Linear encoder mean with a fixed posterior Cholesky factor, and a given decoder."""

    def __init__(self, D, d, decoder):
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.W = nn.Parameter(torch.randn(d, D, generator=g, dtype=F64) / D**0.5)
        self.register_buffer("L", torch.linalg.cholesky(0.1 * torch.eye(d, dtype=F64) + 0.01))
        self.decoder = decoder

    def encoder(self, x):
        return x.reshape(len(x), -1) @ self.W.T, self.L.expand(len(x), -1, -1)


def test_evaluate_model_on_a_toy_vae():
    D, d = 9, 4
    model = _ToyVAE(D, d, _dec("elu", "sigmoid", d=d, D=D))
    x, _ = _xz(B=5, d=d, D=D)
    ev = e.evaluate_model(model, x, eval_batch=2)
    assert set(ev) == set(e.SPLITS)
    for name in e.SPLITS:
        o = ev[name]
        assert o["rho_w"].shape == (5,) and bool((o["rho_w"] > 0).all())
        assert float(o["route_err"].max()) < 1e-10
        torch.testing.assert_close(o["rho_w"], o["rho_h"], atol=1e-10, rtol=1e-8)
        assert o["tr_r"].shape == (5,) and bool(torch.isfinite(o["tr_gn"]).all())


# ---------------------------------------------------------------- statistics, check, configs
def test_bootstrap_quantile_ci():
    x = np.random.default_rng(0).exponential(1.0, 3000)
    m, lo, hi = e.bootstrap_quantile_ci(x, 0.5, B=400, level=0.95, rng=np.random.default_rng(1))
    assert lo < m < hi and lo < math.log(2) < hi
    with pytest.raises(ValueError, match="q"):
        e.bootstrap_quantile_ci(x, 1.5, B=10, level=0.95, rng=np.random.default_rng(1))


def _fake(rho_elu=0.05, zero=1e-16, route=1e-16, seed=0, fd_excess=1e-4, fd_inside=40, control_excess=5e4,
          control_rho=0.2, n=40, min_points=20):
    rng = np.random.default_rng(seed)
    cfg = e.Config(blocks=(1,), betas=(0.5,), steps=1, n_test=n, bootstrap=200, min_points=min_points)

    def split_data(level, fd=None):
        r = level * np.exp(rng.normal(0, 0.1, n))
        out = {"rho_w": list(r), "rho_h": list(r), "route_err": [route] * n, "tr_r": list(r), "tr_gn": [1.0] * n}
        if fd is not None:
            exc, rho = fd
            out.update({"fd_inside": [1.0] * fd_inside + [0.0] * (n - fd_inside), "fd_excess": [exc] * n,
                        "fd_rho": [rho] * n})
        return out

    models = [{"kind": "elu", "block": 1, "beta": 0.5, "output": split_data(rho_elu), "logits": split_data(0.2)},
              {"kind": "relu", "block": 1, "beta": 0.3, "output": split_data(0.1, (control_excess, control_rho)),
               "logits": split_data(zero, (fd_excess, 1e-11))}]
    return ExperimentResult(claim_id=e.CLAIM_ID, scale="custom", config=config_dict(cfg), seeds=[seed], device="cpu",
                            metrics={}, figures=[], seconds=0.0, data={"models": models})


def _by(out):
    """{what: outcome} of eq6's check results, keyed by a word of their reason."""
    keys = {"route FD can fail": "control", "linear region": "region", "enough test points": "points",
            "two routes": "routes", "ELU": "rule2", "piecewise-linear": "rule1"}
    got = {}
    for c in out:
        k = next(v for w, v in keys.items() if w in c.reason)
        got[k] = c.outcome
    return got


def test_check_decisions():
    ok = e.check(_fake())
    assert _by(ok) == dict.fromkeys(("rule1", "region", "control", "rule2", "points", "routes"), "verified")
    assert _by(e.check(_fake(rho_elu=0.2)))["rule2"] == "refuted"
    # rule 1 is decided by route FD: route H at 1e-6 (torch's relu'' = 0 convention) no longer decides it
    assert _by(e.check(_fake(zero=1e-6)))["rule1"] == "verified"
    assert _by(e.check(_fake(fd_excess=3.0)))["rule1"] == "refuted"  # a value without sampling error: never inconclusive
    assert _by(e.check(_fake(route=1e-6)))["routes"] == "inconclusive"


@pytest.mark.parametrize("change, key, needle", [
    (dict(fd_inside=5), "region", "5 of 40 test points"),
    (dict(control_excess=0.5), "control", "0.5× the tolerance"),
    (dict(control_rho=1e-6), "control", "median ρ 1e-06"),
    (dict(n=40, min_points=100), "points", "40 per model"),
])
def test_unmet_preconditions_are_inconclusive_and_say_why(change, key, needle):
    from gracheck.base.verdicts import combine

    out = e.check(_fake(**change))
    c = [c for c in out if key in _by([c])][0]
    assert c.outcome == "inconclusive" and needle in c.reason, c.reason
    assert combine(x.outcome for x in out) == "inconclusive"


# ---------------------------------------------------------------- route FD (rule 1)
def test_route_fd_sees_no_residual_inside_a_linear_region_and_the_sigmoid_residual_outside_it():
    """Central differences of the gradient (no second derivative of a ReLU taken): the logits split of a ReLU + sigmoid
    MLP gives JᵀH_pJ to the finite-difference tolerance; the sigmoid inside the decoder gives a residual ≥ 1e-2."""
    from gracheck.base.tolerances import ErrorBound, tol

    t = tol("finite-difference", ErrorBound)
    x, z = _xz(B=10, D=9)
    net = _dec("relu", "sigmoid", hidden=(16,))
    for name, small in (("logits", True), ("output", False)):
        dec, lik = e.split(net, name)
        H, inside = e.fd_hessian_in_region(dec, lik, x, z)
        gn, _ = e.gauss_newton(dec, lik, x, z)
        assert int(inside.sum()) >= 8
        err = (H - gn).abs()[inside]
        if small:
            assert bool((err <= t.atol + t.rtol * gn.abs()[inside]).all()), float(err.max())
        else:
            assert float((_rho(H - gn, gn))[inside].median()) > 1e-2
    # an ELU net has no linear regions
    with pytest.raises(ValueError, match="ReLU"):
        e.relu_inputs(_dec("elu", "sigmoid"), z)


def test_route_fd_flags_a_stencil_that_crosses_a_kink():
    """A point whose ReLU input sits within h of 0 along a coordinate is outside one linear region."""
    dec = _dec("relu", "none", d=2, D=3, hidden=(1,))
    with torch.no_grad():
        W, b = dec.body[0].weight, dec.body[0].bias
        W.copy_(torch.tensor([[1.0, 0.0]], dtype=F64))
        b.zero_()
    x = torch.rand(2, 3, dtype=F64)
    z = torch.tensor([[0.5, 0.0], [3e-6, 0.2]], dtype=F64)  # the second point's stencil crosses u = z₁ = 0
    _, inside = e.fd_hessian_in_region(dec, e.GaussianOnOutput, x, z, h=1e-5, margin=0.0)
    assert inside.tolist() == [True, False]
    _, inside = e.fd_hessian_in_region(dec, e.GaussianOnOutput, x[:1], z[:1], h=1e-5, margin=1.0)  # |u| = 0.5 < margin
    assert inside.tolist() == [False]


def test_smoke_reuses_fig3_models_and_configs_are_sane():
    s, p = e.CONFIGS["smoke"], e.CONFIGS["paper"]
    for scale, cfg in (("smoke", s), ("paper", p)):
        ours = [tc for kind, _, _, tc in e.model_configs(cfg, seed=3, device="cpu") if kind == "elu"]
        c3 = f3.CONFIGS[scale]
        theirs = [f3.model_config(c3, beta=beta, block=b, seed=3, device="cpu") for b in c3.blocks for beta in c3.betas]
        assert [t.to_dict() for t in ours] == [t.to_dict() for t in theirs]
    relu = [tc for kind, _, _, tc in e.model_configs(s, seed=0, device="cpu") if kind == "relu"]
    assert len(relu) == 1 and relu[0].activation == "relu" and relu[0].arch == "mlp"
    assert s.zero_threshold == 1e-10 and s.ratio_threshold == 0.1 and p.n_test == 5000 and p.arch == "conv"
    with pytest.raises(ValueError, match="ratio_threshold"):
        e._validate(e.Config(blocks=(1,), betas=(0.5,), steps=1, ratio_threshold=0.0))
