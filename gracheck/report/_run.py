"""Run the claims and assemble the report document (the content of ``results.json``).

Data flow: :func:`build_report` selects claims from the registry and runs each method of each
claim through :meth:`Claim.check <gracheck.base.evidence.Claim.check>` (:func:`_run_methods`; the
one path, empirical claims included: their evidence carries the ExperimentResult it was computed
from as ``Evidence.record``, which gives the report its numbers and figures), turns the evidence
into a status by the rules below, adds any committed paper-scale results (judged by the same
``Claim.check``, ``from_result=``), writes ``results.json`` and hands the same document to the
Markdown and HTML renderers.

Status of a claim (one per claim, from this run only):

- derivation: ``verified`` if every CheckResult passed, else ``failed``;
- erratum: ``erratum-confirmed`` if every CheckResult passed, else ``failed``;
- empirical: from the outcomes of its decision rules (:func:`gracheck.base.verdicts.combine`): any
  ``refuted`` → ``refuted``; else any ``inconclusive`` → ``inconclusive``; else ``verified``. A
  result without an outcome (a check written before the three outcomes) reads as verified when it
  passed and refuted otherwise. Refuted and inconclusive are findings, not errors;
- a failing, refuted or inconclusive result outranks a skip; otherwise a method that raised
  :class:`~gracheck.claims.CheckSkipped` makes the claim ``skipped`` (with ``reason``),
  even when other methods passed: a skipped claim is never counted as verified;
- any other exception makes the claim ``failed`` with ``errored: true`` and the
  traceback summary in ``reason``.

Exit codes (:data:`EXIT_CODES`): 0 when no derivation or erratum failed and nothing errored (skips,
refuted and inconclusive empirical claims allowed); 1 when a derivation or erratum failed, or, with
``strict``, when an empirical claim that ran is not verified (refuted or inconclusive); 2 for bad
usage (the CLI); 3 for an internal error or a bad environment: a check raised (the document is
still written, with the traceback), or the report could not be written (the CLI). 3 outranks 1.

Paper-scale results committed to the repository live in ``results/<claim_id>-paper.json``:
an ``ExperimentResult.to_dict()`` object plus a ``provenance`` object
(``date``, ``device``, ``git_commit``, ``command``, ``gracheck_version``; all optional).
Figure paths in it are relative to the folder holding the JSON file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gracheck import claims as _claims
from gracheck.base.evidence import CheckResult, CheckSkipped, Claim, Evidence, jsonable
from gracheck.base.files import REPO_ROOT, atomic_copy, atomic_write_text, git_commit, is_terminal
from gracheck.base.verdicts import combine
from gracheck.base.version import __version__
from gracheck.base import deadline as _deadline
from gracheck.experiments import BUDGET_REASON, SCALES, ExperimentResult, now_utc

STATUSES = ("verified", "erratum-confirmed", "refuted", "inconclusive", "failed", "skipped")

EXIT_OK, EXIT_CLAIM_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_CODES = {
    EXIT_OK: "every derivation verified, every erratum confirmed, nothing errored",
    EXIT_CLAIM_FAILED: "a derivation or erratum failed (or, with --strict, an empirical claim that ran is not verified)",
    EXIT_USAGE: "bad usage",
    EXIT_INTERNAL: "internal error or bad environment (a check raised, or the report could not be written)",
    4: "with --budget: some claims were not run (or not finished) for lack of time; a rerun with the same cache "
       "continues (1 and 3 outrank it)",
}


class UsageError(ValueError):
    """Bad arguments to the report (unknown claim id, scale, device, ...): exit code 2 on the CLI."""


class ReportEnvironmentError(OSError):
    """The environment does not let the report run (e.g. ``--out`` cannot be written): exit code 3 on the CLI."""


@dataclasses.dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` produced.

    ``exit_code`` (0 / 1 / 3, see the module docstring), the paths of the written files,
    ``counts`` per status and ``claims``: one summary dict per claim
    (``id``, ``kind``, ``status``, ``errored``, ``reason``).
    """

    exit_code: int
    results_path: Path
    markdown_path: Path
    html_path: Path
    counts: dict[str, int]
    claims: list[dict[str, Any]]
    seconds: float

    def summary_line(self) -> str:
        return summary_line(self.counts, self.seconds)


def summary_line(counts: dict[str, int], seconds: float | None = None) -> str:
    parts = [f"{counts.get(s, 0)} {s}" for s in STATUSES]
    tail = f" in {seconds:.1f} s" if seconds is not None else ""
    n = sum(counts.values())
    return f"{n} claim{'' if n == 1 else 's'}: " + ", ".join(parts) + tail


