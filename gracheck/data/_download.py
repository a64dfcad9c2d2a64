"""Opt-in download of the real data sets, and the ``python -m gracheck.data`` command line.

Nothing in gracheck downloads on its own: the loaders only read local files. A user with
network access may fetch MNIST from its usual mirrors (md5-verified, written atomically: a
temporary file in the destination folder renamed into place only once verified, so no partial
or unverified file is ever left under the final name). CelebA's official home is a Google
Drive that needs a browser; without ``base_url`` we print where to get it instead.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import urllib.error
import urllib.request
from os import PathLike
from pathlib import Path
from typing import Sequence

from gracheck.base.files import atomic_open
from gracheck.data import _paths, celeba, mnist

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
DATASETS = ("mnist", "celeba")


class DownloadError(OSError):
    """Every source failed for a file (network errors, HTTP errors); the attempts are listed."""


def _url(base: str, name: str) -> str:
    if not base.startswith(("http://", "https://", "file://")):
        raise ValueError(f"base_url: expected an http(s):// or file:// URL, got {base!r}")
    return base.rstrip("/") + "/" + name


def _fetch(url: str, dest: Path, md5: str, timeout: float, log) -> None:
    """Stream ``url`` into ``dest`` atomically, keeping it only if its md5 is ``md5`` (nothing written otherwise)."""
    h = hashlib.md5()
    n = 0
    with atomic_open(dest, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
        while chunk := r.read(1 << 20):
            f.write(chunk)
            h.update(chunk)
            n += len(chunk)
        if h.hexdigest() != md5:  # raising inside the block abandons the temporary file
            raise ValueError(
                f"{url}: checksum mismatch: expected md5 {md5}, downloaded {n:,} bytes with md5 "
                f"{h.hexdigest()}; nothing was written to {dest}"
            )
    log(f"  {dest}  ({n:,} bytes, md5 ok) <- {url}")


def _get(name: str, md5: str, sources: Sequence[str], folder: Path, timeout: float, log) -> Path:
    dest = folder / name
    if dest.is_file():
        try:
            _paths.check_md5(dest, md5, force=True)
            log(f"  {dest}  (already present, md5 ok)")
            return dest
        except ValueError:
            log(f"  {dest}  (present but md5 differs; downloading again)")
    errors: list[Exception] = []
    for base in sources:
        url = _url(base, name)
        try:
            _fetch(url, dest, md5, timeout, log)
            return dest
        except ValueError as e:  # checksum mismatch: try the next source
            errors.append(e)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            errors.append(DownloadError(f"{url}: {e}"))
    detail = "\n".join(f"  {e}" for e in errors)
    if any(isinstance(e, ValueError) for e in errors):
        raise ValueError(f"{name}: no source gave a file with the expected md5 {md5}:\n{detail}")
    raise DownloadError(f"{name}: could not download from any source:\n{detail}")


def celeba_instructions(dest: Path | None = None) -> str:
    where = (dest or _paths.user_cache_dir()) / "celeba"
    return (
        "CelebA cannot be downloaded automatically: its official home is a Google Drive that needs "
        f"a browser.\n  Official page: {celeba.OFFICIAL_URL}\n"
        "  Files needed (put them together in one folder, e.g. " + str(where) + "):\n"
        f"    Img/{celeba.OFFICIAL_ZIP}  md5 {celeba.OFFICIAL_ZIP_MD5}  (202,599 JPEGs, 178x218)\n"
        f"    Eval/{celeba.SPLIT_FILE}  md5 {celeba.SPLIT_MD5}  ({celeba.SPLIT_ROWS:,} rows)\n"
        "  Then point gracheck at the folder above it (root=... or $GRACHECK_DATA), or pass "
        "load_celeba(archive=...). Given a mirror holding those two files: "
        "python -m gracheck.data --download celeba --base-url URL"
    )


def download(
    dataset: str,
    dest: str | PathLike | None = None,
    *,
    base_url: str | None = None,
    timeout: float = 60.0,
    quiet: bool = True,
) -> dict[str, Path]:
    """Fetch a data set's files into ``dest/<dataset>/`` (default ``dest``: the user cache, which
    the loaders search). Returns ``{file name: path}``.

    mnist: the four IDX gz files, from ``base_url`` or else the mirrors in ``MNIST_MIRRORS`` in
    turn, each md5-verified. celeba: only with ``base_url`` (fetches ``img_align_celeba.zip`` and
    ``list_eval_partition.txt``, both md5-verified against the published sums); without it,
    raises RuntimeError whose message says where and what to get by hand.
    Files already present with the right md5 are kept. Raises ValueError on a checksum mismatch
    (nothing is left at the destination) and DownloadError when no source could be reached.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset: expected one of {DATASETS}, got {dataset!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    root = Path(dest).expanduser() if dest is not None else _paths.user_cache_dir()
    log = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr))
    out: dict[str, Path] = {}
    if dataset == "mnist":
        sources = [base_url] if base_url else list(MNIST_MIRRORS)
        for name, md5 in mnist.MD5.items():
            out[name] = _get(name, md5, sources, root / "mnist", timeout, log)
        return out
    if base_url is None:
        raise RuntimeError(celeba_instructions(root))
    out[celeba.SPLIT_FILE] = _get(celeba.SPLIT_FILE, celeba.SPLIT_MD5, [base_url], root / "celeba", timeout, log)
    out[celeba.OFFICIAL_ZIP] = _get(
        celeba.OFFICIAL_ZIP, celeba.OFFICIAL_ZIP_MD5, [base_url], root / "celeba", timeout, log
    )
    return out


