"""M = 8 smoke-size models as one ensemble vs 8 one-at-a-time runs on this CPU; prints JSON (issue 14).

Suites (the models the smoke experiments train, built by the experiments' own ``train_config``):

* ``fig3-beta-vae``: the 8 models of ``fig3-objectives-agree`` at smoke scale: b ∈ {1, 2} × β ∈
  {0.1, 0.3, 0.6, 1.0}, β-VAE, MLP 784-128-12 (ELU), batch 64, 1 thread (the experiment's setting);
  mean-field and block-diagonal posteriors in one ensemble.
* ``grae-approx``: 8 GRAE≈ models of ``grae-approx-trains-like-beta-vae``'s smoke architecture
  (MLP 784-256-8, batch 64, k = 1 column): β ∈ {0.1, 0.3, 0.5, 1.0} × seeds {0, 1}.

Both suites run with ``--threads`` torch threads (default 1) on both sides.

Each suite is trained for ``--steps`` steps (the experiments' own counts are 800 and 400; fewer here
to keep the benchmark short, which the ratio hardly depends on) both ways, in one process:

* ``whole_run``: :func:`gracheck.ensemble.train_ensemble` (one folder per model, logs every step,
  evaluations at step 0 and at the end, final checkpoints) against :func:`gracheck.train.train` on the
  8 configs one after the other (the same files). Wall time of each side.
* ``step``: one training step of the 8-model ensemble against 8 single-model training steps of the
  trainer's own step (its objective module, Adam, gradient norm), without files.

Timing: ``--repeats`` (≥ 3) rounds after a warm-up round; in each round both sides run back to back,
the side that goes first alternating between rounds, so that drifting background load affects both
alike. Reported: per side the median, min and max; the speed-up = median(one-at-a-time) /
median(ensemble) and the median of the per-round ratios. The machine's load average (1, 5, 15 min) is
recorded before and after, with the date, commit, torch version, threads and CPU capability. The
final weights of the two sides are compared bitwise (the speed-up is for the same result).

Usage: ``python benchmarks/bench_ensemble.py [--steps 200] [--repeats 3] [--suites fig3-beta-vae,grae-approx]
[--out results/bench_ensemble-cpu.json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from gracheck import train as T
from gracheck.ensemble import EnsembleRun, train_ensemble

REPO = Path(__file__).resolve().parents[1]


def _suite(name: str, steps: int, threads: int):
    from gracheck.experiments import fig3_objectives as f3
    from gracheck.experiments import grae_approx_training as ga

    if name == "fig3-beta-vae":
        smoke = f3.CONFIGS["smoke"]
        cfgs = [f3.model_config(smoke, beta=b, block=blk, seed=0, device="cpu") for blk in smoke.blocks for b in smoke.betas]
    elif name == "grae-approx":
        smoke = ga.CONFIGS["smoke"]
        cfgs = [ga.train_config(smoke, model="grae-approx", beta=b, seed=s, device="cpu")
                for s in (0, 1) for b in (0.1, 0.3, 0.5, 1.0)]
    else:
        raise ValueError(f"suites: unknown suite {name!r}; known: fig3-beta-vae, grae-approx")
    # one thread count for both sides; fewer steps; no intermediate checkpoints (evaluations at 0 and the end stay)
    return [dataclasses.replace(c, steps=steps, eval_every=0, checkpoint_every=0, num_threads=threads) for c in cfgs]


def _whole_runs(cfgs, root: Path, ensemble_first: bool = True) -> tuple[float, float, bool]:
    """(ensemble seconds, one-at-a-time seconds, final weights bitwise equal), the side given first run first."""

    def ensemble():
        t0 = time.perf_counter()
        res = train_ensemble(cfgs, root / "ens", progress=False)
        return time.perf_counter() - t0, res

    def one_at_a_time():
        t0 = time.perf_counter()
        for i, c in enumerate(cfgs):
            T.train(c, root / f"single{i}", progress=False)
        return time.perf_counter() - t0

    if ensemble_first:
        t_ens, res = ensemble()
        t_one = one_at_a_time()
    else:
        t_one = one_at_a_time()
        t_ens, res = ensemble()
    equal = True
    for i, c in enumerate(cfgs):
        a = torch.load(root / f"single{i}" / f"ckpt-{c.steps:08d}.pt", weights_only=True)["model"]
        b = torch.load(Path(res.model_dirs[i]) / f"ckpt-{c.steps:08d}.pt", weights_only=True)["model"]
        equal &= all(torch.equal(a[k], b[k]) for k in a)
    return t_ens, t_one, equal


def _single_steppers(cfgs):
    """The trainer's own step for each config (objective module, Adam, gradient norm), without files."""
    out = []
    for cfg in cfgs:
        net = T.build_model(cfg).train()
        obj = T.Objective(net, cfg, T.make_obs(cfg), None)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        gen = torch.Generator().manual_seed(T.derive_seed("noise", cfg.seed, 0))
        train_x, _, _ = T.load_data(cfg, None)
        stream = T.BatchStream(len(train_x), cfg.batch_size, cfg.seed)
        names = T.TERMS[cfg.model]

        def step(t, obj=obj, opt=opt, gen=gen, net=net, train_x=train_x, stream=stream, names=names):
            terms = obj(train_x[stream.indices(t)], gen)
            means = torch.stack([terms[k].detach().float().mean() for k in names])
            bool(torch.isfinite(means).all())
            opt.zero_grad(set_to_none=True)
            (-terms["objective"].mean()).backward()
            gn = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in net.parameters()]))
            bool(torch.isfinite(gn))
            opt.step()
            means.tolist()

        out.append(step)
    return out


