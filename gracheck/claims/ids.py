"""The ledger of claim ids: every id gracheck has published, and the retired ones, which are never reused.

Ids are what papers cite, so they are stable (README, "Citing a claim"):

* a claim whose statement is reworded keeps its id; its statement hash changes
  (:func:`gracheck.base.evidence.statement_hash`), and that is how a citation tells the versions apart;
* a claim that is withdrawn (or split, or merged into another) is moved from the registry to :data:`RETIRED`,
  with the first version without it, the reason and what replaces it. Its id is never given to another claim:
  the registry refuses to collect or :func:`~gracheck.claims.register` a retired id;
* a new claim's id is added to :data:`PUBLISHED` in the commit that adds the claim.

``tests/test_citation.py`` holds the three sets together: every registered id is published, every published id
is registered or retired, and no retired id is registered.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType


@dataclasses.dataclass(frozen=True)
class Retired:
    """A retired claim id: ``since`` the first gracheck version without the claim, ``reason`` why it went,
    ``replaced_by`` the ids that state what it stated (empty when nothing does)."""

    id: str
    since: str
    reason: str
    replaced_by: tuple[str, ...] = ()


# Every claim id gracheck has published, in the registry's order (derivations, errata, empirical claims).
PUBLISHED: tuple[str, ...] = (
    "eq2-beta-vae-objective",  # issue 16
    "eq1-posterior-pushforward",
    "thm1-transform-identity",
    "sec3.1-rotation-closure",
    "sec3.1-ppca-symmetry",
    "appA-prior-invariance",
    "appC-shared-covariance-rotation",
    "thm1-strict-inequality",
    "sec3-outside-family-strict",
    "eq4-second-order-objective",
    "eq5-hessian-decomposition",
    "eq5-decoder-jacobian",  # issue 16
    "eq6-piecewise-linear-exact",
    "eq7-taylor-objective",  # issue 16
    "eq8-concave-in-covariance",
    "eq9-optimal-covariance",
    "eq10-optimal-value",
    "eq11-gauss-newton-covariance",
    "eq12-general-grae",
    "eq13-gaussian-grae",
    "eq14-hadamard-bound",
    "eq14-column-estimator-unbiased",
    "sec5.1-observation-hessians",
    "sec5.2-pullback-metric",
    "sec5.3-log1p-series",
    "eq14-mean-field-taylor-optimum",
    "sec5.3-orthogonality-penalty",
    "sec5.1-bernoulli-parameterisation",
    "sec7-taylor-gap",
    "erratum-appA-unit-jacobian",
    "erratum-appA-psi-argument",
    "erratum-appB-eq15-jacobian",
    "erratum-appC-gaussian-w",
    "erratum-thm1-hypothesis",
    "erratum-eq9-maximiser-condition",
    "erratum-sec7-decoder-variance",
    "erratum-sec7-relu-eq6-exact",
    "erratum-sec5.3-frobenius-order",
    "erratum-sec5.2-fixed-covariance",
    "erratum-sec7-gap-as-printed",
    "erratum-appD-celeba-decoder-size",
    "erratum-appG-eq17-reference",
    "erratum-sec7-fid-beta-qualifier",
    "fig1-rotation-uniqueness",
    "fig2-precision-matches-jtj",
    "fig3-objectives-agree",
    "fig4-fid-agree",
    "eq6-residual-trained",
    "grae-approx-trains-like-beta-vae",
)

# id -> Retired. None so far: no claim has been withdrawn since ids were first published (gracheck 0.1.0).
_RETIRED: dict[str, Retired] = {}
RETIRED = MappingProxyType(_RETIRED)
