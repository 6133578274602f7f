"""Renders a study's report.html to a PNG in headless Chromium: the report as a reader sees it.

    apt-get install -y chromium        # Debian's package; nothing is downloaded at run time
    python experiments/screenshot_report.py --workdir runs/study            # -> W/report.png
    python experiments/screenshot_report.py --html W/report.html --out a.png --height 6000

Chromium runs offline with a throw-away profile (no sync, no component updates, no background
networking), so the PNG shows exactly what the self-contained report.html holds.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def chromium_command(html: pathlib.Path, out: pathlib.Path, profile: str, *, width: int,
                     height: int, browser: str) -> list[str]:
    """The headless-Chromium command line that screenshots `html` to `out`."""
    return [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
        f"--screenshot={out}", f"--window-size={width},{height}", html.resolve().as_uri(),
    ]


def screenshot(html: str | pathlib.Path, out: str | pathlib.Path, *, width: int = 1400,
               height: int = 3000, timeout: float = 120.0) -> pathlib.Path:
    """Writes a PNG of the top `height` pixels of `html` rendered `width` pixels wide.

    Raises:
      ValueError: `html` missing, or no Chromium on PATH.
      RuntimeError: Chromium failed or wrote no PNG (its stderr in the message).
    """
    html, out = pathlib.Path(html), pathlib.Path(out)
    if not html.exists():
        raise ValueError(f"html: no such file {str(html)!r}")
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        raise ValueError("chromium: not on PATH (apt-get install -y chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="routecal-chromium-") as profile:
        cmd = chromium_command(html, out.resolve(), profile, width=width, height=height,
                               browser=browser)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a study workdir holding report.html")
    src.add_argument("--html", help="any html file")
    p.add_argument("--out", default=None, help="PNG path (default: beside the html)")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=3000)
    args = p.parse_args(argv)
    html = pathlib.Path(args.html) if args.html else pathlib.Path(args.workdir) / "report.html"
    out = pathlib.Path(args.out) if args.out else html.with_suffix(".png")
    print(screenshot(html, out, width=args.width, height=args.height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
