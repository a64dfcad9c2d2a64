"""Unit tests of the App. C synthetic data and the Fig. 1 experiment machinery (fast, < 40 s)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from gracheck.data.synthetic import make_synthetic
from gracheck.experiments import fig1_rotation as f

F64 = torch.float64


# ---------------------------------------------------------------- synthetic data
@pytest.mark.parametrize("w_columns", ["orthogonal", "gaussian"])
@pytest.mark.parametrize("nl", ["identity", "tanh", "sigmoid", "elu"])
def test_w_column_norms(nl, w_columns):
    d = make_synthetic(nl, 50, seed=3, w_columns=w_columns)
    norms = torch.linalg.vector_norm(d.W, dim=0)
    torch.testing.assert_close(norms, torch.tensor([2.0, 1.0], dtype=F64), atol=1e-14, rtol=0)
    assert d.x.shape == d.z.shape == (50, 2) and d.W.shape == (2, 2)
    if w_columns == "orthogonal":
        assert abs(float(d.W[:, 0] @ d.W[:, 1])) < 1e-14


def test_noise_std_within_sampling_ci():
    n, s = 20000, 0.05
    d = make_synthetic("identity", n, noise_std=s, seed=1)
    eps = d.x - d.z @ d.W.T
    m = eps.numel()
    est = float(eps.pow(2).mean().sqrt())  # mean known (0): se of the std estimate ≈ s/√(2m)
    assert abs(est - s) < 4 * s / math.sqrt(2 * m), est
    # and ν is applied before the noise: tanh data stay within (−1 − 6s, 1 + 6s)
    t = make_synthetic("tanh", 2000, seed=2)
    assert float(t.x.abs().max()) < 1 + 6 * s


def test_reproducible_by_seed():
    a, b, c = (make_synthetic("elu", 100, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.x, b.x) and torch.equal(a.z, b.z) and torch.equal(a.W, b.W)
    assert not torch.equal(a.x, c.x)
    assert make_synthetic("identity", 10, dtype=torch.float32).x.dtype == torch.float32


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(nonlinearity="relu"), "nonlinearity"),
        (dict(nonlinearity="tanh", n=0), "n"),
        (dict(nonlinearity="tanh", noise_std=-0.1), "noise_std"),
        (dict(nonlinearity="tanh", noise_std=float("nan")), "noise_std"),
        (dict(nonlinearity="tanh", w_columns="qr"), "w_columns"),
    ],
)
def test_bad_inputs(kw, name):
    with pytest.raises(ValueError, match=name):
        make_synthetic(**kw)


# ---------------------------------------------------------------- Procrustes angle
def _signed_perms():
    out = []
    for perm in ([[1, 0], [0, 1]], [[0, 1], [1, 0]]):
        for s1 in (1, -1):
            for s2 in (1, -1):
                out.append(torch.tensor(perm, dtype=F64) * torch.tensor([s1, s2], dtype=F64))
    return out


def _circ(d):
    """|d| modulo 90° (−45° and 45° are the same rotation up to a signed permutation)."""
    return abs((d + 45.0) % 90.0 - 45.0)


def _brute_force_angle(z, m, step=0.05):
    """Independent route: grid over θ ∈ (−45°, 45°] and all 8 signed permutations P of min ‖Z − R(θ)PM‖."""
    thetas = torch.arange(-45 + step, 45 + step / 2, step, dtype=F64)
    R = f.rotation(torch.deg2rad(thetas))  # [G,2,2]
    best, arg = float("inf"), None
    for P in _signed_perms():
        pm = m @ P.T  # rows P m_i
        res = ((z.unsqueeze(0) - pm.unsqueeze(0) @ R.transpose(-1, -2)) ** 2).sum((-1, -2))
        i = int(torch.argmin(res))
        if float(res[i]) < best:
            best, arg = float(res[i]), float(thetas[i])
    return arg


@pytest.mark.parametrize("theta", [-44.0, -30.0, -7.5, 0.0, 3.0, 22.5, 40.0, 45.0])
def test_procrustes_recovers_known_angle(theta):
    g = torch.Generator().manual_seed(int(theta * 10) + 1000)
    z = torch.randn(100, 2, generator=g, dtype=F64)
    R = f.rotation(torch.deg2rad(torch.tensor(theta, dtype=F64)))
    for k, P in enumerate(_signed_perms()):
        O = R @ P  # Z = O M  →  m_i = Oᵀ z_i; decoder scale 0.7 and a little noise on top
        m = 0.7 * z @ O + 0.01 * torch.randn(100, 2, generator=g, dtype=F64)
        got = float(f.procrustes_angle_deg(z, m))
        assert -45 < got <= 45
        assert _circ(got - theta) < 0.3, (k, got, theta)
        if k in (0, 3, 6):
            assert _circ(got - _brute_force_angle(z, m)) < 0.06
    # exact copies: exact angle; −45° and 45° are the same rotation and read as 45°
    m = z @ (R @ _signed_perms()[5])
    expect = 45.0 if theta in (-45.0, 45.0) else theta
    assert abs(float(f.procrustes_angle_deg(z, m)) - expect) < 1e-9


def test_angle_batched_and_reflection_checked():
    o = torch.stack([f.rotation(torch.tensor(0.3, dtype=F64)), f.rotation(torch.tensor(0.3, dtype=F64)) @ torch.diag(torch.tensor([1.0, -1.0], dtype=F64))])
    a = f.rotation_angle_deg(o)
    assert abs(float(a[0]) - math.degrees(0.3)) < 1e-12 and abs(float(a[1]) - math.degrees(0.3)) < 1e-12


# ---------------------------------------------------------------- ELBO: closed form / quadrature vs Monte Carlo
def _random_setup(T=2, N=64, amortised=True, seed=0, nl="identity"):
    seeds = [seed * 10 + t for t in range(T)]
    p = f.init_params(seeds, amortised=amortised, n_points=N, init_std=0.7, mu_init_std=0.5)
    g = torch.Generator().manual_seed(seed + 99)
    p["Dp"] = p["Dp"] * 0.3 + 0.1 * torch.randn(p["Dp"].shape, generator=g, dtype=F64)
    p["b"] = 0.2 * torch.randn(p["b"].shape, generator=g, dtype=F64)
    if amortised:
        p["d"] = 0.2 * torch.randn(p["d"].shape, generator=g, dtype=F64)
    o1, o2 = f.random_rotations(seeds)
    x = torch.stack([make_synthetic(nl, N, seed=s).x for s in seeds])
    fixed = {"x": x, "O1": o1, "O2": o2, "diagonal": torch.tensor([True, False][:T]),
             "xm": x.mean(1), "xx": torch.einsum("tni,tnj->tij", x, x) / N}
    return p, fixed


@pytest.mark.parametrize("nl", ["identity", "tanh", "elu"])
@pytest.mark.parametrize("amortised", [True, False])
def test_expected_recon_against_monte_carlo(nl, amortised):
    p, fx = _random_setup(N=24, amortised=amortised, nl=nl)
    gh = None if nl == "identity" else f.gauss_hermite(32, F64, "cpu")
    recon, kl = f.recon_and_kl(p, fx, nonlinearity=nl, amortised=amortised, gh=gh, moments=False)
    sigma, _ = f.sigma_from_params(p["Dp"], fx["O2"], fx["diagonal"])
    mu = (torch.einsum("tjk,tnk->tnj", fx["O1"] @ p["Cp"], fx["x"]) + p["d"].unsqueeze(1)) if amortised else p["mu"]
    L = torch.linalg.cholesky(sigma)
    if amortised:
        L = L.unsqueeze(1).expand(-1, mu.shape[1], -1, -1)
    g = torch.Generator().manual_seed(7)
    S = 3000
    eps = torch.randn(S, *mu.shape, generator=g, dtype=F64)
    zs = mu + torch.einsum("tnij,stnj->stni", L, eps)
    nu = {"identity": lambda u: u, "tanh": torch.tanh, "elu": torch.nn.functional.elu}[nl]
    sq = ((fx["x"] - nu(torch.einsum("tjk,stnk->stnj", p["A"], zs)) - p["b"].unsqueeze(1)) ** 2).sum(-1).mean(-1)  # [S,T]
    mc, se = sq.mean(0), sq.std(0) / math.sqrt(S)
    assert torch.all((recon - mc).abs() < 4 * se), (recon, mc, se)
    # KL against torch.distributions (an independent formula)
    q = torch.distributions.MultivariateNormal(mu, scale_tril=L)
    pz = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(q, pz).mean(-1), atol=1e-10, rtol=1e-10)


def test_moment_route_equals_per_point_route():
    p, fx = _random_setup(N=200)
    a = f.recon_and_kl(p, fx, nonlinearity="identity", amortised=True, gh=None, moments=True)
    b = f.recon_and_kl(p, fx, nonlinearity="identity", amortised=True, gh=None, moments=False)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=1e-11, rtol=1e-11)


def test_ppca_max_elbo_is_attained_and_not_exceeded():
    x = make_synthetic("identity", 500, seed=4).x.unsqueeze(0)
    ref = float(f.ppca_max_elbo(x, 0.05))
    # the PPCA ML decoder and the exact posterior, written out: ELBO = log-likelihood
    xc = x[0] - x[0].mean(0)
    lam, U = torch.linalg.eigh(xc.T @ xc / 500)
    A = U * torch.sqrt(lam - 0.0025)
    M = torch.linalg.inv(A.T @ A + 0.0025 * torch.eye(2, dtype=F64))
    C, cov = M @ A.T, 0.0025 * M
    like = torch.distributions.MultivariateNormal(x[0].mean(0), A @ A.T + 0.0025 * torch.eye(2, dtype=F64))
    assert abs(float(like.log_prob(x[0]).mean()) - ref) < 1e-10
    L = torch.linalg.cholesky(cov)
    p = {"A": A[None], "b": x[0].mean(0)[None], "Cp": C[None], "d": (-C @ x[0].mean(0))[None],
         "Dp": torch.stack([L[0, 0], L[1, 0], L[1, 1]])[None]}
    fx = {"x": x, "O1": torch.eye(2, dtype=F64)[None], "O2": torch.eye(2, dtype=F64)[None], "diagonal": torch.tensor([False])}
    e = float(f.elbo_per_point(*f.recon_and_kl(p, fx, nonlinearity="identity", amortised=True, gh=None, moments=False), 0.05))
    assert abs(e - ref) < 1e-9


# ---------------------------------------------------------------- batched GD == per-trial GD
def _reference_one_trial(p, fx, n, steps, nl, amortised, cfg, gh_k):
    """An independent plain loop for one trial (no trial dimension, its own loss, torch.optim.SGD)."""
    s2 = cfg.obs_std**2
    x, O1, O2, diag = fx["x"], fx["O1"], fx["O2"], bool(fx["diagonal"])
    params = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    t_gh, w_gh = np.polynomial.hermite.hermgauss(gh_k)
    t_gh, w_gh = torch.tensor(t_gh), torch.tensor(w_gh / math.sqrt(math.pi))
    nu = {"identity": lambda u: u, "tanh": torch.tanh}[nl]
    N = x.shape[0]
    groups = [{"params": [params[k]], "lr": 0.0, "k": k} for k in params]
    opt = torch.optim.SGD(groups, lr=0.0)

    def cov(dp):
        Lp = torch.zeros(*dp.shape[:-1], 2, 2, dtype=F64)
        Lp[..., 0, 0], Lp[..., 1, 0], Lp[..., 1, 1] = dp[..., 0], dp[..., 1], dp[..., 2]
        S = O2 @ Lp @ Lp.transpose(-1, -2) @ O2.T
        if diag:
            S = torch.diag_embed(torch.diagonal(S, dim1=-2, dim2=-1))
        return S

    for k in range(min(steps, cfg.lr_stages * n)):
        A, b = params["A"], params["b"]
        if amortised:
            mu = x @ (O1 @ params["Cp"]).T + params["d"]
            S = cov(params["Dp"]).expand(N, 2, 2)
        else:
            mu, S = params["mu"], cov(params["Dp"])
        m = mu @ A.T
        v = torch.stack([A[j] @ S @ A[j] for j in range(2)], -1)  # [N,2]
        if nl == "identity":
            rec = ((x - b - m) ** 2 + v).sum(-1)
        else:
            u = m[..., None] + torch.sqrt(2 * v)[..., None] * t_gh
            rec = (((x - b)[..., None] - nu(u)) ** 2 * w_gh).sum((-1, -2))
        kl = 0.5 * ((mu**2).sum(-1) + S.diagonal(dim1=-2, dim2=-1).sum(-1) - torch.logdet(S) - 2)
        loss = (0.5 * rec + s2 * kl).mean()
        lr = cfg.lr0 * cfg.lr_decay ** (k // n)
        for grp in groups:
            grp["lr"] = lr * (N if (not amortised and grp["k"] in ("mu", "Dp")) else 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in params.items()}


@pytest.mark.parametrize("nl, amortised", [("identity", True), ("tanh", True), ("tanh", False)])
def test_batched_equals_per_trial(nl, amortised):
    cfg = dataclasses.replace(f.CONFIGS["smoke"], lr_stages=3)
    p, fx = _random_setup(T=2, N=40, amortised=amortised, nl=nl, seed=3)
    p["Dp"] = p["Dp"].abs() + 0.2  # keep the triangular factor well away from singular
    n_sched = torch.tensor([4.0, 7.0])  # trial 0 stops after 12 steps, trial 1 after 21 (lr drops inside)
    gh = None if nl == "identity" else f.gauss_hermite(cfg.gh_train, F64, "cpu")
    out, steps = f.train_batched(p, fx, n_sched, nonlinearity=nl, amortised=amortised, cfg=cfg, gh=gh)
    assert steps == 21
    for t in range(2):
        ref = _reference_one_trial({k: v[t] for k, v in p.items()}, {k: v[t] for k, v in fx.items()},
                                   int(n_sched[t]), 10**9, nl, amortised, cfg, cfg.gh_train)
        for k in ref:
            torch.testing.assert_close(out[k][t], ref[k], atol=1e-10, rtol=0, msg=f"trial {t}, {k}")
            assert not torch.equal(out[k][t], p[k][t]) or k in ("b", "d")


def test_train_batched_rejects_unsorted_schedule():
    p, fx = _random_setup()
    with pytest.raises(ValueError, match="n_sched"):
        f.train_batched(p, fx, torch.tensor([7.0, 4.0]), nonlinearity="identity", amortised=True,
                        cfg=f.CONFIGS["smoke"], gh=None)


# ---------------------------------------------------------------- statistics and the decision rule
def test_decision_rule_on_synthetic_runs():
    rng = np.random.default_rng(0)
    R = 80
    elbo = rng.uniform(-1, 0, R)
    diag_ang = np.clip(-elbo * 12 + rng.normal(0, 0.5, R), -45, 45)  # angle → 0 as ELBO → best
    full_ang = rng.uniform(-45, 45, R)
    data = {"settings": [{"nonlinearity": "identity", "amortised": True, "reference_elbo": None,
                          "covariance": ["diagonal"] * R + ["full"] * R,
                          "elbo": list(elbo) * 2, "angle_deg": list(diag_ang) + list(full_ang),
                          "n": [1] * 2 * R, "trial": list(range(R)) * 2}]}
    cfg = dataclasses.replace(f.CONFIGS["smoke"], bootstrap=200)
    res = f.ExperimentResult(claim_id=f.CLAIM_ID, scale="custom", config=f.config_dict(cfg), seeds=[0],
                             device="cpu", metrics={}, figures=[], seconds=1.0, data=data)
    out = f.check(res)
    assert len(out) == 3 and all(r.passed for r in out), [r.detail for r in out]
    # swap the roles: diagonal behaves like full → refuted, with the numbers in the message
    data["settings"][0]["angle_deg"] = list(full_ang) + list(diag_ang)
    out = f.check(res)
    bad = [r for r in out if not r.passed]
    assert len(bad) == 3 and "median |angle|" in bad[0].failure_message()


def test_config_validation():
    with pytest.raises(ValueError, match="nonlinearities"):
        f.run(dataclasses.replace(f.CONFIGS["smoke"], nonlinearities=("relu",)), seed=0, device="cpu", out_dir="/tmp/_x")
    with pytest.raises(ValueError, match="trials_per_n"):
        f.trial_plan(dataclasses.replace(f.CONFIGS["smoke"], trials_per_n=(1,)))
