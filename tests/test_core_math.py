"""Pure-math objectives against independent computations (float64).

Each test names its two routes; tolerances: float64 routes of O(d³) work on
well-conditioned inputs agree to ~1e-13, so 1e-9 relative catches any formula
error (which shows at 1e-2 or more) without flaking.
"""

import math

import numpy as np
import pytest
import torch

import gracheck as gc

DT = torch.float64
RTOL = 1e-9  # two float64 routes; see module docstring


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DT)


@pytest.mark.parametrize("beta", [0.05, 0.7, 3.0])
@pytest.mark.parametrize("with_h", [False, True])
def test_grae_regularizer_vs_singular_values(beta, with_h):
    """Route 1: Cholesky log det of I + JᵀWJ/β. Route 2: Σ log1p(s²/β) over singular values of W^{1/2}J (numpy SVD)."""
    J = _rand(5, 20, 4, seed=1)
    h = -torch.rand(5, 20, generator=torch.Generator().manual_seed(2), dtype=DT) * 3 - 0.1 if with_h else None
    got = gc.grae_regularizer(J, beta, h)
    Jw = J.numpy() * (np.sqrt(-h.numpy())[..., None] if with_h else 1.0)
    s = np.linalg.svd(Jw, compute_uv=False)
    ref = beta / 2 * np.log1p(s**2 / beta).sum(-1)
    np.testing.assert_allclose(got.numpy(), ref, rtol=RTOL)


def test_hadamard_bound_vs_column_loop_and_inequality():
    """Route 1: the library's vectorised bound. Route 2: a Python loop over columns with vector_norm."""
    J = _rand(3, 15, 5, seed=3)
    beta = 0.4
    got = gc.hadamard_bound(J, beta)
    ref = torch.tensor([
        beta / 2 * sum(math.log(1 + float(torch.linalg.vector_norm(J[b, :, i])) ** 2 / beta) for i in range(5))
        for b in range(3)
    ], dtype=DT)
    torch.testing.assert_close(got, ref.to(DT), rtol=RTOL, atol=0.0)
    reg = gc.grae_regularizer(J, beta)
    assert bool((got > reg + 1e-6).all()), "Hadamard bound must be strict for non-orthogonal columns"


def test_hadamard_bound_equality_for_orthogonal_columns():
    """Equality case of Eq. 14: J = Q diag(s) with orthonormal Q gives JᵀJ diagonal."""
    Q, _ = torch.linalg.qr(_rand(30, 6, seed=4))
    J = Q * torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0, 7.0], dtype=DT)
    beta = 0.3
    torch.testing.assert_close(gc.hadamard_bound(J, beta), gc.grae_regularizer(J, beta), rtol=RTOL, atol=1e-12)


def test_optimal_covariance_vs_numpy_inverse_and_stationarity():
    """Route 1: Cholesky inverse. Route 2: numpy.linalg.inv; plus ∂(Eq. 8)/∂Σ = 0 at Σ* by autograd."""
    A = _rand(4, 4, seed=5)
    H = -(A @ A.T) - 0.5 * torch.eye(4, dtype=DT)
    beta = 0.8
    S = gc.optimal_covariance(H, beta)
    ref = np.linalg.inv(np.eye(4) - H.numpy() / beta)
    np.testing.assert_allclose(S.numpy(), ref, rtol=1e-9, atol=1e-12)

    Sig = S.clone().requires_grad_(True)
    eq8 = 0.5 * torch.trace(H @ Sig) - beta / 2 * (torch.trace(Sig) - torch.logdet(Sig))
    (grad,) = torch.autograd.grad(eq8, Sig)
    assert float(grad.abs().max()) < 1e-10


def test_optimal_covariance_batched_and_tensor_beta():
    H = -torch.stack([torch.eye(3, dtype=DT) * c for c in (0.5, 1.0, 2.0)])
    beta = torch.tensor([1.0, 2.0, 4.0], dtype=DT)
    S = gc.optimal_covariance(H, beta)
    expect = torch.stack([torch.eye(3, dtype=DT) / (1 + c / b) for c, b in zip((0.5, 1.0, 2.0), (1.0, 2.0, 4.0))])
    torch.testing.assert_close(S, expect, rtol=RTOL, atol=1e-14)


