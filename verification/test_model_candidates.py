"""The claims that take a model-level candidate (issue 16): every method with the library's own implementation.

One test per (claim, method), ``test_claim[<claim-id>[<method>]]``, through the ``check_claim`` fixture (every
result passed and carries its evidence), for the new claims (Eq. 2, the decoder Jacobian, Eq. 7) and the existing
ones whose checks now run a candidate (Eq. 12, 13, the column estimator of Eq. 14). The table of wrong
implementations each must reject is ``tests/test_mutants_models.py``.
"""

from __future__ import annotations

import pytest

from gracheck.claims import get

pytestmark = pytest.mark.usefixtures("single_thread")

METHODS = {
    "eq2-beta-vae-objective": ("closed-form", "montecarlo"),
    "eq5-decoder-jacobian": ("closed-form", "autograd"),
    "eq7-taylor-objective": ("closed-form", "autograd"),
}
CASES = [pytest.param(cid, m, id=f"{cid}[{m}]") for cid, ms in METHODS.items() for m in ms]


@pytest.mark.parametrize("claim_id", list(METHODS))
def test_claim_metadata(claim_id):
    c = get(claim_id)
    assert set(c.methods) == set(METHODS[claim_id]), (claim_id, c.methods)
    assert c.kind == "derivation" and c.takes_candidate and c.candidate_signature.startswith("candidate(")


@pytest.mark.parametrize("claim_id, method", CASES)
def test_claim(claim_id, method, check_claim):
    check_claim(claim_id, method, seed=0)
