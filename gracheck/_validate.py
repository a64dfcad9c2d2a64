"""Input validation shared by the library: every error names the argument and the problem."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def check_tensor(name: str, t: Any, *, min_dim: int = 0, finite: bool = True) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() < min_dim:
        raise ValueError(f"{name}: expected at least {min_dim} dimensions, got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.is_complex()):
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    # A NaN or Inf anywhere makes the sum NaN or Inf, so one reduction clears a finite tensor; only a
    # non-finite sum (a bad value, or an overflowing sum of finite ones) pays for the elementwise check
    # (a GRAE step checks its Jacobian [B, 784, d] every call: 1.9 ms → 0.07 ms at B = 64, d = 12).
    if finite and not _is_traced(t) and t.numel() and not bool(torch.isfinite(t.detach().sum())):
        bad = ~torch.isfinite(t.detach())
        if bool(bad.any()):
            n = int(bad.sum())
            raise ValueError(f"{name}: contains {n} NaN/Inf value(s) (shape {tuple(t.shape)})")
    return t


def _is_traced(t: Tensor) -> bool:
    # Inside torch.func transforms values cannot be inspected with .any()/bool(); skip data checks there,
    # and while torch.compile traces (a data-dependent branch would split the compiled graph).
    if torch.compiler.is_compiling():
        return True
    try:
        from torch._C._functorch import is_batchedtensor, is_gradtrackingtensor

        return bool(is_batchedtensor(t) or is_gradtrackingtensor(t))
    except Exception:  # pragma: no cover - private API moved
        return False


def check_beta(beta: Any) -> float | Tensor:
    """β must be a finite positive number (or a tensor of them, broadcast over the batch)."""
    if isinstance(beta, bool):
        raise TypeError("beta: expected a positive number, got a bool")
    if isinstance(beta, (int, float)):
        if not math.isfinite(beta) or beta <= 0:
            raise ValueError(f"beta: must be finite and > 0, got {beta!r}")
        return float(beta)
    if isinstance(beta, Tensor):
        if not _is_traced(beta):
            if not bool(torch.isfinite(beta).all()) or not bool((beta > 0).all()):
                raise ValueError(f"beta: must be finite and > 0 everywhere, got {beta}")
        return beta
    raise TypeError(f"beta: expected a float or a tensor, got {type(beta).__name__}")


def check_square(name: str, M: Tensor) -> int:
    if M.dim() < 2 or M.shape[-1] != M.shape[-2]:
        raise ValueError(f"{name}: expected shape [..., d, d], got {tuple(M.shape)}")
    return M.shape[-1]


def check_symmetric(name: str, M: Tensor) -> None:
    if _is_traced(M):
        return
    Md = M.detach()
    scale = Md.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    asym = ((Md - Md.transpose(-1, -2)).abs() / scale).max()
    limit = 1e3 * torch.finfo(M.dtype).eps
    if float(asym) > limit:
        raise ValueError(f"{name}: must be symmetric; max |M - Mᵀ| / max|M| = {float(asym):.3g} > {limit:.1g}")


def cholesky(name: str, A: Tensor, what: str) -> Tensor:
    """Lower Cholesky factor of ``A``; ValueError naming ``name``/``what`` if it is not positive definite."""
    L, info = torch.linalg.cholesky_ex(A)
    if not _is_traced(A) and bool((info > 0).any()):
        n = int((info > 0).sum())
        raise ValueError(f"{name}: {what} is not positive definite ({n} of {info.numel()} matrices failed Cholesky)")
    return L
