"""Every tolerance used by a check, in one table, each with its reason.

Checks look tolerances up by name with :func:`tol`; nothing else in gracheck
hard-codes an atol/rtol for a claim. A tolerance states *why* the two routes
being compared may differ by that much (float64 rounding accumulated over a
stated number of operations, Monte Carlo standard error, a fitted trend's slack).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    reason: str


TOLERANCES: dict[str, Tolerance] = {
    # Two float64 computations of the same smooth quantity by different routes
    # (e.g. a Cholesky log-det vs an eigenvalue sum, forward vs reverse mode):
    # each costs O(d^3) flops on O(1)-conditioned inputs, so rounding stays near
    # 1e-13 relative; 1e-9 leaves four orders of margin and still catches any
    # formula error, which shows up at O(1e-2) or more.
    "float64-exact": Tolerance(
        atol=1e-10,
        rtol=1e-9,
        reason="two float64 routes to the same value; rounding ~1e-13, any formula error is O(1e-2)",
    ),
    # float32 routes (library code in training precision) against float64 references.
    "float32-vs-float64": Tolerance(
        atol=1e-4,
        rtol=1e-4,
        reason="float32 has 6e-8 unit roundoff; O(d^2) accumulated ops on O(1) values stay below 1e-5",
    ),
    # Symbolic identities are simplified to exactly zero by sympy; numerical
    # evaluation of the residual at random rational points is exact up to this.
    "symbolic": Tolerance(
        atol=1e-12,
        rtol=0.0,
        reason="sympy residuals are exact; evaluated in float64 at sample points they round at ~1e-15",
    ),
    # Finite differences (central, step h = 1e-5 in float64) have truncation
    # error O(h^2 * f''') ~ 1e-10 and rounding O(eps/h) ~ 1e-11 per entry.
    "finite-difference": Tolerance(
        atol=1e-6,
        rtol=1e-6,
        reason="central differences with h=1e-5 in float64: truncation ~h^2, rounding ~eps/h",
    ),
    # ---- Sec. 3 / App. A / App. B family (sec3_uniqueness.py) ----
    # ---- Sec. 4 / 5 / 7 families (sec4_taylor.py, sec5_grae.py, sec7_gap.py) ----
}


def tol(name: str) -> Tolerance:
    """The tolerance registered under ``name`` (KeyError naming the known ones otherwise)."""
    try:
        return TOLERANCES[name]
    except KeyError:
        raise KeyError(f"name: no tolerance {name!r}; known: {sorted(TOLERANCES)}") from None
