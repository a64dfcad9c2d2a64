"""Where the real data sets live, and checksums of what is read.

Where a data set is looked for:

1. the explicit ``root`` argument (``--data-root`` on the command lines), when one is given;
2. else ``$GRACHECK_DATA``, when it is set to a non-empty value;
3. else ``../shared/data`` beside the repository (the folder holding ``pyproject.toml``), then
   the user cache, ``$XDG_CACHE_HOME/gracheck/data`` or ``~/.cache/gracheck/data`` (where
   :func:`gracheck.data.download` writes by default), in that order.

A folder the caller names (1 or 2) is the *only* place looked: it is never silently replaced by
another copy. When it does not exist, is empty, or lacks a data set's files, the error names it,
says how it was chosen and lists what is missing in each sub-folder looked at.

Within a location a data set may sit in its usual sub-folder (``mnist/``, ``celeba/``) or
directly in the location itself. Error messages for missing files list every place searched.

What was read is recorded: :func:`record_reads` collects, for the block it wraps, every data set
folder chosen (and how) and every file read with the checksum its loader verified (md5 or
SHA-256, from the per-(path, size, mtime) cache below, so recording costs no extra hashing).
The trainer stores that record in ``result.json`` and the experiments in their ExperimentResult.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import Callable, Sequence

from gracheck.base.files import REPO_ROOT

ENV_VAR = "GRACHECK_DATA"

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

ROOT_ARG = "root argument"
ENV_LABEL = f"${ENV_VAR}"


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gracheck/data``, or ``~/.cache/gracheck/data`` when XDG_CACHE_HOME is unset."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "gracheck" / "data"


def candidate_roots(root: str | PathLike | None = None) -> list[tuple[str, Path]]:
    """The places searched, in order, each as ``(how it was chosen, path)``.

    One place when the caller named one (``root``, else a non-empty ``$GRACHECK_DATA``); else
    ``../shared/data`` and the user cache.
    """
    if root is not None:
        return [(ROOT_ARG, Path(root).expanduser())]
    env = os.environ.get(ENV_VAR)
    if env:
        return [(ENV_LABEL, Path(env).expanduser())]
    return [("repository ../shared/data", SHARED_DATA), ("user cache", user_cache_dir())]


def is_explicit(label: str) -> bool:
    """True for a place the caller named (the root argument or ``$GRACHECK_DATA``)."""
    return label in (ROOT_ARG, ENV_LABEL)


def _named(label: str, loc: Path) -> str:
    """How to name an explicitly chosen place in a message: ``$GRACHECK_DATA=/x`` or ``root argument /x``."""
    return f"{ENV_LABEL}={loc}" if label == ENV_LABEL else f"{label} {loc}"


def check_explicit_root(label: str, loc: Path) -> None:
    """FileNotFoundError / NotADirectoryError when an explicitly named place is not a folder."""
    if not is_explicit(label):
        return
    if not loc.exists():
        raise FileNotFoundError(
            f"{_named(label, loc)}: no such folder. It is the only place searched when given"
            + (f"; unset {ENV_VAR} to use ../shared/data or the user cache" if label == ENV_LABEL else "")
            + "."
        )
    if not loc.is_dir():
        raise NotADirectoryError(f"{_named(label, loc)}: not a folder (it is the only place searched when given)")


def _describe(d: Path, missing: list[str]) -> str:
    """What folder ``d`` lacks, for an error message."""
    if not d.exists():
        return "no such folder"
    if not d.is_dir():
        return "not a folder"
    try:
        empty = not any(d.iterdir())
    except OSError as e:
        return f"cannot be listed: {e.strerror}"
    return "empty folder" if empty else "missing " + ", ".join(missing)


def find_dataset_dir(
    subdirs: Sequence[str],
    missing: Callable[[Path], list[str]],
    root: str | PathLike | None,
    what: str,
    expected: Sequence[str],
    hint: str = "",
) -> Path:
    """The first ``location/subdir`` (in search order) where ``missing(folder)`` is empty.

    ``missing(folder)``: what of ``expected`` the folder lacks (file names, or a phrase such as
    "one of a.zip / b/"). Records the folder chosen (:func:`record_reads`). Raises
    FileNotFoundError listing every place searched, how it was chosen and what each one lacks;
    for an explicitly named place (root argument, ``$GRACHECK_DATA``) the message leads with it.
    """
    searched: list[str] = []
    places = candidate_roots(root)
    for label, loc in places:
        check_explicit_root(label, loc)
        for sub in subdirs:
            d = loc / sub if sub else loc
            lacks = missing(d)
            if not lacks:
                _note_folder(d, label)
                return d
            searched.append(f"  {d}  ({label}{', ' + sub + '/' if sub else ''}: {_describe(d, lacks)})")
    label0, loc0 = places[0]
    if is_explicit(label0):
        msg = (
            f"{what}: files not found in {_named(label0, loc0)}, the only place searched when given. "
            f"Expected {', '.join(expected)} in one of:\n" + "\n".join(searched)
        )
        if label0 == ENV_LABEL:
            msg += f"\nPoint ${ENV_VAR} at the folder holding the data, or unset {ENV_VAR} to use ../shared/data or the user cache."
    else:
        msg = (
            f"{what}: files not found. Expected {', '.join(expected)} in one of these places "
            f"(searched in this order):\n" + "\n".join(searched)
            + f"\nPass root=..., or set ${ENV_VAR} to the folder holding the data."
        )
    if hint:
        msg += "\n" + hint
    raise FileNotFoundError(msg)


# ---------------------------------------------------------------------------------------------
# Checksums, cached in-process per (real path, size, mtime) so repeated loads do not re-hash.

_digest_cache: dict[tuple[str, str, int, int], str] = {}
_digest_lock = threading.Lock()


def _stat_key(path: Path, algo: str) -> tuple[str, str, int, int]:
    st = path.stat()
    return (algo, str(path.resolve()), st.st_size, st.st_mtime_ns)


def cached_digest(path: str | PathLike, algo: str = "md5", data: bytes | None = None) -> str:
    """Hex digest of a file, cached per (path, size, mtime). ``data``: the file's bytes if already read."""
    path = Path(path)
    key = _stat_key(path, algo)
    with _digest_lock:
        hit = _digest_cache.get(key)
    if hit is not None:
        return hit
    if data is not None:
        digest = hashlib.new(algo, data).hexdigest()
    else:
        h = hashlib.new(algo)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
    with _digest_lock:
        _digest_cache[key] = digest
    return digest


