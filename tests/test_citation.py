"""What a citation of gracheck rests on: the statement hash, the claim list, the id ledger and CITATION.cff.

* ``statement_hash`` follows its documented definition (recomputed here from the README's words with hashlib,
  not by calling the library), is the same in a fresh process, changes with every field it covers and not
  with a whitespace reflow, and one pinned value guards the definition against an unannounced change;
* ``python -m gracheck.report --list --json`` is valid against ``claims.schema.json`` and says the same as the
  registry (hashes recomputed from the listed text);
* the id ledger: every registered id is published, every published id is registered or retired, and a
  retired id can be neither collected nor registered;
* ``CITATION.cff``: CFF 1.2.0 fields, gracheck as the software (its version the package's), the paper as the
  referenced work.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from gracheck.base.evidence import STATEMENT_HASH_SCHEME, Claim, claim, statement_hash

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _by_the_definition(*fields: str) -> str:
    """The README's definition, written out independently: NFC, whitespace runs → one space, strip; the compact
    JSON array [scheme, id, kind, source, statement, corrected] in UTF-8; first 16 hex digits of its SHA-256."""
    norm = [" ".join(unicodedata.normalize("NFC", f).split()) for f in fields]
    blob = "[" + ",".join(json.dumps(x, ensure_ascii=False) for x in ["gracheck-statement-hash/1", *norm]) + "]"
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- statement hash


def test_statement_hash_follows_its_definition_for_every_claim():
    from gracheck.claims import registry

    for c in registry():
        assert c.statement_hash == _by_the_definition(c.id, c.kind, c.source, c.statement, c.corrected), c.id
    assert STATEMENT_HASH_SCHEME == "gracheck-statement-hash/1"


def test_statement_hash_pinned_value():
    """A fixed input's hash, written down once: a change of the definition must change the scheme string too."""
    h = statement_hash("eq0-example", "derivation", "Eq. 0", "β/2 · log|I + JᵀJ/β| ≥ 0 for β > 0.", "")
    assert h == _by_the_definition("eq0-example", "derivation", "Eq. 0", "β/2 · log|I + JᵀJ/β| ≥ 0 for β > 0.", "")
    assert h == "6e18db0b39ac4c21"  # = printf %s '["gracheck-statement-hash/1",...]' | sha256sum


def test_statement_hash_is_the_same_in_a_fresh_process():
    from gracheck.claims import registry

    here = {c.id: c.statement_hash for c in registry()}
    code = "import json; from gracheck.claims import registry; print(json.dumps({c.id: c.statement_hash for c in registry()}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**_env(), "PYTHONHASHSEED": "123"},
                         cwd=str(ROOT), timeout=120, check=True).stdout
    assert json.loads(out) == here


@pytest.mark.parametrize("field", ["id", "kind", "source", "statement", "corrected"])
def test_statement_hash_changes_with_every_field(field):
    base = dict(id="x-claim", kind="erratum", source="Eq. 1", statement="The printed form is wrong.",
                corrected="The corrected form holds.")
    h0 = statement_hash(**base)
    changed = dict(base, **{field: base[field] + ("s" if field != "kind" else "")})
    if field == "kind":
        changed["kind"] = "derivation"
    assert statement_hash(**changed) != h0


def test_statement_hash_ignores_whitespace_reflow_and_unicode_form():
    a = statement_hash("x", "derivation", "Eq. 1", "log|I + JᵀJ/β| is\n   concave.  ")
    b = statement_hash("x", "derivation", "Eq. 1", "log|I + JᵀJ/β| is concave.")
    c = statement_hash("x", "derivation", "Eq. 1", unicodedata.normalize("NFD", "log|I + JᵀJ/β| is concave."))
    assert a == b == c
    assert statement_hash("x", "derivation", "Eq. 1", "log|I + JᵀJ/β| is convex.") != b


def test_claim_statement_hash_is_the_function_and_ignores_the_checks():
    c = claim("test-cite-hash", source="Eq. T", statement="A statement a reader can check.", kind="derivation")
    assert c.statement_hash == statement_hash("test-cite-hash", "derivation", "Eq. T", "A statement a reader can check.")
    d = Claim(id=c.id, source=c.source, statement=c.statement, kind=c.kind, takes_candidate=True, candidate_signature="f(x)")
    assert d.statement_hash == c.statement_hash  # the candidate signature is not part of the statement
    with pytest.raises(TypeError, match="statement"):
        statement_hash("x", "derivation", "Eq. 1", None)  # type: ignore[arg-type]


def test_a_claim_that_takes_a_candidate_states_its_signature():
    with pytest.raises(ValueError, match="candidate_signature"):
        claim("test-cite-sig", source="Eq. T", statement="s" * 40, kind="derivation", takes_candidate=True)
    with pytest.raises(ValueError, match="candidate_signature"):
        claim("test-cite-sig", source="Eq. T", statement="s" * 40, kind="derivation", candidate_signature="f(x)")


