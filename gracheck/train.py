"""The trainer: β-VAE (Eq. 2), GRAE (Eq. 12/13), GRAE≈ (Eq. 14) and a plain autoencoder.

One run = one frozen :class:`TrainConfig` + one output folder::

    out/
      config.json              the config (also inside every checkpoint and result.json)
      ckpt-00000050.pt …       model, optimiser, RNG states, step, config and the SHA-256 digest of all
                               of it (last ``keep_checkpoints``)
      latest                   name of the newest checkpoint
      train.lock               held while a trainer runs here: its pid, host and start time
      log.csv, log.jsonl       every training step: step, each objective term, loss, grad_norm, lr, seconds
      eval.csv, eval.jsonl     every ``eval_every`` steps (and at step 0 and the end): the terms averaged
                               over ``eval_size`` held-out examples, BatchNorm in eval mode
      result.json              written when the run completes (:class:`TrainResult`)

Usage::

    python -m gracheck.train --dataset mnist --model grae-approx --beta 0.1 --latent-dim 12 \\
        --steps 200 --checkpoint-every 50 --out DIR          # add --resume to continue DIR
    torchrun --nproc_per_node 4 -m gracheck.train ...        # DDP (nccl on CUDA, gloo on CPU)

Objectives (all in nats, maximisation form, per example; training minimises −mean over the
batch): ``beta-vae`` → :func:`gracheck.objectives.beta_vae_objective` (one reparameterised
sample by default, exact KL); ``grae`` → :func:`~gracheck.objectives.grae_objective` (full
decoder Jacobian by forward mode); ``grae-approx`` →
:func:`~gracheck.objectives.grae_approx_objective` (``grae_k`` sampled Jacobian columns);
``ae`` → log p(x | g(h(x))) alone. The paper (Sec. 6) uses Gaussian observations with unit
variance, Adam, 20k iterations on MNIST and 50k on CelebA; it does not state the batch size or
learning rate: the defaults here (64, 1e-3) are our choice.

Data: MNIST trains on the 60k train split (first ``train_limit`` if set) and evaluates on the
first ``eval_size`` test images. The shipped CelebA subset holds only 10k *train* images, so
CelebA uses ``load_celeba("all")`` (sorted by file name) and holds out its *last* ``eval_size``
images, training on the rest; this split is deterministic and is recorded in result.json
(``data``), with the data folders used (``data["folders"]``: path -> how it was chosen) and every
file read with the checksum its loader verified (``data["files"]``). The files are read from
``data_root`` (``--data-root``) alone when given, else ``$GRACHECK_DATA`` alone when set: a
folder named there that lacks a file is an error naming it, never a fallback to another copy.
Batches: the global batch of step t is positions [tB, (t+1)B) of a stream of epoch-wise
permutations, epoch e permuted by a generator seeded from (seed, e); so batches are a pure
function of (seed, step), identical for any number of DDP processes (rank r takes the r-th
slice of the global batch) and exact on resume.

Randomness: the model is initialised from ``seed``; posterior samples (β-VAE) and Jacobian
columns (GRAE≈) come from one ``torch.Generator`` per process seeded from (seed, rank), whose
state goes into each checkpoint. Nothing reads the global RNG. On CPU with
``deterministic=True`` (default) ``torch.use_deterministic_algorithms`` is on and a run killed
at any point and resumed ends with bitwise the same parameters as an uninterrupted one (same
machine, same ``num_threads``; tested). On CUDA cuDNN is put in deterministic mode but bitwise
equality is not promised.

Precision: on CUDA with ``amp=True`` the encoder and decoder run under bf16 autocast and their
outputs are cast to float32 before the objectives, so log-densities, KL, log-determinants and
log1p terms are computed in float32. Jacobian columns are tangents of the autocast network.

BatchNorm: the networks train with batch statistics; the Jacobian engine
(:mod:`gracheck.autodiff`) treats them as constants for the tangents, so GRAE/GRAE≈ see
per-example Jacobians; the decoder is handed to the objectives as an ``nn.Module`` for that
reason. Evaluation uses eval mode (running statistics). Under DDP each process normalises with
its own slice of the batch (no SyncBatchNorm) and rank 0's running statistics are broadcast.

Failure modes: a non-finite term stops the run with :class:`TrainingDiverged` naming the
(1-based) step and the first non-finite underlying term (``log_px``, ``kl``, ``prior``,
``regularizer``; ``objective`` only when those are finite and their combination is not), before
the optimiser applies that step (the last checkpoint is the last good state). Every checkpoint
records a SHA-256 digest of its payload (every tensor's bytes and every other value), verified
on load: a checkpoint that is truncated, not a checkpoint, or whose digest does not match is
named in a warning, renamed ``*.corrupt`` (kept, never deleted) and the previous one is used;
checkpoints that pass verification are never set aside. Resuming with a different config raises
:class:`ConfigMismatchError` naming the fields (``steps`` alone may change, to extend a run).

One trainer per folder: the trainer holds ``OUT/train.lock`` (a :class:`gracheck.base.files.FolderLock`, re-exported here) while it
runs; a second one is refused with :class:`FolderLocked` naming the owner's pid. The kernel
drops the lock when its holder dies (SIGKILL included), and the next trainer takes such a
stale lock over with a warning naming the dead process.

Signals: on SIGTERM or SIGINT (Ctrl-C) the trainer finishes the current step, writes a
checkpoint, and raises :class:`TrainingInterrupted` (a ``KeyboardInterrupt``), whose message
names the checkpoint; ``python -m gracheck.train`` prints that one line on stderr and exits
143 (SIGTERM) or 130 (SIGINT). ``--resume`` then continues bitwise as if uninterrupted. A
second signal while the step finishes acts as usual (Ctrl-C raises KeyboardInterrupt at once,
SIGTERM ends the process) and loses the steps since the last checkpoint.
Under DDP the processes agree on the step to stop after (the flag rides on the per-step
all-reduce that already exists). A deadline set by :func:`gracheck.base.deadline.deadline` (the
report's ``--budget``) acts the same way: after the step during which it passed the trainer writes a
checkpoint and raises :class:`gracheck.base.deadline.DeadlineReached`; resuming continues bitwise.

Exit codes of ``python -m gracheck.train``: 0 done; 1 an internal error (traceback); 2 bad
options, config or data (also argparse's usage errors); 3 training diverged; 4 OUT is in use by
another trainer; 5 OUT cannot be created or written (a parent is a file, no permission, ...);
130 / 143 stopped by SIGINT / SIGTERM after writing a checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import gc
import os
import re
import signal
import sys
import threading
import time
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from gracheck import nets, objectives, posteriors
from gracheck.base import deadline as _deadline
from gracheck.base.files import FolderLock, FolderLocked, is_terminal
from gracheck.base.files import atomic_write_bytes as _files_atomic_write_bytes
from gracheck.base.stats import derive_seed
from gracheck.base.validate import check_positive_int
from gracheck.likelihoods import BernoulliObs, GaussianObs

__all__ = [
    "slim_checkpoint",
    "CheckpointError",
    "ConfigMismatchError",
    "FolderLock",
    "FolderLocked",
    "OutDirError",
    "TrainingInterrupted",
    "payload_digest",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "latest_checkpoint",
    "load_checkpoint",
    "main",
    "read_log",
    "train",
]

CKPT_FORMAT = "gracheck-train-checkpoint/2"  # /2: the payload carries its SHA-256 digest ("sha256")
_CKPT_FORMAT_V1 = "gracheck-train-checkpoint/1"  # before digests: still read (unverifiable), never written
_CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")
LOCK_NAME = "train.lock"
OBS = ("gaussian", "bernoulli")
TERMS = {
    "beta-vae": ("objective", "log_px", "kl"),
    "grae": ("objective", "log_px", "prior", "regularizer"),
    "grae-approx": ("objective", "log_px", "prior", "regularizer"),
    "ae": ("objective", "log_px"),
}
EXTENDABLE = ("steps",)  # config fields a resumed run may change


# ---------------------------------------------------------------------------------- errors


class TrainingDiverged(RuntimeError):
    """A non-finite value during training; ``step`` (1-based) and ``term`` name where."""

    def __init__(self, step: int, term: str, detail: str = "", checkpoint: str | None = None) -> None:
        self.step, self.term, self.checkpoint = step, term, checkpoint
        msg = f"training diverged at step {step}: {term} is not finite"
        if detail:
            msg += f" ({detail})"
        msg += f"; last good checkpoint: {checkpoint}" if checkpoint else "; no checkpoint was written yet"
        super().__init__(msg)


class ConfigMismatchError(ValueError):
    """Resuming a run whose saved config differs from the given one."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, is not a gracheck training checkpoint, or fails its digest."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT stopped the run after a finished step; ``checkpoint`` holds that step.

    A ``KeyboardInterrupt`` (so ``except Exception`` does not swallow it); ``exit_code`` is the
    shell's 128 + signal number (143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, signum: int, step: int, total: int, checkpoint: str) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"gracheck.train: stopped by {name} after step {step} of {total}; checkpoint {checkpoint} "
                         f"(continue with --resume)")

    def __str__(self) -> str:
        return str(self.args[0])