# ----------------------------------------------------------------------------- helpers


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _ratio(r: dict[str, Any]) -> tuple[float, float, float, str] | None:
    """(error / allowed, error, allowed, "abs" | "rel") of a "within" result, by the rule of
    :func:`gracheck.base.evidence.compare` (allowed = atol + rtol·|expected|); None when it has none."""
    if r.get("sense", "within") != "within":
        return None  # refutations and negative controls pass by exceeding a threshold: not an "error"
    abs_err, rel_err = _as_float(r.get("abs_err")), _as_float(r.get("rel_err"))
    atol, rtol = _as_float(r.get("atol")), _as_float(r.get("rtol"))
    exp = _as_float(r.get("expected"))
    if abs_err is not None and (atol or rtol):
        allowed = (atol or 0.0) + (rtol or 0.0) * (abs(exp) if exp is not None else 0.0)
        if allowed > 0 and not math.isnan(abs_err / allowed):
            return abs_err / allowed, abs_err, allowed, "abs"
    if rel_err is not None and rtol and not math.isnan(rel_err / rtol):
        return rel_err / rtol, rel_err, rtol, "rel"
    return None


def worst_error(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The result closest to (or furthest past) its tolerance, as ``{ratio, text, method, ...}``.

    ``ratio`` = error / allowed, where allowed = atol + rtol·|expected| (the rule of
    :func:`gracheck.base.evidence.compare`); below 1 passes. None when no result
    carries both an error and a tolerance.
    """
    best: dict[str, Any] | None = None
    for r in results:
        q = _ratio(r)
        if q is None:
            continue
        if best is None or q[0] > best["ratio"]:
            best = {"ratio": q[0], "error": q[1], "allowed": q[2], "kind": q[3], "method": r.get("method", ""),
                    "passed": bool(r.get("passed"))}
    if best is None:
        return None
    word = "abs err" if best["kind"] == "abs" else "rel err"
    best["text"] = f"{word} {best['error']:.2g} vs allowed {best['allowed']:.2g} ({best['method']})"
    return best


def outcome_of(r: dict[str, Any]) -> str:
    """A result's decision outcome: its ``outcome``, else (a check written without one) verified if it
    passed and refuted if not."""
    return r.get("outcome") or ("verified" if r.get("passed") else "refuted")


def deciding_check(status: str, results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The check that decided an empirical claim's status, for the summary's "worst error vs tolerance" column.

    Refuted or inconclusive: among the results with that outcome, the one furthest past its threshold
    (largest error / allowed when it has one), else the first. Verified: the result closest to its
    threshold, else the first. ``text`` is that result's reason (or its detail).
    """
    pool = [r for r in results if outcome_of(r) == status] if status in ("refuted", "inconclusive") else list(results)
    if not pool:
        return None
    scored = [(q[0], i, q) for i, r in enumerate(pool) if (q := _ratio(r)) is not None]
    i, q = (max(scored)[1], max(scored)[2]) if scored else (0, None)
    r = pool[i]
    why = r.get("reason") or r.get("detail") or ""
    return {
        "ratio": q[0] if q else None, "error": q[1] if q else None, "allowed": q[2] if q else None,
        "kind": "decision", "method": r.get("method", ""), "passed": bool(r.get("passed")),
        "outcome": outcome_of(r), "text": f"{outcome_of(r)}: {why}",
    }


def _traceback_summary(exc: BaseException, limit: int = 4) -> str:
    tb = traceback.extract_tb(exc.__traceback__)[-limit:]
    where = "; ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in tb)
    return f"{type(exc).__name__}: {exc} [at {where}]"


def _candidate_name(c: Callable) -> str:
    mod = getattr(c, "__module__", None) or ""
    name = getattr(c, "__qualname__", None) or type(c).__name__
    return f"{mod}.{name}" if mod else name


# ----------------------------------------------------------------------------- environment


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, Any]:
    import numpy
    import scipy
    import sympy
    import torch

    try:
        import matplotlib

        mpl = matplotlib.__version__
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        mpl = None
    if device.startswith("cuda") and torch.cuda.is_available():
        dev_name = torch.cuda.get_device_name(torch.device(device))
    else:
        dev_name = _cpu_name()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "sympy": sympy.__version__,
        "matplotlib": mpl,
        "platform": platform.platform(),
        "device": device,
        "device_name": dev_name,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_results_dir() -> Path | None:
    d = REPO_ROOT / "results"
    return d if d.is_dir() else None


