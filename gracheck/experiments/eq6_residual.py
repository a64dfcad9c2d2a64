"""Eq. 5/6 on trained decoders: how large is the term the Taylor approximation (Eq. 7) drops?

Claim ``eq6-residual-trained``. Eq. 5 splits the Hessian of f_x(z) = log p(x | g(z)) as

    H_f = Jᵀ H_p J + R,    R = Σ_k (∂ log p/∂g_k) ∇²_z g_k,

and Eq. 6 drops R: it vanishes (almost everywhere) for a piecewise-linear decoder, and the paper
keeps Eq. 7 for its ELU + sigmoid networks, i.e. assumes R can be neglected there. We measure R at
the posterior mean z = h(x) of held-out MNIST images (the point Eq. 4–7 expand around), in float64.

Two routes to R (neither is the decomposition being tested)
-----------------------------------------------------------
* route H ("hessian"): the full Hessian of z ↦ log p(x | g(z)) by ``torch.func.hessian``
  (forward-over-reverse through decoder *and* likelihood), minus JᵀH_pJ built from the forward-mode
  Jacobian (:func:`gracheck.autodiff.decoder_jacobian`) and the likelihood's analytic diag(H_p);
* route W ("weighted"): the Hessian of the scalar z ↦ Σ_k w_k g_k(z) with the weights
  w = ∂ log p/∂g held fixed at g(h(x)) (analytic), again forward-over-reverse (a jvp of a vjp);
  it never touches H_p.

Where the decoder ends: the same network and the same f_x can be split in two ways.
``output``: g = the decoder's output (after its sigmoid), Gaussian observation N(x; g, I) — the
paper's split. ``logits``: g = the pre-sigmoid output u, and the sigmoid moves into the
likelihood, log p(x | u) = log N(x; σ(u), I) (∂/∂u = (x − s)s(1 − s),
∂²/∂u² = −s²(1 − s)² + (x − s)s(1 − s)(1 − 2s), s = σ(u)). For a ReLU MLP the logits split is a
piecewise-linear decoder without a sigmoid, so Eq. 6 predicts R = 0 there; for the paper's ELU
network neither split is piecewise linear (the ELU logits split is a built-in negative control).

Statistic: the relative Frobenius size ρ = ‖R‖_F / ‖JᵀH_pJ‖_F per test point.

Decision rules (fixed before any result was seen; numbers are Config fields)
---------------------------------------------------------------------------
1. *Exactly zero for a piecewise-linear decoder.* ReLU MLP β-VAE, logits split. **Route FD**
   (since this version; before, route H decided it): H_f by central differences of the gradient
   ∇_z log p(x | u(z)) (step ``fd_step`` = 1e-5, first derivatives only, :func:`fd_hessian_in_region`)
   at the test points whose whole stencil z ± h eⱼ stays inside one linear region of the network
   (no ReLU input changes sign over the stencil, none within ``fd_margin`` = 1e-4 of 0), compared
   entrywise with JᵀH_pJ. **Verified iff |H_FD − JᵀH_pJ| ≤ atol + rtol·|JᵀH_pJ| at every entry of every
   such point**, atol and rtol from the tolerance ``finite-difference`` (1e-6 each: truncation ~h²,
   rounding ~ε/h ≈ 1e-11), refuted otherwise (a maximum over every point has no sampling error, so
   never inconclusive). Why the route changed: routes H and W differentiate the ReLU twice by
   autodiff, and torch defines relu'' = 0 everywhere, so their zero restates that convention rather
   than measuring anything (the theory helper's finding; :func:`gracheck.theory.sec4_taylor.fd_hessian_in_region`
   takes the same route on random networks). Central differences of the gradient never take a
   second derivative of the ReLU: inside one linear region the network *is* an affine map, and the
   differences see whatever curvature is there. Route H's maximum (1e-10, the earlier threshold
   ``zero_threshold``) is still reported beside it. The changed route was stated here before the
   rerun that first used it; it cannot change the claim's status on its own (rule 2 decides that).
   Preconditions of rule 1: ≥ ``min_region_points`` = 20 test points have a stencil inside one linear
   region (a maximum over fewer says little), and the same route *can fail*: on the ReLU network's
   output split (its sigmoid inside the decoder, N(x; g, I) on the output), which erratum
   ``erratum-sec7-relu-eq6-exact`` shows is not piecewise linear, the finite-difference residual must
   exceed the same tolerance at some entry and its median ρ must exceed the ``negative-control``
   floor 1e-4. Unmet → inconclusive. (The paper's Sec. 7 says Eq. 6 "is exact" for ReLU; with App. D's
   sigmoid output it is not, which is why the piecewise-linear case here is the logits split.)
2. *"Can be neglected" for the paper's ELU + sigmoid decoder* (output split, route W), per
   (b, β) model: the median of ρ over test points with a percentile bootstrap CI
   (``bootstrap`` = 1000, ``ci_level`` = 95 %). **Passes iff the CI's upper end
   < ``ratio_threshold`` = 0.1.** Why 0.1: Eq. 7 replaces H_f by JᵀH_pJ everywhere downstream
   (Eq. 11's Σ, GRAE's log-determinant); a term under 10 % of the kept curvature in Frobenius norm
   changes those by at most about that fraction to first order, which is what "neglected" can
   mean; it is a stricter bar than the 0.5 residual accepted for Eq. 11 itself in
   ``fig2-precision-matches-jtj``, so a failure here cannot hide inside that tolerance. The median
   is the decision statistic; the quantile distribution (5 … 95 %, max) is reported beside it.
   Precondition: ≥ ``min_points`` = 100 test points per model (a percentile bootstrap of a median
   is near its nominal coverage from about a hundred points on).
3. *The two routes agree* (otherwise neither number means anything): for every model, split and
   test point, **‖R_H − R_W‖_F ≤ ``route_rtol`` · ‖JᵀH_pJ‖_F with route_rtol = 1e-8.** This is a
   precondition of rule 2, not a statement of the paper.

Three outcomes (:mod:`gracheck.base.verdicts`). Rule 1 has no sampling error (a maximum over every
in-region test point): **verified** iff every entry is within the finite-difference tolerance,
**refuted** otherwise. Rule 2 is a one-sided test of the
median's CI: verified iff its upper end is < 0.1, **refuted** iff its lower end is ≥ 0.1 (the
dropped term is at least a tenth of the kept curvature), **inconclusive** when it straddles 0.1, with
how many test points would decide it at the observed spread and whether ``--scale paper`` (5000)
provides them. Rule 3 and the other preconditions: unmet → **inconclusive** (naming the measured
value), since a residual measured by two routes that disagree decides nothing; met → verified. The
claim is verified when every rule is, refuted when any is refuted, inconclusive otherwise. This
three-outcome reading (and reading rule 3 as a precondition, as its statement above always said)
replaced the two-outcome one before rerunning; no threshold changed.

Reported besides (no decision): ρ for the ReLU network's output split and the ELU networks'
logits split (both non-zero: the control that the zero of rule 1 is not an artefact), and the
effect on the objective, ½ tr(RΣ) against the kept ½ tr(JᵀH_pJ Σ), in nats per example, with the
encoder's Σ.


Scales: smoke = the ELU + sigmoid MLP models of ``fig3-objectives-agree``'s smoke scale (identical
training configs, so the shared cache trains them once, as one ensemble through
:func:`gracheck.experiments._zoo.train_grid`) plus one ReLU + sigmoid MLP (b = 1, β = 0.3; another
activation, so it trains alone), 300 test points. Paper = the App. D conv net (width 1) models of fig3's paper scale; the ReLU
control stays an MLP (the App. D decoder has ELU only; ``gracheck.nets`` builds conv nets with ELU).
The trainer always ends a Gaussian-observation decoder with a sigmoid, so the piecewise-linear
decoder without sigmoid is obtained by the logits split of a trained ReLU network, not trained on
its own.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from gracheck.base import stats as bstats
from gracheck.base import verdicts
from gracheck.base.evidence import CheckResult, decided
from gracheck.base.files import save_figure
from gracheck.experiments import _zoo
from gracheck.experiments import fig3_objectives as fig3
from gracheck.experiments._common import (
    ExperimentResult,
    Metric,
    config_dict,
    config_from_dict,
    experiment_claim,
    now_utc,
    scale_of,
    torch_threads,
)

CLAIM = experiment_claim(
    __name__,
    id="eq6-residual-trained",
    source="Eq. 5, 6",
    statement="At held-out points of trained decoders the term Σ_k (∂log p/∂g_k)∇²g_k of Eq. 5 is zero for "
              "piecewise-linear decoders and small relative to JᵀH_pJ for the paper's ELU+sigmoid decoder.",
    title="Eq. 5–6 on trained decoders: the second-order residual",
    shows="Size of Σ_k (∂log p/∂g_k)∇²g_k relative to JᵀH_pJ at held-out points.",
)
CLAIM_ID = CLAIM.id
SPLITS = ("output", "logits")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
_LOG2PI = math.log(2 * math.pi)


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of the experiment (saved with the result). The model fields mirror fig3's Config."""

    blocks: tuple[int, ...]
    betas: tuple[float, ...]
    steps: int
    latent_dim: int = 12
    arch: str = "conv"
    width: float = 1.0
    hidden: tuple[int, ...] = (128,)
    activation: str = "elu"
    batch_size: int = 64
    lr: float = 1e-3
    train_eval_size: int = 500
    num_threads: int | None = 1
    relu_beta: float = 0.3
    relu_block: int = 1
    relu_hidden: tuple[int, ...] = (128,)
    relu_steps: int = 800
    n_test: int = 5000
    eval_batch: int = 100
    zero_threshold: float = 1e-10
    fd_step: float = 1e-5
    fd_margin: float = 1e-4
    min_region_points: int = 20
    min_points: int = 100
    ratio_threshold: float = 0.1
    route_rtol: float = 1e-8
    bootstrap: int = 1000
    ci_level: float = 0.95


