"""CelebA (aligned faces) from a zip of JPEGs or a folder of JPEGs, plus the official split file.

Sources accepted, in this order of preference within a location's ``celeba/`` folder:
``img_align_celeba.zip`` (official, 202,599 JPEGs of 178x218 under ``img_align_celeba/``), a
folder ``img_align_celeba/`` of JPEGs, or the shipped subset ``img_align_celeba_89x109_first10k.zip``
(ids 000001-010000, all in the train split, at half resolution 89x109 under
``img_align_celeba_89x109/``). Any resolution works: the crop scales with the width.

Archives are read in memory, member by member (zipfile checks each member's CRC-32); nothing
is extracted to disk, and an archive with an absolute or ``..`` member name is refused whole.

Preprocessing (the paper's 64x64, the usual "crop 148x148 of 178x218 then resize to 64"):
a centred square of side ``round(148/178 * width)`` (148 px at width 178, 74 px at width 89) is
cropped with torchvision's ``CenterCrop`` convention (offsets ``int(round((W - side) / 2))``,
Python's round-half-to-even: 15, 35 at 178x218; 8, 18 at 89x109), then resized to
``size x size`` by Pillow's ``Image.resize(..., Resampling.BILINEAR)``, which is what
torchvision's ``Resize`` does on PIL images. Pillow's bilinear filter is antialiased when
reducing (its support widens with the scale factor: a triangle filter over the source
pixels), so this is the "bilinear + antialias" resize. Crop first, then resize: the edge
pixels see only the cropped square.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from gracheck.base.validate import check_positive_int
from gracheck.data import _paths

SPLIT_FILE = "list_eval_partition.txt"
SPLIT_MD5 = "d32c9cbf5e040fd4025c592c306e6668"
SPLIT_ROWS = 202_599
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
SPLIT_COUNTS = {"train": 162_770, "valid": 19_867, "test": 19_962}
SPLIT_ALIASES = {"val": "valid", "validation": "valid"}

OFFICIAL_ZIP = "img_align_celeba.zip"
OFFICIAL_ZIP_MD5 = "00d2c5bc6d35e252742224ab0c1e8fcb"  # as published with torchvision
OFFICIAL_DIR = "img_align_celeba"
SUBSET_ZIP = "img_align_celeba_89x109_first10k.zip"
SUBSET_ZIP_SHA256 = "d9340ad7c568ed3986eabb27d66a186b9ed3d6071b725128cdc5de8a94e6d4ff"  # shared/data/SHA256SUMS
ARCHIVES = (OFFICIAL_ZIP, OFFICIAL_DIR, SUBSET_ZIP)  # preference order within a location
SUBDIRS = ("celeba", "")

OFFICIAL_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
CROP_FRACTION = 148 / 178
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
MAX_MEMBER_BYTES = 64 << 20  # an aligned CelebA JPEG is ~10 KB; refuse anything absurd
_VERIFY = ("auto", "none")

HOW_TO_GET_FULL = (
    f"The full aligned set is {OFFICIAL_ZIP} (202,599 JPEGs of 178x218, md5 {OFFICIAL_ZIP_MD5}) "
    f"from the official CelebA page {OFFICIAL_URL} (Google Drive, 'Align&Cropped Images'). "
    f"Put it beside {SPLIT_FILE} in <data>/celeba/, or pass archive=<path to the zip or an unpacked folder>."
)


# --------------------------------------------------------------------------------------------
# Locating files


def _has_archive(d: Path) -> Path | None:
    for name in ARCHIVES:
        p = d / name
        if (p.is_dir() if name == OFFICIAL_DIR else p.is_file()):
            return p
    return None


def has_celeba(d: Path) -> bool:
    """True when folder ``d`` holds the CelebA split file and an image archive (zip or unpacked folder)."""
    return (d / SPLIT_FILE).is_file() and _has_archive(d) is not None


def _celeba_missing(d: Path) -> list[str]:
    lacks = [] if (d / SPLIT_FILE).is_file() else [SPLIT_FILE]
    if _has_archive(d) is None:
        lacks.append("one of " + " / ".join(ARCHIVES))
    return lacks


def find_celeba(root: str | PathLike | None = None) -> tuple[Path, Path]:
    """(image archive, split file) from the first location in search order holding both."""
    d = _paths.find_dataset_dir(
        SUBDIRS,
        _celeba_missing,
        root,
        "CelebA",
        [SPLIT_FILE + " and one of " + " / ".join(ARCHIVES)],
        hint=HOW_TO_GET_FULL,
    )
    return _has_archive(d), d / SPLIT_FILE  # type: ignore[return-value]


def find_split_file(root: str | PathLike | None = None) -> Path:
    d = _paths.find_dataset_dir(
        SUBDIRS, lambda d: [] if (d / SPLIT_FILE).is_file() else [SPLIT_FILE], root, "CelebA split file", [SPLIT_FILE]
    )
    return d / SPLIT_FILE


# --------------------------------------------------------------------------------------------
# The split file

_split_cache: dict[tuple, list[tuple[str, int]]] = {}


def _parse_split_rows(path: Path, text: str, strict: bool) -> list[tuple[str, int]]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            if strict:
                raise ValueError(f"{path}:{lineno}: expected '<image id> <0|1|2>', found {line!r}")
            continue
        rows.append((parts[0], int(parts[1])))
    return rows


def read_split_file(path: str | PathLike, *, verify: str = "auto") -> list[tuple[str, int]]:
    """``[(image file name, partition 0/1/2), ...]`` in file order, verified (md5 and 202,599 rows).

    A copy whose CRLF endings were turned into LF (e.g. by git) is accepted when its content
    with CRLF restored has the published md5.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CelebA split file not found: {path}")
    key = _paths._stat_key(path, "split")
    if key in _split_cache:
        _note_split(path, verify)
        return _split_cache[key]
    raw = path.read_bytes()
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not an ASCII CelebA split file ({e})") from None
    if verify != "none":
        actual = _paths.cached_digest(path, "md5", raw)
        if actual != SPLIT_MD5:
            crlf = hashlib.md5(re.sub(rb"\r?\n", b"\r\n", raw)).hexdigest()
            if crlf != SPLIT_MD5:
                n = len(_parse_split_rows(path, text, strict=False))
                raise ValueError(
                    f"{path}: not the official CelebA split file: expected {SPLIT_ROWS:,} rows "
                    f"and md5 {SPLIT_MD5}, found {n:,} well-formed rows, md5 {actual}, "
                    f"{len(raw):,} bytes. The file is truncated or modified; copy it again "
                    f"(official source: {OFFICIAL_URL}, Eval/{SPLIT_FILE})."
                )
    rows = _parse_split_rows(path, text, strict=True)
    _split_cache[key] = rows
    _note_split(path, verify, raw)
    return rows


