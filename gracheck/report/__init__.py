"""``python -m gracheck.report``: run every claim and write a report a reader can trust at a glance.

Writes ``results.json`` (validated by ``results.schema.json``), ``report.md``, a
self-contained ``report.html`` and ``figures/*.png`` into the output folder. See
:func:`build_report` for the programmatic API and :func:`main` for the command line;
the status and exit-code rules are in :mod:`gracheck.report._run`.
"""

from gracheck.report._cli import main
from gracheck.report._run import STATUSES, ReportResult, UsageError, build_report, schema_path

__all__ = ["STATUSES", "ReportResult", "UsageError", "build_report", "main", "schema_path"]
