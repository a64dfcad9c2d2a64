"""The prepared paper-scale run for one GPU window: ``scripts/gpu_paper_run.sh`` (``python -m gracheck.report.paper_run``).

One command, bounded by ``--budget`` seconds (default 540: a device command may run 600 s), runs the
empirical claims at paper scale in priority order (:data:`gracheck.experiments.PRIORITY`: fig1, fig3,
eq6, grae-approx, fig2, fig4) through the budget machinery (:mod:`gracheck.experiments._plan`): every
claim's jobs are measured on the device first (short warm-ups) and a job starts only when its
estimate fits in the time left; training stopped by the deadline checkpoints in the cache; pieces
that finish (Fig. 1 settings, trained model ensembles) stay in ``$GRACHECK_CACHE`` for the next
command. For every claim that completes it writes ``results/<claim>-paper.json`` (the
ExperimentResult and a ``provenance`` object: config, seeds, device name/count/memory, torch and CUDA
versions, wall time, counted FLOPs and achieved TFLOP/s with the device's peak beside it, git
commit, the budget) and its figures under ``results/paper-figures/``; the report shows these beside
the smoke numbers through the same ``Claim.check`` (``from_result=``).

What comes back (``$OUT``, at most 8 files): ``paper-results.tar.gz`` (``results/`` as above, plus
``plan-paper-<device>.json``, the suite's plan measured on this device, and ``paper-run-<device>.json``,
this run's summary), ``state.tar.gz`` (the cache's small pieces and the job log: carry it into the
next session's ``.gracheck-gpu/state/`` so that finished Fig. 1 settings are not redone; trained
models are too large to carry and stay on the machine only while it is warm), ``summary.json`` and
``log.txt`` (written by the shell script).

Data: MNIST is looked for in ``$GRACHECK_DATA``, ``../shared/data`` and ``.gracheck-gpu/data`` in
the repository (the device machine receives the repository only: ``../shared`` does not travel).
Without it the MNIST claims are skipped with a message saying how to pass the data; Fig. 1 needs
none. ``--size tiny`` runs the same machinery on tiny paper-shaped configs (:data:`TINY`; their
results say ``scale: custom``) for the CPU test.

Precision on CUDA: the trainers' bf16 autocast for the networks (objectives float32); TF32 for the
remaining float32 matmuls and convolutions, except during Fig. 1, whose decision rests on small
rotations that TF32's 10-bit mantissa would blur in its float32 gradient descent; evaluations run
in float64 as always.

Exit codes: 0 every selected claim completed (whatever its verdict) or was already committed; 2 bad
usage; 3 a claim raised an error (its traceback is in the log) or the export failed; 4 some claims
were left for lack of time (or data) and a rerun with the same cache continues.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tarfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gracheck.base import deadline as _deadline
from gracheck.base.evidence import CheckSkipped
from gracheck.base.files import REPO_ROOT, atomic_write_text, cache_dir, git_commit
from gracheck.base.verdicts import combine
from gracheck.base.version import __version__

DEFAULT_BUDGET = 540.0
EXPORT_RESERVE = 20.0  # seconds kept back from the deadline for writing results and packing them
GPU_DIR = REPO_ROOT / ".gracheck-gpu"  # ignored by git: data, state and cache on the device machine
FIG1 = "fig1-rotation-uniqueness"

# Tiny paper-shaped sizes (the paper's structure: every ν and both amortisations for fig1, the
# App. D conv net and the b × β grid as ensembles for the MNIST claims) for the CPU test of this script.
# One torch thread: on a loaded 2-core machine two threads made a tiny conv step 12x slower (measured).
TINY: dict[str, dict[str, Any]] = {
    "fig1-rotation-uniqueness": dict(nonlinearities=("identity", "tanh"), n_points=48, schedule_n=(8, 16),
                                     trials_per_n=(3, 3), bootstrap=100),
    "fig3-objectives-agree": dict(blocks=(1, 2), betas=(0.1, 0.5), steps=12, width=1 / 16, batch_size=16,
                                  n_test=12, n_mc=4, eval_batch=6, train_eval_size=16, bootstrap=100, num_threads=1),
    "eq6-residual-trained": dict(blocks=(1, 2), betas=(0.1, 0.5), steps=12, width=1 / 16, batch_size=16,
                                 train_eval_size=16, relu_hidden=(16,), relu_steps=12, n_test=6, eval_batch=3,
                                 bootstrap=100, num_threads=1),
    "grae-approx-trains-like-beta-vae": dict(betas=(0.1, 1.0), steps=12, width=1 / 16, batch_size=16, n_test=16,
                                             elbo_samples=4, eval_batch=8, bootstrap=100, fd_bootstrap=20,
                                             kid_subset=8, kid_subsets=5, num_threads=1),
    "fig2-precision-matches-jtj": dict(latent_dims=(8,), betas=(0.2, 1.0), steps=12, width=1 / 16, batch_size=16,
                                       n_test=12, eval_batch=6, bootstrap=100, num_threads=1),
    "fig4-fid-agree": dict(betas=(0.1, 1.0), runs=1, steps=12, width=1 / 16, batch_size=16, n_samples=16,
                           n_heldout=16, feature_steps=10, feature_limit=64, kid_subset_size=8, kid_subsets=5,
                           bootstrap=20, num_threads=1),
}

# Peak rates of the device (TFLOP/s, dense: no 2:4 sparsity), shown beside the achieved rate. Source: the
# NVIDIA H100/H200 SXM datasheet figures as tabulated at https://glennklockwood.com/garden/processors/h100
# (the H200 has the H100's compute; /work/.library/device/H200.md says the same), and the bf16 matrix rate
# measured on this workplace's H200 (8192³ bf16 matmul, 769-798 TFLOP/s; /work/.library/device/KINDS.md).
PEAKS: dict[str, dict[str, float]] = {
    "H200": {"bf16_dense": 989.4, "bf16_measured_here": 788.0, "tf32_dense": 494.7, "fp32": 66.9, "fp64": 33.5,
             "fp64_tensor": 66.9},
    "H100": {"bf16_dense": 989.4, "tf32_dense": 494.7, "fp32": 66.9, "fp64": 33.5, "fp64_tensor": 66.9},
}
PEAK_SOURCE = ("NVIDIA Hopper SXM datasheet, dense, as tabulated at https://glennklockwood.com/garden/processors/h100; "
               "bf16_measured_here: 8192^3 bf16 matmul on this workplace's H200 (device notes KINDS.md, 769-798 TFLOP/s)")

MNIST_HELP = (
    "MNIST is not on this machine. The device machine receives the repository only (../shared/data does not "
    "travel). In the session's checkout run: mkdir -p .gracheck-gpu/data && cp -r /work/shared/data/mnist "
    ".gracheck-gpu/data/ (12 MB; .gracheck-gpu/ is ignored by git), then call the device tool's run with "
    "carry=[\".gracheck-gpu/data\"]; or set GRACHECK_DATA to a folder holding mnist/.")


def _say(msg: str) -> None:
    print(f"[paper-run {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"paper_run: --device {name}: CUDA is not available here")
    return name


def device_info(device: str) -> dict[str, Any]:
    """Name, count and memory of the device (CUDA), or the CPU's name and cores."""
    import platform

    import torch

    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.device(device))
        return {"type": "cuda", "name": p.name, "count": torch.cuda.device_count(),
                "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}",
                "multiprocessors": p.multi_processor_count, "cuda": torch.version.cuda}
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"type": "cpu", "name": name, "count": os.cpu_count(), "threads": torch.get_num_threads()}


