"""Files: the one atomic writer, the cache folder, the one lock (run folders, cache entries), digests, the
repository's state.

Everything gracheck writes that another process may read (results, checkpoints, cached models,
figures, downloads) goes through :func:`atomic_open` (or its two shorthands): the bytes go to a
temporary file beside the target, are flushed to disk, and replace the target in one rename, so
a reader sees the old file or the new one, never half of one; on an error the target is untouched.

One owner at a time: :class:`FolderLock` is the project's one lock (``fcntl.flock`` on a lock file
holding the owner's pid, host and start time, released by the kernel if the holder dies; a dead
owner's file is taken over with a warning). The trainer holds ``OUT/train.lock`` and refuses a
second trainer; two processes sharing ``$GRACHECK_CACHE`` must not both compute the same entry, so
:func:`entry_lock` waits on ``<entry>.lock`` and the caller re-checks the entry after acquiring
it: the second process waits, then loads what the first one wrote.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

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


def cache_key(parts: object) -> str:
    """The key of a cache entry: the first 16 hex digits of the SHA-256 of ``parts`` as JSON with sorted keys
    (values JSON cannot hold are written as ``str``). Every input that changes the entry's content belongs
    in ``parts`` (e.g. the full config and gracheck's version)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_terminal(stream: object) -> bool:
    """True when ``stream`` is a terminal (a live display may redraw lines); False for logs, pipes and files."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed stream
        return False


def cache_dir() -> Path:
    """Where trained models, feature nets and experiment results are cached.

    ``$GRACHECK_CACHE`` when set, else ``$XDG_CACHE_HOME/gracheck`` or ``~/.cache/gracheck``.
    """
    env = os.environ.get("GRACHECK_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gracheck"


class FolderLocked(RuntimeError):
    """The lock is held by another live process; ``owner`` holds what its lock file says (pid, host, started)."""

    def __init__(self, message: str, owner: dict) -> None:
        super().__init__(message)
        self.owner = owner


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """The one exclusive lock of the project: one owner at a time for a folder (a run folder) or a cache entry.

    The lock is a file (``path``) whose holder writes its pid, host, start time and command line into
    it. Exclusion comes from an advisory ``fcntl.flock`` on that file, which the kernel drops however
    the holder ends (SIGKILL included). When another live process holds it, the acquirer is either
    refused (``wait=False``, the default: :class:`FolderLocked` naming the owner's pid and host) or
    waits for it (``wait=True``: ``on_wait`` is called once with a line naming the owner, and
    ``timeout`` seconds, None for no limit, end the wait with TimeoutError). A lock file left by a
    process that died is taken over with a ``RuntimeWarning`` naming the dead owner. ``release()``
    (or leaving the ``with`` block) removes the file. Where ``flock`` is not available (no
    ``fcntl``, or a file system without locks) the pid in the file decides: a live pid on this host
    keeps the lock. Locks are per open file, so two holders in one process exclude each other too.

    To own a folder (one writer at a time; a second one is refused with the owner's pid)::

        folder.mkdir(parents=True, exist_ok=True)
        with FolderLock(folder / "train.lock", what="run folder"):   # FolderLocked if another process has it
            ...                                                      # write into folder

    To compute a cache entry once across processes (a second one waits, then re-checks the entry)::

        with FolderLock(entry.with_name(entry.name + ".lock"), what="cache entry", target=entry,
                        wait=True, on_wait=print):
            if not done(entry):
                compute(entry)

    (:func:`entry_lock` is that second form.) ``what`` and ``target`` (default: the lock file's
    folder) only word the messages.
    """

    def __init__(self, path: str | os.PathLike, *, what: str = "run folder", target: str | os.PathLike | None = None,
                 wait: bool = False, timeout: float | None = None, on_wait: Callable[[str], None] | None = None,
                 poll: float = 0.5) -> None:
        self.path = Path(path)
        self.what = what
        self.target = Path(target) if target is not None else self.path.parent
        self.wait, self.timeout, self.on_wait, self.poll = bool(wait), timeout, on_wait, poll
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            raw = os.read(fd, 65536)
            info = json.loads(raw.decode()) if raw.strip() else {}
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _owner(owner: dict) -> str:
        return (f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} (since {owner.get('started', '?')})"
                if owner else "another process")

    def _busy(self, owner: dict) -> FolderLocked:
        return FolderLocked(
            f"{self.what} {self.target} is in use by {self._owner(owner)}; lock file {self.path}. Wait for it to "
            "finish or stop it. A lock whose process has died is taken over automatically.", owner)

    def _blocked(self, owner: dict, t0: float, told: bool) -> bool:
        """Refuse, or (``wait``) tell ``on_wait`` once, check the timeout and sleep; returns ``told``."""
        if not self.wait:
            raise self._busy(owner)
        if not told and self.on_wait is not None:
            self.on_wait(f"waiting for another process, {self._owner(owner)}, to finish {self.target.name} "
                         f"(lock {self.path})")
        if self.timeout is not None and time.monotonic() - t0 > self.timeout:
            raise TimeoutError(f"{self.what} {self.target}: could not lock {self.path} within {self.timeout:g} s "
                               f"(held by {self._owner(owner)})")
        time.sleep(self.poll)
        return True

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: this FolderLock is already held")
        t0, told = time.monotonic(), False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                kernel = fcntl is not None
                if kernel:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        told = self._blocked(self._read(fd), t0, told)
                        os.close(fd)
                        continue
                    except OSError as e:
                        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                            raise
                        kernel = False
                try:  # the file we locked may have been unlinked by a holder releasing it meanwhile
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                prev = self._read(fd)
                if prev and not kernel and prev.get("host") == socket.gethostname() and prev.get("pid") != os.getpid() \
                        and _pid_alive(prev.get("pid")):
                    told = self._blocked(prev, t0, told)
                    os.close(fd)
                    continue
                if prev:
                    warnings.warn(
                        f"{self.path}: taking over the stale lock of pid {prev.get('pid', '?')} on {prev.get('host', '?')} "
                        f"(since {prev.get('started', '?')}), which is no longer running", RuntimeWarning, stacklevel=2)
                info = {"pid": os.getpid(), "host": socket.gethostname(),
                        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "argv": sys.argv}
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, (json.dumps(info) + "\n").encode())
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            self._fd = fd
            return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                os.unlink(self.path)  # while still holding it, so no one locks a file about to vanish
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def entry_lock(
    entry: str | os.PathLike,
    *,
    timeout: float | None = None,
    on_wait: Callable[[str], None] | None = None,
    poll: float = 0.5,
) -> Iterator[Path]:
    """Hold the :class:`FolderLock` of the cache entry ``entry`` (a file or folder path) for the block, waiting
    for another process that holds it.

    The lock file is ``<entry>.lock`` beside the entry (its folder is created). A second process
    waits until the first leaves the block (or dies), calling ``on_wait`` once with a line saying
    what it waits for and who holds it; ``timeout`` (seconds; None = wait as long as it takes)
    raises TimeoutError naming the lock file. The caller re-checks the entry after acquiring it.
    Yields the lock file's path.
    """
    entry = Path(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FolderLock(entry.with_name(entry.name + ".lock"), what="cache entry", target=entry, wait=True,
                    timeout=timeout, on_wait=on_wait, poll=poll) as lock:
        yield lock.path


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
