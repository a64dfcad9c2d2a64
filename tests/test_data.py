"""Tests of the real-data loaders (gracheck.data) on the shipped files and on corrupted copies.

No network: the download tests serve a temporary folder from 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import os
import shutil
import socket
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gracheck.data as gd
from gracheck.data import _download as dl, _paths, celeba, mnist

SHARED = _paths.SHARED_DATA
SUBSET_ZIP = SHARED / "celeba" / celeba.SUBSET_ZIP
SPLIT = SHARED / "celeba" / celeba.SPLIT_FILE

needs_mnist = pytest.mark.skipif(
    not (SHARED / "mnist" / "train-images-idx3-ubyte.gz").is_file(), reason=f"shipped MNIST not in {SHARED}"
)
needs_celeba = pytest.mark.skipif(
    not (SUBSET_ZIP.is_file() and SPLIT.is_file()), reason=f"shipped CelebA not in {SHARED}"
)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """No $GRACHECK_DATA from the caller's shell; an empty user cache; fresh checksum caches."""
    monkeypatch.delenv("GRACHECK_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
    _paths.clear_cache()
    yield
    _paths.clear_cache()


@functools.lru_cache(maxsize=None)
def _train():
    return mnist.load_mnist("train")


@functools.lru_cache(maxsize=None)
def _test():
    return mnist.load_mnist("test")


def _copy_mnist(dest: Path, split: str = "test") -> Path:
    d = dest / "mnist"
    d.mkdir(parents=True, exist_ok=True)
    for name in mnist.FILES[split]:
        shutil.copyfile(SHARED / "mnist" / name, d / name)
    return d


def _rewrite(path: Path, edit) -> None:
    """Gunzip, apply edit(bytearray) -> bytes, gzip again (level 1 for speed)."""
    data = bytearray(gzip.decompress(path.read_bytes()))
    path.write_bytes(gzip.compress(bytes(edit(data)), compresslevel=1))


# ---------------------------------------------------------------------------------------------
# MNIST on the shipped files

# Per-class counts of the official MNIST label files (well-known; e.g. LeCun's page, torchvision).
TRAIN_HIST = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_HIST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@needs_mnist
@pytest.mark.parametrize("split,n,hist,first", [
    ("train", 60_000, TRAIN_HIST, [5, 0, 4, 1, 9]),
    ("test", 10_000, TEST_HIST, [7, 2, 1, 0, 4]),
])
def test_mnist_shipped(split, n, hist, first):
    x, y = _train() if split == "train" else _test()
    assert x.shape == (n, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (n,) and y.dtype == torch.int64
    assert int(x.min()) == 0 and int(x.max()) == 255
    assert torch.bincount(y, minlength=10).tolist() == hist
    assert y[:5].tolist() == first
    # Every digit has ink and a background: no blank or saturated image slipped in.
    assert bool((x.amax(dim=(1, 2)) > 100).all()) and bool((x[:, 0, :] == 0).float().mean() > 0.99)


@needs_mnist
def test_mnist_independent_decode():
    """Our parser (whole-buffer np.frombuffer) vs gzip.open with seek + byte reads of single images."""
    x, y = _train()
    path_i = SHARED / "mnist" / "train-images-idx3-ubyte.gz"
    path_l = SHARED / "mnist" / "train-labels-idx1-ubyte.gz"
    idx = [0, 1, 2, 12_345, 31_337, 59_999] + np.random.default_rng(0).integers(0, 60_000, 20).tolist()
    with gzip.open(path_i, "rb") as f:
        header = f.read(16)
        assert [int.from_bytes(header[i : i + 4], "big") for i in range(0, 16, 4)] == [2051, 60_000, 28, 28]
        for i in sorted(idx):
            f.seek(16 + i * 784)
            raw = f.read(784)
            ref = [[raw[r * 28 + c] for c in range(28)] for r in range(28)]
            assert x[i].tolist() == ref, f"image {i} differs"
    with gzip.open(path_l, "rb") as f:
        labels = f.read()
    assert int.from_bytes(labels[:4], "big") == 2049 and int.from_bytes(labels[4:8], "big") == 60_000
    assert [labels[8 + i] for i in idx] == y[idx].tolist()


@needs_mnist
def test_mnist_images_convenience():
    x, y = gd.mnist_images("train")
    assert x.shape == (60_000, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (60_000,)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # The usual MNIST normalisation constants (mean 0.1307, std 0.3081 of pixel/255).
    assert abs(float(x.mean()) - 0.1307) < 1e-4 and abs(float(x.std()) - 0.3081) < 1e-4
    raw, _ = _train()
    assert torch.equal(x[7, 0], raw[7].float() / 255)
    x64, y64 = gd.mnist_images("test", dtype=torch.float64, limit=100)
    assert x64.shape == (100, 1, 28, 28) and x64.dtype == torch.float64 and torch.equal(y64, _test()[1][:100])
    with pytest.raises(ValueError, match="limit"):
        gd.mnist_images("test", limit=0)
    with pytest.raises(TypeError, match="dtype"):
        gd.mnist_images("test", dtype=torch.int32)


def test_mnist_bad_arguments():
    with pytest.raises(ValueError, match="split: expected 'train' or 'test', got 'valid'"):
        gd.load_mnist("valid")
    with pytest.raises(ValueError, match="verify"):
        gd.load_mnist("test", verify="sometimes")


@needs_mnist
def test_mnist_checksum_cached(tmp_path):
    d = _copy_mnist(tmp_path)
    img = d / "t10k-images-idx3-ubyte.gz"
    assert not _paths.is_digest_cached(img)
    gd.load_mnist("test", tmp_path)
    assert _paths.is_digest_cached(img)
    os.utime(img, ns=(0, 10**18))  # a new mtime: the cached result no longer applies
    assert not _paths.is_digest_cached(img)
    gd.load_mnist("test", tmp_path, verify="none")
    assert not _paths.is_digest_cached(img)


# ---------------------------------------------------------------------------------------------
# MNIST corrupted copies: every one gives a clear error naming the file


@needs_mnist
def test_mnist_truncated_gzip(tmp_path):
    d = _copy_mnist(tmp_path)
    p = d / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[: 800_000])
    with pytest.raises(ValueError, match="truncated gzip") as e:
        gd.load_mnist("test", tmp_path)
    assert str(p) in str(e.value)


@needs_mnist
def test_mnist_not_gzip(tmp_path):
    d = _copy_mnist(tmp_path)
    p = d / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ValueError, match="not a valid gzip file") as e:
        gd.load_mnist("test", tmp_path)
    assert str(p) in str(e.value)


@needs_mnist
def test_mnist_bad_magic(tmp_path):
    d = _copy_mnist(tmp_path)
    p = d / "t10k-images-idx3-ubyte.gz"
    _rewrite(p, lambda b: (2049).to_bytes(4, "big") + b[4:])
    # The structural check fires before (and even without) the md5 check.
    for verify in ("auto", "none"):
        with pytest.raises(ValueError, match=r"bad magic number: expected 2051 .* found 2049") as e:
            gd.load_mnist("test", tmp_path, verify=verify)
        assert str(p) in str(e.value)


@needs_mnist
def test_mnist_wrong_count_header(tmp_path):
    d = _copy_mnist(tmp_path)
    p = d / "t10k-images-idx3-ubyte.gz"
    _rewrite(p, lambda b: b[:4] + (10_001).to_bytes(4, "big") + b[8:])
    with pytest.raises(ValueError, match=r"header says 10001 images .* found 7840016 bytes \(short: truncated\)"):
        gd.load_mnist("test", tmp_path, verify="none")


@needs_mnist
def test_mnist_short_payload(tmp_path):
    d = _copy_mnist(tmp_path)
    p = d / "t10k-images-idx3-ubyte.gz"
    _rewrite(p, lambda b: b[:-100])  # a gzip stream that is complete but holds too few bytes
    with pytest.raises(ValueError, match=r"payload length mismatch: header says 10000 images"):
        gd.load_mnist("test", tmp_path)


@needs_mnist
def test_mnist_image_label_counts_differ(tmp_path):
    d = _copy_mnist(tmp_path)
    p = d / "t10k-labels-idx1-ubyte.gz"
    _rewrite(p, lambda b: b[:4] + (9_999).to_bytes(4, "big") + b[8:-1])  # self-consistent, one short
    with pytest.raises(ValueError, match=r"counts differ: .* 10000 images, .* 9999 labels"):
        gd.load_mnist("test", tmp_path, verify="none")


@needs_mnist
def test_mnist_label_out_of_range(tmp_path):
    d = _copy_mnist(tmp_path)
    _rewrite(d / "t10k-labels-idx1-ubyte.gz", lambda b: b[:8 + 3] + b"\x0c" + b[8 + 4:])
    with pytest.raises(ValueError, match=r"labels must be in 0..9, found 12 at index 3"):
        gd.load_mnist("test", tmp_path, verify="none")


@needs_mnist
def test_mnist_bad_md5(tmp_path):
    d = _copy_mnist(tmp_path)
    p = d / "t10k-images-idx3-ubyte.gz"
    pos = 16 + 5 * 784 + 14 * 28 + 14  # the centre pixel of image 5: structure stays valid

    def flip(b):
        b[pos] ^= 0xFF
        return b

    _rewrite(p, flip)
    with pytest.raises(ValueError, match="checksum mismatch: expected md5 9fb629c4189551a2d022fa330f9573f3") as e:
        gd.load_mnist("test", tmp_path)
    assert str(p) in str(e.value)
    x, _ = gd.load_mnist("test", tmp_path, verify="none")  # an explicit opt-out reads it anyway
    assert int(x[5, 14, 14]) == int(_test()[0][5, 14, 14]) ^ 0xFF


def test_mnist_missing_lists_places(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        gd.load_mnist("test", tmp_path)
    msg = str(e.value)
    for place in (tmp_path / "mnist", tmp_path / "MNIST/raw", tmp_path):
        assert f"  {place}  (" in msg
    assert "t10k-images-idx3-ubyte.gz" in msg and "--download mnist" in msg
    assert str(SHARED) not in msg  # an explicit root is the only place searched

    # The default chain (no $GRACHECK_DATA): ../shared/data, then the user cache, listed in order.
    shared, cache = tmp_path / "shared", tmp_path / "xdg"
    monkeypatch.setattr(_paths, "SHARED_DATA", shared)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    with pytest.raises(FileNotFoundError) as e:
        gd.load_mnist("train")
    msg = str(e.value)
    pos = [msg.index(f"  {p}  (") for p in (shared / "mnist", cache / "gracheck" / "data" / "mnist")]
    assert pos == sorted(pos) and "set $GRACHECK_DATA" in msg
    with pytest.raises(FileNotFoundError, match="no gracheck data found"):
        gd.data_root()


@needs_mnist
def test_search_order(tmp_path, monkeypatch):
    def linked(where: Path) -> Path:
        (where / "mnist").mkdir(parents=True)
        for name in mnist.FILES["test"]:
            (where / "mnist" / name).symlink_to(SHARED / "mnist" / name)
        return where

    env, explicit, cache = linked(tmp_path / "env"), linked(tmp_path / "explicit"), tmp_path / "xdg"
    linked(cache / "gracheck" / "data")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))

    assert mnist.find_mnist("test") == SHARED / "mnist"  # no env var: the repository's shared data
    assert gd.data_root() == SHARED
    monkeypatch.setenv("GRACHECK_DATA", str(env))
    assert mnist.find_mnist("test") == env / "mnist"  # the env var beats shared
    assert gd.data_root() == env
    assert mnist.find_mnist("test", explicit) == explicit / "mnist"  # root beats the env var
    with pytest.raises(FileNotFoundError, match=r"(?s)\$GRACHECK_DATA=.*env.*missing train-images"):
        mnist.find_mnist("train")  # env lacks train: an error naming it, never ../shared/data's copy
    monkeypatch.setattr(_paths, "SHARED_DATA", tmp_path / "nowhere")
    monkeypatch.delenv("GRACHECK_DATA")
    assert mnist.find_mnist("test") == cache / "gracheck" / "data" / "mnist"  # last: the user cache
    x, y = gd.load_mnist("test")
    assert torch.equal(x, _test()[0]) and torch.equal(y, _test()[1])


