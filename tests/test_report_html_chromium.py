"""Render ``report.html`` in headless Chromium and check the picture: not blank, banner legible.

Skipped when Chromium is absent (``.ci/run`` installs Debian's ``chromium`` so it runs in CI).
The PNG is kept under pytest's tmp_path; set ``GRACHECK_SCREENSHOT=/some/file.png`` to
keep a copy to look at.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gracheck.report import build_report

# The fake claims of test_report.py (loaded by path so this works under any pytest import mode;
# only the fixture is taken, so its tests are not collected twice).
_spec = importlib.util.spec_from_file_location("_gracheck_report_fakes", Path(__file__).with_name("test_report.py"))
_fakes_mod = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(_fakes_mod, "fakes"):
    _spec.loader.exec_module(_fakes_mod)
fakes = _fakes_mod.fakes

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

BANNER_RGB = (0xFF, 0xF8, 0xC5)  # the smoke-scale banner's background in _render_html._CSS


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render_png(html: Path, png: Path, profile: Path, size: str = "1280,2000") -> subprocess.CompletedProcess:
    exe = _chromium()
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={size}",
           html.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_report_html_renders_in_chromium(fakes, tmp_path):
    if _chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    from PIL import Image

    res = build_report(
        tmp_path / "rep",
        only=["test-fake-pass", "test-fake-fail", "test-fake-erratum", "test-fake-skip", "test-fake-refuted",
              "test-fake-experiment"],
        device="cpu",
        results_dir=None,
    )
    png = tmp_path / "report.png"
    proc = render_png(res.html_path, png, tmp_path / "chromium-profile")
    assert png.is_file(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    keep = os.environ.get("GRACHECK_SCREENSHOT")
    if keep:
        shutil.copyfile(png, keep)

    img = Image.open(png).convert("RGB")
    assert img.size == (1280, 2000)
    grey = img.convert("L")
    lo, hi = grey.getextrema()
    assert hi - lo > 200, "the screenshot is blank"

    # The scale banner: rows whose background is the banner colour, holding dark (text) pixels.
    w, h = img.size
    px = img.load()

    def banner_row(y: int) -> bool:
        hits = sum(1 for x in range(0, w, 8) if all(abs(a - b) <= 6 for a, b in zip(px[x, y], BANNER_RGB)))
        return hits > (w // 8) * 0.5

    rows = [y for y in range(0, 600) if banner_row(y)]
    assert rows, "no scale banner in the first 600 px"
    top, bottom = rows[0], rows[-1]
    assert bottom - top >= 40, "the banner is too small to read"
    dark = sum(1 for y in range(top, bottom + 1) for x in range(0, w, 2) if grey.getpixel((x, y)) < 80)
    assert dark > 200, "the banner holds no legible text"


INCONCLUSIVE_RGB = (0x82, 0x50, 0xDF)  # STATUS_COLOURS["inconclusive"]: the badge and the finding's border


@pytest.mark.slow
def test_inconclusive_badge_renders_in_chromium(fakes, tmp_path):
    """issue 12: the HTML report rendered in headless Chromium shows the inconclusive badge."""
    if _chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    from PIL import Image

    from gracheck.report._figures import STATUS_COLOURS

    assert STATUS_COLOURS["inconclusive"] == "#%02x%02x%02x" % INCONCLUSIVE_RGB
    res = build_report(tmp_path / "rep", only=["test-fake-pass", "test-fake-inconclusive"], device="cpu",
                       results_dir=None)
    png = tmp_path / "report.png"
    proc = render_png(res.html_path, png, tmp_path / "chromium-profile", size="1280,1400")
    assert png.is_file(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    img = Image.open(png).convert("RGB")
    px = img.load()
    w, h = img.size
    hits = sum(1 for y in range(h) for x in range(0, w, 2) if all(abs(a - b) <= 8 for a, b in zip(px[x, y], INCONCLUSIVE_RGB)))
    assert hits > 150, f"no inconclusive badge/finding drawn ({hits} pixels of its colour)"