def test_taylor_gap_vs_direct_formula_and_zero_at_optimum():
    """Route 1: eigenvalues of L_AᵀΣL_A. Route 2: numpy tr(AΣ) − log det(AΣ) − d."""
    J = _rand(2, 12, 3, seed=6)
    M = _rand(2, 3, 3, seed=7)
    Sig = M @ M.mT + 0.2 * torch.eye(3, dtype=DT)
    beta = 0.6
    got = gc.taylor_gap(J, Sig, beta)
    A = np.eye(3) + np.swapaxes(J.numpy(), -1, -2) @ J.numpy() / beta
    AS = A @ Sig.numpy()
    ref = beta / 2 * (np.trace(AS, axis1=-2, axis2=-1) - np.linalg.slogdet(AS)[1] - 3)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-8)
    assert bool((got > 0).all())
    S_opt = gc.optimal_covariance(-(J.mT @ J), beta)
    assert float(gc.taylor_gap(J, S_opt, beta).abs().max()) < 1e-12


def test_gaussian_kl_vs_torch_distributions():
    mean = _rand(3, 4, seed=8)
    M = _rand(3, 4, 4, seed=9)
    cov = M @ M.mT + 0.1 * torch.eye(4, dtype=DT)
    q = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    p = torch.distributions.MultivariateNormal(torch.zeros(4, dtype=DT), torch.eye(4, dtype=DT))
    torch.testing.assert_close(gc.gaussian_kl(mean, cov), torch.distributions.kl_divergence(q, p), rtol=RTOL, atol=1e-12)


def test_float32_agrees_with_float64():
    J = _rand(4, 50, 6, seed=10)
    beta = 0.5
    for fn in (gc.grae_regularizer, gc.hadamard_bound):
        torch.testing.assert_close(fn(J.float(), beta).double(), fn(J, beta), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        gc.grae_regularizer(_rand(2, 3, 2), beta)


def test_bad_inputs_named():
    J = _rand(2, 3, 2)
    bad = J.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="J: contains"):
        gc.hadamard_bound(bad, 1.0)
    with pytest.raises(ValueError, match="hess_diag"):
        gc.grae_regularizer(J, 1.0, torch.ones(2, 4, dtype=DT))
    with pytest.raises(ValueError, match="not positive definite"):
        gc.optimal_covariance(torch.eye(2, dtype=DT) * 2.0, 1.0)  # I − H/β = −I
    with pytest.raises(ValueError, match="symmetric"):
        gc.optimal_covariance(torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=DT), 1.0)
    with pytest.raises(ValueError, match="H: expected shape"):
        gc.optimal_covariance(_rand(2, 3), 1.0)
    with pytest.raises(ValueError, match="Sigma"):
        gc.taylor_gap(J, -torch.eye(2, dtype=DT), 1.0)
    with pytest.raises(ValueError, match="Sigma: shape"):
        gc.taylor_gap(J, torch.eye(3, dtype=DT), 1.0)
    with pytest.raises(TypeError, match="beta"):
        gc.hadamard_bound(J, "1")
    with pytest.raises(ValueError, match="cov"):
        gc.gaussian_kl(torch.zeros(2, dtype=DT), -torch.eye(2, dtype=DT))


# ------------------------------------------------------------------ inputs that gave silent wrong results (issue 17, item 6)


def test_hadamard_bound_with_positive_hess_diag_raises_instead_of_nan():
    """A positive diag(H_p) large enough that 1 − (JᵀH_pJ)ᵢᵢ/β ≤ 0 made log1p return NaN, while
    grae_regularizer raised; both now raise, naming hess_diag. A positive diag(H_p) whose
    diagonal stays positive still gives the (finite) value of Eq. 14's left-hand side."""
    J = _rand(2, 5, 2, seed=11)
    h = torch.full((2, 5), 5.0, dtype=DT)
    with pytest.raises(ValueError, match="hess_diag: .*not positive definite"):
        gc.grae_regularizer(J, 0.1, h)
    with pytest.raises(ValueError, match="hess_diag: .*≤ 0"):
        gc.hadamard_bound(J, 0.1, h)
    small = torch.full((2, 5), 1e-3, dtype=DT)
    val = gc.hadamard_bound(J, 10.0, small)
    ref = 5.0 * torch.log1p(-(J.pow(2) * 1e-3).sum(-2) / 10.0).sum(-1)
    torch.testing.assert_close(val, ref, rtol=RTOL, atol=0.0)


