"""Fréchet distance: time and agreement of gracheck's eigh route with scipy's sqrtm route; prints JSON.

Setting: feature sets drawn like network features (correlated Gaussians, N = 2·F rows each,
seed 0), F in {64, 256, 1024, 2048}; 2048 is Inception pool3. Routes:

* ``gracheck``: :func:`gracheck.fid.frechet_distance` (two symmetric eigendecompositions);
* ``scipy``: pytorch-fid's route, ``scipy.linalg.sqrtm(C1 @ C2)``, real part kept; the size of
  the discarded imaginary part is reported;
* ``nuclear``: nuclear norm of A2ᵀA1 with A_i the centred features / √(N−1) (SVD, no square
  roots of eigenvalues), the most accurate of the three when N is small.

Also times the KID estimate (100 subsets of 1000) at F = 2048 and one MNIST domain-feature pass.
Usage: ``python benchmarks/bench_fid.py [--dims 64 256 1024 2048] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np
import scipy
import scipy.linalg
import torch

from gracheck import fid


def _features(rng: np.random.Generator, n: int, f: int, shift: float) -> np.ndarray:
    mix = rng.normal(size=(f, f)) / math.sqrt(f)
    return np.maximum(rng.normal(size=(n, f)) @ mix + shift, 0.0)  # ReLU-like, as pool features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 256, 1024, 2048])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    rows = []
    for f in args.dims:
        n = 2 * f
        X1, X2 = _features(rng, n, f, 0.0), _features(rng, n, f, 0.1)
        mu1, c1 = fid.fit_gaussian(X1)
        mu2, c2 = fid.fit_gaussian(X2)
        t0 = time.perf_counter()
        det = fid.frechet_distance_details(mu1, c1, mu2, c2)
        t_ours = time.perf_counter() - t0
        C1, C2 = c1.numpy(), c2.numpy()
        t0 = time.perf_counter()
        cm = scipy.linalg.sqrtm(C1 @ C2)
        t_scipy = time.perf_counter() - t0
        imag = float(np.abs(cm.imag).max()) if np.iscomplexobj(cm) else 0.0
        d_scipy = float(((mu1 - mu2).numpy() ** 2).sum() + np.trace(C1) + np.trace(C2) - 2 * np.trace(cm.real))
        t0 = time.perf_counter()
        A1 = (X1 - X1.mean(0)).T / math.sqrt(n - 1)
        A2 = (X2 - X2.mean(0)).T / math.sqrt(n - 1)
        nuc = np.linalg.svd(A2.T @ A1, compute_uv=False).sum()
        d_nuc = float(((mu1 - mu2).numpy() ** 2).sum() + (A1**2).sum() + (A2**2).sum() - 2 * nuc)
        t_nuc = time.perf_counter() - t0
        rows.append({
            "F": f, "N": n, "fd_gracheck": det.value, "fd_scipy": d_scipy, "fd_nuclear": d_nuc,
            "rel_diff_scipy": abs(det.value - d_scipy) / d_scipy, "rel_diff_nuclear": abs(det.value - d_nuc) / d_nuc,
            "scipy_max_imag_discarded": imag, "n_clamped": det.n_clamped, "max_clamped_rel": det.max_clamped_rel,
            "seconds_gracheck": t_ours, "seconds_scipy": t_scipy, "seconds_nuclear": t_nuc,
        })
        print(json.dumps(rows[-1]), flush=True)
    X = torch.tensor(_features(rng, 2000, 2048, 0.0))
    Y = torch.tensor(_features(rng, 2000, 2048, 0.05))
    t0 = time.perf_counter()
    v, se = fid.kid(X, Y, subset_size=1000, n_subsets=100, seed=args.seed)
    t_kid = time.perf_counter() - t0
    net = fid.DomainFeatureNet(1, 28, (32, 64), 10)
    imgs = torch.rand(10_000, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed))
    t0 = time.perf_counter()
    fid.domain_features(net, imgs)
    t_feat = time.perf_counter() - t0
    print(json.dumps({
        "fd": rows,
        "kid_2048d_2000x2000_100x1000": {"value": v, "stderr": se, "seconds": t_kid},
        "mnist_domain_features_10k_seconds": t_feat,
        "threads": args.threads, "seed": args.seed, "torch": torch.__version__, "scipy": scipy.__version__,
        "machine": platform.machine(), "processor": platform.processor(),
    }, indent=1))


if __name__ == "__main__":
    main()
