"""Fréchet distance at Inception width: time and agreement of routes to tr (C₁^{1/2} C₂ C₁^{1/2})^{1/2}; prints JSON.

Setting: two feature sets drawn like network features (ReLU of correlated Gaussians, seed 0) at
F = 2048 (Inception pool3), Gaussians fitted by :func:`gracheck.fid.fit_gaussian`. Cases:

* ``full-rank``: N₁ = N₂ = 2F rows (both covariances positive definite);
* ``one-singular``: N₁ = F/2, N₂ = 2F (C₁ singular);
* ``both-singular``: N₁ = N₂ = F/2 (both singular).

Routes, all float64, each timed on the fitted (μ, C) pairs (validation included where the
route has any):

* ``gracheck``: :func:`gracheck.fid.frechet_distance_details` (Cholesky factors; eigvalsh of the
  Gram matrix (L₂ᵀL₁)ᵀ(L₂ᵀL₁) when both are PD, of LᵀCL when one is, the eigendecomposition
  route otherwise);
* ``eigh``: the previous gracheck route, kept as the fallback (``fdist.trace_sqrt_eigh``:
  eigh of C₁ with vectors, S = C₁^{1/2}, eigvalsh of S C₂ S, eigvalsh of C₂ for validation);
* ``eigvals``: the eigenvalues of the non-symmetric product, as torchmetrics computes FID,
  written here from its definition: Σ √λᵢ(C₁C₂) (complex square roots), real part;
* ``cholesky_svd`` (full-rank case only): the alternative to gracheck's Gram eigenvalues,
  Σ σⱼ(L₂ᵀL₁) by one SVD without vectors (more accurate near singularity, slower);
* ``scipy_sqrtm``: pytorch-fid's route, ``trace(scipy.linalg.sqrtm(C1 @ C2)).real`` (full-rank
  case only; about a minute per call on one thread).

Reference for agreement: the nuclear norm of A₂ᵀA₁ (A_i the centred features / √(N_i − 1)),
which needs no factorisation of a covariance. Timings are interleaved (the order of the
routes rotates from one repetition to the next) and the medians of ``--repeats`` are
reported, with the per-repetition ratios to gracheck (their median too: neighbours in time
share the machine's load); every route runs once on a small problem first (warm-up). Each
thread count runs in its own child process with OMP/MKL/OpenBLAS thread variables set before
import (scipy's OpenBLAS reads them only then); the load average is recorded before and after
each, and after every repetition.

``--extras`` also times the KID estimate (100 subsets of 1000) and one MNIST domain-feature
pass (single timings). Usage: ``python benchmarks/bench_fid.py [--dim 2048] [--threads 1 2]
[--repeats 3] [--cases full-rank one-singular both-singular] [--out results/bench_fid-cpu.json]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {"full-rank": (2.0, 2.0), "one-singular": (0.5, 2.0), "both-singular": (0.5, 0.5)}  # N_i / F


def _features(rng, n: int, f: int, shift: float):
    import numpy as np

    mix = rng.normal(size=(f, f)) / math.sqrt(f)
    return np.maximum(rng.normal(size=(n, f)) @ mix + shift, 0.0)  # ReLU-like, as pool features


def _child(args: argparse.Namespace) -> dict:
    """One thread count: every case, every route, interleaved; returns the measurements."""
    import numpy as np
    import scipy
    import scipy.linalg
    import torch

    from gracheck import fid
    from gracheck.fid import distance as fdist

    torch.set_num_threads(args.threads)
    f = args.dim

    def frechet(mu1, c1, mu2, c2, tr_sqrt: float) -> float:
        d = mu1 - mu2
        return float(d @ d + torch.diagonal(c1).sum() + torch.diagonal(c2).sum() - 2.0 * tr_sqrt)

    def route_gracheck(mu1, c1, mu2, c2):
        det = fid.frechet_distance_details(mu1, c1, mu2, c2)
        return det.value, det.route

    def route_eigh(mu1, c1, mu2, c2):
        # the previous gracheck computation: symmetry checks, then the eigendecomposition route
        c1s, c2s = fdist.symmetrised("cov1", c1, fdist.DEFAULT_RTOL), fdist.symmetrised("cov2", c2, fdist.DEFAULT_RTOL)
        tr_sqrt, _, _ = fdist.trace_sqrt_eigh(c1s, c2s, fdist.DEFAULT_RTOL)
        return max(frechet(mu1, c1, mu2, c2, tr_sqrt), 0.0), "eigh"

    def route_eigvals(mu1, c1, mu2, c2):
        lam = torch.linalg.eigvals(c1 @ c2)  # complex; rounding moves some off the real axis
        return frechet(mu1, c1, mu2, c2, float(lam.sqrt().real.sum())), "eigvals"

    def route_svd(mu1, c1, mu2, c2):
        l1, l2 = torch.linalg.cholesky(c1), torch.linalg.cholesky(c2)
        return frechet(mu1, c1, mu2, c2, float(torch.linalg.svdvals(l2.mT @ l1).sum())), "cholesky_svd"

    def route_sqrtm(mu1, c1, mu2, c2):
        s = scipy.linalg.sqrtm(c1.numpy() @ c2.numpy())
        return frechet(mu1, c1, mu2, c2, float(np.trace(s).real)), "scipy_sqrtm"

    # warm-up: every route once on a small problem (library initialisation, code paths paged in)
    rng = np.random.default_rng(args.seed + 1)
    warm = [fid.fit_gaussian(_features(rng, 512, 256, s)) for s in (0.0, 0.1)]
    for fn in (route_gracheck, route_eigh, route_eigvals, route_svd, route_sqrtm):
        fn(warm[0][0], warm[0][1], warm[1][0], warm[1][1])

    out = {"threads": args.threads, "torch_threads": torch.get_num_threads(),
           "loadavg_before": list(os.getloadavg()), "cases": {}}
    for case in args.cases:
        r1, r2 = CASES[case]
        n1, n2 = int(r1 * f), int(r2 * f)
        rng = np.random.default_rng(args.seed)
        X1, X2 = _features(rng, n1, f, 0.0), _features(rng, n2, f, 0.1)
        mu1, c1 = fid.fit_gaussian(X1)
        mu2, c2 = fid.fit_gaussian(X2)
        A1 = torch.from_numpy((X1 - X1.mean(0)).T / math.sqrt(n1 - 1))
        A2 = torch.from_numpy((X2 - X2.mean(0)).T / math.sqrt(n2 - 1))
        nuc = float(torch.linalg.svdvals(A2.mT @ A1).sum())
        reference = frechet(mu1, c1, mu2, c2, nuc)
        routes = {"gracheck": route_gracheck, "eigh": route_eigh, "eigvals": route_eigvals}
        if case == "full-rank":
            routes["cholesky_svd"] = route_svd
            if not args.no_sqrtm:
                routes["scipy_sqrtm"] = route_sqrtm
        names = list(routes)
        seconds: dict[str, list[float]] = {k: [] for k in names}
        values: dict[str, float] = {}
        used: dict[str, str] = {}
        loads = []
        for rep in range(args.repeats):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for k in order:
                t0 = time.perf_counter()
                v, r = routes[k](mu1, c1, mu2, c2)
                seconds[k].append(time.perf_counter() - t0)
                values[k], used[k] = v, r
            loads.append(os.getloadavg()[0])
            print(f"# threads {args.threads} {case} rep {rep}: " + ", ".join(f"{k} {seconds[k][-1]:.2f}s" for k in names),
                  file=sys.stderr, flush=True)
        med = {k: statistics.median(v) for k, v in seconds.items()}
        out["cases"][case] = {
            "F": f, "N1": n1, "N2": n2, "seed": args.seed, "gracheck_route": used["gracheck"],
            "seconds_median": med,
            "seconds": seconds,
            "ratio_of_medians_to_gracheck": {k: med[k] / med["gracheck"] for k in names},
            "median_paired_ratio_to_gracheck": {
                k: statistics.median(a / b for a, b in zip(seconds[k], seconds["gracheck"])) for k in names},
            "fd": values,
            "fd_reference_nuclear_norm_of_features": reference,
            "rel_diff_to_reference": {k: abs(v - reference) / abs(reference) for k, v in values.items()},
            "rel_diff_to_gracheck": {k: abs(v - values["gracheck"]) / abs(values["gracheck"]) for k, v in values.items()},
            "loadavg_1min_after_each_repeat": loads,
        }
    if args.extras:  # the other distances' costs at this width (single timings, for scale only)
        rng = np.random.default_rng(args.seed)
        X = torch.from_numpy(_features(rng, 2000, f, 0.0))
        Y = torch.from_numpy(_features(rng, 2000, f, 0.05))
        t0 = time.perf_counter()
        v, se = fid.kid(X, Y, subset_size=1000, n_subsets=100, seed=args.seed)
        out["kid_2000x2000_100x1000"] = {"value": v, "stderr": se, "seconds": time.perf_counter() - t0}
        net = fid.DomainFeatureNet(1, 28, (32, 64), 10)
        imgs = torch.rand(10_000, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed))
        t0 = time.perf_counter()
        fid.domain_features(net, imgs)
        out["mnist_domain_features_10k_seconds"] = time.perf_counter() - t0
    out["loadavg_after"] = list(os.getloadavg())
    out["versions"] = {"torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__}
    return out


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a results file is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--no-sqrtm", action="store_true", help="skip scipy's sqrtm (about a minute per call)")
    ap.add_argument("--extras", action="store_true", help="also time KID (100 subsets of 1000) and MNIST domain features")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here (atomically)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 3:
        ap.error("--repeats: a median needs at least 3")
    if args.child:
        (t,) = args.threads
        args.threads = t
        print(json.dumps(_child(args)))
        return

    from gracheck.base.files import git_commit

    runs = []
    for t in args.threads:
        env = {**os.environ, "OMP_NUM_THREADS": str(t), "MKL_NUM_THREADS": str(t), "OPENBLAS_NUM_THREADS": str(t)}
        cmd = [sys.executable, __file__, "--child", "--threads", str(t), "--dim", str(args.dim),
               "--repeats", str(args.repeats), "--seed", str(args.seed), "--cases", *args.cases]
        cmd += ["--no-sqrtm"] * args.no_sqrtm + ["--extras"] * args.extras
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        runs.append(json.loads(proc.stdout))
    import torch

    doc = {
        "benchmark": "bench_fid",
        "setting": {"dim": args.dim, "cases": {c: {"N1/F": CASES[c][0], "N2/F": CASES[c][1]} for c in args.cases},
                    "features": "ReLU(normal @ normal/sqrt(F) + shift), shift 0 and 0.1", "dtype": "float64",
                    "repeats": args.repeats, "seed": args.seed},
        "provenance": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "git_commit": git_commit(), "command": " ".join(["python", *sys.argv]),
                       "torch": torch.__version__, "machine": platform.machine(),
                       "processor": platform.processor(), "cpu_count": os.cpu_count(),
                       "note": "shared machine: compare ratios within one thread count, not absolute seconds"},
        "runs": runs,
    }
    text = json.dumps(doc, indent=1)
    if args.out is not None:
        _atomic_write(args.out, text + "\n")
    print(text)


if __name__ == "__main__":
    main()
