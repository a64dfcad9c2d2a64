"""What every experiment shares: the result record, scales, seeds and a result cache.

An experiment module (one per empirical claim, read top to bottom) defines::

    CLAIM_ID = "fig1-rotation-uniqueness"

    @dataclasses.dataclass(frozen=True)
    class Config: ...                      # every setting, nothing implicit

    CONFIGS = {"smoke": Config(...), "paper": Config(...)}

    def run(config, *, seed, device, out_dir, progress=None) -> ExperimentResult
    def check(result: ExperimentResult) -> list[CheckResult]

``run`` trains/evaluates and writes its figures into ``out_dir``; ``check`` applies
the decision rule fixed in the module's docstring and returns the evidence.
:func:`run_experiment` adds a cache keyed by (claim, config, seed, version), so the
report and ``pytest verification/`` share one smoke run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import importlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gracheck.base.files import atomic_copy, atomic_write_text, cache_dir, entry_lock

SCALES = ("smoke", "paper")

# claim id -> module implementing it (a missing module means "not implemented yet").
EXPERIMENT_MODULES: dict[str, str] = {
    "fig1-rotation-uniqueness": "gracheck.experiments.fig1_rotation",
    "fig2-precision-matches-jtj": "gracheck.experiments.fig2_precision",
    "fig3-objectives-agree": "gracheck.experiments.fig3_objectives",
    "fig4-fid-agree": "gracheck.experiments.fig4_fid",
    "eq6-residual-trained": "gracheck.experiments.eq6_residual",
    "grae-approx-trains-like-beta-vae": "gracheck.experiments.grae_approx_training",
}


@dataclasses.dataclass(frozen=True)
class Metric:
    """A measured number with its uncertainty: ``value`` and a ``ci`` (low, high) at ``level``."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    level: float = 0.95
    n: int | None = None
    unit: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ExperimentResult:
    """Everything one experiment run produced; JSON round-trips with :meth:`to_dict`/:meth:`from_dict`."""

    claim_id: str
    scale: str
    config: dict[str, Any]
    seeds: list[int]
    device: str
    metrics: dict[str, Metric]
    figures: list[str]
    seconds: float
    created: str = ""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # raw arrays/lists behind figures
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["metrics"] = {k: m.to_dict() for k, m in self.metrics.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentResult:
        d = dict(d)
        d["metrics"] = {k: Metric(**m) for k, m in d["metrics"].items()}
        return cls(**d)


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def config_dict(config: Any) -> dict[str, Any]:
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config: expected a dataclass instance, got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def load_module(claim_id: str):
    """The experiment module for ``claim_id``; ImportError if it does not exist yet."""
    if claim_id not in EXPERIMENT_MODULES:
        raise KeyError(f"claim_id: {claim_id!r} is not an empirical claim; known: {sorted(EXPERIMENT_MODULES)}")
    return importlib.import_module(EXPERIMENT_MODULES[claim_id])


def _key(claim_id: str, cfg: dict[str, Any], seed: int, device: str) -> str:
    from gracheck import __version__

    blob = json.dumps([claim_id, cfg, seed, device.split(":")[0], __version__], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_experiment(
    claim_id: str,
    *,
    scale: str = "smoke",
    seed: int = 0,
    device: str = "cpu",
    out_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Run (or load from the cache) the experiment behind ``claim_id`` at ``scale``.

    Figures land in ``out_dir`` (default: the cache entry's folder). The cache key
    covers the claim, the full config, the seed, the device type and gracheck's
    version, so a changed setting never reuses a stale result.
    """
    if scale not in SCALES:
        raise ValueError(f"scale: expected one of {SCALES}, got {scale!r}")
    mod = load_module(claim_id)
    config = mod.CONFIGS[scale]
    cfg = config_dict(config)
    # inputs outside the config that change the result (e.g. a user's Inception weights file) are
    # named by the module's optional ``cache_key_inputs()`` and join the key
    extra = mod.cache_key_inputs() if hasattr(mod, "cache_key_inputs") else None
    key_cfg = cfg if extra is None else {"config": cfg, "inputs": extra}
    entry = cache_dir() / "experiments" / f"{claim_id}-{scale}-{_key(claim_id, key_cfg, seed, device)}"
    out = Path(out_dir) if out_dir is not None else entry / "figures"
    if not use_cache:
        return _run(mod, config, seed=seed, device=device, out=out, progress=progress)
    res = _load_entry(entry, out)
    if res is not None:
        return res
    # one process computes an entry; a second one sharing $GRACHECK_CACHE waits here, then loads it
    with entry_lock(entry, on_wait=progress):
        res = _load_entry(entry, out)
        if res is not None:
            return res
        res = _run(mod, config, seed=seed, device=device, out=out, progress=progress)
        for f in res.figures:
            src = Path(f)
            dst = entry / "figures" / src.name
            if src.resolve() != dst.resolve():
                atomic_copy(src, dst)
        atomic_write_text(entry / "result.json", json.dumps(res.to_dict(), indent=1))
    return res


def _run(mod, config, *, seed: int, device: str, out: Path, progress) -> ExperimentResult:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    res = mod.run(config, seed=seed, device=device, out_dir=out, progress=progress)
    if not res.created:
        res.created = now_utc()
    if not res.seconds:
        res.seconds = time.perf_counter() - t0
    return res


def _load_entry(entry: Path, out: Path) -> ExperimentResult | None:
    """The cached result of ``entry`` with its figures copied (atomically) into ``out``; None if absent or damaged."""
    cached = entry / "result.json"
    if not cached.is_file():
        return None
    try:
        res = ExperimentResult.from_dict(json.loads(cached.read_text()))
    except (ValueError, TypeError, KeyError):
        return None  # a corrupt cache entry is recomputed, never trusted
    if not all((entry / "figures" / Path(f).name).is_file() for f in res.figures):
        return None
    out.mkdir(parents=True, exist_ok=True)
    figs = []
    for f in res.figures:
        src = entry / "figures" / Path(f).name
        dst = out / src.name
        if src.resolve() != dst.resolve():
            atomic_copy(src, dst)
        figs.append(str(dst))
    res.figures = figs
    res.notes = [*res.notes, f"loaded from cache {entry}"]
    return res


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None: leave the setting alone), restoring it afterwards."""
    import torch

    prev = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def scale_of(configs: dict[str, Any], config: Any) -> str:
    """The name of ``config`` in an experiment's ``CONFIGS`` ("smoke", "paper"), or "custom"."""
    for name, c in configs.items():
        if c == config:
            return name
    return "custom"


def config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Rebuild a frozen config dataclass from its JSON form (lists back to tuples)."""
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})
