"""Plumbing for the book's tests: build the book, serve it on loopback, drive headless Chromium.

The browser is Debian's ``chromium`` with its matching ``chromedriver``, started through
Selenium's ``Service(executable_path=...)`` so that Selenium Manager never downloads a driver.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BUILT_BOOK = REPO / "_build" / "html"
SCREENSHOTS = REPO / "_build" / "screenshots"
VENV_BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DESKTOP = (1280, 900)
PHONE = (390, 844)


def book_config() -> dict:
    return yaml.safe_load((REPO / "_config.yml").read_text())


def toc_pages() -> list[str]:
    """Every page of the table of contents, as paths relative to the repository without suffix."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections", []) + entry.get("chapters", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    return pages


def path_without_dot() -> str:
    """A PATH of the venv's bin and the system folders, leaving out every folder that holds ``dot``."""
    folders = [str(VENV_BIN)] + os.environ.get("PATH", "").split(os.pathsep)
    folders += ["/usr/local/bin", "/usr/bin", "/bin"]
    kept: list[str] = []
    for folder in folders:
        if folder and folder not in kept and not (Path(folder) / "dot").exists():
            kept.append(folder)
    return os.pathsep.join(kept)


def build_book(output: Path, path: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``jupyter-book build`` exactly as ``make book`` runs it, writing into ``output``."""
    env = dict(os.environ, PATH=path or os.environ.get("PATH", ""))
    command = [str(VENV_BIN / "jupyter-book"), "build", str(REPO), "-W", "-n", "--keep-going",
               "--path-output", str(output)]
    return subprocess.run(command, check=False, env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder and remembers every path that answered 404 (a missing asset or page)."""

    missing: list[str]

    def log_message(self, format: str, *args) -> None:
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        if code == 404:
            self.missing.append(self.path)
        super().send_error(code, message, explain)


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """Serve ``folder`` on 127.0.0.1 (a free port) in a thread; yields the base URL and the 404 list."""
    missing: list[str] = []
    handler = type("BookHandler", (QuietHandler,), {"missing": missing})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", missing
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def missing_browser() -> str | None:
    """What is missing to run the browser tests, or None."""
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if absent:
        return f"{' and '.join(absent)} not found (Debian: apt-get install chromium chromium-driver)"
    return None


def start_chromium(width: int, height: int):
    """Headless Chromium at the given window size, with its console log kept for the test."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--hide-scrollbars",
                     # Loopback only: nothing the book links to is fetched from the internet.
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                     "--disable-background-networking", "--disable-component-update",
                     "--no-first-run", "--disable-sync"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    # A headless window is never narrower than 500 px: emulate the phone's screen instead,
    # not as "mobile", which would widen the layout viewport to fit whatever overflows.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return driver