def _note_split(path: Path, verify: str, raw: bytes | None = None) -> None:
    if verify == "none":
        _paths.note_file(path, None, None, verify="none")
    else:  # the md5 just verified (cached per file state)
        _paths.note_file(path, "md5", _paths.cached_digest(path, "md5", raw))


def celeba_split_counts(root: str | PathLike | None = None) -> dict[str, int]:
    """Images per split from the (verified) official split file: ``{"train", "valid", "test"}``.

    The official file gives 162,770 / 19,867 / 19,962.
    """
    rows = read_split_file(find_split_file(root))
    counts = {k: 0 for k in SPLIT_CODES}
    names = {v: k for k, v in SPLIT_CODES.items()}
    for _, code in rows:
        counts[names[code]] += 1
    return counts


# --------------------------------------------------------------------------------------------
# Image sources: zip or folder


def _unsafe(name: str) -> bool:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return True
    return ".." in re.split(r"[/\\]", name)


class _Source:
    """Images of a zip archive or a folder, keyed by file stem ("000001")."""

    def __init__(self, path: Path):
        self.path = path
        self.members: dict[str, object] = {}
        if path.is_dir():
            self._zip = None
            for p in path.iterdir():
                if p.suffix.lower() in IMAGE_EXTS and p.is_file():
                    self._add(p.stem, p, p.name)
        else:
            try:
                self._zip = zipfile.ZipFile(path)
            except zipfile.BadZipFile as e:
                raise ValueError(f"{path}: not a valid zip archive ({e}); the file is truncated or corrupted") from None
            infos = self._zip.infolist()
            for info in infos:
                if _unsafe(info.filename):
                    self._zip.close()
                    raise ValueError(
                        f"{path}: unsafe member name {info.filename!r} (an absolute path or a '..' "
                        "component); refusing to read this archive"
                    )
            for info in infos:
                if info.is_dir():
                    continue
                stem, ext = os.path.splitext(PurePosixPath(info.filename.replace("\\", "/")).name)
                if ext.lower() not in IMAGE_EXTS:
                    continue
                if info.file_size > MAX_MEMBER_BYTES:
                    raise ValueError(
                        f"{path}: member {info.filename!r} is {info.file_size:,} bytes uncompressed; "
                        "not a CelebA image, refusing to read it"
                    )
                self._add(stem, info, info.filename)

    def _add(self, stem: str, key: object, shown: str) -> None:
        if stem in self.members:
            raise ValueError(f"{self.path}: two images named {stem!r} (one is {shown!r}); ambiguous archive")
        self.members[stem] = key

    def read(self, stem: str) -> bytes:
        key = self.members[stem]
        try:
            if self._zip is None:
                return Path(key).read_bytes()  # type: ignore[arg-type]
            return self._zip.read(key)  # type: ignore[arg-type]
        except (zipfile.BadZipFile, OSError, zlib.error) as e:
            raise ValueError(f"{self.path}: cannot read image {stem!r}: {e}") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


