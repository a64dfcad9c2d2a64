"""Where the real data sets live, and checksums of what is read.

Search order for every data set (the first location holding the data set's files wins):

1. the explicit ``root`` argument, when one is given (then it is the *only* place searched:
   a path the caller names is never silently replaced by another copy);
2. ``$GRACHECK_DATA``;
3. ``../shared/data`` beside the repository (the folder holding ``pyproject.toml``);
4. the user cache, ``$XDG_CACHE_HOME/gracheck/data`` or ``~/.cache/gracheck/data``
   (where :func:`gracheck.data.download` writes by default).

Within a location a data set may sit in its usual sub-folder (``mnist/``, ``celeba/``) or
directly in the location itself. Error messages for missing files list every place searched.
"""

from __future__ import annotations

import hashlib
import os
import threading
from os import PathLike
from pathlib import Path
from typing import Callable, Sequence

from gracheck.base.files import REPO_ROOT

ENV_VAR = "GRACHECK_DATA"

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gracheck/data``, or ``~/.cache/gracheck/data`` when XDG_CACHE_HOME is unset."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "gracheck" / "data"


def candidate_roots(root: str | PathLike | None = None) -> list[tuple[str, Path]]:
    """The places searched, in order, each as ``(how it was chosen, path)``."""
    if root is not None:
        return [("root argument", Path(root).expanduser())]
    out: list[tuple[str, Path]] = []
    env = os.environ.get(ENV_VAR)
    if env:
        out.append((f"${ENV_VAR}", Path(env).expanduser()))
    out.append(("repository ../shared/data", SHARED_DATA))
    out.append(("user cache", user_cache_dir()))
    return out


def find_dataset_dir(
    subdirs: Sequence[str],
    qualifies: Callable[[Path], bool],
    root: str | PathLike | None,
    what: str,
    expected: Sequence[str],
    hint: str = "",
) -> Path:
    """The first ``location/subdir`` (in search order) for which ``qualifies`` is true.

    Raises FileNotFoundError listing every place searched and the files expected there.
    """
    searched: list[str] = []
    for label, loc in candidate_roots(root):
        for sub in subdirs:
            d = loc / sub if sub else loc
            if qualifies(d):
                return d
            searched.append(f"  {d}  ({label}{', ' + sub + '/' if sub else ''})")
    msg = (
        f"{what}: files not found. Expected {', '.join(expected)} in one of these places "
        f"(searched in this order):\n" + "\n".join(searched)
    )
    if root is None:
        msg += f"\nPass root=..., or set ${ENV_VAR} to the folder holding the data."
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


def verify_sha256(root: str | PathLike | None = None) -> dict[str, dict]:
    """Check every file listed in ``SHA256SUMS`` (the shipped ``shared/data/SHA256SUMS``).

    ``root``: a folder holding ``SHA256SUMS``; by default the first location in search order
    that has one. Returns ``{relative path: {"path", "expected", "actual", "ok"}}``; a missing
    file has ``actual=None, ok=False``. Raises FileNotFoundError when no SHA256SUMS is found.
    """
    places = [loc for _, loc in candidate_roots(root)]
    sums = next((p / "SHA256SUMS" for p in places if (p / "SHA256SUMS").is_file()), None)
    if sums is None:
        raise FileNotFoundError(
            "SHA256SUMS not found; searched: " + ", ".join(str(p / "SHA256SUMS") for p in places)
        )
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