@pytest.mark.parametrize("fn", ["grae_regularizer", "hadamard_bound", "taylor_gap", "optimal_covariance", "gaussian_kl"])
def test_complex_inputs_are_refused(fn):
    """Complex J (or H, Sigma, cov) was accepted and gave complex 'nats'; now a TypeError names the argument."""
    J = _rand(2, 5, 2, seed=12).to(torch.complex128)
    S = torch.eye(2, dtype=torch.complex128).expand(2, 2, 2)
    call = {
        "grae_regularizer": lambda: gc.grae_regularizer(J, 0.5),
        "hadamard_bound": lambda: gc.hadamard_bound(J, 0.5),
        "taylor_gap": lambda: gc.taylor_gap(J.real, S, 0.5),
        "optimal_covariance": lambda: gc.optimal_covariance(-S, 0.5),
        "gaussian_kl": lambda: gc.gaussian_kl(torch.zeros(2, 2, dtype=DT), S),
    }[fn]
    name = {"taylor_gap": "Sigma", "optimal_covariance": "H", "gaussian_kl": "cov"}.get(fn, "J")
    with pytest.raises(TypeError, match=f"{name}: expected a real floating-point tensor"):
        call()


def test_beta_must_broadcast_to_the_batch_shape():
    """β of shape [B, 1] used to broadcast against J [B, D, d] into a [B, B] result. β is a scalar
    or a tensor broadcasting to the batch dimensions without enlarging them; otherwise ValueError."""
    J = _rand(3, 5, 2, seed=13)
    H = -(J.mT @ J)
    for bad in (torch.tensor([[0.1], [0.2], [0.3]], dtype=DT), torch.tensor([0.1, 0.2], dtype=DT),
                torch.full((2, 3), 0.5, dtype=DT)):
        for call in (lambda b: gc.grae_regularizer(J, b), lambda b: gc.hadamard_bound(J, b),
                     lambda b: gc.optimal_covariance(H, b), lambda b: gc.taylor_gap(J, torch.eye(2, dtype=DT), b)):
            with pytest.raises(ValueError, match=r"beta: shape .* batch shape \(3,\)"):
                call(bad)
    beta = torch.tensor([0.1, 0.2, 0.3], dtype=DT)  # one β per example: the documented meaning
    got = gc.grae_regularizer(J, beta)
    assert got.shape == (3,)
    torch.testing.assert_close(got, torch.stack([gc.grae_regularizer(J[i], float(beta[i])) for i in range(3)]),
                               rtol=RTOL, atol=0.0)
    assert gc.grae_regularizer(J, torch.tensor(0.2, dtype=DT)).shape == (3,)


# ------------------------------------------------------------------ unclear tracebacks (issue 17, item 7)


def test_empty_batch_gives_empty_results():
    """Leading batch dimensions of size 0: the pure functions return an empty result of the batch shape
    (the documented meaning) instead of failing inside a reduction."""
    J = torch.zeros(0, 5, 2, dtype=DT)
    S = torch.eye(2, dtype=DT).expand(0, 2, 2)
    assert gc.grae_regularizer(J, 0.5).shape == (0,)
    assert gc.hadamard_bound(J, 0.5).shape == (0,)
    assert gc.taylor_gap(J, S, 0.5).shape == (0,)
    assert gc.optimal_covariance(-S, 0.5).shape == (0, 2, 2)
    assert gc.gaussian_kl(torch.zeros(0, 2, dtype=DT), S).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused_with_what_is_supported(dtype):
    """float16/bfloat16 failed deep inside Cholesky ("cholesky_cpu" not implemented) or silently summed
    D terms in 8–11 bits; every public function now says float32 and float64 are supported."""
    J = _rand(2, 5, 2, seed=14).to(dtype)
    S = torch.eye(2, dtype=dtype).expand(2, 2, 2)
    for call, name in ((lambda: gc.grae_regularizer(J, 0.5), "J"), (lambda: gc.hadamard_bound(J, 0.5), "J"),
                       (lambda: gc.taylor_gap(J, S, 0.5), "J"), (lambda: gc.optimal_covariance(-S, 0.5), "H"),
                       (lambda: gc.gaussian_kl(torch.zeros(2, 2, dtype=dtype), S), "mean")):
        with pytest.raises(TypeError, match=f"{name}: dtype torch.{str(dtype).split('.')[-1]} is not supported.*float32 or float64"):
            call()


def test_mixed_dtypes_are_named():
    J = _rand(2, 5, 2, seed=15)
    with pytest.raises(TypeError, match="Sigma: dtype torch.float32 differs from J's torch.float64"):
        gc.taylor_gap(J, torch.eye(2), 0.5)
    with pytest.raises(TypeError, match="hess_diag: dtype torch.float32 differs from J's torch.float64"):
        gc.grae_regularizer(J, 0.5, -torch.ones(2, 5))
    with pytest.raises(TypeError, match="cov: dtype torch.float32 differs from mean's torch.float64"):
        gc.gaussian_kl(torch.zeros(2, 2, dtype=DT), torch.eye(2).expand(2, 2, 2))


