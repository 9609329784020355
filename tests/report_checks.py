"""Checks of a `dcflow report` page as a reader meets it: parsed HTML, pictures, links."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

RAW_METADATA = re.compile(r"\b(ENCODING|ERRORS|VERSION)\b\s+(utf-8|strict|\d+\.\d+)", re.I)
"""A docutils settings block printed as text (the garbled home page of issue 19)."""


class ReportPage(HTMLParser):
    """The ids, links, images and visible text of one HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.nav_links: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self._in_nav = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag == "nav":
            self._in_nav = True
        if tag == "a" and "href" in attributes:
            self.links.append(attributes["href"])
            if self._in_nav:
                self.nav_links.append(attributes["href"])
        if tag == "img":
            self.images.append(attributes.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "nav":
            self._in_nav = False

    def handle_data(self, data):
        self.text.append(data)


def image_pixels(src: str, base: Path) -> np.ndarray:
    """An <img> source (data: URI or a path relative to the page) as an RGB(A) array."""
    import matplotlib.image

    if src.startswith("data:image/png;base64,"):
        data = base64.b64decode(src.split(",", 1)[1])
    else:
        data = (base / src).read_bytes()
    return matplotlib.image.imread(io.BytesIO(data), format="png")


def check_report(path: Path) -> ReportPage:
    """Assert the page reads: no raw metadata, every picture a real image, every link lands."""
    text = path.read_text()
    page = ReportPage(text)
    visible = " ".join(page.text)
    assert not RAW_METADATA.search(visible), RAW_METADATA.search(visible).group(0)
    assert page.images, "no pictures"
    for src in page.images:
        pixels = image_pixels(src, path.parent)
        assert pixels.shape[0] >= 50 and pixels.shape[1] >= 50, pixels.shape
        assert float(np.std(pixels[..., :3])) > 0.01, "a blank picture"
    assert page.nav_links, "no links on the home section"
    for href in page.links:
        if href.startswith("#"):
            assert href[1:] in page.ids, f"link {href} lands nowhere"
        else:
            assert (path.parent / href).is_file(), f"link {href} names no file"
    return page


def chromium() -> str | None:
    """Debian's chromium, when installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


BROKEN_IMAGES_PROBE = (
    "<script>window.addEventListener('load', () => document.body.setAttribute('data-broken',"
    " [...document.images].filter(i => i.naturalWidth === 0).length))</script>"
)
"""Appended to a copy of the page: after loading, the body counts images that did not decode."""


def broken_images_in_browser(path: Path, browser: str, workdir: Path) -> int:
    """How many of the page's images a headless chromium failed to decode."""
    probe = workdir / "probe.html"
    probe.write_text(path.read_text().replace("</body>", BROKEN_IMAGES_PROBE + "</body>"))
    for name in path.parent.iterdir():  # relative links of the page, if any
        if name != path and not (workdir / name.name).exists():
            (workdir / name.name).symlink_to(name)
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = re.search(r'data-broken="(\d+)"', proc.stdout)
    assert found, f"the page did not finish loading: {proc.stderr[-1000:]}"
    return int(found.group(1))
