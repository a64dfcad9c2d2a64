"""Shared fixtures for the verification suites (theory and empirical).

* Hypothesis profiles ``ci`` (default: derandomised, few examples, no deadline) and
  ``dev`` are registered from :mod:`gracheck.theory.strategies`; choose one with
  ``HYPOTHESIS_PROFILE=dev pytest verification``.
* ``check_claim(claim_id, method)`` runs one check with seed 0, turns
  :class:`~gracheck.claims.CheckSkipped` into a pytest skip carrying its reason (never a
  pass), and asserts that every result passed, printing each failure's
  ``failure_message()``; it also asserts that each result carries its evidence.
* ``single_thread``: the theory checks work on tiny matrices, where torch's
  intra-op thread pool only adds latency (and contention on a busy 2-core machine);
  suites opt in with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    try:
        from hypothesis import settings
    except ImportError:  # hypothesis is a dev dependency; the property tests importorskip it
        return
    from gracheck.theory import strategies

    strategies.register_profiles()
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def single_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _assert_evidence(r, claim_id: str, method: str, seed: int) -> None:
    """A CheckResult must carry both sides, an error, a tolerance, the seed and the time."""
    where = f"{claim_id}[{method}]"
    assert r.claim_id == claim_id and r.method == method, where
    assert r.seed == seed, f"{where}: seed {r.seed} recorded, {seed} used"
    assert r.seconds > 0, f"{where}: no time recorded"
    assert r.measured is not None and r.expected is not None, f"{where}: measured/expected missing ({r.detail})"
    assert r.abs_err is not None or r.rel_err is not None, f"{where}: no error measure ({r.detail})"
    assert r.atol is not None or r.rtol is not None, f"{where}: no tolerance ({r.detail})"
    assert r.detail, f"{where}: every result says what was compared"
    assert r.source, f"{where}: no paper source"


@pytest.fixture
def check_claim():
    from gracheck.claims import CheckSkipped, get

    def run(claim_id: str, method: str, seed: int = 0, **kw):
        try:
            results = get(claim_id).check(method, seed=seed, **kw)
        except CheckSkipped as e:
            pytest.skip(f"{claim_id}[{method}] skipped: {e}")
        assert results, f"{claim_id}[{method}] returned no evidence"
        bad = [r.failure_message() for r in results if not r.passed]
        assert not bad, "\n".join(bad)
        for r in results:
            _assert_evidence(r, claim_id, method, seed)
        return results

    return run
