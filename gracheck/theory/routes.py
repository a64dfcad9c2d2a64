"""The independent routes and evidence builders shared by the theory families (sec3 … sec7).

Nothing here states a claim. It holds what the checks compute *with*: small real networks with
explicit seeded weights, an LBFGS maximiser over covariances, Gauss–Hermite expectations, exact
rationals, sympy → torch conversion; and the evidence builders for the check types that recur
(an inequality up to rounding, a strict inequality, a fitted slope, a Monte Carlo mean against an
exact value, a refutation of a printed statement), plus the plumbing that calls a candidate
implementation and turns its failures into evidence. Plain comparisons are
:func:`gracheck.base.evidence.compare` / :func:`~gracheck.base.evidence.tcompare`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gracheck.base.evidence import CheckResult, result
from gracheck.base.stats import gauss_hermite_grid
from gracheck.base.tolerances import ErrorBound, StandardErrors, tol
from gracheck.theory.strategies import DTYPE, normal

# ---------------------------------------------------------------- candidates


class CandidateError(Exception):
    """The candidate raised or returned something that is not a tensor of the expected shape."""


def call_candidate(candidate: Callable, *args: Any, shape: tuple[int, ...] | None = None) -> Tensor:
    """Call ``candidate(*args)``; return its output as a float64 tensor (numpy/float outputs accepted).

    Raises :class:`CandidateError` (with the original error) if it raises, returns a
    non-numeric value, or a shape other than ``shape``.
    """
    args = tuple(a.clone() if isinstance(a, Tensor) else a for a in args)  # a candidate must not see/alter our inputs
    try:
        out = candidate(*args)
    except Exception as e:  # a wrong candidate may fail in any way; that is evidence, not a crash
        raise CandidateError(f"candidate raised {type(e).__name__}: {e}") from e
    try:
        if isinstance(out, Tensor):
            t = out.detach().to(DTYPE)
        else:
            t = torch.as_tensor(np.asarray(out, dtype=np.float64))
    except Exception as e:
        raise CandidateError(f"candidate returned {type(out).__name__}, not a tensor: {e}") from e
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise CandidateError(f"candidate returned shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t


def candidate_failed(claim_id: str, method: str, seed: int, err: Exception, what: str) -> CheckResult:
    """Evidence that the candidate could not even be evaluated on the check's inputs."""
    return result(
        claim_id,
        method,
        passed=False,
        measured=str(err),
        expected=what,
        abs_err=float("inf"),
        rel_err=float("inf"),
        atol=0.0,
        rtol=0.0,
        detail=f"the candidate failed on valid inputs ({what}): {err}",
        seed=seed,
    )


def at_least(
    claim_id: str, method: str, lhs: Tensor, rhs: Tensor, detail: str, seed: int, tol_name: str = "inequality-rounding"
) -> CheckResult:
    """Evidence for lhs ≥ rhs elementwise (up to rounding): measured = min(lhs − rhs), expected = 0."""
    t = tol(tol_name, ErrorBound)
    lhs, rhs = torch.as_tensor(lhs, dtype=DTYPE), torch.as_tensor(rhs, dtype=DTYPE)
    slack = t.atol + t.rtol * rhs.abs()
    margin = lhs - rhs
    finite = bool(torch.isfinite(margin).all())
    ok = finite and bool((margin >= -slack).all())
    worst = float(margin.min()) if finite else float("-inf")
    return result(
        claim_id,
        method,
        passed=ok,
        measured=worst,
        expected=0.0,
        abs_err=max(0.0, -worst) if finite else float("inf"),
        rel_err=None,
        atol=t.atol,
        rtol=t.rtol,
        detail=f"{detail}: min(lhs − rhs) over {margin.numel()} cases must be ≥ −(atol + rtol·|rhs|) "
        f"[tolerance {tol_name!r}]",
        seed=seed,
    )


def negative_definite(claim_id: str, method: str, max_eigs: Sequence[float], detail: str, seed: int) -> CheckResult:
    """Evidence that Hessians are negative definite: the largest eigenvalue must be below −atol (strictly
    negative beyond rounding)."""
    t = tol("inequality-rounding", ErrorBound)
    worst = float(max(max_eigs))
    ok = math.isfinite(worst) and worst < -t.atol
    return result(claim_id, method, passed=ok, measured=worst, expected=0.0, abs_err=max(0.0, worst + t.atol) if math.isfinite(worst) else float("inf"),
                  atol=t.atol, rtol=None, detail=f"{detail}: largest eigenvalue over {len(max_eigs)} Hessians must be < −atol "
                  "[tolerance 'inequality-rounding']", seed=seed)


