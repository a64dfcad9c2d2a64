"""Imports every claim family so that its claims register (order = report order)."""

from gracheck.claims import empirical  # noqa: F401
