"""Registry-wide checks: every claim id of DESIGN.md registered exactly once, with its evidence contract.

* every id of DESIGN.md's "Claim ids" section is registered, once, with the kind DESIGN.md gives it;
  claims registered beyond DESIGN.md must be errata (new errata are welcome, other ids are not);
* every claim has a paper source, a statement, a kind and methods from the known set, and every
  method it lists has a check implemented;
* every derivation is checked by at least two methods (none of them "empirical"); every erratum
  states its corrected form; every empirical claim has exactly the "empirical" method;
* exactly the claims of CANDIDATE_CLAIMS take a candidate implementation, and state its signature;
* the empirical claims run (marked ``empirical``; they skip with a reason until their experiment exists).
"""

from __future__ import annotations

import collections
import os
import re
from pathlib import Path

import pytest

from gracheck.base.evidence import KINDS, METHODS, claim
from gracheck.claims import MODULES, get, register, registry

DESIGN_IDS = {
    "derivation": (
        "eq1-posterior-pushforward", "thm1-transform-identity", "sec3.1-rotation-closure", "sec3.1-ppca-symmetry",
        "appA-prior-invariance", "eq4-second-order-objective", "eq5-hessian-decomposition", "eq6-piecewise-linear-exact",
        "eq8-concave-in-covariance", "eq9-optimal-covariance", "eq10-optimal-value", "eq11-gauss-newton-covariance",
        "eq12-general-grae", "eq13-gaussian-grae", "eq14-hadamard-bound", "eq14-column-estimator-unbiased",
        "sec5.1-observation-hessians", "sec5.2-pullback-metric", "sec5.3-log1p-series", "sec7-taylor-gap",
    ),
    "erratum": (
        "erratum-sec7-gap-as-printed", "erratum-sec7-decoder-variance", "erratum-appA-unit-jacobian",
        "erratum-appA-psi-argument", "erratum-sec5.3-frobenius-order",
    ),
    "empirical": (
        "fig1-rotation-uniqueness", "fig2-precision-matches-jtj", "fig3-objectives-agree", "fig4-fid-agree",
        "eq6-residual-trained", "grae-approx-trains-like-beta-vae",
    ),
}
ALL_DESIGN_IDS = [i for ids in DESIGN_IDS.values() for i in ids]
# Derivations added after DESIGN.md's list (issue 13: statements of the paper that had no claim, and sharper statements
# of existing ones). New errata need no entry here; any other new id does, with its kind.
ADDED_IDS = {
    "eq14-mean-field-taylor-optimum": "derivation",
    "sec5.3-orthogonality-penalty": "derivation",
    "sec5.1-bernoulli-parameterisation": "derivation",
    "appC-shared-covariance-rotation": "derivation",
    "thm1-strict-inequality": "derivation",
    "sec3-outside-family-strict": "derivation",
    # issue 16: statements that an implementation can be checked against and no claim stated (Eq. 2, Eq. 7, J itself)
    "eq2-beta-vae-objective": "derivation",
    "eq5-decoder-jacobian": "derivation",
    "eq7-taylor-objective": "derivation",
}
# The pure formulas of DESIGN.md, and (issue 16) the model-level objectives and the Jacobian engine.
CANDIDATE_CLAIMS = {"eq9-optimal-covariance", "eq14-hadamard-bound", "sec7-taylor-gap", "eq2-beta-vae-objective",
                    "eq5-decoder-jacobian", "eq7-taylor-objective", "eq12-general-grae", "eq13-gaussian-grae",
                    "eq14-column-estimator-unbiased"}


def _design_md() -> Path | None:
    env = os.environ.get("GRACHECK_DESIGN")
    for p in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[2] / "shared" / "DESIGN.md"]:
        if p.is_file():
            return p
    return None


def test_design_md_lists_the_same_ids():
    """The id list above is DESIGN.md's (guards against the two drifting apart)."""
    p = _design_md()
    if p is None:
        pytest.skip("DESIGN.md not found (set GRACHECK_DESIGN to its path)")
    text = p.read_text(encoding="utf-8")
    section = text.split("## Claim ids", 1)[1].split("\n## ", 1)[0]
    found = {}
    for kind, label in (("derivation", "Derivations:"), ("erratum", "Errata:"), ("empirical", "Empirical:")):
        part = section.split(label, 1)[1]
        for other in ("Derivations:", "Errata:", "Empirical:"):
            if other != label and other in part:
                part = part.split(other, 1)[0]
        found[kind] = set(re.findall(r"`([^`]+)`", part))
    for kind, ids in DESIGN_IDS.items():
        assert found[kind] == set(ids), (kind, found[kind] ^ set(ids))


