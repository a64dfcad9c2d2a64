"""Trained models shared by the experiments, cached by their full training config.

Several empirical claims evaluate the same kind of trained network (e.g. MNIST β-VAEs at
d = 12 across β). :func:`trained` trains a :class:`~gracheck.train.TrainConfig` once into
``cache_dir()/models/<hash>`` (resuming a partial run; checkpoints are atomic) and loads it
afterwards, so the report, ``pytest verification/`` and the other experiments reuse it. A lock per
entry (:func:`gracheck.base.files.entry_lock`) makes a second process wait for the first one's training.
The key is the whole config plus gracheck's version: any change retrains.

Grids. An experiment's models are many small independent runs (Fig. 3: b × β; Fig. 4: β × objective ×
run). :func:`train_grid` trains the ones not yet cached as ensembles (:func:`gracheck.ensemble.train_ensemble`:
one batched computation per group of configs that differ only in ``beta``, ``posterior``/``block`` or
``seed``) straight into the same per-config folders :func:`trained` uses, then slims each member's
checkpoint as :func:`trained` does. On CPU an ensemble member is bitwise the model the trainer makes
from its config alone (``tests/test_ensemble.py``; ``tests/test_exp_zoo.py`` checks it for a grid), so
the cache key stays the config: a model cached by one route is valid for the other, and no key
changed when the experiments moved to grids. What differs between the routes is only bookkeeping in
the folder: the member's ``result.json`` records its share (total/M) of the ensemble's wall time, and
``ensemble-member.json`` names the ensemble.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gracheck.base.files import cache_dir, cache_key, entry_lock
from gracheck.base.version import __version__


CHECKPOINT_EVERY = 5000  # a cached run longer than this checkpoints every 5000 steps (and can resume)


def train_config(**fields):
    """The :class:`~gracheck.train.TrainConfig` of a cached model: ``fields`` as given, with no periodic
    held-out evaluation (``eval_every=0``) and checkpoints every :data:`CHECKPOINT_EVERY` steps only for
    runs longer than that (shorter ones train in one go), unless ``fields`` say otherwise."""
    from gracheck.train import TrainConfig

    fields.setdefault("eval_every", 0)
    fields.setdefault("checkpoint_every", 0 if fields["steps"] <= CHECKPOINT_EVERY else CHECKPOINT_EVERY)
    return TrainConfig(**fields)


def model_dir(config) -> Path:
    """The cache folder of the run trained with ``config`` (a TrainConfig)."""
    return cache_dir() / "models" / f"{config.dataset}-{config.model}-{cache_key([config.to_dict(), __version__])}"


def _done(config) -> bool:
    return (model_dir(config) / "result.json").is_file()


def _train_alone(config, out: Path, progress: bool) -> None:
    from gracheck.train import slim_checkpoint, train

    out.mkdir(parents=True, exist_ok=True)
    train(config, out, resume=True, progress=progress)
    slim_checkpoint(out)  # cached models are only evaluated: keep the weights, not Adam's moments


def trained(config, *, progress: bool = False, say: Callable[[str], None] | None = None):
    """``(model, result)``: the model trained with ``config`` (eval mode) and its TrainResult dict.

    ``progress``: the trainer's own step progress on stderr. ``say``: called with one line when the
    model starts training and one when it is trained (nothing when it comes from the cache), and
    with a line if it waits for another process training the same model.
    """
    from gracheck.train import load_checkpoint

    out = model_dir(config)
    done = out / "result.json"
    if not done.is_file():
        # two processes sharing the cache must not both train this model: the second waits, then loads it
        with entry_lock(out, on_wait=say):
            if not done.is_file():
                what = f"{config.model} on {config.dataset}, β={config.beta:g}, d={config.latent_dim}, seed {config.seed}"
                if say is not None:
                    say(f"training {what}: {config.steps} steps ({out.name})")
                t0 = time.perf_counter()
                _train_alone(config, out, progress)
                if say is not None:
                    say(f"trained {what} in {time.perf_counter() - t0:.1f} s")
    from gracheck.data import note_reads

    model, cfg, step = load_checkpoint(out)
    if cfg.to_dict() != config.to_dict():
        raise RuntimeError(f"model cache {out} holds a different config; delete the folder to retrain")
    result = json.loads(done.read_text())
    note_reads(result.get("data"))  # the data it was trained on counts as read by the experiment that uses it
    return model, result


def grid_groups(configs: Sequence) -> list[list[int]]:
    """Indices of ``configs`` grouped by what can share one ensemble computation, in first-seen order.

    Two configs share a group iff they agree in every field outside
    :data:`gracheck.ensemble.VARYING` (``beta``, ``posterior``, ``block``, ``seed``), the rule
    :func:`gracheck.ensemble.check_configs` enforces. A config listed twice (the same cache folder)
    appears once, at its first position.
    """
    from gracheck.ensemble import VARYING
    from gracheck.train import TrainConfig

    groups: dict[str, list[int]] = {}
    seen: set[str] = set()
    for i, c in enumerate(configs):
        if not isinstance(c, TrainConfig):
            raise TypeError(f"configs[{i}]: expected a TrainConfig, got {type(c).__name__}")
        folder = str(model_dir(c))
        if folder in seen:
            continue
        seen.add(folder)
        shared = json.dumps({k: v for k, v in c.to_dict().items() if k not in VARYING}, sort_keys=True, default=str)
        groups.setdefault(shared, []).append(i)
    return list(groups.values())


def _ensemble_dir(configs: Sequence) -> Path:
    """The working folder of the ensemble of ``configs`` (keyed by its members' folders, in order)."""
    return cache_dir() / "ensembles" / cache_key([model_dir(c).name for c in configs])


ensemble_dir = _ensemble_dir  # public: the budget's plan reads a part-trained chunk's checkpoint step from it


def train_grid(
    configs: Sequence,
    *,
    max_models: int | None = None,
    progress: Callable[[str], None] | None = None,
    train_progress: bool = False,
) -> dict:
    """Train every config of ``configs`` that is not cached yet, as ensembles, into :func:`model_dir` folders.

    Configs are grouped by :func:`grid_groups`; each group (cut into chunks of at most ``max_models``
    models, e.g. to fit a GPU's memory; None = no limit) is trained by
    ``train_ensemble(chunk, out, model_dirs=[model_dir(c) for c in chunk], resume=True)`` with ``out``
    a working folder under ``cache_dir()/ensembles`` that is deleted once every member's folder is
    complete (each is then a finished trainer run; :func:`gracheck.train.slim_checkpoint` drops its Adam
    state). The chunk holds every member's cache lock (:func:`gracheck.base.files.entry_lock`, taken in
    sorted order, so two processes with overlapping grids cannot deadlock) and re-checks under the locks
    which members another process finished meanwhile. A member that is alone in its chunk, or whose folder
    already holds a checkpoint of an interrupted one-model run, trains alone with the trainer (resuming it).
    A killed ensemble resumes from its working folder when the same chunk is asked for again.

    ``progress``: called with one line per chunk. Returns ``{"models": unique configs, "cached": how many
    were already trained, "trained": how many this call trained, "ensembles": the sizes of the ensembles
    it ran, "seconds": wall time spent training in this call}``. Load the models afterwards with
    :func:`trained` (no training then).
    """
    from gracheck.ensemble import train_ensemble
    from gracheck.train import latest_checkpoint, slim_checkpoint

    if max_models is not None and (isinstance(max_models, bool) or not isinstance(max_models, int) or max_models < 1):
        raise ValueError(f"max_models: expected a positive int or None, got {max_models!r}")
    cfgs = list(configs)
    groups = grid_groups(cfgs)
    n_unique = sum(len(g) for g in groups)
    todo = [[cfgs[i] for i in g if not _done(cfgs[i])] for g in groups]
    stats = {"models": n_unique, "cached": n_unique - sum(len(t) for t in todo), "trained": 0, "ensembles": [],
             "seconds": 0.0}
    t0 = time.perf_counter()
    for group in todo:
        step = max_models or max(len(group), 1)
        for s in range(0, len(group), step):
            chunk = group[s : s + step]
            dirs = [model_dir(c) for c in chunk]
            with contextlib.ExitStack() as locks:
                for d in sorted(dirs, key=str):
                    locks.enter_context(entry_lock(d))
                pending = [c for c in chunk if not _done(c)]
                alone = [c for c in pending if len(pending) == 1 or latest_checkpoint(model_dir(c)) is not None]
                batch = [c for c in pending if c not in alone]
                for c in alone:
                    if progress is not None:
                        progress(f"training 1 {c.model} model alone ({c.dataset}, β={c.beta:g}, seed {c.seed})")
                    _train_alone(c, model_dir(c), train_progress)
                    stats["trained"] += 1
                if len(batch) == 1:
                    _train_alone(batch[0], model_dir(batch[0]), train_progress)
                    stats["trained"] += 1
                elif batch:
                    if progress is not None:
                        progress(f"training {len(batch)} {batch[0].model} models as one ensemble ({batch[0].dataset}, "
                                 f"{batch[0].steps} steps)")
                    out = _ensemble_dir(batch)
                    members = [model_dir(c) for c in batch]
                    for d in members:
                        d.mkdir(parents=True, exist_ok=True)
                    train_ensemble(batch, out, model_dirs=members, resume=True, progress=train_progress)
                    for d in members:
                        slim_checkpoint(d)
                    shutil.rmtree(out, ignore_errors=True)  # every member is a complete run now
                    stats["trained"] += len(batch)
                    stats["ensembles"].append(len(batch))
    stats["seconds"] = time.perf_counter() - t0 if stats["trained"] else 0.0
    return stats
