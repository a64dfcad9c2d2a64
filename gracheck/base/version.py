"""gracheck's version (one place; the package face re-exports it, caches key on it)."""

__version__ = "0.1.0"
