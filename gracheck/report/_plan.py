"""``--plan`` and ``--budget``: what the empirical claims cost at a scale, and running what fits in a time.

``python -m gracheck.report --scale paper --plan [--only ID ...] [--json] [--budget S]`` lists, per
empirical claim (in :data:`gracheck.experiments.PRIORITY` order), the jobs of its plan (the models
or trials, their grid, steps, counted FLOPs, estimated time on the current device from a short
measured warm-up, how it was measured) and totals per claim and for the selection; jobs that two
claims share (fig3's models, which eq6 evaluates again) are counted once in the selection's total.
With ``--budget S`` it also says which jobs a budgeted run would start. Nothing is trained. The plan
document follows ``plan.schema.json`` (:func:`plan_schema_path`).

``python -m gracheck.report --budget S`` runs the report under a deadline of S seconds
(:func:`gracheck.base.deadline.deadline`): empirical claims first, in priority order, each through
its plan (:func:`gracheck.experiments._plan.run_planned`: cached jobs are skipped, a job starts only if
its estimate fits in the time left, a trainer stopped by the deadline checkpoints); claims that could
not finish are ``skipped`` with the reason "not run here (budget): ..." (never counted as verified,
refuted or inconclusive); a rerun with the same ``$GRACHECK_CACHE`` continues. Exit code 4
(:data:`EXIT_BUDGET`) when anything was left for lack of time, unless 1 or 3 applies.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gracheck.base import deadline as _deadline
from gracheck.base.files import git_commit
from gracheck.base.text import fmt_seconds
from gracheck.base.version import __version__
from gracheck.experiments import (BUDGET_REASON, NOT_COUNTED, PRIORITY, estimate, experiment_module, now_utc,
                                  plan_experiment, result_cached)

PLAN_FORMAT = "gracheck-plan/1"
EXIT_BUDGET = 4
NOT_TIMED = ("process start, data loading, checkpoint writes; for the evaluation jobs, what each job's line says it "
             "leaves out (bootstrap statistics, figures, feature nets)")


def plan_schema_path() -> Path:
    """The JSON Schema (draft 2020-12) of the ``--plan --json`` document."""
    return Path(__file__).with_name("plan.schema.json")


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _device_info(device: str) -> dict[str, Any]:
    import torch

    from gracheck.report._run import environment

    env = environment(device)
    info = {"device": device, "device_name": env.get("device_name"), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__}
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu_count=torch.cuda.device_count(), gpu_memory_gib=round(p.total_memory / 2**30, 1))
    return info


def _empirical_ids(only: Iterable[str] | None) -> list[str]:
    from gracheck.report._run import select_claims

    chosen = [c.id for c in select_claims(only) if c.kind == "empirical"]
    rank = {cid: i for i, cid in enumerate(PRIORITY)}
    return sorted(chosen, key=lambda cid: rank.get(cid, len(rank)))


def build_plan(*, scale: str = "paper", device: str = "cpu", only: Iterable[str] | None = None, seed: int = 0,
               configs: dict[str, Any] | None = None, budget: float | None = None,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The plan document (see the module docstring): every job measured on ``device``, nothing trained."""
    from gracheck.claims import get

    t0 = time.perf_counter()
    load0 = _loadavg()
    say = progress or (lambda s: None)
    configs = dict(configs or {})
    claims_doc, seen_shared = [], {}
    for cid in _empirical_ids(only):
        mod = experiment_module(cid)
        cfg = configs.get(cid, mod.CONFIGS[scale])
        say(f"plan: {cid}: measuring on {device}")
        jobs_doc = []
        cached = result_cached(mod, cfg, seed=seed, device=device)
        for job in plan_experiment(mod, cfg, seed=seed, device=device):
            entry: dict[str, Any] = {
                "name": job.name, "kind": job.kind, "what": job.what, "runs": job.runs, "steps": job.steps,
                "models": [{"beta": c.beta, "posterior": c.posterior, "block": c.block, "seed": c.seed}
                           for c in job.configs],
                "done": cached or job.is_done(), "blocked": job.why_blocked(), "shared_with": None,
                "counted_in_total": True, "error": None,
            }
            if job.shared:
                if job.shared in seen_shared:
                    entry["shared_with"], entry["counted_in_total"] = seen_shared[job.shared], False
                else:
                    seen_shared[job.shared] = cid
            t_job = time.perf_counter()
            try:
                est = estimate(job, device)
                entry.update(seconds=est.seconds, flops=est.flops, method=est.method, not_counted=est.not_counted,
                             measured=json.loads(json.dumps(est.measured, default=str)))
            except Exception as e:  # noqa: BLE001 - a job that cannot be measured here is shown, not fatal
                entry.update(seconds=None, flops=None, method="", not_counted="", measured={},
                             error=f"{type(e).__name__}: {e}")
                say(f"plan: {cid}: {job.name}: could not be measured: {traceback.format_exception_only(e)[-1].strip()}")
            frac = 0.0 if cached else job.left()
            entry["remaining_seconds"] = None if entry["seconds"] is None else entry["seconds"] * frac
            entry["measure_seconds"] = time.perf_counter() - t_job
            jobs_doc.append(entry)
        c = get(cid)
        claims_doc.append({"claim_id": cid, "source": c.source, "scale": _scale_of(mod, cfg), "result_cached": cached,
                           "jobs": jobs_doc, "total": _total(jobs_doc, shared_once=False),
                           "gpu_floor": gpu_floor(jobs_doc)})
    doc = {
        "format": PLAN_FORMAT, "gracheck_version": __version__, "created": now_utc(), "scale": scale,
        "seed": seed, **_device_info(device), "git_commit": git_commit(), "priority": list(PRIORITY),
        "claims": claims_doc, "total": _total([j for c in claims_doc for j in c["jobs"]], shared_once=True),
        "gpu_floor": gpu_floor([j for c in claims_doc for j in c["jobs"] if j["counted_in_total"]]),
        "not_counted_flops": NOT_COUNTED,
        "not_timed": NOT_TIMED, "budget": None, "load_average_before": load0,
        "load_average_after": _loadavg(), "seconds": time.perf_counter() - t0,
    }
    if budget is not None:
        doc["budget"] = simulate_budget(doc, budget)
    return doc


