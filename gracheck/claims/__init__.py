"""The claims of Kumar & Poole (2020) as a registry of named, checkable claims.

``registry()`` lists every claim; ``get(id).check()`` runs its checks and returns
:class:`CheckResult` evidence. See DESIGN.md for the ids.
"""

from gracheck.base.evidence import (
    CheckResult,
    CheckSkipped,
    Claim,
    ClaimFailed,
    get,
    registry,
)

__all__ = ["CheckResult", "CheckSkipped", "Claim", "ClaimFailed", "get", "registry"]