class OutDirError(OSError):
    """The output folder cannot be created or written (a parent is a file, no permission, ...)."""


# ---------------------------------------------------------------------------------- run folder


def _prepare_out(out: Path) -> None:
    """Create ``out`` and its parents; :class:`OutDirError` naming the obstacle otherwise."""
    if out.exists() and not out.is_dir():
        raise OutDirError(f"out_dir: {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
        raise OutDirError(f"out_dir: cannot create {out}: {blocker} is a file, not a folder") from None
    except OSError as e:
        raise OutDirError(f"out_dir: cannot create {out}: {e.strerror} ({e.filename})") from None


def _lock_out(out: Path) -> FolderLock:
    """Create ``out`` and take its lock (:class:`FolderLocked` / :class:`OutDirError` otherwise)."""
    _prepare_out(out)
    lock = FolderLock(out / LOCK_NAME, what="run folder")
    try:
        return lock.acquire()
    except FolderLocked:
        raise
    except OSError as e:
        raise OutDirError(f"out_dir: {out} is not writable: {e.strerror} ({e.filename})") from None


PROGRESS_FRACTION = 0.1  # off a terminal: a progress line at every tenth of the run ...
PROGRESS_SECONDS = 60.0  # ... and whenever this many seconds passed since the last line


class _StepProgress:
    """The training loop's progress on stderr: a tqdm bar on a terminal; elsewhere (CI logs, pipes, nohup)
    one flushed line at every :data:`PROGRESS_FRACTION` of the run, whenever :data:`PROGRESS_SECONDS`
    passed since the last line, and at the last step: step, loss, steps/s (since the last line) and
    the time left at that rate."""

    def __init__(self, cfg: TrainConfig, start: int, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.name = cfg.steps, f"{cfg.model} {cfg.dataset}"
        self.bar = None
        if is_terminal(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.steps, initial=start, desc=self.name, dynamic_ncols=True, file=self.stream)
            return
        self.every = max(1, math.ceil(cfg.steps * PROGRESS_FRACTION))
        self.t_last, self.step_last = time.perf_counter(), start
        self._line(f"{'resuming at' if start else 'starting'} step {start} of {cfg.steps}")

    def _line(self, s: str) -> None:
        print(f"gracheck.train {self.name}: {s}", file=self.stream, flush=True)

    def update(self, done: int, metrics: dict, terms: Sequence[str]) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k in terms}, refresh=False)
            self.bar.update(1)
            return
        now = time.perf_counter()
        if not (done % self.every == 0 or done == self.total or now - self.t_last >= PROGRESS_SECONDS):
            return
        rate = (done - self.step_last) / max(now - self.t_last, 1e-9)
        left = (self.total - done) / rate if rate > 0 else math.inf
        self._line(f"step {done}/{self.total} ({100 * done / self.total:.0f}%), loss {metrics['loss']:.6g}, "
                   f"{rate:.3g} steps/s, {left:.0f} s left")
        self.t_last, self.step_last = now, done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _StopRequest:
    """SIGTERM/SIGINT handlers that only record the signal; the training loop acts on it after a step.

    Installed only in the main thread (Python allows no other). On the first signal the previous
    handlers come back, so a second signal interrupts at once as usual.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._prev: dict = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._prev[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        prev, self._prev = self._prev, {}
        for s, h in prev.items():
            signal.signal(s, h)

    def __exit__(self, *exc) -> None:
        self._restore()


# ---------------------------------------------------------------------------------- config


def _f(default, help: str, **kw):
    return dataclasses.field(default=default, metadata={"help": help, **kw})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (frozen; saved as config.json and inside each checkpoint)."""

    dataset: str = _f("mnist", "data set: mnist | celeba")
    model: str = _f("beta-vae", "objective: beta-vae (Eq. 2) | grae (Eq. 13) | grae-approx (Eq. 14) | ae")
    posterior: str = _f("mean-field", "β-VAE posterior: mean-field | block-diagonal | full")
    block: int | None = _f(None, "block size for posterior=block-diagonal")
    latent_dim: int = _f(12, "latent dimension d (paper: 8-20 on MNIST, 128 on CelebA)")
    beta: float = _f(1.0, "β > 0")
    steps: int = _f(20_000, "optimiser steps (paper: 20k MNIST, 50k CelebA)")
    batch_size: int = _f(64, "global batch size (split across DDP processes); not given in the paper")
    lr: float = _f(1e-3, "Adam learning rate (not given in the paper)")
    seed: int = _f(0, "seed for initialisation, data order, posterior samples and Jacobian columns")
    device: str = _f("cpu", "cpu | cuda | cuda:N | auto")
    amp: bool = _f(True, "bf16 autocast for the networks on CUDA (objectives stay float32); ignored on CPU")
    obs: str = _f("gaussian", "observation model: gaussian (paper) | bernoulli (logit decoder output)")
    obs_variance: float = _f(1.0, "variance of the Gaussian observation model (paper: 1)")
    arch: str = _f("conv", "conv (Appendix D) | mlp")
    width: float = _f(1.0, "channel multiplier of the conv nets (1.0 = paper)")
    hidden: tuple[int, ...] = _f((256,), "MLP hidden sizes (arch=mlp), comma separated")
    activation: str = _f("elu", "MLP activation: elu | relu | tanh | softplus")
    grae_k: int = _f(1, "Jacobian columns per example for grae-approx")
    n_samples: int = _f(1, "posterior samples per example for beta-vae")
    train_limit: int | None = _f(None, "use only the first N training images")
    eval_every: int = _f(1000, "evaluate on held-out data every N steps (0: only at start and end)")
    eval_size: int = _f(1000, "held-out examples per evaluation")
    checkpoint_every: int = _f(1000, "write a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = _f(3, "how many recent checkpoints to keep")
    num_threads: int | None = _f(None, "torch CPU threads (None: leave as is)")
    deterministic: bool = _f(True, "deterministic algorithms (bitwise reproducible on CPU)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in (self.hidden if not isinstance(self.hidden, int) else (self.hidden,))))
        _choice("dataset", self.dataset, nets.DATASETS)
        _choice("model", self.model, nets.MODELS)
        _choice("posterior", self.posterior, posteriors.STRUCTURES)
        _choice("obs", self.obs, OBS)
        _choice("arch", self.arch, nets.ARCHS)
        _choice("activation", self.activation, nets.ACTIVATIONS)
        for name in ("latent_dim", "steps", "batch_size", "grae_k", "n_samples", "eval_size", "keep_checkpoints"):
            check_positive_int(name, getattr(self, name))
        for name in ("eval_every", "checkpoint_every", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {v!r}")
        for name in ("block", "train_limit", "num_threads"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        for name in ("beta", "lr", "obs_variance", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name}: expected a finite number > 0, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.model == "beta-vae" and self.posterior == "block-diagonal" and self.block is None:
            raise ValueError("block: required for posterior='block-diagonal'")
        if self.grae_k > self.latent_dim:
            raise ValueError(f"grae_k: must be <= latent_dim={self.latent_dim}, got {self.grae_k}")
        for h in self.hidden:
            check_positive_int("hidden", h)
        if not isinstance(self.device, str) or not re.fullmatch(r"cpu|auto|cuda(:\d+)?", self.device):
            raise ValueError(f"device: expected cpu, cuda, cuda:N or auto, got {self.device!r}")
        for name in ("amp", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config: unknown field(s) {unknown}")
        d = dict(d)
        if "hidden" in d:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)


def _choice(name: str, v: object, allowed: Sequence[str]) -> None:
    if v not in allowed:
        raise ValueError(f"{name}: expected one of {tuple(allowed)}, got {v!r}")


def config_diff(a: TrainConfig, b: TrainConfig) -> dict[str, tuple]:
    """Fields whose values differ: ``{name: (a's value, b's value)}``."""
    da, db = a.to_dict(), b.to_dict()
    return {k: (da[k], db[k]) for k in da if da[k] != db[k]}


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished :func:`train` call returns (also written to ``out_dir/result.json``)."""

    config: TrainConfig
    out_dir: str
    step: int
    train_metrics: dict  # the last logged training step's terms (batch means)
    eval_metrics: dict  # the last evaluation (held-out means)
    checkpoint: str
    seconds: float  # cumulative training wall time over all sessions
    resumed_from: int | None
    device: str
    world_size: int
    data: dict  # how the training/held-out sets were formed; "folders" and "files" (with checksums) read

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return d


# ---------------------------------------------------------------------------------- small utils


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    _files_atomic_write_bytes(path, data)  # the project's one atomic writer (gracheck.base.files)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode())


def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) of this process (0, 1, 0 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device: {name!r} requested but CUDA is not available")
        if name == "cuda":
            return torch.device("cuda", local_rank if _dist_info()[1] > 1 else torch.cuda.current_device())
    return torch.device(name)


@contextlib.contextmanager
def _runtime(cfg: TrainConfig, device: torch.device):
    """Thread count and determinism flags for the run, restored afterwards."""
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench, prev_cudnn_det = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        if cfg.deterministic:
            if device.type == "cpu":
                torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev_bench, prev_cudnn_det


# ---------------------------------------------------------------------------------- data


# The last data set decoded in this process: experiments train many models on the same images
# (e.g. 20 CelebA models of one figure), and decoding the JPEGs again for each costs seconds.
# One entry only, so a process never holds two copies of a large set; the trainer only indexes
# these tensors (never writes into them).
_DATA_MEMO: dict[tuple, tuple[Tensor, Tensor, dict]] = {}


def _load_data(cfg: TrainConfig, root) -> tuple[Tensor, Tensor, dict]:
    """(train images, held-out images, description); both ``[N, C, H, W]`` float32 in [0, 1]."""
    key = (cfg.dataset, None if root is None else str(Path(root).resolve()), cfg.train_limit, cfg.eval_size,
           os.environ.get("GRACHECK_DATA"))
    from gracheck import data as gdata

    if key not in _DATA_MEMO:
        _DATA_MEMO.clear()
        with gdata.record_reads() as rec:
            train_x, held, desc = _load_data_uncached(cfg, root)
        _DATA_MEMO[key] = train_x, held, {**desc, **rec.to_dict()}
    else:
        gdata.note_reads(_DATA_MEMO[key][2])  # a memo hit reads the same files: an outer record sees them too
    train_x, held, desc = _DATA_MEMO[key]
    return train_x, held, dict(desc)


def _load_data_uncached(cfg: TrainConfig, root) -> tuple[Tensor, Tensor, dict]:
    from gracheck import data as gdata

    if cfg.dataset == "mnist":
        train_x, _ = gdata.mnist_images("train", root, limit=cfg.train_limit)
        held, _ = gdata.mnist_images("test", root, limit=cfg.eval_size)
        desc = {"train": f"MNIST train split, first {len(train_x)} images",
                "held_out": f"MNIST test split, first {len(held)} images"}
    else:
        allx = gdata.load_celeba("all", root, size=64)
        if cfg.eval_size >= len(allx):
            raise ValueError(f"eval_size: {cfg.eval_size} leaves no CelebA training images (the set has {len(allx)})")
        held = allx[len(allx) - cfg.eval_size :]
        train_x = allx[: len(allx) - cfg.eval_size]
        if cfg.train_limit is not None:
            train_x = train_x[: cfg.train_limit]
        desc = {"train": f"CelebA split 'all' sorted by name, first {len(train_x)} images",
                "held_out": f"CelebA split 'all' sorted by name, last {len(held)} images (the shipped subset "
                            "has no test images, so the held-out set is cut from 'all')"}
    return train_x.contiguous(), held.contiguous(), desc


class _BatchStream:
    """Global batch of step t = positions [tB, (t+1)B) of concatenated epoch permutations (seeded by (seed, epoch))."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.b, self.seed = n, batch_size, seed
        self._epoch, self._perm = -1, None

    def _perm_of(self, e: int) -> Tensor:
        if e != self._epoch:
            g = torch.Generator().manual_seed(derive_seed("data", self.seed, e))
            self._epoch, self._perm = e, torch.randperm(self.n, generator=g)
        return self._perm

    def indices(self, step: int) -> Tensor:
        out = []
        pos, end = step * self.b, (step + 1) * self.b
        while pos < end:
            e, off = divmod(pos, self.n)
            take = min(end - pos, self.n - off)
            out.append(self._perm_of(e)[off : off + take])
            pos += take
        return torch.cat(out)


# ---------------------------------------------------------------------------------- objective module


def _to_float(out):
    if isinstance(out, Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple):
        return tuple(_to_float(o) for o in out)
    return out


class _Autocast(nn.Module):
    """Runs ``inner`` under bf16 autocast and returns float32 (created per call, so not part of any state dict)."""

    def __init__(self, inner: nn.Module, device_type: str) -> None:
        super().__init__()
        self.inner = inner
        self.device_type = device_type

    def forward(self, *args):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.inner(*args)
        return _to_float(out)


_ARG_TERMS = {"g": "decoder output", "mean": "encoder mean", "scale_tril": "encoder scale_tril",
              "params": "encoder scale_tril", "x": "data"}


def _nonfinite_arg(err: ValueError) -> str | None:
    m = re.match(r"^(\w+): contains \d+ NaN/Inf", str(err))
    return _ARG_TERMS.get(m.group(1), m.group(1)) if m else None


class _NonFinite(Exception):
    def __init__(self, term: str, detail: str = "") -> None:
        super().__init__(term)
        self.term, self.detail = term, detail


class _Objective(nn.Module):
    """Per-example objective terms of a batch; the module DDP wraps, so gradients are all-reduced."""

    def __init__(self, model: nets.VAEModel, cfg: TrainConfig, obs, amp_device: str | None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.obs = obs
        self.amp_device = amp_device

    def forward(self, x: Tensor, gen: torch.Generator | None) -> dict[str, Tensor]:
        cfg = self.cfg
        enc, dec = self.model.encoder, self.model.decoder
        if self.amp_device is not None:
            enc, dec = _Autocast(enc, self.amp_device), _Autocast(dec, self.amp_device)
        try:
            mean, scale_tril = enc(x)
        except ValueError as e:  # e.g. the posterior head's raw outputs are not finite
            term = _nonfinite_arg(e)
            if term is None:
                raise
            raise _NonFinite(term, str(e)) from e
        for name, t in (("encoder mean", mean), ("encoder scale_tril", scale_tril)):
            if t is not None and not bool(torch.isfinite(t.detach()).all()):
                raise _NonFinite(name, f"{int((~torch.isfinite(t.detach())).sum())} of {t.numel()} values")
        try:
            if cfg.model == "beta-vae":
                return objectives.beta_vae_objective(
                    x, dec, mean, scale_tril, cfg.beta, self.obs, n_samples=cfg.n_samples, generator=gen, return_terms=True
                )
            if cfg.model == "grae":
                return objectives.grae_objective(x, dec, mean, cfg.beta, self.obs, return_terms=True)
            if cfg.model == "grae-approx":
                return objectives.grae_approx_objective(
                    x, dec, mean, cfg.beta, self.obs, k=cfg.grae_k, generator=gen, return_terms=True
                )
            log_px = self.obs.log_prob(x, dec(mean))
            return {"objective": log_px, "log_px": log_px}
        except ValueError as e:
            term = _nonfinite_arg(e)
            if term is None:
                raise
            raise _NonFinite(term, str(e)) from e


def _make_obs(cfg: TrainConfig):
    return GaussianObs(cfg.obs_variance) if cfg.obs == "gaussian" else BernoulliObs(logits=True)


def _build(cfg: TrainConfig) -> nets.VAEModel:
    """The model of ``cfg``, initialised from ``cfg.seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(derive_seed("init", cfg.seed))
        return nets.build_model(
            cfg.dataset, cfg.model, cfg.latent_dim, posterior=cfg.posterior,
            block=cfg.block if cfg.posterior == "block-diagonal" else None, width=cfg.width, arch=cfg.arch,
            hidden=cfg.hidden, activation=cfg.activation, out="sigmoid" if cfg.obs == "gaussian" else "none",
        )


# ---------------------------------------------------------------------------------- checkpoints


def _ckpt_files(out: Path) -> list[Path]:
    """Checkpoint files in ``out``, newest step first."""
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _CKPT_RE.match(p.name))] if out.is_dir() else []
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(out_dir) -> Path | None:
    """The newest checkpoint file in ``out_dir`` (by step), or None."""
    files = _ckpt_files(Path(out_dir))
    return files[0] if files else None


def payload_digest(payload: dict) -> str:
    """SHA-256 (hex) of a checkpoint payload's contents, ignoring its own top-level ``"sha256"`` entry.

    Covers every tensor's dtype, shape and bytes and every other value's type and repr, walked
    in order through dicts, lists and tuples, so it does not depend on how the file serialises
    them; the same payload read back from the file has the same digest.
    """
    h = hashlib.sha256()

    def feed(o) -> None:
        if isinstance(o, Tensor):
            t = o.detach()
            t = (t.cpu() if t.device.type != "cpu" else t).contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(o, dict):
            h.update(f"D{len(o)};".encode())
            for k, v in o.items():
                feed(k)
                feed(v)
        elif isinstance(o, (list, tuple)):
            h.update(f"{'L' if isinstance(o, list) else 'U'}{len(o)};".encode())
            for v in o:
                feed(v)
        elif o is None or isinstance(o, (bool, int, float, str)):
            r = repr(o)
            h.update(f"S{type(o).__name__}{len(r)}:{r}".encode())
        else:
            raise TypeError(f"payload: cannot digest a {type(o).__name__}")

    feed({k: v for k, v in payload.items() if k != "sha256"})
    return h.hexdigest()


def _read_ckpt(path: Path, map_location="cpu") -> dict:
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, disallowed pickle contents, ...
        raise CheckpointError(f"{path}: cannot be read as a training checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ck, dict) or ck.get("format") not in (CKPT_FORMAT, _CKPT_FORMAT_V1):
        raise CheckpointError(f"{path}: not a gracheck training checkpoint (format tag missing or wrong)")
    if ck["format"] == CKPT_FORMAT or "sha256" in ck:  # /1 files predate digests and load unverified
        want = ck.get("sha256")
        if not isinstance(want, str):
            raise CheckpointError(f"{path}: the checkpoint's SHA-256 digest is missing")
        try:
            got = payload_digest(ck)
        except TypeError as e:
            raise CheckpointError(f"{path}: the payload holds values a checkpoint never holds ({e})") from e
        if got != want:
            raise CheckpointError(f"{path}: the SHA-256 digest of its contents ({got[:16]}…) does not match the digest "
                                  f"recorded when it was written ({want[:16]}…): the file was changed or corrupted since")
    missing = [k for k in ("step", "config", "model", "optimizer", "rng", "world_size") if k not in ck]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return ck


def _load_newest(out: Path, map_location="cpu") -> tuple[dict, Path, list[Path]] | None:
    """(checkpoint, its path, the newer files that failed verification) for the newest checkpoint that
    passes; warns (naming the file) about each that fails."""
    files = _ckpt_files(out)
    errors, failed = [], []
    for p in files:
        try:
            ck = _read_ckpt(p, map_location)
        except CheckpointError as e:
            errors.append(str(e))
            failed.append(p)
            warnings.warn(f"{e}; falling back to the previous checkpoint", RuntimeWarning, stacklevel=3)
            continue
        return ck, p, failed
    if errors:
        raise CheckpointError("no readable checkpoint in " + str(out) + ":\n  " + "\n  ".join(errors))
    return None


def load_checkpoint(path_or_dir, *, map_location="cpu") -> tuple[nets.VAEModel, TrainConfig, int]:
    """``(model, config, step)`` from a checkpoint file or a run folder (its newest readable checkpoint).

    The model is in eval mode (BatchNorm uses its running statistics). Loading never executes code
    (``weights_only=True``) and verifies the checkpoint's SHA-256 digest (files of format /1, written
    before digests existed, load unverified); an unreadable or corrupted file raises
    :class:`CheckpointError` naming it.
    """
    p = Path(path_or_dir)
    if p.is_dir():
        got = _load_newest(p, map_location)
        if got is None:
            raise FileNotFoundError(f"path_or_dir: no checkpoint (ckpt-*.pt) in {p}")
        ck, p, _ = got
    elif not p.is_file():
        raise FileNotFoundError(f"path_or_dir: {p} does not exist")
    else:
        ck = _read_ckpt(p, map_location)
    cfg = TrainConfig.from_dict(ck["config"])
    model = _build(cfg)
    model.load_state_dict(ck["model"])
    return model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval(), cfg, int(ck["step"])


def slim_checkpoint(out_dir) -> Path:
    """Drop the optimiser state from the newest checkpoint of a run folder and delete older checkpoints.

    For finished runs kept only to be evaluated (the experiments' model cache): Adam's two moment
    buffers are twice the size of the weights, which matters at paper scale (e.g. 100 CelebA models
    at full width). The slimmed file is rewritten atomically and still loads with
    :func:`load_checkpoint`; resuming a finished run stays a no-op, but extending it (more
    ``steps``) is refused, since the optimiser state is gone. Returns the checkpoint's path.
    """
    out = Path(out_dir)
    if not (out / "config.json").exists() and not _ckpt_files(out):
        raise FileNotFoundError(f"out_dir: no checkpoint (ckpt-*.pt) in {out}")
    with FolderLock(out / LOCK_NAME, what="run folder"):
        got = _load_newest(out)
        if got is None:
            raise FileNotFoundError(f"out_dir: no checkpoint (ckpt-*.pt) in {out}")
        ck, path, _ = got
        if ck["optimizer"] is not None or ck["format"] != CKPT_FORMAT:
            ck["optimizer"] = None
            ck["format"] = CKPT_FORMAT
            ck["sha256"] = payload_digest(ck)
            buf = io.BytesIO()
            torch.save(ck, buf)
            _atomic_write_bytes(path, buf.getvalue())
        for old in _ckpt_files(out):
            if old != path:
                old.unlink(missing_ok=True)
    return path


def _save_ckpt(out: Path, step: int, payload: dict, keep: int) -> Path:
    path = out / f"ckpt-{step:08d}.pt"
    payload["sha256"] = payload_digest(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    _atomic_write_bytes(path, buf.getvalue())
    _atomic_write_text(out / "latest", path.name + "\n")
    for old in _ckpt_files(out)[keep:]:
        old.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------- logs


class _Log:
    """A CSV and a JSONL file with the same rows; on resume rows past the checkpoint step are dropped."""

    def __init__(self, out: Path, stem: str, fields: Sequence[str], resume_step: int | None) -> None:
        self.csv_path, self.jsonl_path = out / f"{stem}.csv", out / f"{stem}.jsonl"
        self.fields = list(fields)
        if resume_step is not None:
            self._truncate(resume_step)
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._csv = open(self.csv_path, "a", newline="")
        self._jsonl = open(self.jsonl_path, "a")
        self._w = csv.DictWriter(self._csv, fieldnames=self.fields, extrasaction="ignore")
        if new:
            self._w.writeheader()
            self._csv.flush()

    def _truncate(self, step: int) -> None:
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                lines = f.read().splitlines()
            keep = lines[:1]
            for line in lines[1:]:
                cells = line.split(",")
                if len(cells) == len(self.fields) and cells[0].isdigit() and int(cells[0]) <= step:
                    keep.append(line)
            _atomic_write_text(self.csv_path, "".join(s + "\n" for s in keep))
        if self.jsonl_path.exists():
            keep = []
            with open(self.jsonl_path) as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a kill
                    if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                        keep.append(json.dumps(row) + "\n")
            _atomic_write_text(self.jsonl_path, "".join(keep))

    def write(self, row: dict) -> None:
        self._w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
        self._jsonl.write(json.dumps(row) + "\n")

    def flush(self) -> None:
        self._csv.flush()
        self._jsonl.flush()

    def close(self) -> None:
        self._csv.close()
        self._jsonl.close()


def read_log(path) -> list[dict]:
    """Rows of a ``log.jsonl``/``eval.jsonl`` (or the matching ``.csv``) as dicts."""
    p = Path(path)
    if p.suffix == ".csv":
        with open(p, newline="") as f:
            return [{k: (int(v) if k == "step" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
    with open(p) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def _evaluate(model: nets.VAEModel, held: Tensor, cfg: TrainConfig, obs, device: torch.device, amp: str | None) -> dict:
    """Held-out means of the objective terms (eval-mode BatchNorm), plus log p(x|g(h(x))) at the mean."""
    was_training = model.training
    model.eval()
    obj = _Objective(model, cfg, obs, amp)
    gen = torch.Generator(device=device).manual_seed(derive_seed("eval", cfg.seed))
    sums: dict[str, float] = {}
    n = 0
    try:
        enc, dec = model.encoder, model.decoder
        if amp is not None:
            enc, dec = _Autocast(enc, amp), _Autocast(dec, amp)
        for s in range(0, len(held), cfg.batch_size):
            x = held[s : s + cfg.batch_size].to(device, non_blocking=True)
            terms = obj(x, gen)
            terms["log_px_at_mean"] = obs.log_prob(x, dec(enc(x)[0]))
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.double().sum())
            n += x.shape[0]
    finally:
        model.train(was_training)
    return {k: v / n for k, v in sums.items()}


# ---------------------------------------------------------------------------------- training


def _gather(obj):
    """All ranks' ``obj`` as a list on every rank (a one-element list without DDP)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _check_out(out: Path, cfg: TrainConfig, resume: bool, world: int) -> tuple[dict | None, Path | None, list[Path]]:
    """Validate ``out`` against ``cfg``; return the checkpoint to resume from (None: start fresh) and the
    checkpoint files that failed verification. Writes nothing."""
    cfg_path = out / "config.json"
    if not resume:
        if _ckpt_files(out) or cfg_path.exists():
            raise FileExistsError(f"out_dir: {out} already holds a run (config.json / checkpoints); pass resume=True "
                                  "(--resume) to continue it or choose another folder")
        return None, None, []
    if cfg_path.exists():
        try:
            saved = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise ConfigMismatchError(f"{cfg_path}: cannot be read as a TrainConfig ({e})") from e
        diff = {k: v for k, v in config_diff(saved, cfg).items() if k not in EXTENDABLE}
        if diff:
            lines = [f"  {k}: saved {a!r}, given {b!r}" for k, (a, b) in diff.items()]
            raise ConfigMismatchError(
                f"cannot resume {out}: the config differs from the saved {cfg_path.name} in "
                f"{len(diff)} field(s) ({', '.join(diff)}):\n" + "\n".join(lines)
            )
    got = _load_newest(out)
    if got is None:
        return None, None, []
    ck, ck_path, failed = got
    diff = {k: v for k, v in config_diff(TrainConfig.from_dict(ck["config"]), cfg).items() if k not in EXTENDABLE}
    if diff:
        raise ConfigMismatchError(f"cannot resume from {ck_path}: its config differs in {sorted(diff)}: {diff}")
    if int(ck["step"]) > cfg.steps:
        raise ValueError(f"steps: {cfg.steps} is below the checkpoint's step {ck['step']} ({ck_path})")
    if ck["optimizer"] is None and not (int(ck["step"]) == cfg.steps and (out / "result.json").exists()):
        raise ValueError(f"steps: {ck_path} was slimmed at step {ck['step']} (slim_checkpoint dropped the optimiser "
                         f"state), so the run cannot be continued to {cfg.steps} steps; train a new run")
    if int(ck["world_size"]) != world:
        raise ValueError(f"world_size: {ck_path} was written by {ck['world_size']} process(es), this run has {world}; "
                         "resume with the same number of processes (batches and random streams depend on it)")
    return ck, ck_path, failed


def _write_out(out: Path, cfg: TrainConfig, failed: Sequence[Path]) -> None:
    """Rank 0: create ``out``, remove temp files of killed writes, set aside the checkpoints that failed
    verification (renamed ``*.corrupt``, kept as evidence), write config.json."""
    out.mkdir(parents=True, exist_ok=True)
    for p in out.glob(".*.tmp-*"):
        p.unlink(missing_ok=True)
    for p in failed:
        if p.exists():
            p.rename(p.with_name(p.name + ".corrupt"))
    _atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")


def train(
    config: TrainConfig,
    out_dir,
    *,
    resume: bool = False,
    progress: bool = True,
    data_root=None,
    callback: Callable[[int, dict, nets.VAEModel], None] | None = None,
) -> TrainResult:
    """Train ``config`` into ``out_dir`` (see the module docstring); returns the :class:`TrainResult`.

    ``resume=True`` continues from the newest readable checkpoint in ``out_dir`` (a run that is
    already complete returns at once; an empty folder starts fresh). ``data_root``: where the data
    files are, the only place looked (default: the search path of :mod:`gracheck.data`).
    ``progress``: on stderr, a bar on a terminal, else one line per tenth of the run and at least
    every :data:`PROGRESS_SECONDS` (step, loss, steps/s); False for none. ``callback(step, metrics,
    model)`` is called after every step (step counts completed steps).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised here (nccl on CUDA,
    gloo on CPU) unless it already is; only rank 0 writes files.

    Raises :class:`FolderLocked` if another live trainer holds ``out_dir`` (its ``train.lock``),
    :class:`OutDirError` if ``out_dir`` cannot be created or written, and
    :class:`TrainingInterrupted` after SIGTERM/SIGINT (the checkpoint of the last finished step
    written; see the module docstring).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    cfg = config
    out = Path(out_dir)
    rank, world, local_rank = _dist_info()
    own_pg = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
        own_pg = True
        rank, world, local_rank = _dist_info()
    lock = None
    try:
        device = _resolve_device(cfg.device, local_rank)
        if cfg.batch_size % world:
            raise ValueError(f"batch_size: {cfg.batch_size} is not divisible by the {world} DDP processes")
        problem = None
        if rank == 0:
            try:
                lock = _lock_out(out)
            except (FolderLocked, OutDirError) as e:
                problem = e
        if world > 1:  # every process learns whether rank 0 got the folder (else the others would wait forever)
            msg = _gather(None if problem is None else f"{type(problem).__name__}: {problem}")[0]
            if rank != 0 and msg is not None:
                raise RuntimeError(f"rank 0 could not take {out}: {msg}")
        if problem is not None:
            raise problem
        with _runtime(cfg, device):
            res = _train(cfg, out, resume, progress, data_root, callback, rank, world, device)
        if own_pg:
            # Free the DDP wrapper (it may sit in a reference cycle) while its process group is alive,
            # and let every rank finish before any tears the group down: otherwise gloo's threads can
            # abort the process at exit ("terminate called without an active exception").
            gc.collect()
            dist.barrier()
        return res
    finally:
        if lock is not None:
            lock.release()
        if own_pg:
            dist.destroy_process_group()


def _train(cfg, out: Path, resume, progress, data_root, callback, rank, world, device) -> TrainResult:
    ck, ck_path, failed = _check_out(out, cfg, resume, world)
    start = int(ck["step"]) if ck is not None else 0
    finished = None
    if ck is not None and start == cfg.steps and (out / "result.json").exists():
        saved = json.loads((out / "result.json").read_text())
        finished = saved if saved.get("step") == start else None
    if finished is None:  # the data before anything is written: a data folder lacking a file leaves OUT as it was
        train_x, held, data_desc = _load_data(cfg, data_root)
    if world > 1:
        dist.barrier()  # every process checked before rank 0 writes
    if rank == 0:
        _write_out(out, cfg, failed)
    if world > 1:
        dist.barrier()
    if finished is not None:
        return TrainResult(**{**finished, "config": cfg, "out_dir": str(out), "resumed_from": start})

    amp = device.type if (cfg.amp and device.type == "cuda") else None
    obs = _make_obs(cfg)
    model = _build(cfg).to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator(device=device).manual_seed(derive_seed("noise", cfg.seed, rank))
    seconds0 = 0.0
    last_train: dict = {}
    last_eval: dict = {}
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["rng"]["noise"][rank])
        seconds0 = float(ck.get("seconds", 0.0))
        last_train, last_eval = dict(ck.get("train_metrics", {})), dict(ck.get("eval_metrics", {}))

    on_device = device.type == "cuda"
    if on_device:
        train_x, held = train_x.to(device), held.to(device)
    stream = _BatchStream(len(train_x), cfg.batch_size, cfg.seed)
    per_rank = cfg.batch_size // world

    loss_mod = _Objective(model, cfg, obs, amp)
    if world > 1:
        loss_mod = nn.parallel.DistributedDataParallel(loss_mod, device_ids=[device.index] if device.type == "cuda" else None)
    terms_names = TERMS[cfg.model]
    train_fields = ["step", *terms_names, "loss", "grad_norm", "lr", "seconds"]
    eval_fields = ["step", *terms_names, "log_px_at_mean", "seconds"]
    logs = None
    if rank == 0:
        # rows past the checkpoint are dropped; with no checkpoint (killed before the first) every row
        # is, the step-0 evaluation included, since it is redone
        keep = start if ck is not None else -1
        logs = (_Log(out, "log", train_fields, keep), _Log(out, "eval", eval_fields, keep))

    def write_ckpt(step: int, seconds: float) -> Path:
        payload_rng = _gather(gen.get_state().cpu())
        if rank != 0:
            return out / f"ckpt-{step:08d}.pt"
        payload = {
            "format": CKPT_FORMAT, "step": step, "config": cfg.to_dict(), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "rng": {"noise": payload_rng}, "world_size": world,
            "seconds": seconds, "train_metrics": last_train, "eval_metrics": last_eval,
            "torch_version": str(torch.__version__), "num_threads": torch.get_num_threads(),
        }
        logs[0].flush()
        logs[1].flush()
        return _save_ckpt(out, step, payload, cfg.keep_checkpoints)

    def do_eval(step: int, seconds: float) -> None:
        nonlocal last_eval
        if rank != 0:
            return
        last_eval = {k: v for k, v in _evaluate(model, held, cfg, obs, device, amp).items()}
        logs[1].write({"step": step, **last_eval, "seconds": seconds})
        logs[1].flush()

    bar = _StepProgress(cfg, start) if progress and rank == 0 else None
    t_session = time.perf_counter()
    last_ckpt = ck_path
    # the underlying terms first, the derived objective last: a NaN report names where it started
    check_order = [*terms_names[1:], terms_names[0]]
    stop = _StopRequest()
    try:
        stop.__enter__()
        if start == 0:
            do_eval(0, 0.0)
        for step in range(start, cfg.steps):
            done = step + 1
            idx = stream.indices(step)[rank * per_rank : (rank + 1) * per_rank]
            x = train_x[idx.to(train_x.device)].to(device, non_blocking=True)
            err: _NonFinite | None = None
            try:
                terms = loss_mod(x, gen)
                means = torch.stack([terms[k].detach().float().mean() for k in terms_names])
                if not bool(torch.isfinite(means).all()):
                    vals = dict(zip(terms_names, means.tolist()))
                    bad = next(k for k in check_order if not math.isfinite(vals[k]))
                    err = _NonFinite(bad, f"batch mean {vals[bad]}" + (
                        "; its terms are finite, their combination overflows" if bad == "objective" else ""))
            except _NonFinite as e:
                err = e
            stop_now = stop.signum is not None or (done < cfg.steps and _deadline.expired())
            if world > 1:  # every rank must stop together, or the others hang in the all-reduce
                flag = torch.tensor([0.0 if err is None else 1.0, 1.0 if stop_now else 0.0], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                any_err, any_stop = flag.tolist()
                stop_now = any_stop > 0
                if any_err > 0 and err is None:
                    err = _NonFinite("a term on another process")
            if err is not None:
                raise TrainingDiverged(done, err.term, err.detail, str(last_ckpt) if last_ckpt else None)
            if world > 1:  # log the global batch's means, not this process's slice
                means = means.clone()
                dist.all_reduce(means, op=dist.ReduceOp.SUM)
                means /= world
            loss = -terms["objective"].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            gnorm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])) if grads else torch.zeros(())
            if not bool(torch.isfinite(gnorm)):
                bad = next(n for n, p in model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all()))
                raise TrainingDiverged(done, f"the gradient of {bad}", "", str(last_ckpt) if last_ckpt else None)
            opt.step()
            seconds = seconds0 + time.perf_counter() - t_session
            vals = means.tolist()
            last_train = {**dict(zip(terms_names, vals)), "loss": -vals[0], "grad_norm": float(gnorm),
                          "lr": opt.param_groups[0]["lr"]}
            if rank == 0:
                logs[0].write({"step": done, **last_train, "seconds": seconds})
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                do_eval(done, seconds)
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps:
                last_ckpt = write_ckpt(done, seconds)
            if bar is not None:
                bar.update(done, last_train, terms_names)
            if callback is not None:
                callback(done, dict(last_train), model)
            if world == 1:
                stop_now = stop.signum is not None or (done < cfg.steps and _deadline.expired())
            if stop_now:  # finish this step, checkpoint it, and stop
                if last_ckpt is None or last_ckpt.name != f"ckpt-{done:08d}.pt":
                    last_ckpt = write_ckpt(done, seconds)
                if stop.signum is None and _deadline.expired():  # the budget's deadline, not a signal
                    raise _deadline.DeadlineReached(f"{cfg.model} {cfg.dataset} run in {out}", done, cfg.steps,
                                                    str(last_ckpt))
                signum = stop.signum if stop.signum is not None else signal.SIGTERM
                raise TrainingInterrupted(int(signum), done, cfg.steps, str(last_ckpt))
    finally:
        stop.__exit__()
        if bar is not None:
            bar.close()
        if logs is not None:
            for lg in logs:
                lg.close()

    if world > 1:
        _check_replicas(model)
    seconds = seconds0 + time.perf_counter() - t_session
    final_ckpt = last_ckpt if last_ckpt is not None else latest_checkpoint(out)
    result = TrainResult(
        config=cfg, out_dir=str(out), step=cfg.steps, train_metrics=last_train, eval_metrics=last_eval,
        checkpoint=str(final_ckpt), seconds=seconds, resumed_from=start if ck is not None else None,
        device=str(device), world_size=world, data=data_desc,
    )
    if rank == 0:
        _atomic_write_text(out / "result.json", json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def _check_replicas(model: nn.Module) -> None:
    """DDP sanity check: every process ends with the same parameters (checksums compared)."""
    s = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    allp = _gather(s)
    for r, t in enumerate(allp[1:], 1):
        if not torch.equal(t, allp[0]):
            raise RuntimeError(f"DDP replicas diverged: rank {r}'s parameters differ from rank 0's")


# ---------------------------------------------------------------------------------- CLI


def _parse_opt_int(s: str) -> int | None:
    return None if s.lower() in ("none", "") else int(s)


def _parse_ints(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(",") if v.strip())


def _arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m gracheck.train",
        description="Train a β-VAE, GRAE, GRAE≈ or plain autoencoder (Kumar & Poole 2020) with checkpoints and logs.",
        epilog="With --resume, options not given are taken from OUT/config.json; options given must match it "
               "(except --steps, which may extend the run). Multi-GPU: torchrun --nproc_per_node N -m gracheck.train ... "
               "On SIGTERM or Ctrl-C the current step is finished and checkpointed; --resume continues from it. "
               "Exit codes: 0 done; 1 internal error; 2 bad options, config or data; 3 training diverged; "
               "4 OUT is in use by another trainer (its pid is printed); 5 OUT cannot be created or written; "
               "130 / 143 stopped by SIGINT / SIGTERM after writing a checkpoint.",
    )
    ap.add_argument("--out", required=True, help="output folder (config, logs, checkpoints)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT's newest checkpoint")
    ap.add_argument("--data-root", default=None, help="data folder, the only place looked (default: $GRACHECK_DATA "
                                                       "alone when set, else ../shared/data then the user cache)")
    ap.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                    help="no progress on stderr (by default a bar on a terminal; elsewhere, e.g. CI logs, pipes or "
                         "nohup, one line per tenth of the run and at least every minute: step, loss, steps/s); "
                         "the summary is still printed")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{f.metadata['help']} (default: {f.default})"
        t = hints[f.name]
        if t is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
            continue
        if f.name == "hidden":
            conv = _parse_ints
        elif t in (int | None, typing.Optional[int]):
            conv = _parse_opt_int
        elif t is int:
            conv = int
        elif t is float:
            conv = float
        else:
            conv = str
        ap.add_argument(flag, type=conv, default=argparse.SUPPRESS, help=help_, metavar=f.name.upper())
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gracheck.train``: parse options into a :class:`TrainConfig` and call :func:`train`."""
    ap = _arg_parser()
    args = vars(ap.parse_args(argv))
    out = Path(args.pop("out"))
    resume = args.pop("resume")
    data_root = args.pop("data_root")
    progress = not args.pop("quiet")
    base: dict = {}
    if resume and (out / "config.json").exists():
        base = json.loads((out / "config.json").read_text())
    try:
        cfg = TrainConfig.from_dict({**base, **args})
        result = train(cfg, out, resume=resume, progress=progress, data_root=data_root)
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # before the loop took the signal over, or a second Ctrl-C during the last step
        print("gracheck.train: interrupted; nothing after the last checkpoint was kept (continue with --resume)",
              file=sys.stderr)
        return 130
    except FolderLocked as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    except OutDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return 5
    except (ValueError, TypeError, FileExistsError, FileNotFoundError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if not isinstance(e, TrainingDiverged) else 3
    if _dist_info()[0] == 0:
        summary = {"step": result.step, "out_dir": result.out_dir, "checkpoint": result.checkpoint,
                   "train": result.train_metrics, "eval": result.eval_metrics, "seconds": round(result.seconds, 3)}
        print(json.dumps(summary, indent=2))
    return 0



# ---------------------------------------------------------------------------------- public names


# What other modules use: benchmarks build models and objectives exactly as the trainer does, and the
# ensemble trainer (gracheck.ensemble) reuses these pieces so that a model trained inside an ensemble
# is the model trained alone (same initialisation, data order, random streams, logs and checkpoint
# files). They are aliases of the private names above.
build_model = _build
make_obs = _make_obs
Objective = _Objective
BatchStream = _BatchStream
load_data = _load_data
evaluate = _evaluate
RunLog = _Log
runtime = _runtime
resolve_device = _resolve_device
atomic_write_bytes = _atomic_write_bytes
atomic_write_text = _atomic_write_text
save_checkpoint = _save_ckpt
__all__ += ["BatchStream", "RunLog", "atomic_write_bytes", "atomic_write_text", "derive_seed", "evaluate",
            "build_model", "load_data", "make_obs", "Objective", "resolve_device", "runtime", "save_checkpoint"]


if __name__ == "__main__":
    sys.exit(main())

