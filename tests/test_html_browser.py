"""Open the static leaderboard page in headless Chromium and check the screenshot shows
the table: the header colour is on screen and the page differs from the same page with
its tables removed. Skipped (with the reason) where no Chromium is installed; install it
with `apt-get install -y chromium`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from _records_fixture import make_records

from bench.report.render import render

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install -y chromium)")
HEADER_RGB = np.array([0xE8, 0xEE, 0xF7]) / 255  # table.board th background in bench/report/html_page.py


def screenshot(page: Path, tmp: Path) -> np.ndarray:
    png = tmp / (page.stem + ".png")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp / ('profile-' + page.stem)}", f"--screenshot={png}", "--window-size=1200,900",
           page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.is_file(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return mpimg.imread(png)[..., :3]


def test_screenshot_shows_the_table(tmp_path):
    tables = tmp_path / "tables"
    render(make_records(), tables)
    page = tables / "index.html"
    html = page.read_text(encoding="utf-8")
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r'<table class="board".*?</table>', "", html, flags=re.S), encoding="utf-8")

    shot, empty = screenshot(page, tmp_path), screenshot(bare, tmp_path)
    assert shot.shape[:2] == (900, 1200)
    assert shot.std() > 0.05, "screenshot is blank"
    header_px = np.all(np.abs(shot - HEADER_RGB) < 2 / 255, axis=-1).sum()
    assert header_px > 2000, f"table header colour covers only {header_px} pixels"
    assert np.all(np.abs(empty - HEADER_RGB) < 2 / 255, axis=-1).sum() < 100  # a few anti-aliased pixels
    changed = np.any(np.abs(shot - empty) > 0.1, axis=-1).mean()
    assert changed > 0.05, f"the page with tables differs from the bare page in only {changed:.1%} of pixels"


SUMMARY_RGB = np.array([0xDC, 0xEF, 0xE0]) / 255  # #summary th in bench/report/html_page.py


def test_the_summary_is_visible_without_scrolling(tmp_path):
    """On a 1200×900 screen the summary table's header is on the first screen."""
    tables = tmp_path / "tables"
    render(make_records(), tables)
    shot = screenshot(tables / "index.html", tmp_path)
    summary_px = np.all(np.abs(shot - SUMMARY_RGB) < 2 / 255, axis=-1).sum()
    assert summary_px > 2000, f"the summary header covers only {summary_px} pixels of the first screen"
