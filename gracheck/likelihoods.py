"""Observation models p(x | g): log-densities with every constant, and their Hessians in g (Sec. 5.1).

``g`` is the decoder output (the parameters of p(x|z) = p(x; g(z))). Both models
factorise over the D output coordinates, so the Hessian H_p = ∇²_g log p(x; g)
is diagonal and ``hess_diag`` returns its diagonal ``[B, D]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gracheck.base.validate import FLOAT_DTYPES, is_traced, check_tensor


def _flat_pair(x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """x, g ``[B, ...]`` flattened to ``[B, D]`` (B = 0 allowed: an empty batch gives an empty result)."""
    check_tensor("x", x, min_dim=1, dtypes=FLOAT_DTYPES)
    check_tensor("g", g, min_dim=1, dtypes=FLOAT_DTYPES)
    if x.shape[0] != g.shape[0]:
        raise ValueError(f"x, g: batch sizes differ ({x.shape[0]} vs {g.shape[0]})")
    xf, gf = x.reshape(x.shape[0], math.prod(x.shape[1:])), g.reshape(g.shape[0], math.prod(g.shape[1:]))
    if xf.shape != gf.shape:
        raise ValueError(f"x, g: shapes {tuple(x.shape)} and {tuple(g.shape)} do not flatten to the same [B, D]")
    return xf, gf


class GaussianObs:
    """p(x | g) = N(x; g, σ²I) with σ² = ``variance``.

    log p = −‖x − g‖²/(2σ²) − D/2 · log(2πσ²); H_p = −I/σ² (Sec. 5.1: −I for σ² = 1).
    """

    def __init__(self, variance: float = 1.0) -> None:
        if isinstance(variance, bool) or not isinstance(variance, (int, float)):
            raise TypeError(f"variance: expected a positive float, got {type(variance).__name__}")
        if not math.isfinite(variance) or variance <= 0:
            raise ValueError(f"variance: must be finite and > 0, got {variance!r}")
        self.variance = float(variance)

    def __repr__(self) -> str:
        return f"GaussianObs(variance={self.variance})"

    def log_prob(self, x: Tensor, g: Tensor) -> Tensor:
        """log N(x; g, σ²I) per example: x, g ``[B, ...]`` → ``[B]`` (nats, constants included)."""
        xf, gf = _flat_pair(x, g)
        D = xf.shape[1]
        sq = (xf - gf).pow(2).sum(-1)
        return -0.5 * sq / self.variance - 0.5 * D * math.log(2 * math.pi * self.variance)

    def grad(self, x: Tensor, g: Tensor) -> Tensor:
        """∂ log p / ∂g = (x − g)/σ², ``[B, D]``."""
        xf, gf = _flat_pair(x, g)
        return (xf - gf) / self.variance

    def hess_diag(self, x: Tensor, g: Tensor) -> Tensor:
        """Diagonal of ∇²_g log p: −1/σ² everywhere, ``[B, D]``."""
        xf, gf = _flat_pair(x, g)
        return torch.full_like(gf, -1.0 / self.variance)


class BernoulliObs:
    """Independent Bernoulli pixels: log p = Σᵢ xᵢ log gᵢ + (1 − xᵢ) log(1 − gᵢ).

    With ``logits=False`` (default) ``g`` holds probabilities in (0, 1) and
    H_p = diag(−xᵢ/gᵢ² − (1 − xᵢ)/(1 − gᵢ)²), which for binary xᵢ is the paper's
    −1/(1 − xᵢ − gᵢ)² (Sec. 5.1). With ``logits=True`` ``g`` holds logits ℓ (the
    decoder's pre-sigmoid output), log p = −x·softplus(−ℓ) − (1 − x)·softplus(ℓ) with
    softplus(t) = logaddexp(0, t), which is exact to rounding at every ℓ (no threshold, no
    cancellation between xℓ and softplus(ℓ)), and the Hessian is with respect to ℓ:
    −σ(ℓ)σ(−ℓ), bounded and free of the 1/g² blow-up (written with σ(−ℓ) rather than
    1 − σ(ℓ), so it stays accurate, and non-zero, for large positive ℓ). ``x`` may be binary or in [0, 1] (continuous Bernoulli
    *without* its normaliser, as is common for MNIST intensities).
    """

    def __init__(self, logits: bool = False) -> None:
        if not isinstance(logits, bool):
            raise TypeError(f"logits: expected a bool, got {type(logits).__name__}")
        self.logits = logits

    def __repr__(self) -> str:
        return f"BernoulliObs(logits={self.logits})"

    def _check(self, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        xf, gf = _flat_pair(x, g)
        if not is_traced(xf) and bool(((xf < 0) | (xf > 1)).any()):
            raise ValueError("x: Bernoulli observations must lie in [0, 1]")
        if not self.logits and not is_traced(gf):
            if bool(((gf.detach() <= 0) | (gf.detach() >= 1)).any()):
                raise ValueError("g: Bernoulli probabilities must lie strictly inside (0, 1); pass logits=True for logits")
        return xf, gf

    def log_prob(self, x: Tensor, g: Tensor) -> Tensor:
        """Σᵢ log Bernoulli(xᵢ; gᵢ) per example, ``[B]`` (nats)."""
        xf, gf = self._check(x, g)
        if self.logits:
            zero = gf.new_zeros(())
            return -(xf * torch.logaddexp(zero, -gf) + (1 - xf) * torch.logaddexp(zero, gf)).sum(-1)
        return (xf * torch.log(gf) + (1 - xf) * torch.log1p(-gf)).sum(-1)

    def grad(self, x: Tensor, g: Tensor) -> Tensor:
        """∂ log p / ∂g, ``[B, D]``: x/g − (1 − x)/(1 − g), or x − σ(ℓ) = xσ(−ℓ) − (1 − x)σ(ℓ) for logits."""
        xf, gf = self._check(x, g)
        if self.logits:
            return xf * torch.sigmoid(-gf) - (1 - xf) * torch.sigmoid(gf)
        return xf / gf - (1 - xf) / (1 - gf)

    def hess_diag(self, x: Tensor, g: Tensor) -> Tensor:
        """Diagonal of ∇²_g log p, ``[B, D]`` (always < 0)."""
        xf, gf = self._check(x, g)
        if self.logits:
            return -torch.sigmoid(gf) * torch.sigmoid(-gf)
        return -xf / gf.pow(2) - (1 - xf) / (1 - gf).pow(2)