# ----------------------------------------------------------------------------- running claims


def _run_methods(claim: Claim, *, seed: int, candidate: Callable | None, kw: dict[str, Any]):
    """Run every method of ``claim`` through :meth:`Claim.check`, separately, so one skipped method does not
    hide the others; ``kw`` goes to the "empirical" method only.

    Returns (results, skipped_reasons, error, record): error is the exception summary or None; record
    is what the evidence was computed from (an empirical claim's ExperimentResult) or None.
    """
    results: list[CheckResult] = []
    skipped: list[str] = []
    record = None
    names = list(claim.checks)
    if not names:
        try:
            claim.check(seed=seed, candidate=candidate)  # raises CheckSkipped("no check implemented yet")
            return results, ["the claim has no check"], None, None
        except CheckSkipped as e:
            return results, [str(e)], None, None
    for name in names:
        try:
            mkw = kw if name == "empirical" else {}
            ev = claim.check(name, seed=seed, candidate=candidate, **mkw)
            results.extend(ev)
            if isinstance(ev, Evidence) and ev.record is not None:
                record = ev.record
        except CheckSkipped as e:
            skipped.append(f"{name}: {e}")
        except Exception as e:  # noqa: BLE001 - any error is reported, never hidden
            return results, skipped, f"{name}: {_traceback_summary(e)}", record
    return results, skipped, None, record


def _status(kind: str, results: list[CheckResult], skipped: list[str], error: str | None) -> tuple[str, str]:
    if error is not None:
        return "failed", error
    if kind == "empirical" and results:
        outcomes = [outcome_of(r.to_dict()) for r in results]
        status = combine(outcomes)
        if status != "verified":
            # a reader wants the decision rule's own sentence (numbers, CI, rule), not the raw record;
            # the full records stay under "Evidence per claim" and in results.json
            bad = [r for r, o in zip(results, outcomes) if o == status]
            shown = " | ".join(r.reason or r.detail or r.failure_message() for r in bad[:2])
            more = f" | … and {len(bad) - 2} more" if len(bad) > 2 else ""
            return status, f"{len(bad)} of {len(results)} decision rules {status}: {shown}{more}"
    elif any(not r.passed for r in results):
        return "failed", next(r for r in results if not r.passed).failure_message()
    if skipped:
        return "skipped", "; ".join(skipped)
    if not results:
        return "skipped", "the check produced no evidence"
    return ("erratum-confirmed" if kind == "erratum" else "verified"), ""


def citation(version: str, cid: str, status: str, methods: list[str], scale: str | None, seed: int) -> str:
    how = ", ".join(methods) if methods else "not run"
    at = f" at {scale} scale, seed {seed}" if scale else ""
    return f"gracheck {version}, claim {cid}, {status}{at} ({how})"


def _experiment_entry(
    claim: Claim,
    res: ExperimentResult | None,
    *,
    out_dir: Path,
    status: str,
    reason: str,
    scale: str,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "claim_id": claim.id,
        "run": res is not None,
        "status": status,
        "scale": scale,
        "reason": reason if res is None else "",
    }
    if res is not None:
        figs = []
        for f in res.figures:
            p = Path(f)
            try:
                figs.append(p.resolve().relative_to(out_dir.resolve()).as_posix())
            except ValueError:
                figs.append(str(p))
        entry.update(
            scale=res.scale,
            config=res.config,
            seeds=list(res.seeds),
            device=res.device,
            metrics={k: m.to_dict() for k, m in res.metrics.items()},
            figures=figs,
            seconds=res.seconds,
            created=res.created,
            notes=list(res.notes),
            data=res.data,
            data_read=res.data_read,
        )
    return entry


