"""Input validation shared by the library: every error names the argument and the problem."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


# The dtypes the objectives, observation models and posteriors compute in. float16/bfloat16 are
# refused there: CPU Cholesky/QR do not exist for them, and sums over D = 784–12288 pixels in an
# 8–11-bit mantissa lose the objective's value. (Networks may run under bf16 autocast; the trainer
# casts their outputs to float32 before the objectives.)
FLOAT_DTYPES = (torch.float32, torch.float64)


def check_tensor(name: str, t: Any, *, min_dim: int = 0, finite: bool = True, dtypes: tuple | None = None) -> Tensor:
    """A real floating-point tensor with ≥ ``min_dim`` dimensions, finite unless ``finite=False``,
    of one of ``dtypes`` when given (e.g. :data:`FLOAT_DTYPES`); errors name ``name``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() < min_dim:
        raise ValueError(f"{name}: expected at least {min_dim} dimensions, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a real floating-point tensor, got dtype {t.dtype}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(
            f"{name}: dtype {t.dtype} is not supported; gracheck's objectives compute in "
            f"{' or '.join(str(d).replace('torch.', '') for d in dtypes)} (cast with .float(); under autocast, "
            "cast the networks' outputs to float32 before the objectives, as gracheck.train does)"
        )
    # A NaN or Inf anywhere makes the sum NaN or Inf, so one reduction clears a finite tensor; only a
    # non-finite sum (a bad value, or an overflowing sum of finite ones) pays for the elementwise check
    # (a GRAE step checks its Jacobian [B, 784, d] every call: 1.9 ms → 0.07 ms at B = 64, d = 12).
    if finite and not is_traced(t) and t.numel() and not bool(torch.isfinite(t.detach().sum())):
        bad = ~torch.isfinite(t.detach())
        if bool(bad.any()):
            n = int(bad.sum())
            raise ValueError(f"{name}: contains {n} NaN/Inf value(s) (shape {tuple(t.shape)})")
    return t


def is_traced(t: Tensor) -> bool:
    """True inside torch.func transforms, where values cannot be inspected with .any()/bool(), and while
    torch.compile traces (a data-dependent branch would split the compiled graph): data checks skip."""
    if torch.compiler.is_compiling():
        return True
    try:
        from torch._C._functorch import is_batchedtensor, is_gradtrackingtensor

        return bool(is_batchedtensor(t) or is_gradtrackingtensor(t))
    except Exception:  # pragma: no cover - private API moved
        return False


def check_beta(beta: Any, batch_shape: tuple | torch.Size | None = None) -> float | Tensor:
    """β must be a finite positive number (or a tensor of them, broadcast over the batch).

    With ``batch_shape``, a tensor β must broadcast to it without enlarging it (one β per
    example, or a scalar); a β of shape [B, 1] against a batch [B] would otherwise broadcast the
    result to [B, B].
    """
    if batch_shape is not None and isinstance(beta, Tensor):
        batch = tuple(batch_shape)
        try:
            ok = tuple(torch.broadcast_shapes(beta.shape, batch)) == batch
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"beta: shape {tuple(beta.shape)} does not broadcast to the batch shape {batch} "
                             "(pass a float, a 0-d tensor or one β per example)")
    if isinstance(beta, bool):
        raise TypeError("beta: expected a positive number, got a bool")
    if isinstance(beta, (int, float)):
        if not math.isfinite(beta) or beta <= 0:
            raise ValueError(f"beta: must be finite and > 0, got {beta!r}")
        return float(beta)
    if isinstance(beta, Tensor):
        if not beta.is_floating_point():
            raise TypeError(f"beta: expected a real floating-point tensor, got dtype {beta.dtype}")
        if not is_traced(beta):
            if not bool(torch.isfinite(beta).all()) or not bool((beta > 0).all()):
                raise ValueError(f"beta: must be finite and > 0 everywhere, got {beta}")
        return beta
    raise TypeError(f"beta: expected a float or a tensor, got {type(beta).__name__}")


def check_square(name: str, M: Tensor) -> int:
    if M.dim() < 2 or M.shape[-1] != M.shape[-2]:
        raise ValueError(f"{name}: expected shape [..., d, d], got {tuple(M.shape)}")
    return M.shape[-1]


def check_same_dtype(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    """TypeError unless ``t`` has ``ref``'s dtype (the objectives never mix float32 and float64)."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: dtype {t.dtype} differs from {ref_name}'s {ref.dtype}; pass both in one dtype")


def check_symmetric(name: str, M: Tensor) -> None:
    if is_traced(M) or M.numel() == 0:
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
    if not is_traced(A) and bool((info > 0).any()):
        n = int((info > 0).sum())
        raise ValueError(f"{name}: {what} is not positive definite ({n} of {info.numel()} matrices failed Cholesky)")
    return L


def check_positive_int(name: str, v: Any) -> int:
    """``v`` itself when it is an int ≥ 1 (bools refused); ValueError naming ``name`` otherwise."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return v
