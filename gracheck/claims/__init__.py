"""The claims of Kumar & Poole (2020) as a registry of named, checkable claims.

``registry()`` lists every claim; ``get(id).check()`` runs its checks and returns
:class:`CheckResult` evidence. The ids are stable: cite them with the statement hash
(``python -m gracheck.report --list [--json]`` prints every id with its kind, paper source, statement and
hash). :mod:`gracheck.claims.ids` is the ledger of published and retired ids; a retired id is never reused.

The registry owns no claim. It imports the modules that state them, in the paper's order, and
collects every module-level :class:`Claim`: the derivation and erratum families of
:mod:`gracheck.theory`, then one experiment module per empirical claim of
:mod:`gracheck.experiments` (id, source, statement, decision rule, configs, run and check all live
there). The report's order is this order, grouped by kind (derivations, errata, empirical).
:func:`register` adds a claim stated elsewhere (a test's fake claim, another project's claim).
"""

from __future__ import annotations

import difflib
import importlib

from gracheck.base.evidence import KINDS, CheckResult, CheckSkipped, Claim, ClaimFailed
from gracheck.claims.ids import PUBLISHED, RETIRED, Retired

__all__ = [
    "PUBLISHED", "RETIRED", "CheckResult", "CheckSkipped", "Claim", "ClaimFailed", "Retired", "get", "register",
    "registry", "unregister",
]

# The modules that state claims, in paper order (a table of modules, not of claims).
MODULES: tuple[str, ...] = (
    "gracheck.theory.sec2_objective",  # Eq. 2 (the β-VAE objective as an implementation under test)
    "gracheck.theory.sec3_uniqueness",  # Eq. 1, Thm 1/Eq. 15, Sec. 3.1, App. A (+ App. A errata)
    "gracheck.theory.sec4_taylor",  # Eq. 3-11 (+ Sec. 7 decoder-variance erratum)
    "gracheck.theory.sec5_grae",  # Eq. 12-14, Sec. 5.1-5.3 (+ Sec. 5.3 erratum)
    "gracheck.theory.sec7_gap",  # Sec. 7 / App. F gap (+ its erratum)
    "gracheck.theory.appendices",  # App. D, App. G and Sec. 7 text errata
    "gracheck.experiments.fig1_rotation",  # Fig. 1, 5, 6; App. C
    "gracheck.experiments.fig2_precision",  # Fig. 2, 7; Eq. 11
    "gracheck.experiments.fig3_objectives",  # Fig. 3; App. F
    "gracheck.experiments.fig4_fid",  # Fig. 4; Table 1; App. G
    "gracheck.experiments.eq6_residual",  # Eq. 5, 6 on trained decoders
    "gracheck.experiments.grae_approx_training",  # Sec. 5.3, 7
)

_claims: dict[str, Claim] | None = None


def collect(modules: tuple[str, ...] | list[str]) -> dict[str, Claim]:
    """id → Claim for every module-level :class:`Claim` of ``modules`` (imported in order; a claim bound
    to several names or imported by another module counts once). ValueError when two different claims
    share an id, or when a claim takes a retired id (:data:`RETIRED`)."""
    out: dict[str, Claim] = {}
    where: dict[str, str] = {}
    for name in modules:
        mod = importlib.import_module(name)
        for obj in vars(mod).values():
            if not isinstance(obj, Claim):
                continue
            prev = out.get(obj.id)
            if prev is obj:
                continue
            if prev is not None:
                raise ValueError(f"id: claim {obj.id!r} is registered twice (in {where[obj.id]} and {name})")
            _refuse_retired(obj.id, name)
            out[obj.id], where[obj.id] = obj, name
    return out


def _refuse_retired(claim_id: str, where: str) -> None:
    r = RETIRED.get(claim_id)
    if r is not None:
        raise ValueError(f"id: {claim_id!r} (in {where}) was retired in gracheck {r.since} ({r.reason}) and is never "
                         "reused; give the claim a new id")


def _all() -> dict[str, Claim]:
    global _claims
    if _claims is None:
        _claims = collect(MODULES)
    return _claims


def registry() -> list[Claim]:
    """Every registered claim in paper order, grouped by kind (derivations, errata, empirical)."""
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(_all().values(), key=lambda c: order[c.kind])


def get(claim_id: str) -> Claim:
    """The claim with id ``claim_id``; ``KeyError`` listing close ids if there is none."""
    claims = _all()
    try:
        return claims[claim_id]
    except KeyError:
        close = difflib.get_close_matches(claim_id, list(claims), n=3)
        raise KeyError(f"claim_id: no claim {claim_id!r}; did you mean {close}?") from None


def register(claim: Claim) -> Claim:
    """Add a claim stated outside the registry's modules; ValueError if its id is taken or retired."""
    if not isinstance(claim, Claim):
        raise TypeError(f"claim: expected a Claim, got {type(claim).__name__}")
    _refuse_retired(claim.id, "register()")
    claims = _all()
    if claim.id in claims:
        raise ValueError(f"id: claim {claim.id!r} is registered twice")
    claims[claim.id] = claim
    return claim


def unregister(claim_id: str) -> None:
    """Remove a claim added with :func:`register` (the collected ones cannot be removed)."""
    claims = _all()
    if claim_id in collect(MODULES):
        raise ValueError(f"claim_id: {claim_id!r} is stated in {MODULES} and cannot be unregistered")
    claims.pop(claim_id, None)
