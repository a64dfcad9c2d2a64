"""Claim of Sec. 2: the β-VAE objective (Eq. 2), stated so that an implementation of it can be checked.

No claim stated Eq. 2 itself (Thm. 1 and Eq. 15 in :mod:`gracheck.theory.sec3_uniqueness` use it, Eq. 4 approximates
it), so ``eq2-beta-vae-objective`` is new (issue 16): it takes a candidate β-VAE objective and tests every part of
the statement, the reconstruction expectation (a stochastic estimate: tested in expectation, against exact values,
in standard errors of independent calls), the KL with its prior term and log-determinant, the factor β, the
log-density constant and that each example's value depends on that example only.

Randomness: each check draws its cases from ``strategies.generator(seed)``; the candidate's calls get their own
seeded generators (:func:`gracheck.theory.candidates.mc_over_calls`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gracheck.base.evidence import claim
from gracheck.theory import strategies as S
from gracheck.theory.candidates import (
    kl_to_standard_normal,
    linear_module,
    mc_agrees_per_example,
    mc_over_calls,
    mlp_module,
    replicate,
    replicate_groups,
)
from gracheck.theory.routes import MLP, CandidateError, candidate_failed, gauss_hermite_expectation

DT = S.DTYPE
_REPS = 25  # rows per example in each call (the calls are the independent draws)

c2 = claim(
    "eq2-beta-vae-objective",
    source="Eq. 2 (Sec. 2)",
    kind="derivation",
    takes_candidate=True,
    statement=(
        "For q(z|x) = N(μ, LLᵀ) (L lower-triangular with positive diagonal), prior N(0, I) and N(g(z), I) observations, "
        "the β-VAE objective of one example (Eq. 2) is E_q log N(x; g(z), I) − β KL(q ‖ N(0, I)) with KL = ½(tr LLᵀ + "
        "‖μ‖² − d − log|LLᵀ|); the reparameterised estimate log N(x; g(μ + Lε), I) − β KL, ε ~ N(0, I), is unbiased for "
        "it; for a decoder constant in z it is log N(x; g, I) − β KL, and for a linear decoder g(z) = Wz + b it is "
        "log N(x; Wμ + b, I) − ½ tr(WᵀW LLᵀ) − β KL."
    ),
    candidate_signature=(
        "candidate(x, decoder, mean, scale_tril, beta, generator) -> [B]: x [B, D], mean [B, d] and scale_tril [B, d, d] "
        "(lower-triangular, positive diagonal) float64, decoder a float64 torch.nn.Module mapping [B, d] → [B, D], beta "
        "a float > 0, generator a torch.Generator for the noise. Returns, per example, an unbiased estimate of "
        "E_q log N(x; g(z), I) − β KL(N(mean, LLᵀ) ‖ N(0, I)) with L = scale_tril, every constant included "
        "(−D/2 log 2π): reparameterised samples z = mean + Lε (one or more), the KL exact or estimated, as "
        "beta_vae_objective(x, decoder, mean, scale_tril, beta, GaussianObs(), generator=generator) computes it. Draws "
        "may be independent per example or shared across the batch; each example's expectation depends on that "
        "example only."
    ),
)


def _default_eq2():
    from gracheck.likelihoods import GaussianObs
    from gracheck.objectives import beta_vae_objective

    def beta_vae(x, decoder, mean, scale_tril, beta, generator):
        return beta_vae_objective(x, decoder, mean, scale_tril, beta, GaussianObs(), generator=generator)

    return beta_vae


def _scale_trils(gen: torch.Generator, E: int, d: int) -> Tensor:
    """E lower-triangular factors ``[E, d, d]`` with positive diagonals in [0.3, 1.1] and off-diagonal entries of size
    ~1 (so LLᵀ and LᵀL differ a lot, and a mean-field reading of L misses most of the covariance)."""
    L = torch.tril(S.normal(gen, E, d, d), -1)
    return L + torch.diag_embed(S.uniform(gen, E, d, low=0.3, high=1.1))


def _terms(X: Tensor, M: Tensor, L: Tensor, beta: float, erec, rec_at_mean: Tensor):
    """Eq. 2's terms per example, and the differences the named slips make (in expectation). ``erec(M, C, exact)`` is
    the route's E_{N(M, C)}[−½‖x − g(z)‖²] per example (``exact``: the reference itself); ``rec_at_mean`` is
    −½‖x − g(μ)‖²."""
    E, D = X.shape
    C = L @ L.transpose(-1, -2)
    kl = kl_to_standard_normal(M, C)
    rec = erec(M, C, True)
    parts = {
        "the constant −D/2 log 2π": torch.full((E,), -D / 2 * math.log(2 * math.pi), dtype=DT),
        "the reconstruction term E_q[−½‖x − g(z)‖²]": rec,
        "the KL term −β KL(q ‖ N(0, I))": -beta * kl,
    }
    Lt = L.transpose(-1, -2)
    Ld = torch.diag_embed(torch.diagonal(L, dim1=-2, dim2=-1))
    Cd = Ld @ Ld
    slips = {
        "the KL without its prior term ½‖μ‖² (the mean's pull to 0)": beta / 2 * M.pow(2).sum(-1),
        "the KL without its log-determinant −½ log|LLᵀ|": -beta / 2 * torch.linalg.slogdet(C)[1],
        "the decoder evaluated at the mean, no sampling": rec_at_mean - rec,
        "z = μ + Lᵀε (scale_tril transposed: covariance LᵀL)": erec(M, Lt @ L) - rec,
        "only the diagonal of scale_tril (a mean-field reading of a full Cholesky factor)": (
            erec(M, Cd) - rec - beta * (kl_to_standard_normal(M, Cd) - kl)),
    }
    return parts, slips


def _run(cid: str, method: str, cand, X: Tensor, dec, M: Tensor, L: Tensor, beta: float, terms, label: str, seed: int):
    E = X.shape[0]
    parts, slips = terms
    exact = sum(parts.values())
    Xr, Mr, Lr, groups = replicate(X, _REPS), replicate(M, _REPS), replicate(L, _REPS), replicate_groups(E, _REPS)
    try:
        samples = mc_over_calls(cand, lambda gen: (Xr, dec, Mr, Lr, beta, gen), groups, seed)
    except CandidateError as e:
        return candidate_failed(cid, method, seed, e, f"{label}, beta={beta}")
    return mc_agrees_per_example(cid, method, samples, exact, f"candidate, {label}, β = {beta}", seed, parts, slips)


@c2.method("closed-form")
def _eq2_closed_form(*, seed: int, candidate=None):
    """Closed forms of Eq. 2, two examples × 25 rows per call, 40 independent calls, per example the mean over calls
    against the exact value in standard errors (plus a float64 rounding floor). (a) A decoder constant in z (nn.Linear
    with zero weight, D = 5, d = 3, β = 1.7): Eq. 2 is log N(x; b, I) − β KL exactly, so a candidate with an exact KL
    is deterministic here and held to rounding: this isolates the KL (prior term ‖μ‖², trace, log-determinant), β
    and the log-density constant. (b) A linear decoder g(z) = Wz + b (W with column norms 3, 1, 0.3, β = 0.6):
    E_q log N(x; Wz + b, I) = log N(x; Wμ + b, I) − ½ tr(WᵀW LLᵀ). KL by torch.distributions."""
    cand = candidate or _default_eq2()
    gen = S.generator(seed)
    out = []
    d, D, E = 3, 5, 2
    b = S.normal(gen, D)
    M, L = S.normal(gen, E, d), _scale_trils(gen, E, d)
    X = b + S.normal(gen, E, D)
    const = linear_module(torch.zeros(D, d, dtype=DT), b)
    rec0 = -0.5 * (X - b).pow(2).sum(-1)
    terms = _terms(X, M, L, 1.7, lambda M_, C_, exact=False, r=rec0: r, rec0)
    out.append(_run(c2.id, "closed-form", cand, X, const, M, L, 1.7, terms, "decoder constant in z (D = 5, d = 3)", seed))
    Q = S.orthogonal(gen, D)[:, :d]
    W = Q * torch.tensor([3.0, 1.0, 0.3], dtype=DT) @ S.orthogonal(gen, d)
    M, L = S.normal(gen, E, d), _scale_trils(gen, E, d)
    X = M @ W.T + b + S.normal(gen, E, D)

    def erec(M_: Tensor, C_: Tensor, exact: bool = False, X=X, W=W, b=b) -> Tensor:  # E‖x − Wz − b‖² = ‖x − Wμ − b‖² + tr(WᵀWC)
        return -0.5 * ((X - M_ @ W.T - b).pow(2).sum(-1) + torch.einsum("ij,eji->e", W.T @ W, C_))

    terms = _terms(X, M, L, 0.6, erec, -0.5 * (X - M @ W.T - b).pow(2).sum(-1))
    out.append(_run(c2.id, "closed-form", cand, X, linear_module(W, b), M, L, 0.6, terms,
                    "linear decoder, WᵀW with eigenvalues 9, 1, 0.09, full LLᵀ", seed))
    return out


@c2.method("montecarlo")
def _eq2_montecarlo(*, seed: int, candidate=None):
    """A real tanh network (nn.Sequential, d = 2, D = 6, β = 0.8), two examples × 25 rows per call, 40 independent
    calls: per example the mean over calls against the exact Eq. 2, E_q log N(x; g(z), I) by tensor-product
    Gauss–Hermite quadrature (48 nodes per dimension; the check stops if 32 nodes differ by more than 1e-10) minus β KL
    (torch.distributions), in standard errors of the calls."""
    cand = candidate or _default_eq2()
    gen = S.generator(seed + 2)
    d, D, E, beta = 2, 6, 2, 0.8
    net = MLP(gen, d, D, hidden=10, act="tanh", scale=1.0)
    M = 0.8 * S.normal(gen, E, d)
    L = 0.4 * _scale_trils(gen, E, d)  # Σ eigenvalues ≲ 0.3: Gauss–Hermite converges to rounding
    X = net(M) + 0.5 * S.normal(gen, E, D)
    def erec(M_: Tensor, C_: Tensor, exact: bool = False) -> Tensor:
        """E_{N(M_, C_)}[−½‖x − g(z)‖²]; ``exact``: the check's reference, held to quadrature convergence (the other
        covariances only predict what a slip would give, to well within the Monte Carlo allowance)."""
        out = []
        for x, m, c in zip(X, M_, C_):
            f = lambda Z, x=x: -0.5 * (x - net(Z)).pow(2).sum(-1)  # noqa: E731
            v32, v48 = gauss_hermite_expectation(f, m, c, 32), gauss_hermite_expectation(f, m, c, 48)
            if exact and not math.isclose(float(v32), float(v48), rel_tol=0, abs_tol=1e-10):
                raise AssertionError(f"Gauss–Hermite not converged: {float(v32)!r} (32 nodes) vs {float(v48)!r} (48 nodes)")
            out.append(v48)
        return torch.stack(out)

    terms = _terms(X, M, L, beta, erec, -0.5 * (X - net(M)).pow(2).sum(-1))
    return _run(c2.id, "montecarlo", cand, X, mlp_module(net), M, L, beta, terms,
                f"{net!r}, exact E_q by Gauss–Hermite quadrature", seed)