@needs_mnist
def test_torchvision_layout_and_flat_folder(tmp_path):
    for sub in ("MNIST/raw", "flat"):
        d = tmp_path / sub
        d.mkdir(parents=True)
        for name in mnist.FILES["test"]:
            (d / name).symlink_to(SHARED / "mnist" / name)
    assert mnist.find_mnist("test", tmp_path) == tmp_path / "MNIST/raw"
    assert mnist.find_mnist("test", tmp_path / "flat") == tmp_path / "flat"


# ---------------------------------------------------------------------------------------------
# CelebA split file


@needs_celeba
def test_celeba_split_counts():
    assert gd.celeba_split_counts() == {"train": 162_770, "valid": 19_867, "test": 19_962}
    rows = celeba.read_split_file(SPLIT)
    assert len(rows) == 202_599 and rows[0] == ("000001.jpg", 0) and rows[-1] == ("202599.jpg", 2)


@needs_celeba
def test_celeba_split_file_truncated(tmp_path):
    d = tmp_path / "celeba"
    d.mkdir()
    raw = SPLIT.read_bytes()
    (d / celeba.SPLIT_FILE).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"expected 202,599 rows and md5 d32c9cbf.*found 101,29\d well-formed rows") as e:
        gd.celeba_split_counts(tmp_path)
    assert str(d / celeba.SPLIT_FILE) in str(e.value)