# --------------------------------------------------------------------------------------------
# Decoding


def crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centred square (left, top, right, bottom) of side round(148/178 * width), torchvision's offsets."""
    side = min(round(CROP_FRACTION * width), width, height)
    left, top = int(round((width - side) / 2.0)), int(round((height - side) / 2.0))
    return (left, top, left + side, top + side)


def preprocess(img, size: int = 64) -> np.ndarray:
    """A PIL image -> ``uint8 [3, size, size]``: centre crop, then bilinear (antialiased) resize."""
    from PIL import Image

    img = img.convert("RGB")
    out = img.crop(crop_box(*img.size)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)


def _decode(data: bytes, size: int, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return preprocess(img, size)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from None


def _chunks(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _archive_digest(path: Path) -> tuple[str, str]:
    """(algorithm, hex digest) of an image archive: the published sum's algorithm for the two known names
    (md5 for the official zip, SHA-256 for the shipped subset), SHA-256 for any other zip; cached."""
    algo = "md5" if path.name == OFFICIAL_ZIP else "sha256"
    return algo, _paths.cached_digest(path, algo)


def _check_archive_digest(path: Path) -> None:
    if path.is_dir():
        return
    if path.name not in (SUBSET_ZIP, OFFICIAL_ZIP):
        return
    algo, actual = _archive_digest(path)
    expected = SUBSET_ZIP_SHA256 if path.name == SUBSET_ZIP else OFFICIAL_ZIP_MD5
    if actual != expected:
        raise ValueError(
            f"{path}: checksum mismatch: expected {algo} {expected}, found {actual}. The archive is "
            "corrupted or not the original (pass verify='none' to read a repacked copy anyway)."
        )


def load_celeba(
    split: str = "train",
    root: str | PathLike | None = None,
    *,
    size: int = 64,
    limit: int | None = None,
    archive: str | PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    verify: str = "auto",
    workers: int | None = None,
) -> Tensor:
    """CelebA aligned faces, centre-cropped and resized: ``[N, 3, size, size]`` in [0, 1].

    Args:
        split: ``"train"``, ``"valid"`` (alias ``"val"``), ``"test"``: the ids of that partition in
            ``list_eval_partition.txt`` that are present in the archive, in file order; or
            ``"all"``: every image in the archive, sorted by file name.
        root: data folder (``root/celeba/`` or ``root/``); only this one is searched when given.
        size: output side in pixels (the paper uses 64).
        limit: keep the first ``limit`` images of the split.
        archive: a zip of JPEGs or a folder of JPEGs to read instead of the one found under the
            data folder. The split file is then taken from beside it, else from the search path.
        dtype: a floating dtype (values in [0, 1]) or ``torch.uint8`` (values 0..255).
        verify: ``"auto"``: the split file's md5 and, for the two known archive names (the shipped
            subset, the official zip), the whole archive's digest, once per process per file state;
            zip members are always CRC-checked as read. ``"none"``: skip the digests.
        workers: decoding threads (default: up to 8, one per CPU). Pillow releases the GIL.

    Raises:
        FileNotFoundError: no archive / split file found (every place searched is listed).
        ValueError: a split with no image in the archive (the shipped subset holds only the first
            10,000 train images), a truncated/modified split file, a corrupt or unsafe archive.
    """
    split = SPLIT_ALIASES.get(split, split)
    if split not in (*SPLIT_CODES, "all"):
        raise ValueError(f"split: expected 'train', 'valid', 'test' or 'all', got {split!r}")
    check_positive_int("size", size)
    if limit is not None:
        check_positive_int("limit", limit)
    if not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype == torch.uint8):
        raise TypeError(f"dtype: expected a floating torch dtype or torch.uint8, got {dtype!r}")
    if verify not in _VERIFY:
        raise ValueError(f"verify: expected one of {_VERIFY}, got {verify!r}")

    split_path: Path | None = None
    if archive is not None:
        src_path = Path(archive).expanduser()
        if not src_path.exists():
            raise FileNotFoundError(f"archive: {src_path} does not exist. {HOW_TO_GET_FULL}")
        if split != "all":
            beside = src_path.parent / SPLIT_FILE
            split_path = beside if beside.is_file() else find_split_file(root)
    else:
        src_path, split_path = find_celeba(root)
    if verify != "none":
        _check_archive_digest(src_path)

    src = _Source(src_path)
    if src_path.is_dir():  # a folder of JPEGs: no digest (hashing 200k files is not cheap); its size is noted
        _paths.note_file(src_path, None, None, images=len(src.members))
    elif verify == "none":
        _paths.note_file(src_path, None, None, verify="none")
    else:  # the digest just verified for the two known names (cached); SHA-256 for another zip
        _paths.note_file(src_path, *_archive_digest(src_path))
    try:
        if split == "all":
            stems = sorted(src.members)
        else:
            assert split_path is not None
            rows = read_split_file(split_path, verify=verify)
            code = SPLIT_CODES[split]
            stems = [s for s in (os.path.splitext(n)[0] for n, c in rows if c == code) if s in src.members]
            if not stems:
                present = sum(1 for n, c in rows if os.path.splitext(n)[0] in src.members)
                raise ValueError(
                    f"CelebA split {split!r}: none of its {SPLIT_COUNTS[split]:,} images is in {src_path} "
                    f"({len(src.members):,} images, {present:,} of them listed in {split_path.name}). "
                    "The shipped subset contains only the first 10,000 train images "
                    f"(000001.jpg-010000.jpg), so only split='train' or 'all' work with it. {HOW_TO_GET_FULL}"
                )
        if not stems:
            raise ValueError(f"{src_path}: no images (*.jpg, *.jpeg, *.png) found")
        if limit is not None:
            stems = stems[:limit]
        out = np.empty((len(stems), 3, size, size), dtype=np.uint8)
        n_workers = workers or min(8, os.cpu_count() or 1)
        where = lambda s: f"{src_path} [{s}]"  # noqa: E731
        if n_workers <= 1:
            for i, s in enumerate(stems):
                out[i] = _decode(src.read(s), size, where(s))
        else:
            with ThreadPoolExecutor(n_workers) as pool:
                i = 0
                for chunk in _chunks(stems, 1024):
                    blobs = [src.read(s) for s in chunk]  # sequential reads of the shared file
                    for arr in pool.map(lambda a: _decode(a[0], size, where(a[1])), zip(blobs, chunk)):
                        out[i] = arr
                        i += 1
    finally:
        src.close()
    t = torch.from_numpy(out)
    if dtype == torch.uint8:
        return t
    return t.to(dtype).div_(255.0)
