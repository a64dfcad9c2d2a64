"""Imports every claim family so that its claims register; import order = report order (paper order)."""

from gracheck.claims import sec3_uniqueness  # noqa: F401  Eq. 1, Thm 1/Eq. 15, Sec. 3.1, App. A (+ App. A errata)
from gracheck.claims import sec4_taylor  # noqa: F401  Eq. 3-11 (+ Sec. 7 decoder-variance erratum)
from gracheck.claims import sec5_grae  # noqa: F401  Eq. 12-14, Sec. 5.1-5.3 (+ Sec. 5.3 erratum)
from gracheck.claims import sec7_gap  # noqa: F401  Sec. 7 / App. F gap (+ its erratum)
from gracheck.claims import appendices  # noqa: F401  App. D, App. G and Sec. 7 text errata (issue 13)
from gracheck.claims import empirical  # noqa: F401  Figures 1-4 and the trained-network claims
