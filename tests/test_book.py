"""The book: built without a system Graphviz, then read in headless Chromium as a reader would.

The browser tests serve ``_build/html`` (``make test`` builds it first; a fixture builds it
when missing) on 127.0.0.1 and open every page of the table of contents at desktop and
phone width. Screenshots of each chapter land in ``_build/screenshots/`` (ignored by git).
Without Debian's chromium and chromium-driver they skip, saying which is missing; with
``CI=true`` that is a failure.
"""

from __future__ import annotations

import html.parser
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urldefrag, urlsplit

import book_support as book
import pytest

# A word from each chapter that the search page must find there (checked to occur in it).
SEARCH_WORDS = {
    "book/01-about-the-course": "parametric",
    "book/02-containers": "namespaces",
    "book/05-spark-tensorflow": "Catalyst",
    "book/07-grpc-serving": "Protobuf",
}
# The browser tests take about 30 s together on 2 busy cores; a hung browser fails, not hangs.
# The built book (make test builds it first) in headless Chromium: not in `make check`.
pytestmark = [pytest.mark.timeout(300), pytest.mark.browser]

# Smallest label of a diagram, in CSS pixels, that a reader can still read on a phone.
MIN_DIAGRAM_LABEL_PX = 10


# ---------------------------------------------------------------- building

@pytest.mark.slow
@pytest.mark.timeout(900)
def test_book_builds_without_dot_and_without_warnings(tmp_path: Path) -> None:
    path = book.path_without_dot()
    assert shutil.which("dot", path=path) is None, f"a `dot` is still on the test's PATH: {path}"
    assert shutil.which("graphviz-pure", path=path), (
        f"graphviz-pure (from the lock) is not in {book.VENV_BIN}: run `make venv`")
    started = time.monotonic()
    result = book.build_book(tmp_path, path=path)
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if re.search(r"WARNING|ERROR", line)]
    assert result.returncode == 0 and not warnings, (
        f"`jupyter-book build . -W -n --keep-going` without `dot` failed "
        f"(rc {result.returncode}, {seconds:.0f} s):\n" + "\n".join(warnings or output.splitlines()[-30:]))
    diagrams = sum(p.read_text().count("```{graphviz}") for p in (book.REPO / "book").glob("*.md"))
    svgs = list((tmp_path / "_build" / "html" / "_images").glob("graphviz-*.svg"))
    assert len(svgs) == diagrams, (
        f"{diagrams} graphviz directives in book/*.md but {len(svgs)} SVGs in the build")
    for svg in svgs:
        text = svg.read_text()
        assert "graphviz-pure" in text and "<text" in text, f"{svg.name} is not a diagram drawn by graphviz-pure"


# ---------------------------------------------------------------- the browser and the site

def _require_browser() -> None:
    missing = book.missing_browser()
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the browser tests cannot run: {missing}")
    pytest.skip(missing)


@pytest.fixture(scope="module")
def built_book() -> Path:
    if not (book.BUILT_BOOK / "index.html").exists():
        result = book.build_book(book.REPO)
        assert result.returncode == 0, "building the book for the browser tests failed:\n" + (
            result.stdout + result.stderr)[-3000:]
    return book.BUILT_BOOK


@pytest.fixture(scope="module")
def site(built_book: Path):
    with book.serve(built_book) as served:
        yield served


@pytest.fixture(scope="module")
def desktop():
    _require_browser()
    driver = book.start_chromium(*book.DESKTOP)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def phone():
    _require_browser()
    driver = book.start_chromium(*book.PHONE)
    yield driver
    driver.quit()


# ---------------------------------------------------------------- one visit per page and width

@dataclass
class Visit:
    """What a reader's browser saw on one page."""

    page: str
    console_errors: list[str]
    title: str
    assets: list[str]
    links: list[str]
    launch_links: list[str]
    search_fields: int
    header_text: int | None
    scroll_width: int
    width: int
    culprits: list[str]
    diagrams: list[list]


def _page_url(base: str, page: str) -> str:
    return f"{base}/{page}.html"


def _visit(driver, base: str, page: str, size: str) -> Visit:
    driver.get_log("browser")  # drop what an earlier page left
    driver.get(_page_url(base, page))
    driver.execute_async_script(_WAIT_FOR_DIAGRAMS)
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    facts = driver.execute_script(_FACTS)
    if page.startswith("book/0"):
        _screenshot(driver, book.SCREENSHOTS / f"{Path(page).name}-{size}.png")
    return Visit(page, errors, **facts)