def load_paper_result(claim: Claim, results_dir: Path | None, out_dir: Path, *, seed: int = 0) -> dict[str, Any] | None:
    """The committed paper-scale result of the empirical ``claim`` as a report entry, or None if there is none.

    A file that exists but cannot be read gives an entry with ``error`` (shown, never hidden).
    Its figures are copied into ``out_dir/figures`` with a ``paper-`` prefix. Its verdict comes from
    ``claim.check("empirical", from_result=...)``: the same decision rules as this run's.
    """
    if results_dir is None:
        return None
    path = Path(results_dir) / f"{claim.id}-paper.json"
    if not path.is_file():
        return None
    entry: dict[str, Any] = {"path": str(path), "error": ""}
    try:
        raw = json.loads(path.read_text())
        prov = dict(raw.pop("provenance", {}) or {})
        res = ExperimentResult.from_dict(raw)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        entry["error"] = f"could not read {path.name}: {type(e).__name__}: {e}"
        return entry
    figs = []
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    for f in res.figures:
        src = Path(f) if Path(f).is_absolute() else path.parent / f
        if src.is_file():
            dst = out_dir / "figures" / f"paper-{src.name}"
            atomic_copy(src, dst)
            figs.append(dst.relative_to(out_dir).as_posix())
    verdict, verdict_reason, results = "not checked", "", []
    try:
        results = list(claim.check("empirical", seed=seed, from_result=res))
        verdict = combine(outcome_of(r.to_dict()) for r in results)
    except CheckSkipped as e:
        verdict_reason = str(e)
    except Exception as e:  # noqa: BLE001
        verdict, verdict_reason = "error", _traceback_summary(e)
    from gracheck.report._text import device_text

    when, dev = prov.get("date") or res.created or "undated", device_text(prov.get("device")) or res.device
    pdev = prov.get("device")
    dtype = pdev.get("type") if isinstance(pdev, dict) else None
    on_gpu = dtype == "cuda" if dtype else str(res.device).startswith("cuda")
    if res.scale == "paper":  # the device kind as recorded: a paper-scale run on a CPU is never called a GPU run
        label = f"paper scale ({'GPU' if on_gpu else 'CPU'} run committed in results/, {when}, {dev})"
    else:  # e.g. the paper-run script's tiny test size: never presented as the paper's numbers
        label = f"{res.scale} scale, NOT the paper's settings (from {path.name}, {when}, {dev})"
    entry.update(
        label=label,
        provenance=prov,
        scale=res.scale,
        config=res.config,
        seeds=list(res.seeds),
        device=res.device,
        metrics={k: m.to_dict() for k, m in res.metrics.items()},
        figures=figs,
        seconds=res.seconds,
        created=res.created,
        notes=list(res.notes),
        data_read=res.data_read,
        verdict=verdict,
        verdict_reason=verdict_reason,
        results=[r.to_dict() for r in results],
    )
    return entry


# ----------------------------------------------------------------------------- progress


class _Progress:
    def __init__(self, sink: Callable[[str], None] | None, total: int):
        self.sink, self.total, self.t0 = sink, total, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def line(self, s: str) -> None:
        if self.sink is not None:
            self.sink(s)

    def begin(self, s: str) -> None:
        """Show what is running now; only a terminal sink shows it (then overwritten by the result line)."""
        if isinstance(self.sink, _TerminalSink):
            self.sink.begin(s)

    def prefix(self, i: int, cid: str) -> str:
        w = len(str(self.total))
        return f"[{i:>{w}}/{self.total}] {cid}"


