"""The kit for model-level candidates: what the checks of the objectives and of the Jacobian engine compute *with*.

Nothing here states a claim. A model-level candidate takes data, a decoder and the encoder's outputs and returns
per-example values ``[B]`` (or a Jacobian ``[B, D, d]``); the claims that take one (Eq. 2, 5, 7, 12, 13 and the
column estimator of Eq. 14) compare it with routes that share no code with the library's objectives:

* decoders as float64 ``nn.Sequential`` modules with explicit seeded weights (:func:`mlp_module`,
  :func:`linear_module`, :func:`conv_module`), and their Jacobians by the chain rule written out layer by layer
  (:func:`sequential_jacobian`: weights, BatchNorm scales and activation derivatives multiplied by hand, no
  autodiff) or by reverse mode through a copy whose BatchNorm statistics are frozen (:func:`frozen_decoder`);
* the log-densities and the KL written out here (:func:`gaussian_log_density`, :func:`bernoulli_log_pmf`,
  :func:`bernoulli_hess_diag`, :func:`kl_to_standard_normal` by ``torch.distributions``), not taken from
  :mod:`gracheck.likelihoods` or :mod:`gracheck.objectives`;
* the plumbing: :func:`call_model_candidate` (every ``nn.Module`` argument deep-copied for each call, so a
  candidate that switches a decoder to eval mode, updates running statistics or edits weights changes neither
  the next case nor the reference) and :func:`mc_over_calls` / :func:`mc_agrees_per_example` for a stochastic
  candidate: its mean over independent *calls* against an exact expectation, in standard errors. Calls, not rows,
  are the independent draws, so a candidate that shares one draw across its batch (still unbiased) is judged
  fairly, and the global RNG is forked and seeded around the calls (a candidate that ignores the generator
  still gives a reproducible check and leaves the caller's RNG alone).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from gracheck.base.evidence import CheckResult, result
from gracheck.base.tolerances import ErrorBound, StandardErrors, tol
from gracheck.theory.routes import MLP, call_candidate
from gracheck.theory.strategies import DTYPE, normal

# ---------------------------------------------------------------- decoders as modules

_NN_ACTS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),  # routes.ACTS uses slope 0.1
}


def _quiet_init(make: Callable[[], nn.Module]) -> nn.Module:
    """``make()`` with the global RNG forked: a module's default initialisation draws from it, and the checks never
    touch it (every weight used is set explicitly afterwards)."""
    with torch.random.fork_rng(devices=[]):
        return make()


def linear_module(W: Tensor, b: Tensor) -> nn.Linear:
    """``nn.Linear`` in float64 computing z ↦ Wz + b (W ``[D, d]``, b ``[D]``)."""
    lin = _quiet_init(lambda: nn.Linear(W.shape[1], W.shape[0], dtype=DTYPE))
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    return lin


def mlp_module(net: MLP, *, batchnorm: bool = False, gen: torch.Generator | None = None) -> nn.Sequential:
    """The same function as the plain-callable :class:`~gracheck.theory.routes.MLP` ``net``, as an ``nn.Sequential``
    (Linear, act, Linear[, Sigmoid]); with ``batchnorm`` a BatchNorm1d (affine weights drawn from ``gen``, running
    statistics drawn too, so eval and training mode differ) follows the first Linear."""
    layers: list[nn.Module] = [linear_module(net.W1, net.b1)]
    if batchnorm:
        if gen is None:
            raise ValueError("gen: a BatchNorm decoder needs a generator for its affine weights and running statistics")
        h = net.W1.shape[0]
        bn = nn.BatchNorm1d(h, dtype=DTYPE)
        with torch.no_grad():
            bn.weight.copy_(0.5 + torch.rand(h, generator=gen, dtype=DTYPE))
            bn.bias.copy_(0.3 * normal(gen, h))
            bn.running_mean.copy_(0.5 * normal(gen, h))
            bn.running_var.copy_(0.5 + torch.rand(h, generator=gen, dtype=DTYPE))
        layers.append(bn)
    layers += [_NN_ACTS[net.act_name](), linear_module(net.W2, net.b2)]
    if net.sigmoid:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def conv_module(gen: torch.Generator, d: int, *, channels: int = 3, batchnorm: bool = True) -> nn.Sequential:
    """A small transposed-convolution decoder like Appendix D's, float64: Linear → [B, 4, 2, 2] →
    ConvTranspose2d(4→channels, k3, s2) [→ BatchNorm2d] → ELU → ConvTranspose2d(channels→1, k2, s1) → Flatten:
    z ``[B, d]`` ↦ ``[B, 36]`` (a 6×6 image)."""
    lin = linear_module(normal(gen, 16, d) / math.sqrt(d), 0.3 * normal(gen, 16))
    c1 = _quiet_init(lambda: nn.ConvTranspose2d(4, channels, 3, stride=2, dtype=DTYPE))
    c2 = _quiet_init(lambda: nn.ConvTranspose2d(channels, 1, 2, stride=1, dtype=DTYPE))
    with torch.no_grad():
        for c in (c1, c2):
            c.weight.copy_(normal(gen, *c.weight.shape) * 0.6)
            c.bias.copy_(0.2 * normal(gen, *c.bias.shape))
    layers: list[nn.Module] = [lin, nn.Unflatten(1, (4, 2, 2)), c1]
    if batchnorm:
        bn = nn.BatchNorm2d(channels, dtype=DTYPE)
        with torch.no_grad():
            bn.weight.copy_(0.5 + torch.rand(channels, generator=gen, dtype=DTYPE))
            bn.bias.copy_(0.3 * normal(gen, channels))
            bn.running_mean.copy_(0.5 * normal(gen, channels))
            bn.running_var.copy_(0.5 + torch.rand(channels, generator=gen, dtype=DTYPE))
        layers.append(bn)
    layers += [nn.ELU(), c2, nn.Flatten()]
    return nn.Sequential(*layers)


def _bn_stats(bn: nn.modules.batchnorm._BatchNorm, a: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, variance) a BatchNorm normalises ``a`` with: the batch's (biased variance) in training mode, the
    running statistics in eval mode."""
    if bn.training:
        dims = [0] + list(range(2, a.dim()))
        return a.mean(dims), a.var(dims, unbiased=False)
    return bn.running_mean, bn.running_var