def _screenshot(driver, path: Path) -> None:
    """The first screen of the page, then each of its figures (whole-page shots cost seconds)."""
    from selenium.webdriver.common.by import By

    driver.save_screenshot(str(path))
    for number, figure in enumerate(driver.find_elements(By.CSS_SELECTOR, "figure"), start=1):
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", figure)
        figure.screenshot(str(path.with_name(f"{path.stem}-figure-{number}.png")))
    driver.execute_script("window.scrollTo(0, 0)")


def _visit_every_page(driver, base: str, size: str) -> list[Visit]:
    book.SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return [_visit(driver, base, page, size) for page in book.toc_pages()]


@pytest.fixture(scope="module")
def desktop_visits(site, desktop) -> list[Visit]:
    return _visit_every_page(desktop, site[0], "desktop")


@pytest.fixture(scope="module")
def phone_visits(site, phone) -> list[Visit]:
    return _visit_every_page(phone, site[0], "phone")


_WAIT_FOR_DIAGRAMS = """
const done = arguments[arguments.length - 1];
const objects = [...document.querySelectorAll('object.graphviz')];
const ready = () => objects.every(o => o.contentDocument && o.contentDocument.querySelector('svg')
                                       && o.style.minWidth);
const started = Date.now();
(function poll() { if (ready() || Date.now() - started > 5000) done(); else setTimeout(poll, 50); })();
"""

_FACTS = """
const width = window.innerWidth;
const visible = e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };

// Every asset the page asked for: scripts, stylesheets, icons, images, diagrams, fonts.
const assets = [];
document.querySelectorAll('script[src]').forEach(e => assets.push(e.src));
document.querySelectorAll('link[href]').forEach(e => {
  if (/stylesheet|icon|preload/.test(e.rel)) assets.push(e.href); });
document.querySelectorAll('img[src]').forEach(e => assets.push(e.currentSrc || e.src));
document.querySelectorAll('object[data]').forEach(e => assets.push(e.data));
for (const sheet of document.styleSheets) {
  let rules; try { rules = sheet.cssRules; } catch (e) { continue; }
  for (const rule of rules) {
    if (rule.constructor.name !== 'CSSFontFaceRule') continue;
    for (const m of rule.style.getPropertyValue('src').matchAll(/url\\(["']?([^"')]+)["']?\\)/g))
      assets.push(new URL(m[1], sheet.href).href);
  }
}
performance.getEntriesByType('resource').forEach(e => assets.push(e.name));

// What is wider than the screen and not inside a box that scrolls.
const culprits = [];
for (const e of document.querySelectorAll('.bd-main *')) {
  const box = e.getBoundingClientRect();
  if (box.width === 0 || box.right <= width + 1) continue;
  // Drawers the theme keeps off screen until a button opens them are not content.
  if (e.closest('.bd-sidebar-primary, .bd-sidebar-secondary, dialog')) continue;
  let scroller = e.parentElement;
  while (scroller && !/auto|scroll/.test(getComputedStyle(scroller).overflowX)) scroller = scroller.parentElement;
  if (!scroller || scroller.getBoundingClientRect().right > width + 1)
    culprits.push(e.tagName.toLowerCase() + ' "' + (e.textContent || '').trim().slice(0, 60) + '"');
}
// Text that does not wrap (a long URL, inline code) widens its block without a child box.
for (const e of document.querySelectorAll('.bd-article p, .bd-article li, .bd-article td'))
  if (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX === 'visible')
    culprits.push(e.tagName.toLowerCase() + ' "' + e.textContent.trim().slice(0, 60) + '"');

// Each diagram: its smallest label as drawn, in CSS px, and whether its figure scrolls.
const diagrams = [...document.querySelectorAll('object.graphviz')].map(o => {
  const svg = o.contentDocument && o.contentDocument.querySelector('svg');
  if (!svg) return [o.data.split('/').pop(), null, null, null];
  const scale = o.getBoundingClientRect().width / svg.viewBox.baseVal.width;
  const sizes = [...svg.querySelectorAll('text')].map(t => parseFloat(t.getAttribute('font-size')));
  const figure = o.closest('div.graphviz');
  return [o.data.split('/').pop(), Math.min(...sizes) * scale,
          getComputedStyle(figure).overflowX, figure.getBoundingClientRect().right];
});

const header = document.querySelector('header.bd-header');
const h1 = document.querySelector('.bd-article h1');
return {
  title: h1 ? h1.textContent.replace(/#$/, '').trim() : '',
  assets: [...new Set(assets)],
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  launch_links: [...document.querySelectorAll('.dropdown-launch-buttons a')].map(a => a.href),
  search_fields: [...document.querySelectorAll('.search-button-field, form.bd-search')].filter(visible).length,
  header_text: header && visible(header) ? header.textContent.trim().length : null,
  scroll_width: document.documentElement.scrollWidth, width, culprits: culprits.slice(0, 5), diagrams,
};
"""


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