# the fields that define the ELU models; identical values to fig3's give identical TrainConfigs (shared cache)
MODEL_FIELDS = ("blocks", "betas", "steps", "latent_dim", "arch", "width", "hidden", "activation", "batch_size", "lr",
                "train_eval_size", "num_threads")


def _from_fig3(scale: str, **kw) -> Config:
    c = fig3.CONFIGS[scale]
    return Config(**{k: getattr(c, k) for k in MODEL_FIELDS}, **kw)


CONFIGS: dict[str, Config] = {
    # fig3's smoke models (8 ELU+sigmoid MLPs, cached) + one ReLU+sigmoid MLP (800 steps), 300 test points.
    "smoke": _from_fig3("smoke", relu_steps=800, n_test=300),
    # fig3's paper models (App. D conv net, 21 models) + a ReLU MLP (256 units) at 20k steps, 5000 test points.
    "paper": _from_fig3("paper", relu_hidden=(256,), relu_steps=20_000, n_test=5000, eval_batch=50),
}


# ----------------------------------------------------------------------------------------------
# Likelihoods of the two splits (per example; x, g ``[..., D]``)
# ----------------------------------------------------------------------------------------------
class GaussianOnOutput:
    """log N(x; g, I): the paper's split, g = the decoder's (sigmoid) output."""

    name = "output"

    @staticmethod
    def log_prob(x: Tensor, g: Tensor) -> Tensor:
        return -0.5 * (x - g).pow(2).sum(-1) - 0.5 * x.shape[-1] * _LOG2PI

    @staticmethod
    def grad(x: Tensor, g: Tensor) -> Tensor:
        return x - g

    @staticmethod
    def hess_diag(x: Tensor, g: Tensor) -> Tensor:
        return -torch.ones_like(g)