# --------------------------------------------------------------------------------------------
# Command line


def check(root: str | PathLike | None = None, out=None) -> bool:
    """Print where each data set was found and whether it verifies; True when everything does.

    Every line names the folder (or file) it is about; a PROBLEM line names the place searched.
    """
    ok = True
    out = out or sys.stdout
    p = lambda s="": print(s, file=out)  # noqa: E731
    places = _paths.candidate_roots(root)
    explicit = _paths.is_explicit(places[0][0])
    if explicit:
        label, loc = places[0]
        p(f"Data folder: {loc}  ({label}; the only place searched)")
        where = f"in {loc} ({label})"
    else:
        p("Places searched, in order (each data set is read from the first that holds its files):")
        for label, loc in places:
            p(f"  {loc}  ({label}{'' if loc.is_dir() else ', missing'})")
        where = "in " + " or ".join(str(loc) for _, loc in places)
    if explicit:
        try:
            _paths.check_explicit_root(*places[0])
        except OSError as e:
            p(f"PROBLEM: {e}")
            return False

    def problem(what: str, e: Exception) -> None:
        nonlocal ok
        ok = False
        msg = str(e)
        p(f"{what}: PROBLEM {where}: {msg[len(what) + 2:] if msg.startswith(what + ': ') else msg}")

    for split in ("train", "test"):
        try:
            folder = mnist.find_mnist(split, root)
            images, _ = mnist.load_mnist(split, root, verify="always")
            p(f"MNIST {split}: {folder}: {images.shape[0]:,} images {tuple(images.shape[1:])}, md5 ok")
        except (FileNotFoundError, ValueError) as e:
            problem(f"MNIST {split}", e)
    try:
        path = celeba.find_split_file(root)
        counts = celeba.celeba_split_counts(root)
        p(f"CelebA split file: {path}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + ", md5 ok")
    except (FileNotFoundError, ValueError) as e:
        problem("CelebA split file", e)
    try:
        arch, _ = celeba.find_celeba(root)
        celeba._check_archive_digest(arch)
        src = celeba._Source(arch)
        n = len(src.members)
        src.close()
        p(f"CelebA images: {arch}: {n:,} images, digest ok")
    except (FileNotFoundError, ValueError) as e:
        problem("CelebA images", e)
    try:
        sums_path = _paths.sums_file(root)
        sums = _paths.verify_sha256(root)
        bad = [k for k, v in sums.items() if not v["ok"]]
        p(f"SHA256SUMS: {sums_path}: {len(sums) - len(bad)}/{len(sums)} files under {sums_path.parent} ok"
          + (f"; bad or missing: {', '.join(bad)}" if bad else ""))
        ok = ok and not bad
    except FileNotFoundError:
        p(f"SHA256SUMS: none {where} (only the shipped shared/data has one)")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gracheck.data",
        description="Check the local data sets, or download them (opt-in; needs network).",
    )
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--check", action="store_true", help="verify the local files and print what was found where")
    g.add_argument("--download", choices=DATASETS, metavar="{mnist,celeba}", help="fetch a data set")
    ap.add_argument("--root", help="data folder to check, the only place looked (default: $GRACHECK_DATA alone "
                                   "when set, else ../shared/data then the user cache)")
    ap.add_argument("--dest", help="download destination (default: the user cache, searched by the loaders)")
    ap.add_argument("--base-url", help="fetch from this URL instead of the official mirrors")
    ap.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default 60)")
    args = ap.parse_args(argv)
    if args.check:
        return 0 if check(args.root) else 1
    try:
        files = download(args.download, args.dest, base_url=args.base_url, timeout=args.timeout, quiet=False)
    except RuntimeError as e:  # celeba without a base URL: instructions, not a failure of ours
        print(e, file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.download}: {len(files)} files verified in {next(iter(files.values())).parent}")
    return 0