# ---------------------------------------------------------------- --list --json


def _list_json() -> dict:
    out = subprocess.run([sys.executable, "-m", "gracheck.report", "--list", "--json"], capture_output=True, text=True,
                         env=_env(), cwd=str(ROOT), timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_list_json_is_valid_against_its_schema_and_matches_the_registry():
    jsonschema = pytest.importorskip("jsonschema")
    from gracheck import __version__
    from gracheck.claims import registry
    from gracheck.report import list_schema_path

    doc = _list_json()
    schema = json.loads(list_schema_path().read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(doc)
    assert doc["gracheck_version"] == __version__
    claims = registry()
    assert [e["id"] for e in doc["claims"]] == [c.id for c in claims]
    for e, c in zip(doc["claims"], claims):
        assert (e["kind"], e["source"], e["statement"], e["corrected"]) == (c.kind, c.source, c.statement, c.corrected)
        assert e["statement_hash"] == _by_the_definition(e["id"], e["kind"], e["source"], e["statement"], e["corrected"])
        assert e["methods"] == list(c.methods)
        assert e["takes_candidate"] == c.takes_candidate
        assert (e["candidate_signature"] is not None) == c.takes_candidate
    assert sum(e["takes_candidate"] for e in doc["claims"]) >= 8


def test_list_json_schema_rejects_what_it_should():
    jsonschema = pytest.importorskip("jsonschema")
    from gracheck.report import claim_list, list_schema_path

    v = jsonschema.Draft202012Validator(json.loads(list_schema_path().read_text(encoding="utf-8")))
    doc = claim_list()
    assert not list(v.iter_errors(doc))
    bad = json.loads(json.dumps(doc))
    bad["claims"][0]["statement_hash"] = "XYZ"
    assert list(v.iter_errors(bad))
    bad = json.loads(json.dumps(doc))
    cand = next(e for e in bad["claims"] if e["takes_candidate"])
    cand["candidate_signature"] = None
    assert list(v.iter_errors(bad))
    bad = json.loads(json.dumps(doc))
    err = next(e for e in bad["claims"] if e["kind"] == "erratum")
    err["corrected"] = ""
    assert list(v.iter_errors(bad))


def test_list_text_and_json_flag_usage(capsys):
    from gracheck.claims import registry
    from gracheck.report import main

    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(registry())
    c = registry()[0]
    assert lines[0].split()[:3] == [c.id, c.kind, c.statement_hash]
    with pytest.raises(SystemExit) as e:
        main(["--json"])
    assert e.value.code == 2
    assert "--json: only with --list" in capsys.readouterr().err


# ---------------------------------------------------------------- ids: published, retired, never reused


def test_every_registered_id_is_published_and_every_published_id_registered_or_retired():
    from gracheck.claims import PUBLISHED, RETIRED, registry

    ids = [c.id for c in registry()]
    assert len(set(PUBLISHED)) == len(PUBLISHED), "an id is listed twice in PUBLISHED"
    unpublished = [i for i in ids if i not in PUBLISHED]
    assert not unpublished, f"add these new ids to gracheck/claims/ids.py PUBLISHED: {unpublished}"
    gone = [i for i in PUBLISHED if i not in ids and i not in RETIRED]
    assert not gone, f"published ids that are neither registered nor retired (retire them, never delete): {gone}"
    reused = [i for i in ids if i in RETIRED]
    assert not reused, f"retired ids registered again: {reused}"
    for r in RETIRED.values():
        assert r.id in PUBLISHED and r.since and r.reason
        assert all(n in ids for n in r.replaced_by), r


def test_a_retired_id_is_never_reused(monkeypatch):
    from gracheck import claims
    from gracheck.claims import Retired, collect, ids, register

    monkeypatch.setitem(ids._RETIRED, "test-cite-retired", Retired("test-cite-retired", "0.0.1", "withdrawn in a test"))
    with pytest.raises(ValueError, match="retired in gracheck 0.0.1"):
        register(claim("test-cite-retired", source="Eq. T", statement="s" * 40, kind="derivation"))
    mod = type(sys)("gracheck_test_cite_mod")
    mod.C = claim("test-cite-retired", source="Eq. T", statement="s" * 40, kind="derivation")
    monkeypatch.setitem(sys.modules, "gracheck_test_cite_mod", mod)
    with pytest.raises(ValueError, match="never reused"):
        collect(["gracheck_test_cite_mod"])
    assert "test-cite-retired" not in {c.id for c in claims.registry()}


# ---------------------------------------------------------------- CITATION.cff

# The part of the Citation File Format 1.2.0 schema that CITATION.cff uses, written from the format's documentation:
# the top-level keys it allows (a misspelt key fails), the required ones, and the person / entity / reference /
# identifier objects with the keys and types used here. (The official schema also validates the file: `cffconvert
# --validate`, when cffconvert is installed, is run below.)
_PERSON = {"type": "object", "required": ["family-names", "given-names"], "properties": {
    "family-names": {"type": "string", "minLength": 1}, "given-names": {"type": "string", "minLength": 1},
    "orcid": {"type": "string", "pattern": "^https://orcid\\.org/"}, "affiliation": {"type": "string"}}}
_ENTITY = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}}
_AUTHORS = {"type": "array", "minItems": 1, "items": {"anyOf": [_PERSON, _ENTITY]}}
_IDENTIFIER = {"type": "object", "required": ["type", "value"], "additionalProperties": False, "properties": {
    "type": {"enum": ["doi", "url", "swh", "other"]}, "value": {"type": "string", "minLength": 1},
    "description": {"type": "string"}}}