def strictly_above(
    claim_id: str, method: str, margin: Tensor, predicted: Tensor, detail: str, seed: int
) -> CheckResult:
    """Evidence for a strict inequality: margin ≥ (1 − rtol)·predicted where ``predicted`` > 0 is the
    margin an independent route gives (so a bound that is too tight fails)."""
    t = tol("strict-margin-fraction", ErrorBound)
    margin, predicted = torch.as_tensor(margin, dtype=DTYPE), torch.as_tensor(predicted, dtype=DTYPE)
    if not bool((predicted > 0).all()):
        raise ValueError("predicted: strictness needs a positive predicted margin in every case")
    ratio = margin / predicted
    finite = bool(torch.isfinite(ratio).all())
    ok = finite and bool((ratio >= 1 - t.rtol).all())
    worst = float(ratio.min()) if finite else float("nan")
    return result(
        claim_id,
        method,
        passed=ok,
        measured=worst,
        expected=1.0,
        abs_err=abs(1 - worst) if finite else float("inf"),
        rel_err=abs(1 - worst) if finite else float("inf"),
        atol=t.atol,
        rtol=t.rtol,
        detail=f"{detail}: min(measured margin / independent margin) over {ratio.numel()} cases must be "
        f"≥ {1 - t.rtol:g} (smallest independent margin {float(predicted.min()):.3g}) [tolerance 'strict-margin-fraction']",
        seed=seed,
    )


def slope_result(
    claim_id: str, method: str, x: Sequence[float], y: Sequence[float], expected: float, detail: str, seed: int,
    tol_name: str = "rate-slope",
) -> CheckResult:
    """Least-squares slope of y on x compared with ``expected`` within the named slack."""
    t = tol(tol_name, ErrorBound)
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    finite = bool(np.all(np.isfinite(xs)) and np.all(np.isfinite(ys)))
    slope = float(np.polyfit(xs, ys, 1)[0]) if finite else float("nan")
    err = abs(slope - expected) if finite else float("inf")
    return result(
        claim_id,
        method,
        passed=finite and err <= t.atol,
        measured=slope,
        expected=expected,
        abs_err=err,
        rel_err=err / abs(expected) if expected else None,
        atol=t.atol,
        rtol=t.rtol,
        detail=f"{detail}: fitted slope over {len(xs)} points, slack ±{t.atol:g} [tolerance {tol_name!r}]",
        seed=seed,
    )


def rationals(gen: torch.Generator, n: int, lo: int = -9, hi: int = 9, den: int = 7) -> list:
    """n exact rationals p/q (p ∈ [lo, hi], q ∈ [1, den]) drawn from ``gen``."""
    import sympy as sp

    p = torch.randint(lo, hi + 1, (n,), generator=gen).tolist()
    q = torch.randint(1, den + 1, (n,), generator=gen).tolist()
    return [sp.Rational(a, b) for a, b in zip(p, q)]


# ---------------------------------------------------------------- small real networks


ACTS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "softplus": torch.nn.functional.softplus,
    "elu": torch.nn.functional.elu,
    "relu": torch.relu,
    "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, 0.1),
}


def as_batch(t: Tensor) -> Tensor:
    """One example as a batch of one, ``[...] -> [1, ...]`` (the library's objectives take ``[B, ...]``)."""
    return t.unsqueeze(0)


class MLP:
    """g(z) = W₂ act(W₁ z + b₁) + b₂ (optionally followed by a sigmoid), float64, explicit seeded weights.

    Works on ``[d]`` → ``[D]`` and ``[B, d]`` → ``[B, D]`` and inside torch.func transforms.
    Piecewise-linear for act ∈ {relu, leaky_relu} without the sigmoid.
    """

    def __init__(self, gen: torch.Generator, d: int, D: int, hidden: int = 16, act: str = "tanh", sigmoid: bool = False,
                 scale: float = 1.0) -> None:
        self.act_name, self.act, self.sigmoid = act, ACTS[act], sigmoid
        self.W1 = normal(gen, hidden, d) * (scale / math.sqrt(d))
        self.b1 = normal(gen, hidden) * 0.3
        self.W2 = normal(gen, D, hidden) * (scale / math.sqrt(hidden))
        self.b2 = normal(gen, D) * 0.3
        self.d, self.D = d, D

    def pre(self, z: Tensor) -> Tensor:
        return z @ self.W1.T + self.b1

    def __call__(self, z: Tensor) -> Tensor:
        out = self.act(self.pre(z)) @ self.W2.T + self.b2
        return torch.sigmoid(out) if self.sigmoid else out

    def __repr__(self) -> str:
        return f"MLP(d={self.d}, D={self.D}, hidden={self.W1.shape[0]}, act={self.act_name}, sigmoid={self.sigmoid})"


