"""The built documentation site, checked as a reader would see it.

``make test`` builds the site first (``make docs``, warnings as errors) and points
``MTL_FAST_DOCS_HTML`` at it; without it the fixture builds the site itself. The checks: every
internal link and asset resolves (a small link checker over the HTML), nothing is loaded from
the network (the site works offline: no CDN), math is MathML rendered at build time, and
headless Chromium renders the landing page, a method page and the API page with their content
(skipped, saying so, only where Chromium is not installed and cannot be: ``make browser``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.docs import _browser
from tests.docs._blocks import DOCS

pytest.importorskip("sphinx", reason='the docs extra is not installed: pip install -e ".[docs]"')


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    given = os.environ.get("MTL_FAST_DOCS_HTML")
    if given and (Path(given) / "index.html").is_file():
        return Path(given).resolve()
    out = tmp_path_factory.mktemp("html")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html"]
    done = subprocess.run([*cmd, str(DOCS), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-5000:]
    return out


class _Page(HTMLParser):
    """The ids, links and assets of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.assets: list[str] = []
        self.tags: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for key in ("id", "name"):
            if a.get(key):
                self.ids.add(str(a[key]))
        if tag == "a" and a.get("href"):
            self.links.append(str(a["href"]))
        if tag in ("img", "script", "source", "iframe") and a.get("src"):
            self.assets.append(str(a["src"]))
        if tag == "link" and a.get("href") and a.get("rel") in ("stylesheet", "icon", "preload"):
            self.assets.append(str(a["href"]))


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def parsed(site) -> dict[Path, _Page]:
    return {p: _parse(p) for p in sorted(site.rglob("*.html"))}


def test_every_internal_link_and_asset_resolves(site, parsed):
    broken = []
    for path, page in parsed.items():
        for url in page.links + page.assets:
            parts = urlsplit(url)
            if parts.scheme or url.startswith("//") or url.startswith("mailto:"):
                continue
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{path.relative_to(site)}: {url} (no file)")
            elif parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{path.relative_to(site)}: {url} (no anchor)")
    assert not broken, "\n".join(broken[:50])


def test_nothing_is_loaded_from_the_network(parsed, site):
    remote = [
        f"{path.relative_to(site)}: {url}"
        for path, page in parsed.items()
        for url in page.assets
        if urlsplit(url).scheme in ("http", "https") or url.startswith("//")
    ]
    assert not remote, "\n".join(remote[:20])


def test_the_site_has_its_pages(site):
    from mtl_fast.methods import registry

    for rel in (
        "index.html",
        "getting-started.html",
        "concepts.html",
        "which-method.html",
        "benchmarks.html",
        "comparison.html",
        "pitfalls.html",
        "changelog.html",
        "bibliography.html",
        "api/index.html",
        "api/mtl_fast.html",
        "recipes/lightning.html",
        "methods/index.html",
    ):
        assert (site / rel).is_file(), rel
    for spec in registry.REGISTRY:
        assert (site / "methods" / f"{spec.name}.html").is_file(), spec.name


def test_math_is_mathml(parsed, site):
    concepts = parsed[site / "concepts.html"]
    assert concepts.tags.get("math", 0) >= 5
    for path, page in parsed.items():
        assert "math-fallback" not in path.read_text(encoding="utf-8"), path
        assert not [a for a in page.assets if "mathjax" in a.lower()], path  # no JS renderer


def test_every_public_name_is_documented(site):
    """Each name of ``mtl_fast.__all__`` has an entry (an id) on the API or a method page."""
    import mtl_fast

    ids = set()
    for path in [*site.glob("api/*.html"), *site.glob("methods/*.html")]:
        ids |= _parse(path).ids
    missing = [
        n
        for n in mtl_fast.__all__
        if not n.startswith("__")
        and f"mtl_fast.{n}" not in ids
        and f"module-{getattr(mtl_fast, n).__name__}" not in ids
    ]
    assert not missing, missing


needs_chromium = pytest.mark.skipif(
    _browser.chromium() is None,
    reason="headless Chromium is not installed (make browser installs Debian's chromium)",
)


@needs_chromium
@pytest.mark.parametrize(
    "rel, expected",
    [
        ("index.html", ["Fast, correct multi-task loss weighting", "Getting started"]),
        ("methods/IMTLG.html", ["Measured cost", "Example", "mtl_fast.IMTLG"]),
        ("api/mtl_fast.html", ["mtl_fast.Weighting", "mtl_fast.gram"]),
        ("concepts.html", ["<math", "Gram space"]),
    ],
)
def test_chromium_renders(site, rel, expected):
    dom = _browser.dump_dom(site / rel)
    for text in expected:
        assert text in dom, f"{rel}: {text!r} not in the rendered page"
    assert "furo" in dom.lower()  # the theme's stylesheet and scripts were applied


@needs_chromium
def test_method_page_screenshot(site, tmp_path):
    png = _browser.screenshot(site / "methods" / "IMTLG.html", tmp_path / "page.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a page, not a blank image
