"""Full-page screenshots of a report card in headless Chromium at a desktop and a phone width.

    .venv/bin/python docs/results/cards/screenshot.py docs/results/cards/flips/report.html

writes ``screenshot-1280.png`` and ``screenshot-390.png`` beside the page. Headless Chromium
will not make a window narrower than 500 px, so each width is an ``<iframe>`` of exactly that
many CSS px in a wrapper page (as in tests/test_card_browser.py), measured first (its page
height, via ``--dump-dom``) and then shot, and the shot cropped to the iframe with Pillow.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]
WRAPPER = """<!doctype html><html><head><meta charset="utf-8"></head><body style="margin:0">
<iframe id="f" src="%s" style="width:%dpx;height:%dpx;border:0;display:block"></iframe>
<script>document.getElementById("f").addEventListener("load", function () {
  var p = document.createElement("pre"); p.id = "h";
  p.textContent = this.contentDocument ? this.contentDocument.documentElement.scrollHeight : -1;
  document.body.appendChild(p); });</script></body></html>"""


def chromium(args: list[str]) -> str:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=300, check=True).stdout


def shoot(page: Path, width: int) -> Path:
    wrapper = page.with_name(f".wrapper-{width}.html")
    window = max(width, 500) + 20
    try:
        wrapper.write_text(WRAPPER % (page.name, width, 1000))
        dom = chromium([f"--window-size={window},1000", "--allow-file-access-from-files",
                        "--virtual-time-budget=5000", "--dump-dom", wrapper.as_uri()])
        found = re.search(r'<pre id="h">(-?\d+)</pre>', dom)
        height = int(found.group(1)) if found and int(found.group(1)) > 0 else 6000
        wrapper.write_text(WRAPPER % (page.name, width, height))
        shot = page.with_name(f"screenshot-{width}.png")
        chromium([f"--window-size={window},{height}", "--virtual-time-budget=5000",
                  f"--screenshot={shot}", wrapper.as_uri()])
    finally:
        wrapper.unlink(missing_ok=True)
    with Image.open(shot) as img:
        img.crop((0, 0, width, height)).convert("RGB").save(shot, optimize=True)
    return shot


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        for w in (1280, 390):
            print(shoot(Path(arg).resolve(), w))
