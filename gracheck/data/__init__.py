"""Real data sets, read from their original distribution formats and verified.

Search order for the files: the ``root`` argument (alone, when given), ``$GRACHECK_DATA``,
``../shared/data`` beside the repository, then the user cache (``$XDG_CACHE_HOME/gracheck/data``
or ``~/.cache/gracheck/data``). Nothing is downloaded unless asked:
``python -m gracheck.data --download mnist``; ``python -m gracheck.data --check`` reports
what was found where.
"""

from os import PathLike
from pathlib import Path

from gracheck.data import _paths
from gracheck.data._paths import verify_sha256
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
    "download",
    "make_synthetic",
    "SyntheticData",
]


def data_root(root: str | PathLike | None = None) -> Path:
    """The first location in search order that holds any known data set (see this package's docstring).

    Loaders do their own per-data-set search (a location qualifies for MNIST only if it holds
    the MNIST files, and so on); this is the coarse answer to "where is my data".
    Raises FileNotFoundError, listing every place searched, when none holds anything.
    """
    searched = []
    for label, loc in _paths.candidate_roots(root):
        for sub in ("mnist", "celeba", ""):
            d = loc / sub if sub else loc
            if has_mnist(d, "train") or has_mnist(d, "test") or has_celeba(d):
                return loc
        searched.append(f"  {loc}  ({label})")
    raise FileNotFoundError(
        "no gracheck data found (neither MNIST nor CelebA) in any of these places "
        "(searched in this order):\n" + "\n".join(searched)
        + f"\nPass root=..., set ${_paths.ENV_VAR}, or run `python -m gracheck.data --download mnist`."
    )
