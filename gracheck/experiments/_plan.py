"""Plans and budgets for the experiments: what a scale costs, measured, and running only what fits.

An experiment module describes its work at a config as a list of :class:`Job`\\ s, through one small
function ``plan(config, *, seed=0, device="cpu") -> list[Job]``:

* **training jobs** (:func:`training_jobs`): the models the experiment trains, grouped by what
  :func:`gracheck.ensemble.check_configs` lets share one computation (every TrainConfig field equal
  except ``beta``, ``posterior``, ``block``, ``seed``) and cut into ensembles of at most
  :data:`MAX_ENSEMBLE` models; each job trains one ensemble into the model cache
  through :func:`gracheck.experiments._zoo.train_grid` (the experiments' own trainer of grids: the
  :func:`gracheck.experiments._zoo.model_dir` folders their ``run`` loads);
* **own jobs** (e.g. Fig. 1's batched trials, one job per (ν, amortised?) setting): a ``measure``
  callable (its own short warm-up on the device) and an ``execute`` callable that does the work into
  the cache (:func:`gracheck.experiments._common.cached_piece`), with ``done`` telling whether it is there;
* **one final job** (:func:`final_job`): the experiment's own ``run`` once everything above is
  cached (evaluation, statistics, figures), with a ``measure`` that times the module's evaluation on
  a few inputs (an untrained model of the same architecture: the cost does not depend on the weights).

Estimates (:func:`estimate`) come from short measured warm-ups on the device the plan runs on,
never from training to completion:

* training: one ensemble step is timed after a warm-up step. On CUDA: the real ensemble (every model
  of the job) at the real batch size, 1 warm-up + :data:`CUDA_TIMED_STEPS` timed steps. On CPU the
  ensemble runs convolutions model by model (``conv="per-model"``), so one model is measured and the
  time is multiplied by the number of models; and because one step of the paper's conv nets takes
  seconds to minutes on a CPU (App. D CelebA: 4.4 TFLOP per step at B = 64), the step is first timed
  at batch 2 and then at the largest batch (a power of two, or the real one) whose counted FLOPs stay
  under :data:`CPU_PROBE_FLOPS`; the time at the real batch size comes from the line through those
  two points (from batch 2 alone, proportionally, when no larger batch was affordable: an upper
  bound, since small batches run less efficiently). FLOPs are counted (``torch.utils.flop_counter``) on the warm-up step and scaled to the
  real batch and model count; both scalings are exact for these nets (every counted op is linear in
  the batch and in the models; ``tests/test_plan.py`` checks it);
* evaluation and own jobs: the module's callable, timed on the device.

What the counted FLOPs leave out: elementwise work (activations, BatchNorm, the objectives' logs
and Cholesky factors, Adam's update), data movement and checkpoint I/O; the estimated times include
what one step really does but leave out process start, data loading, checkpoint writes and, for
evaluation, bootstrap statistics and figures unless a job says otherwise.

Budget (:func:`run_planned`, used by ``CLAIM.check`` under :func:`gracheck.base.deadline.deadline`):
the jobs of an experiment run in order; a job already in the cache is skipped; a job starts only
when ``SAFETY × estimate + MARGIN`` fits in the time left (an ensemble already part-trained is
estimated by its remaining steps), else the claim is reported "not run here (budget)" with the
numbers; a training job stopped by the deadline has checkpointed (the trainers honour the deadline)
and a rerun with the same cache continues it; the final job runs the experiment through
:func:`gracheck.experiments._common.run_experiment` (cached as usual). Every budget skip raises
:class:`gracheck.base.evidence.CheckSkipped` whose message starts with :data:`BUDGET_REASON`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gracheck.base import deadline as _deadline
from gracheck.base.evidence import CheckSkipped
from gracheck.base.files import cache_dir, entry_lock
from gracheck.base.text import fmt_seconds

__all__ = [
    "BUDGET_REASON", "CPU_PROBE_FLOPS", "CUDA_TIMED_STEPS", "Estimate", "Job", "MARGIN", "MAX_ENSEMBLE",
    "NOT_COUNTED", "PRIORITY", "SAFETY", "estimate", "final_job", "group_configs", "mnist_blocked",
    "jobs_log_path", "logged_jobs", "measure_probe", "plan_experiment", "run_key", "run_planned", "sum_estimates", "training_jobs",
]

BUDGET_REASON = "not run here (budget)"
# The claims' priority under a budget. fig1 first: the headline claim (Sec. 3), and its trials are
# tiny computations batched by the thousand. fig3 next: 21 MNIST models that eq6 reuses unchanged, so
# eq6 follows at the marginal cost of its evaluation and one MLP. grae-approx (12 models) comes before
# fig2 (45 models in three architectures) because it decides a claim for a quarter of the training.
# fig4 last: 100 CelebA models of 50k steps, and the full aligned CelebA it needs is not shipped here.
PRIORITY = ("fig1-rotation-uniqueness", "fig3-objectives-agree", "eq6-residual-trained",
            "grae-approx-trains-like-beta-vae", "fig2-precision-matches-jtj", "fig4-fid-agree")
MAX_ENSEMBLE = 8  # models per ensemble job: a budget's granule (each job finishes or checkpoints) and memory
# (8 App. D CelebA models: 0.76 G parameters, ~12 GB of weights, gradients and Adam moments in float32)
SAFETY = 1.25  # a job starts only if SAFETY × its estimate + MARGIN fits in the time left
MARGIN = 5.0  # seconds: model export, checkpoint writes, loading
CPU_PROBE_FLOPS = 40e9  # counted FLOPs of the largest training step timed on a CPU (a few seconds on 2 cores)
CUDA_TIMED_STEPS = 3
CPU_LONG_STEP = 1.0  # seconds: a CPU warm-up step at least this long is used as the timing (no second step)
CPU_PROBE_BATCH = 2  # the smallest batch a training-mode BatchNorm accepts
NOT_COUNTED = ("elementwise ops (activations, BatchNorm, logs, Cholesky factors, Adam's update), data movement and "
               "checkpoint I/O")


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A job's measured cost on one device: ``seconds`` (None: not estimated), counted ``flops`` (None: not counted),
    ``method`` (how, in words), ``measured`` (the warm-up's raw numbers) and what the FLOP count leaves out."""

    seconds: float | None
    flops: int | None
    method: str
    measured: dict[str, Any] = dataclasses.field(default_factory=dict)
    not_counted: str = NOT_COUNTED

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Job:
    """One piece of an experiment's work at one config: trained/evaluated as one unit; the budget's granule.

    ``name`` (unique within the claim), ``what`` (one line: which models or trials, which grid),
    ``runs`` (models or trials it trains), ``steps`` (optimiser steps per model or trial; the longest
    schedule for trials), ``configs`` (the TrainConfigs trained as one ensemble; empty for own jobs and
    the final one). ``measure(device) -> Estimate``: its own warm-up (None for training jobs: the
    ensemble warm-up of ``configs``). ``execute(device, progress)``: does the work into the cache (None
    for training jobs: train the ensemble). ``done()``: whether the cache already holds it.
    ``remaining()``: the fraction of its work still to do (1.0 when not started). ``blocked()``: why it
    cannot run here (e.g. missing data), or None. ``shared``: jobs with the same key are one computation
    (another claim trains the same models): counted once in totals. ``final``: the experiment's own run.
    """

    claim_id: str
    name: str
    what: str
    runs: int = 0
    steps: int = 0
    configs: tuple = ()
    measure: Callable[[str], Estimate] | None = None
    execute: Callable[[str, Callable[[str], None] | None], None] | None = None
    done: Callable[[], bool] | None = None
    remaining: Callable[[], float] | None = None
    blocked: Callable[[], str | None] | None = None
    shared: str = ""
    final: bool = False
    kind: str = "train"  # "train" (an ensemble), "trials" (own batched trials), "evaluate" (the final job)

    def is_done(self) -> bool:
        return bool(self.done()) if self.done is not None else False

    def left(self) -> float:
        """Fraction of the work still to do (0 when done)."""
        if self.is_done():
            return 0.0
        return float(self.remaining()) if self.remaining is not None else 1.0

    def why_blocked(self) -> str | None:
        return self.blocked() if self.blocked is not None else None


