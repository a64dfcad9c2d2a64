"""Real data sets, read from their original distribution formats and verified.

Where the files are looked for: the ``root`` argument alone when given, else ``$GRACHECK_DATA``
alone when set, else ``../shared/data`` beside the repository and then the user cache
(``$XDG_CACHE_HOME/gracheck/data`` or ``~/.cache/gracheck/data``). A folder the caller names is
never replaced by another copy: when it is missing, empty or lacks a file, the error names it
and what is missing. Nothing is downloaded unless asked: ``python -m gracheck.data --download
mnist``; ``python -m gracheck.data --check`` reports what was found where.
:func:`record_reads` records the folders chosen and the files read with their checksums.
"""

from os import PathLike
from pathlib import Path

from gracheck.data import _paths
from gracheck.data._paths import DataReads, note_reads, record_reads, verify_sha256
from gracheck.data.celeba import celeba_split_counts, has_celeba, load_celeba
from gracheck.data._download import download
from gracheck.data.mnist import has_mnist, load_mnist, mnist_images
from gracheck.data.synthetic import SyntheticData, make_synthetic

__all__ = [
    "data_root",
    "load_mnist",
    "mnist_images",
    "load_celeba",
    "celeba_split_counts",
    "verify_sha256",
    "record_reads",
    "note_reads",
    "DataReads",
    "download",
    "make_synthetic",
    "SyntheticData",
]


def data_root(root: str | PathLike | None = None) -> Path:
    """The first location in search order that holds any known data set (see this package's docstring);
    the named place itself (root, else ``$GRACHECK_DATA``) when one is named, or an error naming it.

    Loaders do their own per-data-set search (a location qualifies for MNIST only if it holds
    the MNIST files, and so on); this is the coarse answer to "where is my data".
    Raises FileNotFoundError, listing every place searched, when none holds anything.
    """
    searched = []
    places = _paths.candidate_roots(root)
    for label, loc in places:
        _paths.check_explicit_root(label, loc)
        for sub in ("mnist", "MNIST/raw", "celeba", ""):
            d = loc / sub if sub else loc
            if has_mnist(d, "train") or has_mnist(d, "test") or has_celeba(d):
                return loc
        searched.append(f"  {loc}  ({label})")
    if _paths.is_explicit(places[0][0]):
        label, loc = places[0]
        raise FileNotFoundError(
            f"no gracheck data (neither MNIST nor CelebA) in {label} {loc}, the only place searched when given"
            + (f"; unset {_paths.ENV_VAR} to use ../shared/data or the user cache" if label == _paths.ENV_LABEL else "")
            + ". `python -m gracheck.data --check` lists what each sub-folder lacks."
        )
    raise FileNotFoundError(
        "no gracheck data found (neither MNIST nor CelebA) in any of these places "
        "(searched in this order):\n" + "\n".join(searched)
        + f"\nPass root=..., set ${_paths.ENV_VAR}, or run `python -m gracheck.data --download mnist`."
    )
