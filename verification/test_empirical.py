"""Every empirical claim at smoke scale, through the registry (marked ``empirical``; deselect with
``-m "not empirical"``).

Outcomes: a claim whose experiment is not implemented yet *skips* with the reason; a claim
whose checks all pass *passes*; a claim refuted at smoke scale is an honest finding, not a
broken build: the test is marked *xfail* with the numbers (the report shows it as
``refuted``). Set ``GRACHECK_STRICT=1`` to turn refutations into failures. Malformed
evidence (no results, non-finite statistics, missing tolerance) always fails.
"""

import math
import os

import pytest

import gracheck.claims as claims
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
    failures = [r.failure_message() for r in results if not r.passed]
    if failures:
        msg = f"{claim_id} refuted at smoke scale:\n" + "\n".join(failures)
        if os.environ.get("GRACHECK_STRICT") == "1":
            pytest.fail(msg)
        pytest.xfail(msg)