class _TerminalSink:
    """Progress on stderr. On a terminal (``live``) a "running" line that the result line then overwrites;
    otherwise (CI logs, pipes, nohup) only whole lines, each flushed as it is written: one per claim as it
    finishes (id, status, seconds) and the experiments' lines (each model trained). ``live``: default
    whether the stream is a terminal."""

    def __init__(self, stream=None, live: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.live = is_terminal(self.stream) if live is None else live
        self.pending = False

    def begin(self, s: str) -> None:
        if not self.live:  # a log keeps only finished lines
            return
        self.stream.write(s)
        self.stream.flush()
        self.pending = True

    def __call__(self, s: str) -> None:
        if self.pending:
            self.stream.write("\r\033[K")
            self.pending = False
        self.stream.write(s + "\n")
        self.stream.flush()


# ----------------------------------------------------------------------------- the report


def select_claims(only: Iterable[str] | None) -> list[Claim]:
    claims = _claims.registry()
    if only is None:
        return claims
    only = list(only)
    known = {c.id for c in claims}
    for cid in only:
        if cid not in known:
            import difflib

            close = difflib.get_close_matches(cid, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"--only: no claim {cid!r}{hint} (python -m gracheck.report --list shows the ids)")
    want = set(only)
    return [c for c in claims if c.id in want]


def _check_device(device: str) -> str:
    import torch

    if device == "cpu":
        return device
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UsageError(f"--device: {device!r} requested but CUDA is not available here; use --device cpu")
        return device
    raise UsageError(f"--device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def build_report(
    out_dir: str | os.PathLike = "gracheck-report",
    *,
    scale: str = "smoke",
    device: str | None = None,
    only: Iterable[str] | None = None,
    seed: int = 0,
    candidates: dict[str, Callable] | None = None,
    strict: bool = False,
    quiet: bool = True,
    progress: Callable[[str], None] | None = None,
    results_dir: str | os.PathLike | None | bool = True,
    use_cache: bool = True,
    priority: Iterable[str] | None = None,
    configs: dict[str, Any] | None = None,
) -> ReportResult:
    """Run the selected claims and write ``results.json``, ``report.md``, ``report.html`` and ``figures/``.

    ``scale``: "smoke" | "paper" (experiments only; derivations do not depend on it).
    ``device``: "cpu" | "cuda" | "cuda:N"; default cuda when available. ``only``: claim ids
    (default: every registered claim). ``candidates``: claim id -> implementation under test,
    for claims with ``takes_candidate`` (the report then says a candidate was checked).
    ``strict``: an empirical claim that ran and is not verified (refuted or inconclusive) gives exit
    code 1. ``quiet``: no progress
    lines; otherwise they go to stderr (a live display on a terminal, one line per claim as it finishes
    elsewhere); ``progress`` receives them instead of stderr when given. ``results_dir``: the
    folder of committed paper-scale results (True: the repository's ``results/``; None or
    False: none). ``priority``: claim ids run first, in that order (the rest follow in registry
    order; ``--budget`` passes :data:`gracheck.experiments.PRIORITY`). ``configs``: claim id ->
    an experiment config to run instead of ``CONFIGS[scale]`` (e.g. a tiny paper-shaped size; its
    results are labelled "custom"). Under a deadline (:func:`gracheck.base.deadline.deadline`, set by
    ``--budget``) a claim reached after the deadline is skipped ("not run here (budget)") and an
    empirical claim runs only the jobs of its plan that fit. Raises :class:`UsageError` on bad arguments.
    """
    t_start = time.perf_counter()
    if scale not in SCALES:
        raise UsageError(f"--scale: expected one of {', '.join(SCALES)}, got {scale!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"--seed: expected a non-negative integer, got {seed!r}")
    device = _check_device(device if device is not None else default_device())
    claims = select_claims(only)
    if priority is not None:
        rank = {cid: i for i, cid in enumerate(priority)}
        claims = sorted(claims, key=lambda c: rank.get(c.id, len(rank)))  # stable: the rest keep registry order
    configs = dict(configs or {})
    for cid in configs:
        if cid not in {c.id for c in claims if c.kind == "empirical"}:
            raise UsageError(f"configs: {cid!r} is not a selected empirical claim")
    candidates = dict(candidates or {})
    selected = {c.id: c for c in claims}
    for cid, cand in candidates.items():
        if cid not in selected:
            raise UsageError(f"candidates: claim {cid!r} is not among the selected claims")
        if not selected[cid].takes_candidate:
            raise UsageError(f"candidates: claim {cid!r} does not take a candidate implementation")
        if not callable(cand):
            raise UsageError(f"candidates: the candidate for {cid!r} is not callable")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {str(out)!r} exists and is not a folder")
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
        probe = out / f".gracheck-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ReportEnvironmentError(f"--out: cannot write the report into {str(out)!r}: {type(e).__name__}: {e}") from e
    if results_dir is True:
        rdir = default_results_dir()
    elif results_dir is None or results_dir is False:
        rdir = None
    else:
        rdir = Path(results_dir)

    sink = progress if progress is not None else (None if quiet else _TerminalSink())
    prog = _Progress(sink, len(claims))
    version = __version__
    entries: list[dict[str, Any]] = []
    experiments: list[dict[str, Any]] = []

    for i, c in enumerate(claims, 1):
        t0 = time.perf_counter()
        cand = candidates.get(c.id)
        kw: dict[str, Any] = {}
        if c.kind == "empirical":
            prog.line(f"{prog.prefix(i, c.id)} ... running its experiment at {scale} scale on {device}")

            def _sub(msg: str, _t0=t0) -> None:
                prog.line(f"      {time.perf_counter() - _t0:7.1f} s  {msg}")

            kw = {"scale": scale, "device": device, "out_dir": out / "figures", "use_cache": use_cache,
                  "progress": _sub if sink is not None else None}
            if c.id in configs:
                kw["config"] = configs[c.id]
        else:
            prog.begin(f"{prog.prefix(i, c.id)} ... running {', '.join(c.methods) or 'its check'}")
        if _deadline.expired():
            results, skipped, error, record = [], [f"{BUDGET_REASON}: the deadline passed before it started"], None, None
        else:
            results, skipped, error, record = _run_methods(c, seed=seed, candidate=cand, kw=kw)
        exp_res = record if isinstance(record, ExperimentResult) else None
        status, reason = _status(c.kind, results, skipped, error)
        dt = time.perf_counter() - t0
        rdicts = [r.to_dict() for r in results]
        methods_run = list(dict.fromkeys(r.method for r in results))
        entry = {
            "id": c.id,
            "source": c.source,
            "kind": c.kind,
            "statement": c.statement,
            "statement_hash": c.statement_hash,
            "corrected": c.corrected,
            "methods": list(c.methods),
            "methods_run": methods_run,
            "status": status,
            "errored": error is not None,
            "reason": reason,
            "skipped_methods": skipped,
            "candidate": _candidate_name(cand) if cand is not None else None,
            "scale": scale if c.kind == "empirical" else None,
            "seed": seed,
            "seconds": dt,
            "worst": deciding_check(status, rdicts) if c.kind == "empirical" else worst_error(rdicts),
            "citation": citation(
                version, c.id, status, methods_run, scale if c.kind == "empirical" else None, seed
            )
            + (" [candidate under test, not the library's implementation]" if cand is not None else ""),
            "results": rdicts,
        }
        entries.append(entry)
        if c.kind == "empirical":
            if exp_res is None and results and error is None:
                why = "the check ran (its evidence is under 'Evidence per claim') but exposes no experiment record"
            else:
                why = reason or "; ".join(skipped)
            e_entry = _experiment_entry(c, exp_res, out_dir=out, status=status, reason=why, scale=scale)
            e_entry["paper_scale"] = load_paper_result(c, rdir, out, seed=seed)
            experiments.append(e_entry)
        prog.line(f"{prog.prefix(i, c.id)} ... {status} ({dt:.1f} s, total {prog.elapsed():.1f} s)")

    counts = {s: sum(e["status"] == s for e in entries) for s in STATUSES}
    errored = any(e["errored"] for e in entries)
    hard_fail = any(e["status"] == "failed" and e["kind"] in ("derivation", "erratum") for e in entries)
    undecided = any(e["kind"] == "empirical" and e["status"] in ("refuted", "inconclusive") for e in entries)
    if errored:
        exit_code = EXIT_INTERNAL
    elif hard_fail or (strict and undecided):
        exit_code = EXIT_CLAIM_FAILED
    else:
        exit_code = EXIT_OK

    doc: dict[str, Any] = {
        "gracheck_version": version,
        "created": now_utc(),
        "environment": environment(device),
        "scale": scale,
        "seed": seed,
        "device": device,
        "strict": strict,
        "only": list(only) if only is not None else None,
        "candidates": {k: _candidate_name(v) for k, v in candidates.items()},
        "results_dir": str(rdir) if rdir is not None else None,
        "counts": counts,
        "exit_code": exit_code,
        "seconds": 0.0,
        "claims": entries,
        "experiments": experiments,
        "figure_sections": [
            {"title": c.figure.title, "claim_id": c.id, "shows": c.figure.shows}
            for c in _claims.registry() if c.kind == "empirical" and c.figure is not None
        ],
        "summary_figure": None,
    }
    from gracheck.report._figures import summary_figure

    try:
        doc["summary_figure"] = summary_figure(entries, out / "figures" / "summary-tolerances.png", out)
    except Exception as e:  # noqa: BLE001 - a plotting problem must not hide the verdicts
        doc["summary_figure_error"] = _traceback_summary(e)
    doc["seconds"] = time.perf_counter() - t_start
    doc = jsonable(doc)

    from gracheck.report._render_html import render_html
    from gracheck.report._render_md import render_markdown

    results_path = out / "results.json"
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(results_path, json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    atomic_write_text(md_path, render_markdown(doc))
    atomic_write_text(html_path, render_html(doc, out))
    summary = [
        {"id": e["id"], "kind": e["kind"], "status": e["status"], "errored": e["errored"], "reason": e["reason"]}
        for e in entries
    ]
    return ReportResult(
        exit_code=exit_code,
        results_path=results_path,
        markdown_path=md_path,
        html_path=html_path,
        counts=counts,
        claims=summary,
        seconds=doc["seconds"],
    )


def schema_path() -> Path:
    """The JSON Schema (draft 2020-12) that ``results.json`` follows."""
    return Path(__file__).with_name("results.schema.json")


check_device = _check_device  # public: the --plan path of the CLI validates --device the same way
