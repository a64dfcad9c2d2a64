"""MNIST from the original IDX gz files (LeCun, Cortes, Burges), parsed and verified here.

IDX format (big-endian): images ``>IIII`` = magic 2051, count, rows, cols, then count*rows*cols
uint8 pixels; labels ``>II`` = magic 2049, count, then count uint8 labels. Each file is gzipped.

Every load checks the structure (gzip stream complete, magic, 28x28, image count = label count,
payload length exactly header + N*784 / header + N, labels in 0..9) and, unless ``verify="none"``,
the md5 against the sums published with torchvision (also in ``shared/data/README.md``).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gracheck.data import _paths

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
COUNTS = {"train": 60_000, "test": 10_000}
IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
ROWS = COLS = 28
# Where a location may hold the files: gracheck's layout, torchvision's layout, or the folder itself.
SUBDIRS = ("mnist", "MNIST/raw", "")
_VERIFY = ("auto", "always", "none")


def _check_split(split: str) -> str:
    if split not in FILES:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    return split


def has_mnist(d: Path, split: str) -> bool:
    """True when folder ``d`` holds both MNIST files of ``split``."""
    return all((d / f).is_file() for f in FILES[split])


def find_mnist(split: str = "train", root: str | PathLike | None = None) -> Path:
    """The folder holding the two files of ``split`` (first in search order; see ``_paths``)."""
    _check_split(split)
    return _paths.find_dataset_dir(
        SUBDIRS,
        lambda d: [f for f in FILES[split] if not (d / f).is_file()],
        root,
        f"MNIST {split}",
        FILES[split],
        hint="To fetch them (needs network): python -m gracheck.data --download mnist",
    )


def _gunzip(path: Path) -> tuple[bytes, bytes]:
    """(compressed bytes, decompressed bytes); ValueError for a truncated or corrupted gzip stream."""
    raw = path.read_bytes()
    try:
        return raw, gzip.decompress(raw)
    except EOFError as e:
        raise ValueError(
            f"{path}: truncated gzip file ({len(raw)} bytes on disk; the compressed stream ends "
            f"before its end-of-stream marker: {e}). Copy or download the file again."
        ) from None
    except (gzip.BadGzipFile, zlib.error, OSError) as e:
        raise ValueError(f"{path}: not a valid gzip file ({type(e).__name__}: {e})") from None


def _parse_images(path: Path, data: bytes) -> np.ndarray:
    if len(data) < 16:
        raise ValueError(f"{path}: IDX image header needs 16 bytes, the file holds {len(data)} bytes")
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != IMAGE_MAGIC:
        raise ValueError(
            f"{path}: bad magic number: expected {IMAGE_MAGIC} (0x{IMAGE_MAGIC:08x}, IDX uint8 3-D images), "
            f"found {magic} (0x{magic:08x}). Is this an MNIST images file?"
        )
    if (rows, cols) != (ROWS, COLS):
        raise ValueError(f"{path}: expected {ROWS}x{COLS} images, header says {rows}x{cols}")
    expected = 16 + n * rows * cols
    if len(data) != expected:
        raise ValueError(
            f"{path}: payload length mismatch: header says {n} images of {rows}x{cols}, i.e. "
            f"{expected} bytes uncompressed, found {len(data)} bytes "
            f"({'short: truncated' if len(data) < expected else 'extra trailing data'})"
        )
    return np.frombuffer(data, dtype=np.uint8, count=n * rows * cols, offset=16).reshape(n, rows, cols)


def _parse_labels(path: Path, data: bytes) -> np.ndarray:
    if len(data) < 8:
        raise ValueError(f"{path}: IDX label header needs 8 bytes, the file holds {len(data)} bytes")
    magic, n = struct.unpack(">II", data[:8])
    if magic != LABEL_MAGIC:
        raise ValueError(
            f"{path}: bad magic number: expected {LABEL_MAGIC} (0x{LABEL_MAGIC:08x}, IDX uint8 1-D labels), "
            f"found {magic} (0x{magic:08x}). Is this an MNIST labels file?"
        )
    if len(data) != 8 + n:
        raise ValueError(
            f"{path}: payload length mismatch: header says {n} labels, i.e. {8 + n} bytes "
            f"uncompressed, found {len(data)} bytes"
        )
    labels = np.frombuffer(data, dtype=np.uint8, count=n, offset=8)
    if n and int(labels.max()) > 9:
        bad = int(np.argmax(labels > 9))
        raise ValueError(f"{path}: labels must be in 0..9, found {int(labels[bad])} at index {bad}")
    return labels


def load_mnist(
    split: str = "train", root: str | PathLike | None = None, *, verify: str = "auto"
) -> tuple[Tensor, Tensor]:
    """MNIST images and labels, parsed from the original IDX gz files.

    Args:
        split: ``"train"`` (60,000 examples) or ``"test"`` (10,000).
        root: folder holding the files (``root/mnist/``, ``root/MNIST/raw/`` or ``root/`` itself);
            only this folder is searched when given. Default: ``$GRACHECK_DATA`` alone when it is
            set, else ``../shared/data``, then the user cache.
        verify: ``"auto"``: structural checks plus md5, the md5 computed once per process per
            file state (path, size, mtime); ``"always"``: recompute the md5 every call;
            ``"none"``: structural checks only (for a file in MNIST's format that is not MNIST).

    Returns:
        images ``uint8 [N, 28, 28]`` (0 = background, 255 = ink) and labels ``int64 [N]`` in 0..9.

    Raises:
        FileNotFoundError: the files are in none of the places searched (all listed).
        ValueError: a truncated/corrupted gzip, bad magic, wrong dims, counts that disagree,
            a payload of the wrong length, labels outside 0..9, or an md5 mismatch.
    """
    _check_split(split)
    if verify not in _VERIFY:
        raise ValueError(f"verify: expected one of {_VERIFY}, got {verify!r}")
    folder = find_mnist(split, root)
    img_name, lbl_name = FILES[split]
    img_path, lbl_path = folder / img_name, folder / lbl_name

    raw_i, data_i = _gunzip(img_path)
    images = _parse_images(img_path, data_i)
    raw_l, data_l = _gunzip(lbl_path)
    labels = _parse_labels(lbl_path, data_l)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"MNIST {split}: image and label counts differ: {img_path} holds {images.shape[0]} "
            f"images, {lbl_path} holds {labels.shape[0]} labels"
        )
    if verify != "none":
        _paths.check_md5(img_path, MD5[img_name], raw_i, force=verify == "always")
        _paths.check_md5(lbl_path, MD5[lbl_name], raw_l, force=verify == "always")
    for path, raw in ((img_path, raw_i), (lbl_path, raw_l)):  # the sums just verified (cached), for the record
        if verify == "none":
            _paths.note_file(path, None, None, verify="none")
        else:
            _paths.note_file(path, "md5", _paths.cached_digest(path, "md5", raw))
    # The arrays view immutable bytes: copy into writable tensors the caller owns.
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def mnist_images(
    split: str = "train",
    root: str | PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    limit: int | None = None,
) -> tuple[Tensor, Tensor]:
    """MNIST ready for training: images ``[N, 1, 28, 28]`` in [0, 1] (pixel / 255) and labels ``int64 [N]``.

    ``limit``: keep the first ``limit`` examples (in file order). ``dtype``: a floating dtype.
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating torch dtype, got {dtype!r}")
    limit = _check_limit(limit)
    images, labels = load_mnist(split, root)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images.unsqueeze(1).to(dtype).div_(255.0), labels


def _check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit: expected an int or None, got {type(limit).__name__}")
    if limit <= 0:
        raise ValueError(f"limit: must be > 0, got {limit}")
    return limit
