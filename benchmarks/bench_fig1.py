"""Trials per second of the Fig. 1 trainer: all trials batched vs a Python loop over trials (CPU).

Prints JSON. Small setting: ν = identity (moment route) and ν = tanh (per-point Gauss–Hermite),
amortised, diagonal and full Σ, 200 points, a fixed number of steps. Never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gracheck.experiments import fig1_rotation as f


def _setup(cfg, nl, trials, n_points):
    plan = [(j, 10**9, d) for d in (True, False) for j in range(trials // 2)]
    seeds = [1000 + i for i in range(len(plan))]
    p = f.init_params(seeds, amortised=True, n_points=n_points, init_std=cfg.init_std, mu_init_std=cfg.mu_init_std)
    o1, o2 = f.random_rotations(seeds)
    from gracheck.data.synthetic import make_synthetic

    x = torch.stack([make_synthetic(nl, n_points, seed=j).x for j, _, _ in plan])
    fx = {"x": x, "O1": o1, "O2": o2, "diagonal": torch.tensor([d for _, _, d in plan]),
          "xm": x.mean(1), "xx": torch.einsum("tni,tnj->tij", x, x) / n_points}
    return p, fx, torch.full((len(plan),), 10.0**9, dtype=torch.float64)


def bench(nl: str, trials: int, steps: int, n_points: int) -> dict:
    cfg = f.CONFIGS["smoke"]
    p, fx, n = _setup(cfg, nl, trials, n_points)
    gh = None if nl == "identity" else f.gauss_hermite(cfg.gh_train, torch.float64, "cpu")
    t0 = time.perf_counter()
    f.train_batched(p, fx, n, nonlinearity=nl, amortised=True, cfg=cfg, gh=gh, max_steps=steps)
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in range(len(n)):
        f.train_batched({k: v[t:t + 1] for k, v in p.items()}, {k: v[t:t + 1] for k, v in fx.items()}, n[t:t + 1],
                        nonlinearity=nl, amortised=True, cfg=cfg, gh=gh, max_steps=steps)
    looped = time.perf_counter() - t0
    return {"nonlinearity": nl, "trials": len(n), "steps": steps, "n_points": n_points,
            "batched_trials_per_s": len(n) / batched, "looped_trials_per_s": len(n) / looped,
            "speedup": looped / batched, "batched_s": batched, "looped_s": looped}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--n-points", type=int, default=200)
    a = ap.parse_args()
    out = {"device": "cpu", "torch_threads": torch.get_num_threads(),
           "note": "trials/s = trials / wall time for `steps` GD steps each (float64)",
           "results": [bench(nl, a.trials, a.steps, a.n_points) for nl in ("identity", "tanh")]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
