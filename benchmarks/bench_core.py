"""Timing of the Jacobian engine and of one optimisation step per objective; prints JSON.

Setting (issues 2 and 18): the Appendix D MNIST decoder with d = 12, eval-mode BatchNorm, float32,
2 threads, at batch sizes 8 and 64, in two spellings:

* ``user``: written the way users write it (benchmarks/user_decoders.py: a ``forward`` with
  ``F.elu``, ``.view``, an ``nn.Sequential`` of ConvTranspose/BatchNorm/ELU and a crop
  ``[..., :28, :28]``); the engine reaches its chain route by tracing the forward (torch.fx);
  before issue 18 it fell back to the generic routes;
* ``nets``: :class:`gracheck.nets.MNISTDecoder`, which declares its layers (``jacobian_chain()``).

Reported per decoder and batch size:

* ``step``: one optimisation step (forward, backward, Adam) on the decoder and the latent means,
  for the plain reconstruction loss, GRAE≈ (k = 1) and full GRAE, by the engine's default route
  ("auto": the chain) and by the generic route "auto" used to fall back to ("forward-ad" for
  k = 1, "vmap" for full J), and the ratios to the plain step; targets (issue 18): full GRAE ≤ 12.5×,
  GRAE≈ ≤ 2.3× a plain step;
* ``model_step`` (unless ``--quick``): the same objectives as a training step of the whole
  Appendix D MNIST model (encoder → mean → decoder), which is what :mod:`gracheck.train` pays;
* ``jacobian``: the full J [B, 784, 12] by the three forward routes, and (``--reverse``) a
  reverse-mode reference (784 VJPs) with the largest difference.

Timings are medians over interleaved repeats (all steps of one decoder and batch size take turns,
so background load affects them alike); the load average is recorded at the start and the end.
Floor: full GRAE needs 1 + d passes through the decoder's convolutions forward and again backward
(d tangents and the primal), so with the convolutions at the plain step's rate its decoder step
costs about (1 + d)× the plain step's convolution time.

Usage: ``python benchmarks/bench_core.py [--batch 8 64] [--decoders user nets] [--repeats 7]
[--threads 2] [--quick] [--steps grae_approx_k1 grae_full] [--reverse] [--out results/bench_core-cpu.json]``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import gracheck as gc  # noqa: E402
from _common import emit, interleaved, pin_threads, provenance, ratios  # noqa: E402
from gracheck.nets import MNISTDecoder, MNISTEncoder  # noqa: E402
from user_decoders import UserMNISTDecoder  # noqa: E402

BETA = 0.1


def bench(kind: str, B: int, args) -> dict:
    d = args.latent_dim
    torch.manual_seed(0)
    dec = (UserMNISTDecoder(d) if kind == "user" else MNISTDecoder(d)).eval()
    x = torch.rand(B, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    mean = torch.randn(B, d, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    obs = gc.GaussianObs()
    gen = torch.Generator().manual_seed(3)
    opt = torch.optim.Adam([*dec.parameters(), mean], lr=1e-5)

    def step(loss_fn):
        def run():
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()

        return run

    # losses of latent means h, by one engine route m
    plain = lambda h: -obs.log_prob(x, dec(h)).mean()  # noqa: E731
    approx = lambda m: lambda h: -gc.grae_approx_objective(x, dec, h, BETA, obs, k=1, generator=gen, method=m).mean()  # noqa: E731
    full = lambda m: lambda h: -gc.grae_objective(x, dec, h, BETA, obs, method=m).mean()  # noqa: E731
    steps = {
        "plain": step(lambda: plain(mean)),
        "grae_approx_k1": step(lambda: approx("auto")(mean)),
        "grae_approx_k1_forward_ad": step(lambda: approx("forward-ad")(mean)),
        "grae_full": step(lambda: full("auto")(mean)),
        "grae_full_vmap": step(lambda: full("vmap")(mean)),
    }
    if args.steps:
        steps = {k: v for k, v in steps.items() if k in args.steps or k == "plain"}
    fns = dict(steps)
    if not args.quick:
        enc = MNISTEncoder(d).eval()
        model_opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-5)

        def model_step(loss_fn):
            def run():
                model_opt.zero_grad(set_to_none=True)
                loss_fn(enc(x)[0]).backward()
                model_opt.step()

            return run

        fns |= {"model_plain": model_step(plain), "model_grae_approx_k1": model_step(approx("auto")),
                "model_grae_full": model_step(full("auto"))}
    stats = interleaved(fns, args.repeats, warmup=2)
    route = gc.jacobian_route(dec, mean.detach())
    out = {
        "decoder": {"user": "Appendix D MNIST decoder as users write it (traced)",
                    "nets": "gracheck.nets.MNISTDecoder (jacobian_chain)"}[kind],
        "batch": B,
        "route_auto": {"method": route.method, "plan": route.plan},
        "step_seconds": {k: stats[k] for k in steps},
        "step_ratio_to_plain": ratios({k: stats[k] for k in steps}, "plain"),
        "targets_ratio_to_plain": {"grae_approx_k1": 2.3, "grae_full": 12.5},
    }
    if not args.quick:
        model = {k[len("model_"):]: stats[k] for k in fns if k.startswith("model_")}
        out["model_step_seconds"] = model
        out["model_step_ratio_to_plain"] = ratios(model, "plain")
    if args.steps:
        return out
    z = mean.detach()
    with torch.no_grad():
        jac = interleaved({m: (lambda m=m: gc.decoder_jacobian(dec, z, method=m)) for m in ("chain", "forward-ad", "vmap")},
                          1 if args.quick else 3)
    out["jacobian_seconds_forward"] = {m: v["median_s"] for m, v in jac.items()}
    if args.reverse:
        import time

        J = gc.decoder_jacobian(dec, z).detach()
        D = 784
        t0 = time.perf_counter()
        zz = z.clone().requires_grad_(True)
        g = dec(zz).reshape(B, D)
        eye = torch.eye(D).unsqueeze(1).expand(D, B, D)
        (rows,) = torch.autograd.grad(g, zz, grad_outputs=eye, is_grads_batched=True)  # D backward passes
        out["jacobian_seconds_reverse"] = time.perf_counter() - t0
        out["jacobian_max_abs_diff_forward_vs_reverse"] = float((rows.permute(1, 0, 2) - J).abs().max())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--decoders", nargs="+", default=None, choices=["user", "nets"], help="default: both (--quick: user)")
    ap.add_argument("--latent-dim", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="3 repeats, the user decoder unless --decoders, no whole-model steps")
    ap.add_argument("--steps", nargs="+", default=None,
                    choices=["grae_approx_k1", "grae_approx_k1_forward_ad", "grae_full", "grae_full_vmap"],
                    help="time only these steps (and the plain one), no Jacobian table (a short run on a busy machine)")
    ap.add_argument("--reverse", action="store_true", help="also time the slow reverse-mode Jacobian reference")
    ap.add_argument("--out", default=None, help="also write the JSON here (e.g. results/bench_core-cpu.json)")
    args = ap.parse_args()
    if args.decoders is None:
        args.decoders = ["user"] if args.quick else ["user", "nets"]
    if args.quick:
        args.repeats = 3
    pin_threads(args.threads)
    out = {"benchmark": "bench_core", "provenance": provenance(args.threads),
           "setting": {"latent_dim": args.latent_dim, "dtype": "float32", "batchnorm": "eval", "beta": BETA,
                       "observations": "Gaussian, unit variance", "repeats": args.repeats,
                       "step": "forward, backward and Adam on the decoder and the latent means"},
           "results": [bench(kind, B, args) for kind in args.decoders for B in args.batch]}
    emit(out, args.out)


if __name__ == "__main__":
    main()