# The precision each kind of job runs in on CUDA (gracheck.report.paper_run's docstring) and the H200 rate it is
# compared with (TFLOP/s, gracheck.report.paper_run.PEAKS): training under bf16 autocast (the bf16 matmul rate
# measured on this workplace's H200), evaluation in float64 (fp64 tensor cores), Fig. 1's trials in float32
# without TF32.
FLOOR_PEAK = {"train": ("bf16_measured_here", "bf16"), "evaluate": ("fp64_tensor", "fp64"), "trials": ("fp32", "fp32")}
FLOOR_DEVICE = "H200"


def gpu_floor(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """A lower bound on the jobs' time on one H200: their counted FLOPs at the device's peak for the precision
    each kind runs in (:data:`FLOOR_PEAK`). Not a prediction: small convolutions reach a fraction of peak, and
    what the counter leaves out (elementwise work: almost all of Fig. 1's) is not in it; a job without a FLOP
    count is left out and ``complete`` says so. The prediction for a GPU is ``--plan --device cuda`` there."""
    from gracheck.report.paper_run import PEAKS

    peaks = PEAKS[FLOOR_DEVICE]
    secs, complete = 0.0, True
    for j in jobs:
        key, _ = FLOOR_PEAK[j["kind"]]
        if j["flops"] is None:
            complete = False
            continue
        secs += j["flops"] / (peaks[key] * 1e12)
    return {"device": FLOOR_DEVICE, "seconds": secs, "complete": complete,
            "peaks_tflops": {kind: peaks[key] for kind, (key, _) in FLOOR_PEAK.items()},
            "precision": {kind: prec for kind, (_, prec) in FLOOR_PEAK.items()}}


def _floor_text(f: dict[str, Any]) -> str:
    return (f"≥ {fmt_seconds(f['seconds'])} on one {f['device']} at peak"
            + ("" if f["complete"] else " (jobs without a FLOP count left out)"))


def _scale_of(mod, cfg) -> str:
    for name, c in mod.CONFIGS.items():
        if c == cfg:
            return name
    return "custom"


def _total(jobs: list[dict[str, Any]], *, shared_once: bool) -> dict[str, Any]:
    use = [j for j in jobs if j["counted_in_total"] or not shared_once]
    secs = [j["seconds"] for j in use]
    rem = [j["remaining_seconds"] for j in use]
    flops = [j["flops"] for j in use]
    return {
        "jobs": len(use), "runs": sum(j["runs"] for j in use),
        "seconds": sum(v for v in secs if v is not None), "seconds_complete": all(v is not None for v in secs),
        "remaining_seconds": sum(v for v in rem if v is not None),
        "flops": sum(v for v in flops if v is not None), "flops_complete": all(v is not None for v in flops),
    }


def simulate_budget(doc: dict[str, Any], budget: float) -> dict[str, Any]:
    """Which jobs a run under ``--budget`` would start, by the rule of :func:`~gracheck.experiments._plan.run_planned`
    (each claim in order; a job starts when SAFETY × its remaining estimate + MARGIN fits in the time left; a claim
    stops at its first job that does not fit or cannot run), assuming each job takes its estimate."""
    from gracheck.experiments import MARGIN, SAFETY

    left = float(budget)
    done_keys: set[tuple[str, str]] = set()
    out = []
    for c in doc["claims"]:
        started, stop = [], None
        for j in c["jobs"]:
            key = (j["shared_with"] or c["claim_id"], j["name"])
            if j["done"] or key in done_keys:
                continue
            if j["blocked"]:
                stop = f"cannot run here: {j['blocked']}"
                break
            need = None if j["remaining_seconds"] is None else SAFETY * j["remaining_seconds"] + MARGIN
            if need is None or need > left:
                stop = f"{j['name']} needs ~{fmt_seconds(need)}, {fmt_seconds(left)} left"
                break
            left -= j["remaining_seconds"]
            done_keys.add(key)
            started.append(j["name"])
        out.append({"claim_id": c["claim_id"], "would_run": started, "completes": stop is None, "stops_at": stop})
    return {"seconds": float(budget), "claims": out, "left_seconds": left,
            "rule": f"a job starts when {SAFETY:g} × its remaining estimate + {MARGIN:g} s fits in the time left"}




def _fmt_flops(f: int | float | None) -> str:
    if f is None:
        return "FLOPs not counted"
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if f >= scale:
            return f"{f / scale:.3g} {unit}"
    return f"{f:.3g} FLOP"


def render_plan_text(doc: dict[str, Any]) -> str:
    """The plan as text for a terminal (the same content as the JSON, fewer raw numbers)."""
    L = [f"gracheck {doc['gracheck_version']} plan at {doc['scale']} scale on {doc['device']} "
         f"({doc.get('device_name') or 'unknown device'}, {doc['threads']} torch threads, torch {doc['torch']}); "
         f"measured in {doc['seconds']:.0f} s, load average {doc['load_average_before']} → {doc['load_average_after']}",
         "Estimates from short measured warm-ups on this device, not runs; nothing was trained.", ""]
    for i, c in enumerate(doc["claims"], 1):
        L.append(f"{i}. {c['claim_id']} ({c['source']}; {c['scale']} scale)")
        said_blocked = None
        for j in c["jobs"]:
            flags = []
            if j["done"]:
                flags.append("done (cached)")
            if j["shared_with"]:
                flags.append(f"shared with {j['shared_with']}: counted once")
            if j["blocked"]:
                flags.append("cannot run here (as above)" if j["blocked"] == said_blocked
                             else f"cannot run here: {j['blocked']}")
                said_blocked = j["blocked"]
            if j["error"]:
                flags.append(f"not measured: {j['error']}")
            steps = f"{j['steps']} steps" if j["steps"] else ""
            runs = f"{j['runs']} run{'s' if j['runs'] != 1 else ''}" if j["runs"] else ""
            L.append(f"   - {j['name']}: {', '.join(x for x in (runs, steps) if x) or 'evaluation'}; "
                     f"{_fmt_flops(j['flops'])}{'' if j['flops'] is None else ' counted'}; est. {fmt_seconds(j['seconds'])}"
                     + (f" ({fmt_seconds(j['remaining_seconds'])} left)" if j['remaining_seconds'] != j['seconds'] else "")
                     + (f"  [{'; '.join(flags)}]" if flags else ""))
            L.append(f"       {j['what']}")
            if j["method"]:
                L.append(f"       how: {j['method']}")
            if j.get("not_counted") and j["not_counted"] != doc["not_counted_flops"]:
                L.append(f"       not in its FLOP count: {j['not_counted']}")
        t = c["total"]
        L.append(f"   claim total: {t['runs']} models/trials, {_fmt_flops(t['flops'])} counted"
                 f"{'' if t['flops_complete'] else ' (some jobs not counted)'}, est. {fmt_seconds(t['seconds'])}"
                 f"{'' if t['seconds_complete'] else ' (some jobs not estimated)'}, {fmt_seconds(t['remaining_seconds'])} left; "
                 f"GPU floor {_floor_text(c['gpu_floor'])}")
        L.append("")
    t = doc["total"]
    L.append(f"Total for the {len(doc['claims'])} claim(s) (jobs shared between claims counted once): {t['runs']} "
             f"models/trials, {_fmt_flops(t['flops'])} counted, est. {fmt_seconds(t['seconds'])} on {doc['device']}, "
             f"{fmt_seconds(t['remaining_seconds'])} left; GPU floor {_floor_text(doc['gpu_floor'])}.")
    pk = doc["gpu_floor"]["peaks_tflops"]
    L.append(f"GPU floor: counted FLOPs at one {doc['gpu_floor']['device']}'s peak for each job's precision on CUDA "
             f"(training bf16 {pk['train']:g}, evaluation fp64 {pk['evaluate']:g}, Fig. 1 trials fp32 "
             f"{pk['trials']:g} TFLOP/s): a lower bound, not a prediction (small convolutions reach a fraction of "
             "peak; Fig. 1's count leaves out almost all of its work). For the GPU's own estimate run --plan there.")
    if doc.get("not_counted_flops"):
        L.append(f"Not in the FLOP counts: {doc['not_counted_flops']}.")
    L.append(f"Not in the times: {doc['not_timed']}.")
    L.append("Derivation and erratum claims are not planned: each is an exact or float64 check of seconds.")
    b = doc.get("budget")
    if b:
        L += ["", f"Under --budget {b['seconds']:.0f} ({b['rule']}):"]
        for c in b["claims"]:
            runs = ", ".join(c["would_run"]) or "nothing"
            end = "completes" if c["completes"] else f"stops: {c['stops_at']}"
            L.append(f"   {c['claim_id']}: would run {runs}; {end}")
    return "\n".join(L) + "\n"


def plan_main(*, scale: str, device: str, only, seed: int, as_json: bool, budget: float | None,
              quiet: bool = False) -> int:
    """``--plan``: print the plan (text, or JSON with ``as_json``); 0, or 3 when a job could not be measured.
    Progress lines go to stderr unless ``quiet``, starting with how long the measuring takes."""
    say = None if quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    if say is not None:
        n = len(_empirical_ids(only))
        say(f"plan: measuring short warm-ups of {n} empirical claim(s) on {device}, nothing trained: one step per "
            "architecture and one evaluation unit per experiment; " + (
                "at paper scale on a CPU that is minutes (about 5 min on a loaded 2-core machine: one float64 "
                "evaluation unit of a full-width net takes tens of seconds), at smoke scale about a minute"
                if not device.startswith("cuda") else "on a GPU, about a minute"))
    doc = build_plan(scale=scale, device=device, only=only, seed=seed, budget=budget, progress=say)
    if as_json:
        print(json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False))
    else:
        print(render_plan_text(doc), end="")
    return 3 if any(j["error"] for c in doc["claims"] for j in c["jobs"]) else 0


