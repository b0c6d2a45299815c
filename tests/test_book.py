"""The book (book/): every page served locally and opened in headless Chromium.

Builds the book with book/build.sh into a temporary folder (or takes the built
site in BRLIB_BOOK_DIR), serves it with `python -m http.server` on 127.0.0.1,
and opens every HTML page through Playwright. Each page must load without
console errors, draw every image, render every formula with MathJax, draw its
saved widgets, keep its <details> closed, and link only to pages and files that
the server has (anchors included). Every request to another host is blocked
and recorded, so a page that needs the network fails. Skipped when the book's packages (book/requirements.txt),
its vendored JavaScript (book/vendor.sh), Playwright or Chromium is missing,
unless BRLIB_REQUIRE_BOOK=1, which turns the skip into a failure.
"""

import importlib.util
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import chromium
import pytest

ROOT = Path(__file__).resolve().parents[1]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def require(condition, reason):
    chromium.require(condition, reason, "BRLIB_REQUIRE_BOOK")


@pytest.fixture(scope="module")
def book_dir(tmp_path_factory):
    if os.environ.get("BRLIB_BOOK_DIR"):
        site = Path(os.environ["BRLIB_BOOK_DIR"])
        assert (site / "index.html").is_file(), f"BRLIB_BOOK_DIR={site} holds no built book"
        return site
    for module in ("sphinx", "myst_nb", "furo"):
        require(importlib.util.find_spec(module) is not None,
                f"{module} is not installed (pip install -r book/requirements.txt)")
    require((ROOT / "book" / "_vendor" / "mathjax" / "es5" / "tex-chtml.js").is_file(),
            "the book's JavaScript is not fetched (bash book/vendor.sh)")
    site = tmp_path_factory.mktemp("book") / "html"
    started = time.time()
    build = subprocess.run(["bash", str(ROOT / "book" / "build.sh"), str(site)],
                           env=dict(os.environ, PYTHON=sys.executable),
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, f"book/build.sh failed:\n{(build.stdout + build.stderr)[-5000:]}"
    print(f"book built in {time.time() - started:.0f} s")
    return site


@pytest.fixture(scope="module")
def site_url(book_dir):
    port = chromium.free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(book_dir)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(base, timeout=2)
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("python -m http.server did not start")
            time.sleep(0.2)
    yield base
    server.terminate()
    server.wait(timeout=30)


def pages(book_dir):
    return sorted(path.relative_to(book_dir).as_posix() for path in book_dir.rglob("*.html")
                  if not path.relative_to(book_dir).parts[0].startswith("_"))


# Runs in the page once it has loaded: waits for MathJax and the widgets, then reports.
INSPECT = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const views = document.querySelectorAll('script[type="%s"]').length;
  for (let i = 0; i < 100 && document.querySelectorAll('.jupyter-widgets').length < views; i++) {
    await new Promise(resolve => setTimeout(resolve, 100));
  }
  const images = [];
  for (const img of document.images) {
    img.loading = 'eager';
    try { await img.decode(); } catch (error) { /* reported through naturalWidth */ }
    images.push({src: img.currentSrc || img.src, width: img.naturalWidth, alt: img.alt,
                 output: !!img.closest('div.cell_output') && !img.closest('.jupyter-widgets')});
  }
  const math = [...document.querySelectorAll('.math')];
  // TeX that MathJax could not read: an error node, or an undefined macro, which
  // MathJax's noundefined extension draws as red text.
  const mathErrors = () => {
    const found = [];
    const items = window.MathJax && MathJax.startup && MathJax.startup.document
      ? Array.from(MathJax.startup.document.math) : [];
    for (const item of items) {
      item.root.walkTree(node => {
        if (node.isKind('merror') ||
            (node.isKind('mtext') && node.attributes.get('mathcolor') === 'red')) {
          found.push(item.math.slice(0, 80));
        }
      });
    }
    return found;
  };
  // Text that still reads like $…$ math outside code and formulas: a formula not parsed.
  const walker = document.createTreeWalker(document.querySelector('article') || document.body,
                                           NodeFilter.SHOW_TEXT);
  const rawMath = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement.closest('pre, code, script, style, mjx-container, .math')) continue;
    const found = node.textContent.match(/\$[^$\s][^$]*\$/);
    if (found) rawMath.push(found[0].slice(0, 80));
  }
  return {
    rawMath,
    images,
    math: math.length,
    mathUnrendered: math.filter(el => !el.querySelector('mjx-container'))
                        .map(el => el.textContent.slice(0, 80)),
    mathErrors: mathErrors(),
    widgetViews: views,
    widgetsDrawn: document.querySelectorAll('.jupyter-widgets').length,
    details: [...document.querySelectorAll('details')].map(el => ({
        open: el.open, summary: (el.querySelector('summary') || el).textContent.trim().slice(0, 60)})),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    notebookLinks: [...document.querySelectorAll('p.notebook-links a')].map(a => a.href),
    favicon: !!document.querySelector('link[rel~="icon"]'),
    footer: (document.querySelector('footer') || document.body).textContent,
    ids: [...document.querySelectorAll('[id], a[name]')].map(el => el.id || el.name),
  };
}""" % WIDGET_VIEW


@pytest.fixture(scope="module")
def visits(book_dir, site_url):
    """Opens every page once; returns {page: what INSPECT saw, plus errors and external requests}."""
    chromium.require_chromium("BRLIB_REQUIRE_BOOK")
    from playwright.sync_api import sync_playwright

    host = urlparse(site_url).netloc
    seen = {}
    with sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        external = []
        context.route(lambda url: urlparse(url).netloc != host,
                      lambda route: (external.append(route.request.url), route.abort()))
        for name in pages(book_dir):
            page = context.new_page()
            errors = []
            page.on("console", lambda message, errors=errors: errors.append(
                (message.text, message.location.get("url", "")))
                if message.type == "error" else None)
            page.on("pageerror", lambda error, errors=errors: errors.append((str(error), "")))
            external.clear()
            response = page.goto(site_url + name, wait_until="load")
            record = page.evaluate(INSPECT)
            page.wait_for_timeout(200)  # late console messages
            record["status"] = response.status
            record["external"] = list(external)
            record["errors"] = errors
            seen[name] = record
            page.close()
        browser.close()
    return seen


def test_book_has_every_notebook_and_doc(book_dir):
    built = set(pages(book_dir))
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert f"notebooks/{notebook.stem}.html" in built
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{doc.stem}.html" in built
    assert {"index.html", "README.html"} <= built


def test_pages_load_without_console_errors(visits):
    assert {name: v["status"] for name, v in visits.items() if v["status"] != 200} == {}
    assert {name: v["errors"] for name, v in visits.items() if v["errors"]} == {}


def test_no_request_leaves_the_site(visits):
    assert {name: v["external"] for name, v in visits.items() if v["external"]} == {}


class _Sources(HTMLParser):
    """The URLs that a page loads by itself: scripts, stylesheets, images, frames."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "video", "audio") and attrs.get("src"):
            self.urls.append(attrs["src"])
        if tag == "link" and attrs.get("href") and "stylesheet" in (attrs.get("rel") or ""):
            self.urls.append(attrs["href"])


