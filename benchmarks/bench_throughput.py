"""Training throughput (images/s) of the trainer's step on the paper's MNIST architecture; prints JSON.

Setting (issue 4): Appendix D MNIST encoder/decoder at width 1.0, d = 12, batch 64, Gaussian
observations (unit variance), β = 0.1, Adam. One step = the trainer's own step: forward through
the objective module of :mod:`gracheck.train` (training-mode BatchNorm), backward, Adam update.
Models: ``beta-vae`` (mean-field, one posterior sample) and ``grae-approx`` (k = 1 Jacobian
column, one forward-mode JVP); ``--models`` can add ``grae`` (full J, d JVPs) and ``ae``.

CPU: float32, ``--threads`` threads (default 2). CUDA (when available, or ``--device cuda``):
bf16 autocast for the networks (objectives in float32), as the trainer runs it. For every
device the FLOPs of one step are counted with ``torch.utils.flop_counter.FlopCounterMode``
(matmul/conv FLOPs of forward, JVP and backward; elementwise ops are not counted) and the
achieved TFLOP/s = FLOPs / median step time is reported.

Timing: median over ``--repeats`` steps after ``--warmup`` steps; the models are timed in
interleaved order so background load affects them alike. Numbers depend on the machine and its
load; they are never asserted in tests.

Usage: ``python benchmarks/bench_throughput.py [--device cpu|cuda|all] [--batch 64] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from gracheck.train import Objective, TrainConfig, build_model, make_obs


def _setup(model: str, device: torch.device, batch: int, d: int, amp: bool, seed: int):
    cfg = TrainConfig(dataset="mnist", model=model, latent_dim=d, beta=0.1, batch_size=batch, seed=seed,
                      device=device.type, amp=amp, eval_size=batch)
    net = build_model(cfg).to(device).train()
    obj = Objective(net, cfg, make_obs(cfg), device.type if (amp and device.type == "cuda") else None)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(seed)
    # real-looking data is irrelevant to speed; a fixed uniform batch keeps the benchmark self-contained
    x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed + 1)).to(device)

    def step():
        terms = obj(x, gen)
        loss = -terms["objective"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bench_device(device: torch.device, models: list[str], args) -> dict:
    amp = device.type == "cuda" and not args.no_amp
    steps = {m: _setup(m, device, args.batch, args.latent_dim, amp, args.seed) for m in models}
    flops = {}
    for m, step in steps.items():
        for _ in range(args.warmup):
            step()
        with FlopCounterMode(display=False) as fc:
            step()
        flops[m] = fc.get_total_flops()
    _sync(device)
    times: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(args.repeats):
        for m, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[m].append(time.perf_counter() - t0)
    out = {}
    for m in models:
        med = statistics.median(times[m])
        out[m] = {
            "images_per_s": args.batch / med,
            "step_s_median": med,
            "step_s_min": min(times[m]),
            "step_s_max": max(times[m]),
            "flop_per_step": flops[m],
            "tflop_per_s": flops[m] / med / 1e12,
        }
    base = "beta-vae" if "beta-vae" in out else models[0]
    for m in models:
        out[m]["step_time_vs_" + base] = out[m]["step_s_median"] / out[base]["step_s_median"]
    return {"device": str(device), "dtype": "bf16 autocast (objectives float32)" if amp else "float32",
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "models": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "all"],
                    help="auto: CPU, plus CUDA when available; all: same as auto")
    ap.add_argument("--models", default="beta-vae,grae-approx")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--latent-dim", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    devices = []
    if args.device in ("auto", "all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device == "cuda" or (args.device in ("auto", "all") and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    result = {
        "benchmark": "trainer step throughput, Appendix D MNIST nets (width 1.0)",
        "batch": args.batch, "latent_dim": args.latent_dim, "repeats": args.repeats, "warmup": args.warmup,
        "seed": args.seed, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cuda_available": torch.cuda.is_available(),
        "results": [_bench_device(dev, models, args) for dev in devices],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