# ----------------------------------------------------------------------------------------------
# Grouping model configs into ensembles
# ----------------------------------------------------------------------------------------------
def _shared_fields(cfg) -> str:
    """The fields an ensemble's members share (the cost of a step depends on these only)."""
    from gracheck.ensemble import VARYING

    d = {k: v for k, v in cfg.to_dict().items() if k not in VARYING}
    return json.dumps(d, sort_keys=True, default=str)


def group_configs(configs: Sequence, *, max_models: int = MAX_ENSEMBLE) -> list[tuple]:
    """The distinct ``configs`` (TrainConfigs) grouped into ensembles as
    :func:`gracheck.experiments._zoo.grid_groups` groups them (what
    :func:`gracheck.ensemble.check_configs` accepts together, first appearance order, a config listed
    twice once), each group cut into consecutive chunks of at most ``max_models``."""
    from gracheck.ensemble import check_configs
    from gracheck.experiments import _zoo

    cfgs = list(configs)
    out = []
    for idx in _zoo.grid_groups(cfgs):
        cs = [cfgs[i] for i in idx]
        for i in range(0, len(cs), max_models):
            out.append(check_configs(cs[i : i + max_models]))
    return out


def _grid(cfgs: Sequence) -> str:
    """The varying fields of an ensemble, in words (e.g. "β ∈ {0.05, 0.1}, mean-field/block b=2")."""
    betas = sorted({c.beta for c in cfgs})
    posts = sorted({c.posterior if c.posterior != "block-diagonal" else f"block b={c.block}" for c in cfgs})
    seeds = sorted({c.seed for c in cfgs})
    parts = [f"β ∈ {{{', '.join(f'{b:g}' for b in betas)}}}"]
    if cfgs[0].model == "beta-vae":
        parts.append("/".join(posts))
    if len(seeds) > 1:
        parts.append(f"seeds {seeds[0]}–{seeds[-1]}")
    return ", ".join(parts)


