"""The Inception-v3 of FID, written without torchvision, with weights from a local file only.

:class:`InceptionV3Features` / :func:`load_inception` are pytorch-fid's port of the 2015-12-05
TensorFlow graph. The weights (``pt_inception-2015-12-05-6726825d.pth``) are never downloaded:
the user gives a local file (argument or ``$GRACHECK_INCEPTION_WEIGHTS``); without one FID is
reported as "not run here" (:func:`inception_fid`). Loading never executes code
(``torch.load(..., weights_only=True)``) and checks every key and shape.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gracheck.base.files import file_digest
from gracheck.base.validate import check_positive_int
from gracheck.fid.distance import check_images, fit_gaussian, frechet_distance_details

__all__ = [
    "InceptionWeightsUnavailable",
    "InceptionV3Features",
    "INCEPTION_ENV_VAR",
    "INCEPTION_FILENAME",
    "INCEPTION_SHA256",
    "load_inception",
    "inception_state_dict_spec",
    "inception_features",
    "inception_fid",
]

# --------------------------------------------------------------------------------------------
# Inception-v3 as used for FID (pytorch-fid's port of the TF 2015-12-05 graph), no torchvision
# --------------------------------------------------------------------------------------------

INCEPTION_ENV_VAR = "GRACHECK_INCEPTION_WEIGHTS"
INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# SHA-256 of pytorch-fid's file (95,628,359 bytes). The filename follows torch.hub's convention
# "<name>-<first 8 hex digits of the file's SHA-256>.<ext>" and the full digest below is the one
# published independently by several projects that pin this file (it begins with 6726825d).
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
_HASH_POLICIES = ("warn", "error", "ignore")


class InceptionWeightsUnavailable(FileNotFoundError):
    """No Inception weights file was given (or it does not exist): FID is "not run here"."""


class _ConvBN(nn.Module):
    """Conv (no bias) → BatchNorm (eps 1e-3, TF's value) → ReLU; keys ``conv.weight``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: Tensor) -> Tensor:
    # TensorFlow's SAME average pool divides by the number of real (unpadded) pixels.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _Block35(nn.Module):
    """35×35 grid block (Mixed_5b/c/d): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool→1×1."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg3(x))
        return torch.cat((a, b, c, d), 1)


class _Reduce35to17(nn.Module):
    """Grid reduction 35→17 (Mixed_6a): 3×3/2 | 1×1→3×3→3×3/2 | max-pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat((a, b, F.max_pool2d(x, 3, stride=2)), 1)


class _Block17(nn.Module):
    """17×17 grid block with factorised 7×7 convolutions (Mixed_6b..e)."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_avg3(x))
        return torch.cat((a, b, c, d), 1)


class _Reduce17to8(nn.Module):
    """Grid reduction 17→8 (Mixed_7a): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = layer(b)
        return torch.cat((a, b, F.max_pool2d(x, 3, stride=2)), 1)


class _Block8(nn.Module):
    """8×8 grid block with split 1×3 / 3×1 outputs (Mixed_7b, Mixed_7c).

    ``pool="avg"`` (Mixed_7b): average pool without padded zeros. ``pool="max"`` (Mixed_7c): the
    FID graph uses a max pool here (pytorch-fid's FIDInceptionE_2; the Inception paper and
    torchvision use an average pool).
    """

    def __init__(self, cin: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool: expected 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b = torch.cat((self.branch3x3_2a(t), self.branch3x3_2b(t)), 1)
        u = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat((self.branch3x3dbl_3a(u), self.branch3x3dbl_3b(u)), 1)
        p = _avg3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat((a, b, c, self.branch_pool(p)), 1)


class InceptionV3Features(nn.Module):
    """Inception-v3 of FID: images ``[B, 3, H, W]`` in [0, 1] → pool3 features ``[B, 2048]``.

    The network of pytorch-fid (``FIDInceptionA/C/E_1/E_2`` patches of torchvision's Inception3:
    average pools exclude padding, the last block max-pools; BatchNorm eps 1e-3; a 1008-way
    ``fc`` as in the TF graph, kept so the weights file loads strictly, unused for features).
    Preprocessing as pytorch-fid: bilinear resize to 299×299 (``align_corners=False``), then
    x ↦ 2x − 1. Parameter names match the weights file (``Conv2d_1a_3x3.conv.weight``, ...).
    Freshly constructed weights are PyTorch's default initialisation: useless for FID until
    :func:`load_inception` fills them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _Block35(192, 32)
        self.Mixed_5c = _Block35(256, 64)
        self.Mixed_5d = _Block35(288, 64)
        self.Mixed_6a = _Reduce35to17(288)
        self.Mixed_6b = _Block17(768, 128)
        self.Mixed_6c = _Block17(768, 160)
        self.Mixed_6d = _Block17(768, 160)
        self.Mixed_6e = _Block17(768, 192)
        self.Mixed_7a = _Reduce17to8(768)
        self.Mixed_7b = _Block8(1280, "avg")
        self.Mixed_7c = _Block8(2048, "max")
        self.fc = nn.Linear(2048, 1008)

    def pool3(self, x: Tensor) -> Tensor:
        """Network body on preprocessed input ``[B, 3, 299, 299]`` in [−1, 1] → ``[B, 2048]``."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, images: Tensor) -> Tensor:
        images = check_images("images", images, channels=3)
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        return self.pool3(2.0 * x - 1.0)


def inception_state_dict_spec() -> dict[str, tuple[int, ...]]:
    """Required keys of a pytorch-fid weights file and their shapes (``num_batches_tracked`` optional)."""
    return {
        k: tuple(v.shape)
        for k, v in InceptionV3Features().state_dict().items()
        if not k.endswith("num_batches_tracked")
    }



def _resolve_weights_path(path: str | os.PathLike | None) -> Path:
    how = (
        f"FID is not run here: it needs pytorch-fid's Inception weights ({INCEPTION_FILENAME}, about 95 MB), "
        f"which gracheck never downloads. Obtain the file on a machine with network access "
        f"(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILENAME}) "
        f"and pass its path (load_inception(path=...), or the report's option) or set ${INCEPTION_ENV_VAR}."
    )
    if path is None:
        env = os.environ.get(INCEPTION_ENV_VAR)
        if not env:
            raise InceptionWeightsUnavailable(f"no Inception weights file given. {how}")
        p, origin = Path(env).expanduser(), f"${INCEPTION_ENV_VAR}"
    else:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        p, origin = Path(path).expanduser(), "path"
    if not p.is_file():
        raise InceptionWeightsUnavailable(f"{origin}: {p} is not a file. {how}")
    return p


def _read_state_dict(p: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError,
            AttributeError, ImportError, KeyError, IndexError, TypeError) as e:
        raise ValueError(
            f"path: {p} is not a readable PyTorch weights file (truncated, corrupted, or not a "
            f"plain state dict; loaded with weights_only=True): {type(e).__name__}: {str(e)[:300]}"
        ) from e
    if not isinstance(obj, Mapping):
        raise ValueError(f"path: {p} holds a {type(obj).__name__}, expected a state dict (mapping name -> tensor)")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        raise ValueError(f"path: {p}: entries that are not (str -> Tensor): {bad[:10]}")
    return dict(obj)


def _check_state_dict(p: Path, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    spec = inception_state_dict_spec()
    missing = sorted(set(spec) - set(sd))
    unexpected = sorted(k for k in set(sd) - set(spec) if not k.endswith("num_batches_tracked"))
    shapes = sorted(f"{k}: {tuple(sd[k].shape)} (expected {spec[k]})" for k in set(spec) & set(sd)
                    if tuple(sd[k].shape) != spec[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {missing[:12]}{' ...' if len(missing) > 12 else ''}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {unexpected[:12]}{' ...' if len(unexpected) > 12 else ''}")
    if shapes:
        problems.append(f"{len(shapes)} mis-shaped: {shapes[:12]}{' ...' if len(shapes) > 12 else ''}")
    if problems:
        raise ValueError(f"path: {p} is not a pytorch-fid Inception-v3 state dict: " + "; ".join(problems))
    nonfloat = sorted(k for k in spec if not sd[k].is_floating_point())
    if nonfloat:
        raise ValueError(f"path: {p}: non-floating tensors for {nonfloat[:12]}")
    nonfinite = sorted(k for k in spec if not bool(torch.isfinite(sd[k]).all()))
    if nonfinite:
        raise ValueError(f"path: {p}: NaN/Inf values in {nonfinite[:12]}")
    return {k: sd[k] for k in spec}


def load_inception(
    path: str | os.PathLike | None = None, *, check_sha256: str = "warn", device: str | torch.device = "cpu"
) -> InceptionV3Features:
    """The FID Inception-v3 with weights from a local pytorch-fid file, in eval mode, gradients off.

    ``path``: the weights file; when None, ``$GRACHECK_INCEPTION_WEIGHTS``. Neither given, or not a
    file: :class:`InceptionWeightsUnavailable` (a FileNotFoundError) saying FID is "not run here"
    and how to supply the file. Nothing is downloaded.

    The file is read with ``torch.load(..., weights_only=True)`` (no code runs), then checked
    strictly: every key of the architecture present with its shape, no other keys (BatchNorm
    ``num_batches_tracked`` entries are accepted either way), floating and finite values. A
    truncated / corrupted / non-torch file, or a state dict that does not match: ValueError
    naming the path and listing the missing, unexpected and mis-shaped keys.

    ``check_sha256``: compare the file's SHA-256 with :data:`INCEPTION_SHA256`, the digest of the
    published file. ``"warn"`` (default): a mismatch warns (a re-saved copy can hold the same
    tensors, but its FID is then not traceable to the published weights); ``"error"``: ValueError;
    ``"ignore"``: skip. The result is stored in ``model.weights_info``.
    """
    if check_sha256 not in _HASH_POLICIES:
        raise ValueError(f"check_sha256: expected one of {_HASH_POLICIES}, got {check_sha256!r}")
    p = _resolve_weights_path(path)
    sd = _check_state_dict(p, _read_state_dict(p))
    info: dict[str, Any] = {"path": str(p), "bytes": p.stat().st_size, "sha256": None, "sha256_verified": None}
    if check_sha256 != "ignore":
        digest = file_digest(p)
        info["sha256"] = digest
        info["sha256_verified"] = digest == INCEPTION_SHA256
        if digest != INCEPTION_SHA256:
            msg = (f"path: {p} has SHA-256 {digest[:16]}..., not the published {INCEPTION_FILENAME} "
                   f"({INCEPTION_SHA256[:16]}...); its FID values may not be comparable with published ones")
            if check_sha256 == "error":
                raise ValueError(msg)
            warnings.warn(msg, stacklevel=2)
    model = InceptionV3Features()
    model.load_state_dict(sd, strict=False)  # strictness checked above; num_batches_tracked stays as built
    model.weights_info = info
    model.eval().requires_grad_(False)
    return model.to(device)


@torch.no_grad()
def inception_features(model: InceptionV3Features, images: Tensor, *, batch_size: int = 50) -> Tensor:
    """Pool3 features ``[N, 2048]`` (float64) of ``images [N, 3, H, W]`` in [0, 1], in batches."""
    if not isinstance(model, InceptionV3Features):
        raise TypeError(f"model: expected an InceptionV3Features, got {type(model).__name__}")
    check_positive_int("batch_size", batch_size)
    images = check_images("images", images, channels=3)
    model.eval()
    dev = next(model.parameters()).device
    out = [model(images[i:i + batch_size].to(dev, torch.float32)).to("cpu", torch.float64)
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


def inception_fid(
    images_a: Tensor,
    images_b: Tensor,
    *,
    weights: str | os.PathLike | None = None,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """FID between two image sets ``[N, 3, H, W]`` in [0, 1]: a dict, with ``status`` "ok" or "not run here".

    Without a weights file (``weights`` or ``$GRACHECK_INCEPTION_WEIGHTS``) the dict says
    ``{"metric": "fid", "status": "not run here", "value": None, "reason": ...}``; a file that is
    there but broken raises (ValueError), it is never reported as "not run".
    """
    check_images("images_a", images_a, channels=3)
    check_images("images_b", images_b, channels=3)
    try:
        model = load_inception(weights, device=device)
    except InceptionWeightsUnavailable as e:
        return {"metric": "fid", "status": "not run here", "value": None, "reason": str(e)}
    fa = inception_features(model, images_a, batch_size=batch_size)
    fb = inception_features(model, images_b, batch_size=batch_size)
    mu_a, c_a = fit_gaussian(fa)
    mu_b, c_b = fit_gaussian(fb)
    det = frechet_distance_details(mu_a, c_a, mu_b, c_b)
    return {
        "metric": "fid",
        "status": "ok",
        "value": det.value,
        "n_a": int(fa.shape[0]),
        "n_b": int(fb.shape[0]),
        "weights_sha256": model.weights_info["sha256"],
        "weights_sha256_verified": model.weights_info["sha256_verified"],
        "n_clamped": det.n_clamped,
    }