def test_pages_name_no_other_site_to_load_from(book_dir):
    """The static twin of test_no_request_leaves_the_site, over the HTML files themselves."""
    found = {}
    for name in pages(book_dir):
        parser = _Sources()
        parser.feed((book_dir / name).read_text(encoding="utf-8"))
        remote = [url for url in parser.urls if re.match(r"^(https?:)?//", url)]
        if remote:
            found[name] = remote
    assert found == {}


def test_images_are_drawn(visits):
    broken = {name: [image["src"] for image in v["images"] if image["width"] == 0]
              for name, v in visits.items()}
    assert {name: srcs for name, srcs in broken.items() if srcs} == {}
    notebook_images = sum(len(v["images"]) for name, v in visits.items()
                          if name.startswith("notebooks/"))
    assert notebook_images > 0  # the notebooks' committed figures are in the book


def test_math_is_rendered(visits):
    assert {name: v["mathUnrendered"] for name, v in visits.items() if v["mathUnrendered"]} == {}
    assert {name: v["mathErrors"] for name, v in visits.items() if v["mathErrors"]} == {}
    assert {name: v["rawMath"] for name, v in visits.items() if v["rawMath"]} == {}
    assert sum(v["math"] for v in visits.values()) > 0


def test_saved_widgets_are_drawn(visits):
    """Every widget output of a notebook is drawn from its saved state, without a kernel."""
    assert {name: (v["widgetsDrawn"], v["widgetViews"]) for name, v in visits.items()
            if v["widgetsDrawn"] < v["widgetViews"]} == {}