def _arch(c) -> str:
    net = f"conv width {c.width:g}" if c.arch == "conv" else f"MLP {list(c.hidden)} {c.activation}"
    return f"{c.dataset} {net} d={c.latent_dim} {c.model}"


def _chunk_key(cfgs: Sequence) -> str:
    from gracheck.experiments import _zoo

    blob = json.dumps(sorted(str(_zoo.model_dir(c).name) for c in cfgs))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _model_done(c) -> bool:
    from gracheck.experiments import _zoo

    return (_zoo.model_dir(c) / "result.json").is_file()


def _ckpt_step(folder: Path) -> int:
    """The step of the newest checkpoint in ``folder`` (0 when none)."""
    from gracheck.train import latest_checkpoint

    ck = latest_checkpoint(folder) if folder.is_dir() else None
    try:
        return int(ck.name[len("ckpt-"):-len(".pt")]) if ck is not None else 0
    except ValueError:
        return 0


def _ensemble_left(cfgs: Sequence) -> float:
    """Fraction of the chunk's model-steps still to train, read from the checkpoints
    :func:`gracheck.experiments._zoo.train_grid` would resume (1.0 when nothing was started): a member
    with its own interrupted run resumes alone from its folder, the others as one ensemble."""
    from gracheck.experiments import _zoo

    todo = [c for c in cfgs if not _model_done(c)]
    if not todo:
        return 0.0
    alone = [c for c in todo if len(todo) == 1 or _ckpt_step(_zoo.model_dir(c)) > 0]
    batch = [c for c in todo if c not in alone]
    left = sum(max(0.0, 1.0 - _ckpt_step(_zoo.model_dir(c)) / c.steps) for c in alone)
    if len(batch) == 1:
        left += 1.0
    elif batch:
        left += len(batch) * max(0.0, 1.0 - _ckpt_step(_zoo.ensemble_dir(batch)) / batch[0].steps)
    return left / len(cfgs)


def mnist_blocked() -> str | None:
    """Why MNIST cannot be read here (the loader's message: every place searched), or None."""
    from gracheck.data.mnist import find_mnist

    try:
        find_mnist("train")
        find_mnist("test")
    except FileNotFoundError as e:
        return f"MNIST not found: {e}"
    return None