# ---------------------------------------------------------------- objectives of Sec. 5, written out


def eq8_cov_terms(H: Tensor, Sigma: Tensor, beta: float) -> Tensor:
    """The Σ-dependent part of Eq. 8 plus its constant: ½ tr(HΣ) − β/2 (tr Σ − log|Σ| − d)."""
    d = Sigma.shape[-1]
    tr_hs = (H * Sigma.transpose(-1, -2)).sum((-2, -1))
    tr_s = torch.diagonal(Sigma, dim1=-2, dim2=-1).sum(-1)
    logdet = torch.linalg.slogdet(Sigma)[1]
    return 0.5 * tr_hs - 0.5 * beta * (tr_s - logdet - d)


def tril_to_cov(theta: Tensor, d: int) -> Tensor:
    """Σ = LLᵀ from unconstrained parameters ``[d(d+1)/2]`` (lower triangle, log of the diagonal)."""
    idx = torch.tril_indices(d, d)
    L = torch.zeros(d, d, dtype=theta.dtype).index_put((idx[0], idx[1]), theta)
    L = torch.tril(L, -1) + torch.diag(torch.exp(torch.diagonal(L)))
    return L @ L.T


def lbfgs_maximise(
    f: Callable[[Tensor], Tensor],
    theta0: Tensor,
    *,
    max_iter: int,
    tolerance_grad: float,
    tolerance_change: float,
    history_size: int = 100,
    rounds: int = 1,
    newton: int = 0,
) -> tuple[Tensor, float]:
    """argmax θ and max of a scalar ``f(θ)`` from ``theta0`` [n]: the checks' one numerical maximiser.

    ``rounds`` calls of LBFGS (strong Wolfe line search; ``max_iter``, ``tolerance_grad``,
    ``tolerance_change``, ``history_size`` as in ``torch.optim.LBFGS``), in ``theta0``'s dtype; then up
    to ``newton`` Newton steps with the autograd Hessian of ``f`` (least-squares solve; a step is kept only
    if it does not lower ``f``; stops when max |∇f| < 1e-12), which takes the gradient to rounding. Only
    evaluates ``f``: independent of any closed form. Returns the detached θ and ``float(f(θ))``.
    """
    theta = theta0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance_grad,
                            tolerance_change=tolerance_change, history_size=history_size, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -f(theta)
        loss.backward()
        return loss

    for _ in range(rounds):
        opt.step(closure)
    v = theta.detach()
    val = float(f(v))
    for _ in range(newton):
        g = torch.func.grad(f)(v)
        if float(g.abs().max()) < 1e-12:
            break
        step = torch.linalg.lstsq(torch.func.hessian(f)(v), -g.unsqueeze(-1)).solution.squeeze(-1)
        v_new = v + step
        val_new = float(f(v_new))
        if not val_new >= val:
            break
        v, val = v_new, val_new
    return v, val


def maximise_over_cov(fn: Callable[[Tensor], Tensor], d: int, *, iters: int = 200) -> tuple[Tensor, float]:
    """argmax and max over SPD Σ of a scalar ``fn(Σ)``, by LBFGS (strong Wolfe) over Σ = LLᵀ, float64.

    Independent of any closed form: starts at Σ = I and only evaluates ``fn``.
    """
    n = d * (d + 1) // 2
    theta, _ = lbfgs_maximise(lambda t: fn(tril_to_cov(t, d)), torch.zeros(n, dtype=DTYPE), max_iter=iters,
                              tolerance_grad=1e-13, tolerance_change=1e-16, history_size=50, rounds=5)
    with torch.no_grad():
        S = tril_to_cov(theta, d)
        return S, float(fn(S))


# ---------------------------------------------------------------- quadrature and fits


def gauss_hermite_expectation(f: Callable[[Tensor], Tensor], mean: Tensor, cov: Tensor, n: int) -> Tensor:
    """E_{z~N(mean, cov)} f(z) by the tensor-product Gauss–Hermite rule with ``n`` nodes per dimension.

    Exact for polynomials of degree ≤ 2n − 1 in each coordinate. ``f`` maps ``[N, d]`` → ``[N]``.
    """
    nodes, wts = (torch.as_tensor(a, dtype=DTYPE) for a in gauss_hermite_grid(n, mean.shape[-1]))  # [n^d, d], [n^d]
    L = torch.linalg.cholesky(cov)
    z = mean + nodes @ L.T
    return (wts * f(z)).sum()