def test_details_are_closed(visits):
    opened = {name: [d["summary"] for d in v["details"] if d["open"]]
              for name, v in visits.items()}
    assert {name: summaries for name, summaries in opened.items() if summaries} == {}
    # Collapsed solutions are in the notebooks' pages.
    assert any(d["summary"].startswith("Solution") for name, v in visits.items()
               for d in v["details"] if name.startswith("notebooks/"))


def test_internal_links_resolve(visits, site_url):
    host = urlparse(site_url).netloc
    targets, broken = {}, {}
    for name, v in visits.items():
        for link in v["links"]:
            if urlparse(link).netloc == host:
                targets.setdefault(link, name)
    status = {}
    for link, name in targets.items():
        url, fragment = urldefrag(link)
        if url not in status:
            try:
                status[url] = urllib.request.urlopen(url, timeout=10).status
            except urllib.error.HTTPError as error:
                status[url] = error.code
        if status[url] != 200:
            broken.setdefault(name, []).append(f"{link} ({status[url]})")
            continue
        page = url[len(site_url):] or "index.html"
        if page.endswith("/"):
            page += "index.html"
        if fragment and page in visits and unquote(fragment) not in visits[page]["ids"]:
            broken.setdefault(name, []).append(f"{link} (no such anchor)")
    assert broken == {}
    assert any(urljoin(site_url, "notebooks/") in link for link in targets)


def test_figures_have_alt_text_from_their_introduction(visits):
    """A notebook figure's alt text is words (the sentence that introduces it), not a hash."""
    unnamed = {name: [image["src"] for image in v["images"] if image["output"] and
                      (len(image["alt"].split()) < 3 or re.fullmatch(r"[0-9a-f]{16,}", image["alt"]))]
               for name, v in visits.items()}
    assert {name: srcs for name, srcs in unnamed.items() if srcs} == {}


def test_notebook_pages_open_in_colab_download_and_show_source(visits, site_url):
    for name, v in visits.items():
        if not name.startswith("notebooks/"):
            continue
        stem = name[len("notebooks/"):-len(".html")]
        colab, download, source = v["notebookLinks"]
        assert colab.startswith("https://colab.research.google.com/github/")
        assert colab.endswith(f"/blob/main/notebooks/{stem}.ipynb")
        assert download == f"{site_url}notebooks/{stem}.ipynb"  # resolved by the link test
        assert source.startswith("https://github.com/") and source.endswith(f"notebooks/{stem}.ipynb")
        with urllib.request.urlopen(download, timeout=10) as response:
            assert response.read() == (ROOT / "notebooks" / f"{stem}.ipynb").read_bytes()


def test_every_page_has_a_favicon_and_a_footer(visits):
    assert [name for name, v in visits.items() if not v["favicon"]] == []
    assert [name for name, v in visits.items() if "the brlib authors" not in v["footer"]] == []


# The images a page shows inside widgets right now (hidden panels of a Stack excluded).
VISIBLE_WIDGET_IMAGES = """() => [...document.querySelectorAll('.jupyter-widgets img')]
    .filter(img => img.offsetParent !== null && img.naturalWidth > 0).map(img => img.src)"""


def test_a_gallery_slider_changes_its_picture_without_a_kernel(book_dir, site_url):
    """A precomputed panel (brlib.widgets.gallery) moves in the book, on every page that has
    one (02's clip explorer and schedule, 03's step-by-step scores at least): the slider's
    link to its panels is saved with the notebook and runs in the browser."""
    chromium.require_chromium("BRLIB_REQUIRE_BOOK")
    from playwright.sync_api import sync_playwright

    galleries = [name for name in pages(book_dir) if name.startswith("notebooks/")
                 and "SelectionSliderModel" in (book_dir / name).read_text(encoding="utf-8")]
    assert {"notebooks/02_renorm_derivation.html",
            "notebooks/03_microbatch_experiments.html"} <= set(galleries), galleries
    moved = {}
    with sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for name in galleries:
            page.goto(site_url + name, wait_until="load")
            handle = page.locator(".widget-hslider .noUi-handle").first
            handle.wait_for(timeout=30_000)
            page.wait_for_function(
                "() => document.querySelectorAll('.jupyter-widgets img').length > 0")
            before = page.evaluate(VISIBLE_WIDGET_IMAGES)
            handle.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(f"(before) => JSON.stringify(({VISIBLE_WIDGET_IMAGES})()) "
                                   "!== JSON.stringify(before)", arg=before, timeout=10_000)
            after = page.evaluate(VISIBLE_WIDGET_IMAGES)
            moved[name] = bool(before) and bool(after) and before != after
        browser.close()
    assert all(moved.values()), moved


