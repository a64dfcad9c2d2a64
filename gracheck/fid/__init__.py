"""Distances between image distributions (see :mod:`gracheck.fid.distance`)."""

from gracheck.fid.distance import *  # noqa: F401,F403
from gracheck.fid.distance import __all__  # noqa: F401
