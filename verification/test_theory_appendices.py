"""App. D, App. G and Sec. 7 text errata (gracheck.theory.appendices): every claim by every method.

One test per (claim, method), named ``test_claim[<claim-id>[<method>]]``, through the ``check_claim`` fixture
(conftest.py); for an erratum, passing means the printed statement was refuted and the corrected one verified.
"""

from __future__ import annotations

import pytest

from gracheck.claims import get

pytestmark = pytest.mark.usefixtures("single_thread")

METHODS = {
    "erratum-appD-celeba-decoder-size": ("closed-form", "autograd", "property"),
    "erratum-appG-eq17-reference": ("closed-form", "montecarlo"),
    "erratum-sec7-fid-beta-qualifier": ("closed-form", "property"),
}

CASES = [pytest.param(cid, m, id=f"{cid}[{m}]") for cid, ms in METHODS.items() for m in ms]


@pytest.mark.parametrize("claim_id", list(METHODS))
def test_claim_methods(claim_id):
    c = get(claim_id)
    assert set(c.methods) == set(METHODS[claim_id]), (claim_id, c.methods)
    assert c.kind == "erratum" and c.corrected


@pytest.mark.parametrize("claim_id, method", CASES)
def test_claim(check_claim, claim_id, method):
    check_claim(claim_id, method)


def test_errata_record_their_counterexample():
    for cid in METHODS:
        details = " ".join(r.detail for r in get(cid).check(seed=0))
        assert "COUNTEREXAMPLE" in details, (cid, details[:300])
