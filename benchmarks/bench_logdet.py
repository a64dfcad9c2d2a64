"""Cost of the GRAE log-determinant without the Gram matrix (issue 17, item 9); prints JSON.

``grae_regularizer`` factors A = I + JᵀWJ/β by a QR decomposition of [W^{1/2}J/√β; I]
instead of a Cholesky factorisation of the Gram form (which squares J's condition number
and fails or loses the gradient in float32). This measures, in one process with the two
sides interleaved (medians over repeats):

* ``regularizer``: value + gradient of the regulariser alone, the Gram/Cholesky form
  (the previous code, written out here) vs the library's QR form, at the MNIST shape
  (B = 64, D = 784, d = 12) and a CelebA-like one (B = 16, D = 12288, d = 32);
* ``train_step``: one whole GRAE (Eq. 13) training step of the trainer (the objective
  module of :mod:`gracheck.train`, training-mode BatchNorm, backward, Adam) on the
  Appendix D MNIST model (``--width``) and on a 784-256-12 MLP, with
  ``gracheck.objectives.grae_regularizer`` swapped between the two forms; the ratio is
  QR / Gram. The smaller the network, the larger the regulariser's share of the step.

On a GPU (``--device cuda``) batched QR of tall matrices runs as one cuSOLVER call per
matrix, so the ratio there may differ from the CPU's: measure it before training full GRAE
at paper scale on a GPU.

Usage: ``python benchmarks/bench_logdet.py [--width 1.0] [--repeats 5] [--threads 2] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

import gracheck.objectives as objectives
from gracheck.base.files import git_commit
from gracheck.train import Objective, TrainConfig, build_model, make_obs

_library = objectives.grae_regularizer


def _gram_regularizer(J, beta, hess_diag=None):
    """The previous implementation: Cholesky of I + JᵀWJ/β formed explicitly (for timing only)."""
    W = None if hess_diag is None else -hess_diag
    M = J.mT @ J if W is None else J.mT @ (J * W.unsqueeze(-1))
    A = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device) + M / beta
    L, _ = torch.linalg.cholesky_ex(A)
    return beta * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)


def _interleaved(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in fns.values():  # warm-up
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=1.0, help="channel multiplier of the MNIST nets (1.0 = paper)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    beta = 0.1

    reg = {}
    for name, (B, D, d) in {"mnist": (64, 784, 12), "celeba_like": (16, 12288, 32)}.items():
        J0 = torch.randn(B, D, d, generator=torch.Generator().manual_seed(0)).to(dev)
        h = (-torch.rand(B, D, generator=torch.Generator().manual_seed(1)) * 0.25 - 1e-3).to(dev)

        def run(fn, J0=J0, h=h):
            def go():
                J = J0.clone().requires_grad_(True)
                fn(J, beta, h).sum().backward()

            return go

        med = _interleaved({"gram": run(_gram_regularizer), "qr": run(_library)}, max(args.repeats, 7), dev)
        reg[name] = {"shape": [B, D, d], "seconds": med, "ratio_qr_to_gram": med["qr"] / med["gram"]}

    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(2)).to(dev)
    steps = {}
    for name, kw, reps in (("conv", dict(width=args.width), args.repeats), ("mlp", dict(arch="mlp", hidden=(256,)), 4 * args.repeats)):
        cfg = TrainConfig(model="grae", latent_dim=12, batch_size=64, beta=beta, **kw)
        net = build_model(cfg).to(dev)
        obj = Objective(net, cfg, make_obs(cfg), None)
        opt = torch.optim.Adam(net.parameters(), lr=1e-5)

        def step(fn, obj=obj, opt=opt):
            def go():
                objectives.grae_regularizer = fn
                try:
                    opt.zero_grad(set_to_none=True)
                    (-obj(x, None)["objective"].mean()).backward()
                    opt.step()
                finally:
                    objectives.grae_regularizer = _library

            return go

        med = _interleaved({"gram": step(_gram_regularizer), "qr": step(_library)}, reps, dev)
        steps[name] = {"seconds": med, "ratio_qr_to_gram": med["qr"] / med["gram"], "repeats": reps}
    out = {
        "benchmark": "bench_logdet",
        "setting": {"dtype": "float32", "device": str(dev), "threads": args.threads, "beta": beta, "torch": torch.__version__,
                    "train_step": {"model": "grae (Eq. 13)", "conv": f"MNIST Appendix D, width {args.width}",
                                   "mlp": "784-256-12 ELU", "batch": 64, "latent_dim": 12, "batchnorm": "train"}},
        "provenance": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "git_commit": git_commit(), "command": " ".join(["python", *sys.argv]),
                       "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "regularizer": reg,
        "train_step": steps,
        "repeats": args.repeats,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