class GaussianOnSigmoid:
    """log N(x; σ(u), I) as a function of the logits u: the sigmoid moved into the likelihood."""

    name = "logits"

    @staticmethod
    def log_prob(x: Tensor, u: Tensor) -> Tensor:
        return -0.5 * (x - torch.sigmoid(u)).pow(2).sum(-1) - 0.5 * x.shape[-1] * _LOG2PI

    @staticmethod
    def grad(x: Tensor, u: Tensor) -> Tensor:
        s = torch.sigmoid(u)
        return (x - s) * s * (1 - s)

    @staticmethod
    def hess_diag(x: Tensor, u: Tensor) -> Tensor:
        s = torch.sigmoid(u)
        return -(s * (1 - s)).pow(2) + (x - s) * s * (1 - s) * (1 - 2 * s)


def logits_decoder(decoder: nn.Module) -> nn.Module:
    """A copy of ``decoder`` without its final sigmoid (``decoder.body[-1]``), returning the logits u(z)."""
    body = getattr(decoder, "body", None)
    if not isinstance(decoder, nn.Module) or not isinstance(body, nn.Sequential) or not isinstance(body[-1], nn.Sigmoid):
        raise ValueError("decoder: expected a gracheck decoder whose `body` ends with nn.Sigmoid")
    dec = copy.deepcopy(decoder)
    dec.body[-1] = nn.Identity()
    return dec


def split(decoder: nn.Module, name: str) -> tuple[nn.Module, Any]:
    """(decoder part, likelihood) of the ``output`` or ``logits`` split of ``decoder``."""
    if name == "output":
        return decoder, GaussianOnOutput
    if name == "logits":
        return logits_decoder(decoder), GaussianOnSigmoid
    raise ValueError(f"name: expected one of {SPLITS}, got {name!r}")


