"""Regenerate the report screenshot in the docs (docs/img/report.png) from a report page.

    make screenshot                      # runs/demo/report.html (make demo writes it) -> docs/img/report.png
    python examples/report_screenshot.py runs/demo/report.html -o docs/img/report.png [--width 1100]

Headless Chromium renders the self-contained page (no network: every image is inline) into a tall
window; the blank space below the page is trimmed (Pillow) and the image scaled to ``--scale-to``
pixels wide. Chromium comes from the system (Debian/Ubuntu: apt-get install chromium); set
$CHROMIUM to its path if it is not on PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageChops

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser() -> str:
    found = os.environ.get("CHROMIUM") or next((b for b in map(shutil.which, BROWSERS) if b), None)
    if not found:
        sys.exit("error: no Chromium found. install it (apt-get install chromium) or set CHROMIUM to its path")
    return found


def trim_bottom(img: Image.Image, margin: int = 24) -> Image.Image:
    """Drop the rows below the last non-background pixel (the window is taller than the page)."""
    rgb = img.convert("RGB")
    bg = Image.new("RGB", rgb.size, rgb.getpixel((0, rgb.height - 1)))
    box = ImageChops.difference(rgb, bg).getbbox()
    return rgb if box is None else rgb.crop((0, 0, rgb.width, min(rgb.height, box[3] + margin)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("page", type=Path, nargs="?", default=Path("runs/demo/report.html"))
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/img/report.png"))
    ap.add_argument("--width", type=int, default=1100, help="browser window width in CSS pixels")
    ap.add_argument("--height", type=int, default=8000, help="window height: at least the page's")
    ap.add_argument("--scale-to", type=int, default=900, help="width of the written PNG")
    a = ap.parse_args()
    if not a.page.is_file():
        sys.exit(f"error: {a.page} does not exist. run make demo (or edgedd report RUN) first")
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        cmd = [
            browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp}/profile",
            f"--window-size={a.width},{a.height}",
            f"--screenshot={shot}",
            a.page.resolve().as_uri(),
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        img = trim_bottom(Image.open(shot))
    if a.scale_to and img.width > a.scale_to:
        img = img.resize((a.scale_to, round(img.height * a.scale_to / img.width)), Image.LANCZOS)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(a.out, optimize=True)
    print(f"wrote {a.out} ({img.width}x{img.height}) from {a.page}")


if __name__ == "__main__":
    main()
