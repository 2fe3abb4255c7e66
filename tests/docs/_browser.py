"""Headless Chromium for the documentation tests: render a page, take a screenshot.

python tests/docs/_browser.py docs/_build/html/methods/IMTLG.html docs/screenshot-method-page.png
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str | None:
    """The Chromium executable, or ``None`` when it is not installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def run(page: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = chromium()
    assert exe, "chromium is not installed"
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def dump_dom(page: Path) -> str:
    """The DOM after the page's scripts ran (``--dump-dom``)."""
    done = run(page, "--dump-dom", "--virtual-time-budget=3000")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 1600) -> Path:
    done = run(page, f"--screenshot={png.resolve()}", f"--window-size={width},{height}")
    assert done.returncode == 0 and png.is_file(), done.stderr[-2000:]
    return png


if __name__ == "__main__":
    print(screenshot(Path(sys.argv[1]), Path(sys.argv[2])))
