"""experiments/screenshot_report.py: report.html -> PNG in headless Chromium (skipped without it)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest


def test_command_is_offline_and_throwaway(tmp_path, experiment_script):
    cmd = experiment_script("screenshot_report").chromium_command(tmp_path / "r.html", tmp_path / "o.png", "/tmp/p",
                                     width=800, height=600, browser="chromium")
    for flag in ("--headless", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--user-data-dir=/tmp/p", "--window-size=800,600"):
        assert flag in cmd
    assert cmd[-1] == (tmp_path / "r.html").resolve().as_uri()


def test_missing_html_raises(tmp_path, experiment_script):
    with pytest.raises(ValueError, match="html: no such file"):
        experiment_script("screenshot_report").screenshot(tmp_path / "nope.html", tmp_path / "o.png")


@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed")
def test_png_shows_the_page(tmp_path, experiment_script):
    from PIL import Image

    html = tmp_path / "r.html"
    # A black block 200 px tall on a white page: the PNG must have it at the top-left.
    html.write_text('<html><body style="margin:0;background:#fff">'
                    '<div style="width:300px;height:200px;background:#000"></div></body></html>')
    out = experiment_script("screenshot_report").screenshot(html, tmp_path / "o.png", width=640, height=400)
    img = np.asarray(Image.open(out).convert("L"), np.float64)
    assert img.shape == (400, 640)
    assert img[:190, :290].mean() < 10 and img[220:, 320:].mean() > 245
