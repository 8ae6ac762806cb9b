"""The HTML report card in a real browser (headless Chromium): it loads without errors, every
figure decodes and has alt text, and nothing overflows sideways at a phone's width.

The browser checks run where ``/usr/bin/chromium`` exists (Debian's ``chromium`` package) and
are skipped with that reason elsewhere (CI does not install it). How the page is probed: the test
writes a copy of the card with a small script at the top of ``<head>`` that records uncaught
errors, failed resource loads (the ``error`` event, capture phase) and ``console.error`` calls,
and on ``load`` writes what it measured as JSON into a ``<pre id="probe">``; Chromium's
``--dump-dom`` prints the DOM after ``--virtual-time-budget`` has let the load handlers run, and
the test reads the JSON back. The card is shown in an ``<iframe>`` exactly ``width`` CSS px wide
inside a wrapper page (the probe posts its JSON to the wrapper), because headless Chromium
will not make a window narrower than 500 px: the iframe is the phone's viewport (its media
queries, its ``clientWidth``). This does not depend on the format of Chromium's stderr log
(``--enable-logging`` lines change between versions and carry unrelated noise), and the same
hook sees script errors, broken images and console errors alike.
"""
from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from mladv.cli import main
from mladv.reporting import to_html

pytestmark = pytest.mark.usefixtures("one_thread")
CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium (Debian's chromium package; CI lacks it)")
# flags that keep a headless Chromium off the network (the sandboxed machines refuse it) and
# out of the user's profile
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  window.__errors.push(t && t !== window ? "load failed: <" + t.tagName + "> "
                       + String(t.src || t.href || "").slice(0, 60) : String(e.message));
}, true);
var __ce = console.error;
console.error = function () {
  window.__errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
  __ce.apply(console, arguments);
};
window.addEventListener("load", function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    return {alt: i.getAttribute("alt"), w: i.naturalWidth, h: i.naturalHeight,
            shown: i.getBoundingClientRect().width};
  });
  parent.postMessage(JSON.stringify({
    errors: window.__errors, images: imgs,
    tableWidths: Array.prototype.map.call(document.querySelectorAll("table"),
                                          function (t) { return t.scrollWidth; }),
    scrollWidth: document.documentElement.scrollWidth,
    bodyScrollWidth: document.body.scrollWidth,
    clientWidth: document.documentElement.clientWidth}), "*");
});
</script>"""
WRAPPER = """<!doctype html><html><head><meta charset="utf-8"></head><body style="margin:0">
<script>window.addEventListener("message", function (e) {
  var pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = e.data;
  document.body.appendChild(pre); });</script>
<iframe src="%s" style="width:%dpx;height:900px;border:0"></iframe></body></html>"""


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """A tiny card: small_cnn trained one epoch on 12 phantoms per class at 32 px, evaluated
    on its held-out split with a 2-point PGD curve, the chain (examples figure), the shift
    table and one corruption family, 20 bootstrap resamples."""
    root = tmp_path_factory.mktemp("card")
    for args in (["train", "phantoms:12", "--arch", "small_cnn", "--image-size", "32",
                  "--epochs", "1", "--out", str(root / "m")],
                 ["evaluate", str(root / "m" / "model.pt"), "phantoms:12", "--max-images", "6",
                  "--pgd-eps", "1", "--pgd-eps", "2", "--pgd-steps", "2", "--no-mladv",
                  "--min-eps-images", "0", "--corruptions", "gaussian_noise",
                  "--bootstrap", "20", "--out", str(root / "card")]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 0
    return root / "card" / "report.html"


def probe(page: Path, width: int) -> dict[str, Any]:
    """Load a probed copy of ``page`` in headless Chromium in a ``width`` px iframe; the
    probe's JSON."""
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    wrapper = page.with_name(f"wrapper-{width}.html")
    wrapper.write_text(WRAPPER % (probed.name, width))
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}",
             f"--window-size={max(width, 500) + 40},1000", "--virtual-time-budget=5000",
             "--dump-dom", wrapper.as_uri()],
            capture_output=True, text=True, timeout=120, check=True).stdout
    found = re.search(r'<pre id="probe"[^>]*>(.*?)</pre>', out, re.S)
    assert found, f"no probe in the dumped DOM: {out[:300]!r}"
    return dict(json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")
                           .replace("&lt;", "<").replace("&gt;", ">")))


def test_the_card_page_fetches_nothing_outside_itself(card: Path) -> None:
    """Every src / href is a data: URI or an in-page anchor, no CSS url() or @import, no
    script: the page is one file."""
    html = card.read_text()
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert refs and all(r.startswith(("data:", "#")) for r in refs)
    assert "url(" not in html and "@import" not in html and "<script" not in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html


def test_every_figure_of_the_card_has_alt_text_that_is_not_its_caption_or_file(
        card: Path) -> None:
    """Four figures (curve, shift, corruption, examples), each alt saying what it plots."""
    alts = re.findall(r'<img alt="([^"]*)"', card.read_text())
    assert len(alts) == 4
    assert all(len(a) > 40 and ".png" not in a for a in alts)
    assert alts[0].startswith("Line chart of accuracy under own-model PGD against eps")


@needs_chromium
@pytest.mark.parametrize("width", [1280, 390])
def test_the_card_loads_in_chromium_without_errors_with_every_image_decoded(
        card: Path, width: int) -> None:
    seen = probe(card, width)
    assert seen["errors"] == []
    images = seen["images"]
    assert isinstance(images, list) and len(images) == 4
    for img in images:
        assert img["w"] > 0 and img["h"] > 0 and img["alt"].strip()
        assert 0 < img["shown"] <= width


@needs_chromium
def test_nothing_overflows_sideways_at_a_phone_s_width(card: Path) -> None:
    """At 390 px (a phone) the page is no wider than the window: wide tables scroll inside
    their wrapper, figures shrink to the column, long hashes and paths wrap."""
    seen = probe(card, 390)
    assert seen["scrollWidth"] == seen["clientWidth"] == 390
    assert seen["bodyScrollWidth"] <= seen["clientWidth"]



@needs_chromium
def test_a_table_wider_than_a_phone_scrolls_inside_its_wrapper(tmp_path: Path) -> None:
    """A 16-column table (wider than 390 px) leaves the page 390 px wide."""
    page = tmp_path / "wide.html"
    head = [f"column {i}" for i in range(16)]
    page.write_text(to_html([("h", "wide"), ("table", head, [["0.9650"] * 16])], "wide", tmp_path))
    seen = probe(page, 390)
    assert seen["tableWidths"][0] > 390
    assert seen["scrollWidth"] == seen["clientWidth"] == 390