def _stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "all": xs}


def _bench_suite(name: str, args) -> dict:
    cfgs = _suite(name, args.steps, args.threads)
    out: dict = {"suite": name, "models": len(cfgs), "steps": args.steps, "threads": cfgs[0].num_threads,
                 "configs": [c.to_dict() for c in cfgs]}
    with T.runtime(cfgs[0], torch.device("cpu")):
        # --- whole runs
        ens_t, one_t, ratios, equal = [], [], [], True
        tmp = Path(tempfile.mkdtemp(prefix="bench-ensemble-"))
        try:
            warm = [dataclasses.replace(c, steps=5) for c in cfgs]
            _whole_runs(warm, tmp / "warm")  # data load, GEMM probes, first-call costs
            for r in range(args.repeats):
                root = tmp / f"r{r}"
                te, to, eq = _whole_runs(cfgs, root, ensemble_first=r % 2 == 0)
                ens_t.append(te)
                one_t.append(to)
                ratios.append(to / te)
                equal &= eq
                shutil.rmtree(root, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out["whole_run"] = {
            "ensemble_s": _stats(ens_t), "one_at_a_time_s": _stats(one_t),
            "speedup": statistics.median(one_t) / statistics.median(ens_t), "speedup_per_round_median": statistics.median(ratios),
            "speedup_per_round": ratios, "final_weights_bitwise_equal": bool(equal),
        }
        # --- steps only
        run = EnsembleRun(cfgs)
        singles = _single_steppers(cfgs)
        for t in range(2):  # warm-up
            run.step()
            for s in singles:
                s(t)
        te, to = [], []
        n = args.step_repeats
        for r in range(n):
            first_ens = r % 2 == 0
            for side in ((0, 1) if first_ens else (1, 0)):
                t0 = time.perf_counter()
                if side == 0:
                    run.step()
                    te.append(time.perf_counter() - t0)
                else:
                    for s in singles:
                        s(2 + r)
                    to.append(time.perf_counter() - t0)
        out["step"] = {"ensemble_step_s": _stats(te), "one_at_a_time_steps_s": _stats(to),
                       "speedup": statistics.median(to) / statistics.median(te), "repeats": n}
    return out


def _commit() -> dict:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                                    text=True, timeout=10).stdout.strip())
        return {"commit": sha or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds of whole runs (≥ 3)")
    ap.add_argument("--step-repeats", type=int, default=15, help="timed rounds of single steps")
    ap.add_argument("--suites", default="fig3-beta-vae,grae-approx")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both sides (default 1, fig3's smoke setting: on a shared 2-core machine "
                         "two OpenMP threads wait for each other and the timings measure the load)")
    ap.add_argument("--out", default=None, help="also write the JSON here (e.g. results/bench_ensemble-cpu.json)")
    args = ap.parse_args()
    if args.repeats < 3:
        raise SystemExit("--repeats: at least 3 (the median of fewer says little on a shared machine)")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    suites = [_bench_suite(s.strip(), args) for s in args.suites.split(",") if s.strip()]
    result = {
        "benchmark": "M = 8 smoke-size models: one ensemble (gracheck.ensemble) vs 8 one-at-a-time runs (gracheck.train)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **_commit(),
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpus": os.cpu_count(),
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "seconds": time.perf_counter() - t0, "suites": suites,
        "note": "ratios are measured within one process, the two sides interleaved; absolute times depend on the load",
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