@needs_celeba
def test_celeba_split_file_lf_endings_accepted(tmp_path):
    d = tmp_path / "celeba"
    d.mkdir()
    (d / celeba.SPLIT_FILE).write_bytes(SPLIT.read_bytes().replace(b"\r\n", b"\n"))
    assert gd.celeba_split_counts(tmp_path)["valid"] == 19_867


# ---------------------------------------------------------------------------------------------
# CelebA images


@needs_celeba
def test_celeba_shipped_subset():
    x = gd.load_celeba("train", limit=256)
    assert x.shape == (256, 3, 64, 64) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.std()) > 0.1
    # Independent route for image 000001 (89x109): crop 74x74 at torchvision's CenterCrop offsets,
    # left = round((89-74)/2) = round(7.5) = 8, top = round((109-74)/2) = round(17.5) = 18
    # (Python rounds halves to even), then PIL bilinear to 64x64.
    with zipfile.ZipFile(SUBSET_ZIP) as z:
        im = Image.open(io.BytesIO(z.read("img_align_celeba_89x109/000001.jpg"))).convert("RGB")
    assert im.size == (89, 109)
    ref = np.asarray(im.crop((8, 18, 82, 92)).resize((64, 64), Image.BILINEAR)).transpose(2, 0, 1)
    assert torch.equal((x[0] * 255).round().to(torch.uint8), torch.from_numpy(ref.copy()))
    # Split order is file order (000001, 000002, ...) although the zip stores them shuffled.
    u8 = gd.load_celeba("train", limit=3, dtype=torch.uint8, size=32)
    assert u8.dtype == torch.uint8 and u8.shape == (3, 3, 32, 32)
    with zipfile.ZipFile(SUBSET_ZIP) as z:
        im2 = Image.open(io.BytesIO(z.read("img_align_celeba_89x109/000003.jpg"))).convert("RGB")
    ref2 = np.asarray(im2.crop((8, 18, 82, 92)).resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1)
    assert torch.equal(u8[2], torch.from_numpy(ref2.copy()))
    # "all" is every image of the archive in name order: the same first images here.
    assert torch.equal(gd.load_celeba("all", limit=4, dtype=torch.uint8, size=32)[:3], u8)