# Runs in a notebook page, in the light or dark theme: the width of every visible slider
# track, widget text whose contrast with its background is under WCAG's 4.5:1, and printed
# or code lines that scroll sideways.
INSPECT_LAYOUT = """async (dark) => {
  if (dark) document.body.dataset.theme = 'dark';
  const views = document.querySelectorAll('script[type="%s"]').length;
  for (let i = 0; i < 100 && document.querySelectorAll('.jupyter-widgets').length < views; i++) {
    await new Promise(resolve => setTimeout(resolve, 100));
  }
  const visible = el => el.offsetParent !== null;
  const tracks = [...document.querySelectorAll('.widget-hslider .slider-container')]
    .filter(visible).map(el => el.getBoundingClientRect().width);
  const rgb = color => color.match(/[\d.]+/g).map(Number);
  const luminance = ([r, g, b]) => {
    const linear = v => (v /= 255) <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
  };
  const background = el => {
    for (let node = el; node; node = node.parentElement) {
      const value = rgb(getComputedStyle(node).backgroundColor);
      if (value.length < 4 || value[3] > 0) return value.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const texts = [], lowContrast = [];
  for (const el of document.querySelectorAll('.jupyter-widgets *')) {
    const text = [...el.childNodes].filter(node => node.nodeType === 3)
      .map(node => node.textContent.trim()).join('');
    if (!text || !visible(el)) continue;
    const [light, darker] = [luminance(rgb(getComputedStyle(el).color).slice(0, 3)),
                             luminance(background(el))].sort((a, b) => b - a);
    const ratio = (light + 0.05) / (darker + 0.05);
    texts.push(text);
    if (ratio < 4.5) lowContrast.push(`${text.slice(0, 40)} (${ratio.toFixed(2)}:1)`);
  }
  const overflowing = [...document.querySelectorAll('div.cell_input pre, div.cell_output pre')]
    .filter(el => visible(el) && el.scrollWidth > el.clientWidth + 1)
    .map(el => el.textContent.slice(0, 60));
  return {tracks, widgetTexts: texts.length, lowContrast, overflowing};
}""" % WIDGET_VIEW


@pytest.fixture(scope="module")
def layouts(book_dir, site_url):
    """{(notebook page, theme): what INSPECT_LAYOUT saw}, at 1280 px."""
    chromium.require_chromium("BRLIB_REQUIRE_BOOK")
    from playwright.sync_api import sync_playwright

    seen = {}
    with sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        for name in pages(book_dir):
            if not name.startswith("notebooks/"):
                continue
            for theme in ("light", "dark"):
                page = context.new_page()
                page.goto(site_url + name, wait_until="load")
                seen[name, theme] = page.evaluate(INSPECT_LAYOUT, theme == "dark")
                page.close()
        browser.close()
    return seen


def test_no_slider_track_is_narrower_than_120_px(layouts):
    tracks = {key: found["tracks"] for key, found in layouts.items() if found["tracks"]}
    assert tracks, "no notebook page draws a slider"
    narrow = {key: widths for key, widths in tracks.items() if min(widths) < 120}
    assert not narrow, narrow


def test_widget_text_is_readable_in_both_themes(layouts):
    assert all(layouts[name, theme]["widgetTexts"] for name in (
        "notebooks/02_renorm_derivation.html", "notebooks/03_microbatch_experiments.html")
        for theme in ("light", "dark"))
    low = {key: found["lowContrast"] for key, found in layouts.items() if found["lowContrast"]}
    assert not low, low


def test_no_code_or_printed_line_scrolls_sideways_at_1280_px(layouts):
    overflowing = {key: found["overflowing"] for key, found in layouts.items()
                   if found["overflowing"]}
    assert not overflowing, overflowing