def gauss_hermite_2d(m: Tensor, s: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Tensor-product Gauss–Hermite nodes ``[n², 2]`` and weights ``[n²]`` for N(m, diag(s²)) in 2-D."""
    nodes, w = (torch.as_tensor(a, dtype=DTYPE) for a in gauss_hermite_grid(n, 2))
    return m + s * nodes, w


def mean_se(v: Tensor) -> tuple[float, float]:
    """Sample mean and its standard error."""
    v = v.reshape(-1)
    return float(v.mean()), float(v.std(unbiased=True) / math.sqrt(v.numel()))


def sym_matrix_to_torch(M) -> Tensor:
    """A sympy Matrix of numbers → float64 tensor (evaluated with 30 digits, then rounded once)."""
    return torch.tensor([[float(M[i, j].evalf(30)) for j in range(M.shape[1])] for i in range(M.shape[0])], dtype=DTYPE)


# ---------------------------------------------------------------- Monte Carlo and refutation evidence


def mc_agrees(cid: str, method: str, samples: Tensor, exact: float, detail: str, seed: int) -> CheckResult:
    """Monte Carlo mean of ``samples`` against an exact expectation: pass iff |mean − exact| ≤ k·s.e.

    k from tolerance ``montecarlo-5se``; the stored atol is k·s.e. (in the units of the mean).
    """
    k = tol("montecarlo-5se", StandardErrors).k
    mean, se = mean_se(samples)
    err = abs(mean - exact)
    return result(
        cid, method, passed=bool(math.isfinite(mean) and err <= k * se), measured=mean, expected=exact,
        abs_err=err, rel_err=err / abs(exact) if exact else None, atol=k * se, rtol=0.0,
        detail=f"{detail}; Monte Carlo mean {mean:.6g} ± {se:.3g} (s.e., N={samples.numel()}), z = {err / se:.2f} "
        f"[tolerance 'montecarlo-5se': pass iff |z| ≤ {k:g}]",
        seed=seed,
    )


def mc_refutes(cid: str, method: str, samples: Tensor, printed: float, detail: str, seed: int) -> CheckResult:
    """Evidence that a printed value is false: pass iff the MC mean differs from it by > k·s.e.

    k from tolerance ``sec3-refute-se``; ``atol`` stores k·s.e., the discrepancy must exceed it.
    """
    k = tol("sec3-refute-se", StandardErrors).k
    mean, se = mean_se(samples)
    err = abs(mean - printed)
    return result(
        cid, method, passed=bool(math.isfinite(mean) and err > k * se), measured=mean, expected=printed,
        abs_err=err, rel_err=err / abs(printed) if printed else None, atol=k * se, rtol=0.0,
        detail=f"REFUTATION (passes when the discrepancy EXCEEDS atol): {detail}; Monte Carlo mean {mean:.6g} ± "
        f"{se:.3g} (s.e., N={samples.numel()}) vs the printed value {printed:.6g}: z = {err / se:.1f} "
        f"[tolerance 'sec3-refute-se': refuted iff |z| > {k:g}]",
        seed=seed, sense="exceeds",
    )


def refutes(cid: str, method: str, measured: Any, printed: Any, detail: str, seed: int) -> CheckResult:
    """Evidence that a printed equality is false: pass iff the worst |measured − printed| exceeds the floor.

    Floor from tolerance ``sec3-refute-floor`` (rounding in these float64/40-digit routes is ≤ 1e-12).
    """
    t = tol("sec3-refute-floor", ErrorBound)
    m = np.asarray(measured.detach() if isinstance(measured, Tensor) else measured, dtype=np.float64).reshape(-1)
    e = np.asarray(printed.detach() if isinstance(printed, Tensor) else printed, dtype=np.float64).reshape(-1)
    e = np.broadcast_to(e, m.shape)
    diff = np.abs(m - e)
    i = int(np.argmax(diff))
    return result(
        cid, method, passed=bool(np.all(np.isfinite(m)) and diff[i] > t.atol), measured=float(m[i]), expected=float(e[i]),
        abs_err=float(diff[i]), rel_err=float(diff[i] / max(abs(e[i]), 1e-300)), atol=t.atol, rtol=0.0,
        detail=f"REFUTATION (passes when the discrepancy EXCEEDS atol): {detail} [tolerance 'sec3-refute-floor']",
        seed=seed, sense="exceeds",
    )


def min_above_floor(cid: str, meth: str, v: Tensor, detail: str, seed: int) -> CheckResult:
    """Pass iff min(v) exceeds the refutation floor (a quantity that must be non-zero in every case)."""
    t = tol("sec3-refute-floor", ErrorBound)
    mn = float(v.min())
    return result(cid, meth, passed=mn > t.atol, measured=mn, expected=f"> {t.atol:g}", abs_err=mn, atol=t.atol, rtol=0.0,
                  detail=f"{detail} (smallest of {v.numel()} shown; passes when it EXCEEDS atol) [tolerance 'sec3-refute-floor']",
                  seed=seed, sense="exceeds")