# ------------------------------------------------------------------ float32 log-determinants (issue 17, item 9)


def _jacobian_with_singular_values(s: torch.Tensor, D: int, seed: int, weights: torch.Tensor | None = None):
    """J [D, d] with W^{1/2}J = U diag(s) Vᵀ exactly known (U, V orthonormal, float64), and the closed forms
    of β/2 Σ log1p(s²/β) and of its gradient W J A⁻¹ = W^{1/2} U diag(s/(1 + s²/β)) Vᵀ."""
    g = torch.Generator().manual_seed(seed)
    d = s.shape[0]
    U, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=DT))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))
    root = torch.ones(D, dtype=DT) if weights is None else weights.sqrt()
    J = (U * s) @ V.T / root[:, None]

    def value(beta):
        return beta / 2 * torch.log1p(s**2 / beta).sum()

    def grad(beta):
        return root[:, None] * (U * (s / (1 + s**2 / beta))) @ V.T

    return J, value, grad


@pytest.mark.parametrize("beta", [0.02, 0.05, 0.1, 0.3, 1.0])
@pytest.mark.parametrize("weighted", [False, True], ids=["gaussian", "bernoulli-like"])
def test_grae_regularizer_float32_matches_float64_closed_form(beta, weighted):
    """I + JᵀWJ/β is positive definite for every J, W ≥ 0 and β > 0, but forming the Gram matrix in
    float32 squares J's condition number: with singular values 1e-3..1e3 and β = 0.02 (the paper's
    smallest CelebA β) Cholesky failed ("not positive definite") or the gradient was off by up to 180%.
    Route 1: grae_regularizer on float32 J (value, and its gradient by autograd). Route 2: the closed
    forms from the singular values we built J from, in float64. Tolerances: ``float32-logdet-value``
    and ``float32-logdet-grad`` (tolerance table, with the perturbation bounds behind them)."""
    from gracheck.base.tolerances import tol

    tv, tg = tol("float32-logdet-value"), tol("float32-logdet-grad")
    s = torch.logspace(-3, 3, 7, dtype=DT)
    D = 40
    for seed in range(4):
        W = torch.rand(D, generator=torch.Generator().manual_seed(100 + seed), dtype=DT) * 0.25 + 1e-3 if weighted else None
        J, value, grad = _jacobian_with_singular_values(s, D, seed, W)
        J32 = J.float().requires_grad_(True)
        h32 = None if W is None else (-W).float()
        got = gc.grae_regularizer(J32, beta, h32)
        (g32,) = torch.autograd.grad(got, J32)
        got = got.detach()
        ref, gref = float(value(beta)), grad(beta)
        assert abs(float(got) - ref) <= tv.atol + tv.rtol * abs(ref), (seed, float(got), ref)
        rel = float(torch.linalg.norm(g32.double() - gref) / torch.linalg.norm(gref))
        assert rel <= tg.rtol, (seed, rel)
        # float64 through the same code: the closed form to float64 rounding
        got64 = gc.grae_regularizer(J, beta, None if W is None else -W)
        assert abs(float(got64) - ref) <= 1e-12 * abs(ref)


@pytest.mark.parametrize("beta", [0.02, 0.3])
def test_taylor_gap_float32_matches_float64_closed_form(beta):
    """The same squaring sat in taylor_gap's A = I + JᵀJ/β (at β = 0.02 float32 Cholesky failed for
    about half of these J). Route 1: float32 taylor_gap. Route 2: the closed form
    β/2 [tr(AΣ) − log det(AΣ) − d] with A = V diag(1 + s²/β) Vᵀ from the singular values, float64."""
    from gracheck.base.tolerances import tol

    t = tol("float32-logdet-value")
    s = torch.logspace(-3, 3, 5, dtype=DT)
    for seed in range(8):
        J, _, _ = _jacobian_with_singular_values(s, 40, seed)
        _, sv, Vh = torch.linalg.svd(J, full_matrices=False)  # s again (sorted) and the V that goes with it
        M = torch.randn(5, 5, generator=torch.Generator().manual_seed(50 + seed), dtype=DT)
        Sig = M @ M.T / 5 + 0.5 * torch.eye(5, dtype=DT)
        a = 1 + sv**2 / beta
        ref = beta / 2 * (float((a * torch.diagonal(Vh @ Sig @ Vh.T)).sum()) - float(torch.log(a).sum())
                          - float(torch.logdet(Sig)) - 5)
        got = float(gc.taylor_gap(J.float(), Sig.float(), beta))
        assert abs(got - ref) <= t.atol + t.rtol * abs(ref), (seed, got, ref)


