"""The decision rules of the empirical claims: one function per rule type, three outcomes each.

A pre-registered rule ends in ``verified`` (the evidence supports the claim), ``refuted`` (the
evidence is against it) or ``inconclusive`` (the experiment could not decide), and a reason that a
reader can check against the numbers printed beside it:

* :func:`equivalence`: a "stays close / comparable" claim against a margin fixed in advance
  (two one-sided tests, as in bioequivalence): CI inside the margin → verified; CI entirely outside
  → refuted; otherwise inconclusive.
* :func:`one_sided`: a trend or bound ("grows with β", "below 5°", "→ 0"): CI entirely on the claimed
  side of the threshold → verified; entirely on the other side → refuted; straddling → inconclusive.
  A number without sampling error (a maximum over all points) is a CI of zero width.
* :func:`precondition`: a condition the test needs (convergence, sample size, two routes agreeing):
  unmet → inconclusive, naming the precondition and the measured value; met → verified.
* :func:`what_would_decide`: for an inconclusive CI, how many runs or points would bring it to one
  side, from the observed spread, assuming the CI half-width scales as 1/√n.

A claim's status combines its rules with :func:`combine`: any refuted → refuted, else any
inconclusive → inconclusive, else verified.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from gracheck.base.validate import check_positive_int

OUTCOMES = ("verified", "refuted", "inconclusive")


@dataclasses.dataclass(frozen=True)
class Decision:
    """The outcome of one decision rule and the reason, in words and numbers."""

    outcome: str
    reason: str

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome: expected one of {OUTCOMES}, got {self.outcome!r}")

    @property
    def verified(self) -> bool:
        return self.outcome == "verified"


def _num(v: float) -> str:
    return f"{v:.4g}"


def _ci_text(ci: tuple[float, float], level: float | None) -> str:
    lvl = f"{level:.0%} " if level is not None else ""
    return f"{lvl}CI [{_num(ci[0])}, {_num(ci[1])}]"


def _check_ci(ci: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(ci[0]), float(ci[1]))
    if not (math.isnan(lo) or math.isnan(hi)) and lo > hi:
        raise ValueError(f"ci: low end {lo} above high end {hi}")
    return lo, hi


def equivalence(
    ci: tuple[float, float], low: float, high: float, *, what: str, level: float | None = 0.95
) -> Decision:
    """Equivalence test of ``what`` against the margin [low, high] (inclusive ends).

    CI inside [low, high] → verified; CI entirely outside (above ``high`` or below ``low``) →
    refuted; a CI that crosses an end of the margin, or is not finite, → inconclusive.
    """
    if not low < high:
        raise ValueError(f"low, high: expected low < high, got {low!r}, {high!r}")
    lo, hi = _check_ci(ci)
    band = f"[{_num(low)}, {_num(high)}]"
    c = _ci_text((lo, hi), level)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return Decision("inconclusive", f"{what}: {c} is not finite; the margin {band} cannot be tested")
    if low <= lo and hi <= high:
        return Decision("verified", f"{what}: {c} lies inside the margin {band}")
    if lo > high or hi < low:
        side = "above" if lo > high else "below"
        return Decision("refuted", f"{what}: {c} lies entirely {side} the margin {band}")
    edge = high if hi > high else low
    return Decision("inconclusive", f"{what}: {c} straddles the margin's end {_num(edge)} (margin {band})")


def one_sided(
    ci: tuple[float, float],
    threshold: float,
    *,
    claimed: str,
    what: str,
    strict: bool = True,
    level: float | None = 0.95,
) -> Decision:
    """One-sided test of ``what`` against ``threshold``; ``claimed`` is "above" or "below".

    claimed "below": CI entirely below the threshold (high end < threshold, or ≤ with
    ``strict=False``) → verified; CI entirely at or above it (low end ≥ threshold; > with
    ``strict=False``) → refuted; else inconclusive. "above" mirrors it. A value without sampling
    error is passed as ``(v, v)`` with ``level=None``: then it is verified or refuted, never
    inconclusive. A CI that is not finite is inconclusive.
    """
    if claimed not in ("above", "below"):
        raise ValueError(f"claimed: expected 'above' or 'below', got {claimed!r}")
    lo, hi = _check_ci(ci)
    t = _num(threshold)
    c = f"value {_num(lo)}" if (level is None and lo == hi) else _ci_text((lo, hi), level)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return Decision("inconclusive", f"{what}: {c} is not finite; the threshold {t} cannot be tested")
    if claimed == "below":
        op_in, op_out = ("<", "≥") if strict else ("≤", ">")
        inside = hi < threshold if strict else hi <= threshold
        outside = lo >= threshold if strict else lo > threshold
    else:
        op_in, op_out = (">", "≤") if strict else ("≥", "<")
        inside = lo > threshold if strict else lo >= threshold
        outside = hi <= threshold if strict else hi < threshold
    if inside:
        return Decision("verified", f"{what}: {c} {op_in} {t}, on the claimed side")
    if outside:
        return Decision("refuted", f"{what}: {c} {op_out} {t}, entirely on the other side of the claim ({claimed} {t})")
    return Decision("inconclusive", f"{what}: {c} straddles {t} (the claim: {claimed} {t})")


def precondition(met: bool, *, name: str, measured: str, required: str) -> Decision:
    """A precondition of a test: unmet → inconclusive (naming it and the measured value); met → verified."""
    if met:
        return Decision("verified", f"precondition {name} holds: {measured} ({required})")
    return Decision("inconclusive", f"precondition {name} unmet: {measured}, but the test needs {required}; "
                                    "the rule cannot decide")


def what_would_decide(
    estimate: float,
    ci: tuple[float, float],
    n: int,
    *,
    low: float | None = None,
    high: float | None = None,
) -> tuple[int | None, str]:
    """(n needed, the outcome it would give): runs or points bringing the CI to one side of the margin.

    The margin is ``[low, high]`` for an equivalence test, or one threshold (``low`` for a claim
    "above low", ``high`` for "below high"). From the observed CI half-width h on the side that faces
    the nearest margin end at distance δ from the estimate, with h ∝ 1/√n: n' = ⌈n (h/δ)²⌉. With the
    estimate inside the margin the CI would then fit inside (verified, both ends checked); outside,
    the CI would lie beyond the end (refuted). None when δ = 0 (no sample size decides) or the CI is
    not finite. An assumption, not a promise: a smaller run also shifts the estimate.
    """
    if low is None and high is None:
        raise ValueError("low, high: give at least one end of the margin")
    check_positive_int("n", n)
    lo, hi = _check_ci(ci)
    e = float(estimate)
    if not all(math.isfinite(v) for v in (lo, hi, e)):
        return None, "inconclusive"
    inside = (low is None or e >= low) and (high is None or e <= high)
    if inside:
        ratios = []
        if low is not None:
            d = e - low
            ratios.append(math.inf if d == 0 else (e - lo) / d)
        if high is not None:
            d = high - e
            ratios.append(math.inf if d == 0 else (hi - e) / d)
        r = max(ratios)
        outcome = "verified"
    else:
        if high is not None and e > high:
            d, h = e - high, e - lo
        else:
            d, h = low - e, hi - e  # type: ignore[operator]
        r = math.inf if d == 0 else h / d
        outcome = "refuted"
    if not math.isfinite(r):
        return None, outcome
    return max(n, math.ceil(n * r * r)), outcome


def decide_sentence(
    estimate: float,
    ci: tuple[float, float],
    n: int,
    *,
    unit: str,
    paper_n: int | None,
    low: float | None = None,
    high: float | None = None,
) -> str:
    """The "what would decide it" sentence of an inconclusive result (see :func:`what_would_decide`)."""
    need, outcome = what_would_decide(estimate, ci, n, low=low, high=high)
    if need is None:
        return (f"The estimate sits on the margin itself: no number of {unit} decides it at this spread "
                f"(now {n}).")
    s = (f"At the observed spread about {need:,} {unit} (now {n:,}) would put the CI on one side "
         f"(toward {outcome}, assuming the half-width shrinks as 1/√n)")
    if paper_n is not None:
        s += (f"; --scale paper uses {paper_n:,}, " + ("enough" if paper_n >= need else "not enough"))
    return s + "."


def combine(outcomes: Iterable[str]) -> str:
    """A claim's status from its rules' outcomes: any refuted → refuted, else any inconclusive →
    inconclusive, else verified. ValueError for an empty list or an unknown outcome."""
    outs = list(outcomes)
    if not outs:
        raise ValueError("outcomes: no decision-rule outcome to combine")
    bad = [o for o in outs if o not in OUTCOMES]
    if bad:
        raise ValueError(f"outcomes: unknown {bad}; expected values from {OUTCOMES}")
    if "refuted" in outs:
        return "refuted"
    if "inconclusive" in outs:
        return "inconclusive"
    return "verified"
