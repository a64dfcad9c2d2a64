"""Files: the one atomic writer, the cache folder, a lock per cache entry, digests, the repository's state.

Everything gracheck writes that another process may read (results, checkpoints, cached models,
figures, downloads) goes through :func:`atomic_open` (or its two shorthands): the bytes go to a
temporary file beside the target, are flushed to disk, and replace the target in one rename, so
a reader sees the old file or the new one, never half of one; on an error the target is untouched.

Two processes sharing ``$GRACHECK_CACHE`` must not both compute the same entry:
:func:`entry_lock` holds an exclusive lock on ``<entry>.lock`` (``fcntl.flock``, released by the
kernel if the holder dies), and a caller re-checks the entry after acquiring it, so the second
process waits, then loads what the first one wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

# gracheck/base/files.py -> parents[2] is the folder holding pyproject.toml (the repository, or site-packages).
REPO_ROOT = Path(__file__).resolve().parents[2]


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path`` atomically.

    ``mode``: "wb" or "w" (text, UTF-8). The parent folder is created. If the block raises, the
    temporary file is removed and ``path`` keeps its previous content (or stays absent)::

        with atomic_open(dest) as f:
            f.write(chunk)            # raise inside the block to abandon the write
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy the file ``src`` to ``dst`` atomically (a reader of ``dst`` never sees a partial copy)."""
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def save_figure(fig, path: str | os.PathLike, **savefig_kw) -> Path:
    """Save a matplotlib figure to ``path`` atomically (rendered to memory, then one rename); returns the path."""
    import io

    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **savefig_kw)
    atomic_write_bytes(path, buf.getvalue())
    return path


def cache_dir() -> Path:
    """Where trained models, feature nets and experiment results are cached.

    ``$GRACHECK_CACHE`` when set, else ``$XDG_CACHE_HOME/gracheck`` or ``~/.cache/gracheck``.
    """
    env = os.environ.get("GRACHECK_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gracheck"


@contextlib.contextmanager
def entry_lock(
    entry: str | os.PathLike,
    *,
    timeout: float | None = None,
    on_wait: Callable[[str], None] | None = None,
    poll: float = 0.5,
) -> Iterator[Path]:
    """Hold an exclusive lock on the cache entry ``entry`` (a file or folder path) for the block.

    The lock is ``fcntl.flock`` on the file ``<entry>.lock`` beside it (created if needed, never
    removed, so two processes always lock the same inode). A second process blocks until the first
    leaves the block (or dies: the kernel releases the lock), calling ``on_wait`` once with a line
    saying what it waits for. ``timeout`` (seconds; None = wait as long as it takes) raises
    TimeoutError naming the lock file. Yields the lock file's path.
    """
    import fcntl

    entry = Path(entry)
    lock = entry.with_name(entry.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        t0 = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    on_wait(f"waiting for another process to finish {entry.name} (lock {lock})")
                told = True
                if timeout is not None and time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"entry: could not lock {lock} within {timeout:g} s") from None
                time.sleep(poll)
        try:
            yield lock
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes (read in 1 MiB chunks); ``algo`` any :mod:`hashlib` name."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit(repo: str | os.PathLike | None = None) -> str | None:
    """The repository's HEAD commit, with " (with uncommitted changes)" when tracked files differ; None
    outside a git checkout (an installed package) or when git is unavailable."""
    root = Path(repo) if repo is not None else REPO_ROOT
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        commit = head.stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