def peaks_for(info: dict[str, Any]) -> dict[str, float]:
    for key, peaks in PEAKS.items():
        if key in str(info.get("name", "")):
            return dict(peaks)
    return {}


@contextlib.contextmanager
def _tf32(enabled: bool):
    import torch

    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev


def config_for(cid: str, size: str):
    """The config of claim ``cid`` at ``size`` ("paper": its CONFIGS["paper"]; "tiny": that with :data:`TINY`)."""
    from gracheck.experiments import experiment_module

    mod = experiment_module(cid)
    cfg = mod.CONFIGS["paper"]
    return cfg if size == "paper" else dataclasses.replace(cfg, **TINY[cid])


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> int:
    """Extract regular files only, inside ``dest``, never overwriting; returns how many were written."""
    n = 0
    root = dest.resolve()
    for m in tar.getmembers():
        target = (dest / m.name).resolve()
        if not m.isfile() or (root not in target.parents) or target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with tar.extractfile(m) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        n += 1
    return n


def import_state(state_dir: Path) -> None:
    """Bring a previous session's ``state.tar.gz`` (pieces, job log) into the cache."""
    path = state_dir / "state.tar.gz"
    if not path.is_file():
        return
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "budget" / "jobs.jsonl"
    old = set(log.read_text().splitlines()) if log.is_file() else set()
    with tarfile.open(path, "r:gz") as tar:
        n = _safe_extract(tar, cache)
        member = next((m for m in tar.getmembers() if m.name == "budget/jobs.jsonl" and m.isfile()), None)
        if member is not None:  # merge the job logs (the extraction above never overwrites)
            new = tar.extractfile(member).read().decode().splitlines()
            add = [ln for ln in new if ln and ln not in old]
            if add and log.is_file():
                with open(log, "a", encoding="utf-8") as f:
                    f.write("\n".join(add) + "\n")
    _say(f"state: {n} file(s) from {path} into {cache}")


