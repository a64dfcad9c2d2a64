"""The one number formatter, used by the checks' ``detail`` texts and by the report."""

from __future__ import annotations

import math
from typing import Any


def fmt(v: Any, digits: int = 6, *, short: bool = False) -> str:
    """``v`` as text with ``digits`` significant digits.

    Numbers: ints as they are, floats with ``digits`` significant digits (``g`` format: scientific
    notation below 1e-4 and from 10^digits); booleans as "true"/"false"; None as "—". Tensors and
    arrays are formatted element by element like lists. ``short=True`` (report cells) shows at most
    six list items and 160 characters of text; otherwise everything (a counterexample in full).
    """
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.{digits}g}" if math.isfinite(v) else repr(v)
    if hasattr(v, "detach"):
        v = v.detach().cpu().tolist()
    elif hasattr(v, "tolist") and not isinstance(v, str):
        v = v.tolist()
    if isinstance(v, (int, float)):
        return fmt(v, digits, short=short)
    if isinstance(v, (list, tuple)):
        items = v[:6] if short else v
        inner = ", ".join(fmt(x, digits, short=short) for x in items)
        return f"[{inner}{', …' if short and len(v) > 6 else ''}]"
    s = str(v)
    return s if not short or len(s) <= 160 else s[:157] + "..."


def fmt_seconds(s: float | None, missing: str = "not estimated") -> str:
    """A duration for people: ``"42 s"``, ``"3.5 min"``, ``"2.1 h"``, ``"4.0 days"``; ``missing`` for None/NaN/inf."""
    if s is None or not math.isfinite(s):
        return missing
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"
