"""Shared by the engine benchmarks: interleaved timing, provenance, writing the JSON."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from gracheck.base.files import atomic_write_text, git_commit

REPO = pathlib.Path(__file__).resolve().parents[1]


def pin_threads(threads: int) -> None:
    """Run this process on ``threads`` cores (both torch's and XLA's thread pools follow the
    affinity mask) and set torch's intra-op threads. Call before importing jax."""
    if hasattr(os, "sched_setaffinity") and threads < len(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    torch.set_num_threads(threads)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Median and spread of each function's wall time, the functions run in turn ``repeats`` times
    (so background load affects them alike), after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "n": len(v)} for k, v in times.items()}


def ratios(stats: dict[str, dict], base: str) -> dict[str, float]:
    return {k: v["median_s"] / stats[base]["median_s"] for k, v in stats.items()}


def provenance(threads: int) -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(REPO),
        "command": " ".join(["python", *sys.argv]),
        "torch": torch.__version__,
        "threads": threads,
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def emit(out: dict, path: str | None) -> None:
    """Print the JSON, and write it atomically to ``path`` when given."""
    out.setdefault("provenance", {})["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    text = json.dumps(out, indent=1)
    print(text)
    if path:
        p = pathlib.Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, text + "\n")
        os.chmod(p, 0o644)  # the atomic writer's temporary file is private
