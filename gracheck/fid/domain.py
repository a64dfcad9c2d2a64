"""In-domain feature networks: the features of the *domain* Fréchet distance, never FID.

:class:`DomainFeatureNet` / :func:`train_domain_features`: small networks trained once by gracheck
with a fixed seed (MNIST: a digit classifier; CelebA: a rotation predictor) and cached, identified
by the SHA-256 of their weights. Distances computed with them (:func:`domain_frechet_distance`)
are not comparable with published FID values.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gracheck.base.files import atomic_write_bytes, cache_dir, entry_lock
from gracheck.base.validate import check_positive_int
from gracheck.fid.distance import check_images, fit_gaussian, frechet_distance_details

__all__ = [
    "DomainFeatureNet",
    "DOMAIN_TASKS",
    "FEATURE_NET_VERSION",
    "train_domain_features",
    "domain_features",
    "domain_frechet_distance",
    "state_dict_sha256",
]

# --------------------------------------------------------------------------------------------
# In-domain feature networks ("domain Fréchet distance", never FID)
# --------------------------------------------------------------------------------------------

FEATURE_NET_VERSION = 1

# dataset -> (feature_net name, what it is trained to do, in channels, image side, conv channels, outputs)
DOMAIN_TASKS: dict[str, dict[str, Any]] = {
    "mnist": {
        "feature_net": "mnist-digit-classifier",
        "task": "classify the digit (10 classes) of MNIST training images (60,000, labels); "
                "held-out accuracy on the 10,000 MNIST test images",
        "in_channels": 1,
        "image_size": 28,
        "channels": (32, 64),
        "n_outputs": 10,
        "lr": 2e-3,
    },
    "celeba": {
        "feature_net": "celeba-rotation-predictor",
        "task": "self-supervised: predict which rotation (0/90/180/270 degrees, torch.rot90) was applied to "
                "a 64x64 CelebA face; held-out accuracy over all 4 rotations of the last 10% of the images "
                "loaded (not trained on)",
        "in_channels": 3,
        "image_size": 64,
        "channels": (16, 32, 64, 64),
        "n_outputs": 4,
        "lr": 2e-3,
    },
}


class DomainFeatureNet(nn.Module):
    """Small conv net whose penultimate layer gives the features of the domain Fréchet distance.

    ``len(channels)`` stride-2 convolutions (the first 5×5, the others 3×3, ReLU after each) →
    flatten → Linear to ``feature_dim`` (the features: pre-activation, so no unit is identically
    zero) → ReLU → Linear to ``n_outputs`` (the training head). No BatchNorm: eval and train mode
    compute the same function, and features of one image do not depend on its batch.
    """

    def __init__(self, in_channels: int, image_size: int, channels: tuple[int, ...], n_outputs: int,
                 feature_dim: int = 128):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("image_size", image_size), ("n_outputs", n_outputs),
                        ("feature_dim", feature_dim)):
            check_positive_int(name, v)
        if not channels:
            raise ValueError("channels: need at least one conv layer")
        layers: list[nn.Module] = []
        c, side = in_channels, image_size
        for i, cout in enumerate(channels):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(c, cout, k, stride=2, padding=k // 2), nn.ReLU()]
            c, side = cout, (side - 1) // 2 + 1
        self.in_channels, self.image_size, self.feature_dim = in_channels, image_size, feature_dim
        self.body = nn.Sequential(*layers)
        self.features = nn.Linear(c * side * side, feature_dim)
        self.head = nn.Linear(feature_dim, n_outputs)

    def embed(self, x: Tensor) -> Tensor:
        """Features ``[B, feature_dim]`` of images ``[B, C, H, W]`` in [0, 1] (centred to [−0.5, 0.5] inside)."""
        return self.features(self.body(x - 0.5).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.embed(x)))


def _make_net(dataset: str) -> DomainFeatureNet:
    t = DOMAIN_TASKS[dataset]
    return DomainFeatureNet(t["in_channels"], t["image_size"], t["channels"], t["n_outputs"])


def state_dict_sha256(module_or_sd: nn.Module | Mapping[str, Tensor]) -> str:
    """SHA-256 of a state dict in canonical form: keys sorted; per key its name, dtype, shape and raw bytes."""
    sd = module_or_sd.state_dict() if isinstance(module_or_sd, nn.Module) else module_or_sd
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().to("cpu").contiguous()
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def _rotations(x: Tensor, k: Tensor) -> Tensor:
    out = torch.empty_like(x)
    for r in range(4):
        sel = k == r
        if bool(sel.any()):
            out[sel] = torch.rot90(x[sel], r, dims=(2, 3))
    return out


def _load_domain_data(dataset: str, limit: int | None):
    """(train images, train labels or None, held-out images, held-out labels or None, description)."""
    import gracheck.data as gd

    if dataset == "mnist":
        xtr, ytr = gd.mnist_images("train", limit=limit)
        xte, yte = gd.mnist_images("test")
        return xtr, ytr, xte, yte
    x = gd.load_celeba("train", limit=limit)
    n_hold = max(1, x.shape[0] // 10)
    return x[:-n_hold], None, x[-n_hold:], None


def _batch(dataset: str, x: Tensor, y: Tensor | None, idx: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    xb = x[idx]
    if dataset == "mnist":
        return xb, y[idx]
    k = torch.randint(0, 4, (idx.shape[0],), generator=gen)
    return _rotations(xb, k), k


@torch.no_grad()
def _heldout_accuracy(dataset: str, net: nn.Module, x: Tensor, y: Tensor | None, device) -> float:
    net.eval()
    correct = total = 0
    for i in range(0, x.shape[0], 1000):
        xb = x[i:i + 1000]
        if dataset == "mnist":
            pairs = [(xb, y[i:i + 1000])]
        else:
            pairs = [(torch.rot90(xb, r, dims=(2, 3)), torch.full((xb.shape[0],), r)) for r in range(4)]
        for xi, yi in pairs:
            pred = net(xi.to(device)).argmax(1).cpu()
            correct += int((pred == yi).sum())
            total += yi.shape[0]
    return correct / total


def _cache_path(dataset: str, seed: int, steps: int, batch_size: int, limit: int | None) -> Path:
    n = "all" if limit is None else str(limit)
    return cache_dir() / "features" / f"{dataset}-seed{seed}-steps{steps}-bs{batch_size}-n{n}-v{FEATURE_NET_VERSION}.pt"



def _load_cached(path: Path, dataset: str, config: dict[str, Any]) -> tuple[DomainFeatureNet, dict] | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("config") != config:
            raise ValueError("config differs")
        net = _make_net(dataset)
        net.load_state_dict(blob["state_dict"])
        info = dict(blob["info"])
        if state_dict_sha256(net) != info["feature_hash"]:
            raise ValueError("feature_hash does not match the stored weights")
    except Exception as e:  # a stale or damaged cache entry is retrained, never trusted
        warnings.warn(f"feature-net cache {path} unusable ({type(e).__name__}: {e}); retraining", stacklevel=3)
        return None
    info["cached"] = True
    import gracheck.data as gd

    gd.note_reads(info.get("data_read"))  # what the cached net was trained on counts as read by its user
    return net, info


def train_domain_features(
    dataset: str,
    *,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    device: str | torch.device = "cpu",
    cache: bool = True,
) -> tuple[DomainFeatureNet, dict[str, Any]]:
    """Train (or load from the cache) the in-domain feature network for ``dataset``, once, with a fixed seed.

    ``"mnist"``: a digit classifier trained on the MNIST training set's labels; held-out
    accuracy on the test set. ``"celeba"``: CelebA ships without labels here, so the net is
    trained on a self-supervised task, predicting which of 4 rotations (0/90/180/270°) was
    applied, on the CelebA training images loaded (``limit``; the shipped subset has 10,000),
    the last 10% held out. Its features must see facial structure and, at 64×64, fine detail: a
    sanity test checks that the domain Fréchet distance grows with Gaussian blur.

    Adam, cosine-decayed learning rate, ``steps`` minibatches of ``batch_size`` drawn with a
    generator seeded by ``seed``; the weights are initialised under ``torch.manual_seed(seed)``
    inside ``torch.random.fork_rng`` (the caller's global RNG is untouched). Defaults: MNIST
    1000 steps × 128, CelebA 1500 steps × 64.

    Returns ``(net, info)``; ``info`` holds ``metric`` ("domain-frechet-distance"), ``feature_net``,
    ``task``, ``seed``, ``steps``, ``batch_size``, ``heldout_accuracy``, ``n_train``, ``n_heldout``,
    ``train_seconds``, ``feature_hash`` (:func:`state_dict_sha256`), ``version``, ``cached``, ``data_read``
    (the data folder and files read, with checksums: :func:`gracheck.data.record_reads`).
    Training is deterministic for a given torch build, device and thread count; another thread
    count changes float32 summation order and so the weights (measured: same MNIST accuracy,
    different hash). The hash identifies the weights actually used, so store it with results.
    With ``cache=True`` the trained net is stored under ``cache_dir()/features`` keyed by
    (dataset, seed, steps, batch_size, limit, version), written atomically and read back with
    ``weights_only=True``; a damaged entry is retrained (with a warning).
    """
    if dataset not in DOMAIN_TASKS:
        raise ValueError(f"dataset: expected one of {sorted(DOMAIN_TASKS)}, got {dataset!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    steps = check_positive_int("steps", steps if steps is not None else (1000 if dataset == "mnist" else 1500))
    batch_size = check_positive_int("batch_size", batch_size if batch_size is not None else
                                     (128 if dataset == "mnist" else 64))
    if limit is not None:
        check_positive_int("limit", limit)
    task = DOMAIN_TASKS[dataset]
    config = {"dataset": dataset, "seed": seed, "steps": steps, "batch_size": batch_size, "limit": limit,
              "version": FEATURE_NET_VERSION, "lr": task["lr"], "channels": list(task["channels"])}
    path = _cache_path(dataset, seed, steps, batch_size, limit)
    if not cache:
        return _train_feature_net(dataset, task, seed, steps, batch_size, limit, device)
    hit = _load_cached(path, dataset, config)
    if hit is None:
        with entry_lock(path):  # a second process waits here, then loads what the first one wrote
            hit = _load_cached(path, dataset, config)
            if hit is None:
                net, info = _train_feature_net(dataset, task, seed, steps, batch_size, limit, device)
                buf = io.BytesIO()
                torch.save({"config": config, "state_dict": {k: v.detach().to("cpu") for k, v in net.state_dict().items()},
                            "info": info}, buf)
                atomic_write_bytes(path, buf.getvalue())
                return net, info
    net, info = hit
    return net.to(device), info


def _train_feature_net(dataset: str, task: dict[str, Any], seed: int, steps: int, batch_size: int,
                       limit: int | None, device) -> tuple[DomainFeatureNet, dict[str, Any]]:
    """Train the feature net of ``dataset`` (see :func:`train_domain_features`); returns ``(net, info)``."""
    import gracheck.data as gd

    with gd.record_reads() as reads:  # the data folder and the checksums of the files read, kept in info
        xtr, ytr, xho, yho = _load_domain_data(dataset, limit)
    if xtr.shape[0] < 1:
        raise ValueError(f"limit: {limit} leaves no training images")
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _make_net(dataset)
    net.to(device).train()
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(net.parameters(), lr=task["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * t / steps)))
    n = xtr.shape[0]
    perm, pos = torch.randperm(n, generator=gen), 0
    last_loss = float("nan")
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        xb, yb = _batch(dataset, xtr, ytr, idx, gen)
        loss = F.cross_entropy(net(xb.to(device)), yb.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        last_loss = loss.item()
    seconds = time.perf_counter() - t0
    acc = _heldout_accuracy(dataset, net, xho, yho, device)
    net.eval()
    cpu_sd = {k: v.detach().to("cpu") for k, v in net.state_dict().items()}
    info = {
        "metric": "domain-frechet-distance",
        "feature_net": task["feature_net"],
        "dataset": dataset,
        "task": task["task"],
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "limit": limit,
        "lr": task["lr"],
        "feature_dim": net.feature_dim,
        "n_train": int(n),
        "n_heldout": int(xho.shape[0]),
        "heldout_accuracy": acc,
        "final_train_loss": last_loss,
        "train_seconds": seconds,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "feature_hash": state_dict_sha256(cpu_sd),
        "version": FEATURE_NET_VERSION,
        "cached": False,
        "data_read": reads.to_dict(),
    }
    return net, info


@torch.no_grad()
def domain_features(net: DomainFeatureNet, images: Tensor, batch_size: int = 512) -> Tensor:
    """Penultimate-layer features ``[N, feature_dim]`` (float64) of ``images [N, C, H, W]`` in [0, 1]."""
    if not isinstance(net, DomainFeatureNet):
        raise TypeError(f"net: expected a DomainFeatureNet, got {type(net).__name__}")
    check_positive_int("batch_size", batch_size)
    images = check_images("images", images, channels=net.in_channels)
    if tuple(images.shape[2:]) != (net.image_size, net.image_size):
        raise ValueError(f"images: expected {net.image_size}x{net.image_size} pixels, got shape {tuple(images.shape)}")
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    out = [net.embed(images[i:i + batch_size].to(dev, torch.float32)).to("cpu", torch.float64)
           for i in range(0, images.shape[0], batch_size)]
    net.train(was_training)
    return torch.cat(out)


def domain_frechet_distance(
    images_a: Tensor, images_b: Tensor, net: DomainFeatureNet, info: Mapping[str, Any], *, batch_size: int = 512
) -> dict[str, Any]:
    """Domain Fréchet distance (NOT FID) between two image sets, in the features of a gracheck domain net.

    Fréchet distance (:func:`frechet_distance`) between Gaussians fitted to
    :func:`domain_features` of each set. Comparable only with values computed with the same
    ``feature_hash`` and equal sample sizes. Returns ``{"metric": "domain-frechet-distance",
    "value", "feature_net", "feature_hash", "n_a", "n_b", "feature_dim", "n_clamped"}``.
    """
    if not isinstance(info, Mapping) or "feature_hash" not in info or "feature_net" not in info:
        raise ValueError("info: expected the info dict returned by train_domain_features (feature_net, feature_hash)")
    fa = domain_features(net, images_a, batch_size)
    fb = domain_features(net, images_b, batch_size)
    mu_a, c_a = fit_gaussian(fa)
    mu_b, c_b = fit_gaussian(fb)
    det = frechet_distance_details(mu_a, c_a, mu_b, c_b)
    return {
        "metric": "domain-frechet-distance",
        "value": det.value,
        "feature_net": info["feature_net"],
        "feature_hash": info["feature_hash"],
        "n_a": int(fa.shape[0]),
        "n_b": int(fb.shape[0]),
        "feature_dim": int(fa.shape[1]),
        "n_clamped": det.n_clamped,
    }