def _bn_apply(bn: nn.modules.batchnorm._BatchNorm, a: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    shape = [1, -1] + [1] * (a.dim() - 2)
    y = (a - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + bn.eps)
    return y * bn.weight.reshape(shape) + bn.bias.reshape(shape) if bn.affine else y


def _act_derivative(m: nn.Module, a: Tensor) -> Tensor:
    """The elementwise derivative of an activation module at its input ``a``, written out by hand."""
    if isinstance(m, nn.Tanh):
        return 1 - torch.tanh(a) ** 2
    if isinstance(m, nn.Sigmoid):
        s = torch.sigmoid(a)
        return s * (1 - s)
    if isinstance(m, nn.ELU):
        return torch.where(a > 0, torch.ones_like(a), m.alpha * torch.exp(a))
    if isinstance(m, nn.Softplus):
        return torch.where(a * m.beta > m.threshold, torch.ones_like(a), torch.sigmoid(m.beta * a))
    if isinstance(m, nn.LeakyReLU):
        return torch.where(a > 0, torch.ones_like(a), torch.full_like(a, m.negative_slope))
    if isinstance(m, nn.ReLU):
        return (a > 0).to(a.dtype)
    raise TypeError(f"no hand-written derivative for {type(m).__name__}")


def sequential_jacobian(seq: nn.Sequential, Z: Tensor) -> Tensor:
    """Per-example Jacobians ``[B, D, d]`` of an ``nn.Sequential`` of Linear, BatchNorm1d and elementwise activations
    by the chain rule written out: J = Π_layers (Wₗ, diag(γ/√(var + ε)), diag(act′(aₗ))), with BatchNorm's statistics
    those it normalises with (the batch's in training mode, held constant; the running ones in eval mode). No autodiff."""
    B, d = Z.shape
    a = Z
    M = torch.eye(d, dtype=Z.dtype).expand(B, d, d)
    with torch.no_grad():
        for m in seq:
            if isinstance(m, nn.Linear):
                M = m.weight @ M
                a = m(a)
            elif isinstance(m, nn.BatchNorm1d):
                mean, var = _bn_stats(m, a)
                scale = (m.weight if m.affine else 1.0) / torch.sqrt(var + m.eps)
                M = scale.unsqueeze(-1) * M
                a = _bn_apply(m, a, mean, var)
            else:
                M = _act_derivative(m, a).unsqueeze(-1) * M
                a = m(a)
    return M


def frozen_decoder(seq: nn.Sequential, Z: Tensor) -> Callable[[Tensor], Tensor]:
    """z ``[d]`` ↦ g(z) ``[D]`` (flattened) for one example, with every BatchNorm of ``seq`` replaced by the affine map
    it applies to the batch ``Z`` (batch statistics in training mode, running ones in eval mode) held constant; for
    reverse-mode Jacobians (``torch.func.jacrev``) of the per-example map."""
    stats: list[tuple[Tensor, Tensor] | None] = []
    with torch.no_grad():
        a = Z
        for m in seq:
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                mean, var = _bn_stats(m, a)
                stats.append((mean.clone(), var.clone()))
                a = _bn_apply(m, a, mean, var)
            else:
                stats.append(None)
                a = m(a)

    def f(z: Tensor) -> Tensor:
        a = z.unsqueeze(0)
        for m, st in zip(seq, stats):
            a = m(a) if st is None else _bn_apply(m, a, *st)
        return a.reshape(-1)

    return f


# ---------------------------------------------------------------- densities and KL, written out here


def gaussian_log_density(x: Tensor, g: Tensor) -> Tensor:
    """log N(x; g, I) per example, ``[B, D]`` → ``[B]``: −½‖x − g‖² − (D/2) log 2π."""
    D = x.shape[-1]
    return -0.5 * (x - g).pow(2).sum(-1) - 0.5 * D * math.log(2 * math.pi)


def bernoulli_log_pmf(x: Tensor, p: Tensor) -> Tensor:
    """Σᵢ xᵢ log pᵢ + (1 − xᵢ) log(1 − pᵢ), ``[..., D]`` → ``[...]``."""
    return (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(-1)


def bernoulli_hess_diag(x: Tensor, p: Tensor) -> Tensor:
    """diag ∇²_p of :func:`bernoulli_log_pmf`: −xᵢ/pᵢ² − (1 − xᵢ)/(1 − pᵢ)² (= −1/(1 − xᵢ − pᵢ)² for binary x, §5.1)."""
    return -x / p**2 - (1 - x) / (1 - p) ** 2


def kl_to_standard_normal(mean: Tensor, cov: Tensor) -> Tensor:
    """KL(N(mean, cov) ‖ N(0, I)) ``[B]`` by ``torch.distributions`` (not the library's ``gaussian_kl``)."""
    from torch.distributions import MultivariateNormal, kl_divergence

    d = mean.shape[-1]
    prior = MultivariateNormal(torch.zeros(d, dtype=mean.dtype), torch.eye(d, dtype=mean.dtype))
    return kl_divergence(MultivariateNormal(mean, covariance_matrix=cov), prior)


# ---------------------------------------------------------------- calling a candidate


def call_model_candidate(candidate: Callable, *args: Any, shape: tuple[int, ...]) -> Tensor:
    """``candidate(*args)`` as a float64 tensor of ``shape``, with every ``nn.Module`` argument deep-copied (and tensors
    cloned) for this call; :class:`~gracheck.theory.routes.CandidateError` when it raises or returns something else."""
    args = tuple(copy.deepcopy(a) if isinstance(a, nn.Module) else a for a in args)
    return call_candidate(candidate, *args, shape=shape)


MC_CALLS = 40  # independent calls of a stochastic candidate per check (tolerance 'montecarlo-calls-5se')


def mc_over_calls(
    candidate: Callable, make_args: Callable[[torch.Generator], tuple], groups: Tensor, seed: int, n_calls: int = MC_CALLS
) -> Tensor:
    """``n_calls`` independent calls of a stochastic candidate; returns ``[n_calls, E]``: per call, the mean of its
    values over the rows of each example (``groups [B]`` maps a row to its example 0…E−1).

    Call i gets ``make_args(generator)`` with its own generator (seeded from ``seed`` and i); the global RNG is forked
    and seeded with ``seed`` around all calls. The calls are independent whether the candidate draws per row or once
    per batch, so their means are the samples for :func:`mc_agrees_per_example`."""
    E = int(groups.max()) + 1
    counts = torch.bincount(groups, minlength=E).to(DTYPE)
    out = torch.empty(n_calls, E, dtype=DTYPE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(n_calls):
            gen = torch.Generator().manual_seed(1_000_003 * (seed + 1) + i)
            v = call_model_candidate(candidate, *make_args(gen), shape=(groups.numel(),))
            out[i] = torch.zeros(E, dtype=DTYPE).index_add_(0, groups, v) / counts
    return out


def mc_agrees_per_example(cid: str, method: str, samples: Tensor, exact: Tensor, detail: str, seed: int,
                          parts: dict[str, Tensor] | None = None, slips: dict[str, Tensor] | None = None) -> CheckResult:
    """Per example e, the mean of ``samples[:, e]`` (independent calls) against ``exact[e]``: pass iff for every e
    |mean − exact| ≤ k·s.e. + atol + rtol·|exact| (k from ``montecarlo-calls-5se``; atol, rtol from
    ``candidate-float64``, the rounding floor that holds a candidate whose calls all agree, s.e. 0, to float64
    rounding). Reports the worst example; on a failure, names the slips (of the statement's terms ``parts``, and
    the named ``slips``: expected differences per example) that match within the same allowance."""
    k = tol("montecarlo-calls-5se", StandardErrors).k
    fl = tol("candidate-float64", ErrorBound)
    n = samples.shape[0]
    means = samples.mean(0)
    ses = samples.std(0, unbiased=True) / math.sqrt(n)
    errs = (means - exact).abs()
    allowed = k * ses + fl.atol + fl.rtol * exact.abs()
    finite = bool(torch.isfinite(means).all() and torch.isfinite(ses).all())
    ratio = errs / allowed
    w = int(torch.argmax(torch.nan_to_num(ratio, nan=float("inf"))))
    ok = finite and bool((errs <= allowed).all())
    se_w = float(ses[w])
    spread = f"t = {float(errs[w]) / se_w:.2f}" if se_w > 0 else f"every call gave the same value, |mean − exact| = {float(errs[w]):.3g}"
    res = result(
        cid, method, passed=ok, measured=float(means[w]), expected=float(exact[w]),
        abs_err=float(errs[w]) if finite else float("inf"), rel_err=float(errs[w] / exact[w].abs()) if float(exact[w]) else None,
        atol=float(allowed[w]), rtol=0.0, seed=seed,
        detail=f"{detail}; worst of {samples.shape[1]} examples: mean over N = {n} independent calls {float(means[w]):.6g} "
        f"± {se_w:.3g} (s.e.) vs exact {float(exact[w]):.6g}, {spread} [tolerance 'montecarlo-calls-5se': |mean − exact| "
        f"≤ {k:g} s.e. + the 'candidate-float64' rounding floor]",
    )
    named = term_slips(parts or {}) + [Slip(n, v) for n, v in (slips or {}).items()]
    return diagnose(res, means, exact, named, allowed)


def replicate(t: Tensor, r: int) -> Tensor:
    """Each example of ``t [E, ...]`` repeated ``r`` times in a row: ``[E·r, ...]`` (rows e·r … e·r + r − 1 are example e)."""
    return t.repeat_interleave(r, dim=0)


def replicate_groups(E: int, r: int) -> Tensor:
    """The example index of each row of :func:`replicate` ``[E·r]``."""
    return torch.arange(E).repeat_interleave(r)


# ---------------------------------------------------------------- naming what a failing candidate got wrong


class Slip:
    """A plausible mistake and the difference (candidate − reference) ``residual`` it would produce on a check's cases."""

    def __init__(self, name: str, residual: Tensor) -> None:
        self.name, self.residual = name, residual.detach().to(DTYPE).reshape(-1)


def term_slips(parts: dict[str, Tensor]) -> list[Slip]:
    """The slips of a statement's additive terms (name → value per case): each term missing, doubled (β in place of
    β/2), halved (β/2 in place of β) or with its sign flipped."""
    out = []
    for name, v in parts.items():
        v = v.detach().to(DTYPE).reshape(-1)
        out += [Slip(f"{name} is missing", -v), Slip(f"{name} enters twice (e.g. β in place of β/2)", v),
                Slip(f"{name} enters halved (e.g. β/2 in place of β)", -0.5 * v), Slip(f"{name} has the wrong sign", -2 * v)]
    return out


def diagnose(res: CheckResult, measured: Tensor, expected: Tensor, slips: list[Slip], slack: Tensor | None = None) -> CheckResult:
    """``res`` with, when it failed, the slips whose predicted difference matches the candidate's (within ``slack``
    elementwise; default: the result's atol + rtol·|expected|) named in its detail. A slip that predicts no difference
    on these cases is never named. The check's verdict does not depend on this: it only explains a failure."""
    if res.passed:
        return res
    diff = (measured.detach().to(DTYPE) - expected.detach().to(DTYPE)).reshape(-1)
    if not bool(torch.isfinite(diff).all()):
        return res
    if slack is None:
        slack = (res.atol or 0.0) + (res.rtol or 0.0) * expected.detach().to(DTYPE).abs().reshape(-1)
    slack = torch.as_tensor(slack, dtype=DTYPE).reshape(-1).expand_as(diff)
    hits = [s.name for s in slips if s.residual.shape == diff.shape and bool(((diff - s.residual).abs() <= slack).all())
            and not bool((s.residual.abs() <= slack).all())]
    why = ("diagnosis: the candidate's difference from the reference is what this slip gives: " + "; or ".join(hits)
           if hits else f"diagnosis: the difference (up to {float(diff.abs().max()):.3g}) matches none of the {len(slips)} "
           "slips this check knows (a missing, doubled, halved or sign-flipped term, and the ones named in its docstring)")
    return dataclasses.replace(res, detail=f"{res.detail}. {why}")


class Cases:
    """Collects a check's cases (candidate value, reference value, the statement's terms, the named slips) and compares
    them in one :class:`CheckResult` whose failure names the slips that match (:func:`diagnose`). A slip a case does not
    mention predicts no difference there."""

    def __init__(self) -> None:
        self.meas: list[Tensor] = []
        self.exp: list[Tensor] = []
        self._slips: dict[str, list[tuple[int, Tensor]]] = {}
        self._n = 0

    def add(self, measured: Tensor, expected: Tensor, parts: dict[str, Tensor] | None = None,
            slips: dict[str, Tensor] | None = None) -> None:
        m, e = measured.detach().to(DTYPE).reshape(-1), expected.detach().to(DTYPE).reshape(-1)
        if m.shape != e.shape:
            raise ValueError(f"measured/expected: shapes differ, {tuple(m.shape)} vs {tuple(e.shape)}")
        named = term_slips(parts or {}) + [Slip(k, v) for k, v in (slips or {}).items()]
        for s in named:
            self._slips.setdefault(s.name, []).append((self._n, s.residual.expand(m.numel()) if s.residual.numel() == 1 else s.residual))
        self.meas.append(m)
        self.exp.append(e)
        self._n += 1

    def slips(self) -> list[Slip]:
        sizes = [t.numel() for t in self.meas]
        out = []
        for name, got in self._slips.items():
            parts = [torch.zeros(n, dtype=DTYPE) for n in sizes]
            for i, r in got:
                parts[i] = r
            out.append(Slip(name, torch.cat(parts)))
        return out

    def compare(self, cid: str, method: str, tol_name: str, detail: str, seed: int) -> CheckResult:
        from gracheck.base.evidence import tcompare

        m, e = torch.cat(self.meas), torch.cat(self.exp)
        return diagnose(tcompare(cid, method, m, e, tol_name, detail, seed), m, e, self.slips())