def export_state(out: Path) -> Path | None:
    cache = cache_dir()
    parts = [p for p in (cache / "experiments" / "pieces", cache / "budget" / "jobs.jsonl") if p.exists()]
    if not parts:
        return None
    path = out / "state.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for p in parts:
            tar.add(p, arcname=str(p.relative_to(cache)))
    return path


def _achieved(rows: list[dict[str, Any]]) -> dict[str, Any]:
    secs = sum(r["seconds"] for r in rows)
    flops = [r["flops_counted"] for r in rows]
    counted = sum(f for f in flops if f is not None)
    by_kind: dict[str, dict[str, float]] = {}
    for r in rows:
        k = by_kind.setdefault(r["kind"], {"seconds": 0.0, "flops_counted": 0})
        k["seconds"] += r["seconds"]
        k["flops_counted"] += r["flops_counted"] or 0
    for k in by_kind.values():
        k["achieved_tflops"] = k["flops_counted"] / k["seconds"] / 1e12 if k["seconds"] > 0 else None
    return {"wall_seconds": secs, "flops_counted": counted, "flops_complete": all(f is not None for f in flops),
            "achieved_tflops": counted / secs / 1e12 if secs > 0 else None, "by_kind": by_kind}


def write_result(cid: str, res, *, results: Path, cfg, mod, seed: int, device: str, info: dict, budget: float,
                 plan_seconds: float | None, command: str, size: str) -> Path:
    """``results/<cid>-paper.json`` (and its figures) for a finished claim, with the provenance of the module docstring."""
    from gracheck.experiments import logged_jobs

    figs = []
    fig_dir = results / "paper-figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for f in res.figures:
        src = Path(f)
        if src.is_file():
            shutil.copyfile(src, fig_dir / src.name)
            figs.append(f"paper-figures/{src.name}")
    d = res.to_dict()
    d["figures"] = figs
    rows = logged_jobs(mod, cfg, seed, device)
    rate = _achieved(rows)
    d["provenance"] = {
        "date": res.created, "device": info, "torch": _torch_version(), "python": sys.version.split()[0],
        "gracheck_version": __version__, "git_commit": git_commit() or os.environ.get("GRACHECK_GIT_COMMIT")
        or "unknown (no .git here and GRACHECK_GIT_COMMIT unset)", "command": command, "size": size,
        "scale": res.scale, "seeds": list(res.seeds), "config": res.config, "budget_seconds": budget,
        "plan_estimate_seconds": plan_seconds, "wall_seconds": rate["wall_seconds"],
        "experiment_seconds": res.seconds, "flops_counted": rate["flops_counted"],
        "flops_complete": rate["flops_complete"], "achieved_tflops": rate["achieved_tflops"],
        "achieved_by_kind": rate["by_kind"], "peak_tflops": peaks_for(info), "peak_source": PEAK_SOURCE,
        "rate_note": "counted FLOPs (matmul/conv of forward, tangents and backward; elementwise work not counted) of "
                     "the jobs this claim ran, over their wall time; training ran under bf16 autocast on CUDA "
                     "(compare with bf16 peaks), evaluation in float64 (compare with fp64), Fig. 1 in float32 "
                     "without TF32 (compare with fp32)",
        "tf32": cid != FIG1 and device.startswith("cuda"), "jobs": rows,
    }
    path = results / f"{cid}-paper.json"
    atomic_write_text(path, json.dumps(d, separators=(",", ":")) + "\n")  # compact: per-point arrays make it large
    return path


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _committed(cid: str, cfg) -> bool:
    """Whether the repository already holds a paper-scale result of ``cid`` at ``cfg``."""
    from gracheck.experiments import config_dict

    path = REPO_ROOT / "results" / f"{cid}-paper.json"
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return d.get("scale") == "paper" and d.get("config") == config_dict(cfg)