_REFERENCE_KEYS = (
    "abbreviation abstract authors collection-doi collection-title collection-type commit conference contact copyright "
    "data-type database database-provider date-accessed date-downloaded date-published date-released department doi "
    "edition editors editors-series end entry filename format identifiers institution isbn issn issue issue-date "
    "issue-title journal keywords languages license license-url loc-end loc-start location medium month nihmsid notes "
    "number number-volumes pages patent-states pmcid publisher recipients repository repository-artifact repository-code "
    "scope section senders start status term thesis-type title translators type url version volume volume-title year "
    "year-original").split()
_REFERENCE = {
    "type": "object", "required": ["type", "title", "authors"],
    "propertyNames": {"enum": _REFERENCE_KEYS},
    "properties": {
        "type": {"enum": ["article", "book", "conference", "conference-paper", "generic", "proceedings", "report",
                          "software", "thesis", "unpublished"]},
        "title": {"type": "string", "minLength": 1}, "authors": _AUTHORS, "year": {"type": "integer"},
        "volume": {"type": "integer"}, "collection-title": {"type": "string"}, "collection-type": {"type": "string"},
        "conference": _ENTITY, "publisher": _ENTITY, "url": {"type": "string", "pattern": "^https?://"},
        "identifiers": {"type": "array", "items": _IDENTIFIER},
    },
}
CFF_1_2_0_SUBSET = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["cff-version", "message", "title", "authors"],
    "propertyNames": {"enum": [
        "abstract", "authors", "cff-version", "commit", "contact", "date-released", "doi", "identifiers", "keywords",
        "license", "license-url", "message", "preferred-citation", "references", "repository", "repository-artifact",
        "repository-code", "title", "type", "url", "version"]},
    "properties": {
        "cff-version": {"const": "1.2.0"}, "message": {"type": "string", "minLength": 1},
        "title": {"type": "string", "minLength": 1}, "abstract": {"type": "string"}, "authors": _AUTHORS,
        "type": {"enum": ["software", "dataset"]}, "version": {"type": "string", "minLength": 1},
        "license": {"type": "string", "pattern": "^[A-Za-z0-9.+-]+$"},
        "keywords": {"type": "array", "items": {"type": "string"}},
        "references": {"type": "array", "items": _REFERENCE},
    },
}


def _cff() -> dict:
    yaml = pytest.importorskip("yaml")  # dev dependency (pyproject.toml [dev])
    return yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))


def test_citation_cff_is_cff_1_2_0_software_citing_the_paper():
    jsonschema = pytest.importorskip("jsonschema")
    import tomllib

    from gracheck import __version__

    cff = _cff()
    jsonschema.Draft202012Validator(CFF_1_2_0_SUBSET).validate(cff)
    assert cff["type"] == "software" and "gracheck" in cff["title"]
    assert cff["version"] == __version__ == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert cff["license"] == "MIT"
    (paper,) = [r for r in cff["references"] if "Implicit Regularization" in r["title"]]
    assert paper["type"] == "conference-paper" and paper["year"] == 2020 and paper["volume"] == 119
    assert [(a["family-names"], a["given-names"]) for a in paper["authors"]] == [("Kumar", "Abhishek"), ("Poole", "Ben")]
    assert "statement hash" in cff["message"] and "claim" in cff["message"]
    bad = dict(cff, **{"cff_version": "1.2.0"})
    assert list(jsonschema.Draft202012Validator(CFF_1_2_0_SUBSET).iter_errors(bad)), "a misspelt key must fail"


def test_citation_cff_with_cffconvert_when_installed():
    import shutil

    exe = shutil.which("cffconvert")
    if exe is None:
        pytest.skip("cffconvert is not installed (the hand-written CFF 1.2.0 subset schema above still ran)")
    out = subprocess.run([exe, "--validate", "--infile", str(ROOT / "CITATION.cff")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
