"""What every experiment shares: the claim it states, the result record, scales, seeds and a result cache.

An experiment module holds everything about one empirical claim, read top to bottom::

    # module docstring: the claim, the decision rules and their preconditions (fixed before any run),
    # the three-outcome reading of each rule, the scales

    CLAIM = experiment_claim(__name__, id="fig1-rotation-uniqueness", source="Fig. 1, 5, 6; App. C",
                             statement="...", title="...", shows="...")   # the report's section text

    @dataclasses.dataclass(frozen=True)
    class Config: ...                      # every setting, nothing implicit

    CONFIGS = {"smoke": Config(...), "paper": Config(...)}

    def run(config, *, seed, device, out_dir, progress=None) -> ExperimentResult
    def check(result: ExperimentResult) -> list[CheckResult]

``run`` trains/evaluates and writes its figures into ``out_dir``; ``check`` applies the decision
rules (:mod:`gracheck.base.verdicts`) and returns the evidence, each result with its outcome
(verified / refuted / inconclusive) and reason. ``CLAIM.check()`` runs the experiment through
:func:`run_experiment`, a cache keyed by (claim, config, seed, version) and locked per entry, so the
report and ``pytest verification/`` share one smoke run; the ExperimentResult comes back as the
evidence's ``record``, so the report shows the numbers the verdict was computed from.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as _dt
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from gracheck.base import deadline as _deadline
from gracheck.base.evidence import CheckSkipped, Claim, Evidence, FigureSection, claim
from gracheck.base.files import atomic_copy, atomic_write_text, cache_dir, cache_key, entry_lock
from gracheck.base.version import __version__

SCALES = ("smoke", "paper")
_MODULES: dict[str, str] = {}  # claim id -> the experiment module that states it (filled by experiment_claim)
_USE_PIECES: contextvars.ContextVar[bool] = contextvars.ContextVar("gracheck_use_pieces", default=True)

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
    # the data folders used and every file read, with its checksum ({"folders": {...}, "files": {...}},
    # gracheck.data.record_reads); empty for a result made before it was recorded
    data_read: dict[str, Any] = dataclasses.field(default_factory=dict)

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


def _key(claim_id: str, cfg: dict[str, Any], seed: int, device: str) -> str:
    return cache_key([claim_id, cfg, seed, device.split(":")[0], __version__])


def experiment_claim(module: str, *, id: str, source: str, statement: str, title: str, shows: str) -> Claim:
    """The empirical claim stated by the experiment module named ``module`` (pass ``__name__``).

    ``title`` and ``shows``: the report's section for it (its heading, and what the paper shows).
    Its one method, "empirical", runs the module's experiment (:func:`run_experiment`, cached) and
    applies the module's ``check``; it returns :class:`~gracheck.base.evidence.Evidence` whose
    ``record`` is the ExperimentResult. Keyword arguments of ``CLAIM.check``: ``scale`` ("smoke"),
    ``device`` ("cpu"), ``out_dir`` (figures; default the cache entry), ``use_cache`` (True),
    ``progress`` (a callable taking a line), ``from_result`` (an ExperimentResult to judge instead
    of running, e.g. a committed paper-scale one) and ``config`` (a config to run instead of
    ``CONFIGS[scale]``; its result's scale is then "custom" unless it equals a named one). Under a
    deadline (:func:`gracheck.base.deadline.deadline`, the report's ``--budget``) the experiment runs
    through its plan (:func:`gracheck.experiments._plan.run_planned`): only the jobs that fit start, and
    a claim that could not finish raises CheckSkipped("not run here (budget): ...").
    """
    c = claim(id, source=source, statement=statement, kind="empirical", figure=FigureSection(title, shows))
    _MODULES[id] = module

    def _empirical(*, seed: int, candidate, scale: str = "smoke", device: str = "cpu", out_dir=None,
                   use_cache: bool = True, progress: Callable[[str], None] | None = None,
                   from_result: ExperimentResult | None = None, config: Any = None) -> Evidence:
        mod = importlib.import_module(module)
        if from_result is not None:
            res = from_result
        elif _deadline.active():  # a budget: run the plan's jobs that fit (gracheck.experiments._plan)
            from gracheck.experiments._plan import run_planned

            if not use_cache:
                raise ValueError("use_cache: a run under a budget keeps its progress in the cache; it cannot be off")
            cfg = mod.CONFIGS[scale] if config is None else config
            try:
                res = run_planned(mod, cfg, seed=seed, device=device, out_dir=out_dir, progress=progress)
            except _deadline.DeadlineReached as e:
                from gracheck.experiments._plan import BUDGET_REASON

                raise CheckSkipped(f"{BUDGET_REASON}: {e}; a rerun with the same cache continues") from None
        else:
            res = run_experiment(mod, scale=scale, config=config, seed=seed, device=device, out_dir=out_dir,
                                 use_cache=use_cache, progress=progress)
        return Evidence(mod.check(res), record=res)

    _empirical.__doc__ = f"Runs the {id} experiment ({module}, cached) and applies its pre-registered decision rules."
    c.method("empirical")(_empirical)
    return c


def run_experiment(
    module: ModuleType | str,
    *,
    scale: str = "smoke",
    config: Any = None,
    seed: int = 0,
    device: str = "cpu",
    out_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Run (or load from the cache) the experiment of ``module`` (an experiment module or its name) at ``scale``
    (or at ``config``, an instance of the module's Config, when given: e.g. a tiny paper-shaped test size).

    Figures land in ``out_dir`` (default: the cache entry's folder). The cache key
    covers the claim, the full config, the seed, the device type and gracheck's
    version, so a changed setting never reuses a stale result.
    """
    if scale not in SCALES:
        raise ValueError(f"scale: expected one of {SCALES}, got {scale!r}")
    try:
        mod = importlib.import_module(module) if isinstance(module, str) else module
    except ModuleNotFoundError as e:
        if e.name != module:
            raise  # the module exists but something it imports is missing: an error, not a bad argument
        raise ValueError(f"module: no module {module!r}; to run a claim by id use gracheck.claims.get(id).check()") from None
    if not isinstance(getattr(mod, "CLAIM", None), Claim) or not hasattr(mod, "CONFIGS"):
        raise ValueError(f"module: {getattr(mod, '__name__', mod)!r} is not an experiment module (no CLAIM and "
                         "CONFIGS); to run a claim by id use gracheck.claims.get(id).check()")
    if config is None:
        config = mod.CONFIGS[scale]
    else:
        ref = mod.CONFIGS[scale]
        if type(config) is not type(ref):
            raise TypeError(f"config: expected a {type(ref).__qualname__} of {mod.__name__}, got {type(config).__name__}")
        scale = scale_of(mod.CONFIGS, config)
    entry = _entry_dir(mod, config, scale, seed, device)
    out = Path(out_dir) if out_dir is not None else entry / "figures"
    if not use_cache:
        token = _USE_PIECES.set(False)
        try:
            return _run(mod, config, seed=seed, device=device, out=out, progress=progress)
        finally:
            _USE_PIECES.reset(token)
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


def _entry_dir(mod, config, scale: str, seed: int, device: str) -> Path:
    claim_id = mod.CLAIM.id
    cfg = config_dict(config)
    # inputs outside the config that change the result (e.g. a user's Inception weights file) are
    # named by the module's optional ``cache_key_inputs()`` and join the key
    extra = mod.cache_key_inputs() if hasattr(mod, "cache_key_inputs") else None
    key_cfg = cfg if extra is None else {"config": cfg, "inputs": extra}
    return cache_dir() / "experiments" / f"{claim_id}-{scale}-{_key(claim_id, key_cfg, seed, device)}"


def result_cached(module: ModuleType, config: Any, *, seed: int, device: str) -> bool:
    """Whether :func:`run_experiment` would load the result of ``module`` at ``config`` from the cache."""
    entry = _entry_dir(module, config, scale_of(module.CONFIGS, config), seed, device)
    try:
        res = ExperimentResult.from_dict(json.loads((entry / "result.json").read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return False
    return all((entry / "figures" / Path(f).name).is_file() for f in res.figures)


def _run(mod, config, *, seed: int, device: str, out: Path, progress) -> ExperimentResult:
    from gracheck.data import record_reads

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with record_reads() as reads:  # includes what cached models and feature nets were trained on
        res = mod.run(config, seed=seed, device=device, out_dir=out, progress=progress)
    res.data_read = reads.to_dict()
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


def experiment_module(claim_id: str) -> ModuleType:
    """The experiment module stating the empirical claim ``claim_id`` (imported); ValueError for an unknown id."""
    if claim_id not in _MODULES:
        raise ValueError(f"claim_id: no experiment module states {claim_id!r} (known: {sorted(_MODULES)})")
    return importlib.import_module(_MODULES[claim_id])


def piece_path(claim_id: str, config: Any, seed: int, device: str, name: str) -> Path:
    """Where :func:`cached_piece` keeps the piece ``name`` of the experiment at ``config`` (JSON file)."""
    cfg = config_dict(config)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    key = _key(claim_id, {"config": cfg, "piece": name}, seed, device)
    return cache_dir() / "experiments" / "pieces" / f"{claim_id}-{_scale_name(config)}" / f"{safe}-{key}.json"


def _scale_name(config: Any) -> str:
    """"smoke"/"paper" when ``config`` is one of its module's CONFIGS, else "custom"."""
    mod = sys.modules.get(type(config).__module__)
    return scale_of(getattr(mod, "CONFIGS", {}), config) if mod is not None else "custom"


def cached_piece(claim_id: str, config: Any, seed: int, device: str, name: str, compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON-able result for one piece of an experiment (e.g. one Fig. 1 setting), cached.

    A piece is a part of ``run`` that is costly and independent of the others, so that a budget can run
    an experiment's pieces in separate processes or sessions (:mod:`gracheck.experiments._plan`): it is
    stored atomically as JSON under :func:`piece_path` (keyed by claim, config, seed, device type and
    gracheck's version) and reused by later runs, unless ``run_experiment(..., use_cache=False)``. The
    value comes back through JSON either way (a fresh and a cached run see equal values: Python floats
    round-trip exactly). One process computes a piece; a second one waits for it (lock per piece).
    """
    path = piece_path(claim_id, config, seed, device, name)
    use = _USE_PIECES.get()

    def load():
        try:
            return json.loads(path.read_text())["value"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or damaged: recomputed, never trusted

    if use and path.is_file():
        got = load()
        if got is not None:
            return got
    with entry_lock(path):
        if use and path.is_file():
            got = load()
            if got is not None:
                return got
        value = json.loads(json.dumps(compute()))
        atomic_write_text(path, json.dumps({"claim_id": claim_id, "piece": name, "seed": seed, "device": device,
                                            "version": __version__, "created": now_utc(), "value": value}))
    return value


def piece_done(claim_id: str, config: Any, seed: int, device: str, name: str) -> bool:
    """Whether :func:`cached_piece` holds the piece ``name`` (a readable file)."""
    path = piece_path(claim_id, config, seed, device, name)
    try:
        return "value" in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return False