# ----------------------------------------------------------------------------------------------
# The two routes to R (float64 recommended)
# ----------------------------------------------------------------------------------------------
def _per_example(decoder: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return lambda z: decoder(z.unsqueeze(0)).reshape(-1)


def gauss_newton(decoder, lik, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """(JᵀH_pJ ``[B, d, d]``, g ``[B, D]``) with J by forward mode and diag(H_p) from ``lik.hess_diag``."""
    from gracheck.autodiff import decoder_jacobian

    g, J = decoder_jacobian(decoder, z, return_output=True)
    h = lik.hess_diag(x.reshape(len(x), -1), g)
    return J.transpose(-1, -2) @ (J * h.unsqueeze(-1)), g


def full_hessian(decoder, lik, x: Tensor, z: Tensor) -> Tensor:
    """H_f = ∇²_z log p(x | g(z)) per example, ``[B, d, d]`` (``torch.func.hessian``, vmapped)."""
    ge = _per_example(decoder)
    xf = x.reshape(len(x), -1)
    return torch.func.vmap(torch.func.hessian(lambda zz, xx: lik.log_prob(xx, ge(zz))))(z, xf)


def residual_hessian_route(decoder, lik, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """Route H: (R = H_f − JᵀH_pJ, JᵀH_pJ), both ``[B, d, d]``."""
    gn, _ = gauss_newton(decoder, lik, x, z)
    return full_hessian(decoder, lik, x, z) - gn, gn


def residual_weighted_route(decoder, lik, x: Tensor, z: Tensor) -> Tensor:
    """Route W: R = Σ_k w_k ∇²g_k with w = ∂log p/∂g at g(z) held fixed, ``[B, d, d]`` (jvp of vjp)."""
    ge = _per_example(decoder)
    with torch.no_grad():
        g = decoder(z).reshape(len(z), -1)
        w = lik.grad(x.reshape(len(x), -1), g)
    return torch.func.vmap(torch.func.hessian(lambda zz, ww: (ww * ge(zz)).sum()))(z, w)


def relu_inputs(decoder: nn.Module, z: Tensor) -> Tensor:
    """The inputs of every ReLU / LeakyReLU module of ``decoder`` at ``z [N, d]``, concatenated, ``[N, K]``.

    ValueError if the decoder has none (it is then not piecewise linear through ReLUs)."""
    acts: list[Tensor] = []
    hooks = [mod.register_forward_hook(lambda _m, inp, _o: acts.append(inp[0].reshape(inp[0].shape[0], -1)))
             for mod in decoder.modules() if isinstance(mod, (nn.ReLU, nn.LeakyReLU))]
    if not hooks:
        raise ValueError("decoder: has no ReLU/LeakyReLU layer, so it has no linear regions to difference inside")
    try:
        with torch.no_grad():
            decoder(z)
    finally:
        for hk in hooks:
            hk.remove()
    return torch.cat(acts, 1)


def fd_hessian_in_region(decoder, lik, x: Tensor, z: Tensor, *, h: float = 1e-5, margin: float = 1e-4
                         ) -> tuple[Tensor, Tensor]:
    """(H_f by central differences of the gradient ``[B, d, d]``, in-region mask ``[B]``), rule 1's route FD.

    H[b, i, j] = (∂ᵢf(z + h eⱼ) − ∂ᵢf(z − h eⱼ)) / 2h, symmetrised, with f(z) = log p(x | decoder(z)) and its
    gradient by one reverse pass (first derivatives only: no second derivative of a ReLU is taken). A point
    is in region iff no ReLU input (:func:`relu_inputs`) lies within ``margin`` of 0 at z and none changes
    sign at any of the 2d stencil points (for a one-hidden-layer network, whose ReLU inputs are affine in
    z, the whole stencil then lies in one linear region). Points outside have H computed anyway; use the mask.
    """
    B, d = z.shape
    E = torch.eye(d, dtype=z.dtype, device=z.device) * h
    Z = torch.cat([z[:, None, :] + E, z[:, None, :] - E], 1)  # [B, 2d, d]: + h eⱼ then − h eⱼ
    pre0 = relu_inputs(decoder, z)
    pre = relu_inputs(decoder, Z.reshape(B * 2 * d, d)).reshape(B, 2 * d, -1)
    inside = (pre0.abs() >= margin).all(1) & (torch.sign(pre) == torch.sign(pre0)[:, None, :]).all(2).all(1)
    xf = x.reshape(B, -1).repeat_interleave(2 * d, 0)
    with torch.enable_grad():
        Zr = Z.reshape(B * 2 * d, d).detach().requires_grad_(True)
        (G,) = torch.autograd.grad(lik.log_prob(xf, decoder(Zr).reshape(B * 2 * d, -1)).sum(), Zr)
    G = G.reshape(B, 2 * d, d)
    H = (G[:, :d] - G[:, d:]).transpose(1, 2) / (2 * h)
    return 0.5 * (H + H.transpose(1, 2)), inside


def evaluate_model(model, x: Tensor, *, device: str = "cpu", eval_batch: int = 100, fd: bool = False,
                   fd_step: float = 1e-5, fd_margin: float = 1e-4) -> dict[str, dict[str, Tensor]]:
    """Per split and test point (float64, CPU ``[N]``): ρ by both routes, the route disagreement and the
    objective-level terms ½tr(RΣ), ½tr(JᵀH_pJΣ) at the posterior mean (eval-mode float64 copy).

    ``fd=True`` (a ReLU decoder) adds route FD (:func:`fd_hessian_in_region`): ``fd_inside`` (1.0/0.0),
    ``fd_excess`` = max over entries of |H_FD − JᵀH_pJ| / (atol + rtol·|JᵀH_pJ|) with the
    ``finite-difference`` tolerance, and ``fd_rho`` = ‖H_FD − JᵀH_pJ‖_F / ‖JᵀH_pJ‖_F."""
    from gracheck.base.tolerances import ErrorBound, tol

    fdt = tol("finite-difference", ErrorBound)
    m = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    parts = {name: split(m.decoder, name) for name in SPLITS}
    keys = ("rho_w", "rho_h", "route_err", "tr_r", "tr_gn") + (("fd_inside", "fd_excess", "fd_rho") if fd else ())
    out: dict[str, dict[str, list[Tensor]]] = {n: {k: [] for k in keys} for n in SPLITS}
    for s in range(0, len(x), eval_batch):
        xb = x[s : s + eval_batch].to(device=device, dtype=torch.float64)
        with torch.no_grad():
            mean, L = m.encoder(xb)
        Sigma = None if L is None else L @ L.transpose(-1, -2)
        for name, (dec, lik) in parts.items():
            RH, gn = residual_hessian_route(dec, lik, xb, mean)
            RW = residual_weighted_route(dec, lik, xb, mean)
            ngn = torch.linalg.matrix_norm(gn)
            o = out[name]
            o["rho_w"].append((torch.linalg.matrix_norm(RW) / ngn).cpu())
            o["rho_h"].append((torch.linalg.matrix_norm(RH) / ngn).cpu())
            o["route_err"].append((torch.linalg.matrix_norm(RH - RW) / ngn).cpu())
            if Sigma is not None:
                o["tr_r"].append((0.5 * (RW * Sigma).sum((-2, -1))).cpu())
                o["tr_gn"].append((0.5 * (gn * Sigma).sum((-2, -1))).cpu())
            if fd:
                Hfd, inside = fd_hessian_in_region(dec, lik, xb, mean, h=fd_step, margin=fd_margin)
                excess = ((Hfd - gn).abs() / (fdt.atol + fdt.rtol * gn.abs())).amax((-2, -1))
                o["fd_inside"].append(inside.to(torch.float64).cpu())
                o["fd_excess"].append(excess.cpu())
                o["fd_rho"].append((torch.linalg.matrix_norm(Hfd - gn) / ngn).cpu())
    return {n: {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.float64) for k, v in o.items()}
            for n, o in out.items()}


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------
def bootstrap_quantile_ci(
    x: np.ndarray, q: float, *, B: int, level: float, rng: np.random.Generator
) -> tuple[float, float, float]:
    """(quantile q of x, low, high): percentile bootstrap over the points of a 1-D array
    (:func:`gracheck.base.stats.bootstrap_ci`)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"x: expected a non-empty 1-D array, got shape {x.shape}")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q: expected a number in [0, 1], got {q!r}")
    return bstats.bootstrap_ci(lambda v: np.quantile(v, q, axis=-1), x, B=B, level=level, rng=rng, vectorised=True)


def _key(kind: str, b: int, beta: float) -> str:
    return f"{kind},b={b},beta={beta:g}"


def statistics(data: dict[str, Any], cfg: Config, seed: int) -> dict[str, dict[str, Any]]:
    """Per model and split: quantiles of ρ (route W and H), the median with its CI, route agreement."""
    out = {}
    for mi, s in enumerate(data["models"]):
        for si, name in enumerate(SPLITS):
            d = s[name]
            rw = np.asarray(d["rho_w"], dtype=np.float64)
            rh = np.asarray(d["rho_h"], dtype=np.float64)
            rng = np.random.default_rng([seed, mi, si, 6])
            st = {
                "median_w": bootstrap_quantile_ci(rw, 0.5, B=cfg.bootstrap, level=cfg.ci_level, rng=rng),
                "q_w": [float(np.quantile(rw, q)) for q in QUANTILES],
                "q_h": [float(np.quantile(rh, q)) for q in QUANTILES],
                "max_h": float(np.max(rh)), "max_w": float(np.max(rw)),
                "route_err_max": float(np.max(np.asarray(d["route_err"], dtype=np.float64))),
                "n": int(len(rw)),
            }
            if d.get("fd_inside"):
                inside = np.asarray(d["fd_inside"], dtype=np.float64) > 0.5
                exc = np.asarray(d["fd_excess"], dtype=np.float64)[inside]
                frho = np.asarray(d["fd_rho"], dtype=np.float64)[inside]
                st["fd"] = {"n_inside": int(inside.sum()), "n": int(len(inside)),
                            "max_excess": float(exc.max()) if len(exc) else math.nan,
                            "max_rho": float(frho.max()) if len(frho) else math.nan,
                            "median_rho": float(np.median(frho)) if len(frho) else math.nan}
            tr_r, tr_gn = np.asarray(d["tr_r"], dtype=np.float64), np.asarray(d["tr_gn"], dtype=np.float64)
            if len(tr_r):
                st["obj_term_abs_q"] = [float(np.quantile(np.abs(tr_r), q)) for q in QUANTILES]
                st["obj_ratio_median"] = float(np.median(np.abs(tr_r) / np.abs(tr_gn)))
            out[f"{_key(s['kind'], s['block'], s['beta'])}/{name}"] = st
    return out


# ----------------------------------------------------------------------------------------------
# run / check
# ----------------------------------------------------------------------------------------------
def _validate(cfg: Config) -> None:
    if not cfg.blocks or not cfg.betas:
        raise ValueError("blocks, betas: each needs at least one value")
    for name in ("min_points", "min_region_points"):
        if isinstance(getattr(cfg, name), bool) or not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            raise ValueError(f"{name}: expected a positive int, got {getattr(cfg, name)!r}")
    for name in ("zero_threshold", "ratio_threshold", "route_rtol", "fd_step", "fd_margin"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"{name}: expected > 0, got {getattr(cfg, name)!r}")
    if cfg.n_test < 2:
        raise ValueError(f"n_test: expected at least 2, got {cfg.n_test}")


def _fig3_like(cfg: Config, **over) -> fig3.Config:
    kw = {k: getattr(cfg, k) for k in MODEL_FIELDS}
    kw.update(over)
    return fig3.Config(**kw)


def model_configs(cfg: Config, *, seed: int, device: str) -> list[tuple[str, int, float, Any]]:
    """(kind, b, β, TrainConfig) of every model: fig3's ELU models (same configs) and the ReLU control."""
    base = _fig3_like(cfg)
    out = [("elu", b, float(beta), fig3.model_config(base, beta=beta, block=b, seed=seed, device=device))
           for b in cfg.blocks for beta in cfg.betas]
    relu = _fig3_like(cfg, arch="mlp", hidden=cfg.relu_hidden, activation="relu", steps=cfg.relu_steps)
    out.append(("relu", cfg.relu_block, float(cfg.relu_beta),
                fig3.model_config(relu, beta=cfg.relu_beta, block=cfg.relu_block, seed=seed, device=device)))
    return out


def grid_configs(cfg: Config, *, seed: int, device: str) -> list:
    """The TrainConfigs of every model (fig3's ELU grid, one ensemble, and the ReLU control, alone)."""
    return [tc for _, _, _, tc in model_configs(cfg, seed=seed, device=device)]


def plan(config: Config, *, seed: int = 0, device: str = "cpu") -> list:
    """The work of ``config`` (:mod:`gracheck.experiments._plan`): fig3's ELU models (the same configs: shared
    jobs) and the ReLU control as ensembles, then R by both routes at ``n_test`` points per model."""
    from gracheck.experiments._plan import final_job, measure_probe, sum_estimates, training_jobs
    from gracheck.train import build_model

    _validate(config)
    models = model_configs(config, seed=seed, device=device)
    cfgs = grid_configs(config, seed=seed, device=device)
    by_kind = {kind: tc for kind, _, _, tc in models}
    n_kind = {kind: sum(k == kind for k, _, _, _ in models) for kind in by_kind}

    def probe(kind: str):
        def run_probe(dev: str, k: int) -> None:
            with torch_threads(config.num_threads):
                evaluate_model(build_model(by_kind[kind]), torch.rand(k, 1, 28, 28), device=dev,
                               eval_batch=config.eval_batch, fd=kind == "relu", fd_step=config.fd_step,
                               fd_margin=config.fd_margin)
        return run_probe

    def measure(dev: str):
        return sum_estimates([measure_probe(probe(kind), units=n_kind[kind] * config.n_test, batch=config.eval_batch,
                                            device=dev, key=(CLAIM_ID, kind, json.dumps(config_dict(config))),
                                            what=f"evaluate_model ({kind} decoder)") for kind in by_kind])

    return [*training_jobs(CLAIM_ID, cfgs), final_job(
        CLAIM_ID, what=f"R by both routes (full Hessians, float64; route FD for the ReLU control) at {config.n_test} held-out points × {len(cfgs)} "
                       "models; bootstrap statistics and figure not timed", measure=measure)]


def run(config: Config, *, seed: int, device: str, out_dir, progress: Callable[[str], None] | None = None) -> ExperimentResult:
    """Train (or load) the models, measure R by both routes (and route FD for the ReLU model), draw the figure."""
    from gracheck.data import mnist_images
    from gracheck.experiments._zoo import trained

    _validate(config)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch_threads(config.num_threads):
        x_test, _ = mnist_images("test", limit=config.n_test)
        grid = _zoo.train_grid(grid_configs(config, seed=seed, device=device), progress=progress)
        train_s = grid["seconds"]
        models = []
        for kind, b, beta, tc in model_configs(config, seed=seed, device=device):
            if progress is not None:
                progress(f"eq6: {kind} b={b}, β={beta:g}: evaluate")
            model, res = trained(tc, say=progress)
            ev = evaluate_model(model, x_test, device=device, eval_batch=config.eval_batch, fd=kind == "relu",
                                fd_step=config.fd_step, fd_margin=config.fd_margin)
            models.append({"kind": kind, "block": b, "beta": beta,
                           **{n: {k: v.tolist() for k, v in d.items()} for n, d in ev.items()}})
    data = {"models": models, "train_seconds": train_s, "grid": grid}
    stats = statistics(data, config, seed)
    lvl = config.ci_level
    metrics: dict[str, Metric] = {}
    for key, st in stats.items():
        qs = ", ".join(f"{q:.0%}: {v:.3g}" for q, v in zip(QUANTILES, st["q_w"]))
        metrics[f"{key}/rho_median"] = Metric(*st["median_w"], level=lvl, n=st["n"], unit="",
                                              note=f"‖R‖_F/‖JᵀH_pJ‖_F (route W); quantiles {qs}")
        metrics[f"{key}/rho_max_hessian_route"] = Metric(st["max_h"], n=st["n"], unit="",
                                                         note="max over points, route H (full Hessian − JᵀH_pJ)")
        metrics[f"{key}/route_disagreement_max"] = Metric(st["route_err_max"], n=st["n"], unit="",
                                                          note="max ‖R_H − R_W‖_F/‖JᵀH_pJ‖_F")
        if "fd" in st:
            fd = st["fd"]
            metrics[f"{key}/fd_worst_entry_over_tolerance"] = Metric(
                fd["max_excess"], n=fd["n_inside"], unit="",
                note=f"route FD (central differences of the gradient inside one linear region, {fd['n_inside']} of "
                     f"{fd['n']} points): worst |H_FD − JᵀH_pJ| / ('finite-difference' tolerance); "
                     f"max ρ {fd['max_rho']:.3g}, median ρ {fd['median_rho']:.3g}")
        if "obj_term_abs_q" in st:
            metrics[f"{key}/half_tr_R_Sigma_median_abs"] = Metric(
                st["obj_term_abs_q"][2], n=st["n"], unit="nats per example",
                note=f"|½tr(RΣ)|, the dropped term's effect on Eq. 4; 95% quantile {st['obj_term_abs_q'][4]:.3g}; "
                     f"median |tr(RΣ)|/|tr(JᵀH_pJΣ)| = {st['obj_ratio_median']:.3g}")
    figures = [str(p) for p in draw_figures(data, stats, config, seed, out_dir)]
    notes = [
        f"ELU models: fig3's {config.arch} β-VAEs ({config.hidden if config.arch == 'mlp' else f'width {config.width:g}'}),"
        f" d = {config.latent_dim}, {config.steps} steps; ReLU control: MLP {config.relu_hidden} ReLU + sigmoid, "
        f"b = {config.relu_block}, β = {config.relu_beta:g}, {config.relu_steps} steps; seed {seed}.",
        f"R at the posterior mean of the first {config.n_test} MNIST test images, float64 on {device}.",
        f"Training in this run: {train_s:.1f} s for {grid['trained']} of {grid['models']} models "
        f"(ensembles of {grid['ensembles'] or 'none'}; {grid['cached']} loaded from the model cache).",
    ]
    return ExperimentResult(
        claim_id=CLAIM_ID, scale=scale_of(CONFIGS, config), config=config_dict(config), seeds=[seed], device=device,
        metrics=metrics, figures=figures, seconds=time.perf_counter() - t0, created=now_utc(), data=data, notes=notes,
    )


def check(res: ExperimentResult) -> list[CheckResult]:
    """Apply the three decision rules and the preconditions of the module docstring to ``res.data``."""
    from gracheck.base.tolerances import ErrorBound, tol

    cfg = config_from_dict(Config, res.config)
    seed = res.seeds[0] if res.seeds else 0
    stats = statistics(res.data, cfg, seed)
    lvl = f"{cfg.ci_level:.0%}"
    fdt = tol("finite-difference", ErrorBound)
    floor = tol("negative-control", ErrorBound).atol
    out: list[CheckResult] = []
    if not stats:
        raise RuntimeError("check: the result holds no models")
    for key, st in stats.items():
        kind, split_name = key.split(",")[0], key.split("/")[-1]
        n = st["n"]
        if kind == "relu" and split_name == "logits":
            out.extend(_rule1(key, st, stats.get(key[: -len("logits")] + "output"), cfg, fdt, floor, res.scale, seed))
        if kind == "elu" and split_name == "output":
            med, lo, hi = st["median_w"]
            qs = ", ".join(f"{q:.0%} {v:.3g}" for q, v in zip(QUANTILES, st["q_w"]))
            d = verdicts.one_sided((lo, hi), cfg.ratio_threshold, claimed="below", level=cfg.ci_level,
                                   what=f"median ρ of the ELU + sigmoid decoder [{key}]")
            note = "" if d.outcome != "inconclusive" else verdicts.decide_sentence(
                med, (lo, hi), n, unit="test points", paper_n=CONFIGS["paper"].n_test, high=cfg.ratio_threshold)
            out.append(decided(
                CLAIM_ID, d, seed=seed, note=note,
                measured={"median_rho": med, "ci": [lo, hi], "quantiles": dict(zip(map(str, QUANTILES), st["q_w"]))},
                expected=f"{lvl} CI of median ρ entirely below {cfg.ratio_threshold:g}",
                abs_err=hi, atol=cfg.ratio_threshold,
                detail=(f"[{key}, {res.scale}, {n} test points, seed {seed}] ELU + sigmoid decoder: ρ = "
                        f"‖Σ_k(∂log p/∂g_k)∇²g_k‖_F/‖JᵀH_pJ‖_F median {med:.3g} ({lvl} CI {lo:.3g}–{hi:.3g}); "
                        f"quantiles {qs}; verified iff the upper end < {cfg.ratio_threshold:g}, refuted iff the lower "
                        f"end ≥ {cfg.ratio_threshold:g}."),
            ))
    n_min = min(st["n"] for st in stats.values())
    d = verdicts.precondition(n_min >= cfg.min_points, name="'enough test points'",
                              measured=f"{n_min} per model", required=f"≥ {cfg.min_points}")
    out.append(decided(
        CLAIM_ID, d, seed=seed, measured={"min_points": n_min}, expected=f"≥ {cfg.min_points}", abs_err=float(n_min),
        atol=float(cfg.min_points), sense="exceeds",
        note="" if d.verified else f"--scale paper uses {CONFIGS['paper'].n_test:,} test points.",
        detail=f"[{res.scale}, seed {seed}] precondition of rule 2: every model measured at ≥ {cfg.min_points} test "
               f"points (fewest: {n_min})."))
    worst_key = max(stats, key=lambda k: stats[k]["route_err_max"])
    worst = stats[worst_key]["route_err_max"]
    d = verdicts.precondition(worst <= cfg.route_rtol, name="'the two routes to R agree'",
                              measured=f"worst ‖R_H − R_W‖_F/‖JᵀH_pJ‖_F = {worst:.2e} (at {worst_key})",
                              required=f"≤ {cfg.route_rtol:g} at every point")
    out.append(decided(
        CLAIM_ID, d, seed=seed,
        measured={"max_route_disagreement": worst, "cases": len(stats)},
        expected=f"‖R_H − R_W‖_F ≤ {cfg.route_rtol:g}·‖JᵀH_pJ‖_F at every point of every model and split",
        abs_err=worst, atol=cfg.route_rtol,
        detail=(f"[{res.scale}, {len(stats)} model×split cases, {stats[worst_key]['n']} test points each, seed {seed}] "
                f"precondition: full-Hessian route (H_f − JᵀH_pJ) vs weighted-decoder-Hessian route (Σ_k w_k∇²g_k): worst "
                f"relative disagreement {worst:.2e} (at {worst_key}); met iff ≤ {cfg.route_rtol:g}, else inconclusive."),
    ))
    return out


def _rule1(key: str, st: dict, control: dict | None, cfg: Config, fdt, floor: float, scale: str, seed: int
           ) -> list[CheckResult]:
    """Rule 1 (route FD) and its two preconditions (enough in-region points; the route fails on the sigmoid split)."""
    head = f"[{key}, {scale}, seed {seed}]"
    fd = st.get("fd")
    route_h = (f"route H (autodiff through relu'' = 0 by torch's convention, not a measurement): max ρ "
               f"{st['max_h']:.2e}; route W max {st['max_w']:.2e}")
    if fd is None:
        d = verdicts.precondition(False, name="'route FD was measured'", measured="no finite-difference data in the "
                                  "result", required="the ReLU model evaluated with fd=True")
        return [decided(CLAIM_ID, d, seed=seed, measured={"max_rho_hessian_route": st["max_h"]}, expected="route FD",
                        abs_err=None, atol=None, detail=f"{head} piecewise-linear decoder: {route_h}.")]
    out = []
    n_in = fd["n_inside"]
    d = verdicts.precondition(n_in >= cfg.min_region_points, name="'enough points inside one linear region'",
                              measured=f"{n_in} of {fd['n']} test points",
                              required=f"≥ {cfg.min_region_points}")
    out.append(decided(CLAIM_ID, d, seed=seed, measured={"points_in_region": n_in, "points": fd["n"]},
                       expected=f"≥ {cfg.min_region_points}", abs_err=float(n_in), atol=float(cfg.min_region_points),
                       sense="exceeds",
                       detail=f"{head} precondition of rule 1: test points whose stencil z ± {cfg.fd_step:g}·eⱼ keeps "
                              f"every ReLU input's sign (and |input| ≥ {cfg.fd_margin:g}): {n_in} of {fd['n']}."))
    cfd = (control or {}).get("fd")
    can_fail = cfd is not None and cfd["max_excess"] > 1.0 and cfd["median_rho"] >= floor
    measured_c = ("not measured" if cfd is None else
                  f"sigmoid split: max entry error {cfd['max_excess']:.3g}× the tolerance, median ρ {cfd['median_rho']:.3g}")
    d = verdicts.precondition(can_fail, name="'route FD can fail'", measured=measured_c,
                              required=f"> 1× the finite-difference tolerance and median ρ ≥ {floor:g} (negative control)")
    out.append(decided(CLAIM_ID, d, seed=seed, measured={} if cfd is None else dict(cfd),
                       expected=f"median ρ ≥ {floor:g}", abs_err=None if cfd is None else cfd["median_rho"], atol=floor,
                       sense="exceeds",
                       detail=f"{head} negative control of rule 1: the same network and route with the sigmoid inside "
                              f"the decoder (N(x; g, I) on the output; not piecewise linear, erratum "
                              f"erratum-sec7-relu-eq6-exact): {measured_c}."))
    exc = fd["max_excess"]
    d = verdicts.one_sided((exc, exc), 1.0, claimed="below", strict=False, level=None,
                           what=f"worst |H_FD − JᵀH_pJ| / (atol + rtol·|JᵀH_pJ|) of the piecewise-linear decoder [{key}]")
    out.append(decided(
        CLAIM_ID, d, seed=seed,
        measured={"max_excess": exc, "max_rho_fd": fd["max_rho"], "median_rho_fd": fd["median_rho"],
                  "max_rho_hessian_route": st["max_h"], "max_rho_weighted_route": st["max_w"], "points": n_in},
        expected=f"every entry within {fdt.atol:g} + {fdt.rtol:g}·|JᵀH_pJ| ('finite-difference')",
        abs_err=exc, atol=1.0,
        detail=(f"{head} piecewise-linear decoder (ReLU MLP, logits; sigmoid in the likelihood): H_f by central "
                f"differences of the gradient (h = {cfg.fd_step:g}) at the {n_in} points inside one linear region vs "
                f"JᵀH_pJ: worst entry error {exc:.3g}× the finite-difference tolerance, ‖H_FD − JᵀH_pJ‖_F/‖JᵀH_pJ‖_F "
                f"max {fd['max_rho']:.2e}; verified iff ≤ 1×. Beside it, {route_h}."),
    ))
    return out


# ----------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------
def draw_figures(data: dict[str, Any], stats: dict[str, Any], cfg: Config, seed: int, out_dir: Path) -> list[Path]:
    """Summary: ECDFs of ρ per model and split (log scale) and the median ρ against β with CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1e-18  # exact zeros are drawn at this level on the log axis
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.4))
    cmap = plt.get_cmap("viridis")
    elu = [s for s in data["models"] if s["kind"] == "elu"]
    betas = sorted({s["beta"] for s in elu})
    for s in data["models"]:
        for ax, name in zip(axes[:2], SPLITS):
            key = "rho_h" if (s["kind"] == "relu" and name == "logits") else "rho_w"
            r = np.sort(np.maximum(np.asarray(s[name][key], dtype=np.float64), floor))
            y = np.arange(1, len(r) + 1) / len(r)
            if s["kind"] == "elu":
                c = cmap(betas.index(s["beta"]) / max(1, len(betas) - 1))
                ax.step(r, y, where="post", color=c, lw=1.1, ls="-" if s["block"] == min(cfg.blocks) else "--",
                        label=f"ELU+σ, b={s['block']}, β={s['beta']:g}")
            else:
                ax.step(r, y, where="post", color="tab:red", lw=2,
                        label=f"ReLU, b={s['block']}, β={s['beta']:g}" + (" (route H)" if key == "rho_h" else ""))
    titles = {"output": "paper's split: g = sigmoid output, p = N(x; g, I)",
              "logits": "logits split: g = pre-sigmoid u, p = N(x; σ(u), I)"}
    for ax, name in zip(axes[:2], SPLITS):
        ax.axvline(cfg.ratio_threshold, color="k", ls="--", lw=0.9, label=f"threshold {cfg.ratio_threshold:g} (rule 2)")
        if name == "logits":
            ax.axvline(cfg.zero_threshold, color="tab:red", ls=":", lw=1, label=f"zero threshold {cfg.zero_threshold:g}")
        ax.set_xscale("log")
        ax.set_xlabel("ρ = ‖Σ_k (∂log p/∂g_k)∇²g_k‖_F / ‖JᵀH_pJ‖_F (dimensionless)")
        ax.set_ylabel("fraction of held-out points ≤ ρ")
        ax.set_title(f"ECDF of ρ, {titles[name]}", fontsize=9)
        ax.legend(fontsize=6.5, loc="upper left" if name == "output" else "center")
    for b in sorted({s["block"] for s in elu}):
        ks = [f"{_key('elu', b, beta)}/output" for beta in betas]
        v = np.array([stats[k]["median_w"] for k in ks])
        q95 = np.array([stats[k]["q_w"][4] for k in ks])
        axes[2].errorbar(betas, v[:, 0], yerr=[v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]], marker="o", capsize=3,
                         label=f"ELU+σ, b={b}: median (95% CI)")
        axes[2].plot(betas, q95, marker="x", ls=":", label=f"ELU+σ, b={b}: 95% quantile")
    axes[2].axhline(cfg.ratio_threshold, color="k", ls="--", lw=0.9, label=f"threshold {cfg.ratio_threshold:g}")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("β")
    axes[2].set_ylabel("ρ (dimensionless)")
    axes[2].set_title("Rule 2: median ρ per model, paper's split", fontsize=9)
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    n = len(data["models"][0]["output"]["rho_w"]) if data["models"] else 0
    arch = f"MLP {cfg.hidden}" if cfg.arch == "mlp" else f"App. D conv net (width {cfg.width:g})"
    fig.suptitle(f"[{scale_of(CONFIGS, cfg)} scale] Eq. 5/6 dropped term on trained MNIST decoders ({arch}, d = {cfg.latent_dim}, {cfg.steps} steps; "
                 f"ReLU control MLP {cfg.relu_hidden}, {cfg.relu_steps} steps), {n} held-out points, float64, seed {seed}; "
                 f"exact zeros drawn at {floor:g}", fontsize=9.5)
    fig.tight_layout()
    p = out_dir / "eq6_summary.png"
    save_figure(fig, p, dpi=100)
    plt.close(fig)
    return [p]