# ---------------------------------------------------------------- what a reader sees

def test_every_page_loads_without_console_errors_or_missing_assets(site, desktop_visits) -> None:
    base, missing = site
    problems = []
    checked: dict[str, int] = {}
    for visit in desktop_visits:
        problems += [f"{visit.page}: console: {message}" for message in visit.console_errors]
        for url in visit.assets:
            if not url.startswith(base):
                problems.append(f"{visit.page}: loads an asset from outside the book: {url}")
                continue
            url = urldefrag(url).url
            if url not in checked:
                checked[url] = _status(url)
            if checked[url] != 200:
                problems.append(f"{visit.page}: asset {url} answered {checked[url]}")
    problems += [f"the server answered 404 for {path}" for path in sorted(set(missing))]
    assert not problems, "pages of the book have errors (see _build/html):\n" + "\n".join(problems)
    assert len(checked) > 20, f"only {len(checked)} assets were found on the pages: is the theme loading?"


def test_desktop_shows_one_search_field_and_no_empty_header_bar(desktop_visits) -> None:
    problems = []
    for visit in desktop_visits:
        if visit.search_fields != 1:
            problems.append(f"{visit.page}: {visit.search_fields} search fields are visible")
        if visit.header_text is not None:
            problems.append(f"{visit.page}: a header bar is shown above the page "
                            f"({visit.header_text} characters of text in it)")
    assert not problems, (
        "the desktop layout (html_theme_options.navbar_persistent in _config.yml):\n" + "\n".join(problems))