@needs_celeba
def test_celeba_missing_split_in_subset():
    for split in ("test", "valid", "val"):
        with pytest.raises(ValueError, match="contains only the first 10,000 train images") as e:
            gd.load_celeba(split)
        assert "img_align_celeba.zip" in str(e.value) and celeba.OFFICIAL_URL in str(e.value)


def test_celeba_bad_arguments():
    with pytest.raises(ValueError, match="split: expected"):
        gd.load_celeba("training")
    with pytest.raises(ValueError, match="size"):
        gd.load_celeba(size=0)
    with pytest.raises(ValueError, match="limit"):
        gd.load_celeba(limit=-1)
    with pytest.raises(TypeError, match="dtype"):
        gd.load_celeba(dtype=torch.int64)


def _face_like(w: int, h: int, margin: int) -> Image.Image:
    """Red border; green inside the centre crop box grown by ``margin`` px (negative: shrunk)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = 255
    l, t, r, b = celeba.crop_box(w, h)
    a[t - margin : b + margin, l - margin : r + margin] = (0, 255, 0)
    return Image.fromarray(a)


def _zip_of(path: Path, images: dict[str, Image.Image], fmt: str = "PNG") -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, im in images.items():
            buf = io.BytesIO()
            im.save(buf, fmt)
            z.writestr(f"img_align_celeba/{name}", buf.getvalue())
    return path


@pytest.mark.parametrize("w,h", [(178, 218), (89, 109), (120, 150), (300, 400)])
def test_celeba_centre_crop_synthetic(tmp_path, w, h):
    # Expected crop side round(148/178 * w): 148, 74, 100, 249 -- checked independently here.
    side = {178: 148, 89: 74, 120: 100, 300: 249}[w]
    l, t, r, b = celeba.crop_box(w, h)
    assert (r - l, b - t) == (side, side) and abs((l + r) - w) <= 1 and abs((t + b) - h) <= 1
    # Green grown by 3 px past the crop box: the border is cropped away, everything is green.
    # Green shrunk by 3 px: the crop reaches the red just outside, so the edges come out reddish.
    z = _zip_of(tmp_path / "faces.zip", {"000001.png": _face_like(w, h, 3), "000002.png": _face_like(w, h, -3)})
    x = gd.load_celeba("all", archive=z, dtype=torch.uint8)
    assert x.shape == (2, 3, 64, 64)
    assert int(x[0, 0].max()) == 0 and int(x[0, 1].min()) == 255 and int(x[0, 2].max()) == 0
    edges = torch.cat([x[1, 0, 0], x[1, 0, -1], x[1, 0, :, 0], x[1, 0, :, -1]])
    assert int(edges.min()) > 100 and int(x[1, 0, 16:48, 16:48].max()) == 0


def test_celeba_zip_vs_folder_and_crop_matches_pil(tmp_path):
    rng = np.random.default_rng(0)
    ims = {f"{i:06d}.png": Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)) for i in (1, 2)}
    z = _zip_of(tmp_path / "x.zip", ims)
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    for name, im in ims.items():
        im.save(folder / name)
    a = gd.load_celeba("all", archive=z, dtype=torch.float64)
    bb = gd.load_celeba("all", archive=folder, dtype=torch.float64)
    assert a.dtype == torch.float64 and torch.equal(a, bb)
    # 178x218: crop 148 at (15, 35) -- (178-148)/2, (218-148)/2 -- then PIL bilinear to 64.
    ref = np.asarray(ims["000002.png"].crop((15, 35, 163, 183)).resize((64, 64), Image.BILINEAR))
    assert torch.equal((a[1] * 255).round().to(torch.uint8), torch.from_numpy(ref.transpose(2, 0, 1).copy()))


def test_celeba_zip_missing(tmp_path):
    d = tmp_path / "celeba"
    d.mkdir()
    (d / celeba.SPLIT_FILE).write_bytes(b"000001.jpg 0\r\n")
    with pytest.raises(FileNotFoundError) as e:
        gd.load_celeba(root=tmp_path)
    msg = str(e.value)
    assert f"  {d}  (" in msg and "img_align_celeba.zip" in msg and celeba.OFFICIAL_URL in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gd.load_celeba("all", archive=tmp_path / "nope.zip")


@pytest.mark.parametrize("bad", ["../evil.jpg", "img_align_celeba/../../evil.jpg", "/abs/000001.jpg", "a\\..\\b.jpg"])
def test_celeba_unsafe_member_refused(tmp_path, bad):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("img_align_celeba/000001.jpg", b"x")
        f.writestr(zipfile.ZipInfo(bad), b"y")
    with pytest.raises(ValueError, match="unsafe member name") as e:
        gd.load_celeba("all", archive=z)
    assert repr(bad) in str(e.value)
    assert not (tmp_path.parent / "evil.jpg").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip"]


def test_celeba_corrupt_archives(tmp_path):
    z = tmp_path / "broken.zip"
    z.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="not a valid zip archive"):
        gd.load_celeba("all", archive=z)
    z2 = _zip_of(tmp_path / "undecodable.zip", {})
    with zipfile.ZipFile(z2, "a") as f:
        f.writestr("img_align_celeba/000007.jpg", b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match=r"undecodable.zip \[000007\]: cannot decode image"):
        gd.load_celeba("all", archive=z2)


@needs_celeba
def test_celeba_truncated_subset_zip(tmp_path):
    d = tmp_path / "celeba"
    d.mkdir()
    shutil.copyfile(SPLIT, d / celeba.SPLIT_FILE)
    raw = SUBSET_ZIP.read_bytes()
    (d / celeba.SUBSET_ZIP).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="checksum mismatch: expected sha256 d9340ad7"):
        gd.load_celeba(root=tmp_path, limit=4)
    with pytest.raises(ValueError, match="not a valid zip archive"):  # the central directory is gone
        gd.load_celeba(root=tmp_path, limit=4, verify="none")


# ---------------------------------------------------------------------------------------------
# Download (a local HTTP server only) and the command line


@contextlib.contextmanager
def _serve(folder: Path):
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(folder), **k)

        def log_message(self, fmt, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/data/", requests
    finally:
        server.shutdown()
        server.server_close()


@needs_mnist
def test_download_mnist_local_server(tmp_path):
    served = tmp_path / "served" / "data"
    served.mkdir(parents=True)
    for name in mnist.MD5:
        shutil.copyfile(SHARED / "mnist" / name, served / name)
    dest = tmp_path / "dest"
    with _serve(tmp_path / "served") as (url, requests):
        files = gd.download("mnist", dest, base_url=url, timeout=10)
        assert len(requests) == 4
        for name, p in files.items():
            assert p == dest / "mnist" / name
            assert p.read_bytes() == (SHARED / "mnist" / name).read_bytes()
            assert hashlib.md5(p.read_bytes()).hexdigest() == mnist.MD5[name]
        assert sorted(os.listdir(dest / "mnist")) == sorted(mnist.MD5)  # no temporary files left
        gd.download("mnist", dest, base_url=url, timeout=10)  # verified files are kept, not refetched
        assert len(requests) == 4
    x, y = gd.load_mnist("test", dest)
    assert torch.equal(x, _test()[0]) and torch.equal(y, _test()[1])


@needs_mnist
def test_download_corrupted_file_leaves_nothing(tmp_path):
    served = tmp_path / "served" / "data"
    served.mkdir(parents=True)
    for name in mnist.MD5:
        shutil.copyfile(SHARED / "mnist" / name, served / name)
    bad = served / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(bad.read_bytes())
    data[100] ^= 0x01
    bad.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with _serve(tmp_path / "served") as (url, _):
        with pytest.raises(ValueError, match="checksum mismatch: expected md5 ec29112dd5afa0611ce80d1b7f02629c") as e:
            gd.download("mnist", dest, base_url=url, timeout=10)
    assert "t10k-labels-idx1-ubyte.gz" in str(e.value)
    assert "t10k-labels-idx1-ubyte.gz" not in os.listdir(dest / "mnist")
    assert not [n for n in os.listdir(dest / "mnist") if n.endswith(".part")]


def test_download_unreachable_and_bad_args(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(dl.DownloadError, match="could not download from any source"):
        gd.download("mnist", tmp_path, base_url=f"http://127.0.0.1:{port}/", timeout=5)
    assert os.listdir(tmp_path / "mnist") == []
    with pytest.raises(ValueError, match="dataset"):
        gd.download("imagenet", tmp_path)
    with pytest.raises(ValueError, match="base_url"):
        gd.download("mnist", tmp_path, base_url="ftp://example.invalid/")


def test_download_celeba_gives_instructions(tmp_path, capsys):
    with pytest.raises(RuntimeError) as e:
        gd.download("celeba", tmp_path)
    msg = str(e.value)
    assert celeba.OFFICIAL_URL in msg and celeba.OFFICIAL_ZIP_MD5 in msg and celeba.SPLIT_MD5 in msg
    assert dl.main(["--download", "celeba", "--dest", str(tmp_path)]) == 2
    assert celeba.OFFICIAL_URL in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@needs_celeba
def test_download_celeba_from_base_url(tmp_path):
    served = tmp_path / "served" / "data"
    served.mkdir(parents=True)
    shutil.copyfile(SPLIT, served / celeba.SPLIT_FILE)
    shutil.copyfile(SUBSET_ZIP, served / celeba.OFFICIAL_ZIP)  # not the official zip: md5 differs
    dest = tmp_path / "dest"
    with _serve(tmp_path / "served") as (url, _):
        with pytest.raises(ValueError, match=f"expected md5 {celeba.OFFICIAL_ZIP_MD5}"):
            gd.download("celeba", dest, base_url=url, timeout=10)
    assert sorted(os.listdir(dest / "celeba")) == [celeba.SPLIT_FILE]  # the verified split file only


@needs_mnist
@needs_celeba
def test_cli_check(capsys):
    assert dl.main(["--check"]) == 0
    out = capsys.readouterr().out
    assert "MNIST train" in out and "60,000 images" in out and "train 162,770" in out
    assert "10,000 images, digest ok" in out
    assert f"SHA256SUMS: {SHARED / 'SHA256SUMS'}: 6/6 files under {SHARED} ok" in out


def test_cli_check_reports_missing(tmp_path, capsys):
    assert dl.main(["--check", "--root", str(tmp_path)]) == 1
    assert "PROBLEM" in capsys.readouterr().out


@needs_mnist
@needs_celeba
def test_verify_sha256_shipped():
    res = gd.verify_sha256()
    assert len(res) == 6 and all(v["ok"] for v in res.values())
    assert res["celeba/list_eval_partition.txt"]["expected"].startswith("fc955bcb")


# ---------------------------------------------------------------------------------------------
# Issue 17 item 4: an explicitly named data folder is the only place looked; what was read is recorded.


def _partial(tmp_path: Path) -> Path:
    """A data folder with MNIST test complete and only the train images (its labels missing)."""
    d = tmp_path / "partial"
    (d / "mnist").mkdir(parents=True)
    for name in (*mnist.FILES["test"], mnist.FILES["train"][0]):
        (d / "mnist" / name).symlink_to(SHARED / "mnist" / name)
    return d


@needs_mnist
@pytest.mark.parametrize("case", ["missing", "empty", "partial", "file"])
def test_gracheck_data_never_falls_back(tmp_path, monkeypatch, case):
    """$GRACHECK_DATA pointing at a missing folder, an empty one, one missing a file, or a file, used to read
    ../shared/data's copy instead: now every loader raises an error naming $GRACHECK_DATA, its value and
    what is missing there, and never mentions ../shared/data as a place it looked."""
    where = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "partial": None, "file": tmp_path / "f"}[case]
    if case == "empty":
        where.mkdir()
    if case == "file":
        where.write_text("")
    if case == "partial":
        where = _partial(tmp_path)
    monkeypatch.setenv("GRACHECK_DATA", str(where))
    loads = [lambda: gd.load_mnist("train"), lambda: gd.mnist_images("train", limit=5),
             lambda: gd.load_celeba("all", limit=2), gd.celeba_split_counts]
    if case != "partial":
        loads.append(gd.data_root)
    expect = {"missing": "no such folder", "empty": "empty folder",
              "partial": "missing train-labels-idx1-ubyte.gz", "file": "not a folder"}[case]
    for load in loads:
        with pytest.raises(OSError) as e:
            load()
        msg = str(e.value)
        assert f"$GRACHECK_DATA={where}" in msg or f"$GRACHECK_DATA {where}" in msg, msg
        assert str(SHARED) not in msg, msg
        if load is not gd.data_root and "CelebA" not in msg:
            assert expect in msg, msg
    if case == "partial":  # what is there is read from there
        assert mnist.find_mnist("test") == where / "mnist"
    monkeypatch.setenv("GRACHECK_DATA", "")  # set but empty: unset, the default places
    assert mnist.find_mnist("test") == SHARED / "mnist"


@needs_mnist
def test_trainer_refuses_a_bad_gracheck_data(tmp_path, monkeypatch, capsys):
    """The trainer read ../shared/data and exited 0 with $GRACHECK_DATA pointing at an empty folder; now it
    exits 2 with the error naming the folder (and likewise for --data-root)."""
    from gracheck.train import main

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("GRACHECK_DATA", str(tmp_path / "empty"))
    args = ["--arch", "mlp", "--hidden", "8", "--latent-dim", "2", "--steps", "1", "--eval-size", "8",
            "--train-limit", "64", "--batch-size", "8", "--no-progress", "--num-threads", "1"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"$GRACHECK_DATA={tmp_path / 'empty'}" in err and "empty folder" in err and str(SHARED) not in err
    assert not (tmp_path / "run" / "config.json").exists()  # nothing written: the same command works once fixed
    monkeypatch.delenv("GRACHECK_DATA")
    assert main([*args, "--out", str(tmp_path / "run2"), "--data-root", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert f"root argument {tmp_path / 'nope'}" in err and "no such folder" in err


@needs_mnist
@needs_celeba
def test_cli_check_names_the_folder_of_each_line(tmp_path, monkeypatch, capsys):
    """`--check` printed "SHA256SUMS: 6/6 files ok" (about ../shared/data) beside a PROBLEM line about the
    folder $GRACHECK_DATA named. Now the named folder is the only one checked and every line says which
    folder or file it is about."""
    part = _partial(tmp_path)
    monkeypatch.setenv("GRACHECK_DATA", str(part))
    assert dl.main(["--check"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Data folder: {part}  ($GRACHECK_DATA; the only place searched)"
    heads = [ln for ln in lines if not ln.startswith(" ") and ":" in ln][1:]
    by = {h.split(":")[0]: h for h in heads}
    assert set(by) >= {"MNIST train", "MNIST test", "CelebA split file", "CelebA images", "SHA256SUMS"}, heads
    assert by["MNIST test"].startswith(f"MNIST test: {part / 'mnist'}: 10,000 images")
    assert by["MNIST train"].startswith(f"MNIST train: PROBLEM in {part} ($GRACHECK_DATA)")
    assert f"  {part / 'mnist'}  ($GRACHECK_DATA, mnist/: missing train-labels-idx1-ubyte.gz)" in lines
    assert by["SHA256SUMS"] == f"SHA256SUMS: none in {part} ($GRACHECK_DATA) (only the shipped shared/data has one)"
    assert not any(str(SHARED) in ln for ln in lines)
    monkeypatch.setenv("GRACHECK_DATA", str(tmp_path / "nope"))
    assert dl.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM: $GRACHECK_DATA={tmp_path / 'nope'}: no such folder" in out and str(SHARED) not in out


@needs_mnist
@needs_celeba
def test_record_reads_names_folders_and_checksums(tmp_path):
    """record_reads: the folder each data set was read from (and how it was chosen) and each file read with
    the checksum its loader verified, compared here with hashlib over the file bytes; blocks nest; a
    cached read (second load) is recorded too; verify='none' records no checksum."""
    with gd.record_reads() as outer:
        with gd.record_reads() as inner:
            gd.load_mnist("test")
        gd.load_mnist("test")  # digest cache hit: still noted
        gd.load_celeba("train", limit=3)  # reads the split file too ("all" does not)
    d = inner.to_dict()
    assert d["folders"] == {str(SHARED / "mnist"): "repository ../shared/data"}
    for name in mnist.FILES["test"]:
        f = d["files"][str(SHARED / "mnist" / name)]
        assert f["md5"] == hashlib.md5((SHARED / "mnist" / name).read_bytes()).hexdigest() == mnist.MD5[name]
        assert f["bytes"] == (SHARED / "mnist" / name).stat().st_size
    o = outer.to_dict()
    assert o["files"][str(SUBSET_ZIP)]["sha256"] == hashlib.sha256(SUBSET_ZIP.read_bytes()).hexdigest()
    assert o["files"][str(SPLIT)]["md5"] == celeba.SPLIT_MD5 and str(SHARED / "celeba") in o["folders"]
    assert set(d["files"]) < set(o["files"])
    d2 = _copy_mnist(tmp_path)
    with gd.record_reads() as rec:
        gd.load_mnist("test", tmp_path, verify="none")
    f = rec.to_dict()["files"][str(d2 / mnist.FILES["test"][0])]
    assert "md5" not in f and f["verify"] == "none"
    assert rec.to_dict()["folders"] == {str(d2): "root argument"}
    with gd.record_reads() as rec:
        gd.note_reads(o)  # a record made earlier (a cached model's result.json) merges in
    assert rec.to_dict() == o


_READING_EXPERIMENT = '''
import dataclasses
from gracheck.data import mnist_images
from gracheck.experiments._common import ExperimentResult, Metric, config_dict, experiment_claim

CLAIM = experiment_claim(__name__, id="test-reading-experiment", source="-", statement="Reads MNIST.",
                         title="R", shows="nothing")

@dataclasses.dataclass(frozen=True)
class Config:
    n: int = 4

CONFIGS = {"smoke": Config(), "paper": Config(8)}

def run(config, *, seed, device, out_dir, progress=None):
    x, _ = mnist_images("test", limit=config.n)
    return ExperimentResult(claim_id=CLAIM.id, scale="smoke", config=config_dict(config), seeds=[seed],
                            device=device, metrics={"m": Metric(float(x.mean()))}, figures=[], seconds=0.1)

def check(res):
    return []
'''


@needs_mnist
def test_experiment_result_records_the_data_read(tmp_path, monkeypatch):
    """An ExperimentResult records the data folder and the files its run read (with their md5), and keeps the
    record through the result cache (a cached result says what it was computed from)."""
    from gracheck.experiments import ExperimentResult, run_experiment

    (tmp_path / "readexp.py").write_text(_READING_EXPERIMENT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GRACHECK_CACHE", str(tmp_path / "cache"))
    res = run_experiment("readexp", scale="smoke", seed=0, out_dir=tmp_path / "out")
    want = {str(SHARED / "mnist" / n): mnist.MD5[n] for n in mnist.FILES["test"]}
    assert {k: v["md5"] for k, v in res.data_read["files"].items()} == want
    assert res.data_read["folders"] == {str(SHARED / "mnist"): "repository ../shared/data"}
    again = run_experiment("readexp", scale="smoke", seed=0, out_dir=tmp_path / "out")
    assert "loaded from cache" in again.notes[-1] and again.data_read == res.data_read
    assert ExperimentResult.from_dict(res.to_dict()).data_read == res.data_read