def training_jobs(claim_id: str, configs: Sequence, *, blocked: Callable[[], str | None] | None = mnist_blocked,
                  max_models: int = MAX_ENSEMBLE) -> list[Job]:
    """One training job per ensemble of :func:`group_configs` (see the module docstring)."""
    jobs = []
    groups = group_configs(configs, max_models=max_models)
    counts: dict[str, int] = {}
    for cfgs in groups:
        arch = _arch(cfgs[0])
        counts[arch] = counts.get(arch, 0) + 1
    seen: dict[str, int] = {}
    for cfgs in groups:
        arch = _arch(cfgs[0])
        seen[arch] = seen.get(arch, 0) + 1
        part = f" (part {seen[arch]}/{counts[arch]})" if counts[arch] > 1 else ""
        jobs.append(Job(
            claim_id=claim_id, name=f"train {arch}{part}",
            what=f"ensemble of {len(cfgs)} {cfgs[0].model} models, {_grid(cfgs)}; {arch}, batch {cfgs[0].batch_size}",
            runs=len(cfgs), steps=cfgs[0].steps, configs=tuple(cfgs),
            execute=lambda device, progress, cfgs=cfgs: _train_chunk(cfgs, progress),
            done=lambda cfgs=cfgs: all(_model_done(c) for c in cfgs),
            remaining=lambda cfgs=cfgs: _ensemble_left(cfgs),
            blocked=blocked, shared=_chunk_key(cfgs), kind="train",
        ))
    return jobs


def _train_chunk(cfgs: Sequence, progress: Callable[[str], None] | None) -> None:
    """Train the not-yet-cached models of ``cfgs`` through :func:`gracheck.experiments._zoo.train_grid` (one
    ensemble, member locks, slimmed members, a part-trained ensemble resumed): the folders the experiment's own
    ``run`` then loads. A deadline stops the ensemble after a checkpoint (DeadlineReached); the next call resumes."""
    from gracheck.experiments import _zoo

    _zoo.train_grid(cfgs, progress=progress)


def final_job(claim_id: str, *, what: str, measure: Callable[[str], Estimate] | None,
              blocked: Callable[[], str | None] | None = mnist_blocked) -> Job:
    """The experiment's own run once its other jobs are cached: evaluation, statistics, figures."""
    return Job(claim_id=claim_id, name="evaluate", what=what, measure=measure, blocked=blocked, final=True,
               kind="evaluate")


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------
_MEMO: dict[tuple, Estimate] = {}


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _synthetic_images(cfg, n: int, device: str):
    import torch

    from gracheck import nets

    g = torch.Generator().manual_seed(12345)
    shape = nets.IMAGE_SHAPES[cfg.dataset]
    return torch.rand(n, *shape, generator=g), torch.rand(min(n, 8), *shape, generator=g)


