"""The command line: ``python -m gracheck.report [--out DIR] [--scale smoke|paper] ...``."""

from __future__ import annotations

import argparse
import sys

from gracheck.experiments import SCALES
from gracheck.report._run import EXIT_CODES, EXIT_INTERNAL, EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    codes = "; ".join(f"{k}: {v}" for k, v in EXIT_CODES.items())
    p = argparse.ArgumentParser(
        prog="python -m gracheck.report",
        description=(
            "Check every claim of Kumar & Poole (2020) and write results.json, report.md, report.html "
            "and figures/ into --out. An empirical claim is verified, refuted or inconclusive (the "
            "experiment could not decide: a CI straddles its margin or a precondition failed); refuted "
            "and inconclusive are findings, not errors."
        ),
        epilog=f"Exit codes: {codes}. Skipped claims (reason shown) never count as verified.",
    )
    p.add_argument("--out", default="gracheck-report", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--scale", default="smoke", choices=SCALES, help="experiment scale (default: %(default)s)")
    p.add_argument("--device", default=None, metavar="cpu|cuda",
                   help="device for experiments: cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--only", nargs="+", metavar="ID", help="check only these claim ids")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed for every check (default: %(default)s)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 unless every empirical claim that ran is verified (refuted or inconclusive fail)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress on stderr, only the final summary (by default: a live display on a terminal; "
                        "elsewhere, e.g. CI logs, pipes or nohup, one line per claim as it finishes, with its status "
                        "and seconds, and one per model an experiment trains)")
    p.add_argument("--no-cache", action="store_true", help="rerun experiments instead of using the result cache")
    p.add_argument("--list", action="store_true",
                   help="list every claim (id, kind, statement hash, paper source) and exit")
    p.add_argument("--json", action="store_true",
                   help="with --list: print the claims as JSON (id, kind, source, statement, corrected, statement_hash, "
                        "methods, takes_candidate, candidate_signature; schema: gracheck/report/claims.schema.json); "
                        "with --plan: print the plan document (gracheck/report/plan.schema.json)")
    p.add_argument("--plan", action="store_true",
                   help="list, per empirical claim, the models, steps, counted FLOPs and the time estimated on this "
                        "device from short measured warm-ups; trains nothing (with --json: the plan document)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="run within SECONDS of wall time: empirical claims first, in priority order (fig1, fig3, "
                        "eq6, grae-approx, fig2, fig4), only the jobs their plan says fit; the rest is skipped as "
                        "'not run here (budget)'; a rerun with the same cache continues (exit code 4 when anything "
                        "was left). With --plan: say which jobs such a run would start")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the report from the command line; return the exit code (see ``--help``: 0, 1, 2 or 3)."""
    from gracheck.report._run import UsageError, build_report

    parser = _parser()
    args = parser.parse_args(argv)  # argparse exits with 2 on its own errors
    if args.json and not (args.list or args.plan):
        parser.error("--json: only with --list or --plan")
    if args.list:
        from gracheck.report._list import claim_lines, claim_list

        if args.json:
            import json

            print(json.dumps(claim_list(), indent=1))  # ASCII escapes: safe on any terminal encoding
        else:
            print("\n".join(claim_lines()))
        return 0
    if args.plan or args.budget is not None:
        from gracheck.report._plan import plan_main, run_with_budget

        try:
            if args.plan:
                from gracheck.report._run import check_device, default_device

                dev = check_device(args.device if args.device is not None else default_device())
                return plan_main(scale=args.scale, device=dev, only=args.only, seed=args.seed, as_json=args.json,
                                 budget=args.budget, quiet=args.quiet)
            run = run_with_budget(args.budget, out_dir=args.out, scale=args.scale, device=args.device, only=args.only,
                                  seed=args.seed, strict=args.strict, quiet=args.quiet, use_cache=not args.no_cache)
        except UsageError as e:
            print(f"python -m gracheck.report: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as e:
            print(f"python -m gracheck.report: environment error (exit {EXIT_INTERNAL}): {type(e).__name__}: {e}",
                  file=sys.stderr)
            return EXIT_INTERNAL
        res = run.report
        print(res.summary_line())
        print(f"report: {res.html_path} (also {res.markdown_path.name}, {res.results_path.name}); budget "
              f"{run.budget:.0f} s, used {run.seconds:.0f} s; exit code {run.exit_code}")
        return run.exit_code
    quiet = args.quiet
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
        return EXIT_USAGE
    except OSError as e:  # an unwritable --out, a full disk, a missing file the report needs
        print(f"python -m gracheck.report: environment error (exit {EXIT_INTERNAL}): {type(e).__name__}: {e}",
              file=sys.stderr)
        return EXIT_INTERNAL
    except Exception:  # noqa: BLE001 - an internal error is reported as one, never as "a claim failed"
        import traceback

        traceback.print_exc()
        print(f"python -m gracheck.report: internal error (exit {EXIT_INTERNAL}); the traceback is above",
              file=sys.stderr)
        return EXIT_INTERNAL
    print(res.summary_line())
    also = f"{res.markdown_path.name}, {res.results_path.name}"
    print(f"report: {res.html_path} (also {also}); exit code {res.exit_code}")
    return res.exit_code