def is_digest_cached(path: str | PathLike, algo: str = "md5") -> bool:
    try:
        key = _stat_key(Path(path), algo)
    except OSError:
        return False
    with _digest_lock:
        return key in _digest_cache


def clear_cache() -> None:
    """Forget every cached checksum (tests; or after editing files in place within one mtime tick)."""
    with _digest_lock:
        _digest_cache.clear()


# ---------------------------------------------------------------------------------------------
# What was read: the folders chosen and the files read, with the checksums the loaders verified.


class DataReads:
    """What the data loaders chose and read inside one :func:`record_reads` block.

    ``folders``: ``{data set folder: how it was chosen}`` (e.g. ``"$GRACHECK_DATA"``,
    ``"repository ../shared/data"``); ``files``: ``{file path: {"md5" or "sha256": hex digest,
    "bytes": size}}`` (a folder of images read as an archive has ``"images": n`` and no digest).
    """

    def __init__(self) -> None:
        self.folders: dict[str, str] = {}
        self.files: dict[str, dict] = {}

    def to_dict(self) -> dict:
        """``{"folders": {...}, "files": {...}}``, JSON-ready (what result.json and ExperimentResult hold)."""
        return {"folders": dict(self.folders), "files": {k: dict(v) for k, v in self.files.items()}}


_recorders: list[DataReads] = []