def _time_run(cfgs: Sequence, device: str, timed: int) -> tuple[list[float], int]:
    """(step times, FLOPs of the warm-up step) of an ensemble of ``cfgs`` on synthetic images."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gracheck.ensemble import EnsembleRun
    from gracheck.train import runtime

    B = cfgs[0].batch_size
    run = EnsembleRun(cfgs, device=device, data=_synthetic_images(cfgs[0], max(2 * B, 4), device))
    times = []
    with runtime(cfgs[0], run.device):
        t0 = time.perf_counter()
        with FlopCounterMode(display=False) as fc:  # the warm-up step (CUDA/cuDNN set-up, first allocations)
            run.step()
        t_warm = time.perf_counter() - t0
        if not str(device).startswith("cuda") and t_warm >= CPU_LONG_STEP:
            # a CPU step this long is its own measurement: first-call set-up and the counter's per-op
            # overhead are milliseconds, and a second step would double the plan's time
            timed, times = 0, [t_warm]
        for _ in range(timed):
            _sync(device)
            t0 = time.perf_counter()
            run.step()
            _sync(device)
            times.append(time.perf_counter() - t0)
    del run
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    return times, int(fc.get_total_flops())


def measure_training(configs: Sequence, device: str) -> Estimate:
    """Seconds and counted FLOPs of ONE ensemble step of ``configs`` on ``device`` (see the module docstring)."""
    from gracheck.ensemble import check_configs

    cfgs = check_configs(configs)
    M, B = len(cfgs), cfgs[0].batch_size
    dev = str(device)
    heads = tuple(sorted({(c.posterior, c.block or 0) for c in cfgs}))
    if dev.startswith("cuda"):  # the real ensemble; β and seeds do not change the cost
        key = ("train", dev, _shared_fields(cfgs[0]), M, heads)
        if key not in _MEMO:
            times, flops = _time_run(cfgs, dev, CUDA_TIMED_STEPS)
            t = statistics.median(times)
            _MEMO[key] = Estimate(
                t, flops, f"{M} models as one ensemble at batch {B} on {dev}: 1 warm-up + {len(times)} timed steps "
                          "(median)",
                {"seconds_per_step": t, "step_times": times, "batch": B, "models": M, "models_measured": M,
                 "flops_per_model_step": flops // M})
        return _MEMO[key]
    key = ("train", dev, _shared_fields(cfgs[0]))  # the posterior head is < 0.5% of a step (ensemble docstring)
    if key not in _MEMO:  # one model; the ensemble's CPU cost is linear in the models (per-model layout)
        b0 = CPU_PROBE_BATCH
        (t0,), f0 = _time_run([dataclasses.replace(cfgs[0], batch_size=b0)], dev, 1)
        flops1 = f0 * B // b0  # exact: every counted op is linear in the batch
        per_image = f0 / b0
        # the second probe batch: the largest power of two (or B) whose step stays within CPU_PROBE_FLOPS
        b1 = max([b for b in {*(2 ** k for k in range(2, 16) if 2 ** k < B), B}
                  if b > b0 and b * per_image <= CPU_PROBE_FLOPS], default=b0)
        measured = {"batch": B, "probe_batch": b0, "probe_seconds": t0}
        if b1 == b0:
            t = t0 * B / b0
            how = (f"one model at batch {b0} on {dev} (1 warm-up + 1 timed step; a step at batch {B} is "
                   f"{flops1 / 1e9:.0f} GFLOP, too long to time here), scaled ×{B // b0} to batch {B} (an upper "
                   "bound: small batches run less efficiently)")
        else:
            (t1,), _ = _time_run([dataclasses.replace(cfgs[0], batch_size=b1)], dev, 1)
            measured.update(second_batch=b1, second_seconds=t1)
            slope = (t1 - t0) / (b1 - b0)
            if b1 == B:
                t, how = t1, f"one model at batch {B} on {dev} (1 warm-up + 1 timed step)"
            else:
                t = t1 + slope * (B - b1) if slope > 0 else t1 * B / b1
                how = (f"one model at batches {b0} and {b1} on {dev} (1 warm-up + 1 timed step each), the line "
                       f"through them at batch {B}")
        measured.update(seconds_per_model_step=t, flops_per_model_step=flops1)
        _MEMO[key] = Estimate(t, flops1, how, measured)
    e = _MEMO[key]
    return Estimate(e.seconds * M, e.flops * M, f"{e.method}, ×{M} models (the CPU ensemble's per-model layout)",
                    {**e.measured, "models": M, "models_measured": 1, "seconds_per_step": e.seconds * M})


def _counted_call(probe: Callable[[str, int], None], dev: str, k: int) -> tuple[float, int | None]:
    """(seconds, counted FLOPs) of ``probe(dev, k)`` run under the FLOP counter; FLOPs None when the counter
    cannot follow the evaluation (its module hooks reject ``torch.autograd.grad`` inside a backward, as the
    ReLU control's finite-difference route does): the call is then timed again without it."""
    from torch.utils.flop_counter import FlopCounterMode

    t0 = time.perf_counter()
    try:
        with FlopCounterMode(display=False) as fc:
            probe(dev, k)
        _sync(dev)
        return time.perf_counter() - t0, int(fc.get_total_flops())
    except RuntimeError as e:
        if "_will_engine_execute_node" not in str(e):
            raise
    t0 = time.perf_counter()
    probe(dev, k)
    _sync(dev)
    return time.perf_counter() - t0, None


def measure_probe(probe: Callable[[str, int], None], *, units: int, batch: int, device: str, key: tuple,
                  what: str, not_counted: str = NOT_COUNTED) -> Estimate:
    """Time ``probe(device, k)`` (which does k units of an evaluation) and scale to ``units``.

    CUDA: k = ``batch``, one warm-up call (FLOPs counted) and one timed call. CPU: one call of k = 1,
    timed with the FLOP counter on (its overhead is small next to these large ops); when a unit is
    cheap, a second call of up to one batch (at most :data:`CPU_PROBE_FLOPS` counted FLOPs) is timed
    instead, so that per-call overheads weigh as in a real run. FLOPs are None (not counted) when the
    counter cannot follow the evaluation (:func:`_counted_call`).
    """
    dev = str(device)
    mkey = ("probe", dev, *key)
    if mkey not in _MEMO:
        if dev.startswith("cuda"):
            k = max(1, min(batch, units))
            _, flops = _counted_call(probe, dev, k)
            _sync(dev)
            t0 = time.perf_counter()
            probe(dev, k)
            _sync(dev)
            t = time.perf_counter() - t0
            per_unit = None if flops is None else flops // k
            how = f"{what}: {k} units on {dev} (1 warm-up + 1 timed call), scaled to {units}"
        else:
            t, per_unit = _counted_call(probe, dev, 1)
            k = 1
            k2 = max(1, min(batch, units, int(CPU_PROBE_FLOPS // max(per_unit or 0, 1)))) if per_unit else 1
            if k2 > 1:  # cheap units: time a call of up to one real batch (per-call overheads then weigh as in a run)
                t0 = time.perf_counter()
                probe(dev, k2)
                t, k = time.perf_counter() - t0, k2
                how = f"{what}: {k} units on {dev} (after 1 unit with the FLOPs counted), scaled to {units}"
            else:
                how = f"{what}: 1 unit on {dev} (1 call{', FLOPs counted on it' if per_unit else ''}), scaled to {units}"
        if per_unit is None:
            how += "; FLOPs not counted (the counter cannot follow this evaluation's nested autograd)"
        _MEMO[mkey] = Estimate(t / k, per_unit, how, {"units_measured": k, "seconds": t}, not_counted)
    e = _MEMO[mkey]
    return dataclasses.replace(e, seconds=e.seconds * units, flops=None if e.flops is None else e.flops * units,
                               measured={**e.measured, "units": units, "seconds_per_unit": e.seconds})


def sum_estimates(parts: Sequence[Estimate], method: str = "") -> Estimate:
    """The cost of doing every part: seconds and FLOPs added (None when any part has None)."""
    secs = [e.seconds for e in parts]
    flops = [e.flops for e in parts]
    return Estimate(None if any(v is None for v in secs) else sum(secs),
                    None if any(v is None for v in flops) else sum(flops),
                    method or "; ".join(e.method for e in parts), {"parts": [e.to_dict() for e in parts]},
                    parts[0].not_counted if parts else NOT_COUNTED)


def estimate(job: Job, device: str) -> Estimate:
    """The job's cost on ``device``: its own ``measure``, else the ensemble warm-up × its steps."""
    if job.measure is not None:
        return job.measure(device)
    if not job.configs:
        return Estimate(None, None, "not estimated (no measurement for this job)")
    step = measure_training(job.configs, device)
    return dataclasses.replace(step, seconds=step.seconds * job.steps, flops=step.flops * job.steps,
                               method=f"{job.steps} steps × one ensemble step measured as {step.method}")


def plan_experiment(module, config, *, seed: int = 0, device: str = "cpu") -> list[Job]:
    """The jobs of ``module`` (an experiment module) at ``config``; ValueError if the module has no ``plan``."""
    fn = getattr(module, "plan", None)
    if fn is None:
        raise ValueError(f"module: {module.__name__} provides no plan(config) function")
    jobs = list(fn(config, seed=seed, device=device))
    if not jobs or not jobs[-1].final or any(j.final for j in jobs[:-1]):
        raise ValueError(f"{module.__name__}.plan: expected jobs ending in exactly one final job")
    return jobs


# ----------------------------------------------------------------------------------------------
# Running under a budget
# ----------------------------------------------------------------------------------------------


def run_planned(module, config, *, seed: int, device: str, out_dir, progress: Callable[[str], None] | None):
    """Run the experiment of ``module`` at ``config`` job by job within the active deadline (module docstring).

    Returns the ExperimentResult when every job fitted; raises CheckSkipped (budget, or a job that cannot
    run here) otherwise; a trainer stopped by the deadline raises DeadlineReached (checkpointed).
    """
    from gracheck.experiments._common import result_cached, run_experiment

    say = progress or (lambda s: None)
    if result_cached(module, config, seed=seed, device=device):
        say("result cached: loading it")
        return run_experiment(module, config=config, seed=seed, device=device, out_dir=out_dir, progress=progress)
    jobs = plan_experiment(module, config, seed=seed, device=device)
    n = len(jobs)
    for i, job in enumerate(jobs, 1):
        why = job.why_blocked()
        if why is not None:
            raise CheckSkipped(f"not run here: job {job.name!r} cannot run: {why}")
        if job.is_done():
            say(f"job {i}/{n} {job.name}: done (cached)")
            continue
        est = estimate(job, device)
        left = _deadline.remaining()
        frac = job.left()
        need = None if est.seconds is None else SAFETY * est.seconds * frac + MARGIN
        if left is not None and (need is None or need > left):
            done_n = sum(j.is_done() for j in jobs)
            raise CheckSkipped(
                f"{BUDGET_REASON}: job {i}/{n} {job.name!r} needs ~{fmt_seconds(need, '?')} (plan estimate "
                f"{fmt_seconds(None if est.seconds is None else est.seconds * frac, '?')} × {SAFETY:g} + {MARGIN:g} s; "
                f"{frac:.0%} of it left) and {fmt_seconds(max(left, 0.0), '?')} are left; {done_n} of {n} jobs done and cached; "
                "a rerun with the same cache continues")
        say(f"job {i}/{n} {job.name}: estimated {fmt_seconds(None if est.seconds is None else est.seconds * frac, '?')}, "
            f"{fmt_seconds(left, '?')} left")
        t0 = time.perf_counter()
        try:
            if job.final:
                res = run_experiment(module, config=config, seed=seed, device=device, out_dir=out_dir,
                                     progress=progress)
            else:
                job.execute(device, progress)
        except _deadline.DeadlineReached:
            _log_job(module, config, seed, device, job, est, time.perf_counter() - t0, frac - job.left(), stopped=True)
            raise
        _log_job(module, config, seed, device, job, est, time.perf_counter() - t0, frac, stopped=False)
        if job.final:
            return res
    raise AssertionError("unreachable: plan_experiment guarantees a final job")


def run_key(module, config, seed: int, device: str) -> str:
    """The key of (claim, config, seed, device type) under which :func:`run_planned` logs its jobs."""
    from gracheck.experiments._common import config_dict

    blob = json.dumps([module.CLAIM.id, config_dict(config), seed, str(device).split(":")[0]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def jobs_log_path() -> Path:
    """The JSON-lines log of the jobs budgeted runs executed (in the cache: it accumulates across processes)."""
    return cache_dir() / "budget" / "jobs.jsonl"


def _log_job(module, config, seed, device, job: Job, est: Estimate, seconds: float, fraction: float, *,
             stopped: bool) -> None:
    """Append what one job did: wall time, the share of its work done and its counted FLOPs (estimate × share)."""
    from gracheck.experiments._common import now_utc

    fraction = max(0.0, min(1.0, float(fraction)))
    row = {"run_key": run_key(module, config, seed, device), "claim_id": job.claim_id, "job": job.name,
           "kind": job.kind, "device": str(device), "seconds": seconds, "fraction": fraction, "stopped": stopped,
           "flops_counted": None if est.flops is None else int(est.flops * fraction), "estimate_seconds": est.seconds,
           "created": now_utc()}
    path = jobs_log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with entry_lock(path):
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def logged_jobs(module, config, seed: int, device: str) -> list[dict[str, Any]]:
    """The rows of :func:`jobs_log_path` for this (claim, config, seed, device type), oldest first."""
    key = run_key(module, config, seed, device)
    try:
        lines = jobs_log_path().read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a torn last line (killed mid-write) is skipped
        if r.get("run_key") == key:
            rows.append(r)
    return rows
