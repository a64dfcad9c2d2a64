"""Every empirical claim at smoke scale, through the registry (marked ``empirical``; deselect with
``-m "not empirical"``).

Outcomes: a claim whose check cannot run here *skips* with the reason; a claim whose
decision rules are all verified *passes*; a claim refuted or inconclusive at smoke scale is an
honest finding, not a broken build: the test is marked *xfail* with the numbers and each rule's
reason (the report shows it as ``refuted`` or ``inconclusive``). Set ``GRACHECK_STRICT=1`` to
turn those into failures (like ``--strict``). Malformed evidence (no results, non-finite
statistics, missing tolerance, a rule without its outcome and reason) always fails.
"""

import math
import os

import pytest

import gracheck.claims as claims
from gracheck.base.verdicts import OUTCOMES, combine
from gracheck.claims import CheckSkipped

EMPIRICAL = [c.id for c in claims.registry() if c.kind == "empirical"]


def _finite(v) -> bool:
    """True when ``v`` is a number, or a list/dict of them, and every number is finite."""
    if isinstance(v, bool):
        return True
    if isinstance(v, (int, float)):
        return math.isfinite(v)
    if isinstance(v, (list, tuple)):
        return len(v) > 0 and all(_finite(x) for x in v)
    if isinstance(v, dict):
        return len(v) > 0 and all(_finite(x) for x in v.values())
    return False


@pytest.mark.empirical
@pytest.mark.parametrize("claim_id", EMPIRICAL)
def test_empirical_claim_smoke(claim_id):
    try:
        results = claims.get(claim_id).check(scale="smoke")
    except CheckSkipped as e:
        pytest.skip(f"{claim_id}: {e}")
    assert results, f"{claim_id} returned no evidence"
    for r in results:
        assert r.claim_id == claim_id
        assert _finite(r.measured), f"{claim_id}/{r.method}: measured value is not finite numbers: {r.measured!r}"
        assert r.atol is not None or r.rtol is not None, f"{claim_id}/{r.method}: no tolerance/threshold recorded"
        assert r.outcome in OUTCOMES and r.reason, f"{claim_id}/{r.method}: a decision rule without outcome/reason"
        assert r.passed == (r.outcome == "verified"), f"{claim_id}/{r.method}: passed contradicts {r.outcome}"
    status = combine(r.outcome for r in results)
    failures = [r.failure_message() for r in results if not r.passed]
    if failures:
        msg = f"{claim_id} {status} at smoke scale:\n" + "\n".join(failures)
        if os.environ.get("GRACHECK_STRICT") == "1":
            pytest.fail(msg)
        pytest.xfail(msg)
