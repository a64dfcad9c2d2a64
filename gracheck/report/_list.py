"""``python -m gracheck.report --list [--json]``: every claim with what a citation needs.

:func:`claim_list` is the JSON document (schema: ``claims.schema.json`` beside this file, :func:`list_schema_path`):
the package version, the statement-hash scheme, and per claim its id, kind, paper source, statement, corrected
statement (errata; '' otherwise), statement hash, methods, whether it takes a candidate and the candidate's
signature; then the retired ids. :func:`claim_lines` is the plain-text table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gracheck.base.evidence import STATEMENT_HASH_SCHEME
from gracheck.base.version import __version__


def list_schema_path() -> Path:
    """The JSON Schema (draft 2020-12) that ``--list --json`` follows."""
    return Path(__file__).with_name("claims.schema.json")


def claim_list() -> dict[str, Any]:
    """The ``--list --json`` document (see the module docstring), claims in the registry's order."""
    from gracheck.claims import RETIRED, registry

    claims = [
        {
            "id": c.id,
            "kind": c.kind,
            "source": c.source,
            "statement": c.statement,
            "corrected": c.corrected,
            "statement_hash": c.statement_hash,
            "methods": list(c.methods),
            "takes_candidate": c.takes_candidate,
            "candidate_signature": c.candidate_signature if c.takes_candidate else None,
        }
        for c in registry()
    ]
    retired = [{"id": r.id, "since": r.since, "reason": r.reason, "replaced_by": list(r.replaced_by)}
               for r in RETIRED.values()]
    return {"gracheck_version": __version__, "statement_hash_scheme": STATEMENT_HASH_SCHEME, "claims": claims,
            "retired": retired}


def claim_lines() -> list[str]:
    """One line per claim: id, kind, statement hash, paper source, and ``[candidate]`` when it takes one."""
    from gracheck.claims import registry

    return [f"{c.id:40s} {c.kind:10s} {c.statement_hash}  {c.source}{'  [candidate]' if c.takes_candidate else ''}"
            for c in registry()]
