"""A report page as a PNG, through headless Chromium: to look at a page without a browser open.

Chromium's `--screenshot` captures the window, so the window is made taller than most pages and
the screenshot cropped to where the page ends (the rows below it are all background).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html_path: str | os.PathLike, png_path: str | os.PathLike, *, browser: str | None = None,
               width: int = 1280, height: int = 16000, timeout_s: float = 120.0, crop: bool = True
               ) -> tuple[Path, bool]:
    """Render `html_path` headless to `png_path` (offline: no network, no GPU, a throw-away
    profile), cropped below the page's end unless `crop` is false. Returns the PNG's path and
    whether the whole page fitted in `height` (False: it was cut; give a larger height).
    Raises RuntimeError when no browser is found or it writes no screenshot in `timeout_s`."""
    browser = browser or find_chromium()
    if browser is None:
        raise RuntimeError(f"no Chromium found (looked for {', '.join(BROWSERS)}): install it, e.g. "
                           "`apt-get install chromium`, to render a report to PNG")
    source, out = Path(html_path).resolve(), Path(png_path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="posttrain-chromium-") as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={out}",
                   f"--window-size={width},{height}", source.as_uri()]
        # Its own process group, so that on a timeout the browser's helper processes go with it.
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
    if not out.is_file() or out.stat().st_size == 0:
        tail = output.decode("utf-8", "replace")[-2000:] if output else ""
        raise RuntimeError(f"{browser} wrote no screenshot of {source} (exit {process.returncode}):\n{tail}")
    cut = crop_to_content(out) if crop else False
    return out, not cut


def crop_to_content(png_path: Path, margin: int = 24) -> bool:
    """Cut the rows below the last one that differs from the bottom row's colour (the page's
    background); returns whether the image reached its bottom (a page longer than the window)."""
    import numpy as np
    from matplotlib import image as mpimg

    pixels = mpimg.imread(png_path)
    background = pixels[-1:, :, :3]
    differs = np.abs(pixels[:, :, :3] - background).max(axis=(1, 2)) > 1e-3
    rows = np.nonzero(differs)[0]
    if not len(rows):
        return False
    end = min(int(rows[-1]) + 1 + margin, pixels.shape[0])
    mpimg.imsave(png_path, pixels[:end])
    return end == pixels.shape[0]
