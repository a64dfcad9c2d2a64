"""The objectives of Kumar & Poole (2020): β-VAE (Eq. 2), Taylor (Eq. 7), GRAE (Eq. 12/13), GRAE≈ (Eq. 14).

Two layers:

* pure tensor math on Jacobians, Hessian diagonals and covariances
  (:func:`optimal_covariance`, :func:`grae_regularizer`, :func:`hadamard_bound`,
  :func:`taylor_gap`, :func:`gaussian_kl`), broadcasting over leading batch
  dimensions;
* model-level objectives taking data ``x [B, ...]``, a decoder callable
  ``[B, d] → [B, ...]`` and the encoder outputs, returning per-example values
  ``[B]`` in nats in the paper's *maximisation* form, with every log-density
  constant included so that the objectives can be compared by value. With
  ``return_terms=True`` they return a dict of the terms (``objective``,
  ``log_px``, and ``kl`` or ``prior`` + ``regularizer``) for logging.

Conventions. ``hess_diag`` is the diagonal of H_p = ∇²_g log p(x; g) ``[..., D]``;
``None`` means H_p = −I (the unit-variance Gaussian of Eq. 13). With W = −H_p
(≥ 0 for the log-concave models here), the Gauss–Newton curvature is
M = JᵀWJ ``[..., d, d]`` and A = I + M/β = I − JᵀH_pJ/β.

Numerics: for W ≥ 0 (H_p negative semidefinite: the Gaussian and Bernoulli models),
A = I + JᵀWJ/β is factored as RᵀR by a QR decomposition of the stacked matrix
[W^{1/2}J/√β; I] ``[..., D + d, d]``, never forming the Gram matrix JᵀWJ, whose
condition number is the square of J's: in float32, with singular values of J up to
1e3 and β = 0.02, Cholesky of the Gram form failed or gave gradients off by up to 180%,
while the QR route stays within float32's perturbation bound (about 1e-6 relative on
the value, 1e-3 on the gradient; tests/test_core_math.py). Only when some diag(H_p) > 0
can A be indefinite; then A is formed and Cholesky-factored, and a failure is reported.
log(1+·) comes from ``log1p``, inverses from ``cholesky_inverse``; the Taylor gap is
summed as Σ (λ − 1 − log λ) over the eigenvalues of the symmetric R Σ Rᵀ (similar to
AΣ), which stays accurate when the gap is tiny. ``optimal_covariance`` receives H
itself, so there is no squaring to avoid there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

import torch.nn as nn

from gracheck.base.validate import (
    FLOAT_DTYPES,
    is_traced,
    check_beta,
    check_same_dtype,
    check_square,
    check_symmetric,
    check_tensor,
    cholesky,
)
from gracheck.autodiff import decoder_jacobian, jacobian_columns
from gracheck.posteriors import GaussianPosterior

Decoder = Callable[[Tensor], Tensor]

# ---------------------------------------------------------------- pure math


def _eye_like(M: Tensor) -> Tensor:
    return torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)


def _beta_b(beta: float | Tensor, ref: Tensor, extra_dims: int) -> float | Tensor:
    """β broadcast against a batch shape ``ref.shape[:-extra_dims]`` (scalar stays scalar)."""
    if isinstance(beta, Tensor) and beta.dim() > 0:
        return beta.reshape(*beta.shape, *([1] * extra_dims))
    return beta


def _weights(J: Tensor, hess_diag: Tensor | None) -> tuple[Tensor | None, bool]:
    """(W, nonneg): W = −diag(H_p) ``[..., D]`` (None for H_p = −I), validated against J ``[..., D, d]``,
    and whether W ≥ 0 everywhere is known (False when some diag(H_p) > 0, or when a torch.func
    transform hides the values). One host sync for the finiteness and sign checks together."""
    if hess_diag is None:
        return None, True
    check_tensor("hess_diag", hess_diag, min_dim=1, finite=False, dtypes=FLOAT_DTYPES)
    check_same_dtype("hess_diag", hess_diag, "J", J)
    if hess_diag.shape[-1] != J.shape[-2]:
        raise ValueError(f"hess_diag: last dimension {hess_diag.shape[-1]} must equal J's D = {J.shape[-2]}")
    if is_traced(hess_diag):
        return -hess_diag, False
    h = hess_diag.detach()
    nonfinite, positive = torch.stack([(~torch.isfinite(h)).sum(), (h > 0).sum()]).tolist()
    if nonfinite:
        raise ValueError(f"hess_diag: contains {int(nonfinite)} NaN/Inf value(s) (shape {tuple(h.shape)})")
    return -hess_diag, positive == 0


def gauss_newton_curvature(J: Tensor, hess_diag: Tensor | None = None) -> Tensor:
    """M = Jᵀ(−H_p)J = −JᵀH_pJ ``[..., d, d]``: the Gauss–Newton curvature of Eq. 5/11 (JᵀJ for H_p = −I).

    J ``[..., D, d]``; ``hess_diag`` ``[..., D]`` = diag(H_p) (None: H_p = −I, unit-variance Gaussian).
    Positive semi-definite whenever H_p is negative semi-definite; Eq. 11's Σ* is (I + M/β)⁻¹.
    """
    W, _ = _weights(J, hess_diag)
    Jt = J.transpose(-1, -2)
    return Jt @ J if W is None else Jt @ (J * W.unsqueeze(-1))


def _root(W: Tensor) -> Tensor:
    """W^{1/2} for W ≥ 0, with derivative 0 (not ∞) where W = 0 exactly: there the factor
    [W^{1/2}J/√β; I] loses the direction, so d/dW at an exact 0 is taken as 0. The library's
    observation models reach W = 0 only by underflow, where their own dW/dg is 0 as well."""
    pos = W > 0
    return torch.where(pos, torch.where(pos, W, torch.ones_like(W)).sqrt(), torch.zeros_like(W))


def _factor(J: Tensor, W: Tensor | None, nonneg: bool, beta, name: str) -> Tensor:
    """An upper-triangular R ``[..., d, d]`` with RᵀR = A = I + JᵀWJ/β (see Numerics above).

    W ≥ 0: R from the QR decomposition of [W^{1/2}J/√β; I] (no Gram matrix; A is positive
    definite by construction). Otherwise: A is formed and its Cholesky factor L gives R = Lᵀ;
    ValueError naming ``name`` if A is not positive definite.
    """
    b = _beta_b(beta, J, 2)
    if nonneg:
        F = J if W is None else J * _root(W).unsqueeze(-1)
        F = F / (math.sqrt(b) if isinstance(b, float) else torch.sqrt(b))
        d = F.shape[-1]
        eye = torch.eye(d, dtype=F.dtype, device=F.device).expand(*F.shape[:-2], d, d)
        return torch.linalg.qr(torch.cat([F, eye], dim=-2)).R
    M = J.transpose(-1, -2) @ (J * W.unsqueeze(-1))
    A = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device) + M / b
    return cholesky(name, A, "I − JᵀH_pJ/β").transpose(-1, -2)


def _logdet_r(R: Tensor) -> Tensor:
    """log det(RᵀR) = 2 Σᵢ log |Rᵢᵢ| (QR may give negative diagonal entries)."""
    return 2 * torch.log(torch.diagonal(R, dim1=-2, dim2=-1).abs()).sum(-1)


def _check_J(J: Tensor) -> None:
    check_tensor("J", J, min_dim=2, dtypes=FLOAT_DTYPES)


def _batch_shape(J: Tensor, hess_diag: Tensor | None = None, *more: Tensor) -> tuple:
    """The broadcast batch shape of J ``[..., D, d]``, hess_diag ``[..., D]`` and ``[..., d, d]`` matrices."""
    shapes = [J.shape[:-2]]
    if isinstance(hess_diag, Tensor):
        shapes.append(hess_diag.shape[:-1])
    shapes += [m.shape[:-2] for m in more]
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        raise ValueError(f"J: batch dimensions {[tuple(s) for s in shapes]} of J and the other arguments do not broadcast") from None


def optimal_covariance(H: Tensor, beta: float | Tensor) -> Tensor:
    """Σ* = (I − H/β)⁻¹, the maximiser of Eq. 8 over Σ (Eq. 9; Eq. 11 with H = JᵀH_pJ).

    Args:
        H: symmetric Hessian ``[..., d, d]`` of f_x = log p(x|z) at the mean.
        beta: β > 0 (float or tensor broadcasting over the batch dims).

    Returns: Σ* ``[..., d, d]`` (symmetric positive definite).

    Raises ValueError if I − H/β is not positive definite (then Eq. 8 has no maximiser).
    """
    check_tensor("H", H, min_dim=2, dtypes=FLOAT_DTYPES)
    check_square("H", H)
    check_symmetric("H", H)
    beta = check_beta(beta, H.shape[:-2])
    A = _eye_like(H) - H / _beta_b(beta, H, 2)
    L = cholesky("H", A, "I − H/β")
    return torch.cholesky_inverse(L)


def grae_regularizer(J: Tensor, beta: float | Tensor, hess_diag: Tensor | None = None) -> Tensor:
    """β/2 · log det(I − Jᵀ diag(H_p) J / β), the GRAE regulariser (Eq. 12; Eq. 13 with H_p = −I).

    J ``[..., D, d]``, hess_diag ``[..., D]`` or None → ``[...]``; β a float or a tensor of the
    batch shape ``[...]`` (one β per example). Raises ValueError if the matrix is not positive
    definite (possible only when some diag(H_p) > 0).
    """
    _check_J(J)
    beta = check_beta(beta, _batch_shape(J, hess_diag))
    W, nonneg = _weights(J, hess_diag)
    logdet = _logdet_r(_factor(J, W, nonneg, beta, "hess_diag"))
    return 0.5 * _beta_b(beta, logdet, 0) * logdet


def hadamard_bound(J: Tensor, beta: float | Tensor, hess_diag: Tensor | None = None) -> Tensor:
    """β/2 · Σᵢ log(1 − (JᵀH_pJ)ᵢᵢ/β) ≥ :func:`grae_regularizer` (Hadamard's inequality, Eq. 14).

    For H_p = −I this is β/2 · Σᵢ log(1 + ‖J[:, i]‖²/β); equality iff JᵀH_pJ is diagonal.
    J ``[..., D, d]`` → ``[...]``. Each term is a sum of squares, so float32 keeps its relative
    accuracy here (no Gram matrix, no cancellation).

    With some diag(H_p) > 0 the terms are defined only while every 1 − (JᵀH_pJ)ᵢᵢ/β > 0;
    otherwise a ValueError names ``hess_diag`` (I − JᵀH_pJ/β then has a non-positive diagonal
    entry, so it is not positive definite). The value bounds :func:`grae_regularizer` only when
    the whole matrix is positive definite, which this function, seeing one column at a time
    (GRAE≈ passes k sampled columns), cannot check.
    """
    _check_J(J)
    beta = check_beta(beta, _batch_shape(J, hess_diag))
    W, nonneg = _weights(J, hess_diag)
    sq = J.pow(2) if W is None else J.pow(2) * W.unsqueeze(-1)
    diag = sq.sum(-2)  # [..., d]
    ratio = diag / _beta_b(beta, diag, 1)
    if not nonneg and not is_traced(ratio) and bool((ratio.detach() <= -1).any()):
        n = int((ratio.detach() <= -1).sum())
        raise ValueError(f"hess_diag: 1 − (JᵀH_pJ)ᵢᵢ/β ≤ 0 for {n} column(s), so I − JᵀH_pJ/β is not positive "
                         "definite and the bound of Eq. 14 is undefined there")
    return 0.5 * _beta_b(beta, diag, 0) * torch.log1p(ratio).sum(-1)


def taylor_gap(J: Tensor, Sigma: Tensor, beta: float | Tensor, hess_diag: Tensor | None = None) -> Tensor:
    """GRAE − Taylor = β/2 · [tr(AΣ) − log det(AΣ) − d], A = I − Jᵀ diag(H_p) J/β (Sec. 7, App. F, corrected).

    The paper prints tr(I + JᵀJΣ/β) − log|I + JᵀJΣ/β| − d; see the erratum
    ``erratum-sec7-gap-as-printed``. The gap is ≥ 0 and vanishes iff Σ = A⁻¹ (Eq. 11).

    J ``[..., D, d]``, Sigma ``[..., d, d]`` SPD → ``[...]``.
    """
    _check_J(J)
    check_tensor("Sigma", Sigma, min_dim=2, dtypes=FLOAT_DTYPES)
    check_same_dtype("Sigma", Sigma, "J", J)
    d = check_square("Sigma", Sigma)
    if J.shape[-1] != d:
        raise ValueError(f"Sigma: shape {tuple(Sigma.shape)} does not match J's d = {J.shape[-1]}")
    check_symmetric("Sigma", Sigma)
    beta = check_beta(beta, _batch_shape(J, hess_diag, Sigma))
    W, nonneg = _weights(J, hess_diag)
    R = _factor(J, W, nonneg, beta, "J")  # RᵀR = A
    cholesky("Sigma", Sigma, "Sigma")  # SPD check with a clear message
    S = R @ Sigma @ R.transpose(-1, -2)  # similar to AΣ = RᵀRΣ, symmetric
    S = 0.5 * (S + S.transpose(-1, -2))
    lam = torch.linalg.eigvalsh(S)
    u = lam - 1
    inner = (u - torch.log1p(u)).sum(-1)
    return 0.5 * _beta_b(beta, inner, 0) * inner


def gaussian_kl(mean: Tensor, cov: Tensor) -> Tensor:
    """KL(N(mean, cov) ‖ N(0, I)) = ½(tr cov + ‖mean‖² − d − log det cov); mean ``[..., d]``, cov ``[..., d, d]`` → ``[...]``."""
    check_tensor("mean", mean, min_dim=1, dtypes=FLOAT_DTYPES)
    check_tensor("cov", cov, min_dim=2, dtypes=FLOAT_DTYPES)
    check_same_dtype("cov", cov, "mean", mean)
    d = check_square("cov", cov)
    if mean.shape[-1] != d:
        raise ValueError(f"cov: shape {tuple(cov.shape)} does not match mean's d = {mean.shape[-1]}")
    check_symmetric("cov", cov)
    L = cholesky("cov", cov, "cov")
    logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    tr = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1)
    return 0.5 * (tr + mean.pow(2).sum(-1) - d - logdet)


# ---------------------------------------------------------------- model level


def _check_inputs(x: Tensor | None, mean: Tensor, decoder: Decoder, obs, beta, *, hess: bool) -> tuple[Tensor | None, float | Tensor]:
    """Shared checks of the model-level objectives; returns (x flattened to ``[B, D]``, β).

    mean ``[B, d]`` (B, d ≥ 1) in float32 or float64; x ``[B, ...]`` of a floating dtype (it
    meets the decoder output in the log-density, where torch promotes a mixture); the decoder
    a callable whose parameters (for an ``nn.Module``) have mean's dtype; obs an observation
    model instance (``log_prob``, and ``hess_diag`` when ``hess``); β a float or one per example.
    """
    check_tensor("mean", mean, dtypes=FLOAT_DTYPES)
    if mean.dim() != 2:
        raise ValueError(f"mean: expected shape [B, d], got {tuple(mean.shape)}")
    if mean.shape[0] == 0:
        raise ValueError("mean: empty batch (B = 0); the model-level objectives need at least one example")
    if mean.shape[1] == 0:
        raise ValueError("mean: latent dimension d = 0; expected shape [B, d] with d ≥ 1")
    xf = None
    if x is not None:
        check_tensor("x", x, min_dim=1, dtypes=FLOAT_DTYPES)
        if x.shape[0] != mean.shape[0]:
            raise ValueError(f"x, mean: batch sizes differ ({x.shape[0]} vs {mean.shape[0]})")
        xf = x.reshape(x.shape[0], math.prod(x.shape[1:]))
    if not callable(decoder):
        raise TypeError(f"decoder: expected a callable [B, d] -> [B, ...], got {type(decoder).__name__}")
    if isinstance(decoder, nn.Module):
        p = next((p for p in decoder.parameters() if p.is_floating_point()), None)
        if p is not None and p.dtype != mean.dtype:
            raise TypeError(f"decoder: its parameters are {p.dtype} but mean is {mean.dtype}; use one dtype "
                            f"(decoder.to({mean.dtype}) or mean.to({p.dtype}))")
    if obs is not None or x is not None:
        _check_obs(obs, hess)
    return xf, check_beta(beta, mean.shape[:1]) if beta is not None else None


def _check_obs(obs, hess: bool) -> None:
    need = ("log_prob", "hess_diag") if hess else ("log_prob",)
    if isinstance(obs, type):
        got = f"the class {obs.__name__} (call it: {obs.__name__}())"
    elif all(callable(getattr(obs, m, None)) for m in need):
        return
    else:
        got = repr(obs)
    raise TypeError(f"obs: expected an observation model with {' and '.join(m + '(x, g)' for m in need)} "
                    f"(e.g. GaussianObs() or BernoulliObs(logits=True)), got {got}")


def _decode(decoder: Decoder, z: Tensor, D: int) -> Tensor:
    out = decoder(z)
    if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != z.shape[0]:
        raise ValueError(f"decoder: must map [B, d] to [B, ...], got {getattr(out, 'shape', type(out))}")
    g = out.reshape(out.shape[0], -1)
    _check_output(g, D, z)
    return g


def _check_output(g: Tensor, D: int, mean: Tensor) -> None:
    if g.dtype != mean.dtype:
        raise TypeError(f"decoder: returned {g.dtype} for a {mean.dtype} mean; return the mean's dtype (under "
                        "autocast, cast the output to float32 as gracheck.train does)")
    if g.shape[1] != D:
        raise ValueError(f"decoder: output flattens to {g.shape[1]} values per example, x has {D}")


def beta_vae_objective(
    x: Tensor,
    decoder: Decoder,
    mean: Tensor,
    scale_tril: Tensor,
    beta: float | Tensor,
    obs,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    *,
    return_terms: bool = False,
) -> Tensor | dict[str, Tensor]:
    """β-VAE objective (Eq. 2): E_q log p(x|z) − β KL(q(z|x) ‖ N(0, I)), per example ``[B]``.

    q = N(mean, scale_tril scale_trilᵀ); the expectation is a reparameterised Monte
    Carlo average over ``n_samples`` draws from ``generator`` (unbiased; the paper
    trains with one). The KL is exact. ``scale_tril`` must be lower-triangular with a positive
    diagonal and mean's dtype; β a float or one per example ``[B]``.
    """
    xf, beta = _check_inputs(x, mean, decoder, obs, beta, hess=False)
    q = GaussianPosterior(mean, scale_tril)
    z = q.sample(n_samples, generator=generator)  # [n, B, d]
    n, B, d = z.shape
    g = _decode(decoder, z.reshape(n * B, d), xf.shape[1])
    logp = obs.log_prob(xf.repeat(n, 1), g).reshape(n, B).mean(0)
    kl = q.kl_standard_normal()
    obj = logp - _beta_b(beta, logp, 0) * kl
    return {"objective": obj, "log_px": logp, "kl": kl} if return_terms else obj


def taylor_objective(
    x: Tensor,
    decoder: Decoder,
    mean: Tensor,
    cov: Tensor,
    beta: float | Tensor,
    obs,
    *,
    return_terms: bool = False,
    method: str = "auto",
) -> Tensor | dict[str, Tensor]:
    """Second-order (Taylor) approximation of Eq. 2 with H_f ≈ JᵀH_pJ (Eq. 7), per example ``[B]``:

    log p(x|g(h)) + ½ tr(JᵀH_pJ Σ) − β KL(N(h, Σ) ‖ N(0, I)).

    ``method`` picks the Jacobian engine's route (see :func:`gracheck.decoder_jacobian`).
    """
    xf, beta = _check_inputs(x, mean, decoder, obs, beta, hess=True)
    check_tensor("cov", cov, min_dim=3, dtypes=FLOAT_DTYPES)
    check_same_dtype("cov", cov, "mean", mean)
    g, J = decoder_jacobian(decoder, mean, return_output=True, method=method)
    _check_output(g, xf.shape[1], mean)
    h = obs.hess_diag(xf, g)
    M = gauss_newton_curvature(J, h)  # Jᵀ(−H_p)J
    quad = -0.5 * (M * cov).sum((-2, -1))  # ½ tr(JᵀH_pJ Σ), Σ symmetric
    logp = obs.log_prob(xf, g)
    kl = gaussian_kl(mean, cov)
    obj = logp + quad - _beta_b(beta, quad, 0) * kl
    return {"objective": obj, "log_px": logp, "curvature": quad, "kl": kl} if return_terms else obj


def grae_objective(
    x: Tensor, decoder: Decoder, mean: Tensor, beta: float | Tensor, obs, *, return_terms: bool = False, method: str = "auto"
) -> Tensor | dict[str, Tensor]:
    """GRAE (Eq. 12; Eq. 13 for Gaussian observations), per example ``[B]``, maximisation form:

    log p(x|g(h)) − β/2 ‖h‖² − β/2 log det(I − JᵀH_pJ/β),

    the value of Eq. 7 at the optimal covariance Σ* of Eq. 11 (Eq. 10 with H_f = JᵀH_pJ).
    ``method`` picks the Jacobian engine's route (see :func:`gracheck.decoder_jacobian`).
    """
    xf, beta = _check_inputs(x, mean, decoder, obs, beta, hess=True)
    g, J = decoder_jacobian(decoder, mean, return_output=True, method=method)
    _check_output(g, xf.shape[1], mean)
    logp = obs.log_prob(xf, g)
    return _grae_terms(logp, mean, beta, grae_regularizer(J, beta, obs.hess_diag(xf, g)), return_terms)


def _grae_terms(logp: Tensor, mean: Tensor, beta, reg: Tensor, return_terms: bool) -> Tensor | dict[str, Tensor]:
    prior = 0.5 * _beta_b(beta, logp, 0) * mean.pow(2).sum(-1)
    obj = logp - prior - reg
    return {"objective": obj, "log_px": logp, "prior": prior, "regularizer": reg} if return_terms else obj


def sample_columns(B: int, d: int, k: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """``[B, k]`` column indices, k distinct columns per example drawn uniformly without replacement."""
    if not isinstance(k, int) or not 1 <= k <= d:
        raise ValueError(f"k: must be an int in [1, d={d}], got {k!r}")
    u = torch.rand(B, d, generator=generator, device=device if generator is None else generator.device)
    return u.argsort(dim=1)[:, :k].to(device)


def grae_approx_objective(
    x: Tensor,
    decoder: Decoder,
    mean: Tensor,
    beta: float | Tensor,
    obs,
    k: int = 1,
    generator: torch.Generator | None = None,
    *,
    columns: Tensor | None = None,
    return_terms: bool = False,
    method: str = "auto",
) -> Tensor | dict[str, Tensor]:
    """GRAE≈ (Eq. 14 and the text after it), per example ``[B]``:

    log p(x|g(h)) − β/2 ‖h‖² − β/2 · (d/k) Σ_{c∈S} log(1 − (JᵀH_pJ)_cc/β),

    S = k distinct columns drawn uniformly (``generator``) or given as ``columns [B, k]``.
    Each column enters with probability k/d, so the sum is an unbiased estimate of
    the Hadamard bound (:func:`hadamard_bound`), itself an upper bound on the GRAE
    regulariser: E[GRAE≈] ≤ GRAE. Cost: k JVPs, sharing the pass that computes g(h).
    ``method`` picks the Jacobian engine's route (see :func:`gracheck.jacobian_columns`).
    Given ``columns`` must hold k distinct indices per row (ValueError otherwise: a repeated
    column would enter the estimate twice and bias it).
    """
    xf, beta = _check_inputs(x, mean, decoder, obs, beta, hess=True)
    B, d = mean.shape
    given = columns is not None
    if columns is None:
        columns = sample_columns(B, d, k, generator, device=mean.device)
    g, Jc = jacobian_columns(decoder, mean, columns, return_output=True, method=method)  # validates columns
    k = columns.shape[1]
    if given and k > 1:
        _check_distinct_columns(columns)
    _check_output(g, xf.shape[1], mean)
    logp = obs.log_prob(xf, g)
    reg = hadamard_bound(Jc, beta, obs.hess_diag(xf, g)) * (d / k)
    return _grae_terms(logp, mean, beta, reg, return_terms)


def _check_distinct_columns(columns: Tensor) -> None:
    srt = columns.sort(dim=1).values
    rep = (srt[:, 1:] == srt[:, :-1]).any(dim=1)
    if bool(rep.any()):
        row = int(rep.nonzero()[0, 0])
        raise ValueError(f"columns: row {row} repeats a column ({columns[row].tolist()}); each row must hold k "
                         "distinct indices (S in Eq. 14's estimator is drawn without replacement)")


def orthogonality_penalty(
    decoder: Decoder, mean: Tensor, generator: torch.Generator | None = None, *, eps: float = 1e-12
) -> Tensor:
    """Optional GRAE≈ penalty (Sec. 5.3): squared cosine between two distinct sampled Jacobian columns, ``[B]``.

    (J_iᵀJ_j)² / (‖J_i‖²‖J_j‖²) for a pair i ≠ j drawn uniformly per example; zero iff
    the pair is orthogonal, the condition under which the Hadamard bound is tight.
    Needs d ≥ 2.
    """
    _check_inputs(None, mean, decoder, None, None, hess=False)
    B, d = mean.shape
    if d < 2:
        raise ValueError(f"mean: the orthogonality penalty needs d ≥ 2, got d = {d}")
    cols = sample_columns(B, d, 2, generator, device=mean.device)
    g, Jc = jacobian_columns(decoder, mean, cols, return_output=True)  # [B, D, 2]
    _check_output(g, g.shape[1], mean)
    a, b = Jc[..., 0], Jc[..., 1]
    dot = (a * b).sum(-1)
    return dot.pow(2) / (a.pow(2).sum(-1) * b.pow(2).sum(-1) + eps)
