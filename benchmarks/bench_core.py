"""Timing of the Jacobian engine and of one optimisation step per objective; prints JSON.

Setting (issue 2): the paper's MNIST conv decoder (Appendix D) with d = 12,
batch 64, eval-mode BatchNorm, float32, 2 threads. Reported:

* ``jacobian``: the full J [B, 784, 12] by forward mode (both engine routes) vs a
  reverse-mode reference (vmap over the 784 output rows of a VJP), with the max
  difference between them;
* ``step``: one optimisation step (forward, backward, Adam) on the decoder and the
  latent means, for the plain reconstruction loss, GRAE≈ (k = 1) and full GRAE, each
  by the engine's default route ("auto", which takes "chain" for this decoder) and by
  the generic route it would otherwise use ("forward-ad" for k = 1, "vmap" for full J),
  and the ratios to the plain step;
* ``model_step``: the same three objectives as a training step of the whole Appendix D
  MNIST model (encoder → mean → decoder), which is what :mod:`gracheck.train` pays per step.

Timings are medians over interleaved repeats, so background load affects all steps alike.
Floor: full GRAE needs 1 + d passes through the decoder's convolutions forward and again
backward (d tangents and the primal), so with the convolutions running at the plain step's
rate its decoder step costs about (1 + d)× the plain step's convolution time.

Usage: ``python benchmarks/bench_core.py [--batch 64] [--repeats 7] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time

import torch

import gracheck as gc
from gracheck.nets import MNISTDecoder, MNISTEncoder
from gracheck.base.files import git_commit


def _median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--latent-dim", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-reverse", action="store_true", help="skip the slow reverse-mode reference")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, d = args.batch, args.latent_dim
    dec = MNISTDecoder(d).eval()
    x = torch.rand(B, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    mean = torch.randn(B, d, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    obs = gc.GaussianObs()
    gen = torch.Generator().manual_seed(3)
    opt = torch.optim.Adam([*dec.parameters(), mean], lr=1e-5)
    beta = 0.1

    def step(loss_fn):
        def run():
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()

        return run

    # losses of latent means h, by one engine route m
    plain = lambda h: -obs.log_prob(x, dec(h)).mean()
    approx = lambda m: lambda h: -gc.grae_approx_objective(x, dec, h, beta, obs, k=1, generator=gen, method=m).mean()
    full = lambda m: lambda h: -gc.grae_objective(x, dec, h, beta, obs, method=m).mean()
    steps = {
        "plain": step(lambda: plain(mean)),
        "grae_approx_k1": step(lambda: approx("auto")(mean)),
        "grae_approx_k1_forward_ad": step(lambda: approx("forward-ad")(mean)),
        "grae_full": step(lambda: full("auto")(mean)),
        "grae_full_vmap": step(lambda: full("vmap")(mean)),
    }
    enc = MNISTEncoder(d).eval()
    model_opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-5)

    def model_step(loss_fn):
        def run():
            model_opt.zero_grad(set_to_none=True)
            loss_fn(enc(x)[0]).backward()
            model_opt.step()

        return run

    model_steps = {"plain": model_step(plain), "grae_approx_k1": model_step(approx("auto")),
                   "grae_full": model_step(full("auto"))}
    everything = {**steps, **{f"model_{k}": fn for k, fn in model_steps.items()}}
    for fn in everything.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in everything}
    for _ in range(args.repeats):  # interleaved
        for k, fn in everything.items():
            times[k].append(_median_time(fn, 1))
    med = {k: statistics.median(v) for k, v in times.items()}
    dec_med = {k: med[k] for k in steps}
    model_med = {k: med[f"model_{k}"] for k in model_steps}

    z = mean.detach()
    with torch.no_grad():
        jac = {m: _median_time(lambda m=m: gc.decoder_jacobian(dec, z, method=m), 3) for m in ("chain", "forward-ad", "vmap")}
    J = gc.decoder_jacobian(dec, z).detach()
    out = {
        "benchmark": "bench_core",
        "setting": {"decoder": "MNIST Appendix D", "latent_dim": d, "batch": B, "dtype": "float32",
                    "batchnorm": "eval", "threads": args.threads, "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine()},
        "provenance": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "git_commit": git_commit(), "command": " ".join(["python", *sys.argv])},
        "step_seconds": dec_med,
        "step_ratio_to_plain": {k: v / dec_med["plain"] for k, v in dec_med.items()},
        "targets": {"grae_approx_k1": 2.5, "grae_full": 12.0},
        "model_step_seconds": model_med,
        "model_step_ratio_to_plain": {k: v / model_med["plain"] for k, v in model_med.items()},
        "repeats": args.repeats,
        "jacobian_seconds_forward": jac,
    }
    if not args.skip_reverse:
        def reverse():
            D = 784
            eye = torch.eye(D).unsqueeze(1).expand(D, B, D)
            zz = z.clone().requires_grad_(True)
            g = dec(zz).reshape(B, D)
            (rows,) = torch.autograd.grad(g, zz, grad_outputs=eye, is_grads_batched=True)  # D backward passes
            return rows.permute(1, 0, 2)  # [B, D, d]

        t0 = time.perf_counter()
        Jr = reverse()
        out["jacobian_seconds_reverse"] = time.perf_counter() - t0
        out["jacobian_max_abs_diff_forward_vs_reverse"] = float((Jr - J).abs().max())
        out["jacobian_speedup_forward_vs_reverse"] = out["jacobian_seconds_reverse"] / min(jac.values())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