def test_every_design_claim_registered_exactly_once():
    counts = collections.Counter(c.id for c in registry())
    dup = [i for i, n in counts.items() if n > 1]
    assert not dup, f"registered more than once: {dup}"
    missing = [i for i in ALL_DESIGN_IDS if i not in counts]
    assert not missing, f"DESIGN.md claims not registered: {missing}"
    for kind, ids in DESIGN_IDS.items():
        wrong = [(i, get(i).kind) for i in ids if get(i).kind != kind]
        assert not wrong, f"kind differs from DESIGN.md: {wrong}"


def test_claims_beyond_design_are_errata():
    extra = [(c.id, c.kind) for c in registry() if c.id not in ALL_DESIGN_IDS]
    not_errata = [e for e in extra if e[1] != "erratum" and ADDED_IDS.get(e[0]) != e[1]]
    assert not not_errata, f"claims registered beyond DESIGN.md that are neither errata nor listed in ADDED_IDS: {not_errata}"


def test_added_ids_are_registered():
    missing = [i for i in ADDED_IDS if i not in {c.id for c in registry()}]
    assert not missing, f"ADDED_IDS not registered: {missing}"


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        register(claim("eq9-optimal-covariance", source="x", statement="x", kind="derivation"))


def _ids():
    return [c.id for c in registry()]


@pytest.mark.parametrize("claim_id", _ids())
def test_claim_contract(claim_id):
    c = get(claim_id)
    assert c.source.strip(), f"{claim_id}: no paper source"
    assert c.statement.strip() and len(c.statement) >= 30, f"{claim_id}: no statement a reader can check"
    assert c.kind in KINDS
    assert c.methods, f"{claim_id}: no methods"
    assert set(c.methods) <= set(METHODS), f"{claim_id}: unknown methods {set(c.methods) - set(METHODS)}"
    assert set(c.methods) == set(c.checks), f"{claim_id}: methods declared without a check: {set(c.methods) - set(c.checks)}"
    assert c.takes_candidate == (claim_id in CANDIDATE_CLAIMS), f"{claim_id}: takes_candidate={c.takes_candidate}"
    assert bool(c.candidate_signature.strip()) == c.takes_candidate, f"{claim_id}: candidate_signature"
    if c.kind == "derivation":
        assert len(c.methods) >= 2, f"{claim_id}: a derivation needs at least two independent methods, has {c.methods}"
        assert "empirical" not in c.methods
    elif c.kind == "erratum":
        assert c.corrected.strip(), f"{claim_id}: an erratum states its corrected form"
        assert "empirical" not in c.methods
    else:
        assert tuple(c.methods) == ("empirical",), f"{claim_id}: empirical claims have the empirical method only"


# The empirical claims run in verification/test_empirical.py (skip / pass / xfail-refuted).


@pytest.mark.parametrize("claim_id", DESIGN_IDS["empirical"])
def test_one_home_per_empirical_claim(claim_id):
    """Everything about an empirical claim lives in its experiment module: the Claim (id, source, statement,
    the report's section text), the decision rule in the docstring, CONFIGS per scale, run and check."""
    import importlib

    c = get(claim_id)
    mods = [m for m in MODULES if m.startswith("gracheck.experiments.")]
    homes = [m for m in mods if getattr(importlib.import_module(m), "CLAIM", None) is c]
    assert len(homes) == 1, f"{claim_id}: stated in {homes}"
    mod = importlib.import_module(homes[0])
    assert c.figure is not None and c.figure.title and c.figure.shows, f"{claim_id}: no report section text"
    assert set(mod.CONFIGS) == {"smoke", "paper"} and callable(mod.run) and callable(mod.check)
    doc = mod.__doc__ or ""
    for needle in ("Decision rule", "verified", "refuted", "inconclusive"):
        assert needle.lower() in doc.lower(), f"{claim_id}: the module docstring does not state its {needle!r} reading"
    assert not hasattr(mod, "SOURCE"), f"{claim_id}: a second source string beside CLAIM.source"