def budget_exit_code(res) -> int:
    """A budgeted report's exit code: the report's own when 1 or 3, else 4 if a claim was left for lack of time."""
    if res.exit_code in (1, 3):
        return res.exit_code
    if any(c["status"] == "skipped" and BUDGET_REASON in (c["reason"] or "") for c in res.claims):
        return EXIT_BUDGET
    return res.exit_code


@dataclasses.dataclass(frozen=True)
class BudgetRun:
    """What :func:`run_with_budget` produced: the report and the budget's exit code (0, 1, 3 or 4)."""

    report: Any
    exit_code: int
    seconds: float
    budget: float


def run_with_budget(budget: float, **report_kw) -> BudgetRun:
    """:func:`gracheck.report.build_report` under a deadline of ``budget`` seconds, empirical claims in priority order."""
    from gracheck.report._run import UsageError, build_report

    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise UsageError(f"--budget: expected a number of seconds > 0, got {budget!r}")
    if not report_kw.get("use_cache", True):
        raise UsageError("--budget keeps its progress in the cache; it cannot be combined with --no-cache")
    t0 = time.perf_counter()
    with _deadline.deadline(float(budget)):
        res = build_report(priority=PRIORITY, **report_kw)
    return BudgetRun(res, budget_exit_code(res), time.perf_counter() - t0, float(budget))