@contextlib.contextmanager
def record_reads() -> Iterator[DataReads]:
    """Collect the data folders chosen and the files read (with their checksums) inside the block.

    Blocks nest: a read is noted in every open record. Use ``rec.to_dict()`` after the block::

        with record_reads() as rec:
            x, _ = load_mnist("test")
        rec.to_dict()   # {"folders": {".../mnist": "repository ../shared/data"}, "files": {...: {"md5": ...}}}
    """
    rec = DataReads()
    with _digest_lock:
        _recorders.append(rec)
    try:
        yield rec
    finally:
        with _digest_lock:
            _recorders.remove(rec)


def _note_folder(folder: Path, label: str) -> None:
    with _digest_lock:
        for rec in _recorders:
            rec.folders.setdefault(os.path.abspath(folder), label)


def note_file(path: Path, algo: str | None, digest: str | None, **extra) -> None:
    """Note in every open record that ``path`` was read, with its ``algo`` digest (None: none computed)."""
    entry: dict = {algo: digest} if algo else {}
    try:
        entry["bytes"] = path.stat().st_size if path.is_file() else None
    except OSError:
        entry["bytes"] = None
    entry.update(extra)
    with _digest_lock:
        for rec in _recorders:
            rec.files[os.path.abspath(path)] = dict(entry)


def note_reads(record: dict | None) -> None:
    """Add a record made earlier (``DataReads.to_dict()``, e.g. from a cached model's result.json) to every
    open record: what a cached result was computed from counts as read by whoever reuses it."""
    if not isinstance(record, dict):
        return
    folders, files = record.get("folders"), record.get("files")
    with _digest_lock:
        for rec in _recorders:
            if isinstance(folders, dict):
                for k, v in folders.items():
                    rec.folders.setdefault(str(k), str(v))
            if isinstance(files, dict):
                for k, v in files.items():
                    if isinstance(v, dict):
                        rec.files.setdefault(str(k), dict(v))


def check_md5(path: Path, expected: str, data: bytes | None = None, *, force: bool = False) -> None:
    """Raise ValueError naming the path and both sums when the file's md5 is not ``expected``."""
    if force:
        key = _stat_key(path, "md5")
        with _digest_lock:
            _digest_cache.pop(key, None)
    actual = cached_digest(path, "md5", data)
    if actual != expected:
        raise ValueError(
            f"{path}: checksum mismatch: expected md5 {expected}, found {actual} "
            f"(size {path.stat().st_size} bytes). The file is corrupted or not the original; "
            "delete it and copy or download it again."
        )


def sums_file(root: str | PathLike | None = None) -> Path:
    """The ``SHA256SUMS`` file of the first place in search order that has one (only the named place when
    one is named: root argument or ``$GRACHECK_DATA``); FileNotFoundError naming the places otherwise."""
    places = candidate_roots(root)
    for label, loc in places:
        check_explicit_root(label, loc)
        if (loc / "SHA256SUMS").is_file():
            return loc / "SHA256SUMS"
    raise FileNotFoundError("SHA256SUMS not found; searched: " + ", ".join(
        f"{loc / 'SHA256SUMS'} ({label})" for label, loc in places))


def verify_sha256(root: str | PathLike | None = None) -> dict[str, dict]:
    """Check every file listed in ``SHA256SUMS`` (the shipped ``shared/data/SHA256SUMS``).

    ``root``: a folder holding ``SHA256SUMS``; by default the first location in search order
    that has one (:func:`sums_file`). Returns ``{relative path: {"path", "expected", "actual",
    "ok"}}``; a missing file has ``actual=None, ok=False``. Raises FileNotFoundError when no
    SHA256SUMS is found.
    """
    sums = sums_file(root)
    out: dict[str, dict] = {}
    for lineno, line in enumerate(sums.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise ValueError(f"{sums}:{lineno}: not a 'sha256  path' line: {line!r}")
        expected, rel = parts[0].lower(), parts[1].lstrip("*")
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"{sums}:{lineno}: refusing path outside the data folder: {rel!r}")
        p = sums.parent / rel
        actual = cached_digest(p, "sha256") if p.is_file() else None
        out[rel] = {"path": str(p), "expected": expected, "actual": actual, "ok": actual == expected}
    return out
