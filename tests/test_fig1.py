"""Unit tests of the App. C synthetic data and the Fig. 1 experiment machinery (about 1 min of CPU)."""

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
    nu = {"identity": lambda u: u, "tanh": torch.tanh, "elu": torch.nn.functional.elu}[nl]
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

    later = max(1, round(cfg.later_stages * n))
    total = n + (cfg.lr_stages - 1) * later
    for k in range(min(steps, total)):
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
        lr = cfg.lr0 * cfg.lr_decay ** (0 if k < n else 1 + (k - n) // later)
        for grp in groups:
            grp["lr"] = lr * (N if (not amortised and grp["k"] in ("mu", "Dp")) else 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in params.items()}


@pytest.mark.parametrize("later_stages", [1.0, 0.5])
@pytest.mark.parametrize("nl, amortised", [("identity", True), ("tanh", True), ("tanh", False), ("elu", False)])
def test_batched_equals_per_trial(nl, amortised, later_stages):
    """Hand-written gradients, batching and the schedule vs a plain per-trial autograd + SGD loop."""
    cfg = dataclasses.replace(f.CONFIGS["smoke"], lr_stages=3, later_stages=later_stages)
    p, fx = _random_setup(T=2, N=40, amortised=amortised, nl=nl, seed=3)
    p["Dp"] = p["Dp"].abs() + 0.2  # keep the triangular factor well away from singular
    n_sched = torch.tensor([4.0, 7.0])  # App. C: trial 0 stops after 12 steps, trial 1 after 21 (lr drops inside)
    gh = None if nl == "identity" else f.gauss_hermite(cfg.gh_train, F64, "cpu")
    out, steps = f.train_batched(p, fx, n_sched, nonlinearity=nl, amortised=amortised, cfg=cfg, gh=gh)
    assert steps == (21 if later_stages == 1.0 else 7 + 2 * 4)
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


# ---------------------------------------------------------------- decision rule v2: see test_fig1_rules below
def test_config_validation():
    with pytest.raises(ValueError, match="nonlinearities"):
        f.run(dataclasses.replace(f.CONFIGS["smoke"], nonlinearities=("relu",)), seed=0, device="cpu", out_dir="/tmp/_x")
    with pytest.raises(ValueError, match="trials_per_n"):
        f.trial_plan(dataclasses.replace(f.CONFIGS["smoke"], trials_per_n=(1,)))


# ---------------------------------------------------------------- hand-written gradients vs autograd
@pytest.mark.parametrize("nl", ["identity", "tanh", "sigmoid", "elu"])
@pytest.mark.parametrize("amortised", [True, False])
def test_pointwise_gradient_matches_autograd(nl, amortised):
    p, fx = _random_setup(T=2, N=30, amortised=amortised, nl=nl, seed=5)
    gh = None if nl == "identity" else f.gauss_hermite(7, F64, "cpu")
    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    r, kl = f.recon_and_kl(leaves, fx, nonlinearity=nl, amortised=amortised, gh=gh, moments=False)
    ga = dict(zip(leaves, torch.autograd.grad((0.5 * r + 0.05**2 * kl).sum(), list(leaves.values()))))
    gm = f.pointwise_gradient(p, fx, nonlinearity=nl, amortised=amortised, gh=gh, obs_std=0.05)
    assert set(gm) == set(ga)
    for k in ga:
        torch.testing.assert_close(gm[k], ga[k], atol=1e-13, rtol=1e-12, msg=k)


@pytest.mark.parametrize("xp", ["numpy", "torch"])
def test_moment_gradient_matches_autograd(xp):
    p, fx = _random_setup(T=2, N=200, seed=6)
    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    r, kl = f.recon_and_kl(leaves, fx, nonlinearity="identity", amortised=True, gh=None, moments=True)
    ga = dict(zip(leaves, torch.autograd.grad((0.5 * r + 0.05**2 * kl).sum(), list(leaves.values()))))
    conv = (lambda t: t.numpy().copy()) if xp == "numpy" else (lambda t: t.clone())
    fxm = {"O1": conv(fx["O1"]), "c2": conv(fx["O2"][:, 0, 0]), "s2": conv(fx["O2"][:, 1, 0]), "xm": conv(fx["xm"]),
           "xx": conv(fx["xx"]), "diagonal": conv(fx["diagonal"])}
    g = f.moment_gradient({k: conv(v) for k, v in p.items()}, fxm, 0.05, xp=np if xp == "numpy" else torch)
    for k in ga:
        torch.testing.assert_close(torch.as_tensor(g[k]), ga[k], atol=1e-13, rtol=1e-12, msg=k)


# ---------------------------------------------------------------- counted FLOPs
@pytest.mark.parametrize("nl, amortised", [("identity", True), ("identity", False), ("tanh", True), ("tanh", False),
                                           ("sigmoid", True), ("elu", True), ("elu", False)])
def test_flop_table_matches_a_fresh_count(nl, amortised):
    """The table was read off count_flops at N ∈ {10, 20}, K ∈ {3, 5}; recount at other sizes."""
    assert f.flops_per_trial_step(nl, amortised, 37, 7) == f.counted_flops_per_trial_step(nl, amortised, 37, 7)


def test_count_flops_convention():
    a, b = torch.randn(3, 4, 5, dtype=F64), torch.randn(3, 5, 2, dtype=F64)
    assert f.count_flops(lambda: a @ b) == 2 * 3 * 4 * 5 * 2
    assert f.count_flops(lambda: torch.tanh(a) * a + 1.0) == 3 * a.numel()
    assert f.count_flops(lambda: a.sum(-1)) == a.numel()
    assert f.count_flops(lambda: a.transpose(-1, -2).reshape(-1)) == 0


# ---------------------------------------------------------------- the optimum each run is measured against
def test_ppca_optimum_attains_the_closed_form_maximum():
    x = torch.stack([make_synthetic("identity", 700, seed=s).x for s in (1, 2)])
    opt = f.ppca_optimum(x, 0.05)
    L = torch.sqrt(opt["var"])
    p = {"A": opt["A"], "b": opt["b"], "Cp": opt["C"], "d": opt["d"],
         "Dp": torch.stack([L[:, 0], torch.zeros(2, dtype=F64), L[:, 1]], -1)}
    eye = torch.eye(2, dtype=F64).expand(2, 2, 2)
    fx = {"x": x, "O1": eye, "O2": eye, "diagonal": torch.tensor([True, True])}
    e = f.elbo_per_point(*f.recon_and_kl(p, fx, nonlinearity="identity", amortised=True, gh=None, moments=False), 0.05)
    torch.testing.assert_close(e, f.ppca_max_elbo(x, 0.05), atol=1e-10, rtol=0)


def test_newton_reaches_the_ppca_optimum_from_random_starts():
    """Second route for the optimum: the nonlinear-ν optimiser run on identity data, diagonal and full
    family, three random rotations of the start each: value = PPCA maximum, diagonal angle = θ*."""
    x = torch.stack([make_synthetic("identity", 400, seed=s).x for s in (3, 4)])
    z = torch.stack([make_synthetic("identity", 400, seed=s).z for s in (3, 4)])
    closed = f.reference_optimum(x, z, nonlinearity="identity", amortised=True, cfg=f.CONFIGS["smoke"],
                                 start_seeds=[[0], [1]])
    rows = [(i, fam, j) for fam in (True, False) for i in range(2) for j in range(3)]
    idx = torch.tensor([i for i, _, _ in rows])
    p0 = f.init_params([100 + k for k in range(len(rows))], amortised=True, n_points=400, init_std=0.5,
                       mu_init_std=0.1, dp_init=0.1)
    eye = torch.eye(2, dtype=F64).expand(len(rows), 2, 2)
    fx = {"x": x[idx], "O1": eye, "O2": eye, "diagonal": torch.tensor([fam for _, fam, _ in rows])}
    v, _, gmax = f.newton_maximise(f._pack(p0), fx, nonlinearity="identity", gh=None, obs_std=0.05, iters=200)
    assert float(gmax.max()) < 1e-9
    e = f.elbo_per_point(*f.recon_and_kl(f._unpack(v), fx, nonlinearity="identity", amortised=True, gh=None,
                                         moments=False), 0.05)
    torch.testing.assert_close(e, torch.tensor(closed["diagonal"], dtype=F64)[idx], atol=1e-9, rtol=0)
    ang = f.procrustes_angle_deg(z[idx], f._means(f._unpack(v), fx["x"], True))
    diag = torch.tensor([fam for _, fam, _ in rows])
    dev = f.angle_difference_deg(ang[diag].numpy(), np.array(closed["theta_star"])[idx[diag].numpy()])
    assert dev.max() < 1e-4, dev


def _latent_rotation_direction(v, full):
    """Unit tangent at packed amortised parameters ``v`` [15] of the latent rotation z → Rz
    (A → AR, C → RᵀC, d → Rᵀd; full Σ: Σ → RᵀΣR, D′ its Cholesky factor; diagonal: D′ kept)."""
    def at(phi):
        q = {k: t[0] for k, t in f._unpack(v[None]).items()}
        R = f.rotation(torch.tensor(phi, dtype=F64))
        dp = q["Dp"]
        if full:
            L = torch.stack([torch.stack([dp[0], torch.zeros((), dtype=F64)]), dp[1:]])
            L = torch.linalg.cholesky(R.T @ L @ L.T @ R)
            dp = torch.stack([L[0, 0], L[1, 0], L[1, 1]])
        return f._pack({"A": (q["A"] @ R)[None], "b": q["b"][None], "Cp": (R.T @ q["Cp"])[None],
                        "d": (R.T @ q["d"])[None], "Dp": dp[None]})[0]
    t = (at(1e-6) - at(-1e-6)) / 2e-6
    return t / torch.linalg.vector_norm(t)


def test_tanh_optimum_two_routes_and_second_order_conditions():
    """ν = tanh, amortised. The reference (Newton in the full family, rotated into Σ's eigenbasis, polished in
    the diagonal family) vs Newton in each family from random starts of its own: one maximum, one diagonal
    angle (unique up to signed permutations), not 0 (theory claim appC-shared-covariance-rotation). Then, by
    autograd of recon_and_kl (not the hand-written gradients Newton uses): the gradient vanishes and the Hessian
    of s²·(−ELBO) has exactly one zero eigenvalue, all others positive; its null direction is the latent rotation
    for full Σ (the ELBO is invariant under it) and the free off-diagonal of D′D′ᵀ for diagonal Σ, where the
    rotation itself has positive curvature (the mean-field optimum pins the axes)."""
    cfg = dataclasses.replace(f.CONFIGS["smoke"], ref_starts=2)
    ds = [make_synthetic("tanh", 150, seed=s) for s in (7, 8)]
    x, z = torch.stack([d.x for d in ds]), torch.stack([d.z for d in ds])
    ref = f.reference_optimum(x, z, nonlinearity="tanh", amortised=True, cfg=cfg, start_seeds=[[1, 2], [3, 4]])
    np.testing.assert_allclose(ref["diagonal"], ref["full"], atol=1e-9, rtol=0)
    assert max(ref["spread_full"]) < 1e-9 and max(ref["max_grad"]) < 1e-9
    assert f.angle_difference_deg(ref["theta_star"], ref["theta_full_rotated"]).max() < 1e-4
    rows = [(i, fam) for fam in (True, False) for i in range(2) for _ in range(2)]
    idx = torch.tensor([i for i, _ in rows])
    diag = torch.tensor([fam for _, fam in rows])
    eye = torch.eye(2, dtype=F64).expand(len(rows), 2, 2)
    fx = {"x": x[idx], "O1": eye, "O2": eye, "diagonal": diag}
    gh_e, gh_r = f.gauss_hermite(cfg.gh_eval, F64, "cpu"), f.gauss_hermite(cfg.gh_ref, F64, "cpu")
    p0 = f.ppca_starts(x[idx], list(range(31, 31 + len(rows))), amortised=True, obs_std=0.05)
    v, _, gmax = f.newton_maximise(f._pack(p0), fx, nonlinearity="tanh", gh=gh_r, obs_std=0.05, iters=200)
    p = f._unpack(v)
    e = f.elbo_per_point(*f.recon_and_kl(p, fx, nonlinearity="tanh", amortised=True, gh=gh_e, moments=False), 0.05)
    np.testing.assert_allclose(e.numpy(), np.array(ref["diagonal"])[idx.numpy()], atol=1e-10, rtol=0)
    ang = f.procrustes_angle_deg(z[idx], f._means(p, fx["x"], True))
    dev = f.angle_difference_deg(ang[diag].numpy(), np.array(ref["theta_star"])[idx[diag].numpy()])
    assert dev.max() < 1e-3, dev
    assert min(abs(t) for t in ref["theta_star"]) > 1.0
    for r in range(len(rows)):
        fr = {k: t[r:r + 1] for k, t in fx.items()}

        def obj(u):
            return f._objective(f._unpack(u[None]), fr, "tanh", True, gh_r, 0.05)[0]

        u = v[r].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(obj(u), u)
        assert float(g.abs().max()) < 1e-9, (r, g)
        ev, V = torch.linalg.eigh(torch.autograd.functional.hessian(obj, v[r]))
        assert abs(float(ev[0])) < 1e-9 and float(ev[1]) > 1e-6, (r, ev[:3])
        null = V[:, 0]
        rot = _latent_rotation_direction(v[r], full=not bool(diag[r]))
        if diag[r]:
            l21, l22 = v[r][13], v[r][14]  # Dp = (l11, l21, l22): Σ₂₂ = l21² + l22² is flat along (−l22, l21)
            off = torch.zeros(15, dtype=F64)
            off[13], off[14] = -l22, l21
            assert abs(float(null @ off)) / float(torch.linalg.vector_norm(off)) > 1 - 1e-6
            assert float(rot @ torch.autograd.functional.hessian(obj, v[r]) @ rot) > 1e-6
        else:
            assert abs(float(null @ rot)) > 1 - 1e-6


def test_unamortised_lbfgs_reaches_the_ppca_optimum():
    """The unamortised reference route (L-BFGS, autograd of recon_and_kl) vs the closed-form PPCA maximum, both
    families, from a rotated PPCA start with perturbed means; to a tenth of the rule's ref_tol (the precision
    precondition R needs from a reference). 20 points keep the per-point parameters few enough to converge
    in 300 iterations."""
    x = torch.stack([make_synthetic("identity", 20, seed=9).x])
    best = float(f.ppca_max_elbo(x, 0.05)[0])
    tol = f.CONFIGS["smoke"].ref_tol / 10
    for diag in (True, False):
        p0 = f.ppca_starts(x, [5], amortised=False, obs_std=0.05)
        p0["mu"] = p0["mu"] + 0.05 * torch.randn(p0["mu"].shape, generator=torch.Generator().manual_seed(1), dtype=F64)
        fx = {"x": x, "O1": torch.eye(2, dtype=F64)[None], "O2": torch.eye(2, dtype=F64)[None], "diagonal": torch.tensor([diag])}
        e0 = float(f.elbo_per_point(*f.recon_and_kl(p0, fx, nonlinearity="identity", amortised=False, gh=None), 0.05)[0])
        assert best - e0 > 100 * tol  # the start is far from the optimum
        p = f.lbfgs_maximise(p0, fx, nonlinearity="identity", amortised=False, gh=None, obs_std=0.05, iters=300)
        e = float(f.elbo_per_point(*f.recon_and_kl(p, fx, nonlinearity="identity", amortised=False, gh=None), 0.05)[0])
        assert -1e-12 < best - e < tol, (diag, e, best)


def test_rotation_cost_matches_the_rotated_optimum():
    """The closed-form price of a latent rotation (the reason for gap_near) vs the ELBO of the PPCA optimum,
    rotated, with its best diagonal Σ found numerically, on data whitened to covariance WWᵀ + s²I exactly."""
    g = torch.Generator().manual_seed(2)
    e = torch.randn(4000, 2, generator=g, dtype=F64)
    e = e - e.mean(0)
    e = e @ torch.linalg.inv(torch.linalg.cholesky(e.T @ e / 4000)).T  # sample covariance exactly I
    W = torch.diag(torch.tensor([2.0, 1.0], dtype=F64))
    cov = W @ W.T + 0.0025 * torch.eye(2, dtype=F64)
    x = (e @ torch.linalg.cholesky(cov).T)[None]
    opt = f.ppca_optimum(x, 0.05)
    best = float(f.ppca_max_elbo(x, 0.05)[0])
    for th in (2.5, 5.0, 20.0):
        R = f.rotation(torch.tensor(math.radians(th), dtype=F64))
        A, C, d = opt["A"][0] @ R, R.T @ opt["C"][0], R.T @ opt["d"][0]
        logs = torch.log(opt["var"][0]).clone().requires_grad_(True)
        eye = torch.eye(2, dtype=F64)[None]
        fx = {"x": x, "O1": eye, "O2": eye, "diagonal": torch.tensor([True])}

        def neg():
            sd = torch.exp(0.5 * logs)
            p = {"A": A[None], "b": opt["b"], "Cp": C[None], "d": d[None],
                 "Dp": torch.stack([sd[0], torch.zeros((), dtype=F64), sd[1]])[None]}
            return -f.elbo_per_point(*f.recon_and_kl(p, fx, nonlinearity="identity", amortised=True, gh=None,
                                                     moments=False), 0.05)[0]

        opt_s = torch.optim.LBFGS([logs], lr=1.0, max_iter=200, tolerance_grad=1e-13, line_search_fn="strong_wolfe")

        def closure():
            opt_s.zero_grad()
            loss = neg()
            loss.backward()
            return loss

        opt_s.step(closure)
        assert abs((best + float(neg().detach())) - f.rotation_cost(th)) < 1e-9, th
    assert abs(f.rotation_cost(5.0) - 0.00838) < 1e-5 and f.rotation_cost(2.5) > CFG_GAP


CFG_GAP = f.CONFIGS["smoke"].gap_near


# ---------------------------------------------------------------- decision rule v2 on synthetic runs
def _setting(diag_gap, diag_ang, full_gap, full_ang, theta_star=None, *, nl="identity", excess=0.0):
    """A fake setting: optimum 0 on every draw (so ELBO = −gap); trial j's diagonal and full runs share draw j."""
    R = len(diag_gap)
    th = list(theta_star) if theta_star is not None else [0.0] * R
    elbo = [-g for g in diag_gap] + [-g for g in full_gap]
    if excess:
        elbo[0] = excess
    opt = {"diagonal": [0.0] * R, "full": [0.0] * R, "theta_star": th}
    return {"nonlinearity": nl, "amortised": True, "n_points": 100, "trial": list(range(R)) * 2, "n": [1] * 2 * R,
            "steps_run": [10] * 2 * R, "covariance": ["diagonal"] * R + ["full"] * R, "elbo": elbo,
            "angle_deg": list(diag_ang) + list(full_ang), "optimum": opt, "limit": opt}


def _check(setting):
    cfg = dataclasses.replace(f.CONFIGS["smoke"], bootstrap=300)
    res = f.ExperimentResult(claim_id=f.CLAIM_ID, scale="custom", config=f.config_dict(cfg), seeds=[0],
                             device="cpu", metrics={}, figures=[], seconds=1.0, data={"settings": [setting]})
    out = {}
    for r in f.check(res):
        name = "R" if "precondition R" in r.detail else ("N-" + r.detail.split("Σ")[0].split(", ")[-1].strip()
                                                          if "precondition N" in r.detail else r.detail.split("rule ")[1][0])
        out[name] = r
        assert r.passed == (r.outcome == "verified") and r.reason
    return out


_RNG = np.random.default_rng(0)
_R = 60
_GAP = np.concatenate([_RNG.uniform(0, 0.002, 30), _RNG.uniform(0.003, 0.3, 30)])  # half near-optimal
_SMALL = _RNG.normal(0, 1.0, _R) * (1 + 60 * _GAP)  # |angle| grows with the gap
_UNIF = _RNG.uniform(-45, 45, _R)


def test_rule_v2_verified():
    out = _check(_setting(_GAP, _SMALL, _GAP, _UNIF))
    assert {k: r.outcome for k, r in out.items()} == {k: "verified" for k in out}, [r.reason for r in out.values()]
    assert set(out) == {"R", "N-diagonal", "N-full", "1", "2", "3", "4", "5"}


def test_rule_v2_refuted():
    """Diagonal behaves like full (uniform angles near the optimum, no trend), full picks axes, θ* far from 0."""
    out = _check(_setting(_GAP, _UNIF, _GAP, _SMALL, theta_star=_RNG.uniform(20, 40, _R)))
    got = {k: r.outcome for k, r in out.items()}
    assert got["1"] == got["3"] == got["4"] == "refuted", [r.reason for r in out.values()]
    assert got["2"] == "refuted"  # |angle − θ*| of uniform angles: median ≈ 22.5°
    assert "entirely on the other side" in out["1"].reason and "median |angle|" in out["1"].failure_message()


def test_rule_v2_tanh_reading():
    """The reading the docstring fixes for ν = tanh: runs converge to θ* ≠ 0 → rule 2 verified, rules 1 and 3 refuted."""
    th = _RNG.choice([-1, 1], _R) * _RNG.uniform(10, 30, _R)
    out = _check(_setting(_GAP, th + _SMALL * 0.2, _GAP, _UNIF, theta_star=th, nl="tanh"))
    got = {k: r.outcome for k, r in out.items()}
    assert got["2"] == "verified" and got["1"] == "refuted" and got["3"] == "refuted", [r.reason for r in out.values()]


def test_rule_v2_inconclusive_straddle():
    """Near-optimal diagonal angles spread around 5°: the CI straddles; the reason says what would decide it."""
    gap = np.concatenate([_RNG.uniform(0, 0.002, 12), _RNG.uniform(0.01, 0.3, 8)])
    ang = np.concatenate([_RNG.uniform(0, 10, 12), _RNG.uniform(0, 45, 8)])
    out = _check(_setting(gap, ang, gap, _RNG.uniform(-45, 45, 20), theta_star=_RNG.uniform(0, 10, 20)))
    assert out["1"].outcome == "inconclusive" and "straddles" in out["1"].reason
    assert "would put the CI on one side" in out["1"].reason and "--scale paper" in out["1"].reason


def test_rule_v2_precondition_n_unmet():
    """No run within gap_near: rules 1, 2, 4 inconclusive naming N and the gaps; rules 3 and 5 still decide."""
    gap = _GAP + 0.01
    out = _check(_setting(gap, _SMALL, gap, _UNIF))
    assert out["N-diagonal"].outcome == out["N-full"].outcome == "inconclusive"
    for k in ("1", "2", "4"):
        assert out[k].outcome == "inconclusive" and "precondition N" in out[k].reason, out[k].reason
        assert "0 of 60 runs within 0.002" in out[k].reason and "What would decide it" in out[k].reason
    assert out["3"].outcome == "verified" and out["5"].outcome == "verified"


def test_rule_v2_precondition_r_unmet():
    """A run above its 'optimum' means the optimum was not found: every rule inconclusive."""
    out = _check(_setting(_GAP, _SMALL, _GAP, _UNIF, excess=1e-3))
    assert out["R"].outcome == "inconclusive" and "1.00e-03" in out["R"].reason
    assert all(out[k].outcome == "inconclusive" and "precondition R" in out[k].reason for k in "12345")


# ---------------------------------------------------------------- the paper configuration, tiny, on CPU
def test_paper_config_tiny_on_cpu(tmp_path):
    """App. C's structure (all four ν, amortised and unamortised, App. C's 5n schedule) at a tiny size."""
    cfg = dataclasses.replace(f.CONFIGS["paper"], n_points=24, schedule_n=(3, 6), trials_per_n=(1, 2), dtype="float64",
                              ref_newton_iters=10, ref_lbfgs_iters=20, bootstrap=50)
    assert cfg.later_stages == 1.0 and f.schedule_steps(20000, f.CONFIGS["paper"]) == 100000
    res = f.run(cfg, seed=1, device="cpu", out_dir=tmp_path)
    assert len(res.data["settings"]) == 8
    assert all(s["steps"] == 30 and s["runs"] == 6 for s in res.data["settings"])
    out = f.check(res)
    assert len(out) == 8 * 8 and all(r.outcome in ("verified", "refuted", "inconclusive") for r in out)
    assert (tmp_path / "fig1_rotation_angle_vs_elbo.png").is_file()
    # the plan's view of the same config: models, steps, counted FLOPs, seconds from a warm-up
    est = f.estimate_cost(cfg, device="cpu", warmup_steps=3, settings=[("tanh", True), ("identity", False)])
    r0 = est["settings"][0]
    assert r0["models"] == 6 and r0["steps"] == 30 and r0["trial_steps"] == 2 * (15 + 30 + 30)
    assert r0["flops"] == f.flops_per_trial_step("tanh", True, 24, cfg.gh_train) * r0["trial_steps"]
    assert est["total_seconds"] > 0 and all(math.isfinite(r["seconds"]) for r in est["settings"])


def test_estimate_cost_rejects_bad_warmup():
    with pytest.raises(ValueError, match="warmup_steps"):
        f.estimate_cost(f.CONFIGS["smoke"], warmup_steps=1)
