"""Real data sets, read from their original distribution formats and verified.

Search order for the files: the ``root`` argument (alone, when given), ``$GRACHECK_DATA``,
``../shared/data`` beside the repository, then the user cache (``$XDG_CACHE_HOME/gracheck/data``
or ``~/.cache/gracheck/data``). Nothing is downloaded unless asked:
``python -m gracheck.data --download mnist``; ``python -m gracheck.data --check`` reports
what was found where.
"""

from gracheck.data._paths import data_root, verify_sha256
from gracheck.data.celeba import celeba_split_counts, load_celeba
from gracheck.data._download import download
from gracheck.data.mnist import load_mnist, mnist_images
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