class _Anchors(html.parser.HTMLParser):
    """The ids of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        identifier = dict(attrs).get("id")
        if identifier:
            self.ids.add(identifier)


def _ids(url: str, cache: dict[str, set[str] | None]) -> set[str] | None:
    """The ids of the page at ``url``, or None when it does not exist."""
    if url not in cache:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                parser = _Anchors()
                parser.feed(response.read().decode("utf-8", "replace"))
                cache[url] = parser.ids
        except urllib.error.HTTPError:
            cache[url] = None
    return cache[url]


# Pages of the book's "Reference" part: not chapters, so not numbered.
REFERENCE_PAGES = {"book/api"}


def test_chapter_and_lab_titles_are_punctuated_one_way(desktop_visits) -> None:
    """``Chapter N: Title`` and ``Lab N: Title``, in the pages and so in the navigation."""
    wrong = []
    for visit in desktop_visits[1:]:  # the root page carries the book's title
        if visit.page in REFERENCE_PAGES:
            continue
        kind = "Lab" if visit.page.startswith("labs/") else "Chapter"
        if not re.fullmatch(rf"{kind} \d+: \S.*", visit.title):
            lab = Path(visit.page).parent.name
            source = f"the first cell of solutions/{lab}/, then `make labs`" if kind == "Lab" else f"{visit.page}.md"
            wrong.append(f"{visit.page}: {visit.title!r} is not '{kind} N: Title' (see {source})")
    assert not wrong, "titles punctuated another way:\n" + "\n".join(wrong)


def test_every_internal_link_resolves(site, desktop_visits) -> None:
    base, _ = site
    cache: dict[str, set[str] | None] = {}
    broken, followed = [], 0
    for visit in desktop_visits:
        for href in visit.links:
            if not href.startswith(base):
                continue  # external: never fetched, the tests stay offline
            target, fragment = urldefrag(href)
            if urlsplit(target).path.endswith("/"):
                target += "index.html"
            followed += 1
            if not target.endswith(".html"):
                if _status(target) != 200:
                    broken.append(f"{visit.page}: {href} (file not found)")
                continue
            ids = _ids(target, cache)
            if ids is None:
                broken.append(f"{visit.page}: {href} (page not found)")
            elif fragment and fragment not in ids:
                broken.append(f"{visit.page}: {href} (no element with id {fragment!r})")
    assert not broken, "internal links that lead nowhere:\n" + "\n".join(sorted(set(broken)))
    assert followed > 50, f"only {followed} internal links were found: is the navigation rendered?"


def test_search_finds_a_word_from_each_chapter(site, desktop) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, _ = site
    problems = []
    for page, word in SEARCH_WORDS.items():
        source = (book.REPO / f"{page}.md").read_text()
        assert word.lower() in source.lower(), f"{word!r} no longer occurs in {page}.md: pick another word"
        desktop.get(f"{base}/search.html?q={word}")
        try:
            WebDriverWait(desktop, 15).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results ul.search li")
                or "did not match" in d.find_element(By.ID, "search-results").text)
        except TimeoutException:
            problems.append(f"search for {word!r}: no results after 15 s")
            continue
        links = [a.get_attribute("href") for a in
                 desktop.find_elements(By.CSS_SELECTOR, "#search-results ul.search li a")]
        if not any(f"/{page}.html" in (link or "") for link in links):
            problems.append(f"search for {word!r} does not list {page}.html; it lists {links}")
    assert not problems, "the search page (search.html, searchindex.js):\n" + "\n".join(problems)


def test_launch_buttons_open_the_student_edition(desktop_visits) -> None:
    config = book.book_config()
    repository, branch = config["repository"]["url"].rstrip("/"), config["repository"]["branch"]
    hub = config["launch_buttons"]["jupyterhub_url"].rstrip("/")
    owner, name = urlsplit(repository).path.strip("/").split("/")
    labs = [visit for visit in desktop_visits if visit.page.startswith("labs/")]
    assert labs, "_toc.yml lists no lab"
    problems = []
    for visit in labs:
        notebook = f"{visit.page}.ipynb"
        if not (book.REPO / notebook).exists():
            problems.append(f"{visit.page}: the launch buttons open {notebook}, which does not exist")
        binder = [h for h in visit.launch_links if h.startswith("https://mybinder.org/")]
        puller = [h for h in visit.launch_links if h.startswith(hub + "/")]
        if len(binder) != 1 or len(puller) != 1:
            problems.append(f"{visit.page}: expected one Binder and one JupyterHub button, "
                            f"found {visit.launch_links}")
            continue
        url = urlsplit(binder[0])
        if url.path != f"/v2/gh/{owner}/{name}/{branch}" or parse_qs(url.query) != {
                "urlpath": [f"lab/tree/{notebook}"]}:
            problems.append(f"{visit.page}: Binder URL {binder[0]} is not https://mybinder.org"
                            f"/v2/gh/{owner}/{name}/{branch}?urlpath=lab/tree/{notebook}")
        url = urlsplit(puller[0])
        expected = {"repo": [repository], "branch": [branch], "urlpath": [f"lab/tree/{name}/{notebook}"]}
        if url.path != "/hub/user-redirect/git-pull" or parse_qs(url.query) != expected:
            problems.append(f"{visit.page}: nbgitpuller URL {puller[0]} is not "
                            f"{hub}/hub/user-redirect/git-pull with {expected}")
    assert not problems, (
        "launch buttons must open the student edition named by repository.url and "
        "repository.branch in _config.yml:\n" + "\n".join(problems))


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_pages_fit_the_screen_and_diagrams_stay_readable(request, size: str) -> None:
    visits: list[Visit] = request.getfixturevalue(f"{size}_visits")
    problems = []
    for visit in visits:
        if visit.scroll_width > visit.width:
            problems.append(f"{visit.page}: {visit.scroll_width} px wide on a {visit.width} px "
                            f"screen; widening it: {visit.culprits}")
        for svg, label_px, overflow, right in visit.diagrams:
            if label_px is None:
                problems.append(f"{visit.page}: diagram {svg} did not load")
            elif label_px < MIN_DIAGRAM_LABEL_PX:
                problems.append(f"{visit.page}: diagram {svg} draws labels {label_px:.1f} px high "
                                f"(at least {MIN_DIAGRAM_LABEL_PX}; see book/_static/diagrams.js)")
            elif overflow not in ("auto", "scroll") or right > visit.width + 1:
                problems.append(f"{visit.page}: diagram {svg} neither fits nor scrolls in its figure")
    assert not problems, (
        f"at {size} width (book/_static/book.css; screenshots in {book.SCREENSHOTS}):\n"
        + "\n".join(problems))
