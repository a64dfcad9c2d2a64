"""The claim registry: :class:`Claim`, :class:`CheckResult`, :class:`ClaimFailed`.

A *claim* is one statement of Kumar & Poole (2020) (an equation, a derivation step,
an erratum or an empirical finding) with a stable id. Each claim owns one check
function per *method* ("symbolic", "autograd", "property", "empirical", ...); a
check compares two independent computations and returns evidence as
:class:`CheckResult` objects, never a bare bool.

Claim families register themselves at import time with :func:`claim` and
:meth:`Claim.method`::

    c = claim("eq9-optimal-covariance", source="Eq. 9", kind="derivation",
              statement="...", takes_candidate=True)

    @c.method("symbolic")
    def _eq9_symbolic(*, seed, candidate):
        ...
        return [result(...)]

A check that cannot run (an empirical claim whose experiment is missing, an
optional file that is absent) raises :class:`CheckSkipped` with the reason; it is
reported as skipped, never as passed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

KINDS = ("derivation", "erratum", "empirical")
METHODS = ("symbolic", "autograd", "property", "montecarlo", "closed-form", "empirical")


class ClaimFailed(AssertionError):
    """A check of a claim failed; the message names the claim, method, worst error and tolerance."""


class CheckSkipped(Exception):
    """A check could not run here (e.g. an experiment or a data file is missing). Never a pass."""


def _num(v: Any) -> Any:
    """JSON-friendly scalar: floats stay floats (inf/nan as strings), tensors/arrays become lists."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if hasattr(v, "tolist"):
        return _num(v.tolist())
    if isinstance(v, (list, tuple)):
        return [_num(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _num(x) for k, x in v.items()}
    return str(v)


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """Evidence from one check of one claim by one method.

    ``measured`` and ``expected`` are the two independent computations (or the
    statistic and its threshold for a trend or an inequality); ``abs_err`` and
    ``rel_err`` are the worst errors over everything compared; ``atol``/``rtol``
    the tolerance it was held to (from :mod:`gracheck.base.tolerances`).
    ``detail`` says what was compared and, for an erratum, the counterexample.
    ``sense`` is "within" when the check passes if the error stays within the
    tolerance, and "exceeds" when it passes if a discrepancy *exceeds* the
    threshold (a refutation of a printed statement, or a negative control).
    """

    claim_id: str
    method: str
    passed: bool
    measured: Any
    expected: Any
    abs_err: float | None
    rel_err: float | None
    atol: float | None
    rtol: float | None
    detail: str
    seed: int
    seconds: float
    source: str = ""
    sense: str = "within"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _num(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def failure_message(self) -> str:
        tol = []
        if self.atol is not None:
            tol.append(f"atol={self.atol:.3g}")
        if self.rtol is not None:
            tol.append(f"rtol={self.rtol:.3g}")
        tol_s = ", ".join(tol) if tol else "no tolerance"
        err = []
        if self.abs_err is not None:
            err.append(f"abs_err={self.abs_err:.3g}")
        if self.rel_err is not None:
            err.append(f"rel_err={self.rel_err:.3g}")
        err_s = ", ".join(err) if err else "no error measure"
        return (
            f"claim {self.claim_id} ({self.source}) failed by method {self.method!r}: "
            f"worst {err_s} ({'must exceed' if self.sense == 'exceeds' else 'up to'} {tol_s}"
            f"{'' if self.sense == 'exceeds' else ' allowed'}); measured={_short(self.measured)}, "
            f"expected={_short(self.expected)}; seed={self.seed}. {self.detail}"
        )


def _short(v: Any, n: int = 120) -> str:
    s = json.dumps(_num(v)) if not isinstance(v, str) else v
    return s if len(s) <= n else s[: n - 3] + "..."


CheckFn = Callable[..., "CheckResult | list[CheckResult]"]


@dataclasses.dataclass
class Claim:
    """One citable statement of the paper, with its checks.

    Attributes: ``id`` (stable, cite it), ``source`` (e.g. "Eq. 9"), ``statement``
    (one sentence a reader can check against the paper), ``kind``
    ("derivation" | "erratum" | "empirical"), ``methods`` (the methods it is
    checked by), ``takes_candidate`` (whether ``check(candidate=...)`` swaps in an
    implementation under test), ``corrected`` (for an erratum: the corrected
    statement).
    """

    id: str
    source: str
    statement: str
    kind: str
    takes_candidate: bool = False
    corrected: str = ""
    _checks: dict[str, CheckFn] = dataclasses.field(default_factory=dict, repr=False)
    _declared_methods: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self._checks) or self._declared_methods

    def method(self, name: str) -> Callable[[CheckFn], CheckFn]:
        """Decorator registering ``fn(*, seed, candidate, **kw)`` as the check for ``name``."""
        if name not in METHODS:
            raise ValueError(f"method: unknown method {name!r}; expected one of {METHODS}")

        def deco(fn: CheckFn) -> CheckFn:
            if name in self._checks:
                raise ValueError(f"method: claim {self.id} already has a {name!r} check")
            self._checks[name] = fn
            return fn

        return deco

    def check(
        self,
        method: str | None = None,
        *,
        seed: int = 0,
        candidate: Callable | None = None,
        raise_on_fail: bool = False,
        **kw: Any,
    ) -> list[CheckResult]:
        """Run the check(s) for ``method`` (all methods when None); return the evidence.

        ``candidate`` replaces the library's implementation under test (only for
        claims with ``takes_candidate``). With ``raise_on_fail=True`` the first
        failing result raises :class:`ClaimFailed`. Raises :class:`CheckSkipped`
        when a check cannot run here.
        """
        if candidate is not None and not self.takes_candidate:
            raise ValueError(f"candidate: claim {self.id} does not take a candidate implementation")
        if candidate is not None and not callable(candidate):
            raise TypeError(f"candidate: expected a callable, got {type(candidate).__name__}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        if method is None:
            names = list(self._checks)
            if not names:
                raise CheckSkipped(f"claim {self.id} has no check implemented yet")
        else:
            if method not in self._checks:
                raise ValueError(
                    f"method: claim {self.id} has no {method!r} check; it has {list(self._checks)}"
                )
            names = [method]
        out: list[CheckResult] = []
        for name in names:
            t0 = time.perf_counter()
            res = self._checks[name](seed=seed, candidate=candidate, **kw)
            dt = time.perf_counter() - t0
            batch = [res] if isinstance(res, CheckResult) else list(res)
            if not batch:
                raise RuntimeError(f"claim {self.id}, method {name}: the check returned no evidence")
            for r in batch:
                if not isinstance(r, CheckResult):
                    raise TypeError(f"claim {self.id}, method {name}: check returned {type(r).__name__}")
                if r.seconds == 0.0:
                    r = dataclasses.replace(r, seconds=dt / len(batch))
                if not r.source:
                    r = dataclasses.replace(r, source=self.source)
                out.append(r)
        if raise_on_fail:
            for r in out:
                if not r.passed:
                    raise ClaimFailed(r.failure_message())
        return out


_REGISTRY: dict[str, Claim] = {}


def claim(
    id: str,
    *,
    source: str,
    statement: str,
    kind: str,
    takes_candidate: bool = False,
    corrected: str = "",
    methods: Iterable[str] = (),
) -> Claim:
    """Create and register a claim. ``methods`` declares methods for claims without checks yet."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if id in _REGISTRY:
        raise ValueError(f"id: claim {id!r} is registered twice")
    c = Claim(
        id=id,
        source=source,
        statement=statement,
        kind=kind,
        takes_candidate=takes_candidate,
        corrected=corrected,
        _declared_methods=tuple(methods),
    )
    _REGISTRY[id] = c
    return c


def _load_all() -> None:
    # Importing the families registers their claims (idempotent: modules import once).
    from gracheck.claims import _families  # noqa: F401


def registry() -> list[Claim]:
    """Every registered claim, in registration order (derivations, errata, empirical)."""
    _load_all()
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(_REGISTRY.values(), key=lambda c: order[c.kind])


def get(claim_id: str) -> Claim:
    """The claim with id ``claim_id``; ``KeyError`` listing close ids if there is none."""
    _load_all()
    try:
        return _REGISTRY[claim_id]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(claim_id, list(_REGISTRY), n=3)
        raise KeyError(f"claim_id: no claim {claim_id!r}; did you mean {close}?") from None


def result(
    claim_id: str,
    method: str,
    *,
    passed: bool,
    measured: Any,
    expected: Any,
    abs_err: float | None,
    rel_err: float | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    detail: str = "",
    seed: int = 0,
    seconds: float = 0.0,
    sense: str = "within",
) -> CheckResult:
    """Build a :class:`CheckResult` (keyword-only helper used by every check)."""
    if sense not in ("within", "exceeds"):
        raise ValueError(f"sense: expected 'within' or 'exceeds', got {sense!r}")
    return CheckResult(
        claim_id=claim_id,
        method=method,
        passed=bool(passed),
        measured=measured,
        expected=expected,
        abs_err=None if abs_err is None else float(abs_err),
        rel_err=None if rel_err is None else float(rel_err),
        atol=atol,
        rtol=rtol,
        detail=detail,
        seed=seed,
        seconds=seconds,
        sense=sense,
    )


def compare(
    claim_id: str,
    method: str,
    measured: Any,
    expected: Any,
    *,
    atol: float,
    rtol: float,
    detail: str,
    seed: int,
) -> CheckResult:
    """Compare two computations elementwise: passes iff |m − e| ≤ atol + rtol·|e| everywhere.

    ``measured`` and ``expected`` are tensors/arrays/floats of the same shape; the
    reported errors are the worst absolute and relative errors. NaN anywhere fails.
    """
    import numpy as np

    m = np.asarray(_to_numpy(measured), dtype=np.float64)
    e = np.asarray(_to_numpy(expected), dtype=np.float64)
    if m.shape != e.shape:
        raise ValueError(f"measured/expected: shapes differ, {m.shape} vs {e.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        diff = np.abs(m - e)
    finite = bool(np.all(np.isfinite(m)) and np.all(np.isfinite(e)))
    ok = finite and bool(np.all(diff <= atol + rtol * np.abs(e)))
    abs_err = float(np.max(diff)) if diff.size else 0.0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        rel = diff / np.maximum(np.abs(e), np.finfo(np.float64).tiny)
    rel_err = float(np.max(rel)) if rel.size else 0.0
    if not finite:
        abs_err = rel_err = float("inf")
    summ_m = float(m.reshape(-1)[int(np.argmax(diff.reshape(-1)))]) if m.size > 1 and finite else _num(m)
    summ_e = float(e.reshape(-1)[int(np.argmax(diff.reshape(-1)))]) if e.size > 1 and finite else _num(e)
    if m.size > 1:
        detail = f"{detail} [{m.size} values compared; measured/expected shown at the worst entry]"
    return result(
        claim_id,
        method,
        passed=ok,
        measured=summ_m,
        expected=summ_e,
        abs_err=abs_err,
        rel_err=rel_err,
        atol=atol,
        rtol=rtol,
        detail=detail,
        seed=seed,
    )


def _to_numpy(v: Any) -> Any:
    if hasattr(v, "detach"):
        return v.detach().cpu().double().numpy()
    return v
