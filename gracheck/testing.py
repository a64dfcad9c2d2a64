"""Check another project's implementation against the paper's statements from its own tests.

::

    from gracheck.testing import assert_claim

    def test_my_grae_is_eq13():
        assert_claim("eq13-gaussian-grae", candidate=my_grae)

:func:`assert_claim` runs the claim's checks on ``candidate`` (or on the library's own implementation when it is
None) and raises :class:`~gracheck.base.evidence.ClaimFailed` (an ``AssertionError``) whose message names the claim,
its statement hash, each failing method, the worst error and the tolerance, and, for the model-level claims, what
the candidate got wrong when it matches a known slip. ``python -m gracheck.report --list`` shows which claims take a
candidate and the signature each expects (the ``candidate_signature`` field of ``--list --json``).

This module is also a pytest plugin (entry point ``pytest11``: ``gracheck = "gracheck.testing"``), loaded by every
pytest run on a machine with gracheck installed, so it imports nothing heavy: no torch and no claim registry until
a check runs. It adds

* the fixture ``assert_claim``: :func:`assert_claim`, recording each claim it checks;
* a terminal-summary section listing the claims checked in the session, each as a citable line (gracheck version,
  claim id, statement hash, verdict) to paste into a paper's reproducibility notes. Nothing is printed when no test
  used the fixture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["assert_claim", "citation_line"]


def citation_line(claim_id: str) -> str:
    """How to cite a claim exactly: ``gracheck <version>, claim <id>, statement <hash>``."""
    from gracheck.base.version import __version__
    from gracheck.claims import get

    c = get(claim_id)
    return f"gracheck {__version__}, claim {c.id}, statement {c.statement_hash}"


def assert_claim(claim_id: str, candidate: Callable | None = None, method: str | None = None, seed: int = 0) -> Any:
    """Check ``candidate`` against claim ``claim_id`` (all its methods, or ``method``) with ``seed``; return the evidence.

    Raises :class:`~gracheck.base.evidence.ClaimFailed` (an ``AssertionError``) when a check fails: the message names
    the claim (id, paper source, statement hash), each failing method with its worst error and tolerance, and the
    slip when one is recognised. ``KeyError`` for an unknown id (with close ids), ``ValueError`` when the claim takes
    no candidate or has no such method, ``TypeError`` for a candidate that is not callable. A check that cannot run
    here (:class:`~gracheck.base.evidence.CheckSkipped`) becomes ``pytest.skip`` under pytest, and is re-raised
    otherwise: a skipped check is never a pass.
    """
    from gracheck.base.evidence import CheckSkipped, ClaimFailed
    from gracheck.claims import get

    if not isinstance(claim_id, str):
        raise TypeError(f"claim_id: expected a claim id string, got {type(claim_id).__name__}")
    claim = get(claim_id)
    try:
        evidence = claim.check(method, seed=seed, candidate=candidate)
    except CheckSkipped as e:
        try:
            import pytest
        except ImportError:  # not under pytest: a skip is an exception, never a silent pass
            raise
        pytest.skip(f"gracheck claim {claim_id} could not be checked here: {e}")
    failed = [r for r in evidence if not r.passed]
    _record(claim_id, candidate, method, seed, not failed)
    if failed:
        who = "the library's implementation" if candidate is None else f"candidate {_name(candidate)}"
        head = (f"{citation_line(claim_id)}: {who} failed {len(failed)} of {len(evidence)} checks "
                f"(seed {seed}). Statement: {claim.statement}")
        raise ClaimFailed("\n".join([head, *(f"- {r.failure_message()}" for r in failed)]))
    return evidence


def _name(fn: Callable) -> str:
    mod = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{mod}.{qual}" if mod else qual


# ---------------------------------------------------------------- the pytest plugin

_SESSION: list[tuple[str, str, str, int, bool]] = []


def _record(claim_id: str, candidate: Callable | None, method: str | None, seed: int, passed: bool) -> None:
    _SESSION.append((claim_id, "library" if candidate is None else _name(candidate), method or "all methods", seed, passed))


def pytest_configure(config):
    """pytest hook: register the ``assert_claim`` fixture (pytest is imported here, never by importing this module)."""
    import pytest

    class _Fixtures:
        @pytest.fixture(name="assert_claim")
        def assert_claim_fixture(self) -> Callable[..., Any]:
            """:func:`gracheck.testing.assert_claim`, e.g. ``def test_x(assert_claim): assert_claim("eq13-gaussian-grae",
            candidate=my_grae)``; the claims checked are listed at the end of the session."""
            return assert_claim

    if not config.pluginmanager.has_plugin("gracheck-fixtures"):
        config.pluginmanager.register(_Fixtures(), "gracheck-fixtures")


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - pytest hook signature
    """pytest hook: the claims checked in this session, one citable line each (nothing when none was checked)."""
    if not _SESSION:
        return
    terminalreporter.section("gracheck claims checked")
    for claim_id, who, method, seed, passed in _SESSION:
        terminalreporter.write_line(f"{citation_line(claim_id)}: {'passed' if passed else 'FAILED'} "
                                    f"({who}, {method}, seed {seed})")
