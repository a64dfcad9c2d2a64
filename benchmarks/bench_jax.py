"""gracheck's GRAE steps against the same steps written in JAX; prints JSON (issue 18, item 4).

What a JAX user writes: the loss as a function of (parameters, latent means, data), one example
at a time under ``vmap``, with the decoder Jacobian by ``jax.jacfwd`` (full GRAE, Eq. 13) or one
``jax.jvp`` with a sampled one-hot column (GRAE≈, Eq. 14), and the step
``jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))``. gracheck's step is the same computation:
``grae_objective`` / ``grae_approx_objective`` (engine route "auto", i.e. the traced chain) and
``torch.autograd.grad`` with respect to the decoder's parameters and the means. Neither side
includes an optimiser update. The plain step is the reconstruction loss alone.

Decoders (same weights on both sides, float32, eval-mode BatchNorm):

* ``mlp``: d-512-512-784, ELU, sigmoid output (the issue's setting);
* ``mnist``: the Appendix D MNIST decoder written the way users write it
  (benchmarks/user_decoders.py: F.elu after Linear + BatchNorm1d, .view, ConvTranspose/BatchNorm/
  ELU layers, a crop to 28×28, sigmoid); its JAX twin uses ``lax.conv_general_dilated``.

Gaussian observations with unit variance, β = 0.1, d = 12, the same sampled columns for GRAE≈.
Each step is checked before timing: the loss values (relative difference reported) and the
gradient with respect to the means must agree between the two frameworks.

gracheck's steps are timed twice: eager, and with the loss function under ``torch.compile``
(default inductor backend; the engine's plan lookup runs eagerly, the plan's evaluation, the
objective and the backward are compiled; the compile time, outside the timing, is reported).

Timing: all steps of one decoder interleaved in one process, median of ``--repeats`` rounds after
a warm-up (JAX's and torch's compiles happen there); the process is pinned to ``--threads`` cores
(torch's and XLA's thread pools follow the affinity mask). ``jax_over_torch`` > 1 means gracheck
is faster. On the conv decoder JAX's CPU backend is slow: the backward of its transposed
convolutions (``lax.conv_general_dilated`` with ``lhs_dilation``, what ``lax.conv_transpose`` and
flax's ConvTranspose lower to) takes seconds (measured: 7 s for the gradient of the 256→512 k4
layer at B = 8 against 0.12 s forward; ``--xla_cpu_use_onednn`` did not change it; JAX's full GRAE
step took 279 s at B = 8 on one thread), so that decoder runs at ``--mnist-batch`` 8 with
``--mnist-repeats`` 1 by default (about 10 minutes; ``--mnist-steps plain grae_approx`` skips the
full step).
JAX is an optional benchmark dependency (``pip install -e ".[bench]"``); without it the script
reports that it was skipped.

Usage: ``python benchmarks/bench_jax.py [--batch 64] [--repeats 7] [--threads 2] [--quick]
[--decoders mlp mnist] [--compile mlp] [--out results/bench_jax-cpu.json]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import emit, interleaved, pin_threads, provenance, ratios  # noqa: E402
from user_decoders import MLPDecoder, UserMNISTDecoder  # noqa: E402

BETA = 0.1


def _torch_steps(dec, x, mean, cols, compiled: bool):
    """gracheck's three steps (loss and gradients); with ``compiled`` the loss goes through
    ``torch.compile`` (the backward is compiled with it)."""
    import gracheck as gc

    obs = gc.GaussianObs()
    params = [*dec.parameters(), mean]
    losses = {
        "plain": lambda h: -obs.log_prob(x, dec(h).reshape(x.shape[0], -1)).mean(),
        "grae_approx": lambda h: -gc.grae_approx_objective(x, dec, h, BETA, obs, columns=cols).mean(),
        "grae_full": lambda h: -gc.grae_objective(x, dec, h, BETA, obs).mean(),
    }

    def step(loss_fn):
        fn = torch.compile(loss_fn) if compiled else loss_fn

        def run():
            loss = fn(mean)
            return loss.detach(), torch.autograd.grad(loss, params)

        return run

    return {k: step(f) for k, f in losses.items()}


def _jax_decoder(kind: str, dec):
    """A JAX function (params, z [d]) → [784] computing what ``dec`` computes, and its params."""
    import jax
    import jax.numpy as jnp

    def arr(t):
        return jnp.asarray(t.detach().cpu().numpy())

    if kind == "mlp":
        P = {n: arr(p) for n, p in dec.named_parameters()}

        def f(P, z):
            h = jax.nn.elu(P["l1.weight"] @ z + P["l1.bias"])
            h = jax.nn.elu(P["l2.weight"] @ h + P["l2.bias"])
            return jax.nn.sigmoid(P["l3.weight"] @ h + P["l3.bias"])

        return f, P

    P = {n: arr(p) for n, p in dec.named_parameters()}
    stats = {n: arr(b) for n, b in dec.named_buffers() if "running" in n}
    layers = list(dec.deconv)

    def bn(h, name, m, P):
        shape = (-1,) + (1,) * (h.ndim - 1)
        scale = P[f"{name}.weight"] / jnp.sqrt(stats[f"{name}.running_var"] + m.eps)
        return (h - stats[f"{name}.running_mean"].reshape(shape)) * scale.reshape(shape) + P[f"{name}.bias"].reshape(shape)

    def f(P, z):
        h = jax.nn.elu(bn(P["fc.weight"] @ z + P["fc.bias"], "bn", dec.bn, P)).reshape(1, dec.c0, 7, 7)
        for i, m in enumerate(layers):
            name = f"deconv.{i}"
            if isinstance(m, torch.nn.ConvTranspose2d):
                k, s, p = m.kernel_size[0], m.stride[0], m.padding[0]
                W = jnp.flip(P[f"{name}.weight"].transpose(1, 0, 2, 3), (2, 3))
                h = jax.lax.conv_general_dilated(h, W, (1, 1), [(k - 1 - p, k - 1 - p)] * 2, lhs_dilation=(s, s),
                                                 dimension_numbers=("NCHW", "OIHW", "NCHW"))
                h = h + P[f"{name}.bias"].reshape(1, -1, 1, 1)
            elif isinstance(m, torch.nn.Conv2d):
                p = m.padding[0]
                h = jax.lax.conv_general_dilated(h, P[f"{name}.weight"], (1, 1), [(p, p)] * 2,
                                                 dimension_numbers=("NCHW", "OIHW", "NCHW"))
                h = h + P[f"{name}.bias"].reshape(1, -1, 1, 1)
            elif isinstance(m, torch.nn.BatchNorm2d):
                h = bn(h[0], name, m, P)[None]
            else:
                h = jax.nn.elu(h)
        return jax.nn.sigmoid(h[..., :28, :28]).reshape(-1)

    return f, P


def _jax_steps(f, P, x, mean, cols, d):
    import jax
    import jax.numpy as jnp

    D = x.shape[1]
    const = -0.5 * D * math.log(2 * math.pi)

    def logp(xi, g):
        return -0.5 * jnp.sum((xi - g) ** 2) + const

    def plain(P, h, x, c):
        return -jnp.mean(jax.vmap(lambda hi, xi: logp(xi, f(P, hi)))(h, x))

    def full(P, h, x, c):
        def per(hi, xi):
            g = f(P, hi)
            J = jax.jacfwd(f, argnums=1)(P, hi)  # [D, d]
            L = jnp.linalg.cholesky(jnp.eye(d) + J.T @ J / BETA)
            return logp(xi, g) - 0.5 * BETA * hi @ hi - BETA * jnp.sum(jnp.log(jnp.diag(L)))
        return -jnp.mean(jax.vmap(per)(h, x))

    def approx(P, h, x, c):
        def per(hi, xi, ci):
            g, jc = jax.jvp(lambda u: f(P, u), (hi,), (jax.nn.one_hot(ci, d, dtype=hi.dtype),))
            return logp(xi, g) - 0.5 * BETA * hi @ hi - 0.5 * BETA * d * jnp.log1p(jnp.sum(jc * jc) / BETA)
        return -jnp.mean(jax.vmap(per)(h, x, c))

    xj, hj, cj = jnp.asarray(x.numpy()), jnp.asarray(mean.detach().numpy()), jnp.asarray(cols[:, 0].numpy())
    steps = {}
    for name, loss in (("plain", plain), ("grae_approx", approx), ("grae_full", full)):
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        steps[name] = lambda step=step: jax.block_until_ready(step(P, hj, xj, cj))
    return steps


def bench(kind: str, args) -> dict:
    import time

    import numpy as np

    torch.manual_seed(0)
    d = args.latent_dim
    B = args.batch if kind == "mlp" else args.mnist_batch
    repeats = args.repeats if kind == "mlp" else args.mnist_repeats
    dec = (MLPDecoder(d) if kind == "mlp" else UserMNISTDecoder(d)).eval()
    x = torch.rand(B, 784, generator=torch.Generator().manual_seed(1))
    mean = torch.randn(B, d, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    cols = torch.randint(0, d, (B, 1), generator=torch.Generator().manual_seed(3))
    sides = {"torch": _torch_steps(dec, x, mean, cols, compiled=False)}
    compile_seconds = {}
    if kind in args.compile:
        for fn in sides["torch"].values():  # an eager call caches the engine's plan: the compile is then one graph
            fn()
        sides["torch_compiled"] = _torch_steps(dec, x, mean, cols, compiled=True)
        for name, fn in sides["torch_compiled"].items():  # compile outside the timing: first call, lockstep recompile
            t0 = time.perf_counter()
            fn(), fn()
            compile_seconds[name] = time.perf_counter() - t0
    f, P = _jax_decoder(kind, dec)
    sides["jax"] = _jax_steps(f, P, x, mean, cols, d)
    steps = [s for s in ("plain", "grae_approx", "grae_full") if kind == "mlp" or s in args.mnist_steps]

    agreement = {}
    for name in steps:
        jl, (_, jgh) = sides["jax"][name]()
        jl, jh = float(jl), np.asarray(jgh)
        for side in sides:
            if side == "jax":
                continue
            tl, tg = sides[side][name]()
            agreement[f"{side}_{name}"] = {
                "loss_torch": float(tl), "loss_jax": jl, "loss_rel_diff": abs(float(tl) - jl) / abs(jl),
                "grad_mean_max_rel_diff": float(np.abs(tg[-1].numpy() - jh).max() / np.abs(jh).max())}
    fns = {f"{side}_{name}": sides[side][name] for side in sides for name in steps}
    # the agreement calls above were the warm-up (JAX compiled there); the MLP gets one more round
    stats = interleaved(fns, repeats, warmup=1 if kind == "mlp" else 0)
    med = {k: v["median_s"] for k, v in stats.items()}
    out = {
        "decoder": {"mlp": f"MLP {d}-512-512-784, ELU, sigmoid",
                    "mnist": "Appendix D MNIST decoder as users write it (F.elu, .view, crop [..., :28, :28])"}[kind],
        "batch": B,
        "repeats": repeats,
        "route": __import__("gracheck").jacobian_route(dec).method,
        "agreement": agreement,
        "seconds": stats,
        "jax_over_torch": {k: med[f"jax_{k}"] / med[f"torch_{k}"] for k in steps},
    }
    if "torch_compiled" in sides:
        out["jax_over_torch_compiled"] = {k: med[f"jax_{k}"] / med[f"torch_compiled_{k}"] for k in steps}
        out["torch_compile_seconds"] = compile_seconds
    for side in sides:
        if "plain" in steps:
            out[f"{side}_ratio_to_plain"] = ratios({k: stats[f"{side}_{k}"] for k in steps}, "plain")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--latent-dim", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decoders", nargs="+", default=["mlp", "mnist"], choices=["mlp", "mnist"])
    ap.add_argument("--compile", nargs="*", default=["mlp"], choices=["mlp", "mnist"],
                    help="decoders whose gracheck steps are also timed under torch.compile (default: mlp)")
    ap.add_argument("--mnist-batch", type=int, default=8)
    ap.add_argument("--mnist-repeats", type=int, default=1,
                    help="JAX's conv backward on CPU takes seconds to minutes per step (see the module docstring)")
    ap.add_argument("--mnist-steps", nargs="+", default=["plain", "grae_approx", "grae_full"],
                    choices=["plain", "grae_approx", "grae_full"])
    ap.add_argument("--quick", action="store_true", help="5 repeats, the MLP only, no torch.compile")
    ap.add_argument("--out", default=None, help="also write the JSON here (e.g. results/bench_jax-cpu.json)")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.decoders, args.compile = 5, ["mlp"], []
    pin_threads(args.threads)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    out = {"benchmark": "bench_jax", "provenance": provenance(args.threads)}
    try:
        import jax
    except ImportError:
        out["skipped"] = 'jax is not installed (pip install -e ".[bench]")'
        emit(out, args.out)
        return
    out["provenance"]["jax"] = jax.__version__
    out["setting"] = {"latent_dim": args.latent_dim, "dtype": "float32", "beta": BETA,
                      "batchnorm": "eval", "observations": "Gaussian, unit variance",
                      "step": "loss and gradients w.r.t. decoder parameters and latent means; no optimiser",
                      "xla_flags": os.environ.get("XLA_FLAGS", "")}
    out["results"] = {kind: bench(kind, args) for kind in args.decoders}
    emit(out, args.out)


if __name__ == "__main__":
    main()