def _parser() -> argparse.ArgumentParser:
    from gracheck.experiments import PRIORITY

    p = argparse.ArgumentParser(prog="python -m gracheck.report.paper_run", description=__doc__.split("\n\n")[0],
                                epilog="Exit codes: 0 done; 2 bad usage; 3 a claim errored or the export failed; "
                                       "4 something was left for lack of time or data (a rerun with the same cache "
                                       "continues).")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET, metavar="SECONDS",
                   help="wall time for the whole command, counted from the shell script's start (default %(default)s)")
    p.add_argument("--size", choices=("paper", "tiny"), default="paper", help="paper scale, or the tiny test size")
    p.add_argument("--claims", nargs="+", default=list(PRIORITY), metavar="ID", help="claims, in this order")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--out", default=os.environ.get("OUT") or str(GPU_DIR / "out"), metavar="DIR",
                   help="where the packed results go (default: $OUT, else .gracheck-gpu/out)")
    p.add_argument("--state", default=str(GPU_DIR / "state"), metavar="DIR",
                   help="a folder holding a previous session's state.tar.gz (default: %(default)s)")
    p.add_argument("--no-suite-plan", action="store_true",
                   help="skip measuring the whole suite's plan first (the claims are still planned one by one)")
    p.add_argument("--redo", action="store_true", help="run claims that results/ already holds at this config")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    started = float(os.environ.get("GRACHECK_RUN_STARTED") or time.time())
    args = _parser().parse_args(argv)
    from gracheck.claims import get, registry
    from gracheck.experiments import experiment_module
    from gracheck.experiments import mnist_blocked
    from gracheck.report._plan import build_plan, render_plan_text

    registry()  # imports every experiment module (each registers its claim)
    for cid in args.claims:
        try:
            experiment_module(cid)
        except ValueError:
            print(f"paper_run: --claims: {cid!r} is not an empirical claim", file=sys.stderr)
            return 2
    if args.budget <= 0:
        print("paper_run: --budget: expected seconds > 0", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = GPU_DIR / f"work-{os.getpid()}" if not os.environ.get("GRACHECK_PAPER_WORK") else Path(
        os.environ["GRACHECK_PAPER_WORK"])
    results = work / "results"
    if results.exists():
        shutil.rmtree(results)
    results.mkdir(parents=True)
    device = _device(args.device)
    dtype = device.split(":")[0]
    info = device_info(device)
    command = " ".join(["python -m gracheck.report.paper_run", *(argv if argv is not None else sys.argv[1:])])
    _say(f"gracheck {__version__}, torch {_torch_version()}, device {device}: {info}; cache {cache_dir()}; "
         f"budget {args.budget:.0f} s ({time.time() - started:.0f} s spent before Python started the run)")
    if not os.environ.get("GRACHECK_DATA") and (GPU_DIR / "data" / "mnist").is_dir():
        os.environ["GRACHECK_DATA"] = str(GPU_DIR / "data")
    no_mnist = mnist_blocked()
    if no_mnist:
        _say(f"WARNING: {MNIST_HELP}\n  ({no_mnist.splitlines()[0]})")
    import_state(Path(args.state))
    configs = {cid: config_for(cid, args.size) for cid in args.claims}

    def left() -> float:
        return args.budget - (time.time() - started)

    def pack(summary: dict[str, Any]) -> Path:
        atomic_write_text(results / f"paper-run-{args.size}-{dtype}.json", json.dumps(summary, indent=1) + "\n")
        path = out / "paper-results.tar.gz"
        tmp = out / ".paper-results.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(results, arcname="results")
        os.replace(tmp, path)
        export_state(out)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
        return path

    def watchdog() -> None:
        # Something that keeps no checkpoints (a Fig. 1 setting, an evaluation) ran past the deadline: pack what
        # is finished and end the process before the device tool's limit kills it with nothing returned.
        _say("WATCHDOG: the budget is spent and a computation without checkpoints is still running; packing the "
             "finished results and exiting (exit code 4)")
        try:
            for e in summary["claims"]:
                if e["status"] is None:
                    e.update(status="skipped", reason="not run here (budget): stopped by the watchdog at the deadline")
            pack({**summary, "exit_code": 4, "watchdog": True, "seconds": time.time() - started})
        finally:
            os._exit(4)

    summary: dict[str, Any] = {"format": "gracheck-paper-run/1", "size": args.size, "device": info,
                               "budget_seconds": args.budget, "command": command, "claims": [], "plan": None,
                               "gracheck_version": __version__, "torch": _torch_version(),
                               "git_commit": git_commit() or os.environ.get("GRACHECK_GIT_COMMIT")}
    plan_doc, plan_secs = None, {}
    exit_code = 0
    dog = threading.Timer(max(1.0, left() - 5.0), watchdog)
    dog.daemon = True
    dog.start()
    with _deadline.deadline(max(0.0, left() - EXPORT_RESERVE)):
        if not args.no_suite_plan:
            _say("measuring the plan of the whole suite on this device (warm-ups; nothing trained)")
            try:
                with _tf32(device.startswith("cuda")):
                    plan_doc = build_plan(scale="paper", device=device, only=args.claims, seed=args.seed,
                                          configs=configs, budget=max(0.0, left() - EXPORT_RESERVE), progress=_say)
                print(render_plan_text(plan_doc), flush=True)
                plan_path = results / f"plan-{args.size}-{dtype}.json"
                atomic_write_text(plan_path, json.dumps(plan_doc, indent=1, allow_nan=False) + "\n")
                plan_secs = {c["claim_id"]: c["total"]["remaining_seconds"] for c in plan_doc["claims"]}
                summary["plan"] = plan_path.name
            except Exception as e:  # noqa: BLE001 - the run itself still goes ahead
                traceback.print_exc()
                _say(f"the suite plan failed ({type(e).__name__}: {e}); continuing claim by claim")
        for cid in args.claims:
            cfg, mod = configs[cid], experiment_module(cid)
            entry: dict[str, Any] = {"claim_id": cid, "status": None, "reason": "", "seconds": 0.0, "result": None}
            summary["claims"].append(entry)  # listed while it runs: the watchdog's summary names it
            t0 = time.time()
            if args.size == "paper" and not args.redo and _committed(cid, cfg):
                entry.update(status="already committed", reason=f"results/{cid}-paper.json holds this config")
            elif no_mnist and cid != FIG1:
                entry.update(status="skipped", reason=f"not run here: {MNIST_HELP}")
            else:
                _say(f"{cid}: {left():.0f} s left")
                try:
                    with _tf32(device.startswith("cuda") and cid != FIG1):
                        ev = get(cid).check("empirical", seed=args.seed, scale="paper", config=cfg, device=device,
                                            out_dir=work / "figures" / cid, progress=lambda s, c=cid: _say(f"{c}: {s}"))
                    res = ev.record
                    verdict = combine(r.outcome or ("verified" if r.passed else "refuted") for r in ev)
                    path = write_result(cid, res, results=results, cfg=cfg, mod=mod, seed=args.seed, device=device,
                                        info=info, budget=args.budget, plan_seconds=plan_secs.get(cid),
                                        command=command, size=args.size)
                    entry.update(status=verdict, result=path.name)
                except CheckSkipped as e:
                    entry.update(status="skipped", reason=str(e))
                except Exception as e:  # noqa: BLE001 - one claim's error must not lose the others' results
                    traceback.print_exc()
                    entry.update(status="failed", reason=f"{type(e).__name__}: {e}")
                    exit_code = 3
            entry["seconds"] = time.time() - t0
            _say(f"{cid}: {entry['status']}" + (f" ({entry['reason']})" if entry["reason"] else ""))
    if exit_code == 0 and any(e["status"] == "skipped" for e in summary["claims"]):
        exit_code = 4
    dog.cancel()
    summary.update(exit_code=exit_code, seconds=time.time() - started)
    try:
        path = pack(summary)
        _say(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) and the state for the next session")
        for p in out.iterdir():
            if p.is_file() and p.stat().st_size > 16 * 2**20:
                _say(f"WARNING: {p.name} is over the device tool's 16 MiB per file; it will not come back")
    except OSError as e:
        _say(f"export failed: {type(e).__name__}: {e}")
        return 3
    for e in summary["claims"]:
        _say(f"  {e['claim_id']:36s} {e['status']:18s} {e['seconds']:7.1f} s")
    _say(f"done in {summary['seconds']:.0f} s of {args.budget:.0f}; exit code {exit_code}")
    if not os.environ.get("GRACHECK_PAPER_WORK"):
        shutil.rmtree(work, ignore_errors=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
