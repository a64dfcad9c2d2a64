"""``python -m gracheck.report``: run every claim and write a report a reader can trust at a glance.

Writes ``results.json`` (validated by ``results.schema.json``), ``report.md``, a
self-contained ``report.html`` and ``figures/*.png`` into the output folder. See
:func:`build_report` for the programmatic API and :func:`main` for the command line;
the status and exit-code rules are in :mod:`gracheck.report._run` (exit codes: 0 ok, 1 a claim
failed or with ``--strict`` an empirical claim is not verified, 2 bad usage, 3 internal error or bad
environment).
"""

from gracheck.report._cli import main
from gracheck.report._list import claim_list, list_schema_path
from gracheck.report._run import (
    EXIT_CODES,
    STATUSES,
    ReportEnvironmentError,
    ReportResult,
    UsageError,
    build_report,
    schema_path,
)

__all__ = [
    "EXIT_CODES", "STATUSES", "ReportEnvironmentError", "ReportResult", "UsageError", "build_report", "claim_list",
    "list_schema_path", "main", "schema_path",
]
