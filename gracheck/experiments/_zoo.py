"""Trained models shared by the experiments, cached by their full training config.

Several empirical claims evaluate the same kind of trained network (e.g. MNIST β-VAEs at
d = 12 across β). :func:`trained` trains a :class:`~gracheck.train.TrainConfig` once into
``cache_dir()/models/<hash>`` (resuming a partial run; checkpoints are atomic) and loads it
afterwards, so the report, ``pytest verification/`` and the other experiments reuse it. A lock per
entry (:func:`gracheck.base.files.entry_lock`) makes a second process wait for the first one's training.
The key is the whole config plus gracheck's version: any change retrains.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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


def trained(config, *, progress: bool = False, say: Callable[[str], None] | None = None):
    """``(model, result)``: the model trained with ``config`` (eval mode) and its TrainResult dict.

    ``progress``: the trainer's own step progress on stderr. ``say``: called with one line when the
    model starts training and one when it is trained (nothing when it comes from the cache), and
    with a line if it waits for another process training the same model.
    """
    from gracheck.train import load_checkpoint, slim_checkpoint, train

    out = model_dir(config)
    done = out / "result.json"
    if not done.is_file():
        # two processes sharing the cache must not both train this model: the second waits, then loads it
        with entry_lock(out, on_wait=say):
            if not done.is_file():
                out.mkdir(parents=True, exist_ok=True)
                what = f"{config.model} on {config.dataset}, β={config.beta:g}, d={config.latent_dim}, seed {config.seed}"
                if say is not None:
                    say(f"training {what}: {config.steps} steps ({out.name})")
                t0 = time.perf_counter()
                train(config, out, resume=True, progress=progress)
                slim_checkpoint(out)  # cached models are only evaluated: keep the weights, not Adam's moments
                if say is not None:
                    say(f"trained {what} in {time.perf_counter() - t0:.1f} s")
    from gracheck.data import note_reads

    model, cfg, step = load_checkpoint(out)
    if cfg.to_dict() != config.to_dict():
        raise RuntimeError(f"model cache {out} holds a different config; delete the folder to retrain")
    result = json.loads(done.read_text())
    note_reads(result.get("data"))  # the data it was trained on counts as read by the experiment that uses it
    return model, result
