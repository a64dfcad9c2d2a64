"""The command line: ``python -m gracheck.report [--out DIR] [--scale smoke|paper] ...``."""

from __future__ import annotations

import argparse
import sys

from gracheck.experiments._common import SCALES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gracheck.report",
        description=(
            "Check every claim of Kumar & Poole (2020) and write results.json, report.md, report.html "
            "and figures/ into --out. Exit code 0: every derivation verified, every erratum confirmed, "
            "nothing errored (skips allowed); 1: a derivation or erratum failed or a check errored "
            "(or, with --strict, an empirical claim was refuted); 2: bad usage."
        ),
    )
    p.add_argument("--out", default="gracheck-report", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--scale", default="smoke", choices=SCALES, help="experiment scale (default: %(default)s)")
    p.add_argument("--device", default=None, metavar="cpu|cuda",
                   help="device for experiments: cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--only", nargs="+", metavar="ID", help="check only these claim ids")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed for every check (default: %(default)s)")
    p.add_argument("--strict", action="store_true", help="a refuted empirical claim also gives exit code 1")
    p.add_argument("--quiet", action="store_true", help="no progress display, only the final summary")
    p.add_argument("--no-cache", action="store_true", help="rerun experiments instead of using the result cache")
    p.add_argument("--list", action="store_true", help="list the claim ids and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the report from the command line; return the exit code (0, 1, or 2 on bad usage)."""
    from gracheck.report._run import UsageError, build_report

    args = _parser().parse_args(argv)  # argparse exits with 2 on its own errors
    if args.list:
        from gracheck.claims import registry

        for c in registry():
            print(f"{c.id:40s} {c.kind:10s} {c.source}")
        return 0
    quiet = args.quiet or not sys.stderr.isatty()
    try:
        res = build_report(
            args.out,
            scale=args.scale,
            device=args.device,
            only=args.only,
            seed=args.seed,
            strict=args.strict,
            quiet=quiet,
            use_cache=not args.no_cache,
        )
    except UsageError as e:
        print(f"python -m gracheck.report: error: {e}", file=sys.stderr)
        return 2
    print(res.summary_line())
    also = f"{res.markdown_path.name}, {res.results_path.name}"
    print(f"report: {res.html_path} (also {also}); exit code {res.exit_code}")
    return res.exit_code
