"""Evidence: :class:`Claim`, :class:`CheckResult`, :class:`ClaimFailed`, :class:`CheckSkipped` and the builders.

A *claim* is one statement of Kumar & Poole (2020) (an equation, a derivation step,
an erratum or an empirical finding) with a stable id. Each claim owns one check
function per *method* ("symbolic", "autograd", "property", "empirical", ...); a
check compares two independent computations and returns evidence as
:class:`CheckResult` objects, never a bare bool.

A module states its claims with :func:`claim` and :meth:`Claim.method`; the registry
(:mod:`gracheck.claims`) collects every module-level :class:`Claim` of the theory families
and the experiment modules::

    c = claim("eq9-optimal-covariance", source="Eq. 9", kind="derivation",
              statement="...", takes_candidate=True, candidate_signature="candidate(H, beta) -> Sigma ...")

    @c.method("symbolic")
    def _eq9_symbolic(*, seed, candidate):
        ...
        return [result(...)]

A claim that takes a candidate implementation (``takes_candidate=True``) states the candidate's calling
convention in ``candidate_signature``; ``check(candidate=fn)`` then tests ``fn`` instead of the library.

Citing a claim: its id (stable, never reused) and :func:`statement_hash` (which changes whenever the wording
that was checked changes); see that function for the exact definition.

A check that cannot run (an optional file that is absent) raises :class:`CheckSkipped`
with the reason; it is reported as skipped, never as passed. An empirical check's results
carry the ``outcome`` of their decision rule (verified / refuted / inconclusive, see
:mod:`gracheck.base.verdicts`) and its ``reason``; :meth:`Claim.check` returns them as
:class:`Evidence`, a list that also holds the record the results were computed from
(``Evidence.record``: the experiment's :class:`~gracheck.experiments.ExperimentResult`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gracheck.base.tolerances import ErrorBound, tol
from gracheck.base.verdicts import OUTCOMES, Decision

KINDS = ("derivation", "erratum", "empirical")
METHODS = ("symbolic", "autograd", "property", "montecarlo", "closed-form", "empirical")


class ClaimFailed(AssertionError):
    """A check of a claim failed; the message names the claim, method, worst error and tolerance."""


class CheckSkipped(Exception):
    """A check could not run here (e.g. an experiment or a data file is missing). Never a pass."""


def jsonable(v: Any) -> Any:
    """A strict-JSON copy of ``v``: non-finite floats become strings ("nan", "inf", "-inf"), tensors and
    arrays lists, paths strings, dataclasses dicts; anything else its ``str``."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "tolist"):
        return jsonable(v.tolist())
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return jsonable(dataclasses.asdict(v))
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
    ``outcome``: for a decision rule of an empirical claim, "verified", "refuted" or
    "inconclusive" (``passed`` is true exactly when it is "verified"), with ``reason``: the rule's
    reading of the numbers (which CI, which margin, which side; what would decide it). None and
    "" for the checks of derivations and errata, where ``passed`` says it all.
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
    outcome: str | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def failure_message(self) -> str:
        def pairs(*named: tuple[str, float | None]) -> str:
            return ", ".join(f"{k}={v:.3g}" for k, v in named if v is not None)

        tol_s = pairs(("atol", self.atol), ("rtol", self.rtol)) or "no tolerance"
        err_s = pairs(("abs_err", self.abs_err), ("rel_err", self.rel_err)) or "no error measure"
        verdict = "failed" if self.outcome is None else f"is {self.outcome} ({self.reason})"
        return (
            f"claim {self.claim_id} ({self.source}) {verdict} by method {self.method!r}: "
            f"worst {err_s} ({'must exceed' if self.sense == 'exceeds' else 'up to'} {tol_s}"
            f"{'' if self.sense == 'exceeds' else ' allowed'}); measured={_short(self.measured)}, "
            f"expected={_short(self.expected)}; seed={self.seed}. {self.detail}"
        )


def _short(v: Any, n: int = 120) -> str:
    s = json.dumps(jsonable(v)) if not isinstance(v, str) else v
    return s if len(s) <= n else s[: n - 3] + "..."


CheckFn = Callable[..., "CheckResult | list[CheckResult]"]