def test_indefinite_matrices_still_raise():
    """Only the W ≥ 0 case is factored without the Gram matrix; with positive diag(H_p) the matrix can be
    truly indefinite, and grae_regularizer and taylor_gap still say so (float32 and float64)."""
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=DT)
    h = torch.tensor([3.0, -1.0, -1.0], dtype=DT)  # I − JᵀH_pJ/β at β = 1 has eigenvalue −1
    for dt in (torch.float32, DT):
        with pytest.raises(ValueError, match="hess_diag: I − JᵀH_pJ/β is not positive definite"):
            gc.grae_regularizer(J.to(dt), 1.0, h.to(dt))
        with pytest.raises(ValueError, match="not positive definite"):
            gc.taylor_gap(J.to(dt), torch.eye(2, dtype=dt), 1.0, h.to(dt))
    # a positive diag(H_p) that leaves the matrix positive definite: value by the Cholesky route
    hs = torch.tensor([0.1, -1.0, -1.0], dtype=DT)
    A = torch.eye(2, dtype=DT) - J.T @ (J * hs[:, None])
    torch.testing.assert_close(gc.grae_regularizer(J, 1.0, hs), 0.5 * torch.logdet(A), rtol=RTOL, atol=0.0)


def test_grae_regularizer_gradients_vs_gram_cholesky_route_float64():
    """float64, well conditioned: the QR route's value and gradients (J and hess_diag) against the
    Gram-matrix + Cholesky route written out here. At an entry where hess_diag is exactly 0 the
    derivative with respect to that entry is 0 by definition (documented in objectives._root); the
    J gradient there is exact."""
    J = _rand(3, 9, 4, seed=21)
    h = -torch.rand(3, 9, generator=torch.Generator().manual_seed(22), dtype=DT) - 0.05
    h[1, 4] = 0.0
    beta = 0.4
    Jq, hq = J.clone().requires_grad_(True), h.clone().requires_grad_(True)
    Jc, hc = J.clone().requires_grad_(True), h.clone().requires_grad_(True)
    got = gc.grae_regularizer(Jq, beta, hq)
    A = torch.eye(4, dtype=DT) - Jc.mT @ (Jc * hc.unsqueeze(-1)) / beta
    ref = beta / 2 * torch.logdet(A)
    torch.testing.assert_close(got, ref, rtol=RTOL, atol=0.0)
    gJ, gh = torch.autograd.grad(got.sum(), (Jq, hq))
    rJ, rh = torch.autograd.grad(ref.sum(), (Jc, hc))
    torch.testing.assert_close(gJ, rJ, rtol=1e-9, atol=1e-12)
    mask = torch.ones_like(h, dtype=torch.bool)
    mask[1, 4] = False
    torch.testing.assert_close(gh[mask], rh[mask], rtol=1e-9, atol=1e-12)
    assert float(gh[1, 4]) == 0.0 and float(rh[1, 4]) != 0.0


@pytest.mark.parametrize("beta", [0.02, 1.0])
def test_hadamard_bound_float32_matches_float64_closed_form(beta):
    """hadamard_bound never forms JᵀJ (each term is a column's sum of squares), so float32 keeps its
    accuracy over the same range as above. Route 1: float32 hadamard_bound and its autograd gradient.
    Route 2: β/2 Σᵢ log1p(‖Jᵢ‖²/β) and ∂/∂Jᵢ = Jᵢ/(1 + ‖Jᵢ‖²/β) in float64."""
    from gracheck.base.tolerances import tol

    tv, tg = tol("float32-logdet-value"), tol("float32-logdet-grad")
    s = torch.logspace(-3, 3, 7, dtype=DT)
    for seed in range(4):
        J, _, _ = _jacobian_with_singular_values(s, 40, seed)
        n2 = J.pow(2).sum(0)
        ref = float(beta / 2 * torch.log1p(n2 / beta).sum())
        gref = J / (1 + n2 / beta)
        J32 = J.float().requires_grad_(True)
        got = gc.hadamard_bound(J32, beta)
        (g32,) = torch.autograd.grad(got, J32)
        assert abs(float(got.detach()) - ref) <= tv.atol + tv.rtol * abs(ref), (seed, float(got), ref)
        assert float(torch.linalg.norm(g32.double() - gref) / torch.linalg.norm(gref)) <= tg.rtol