class Evidence(list):
    """What :meth:`Claim.check` returns: the list of :class:`CheckResult` and, in ``record``, what they
    were computed from (an empirical claim's :class:`~gracheck.experiments.ExperimentResult`; None for
    the checks of derivations and errata). A check function may return one itself to pass the record on."""

    def __init__(self, results: Iterable[CheckResult] = (), record: Any = None):
        super().__init__(results)
        self.record = record


@dataclasses.dataclass(frozen=True)
class FigureSection:
    """How the report presents an empirical claim: the section ``title`` and what the paper ``shows``."""

    title: str
    shows: str


# The version of the statement-hash definition below; it is hashed with the fields, so a change of definition
# changes every hash at once (and is announced by this string) instead of silently re-meaning old ones.
STATEMENT_HASH_SCHEME = "gracheck-statement-hash/1"
STATEMENT_HASH_DIGITS = 16


def _canonical_text(s: str) -> str:
    """NFC-normalised, every run of whitespace one space, no leading/trailing space."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", s)).strip()


def statement_hash(id: str, kind: str, source: str, statement: str, corrected: str = "") -> str:
    """The content hash of a claim's statement: what a citation pins besides the id and the package version.

    Definition (``gracheck-statement-hash/1``):

    1. each of ``id``, ``kind``, ``source``, ``statement`` and ``corrected`` (the corrected statement of an
       erratum; the empty string for every other kind) is normalised: Unicode NFC, every run of whitespace
       (spaces, tabs, line breaks) replaced by one space, leading and trailing whitespace removed;
    2. the JSON array ``["gracheck-statement-hash/1", id, kind, source, statement, corrected]`` of those strings
       is serialised compactly: no whitespace between items (separators ``,`` and ``:``), non-ASCII characters
       written as themselves (not ``\\u`` escapes), and encoded as UTF-8;
    3. the hash is the first 16 hexadecimal digits (lower case, 64 bits) of the SHA-256 of those bytes.

    So rewording the statement (or the correction, the paper source or the kind) changes the hash; reflowing
    its whitespace does not; and the checks, methods, tolerances and candidate signature are not part of it
    (they are pinned by the package version). ``source`` is included because it says where in the paper the
    statement is: pointing it at another equation changes what is cited.
    """
    for name, v in (("id", id), ("kind", kind), ("source", source), ("statement", statement), ("corrected", corrected)):
        if not isinstance(v, str):
            raise TypeError(f"{name}: expected a str, got {type(v).__name__}")
    fields = [STATEMENT_HASH_SCHEME] + [_canonical_text(v) for v in (id, kind, source, statement, corrected)]
    blob = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:STATEMENT_HASH_DIGITS]


@dataclasses.dataclass
class Claim:
    """One citable statement of the paper, with its checks.

    Attributes: ``id`` (stable, cite it), ``source`` (e.g. "Eq. 9"), ``statement``
    (one sentence a reader can check against the paper), ``kind``
    ("derivation" | "erratum" | "empirical"), ``methods`` (the methods it is
    checked by), ``takes_candidate`` (whether ``check(candidate=...)`` swaps in an
    implementation under test), ``candidate_signature`` (its calling convention, when it takes one),
    ``corrected`` (for an erratum: the corrected statement), ``figure`` (for an empirical claim: its
    section of the report).
    """

    id: str
    source: str
    statement: str
    kind: str
    takes_candidate: bool = False
    corrected: str = ""
    candidate_signature: str = ""
    figure: FigureSection | None = None
    _checks: dict[str, CheckFn] = dataclasses.field(default_factory=dict, repr=False)
    _declared_methods: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods this claim is checked by (declared ones while no check is implemented)."""
        return tuple(self._checks) or self._declared_methods

    @property
    def checks(self) -> Mapping[str, CheckFn]:
        """Method name → check function, read-only: the methods that have an implementation."""
        return MappingProxyType(self._checks)

    @property
    def statement_hash(self) -> str:
        """:func:`statement_hash` of (id, kind, source, statement, corrected): cite it with the id and the package
        version to pin the exact wording that was checked."""
        return statement_hash(self.id, self.kind, self.source, self.statement, self.corrected)

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
    ) -> Evidence:
        """Run the check(s) for ``method`` (all methods when None); return the evidence.

        ``candidate`` replaces the library's implementation under test (only for
        claims with ``takes_candidate``). With ``raise_on_fail=True`` the first
        failing result raises :class:`ClaimFailed`. Raises :class:`CheckSkipped`
        when a check cannot run here. Empirical checks take ``scale``, ``device``,
        ``out_dir``, ``use_cache``, ``progress`` and ``from_result`` (apply the decision
        rule to a given ExperimentResult instead of running the experiment).
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
        out = Evidence()
        for name in names:
            t0 = time.perf_counter()
            res = self._checks[name](seed=seed, candidate=candidate, **kw)
            dt = time.perf_counter() - t0
            if isinstance(res, Evidence) and res.record is not None:
                out.record = res.record
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


def claim(
    id: str,
    *,
    source: str,
    statement: str,
    kind: str,
    takes_candidate: bool = False,
    candidate_signature: str = "",
    corrected: str = "",
    methods: Iterable[str] = (),
    figure: FigureSection | None = None,
) -> Claim:
    """State a claim (the registry collects it from its module). ``methods`` declares methods for claims
    without checks yet; ``figure`` gives an empirical claim's report section; a claim that takes a
    candidate states its calling convention in ``candidate_signature`` (and only such a claim has one)."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if not isinstance(id, str) or not id:
        raise ValueError(f"id: expected a non-empty string, got {id!r}")
    if takes_candidate and not candidate_signature.strip():
        raise ValueError(f"candidate_signature: claim {id} takes a candidate, so it must state the candidate's signature")
    if candidate_signature and not takes_candidate:
        raise ValueError(f"candidate_signature: claim {id} does not take a candidate (takes_candidate=False)")
    return Claim(
        id=id,
        source=source,
        statement=statement,
        kind=kind,
        takes_candidate=takes_candidate,
        candidate_signature=candidate_signature,
        corrected=corrected,
        figure=figure,
        _declared_methods=tuple(methods),
    )


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
    outcome: str | None = None,
    reason: str = "",
) -> CheckResult:
    """Build a :class:`CheckResult` (keyword-only helper used by every check).

    ``outcome``/``reason``: a decision rule's reading (use :func:`decided`); ``passed`` must then be
    true exactly for "verified".
    """
    if sense not in ("within", "exceeds"):
        raise ValueError(f"sense: expected 'within' or 'exceeds', got {sense!r}")
    if outcome is not None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome: expected one of {OUTCOMES} or None, got {outcome!r}")
        if bool(passed) != (outcome == "verified"):
            raise ValueError(f"passed: {passed!r} contradicts the outcome {outcome!r}")
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
        outcome=outcome,
        reason=reason,
    )


def decided(
    claim_id: str,
    decision: Decision,
    *,
    measured: Any,
    expected: Any,
    abs_err: float | None,
    atol: float | None,
    detail: str,
    seed: int,
    method: str = "empirical",
    sense: str = "within",
    note: str = "",
) -> CheckResult:
    """The :class:`CheckResult` of one decision rule: ``passed``, ``outcome`` and ``reason`` from ``decision``
    (:mod:`gracheck.base.verdicts`); ``note`` (e.g. what would decide an inconclusive result) joins the reason."""
    reason = decision.reason + (f". {note}" if note else "")
    return result(claim_id, method, passed=decision.verified, measured=measured, expected=expected, abs_err=abs_err,
                  atol=atol, detail=detail, seed=seed, sense=sense, outcome=decision.outcome, reason=reason)


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
    summ_m = float(m.reshape(-1)[int(np.argmax(diff.reshape(-1)))]) if m.size > 1 and finite else jsonable(m)
    summ_e = float(e.reshape(-1)[int(np.argmax(diff.reshape(-1)))]) if e.size > 1 and finite else jsonable(e)
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


def tcompare(claim_id: str, method: str, measured: Any, expected: Any, tol_name: str, detail: str, seed: int) -> CheckResult:
    """:func:`compare` with the named :class:`~gracheck.base.tolerances.ErrorBound` of the tolerance table
    (its name recorded in ``detail``)."""
    t = tol(tol_name, ErrorBound)
    return compare(claim_id, method, measured, expected, atol=t.atol, rtol=t.rtol,
                   detail=f"{detail} [tolerance {tol_name!r}]", seed=seed)


def _to_numpy(v: Any) -> Any:
    if hasattr(v, "detach"):
        return v.detach().cpu().double().numpy()
    return v
