"""The built archive in headless Chromium, from ``file://`` and from an HTTP server under a
sub-path: every page reached from the root, every link and image resolves, nothing loads from
another origin.

Debian's ``chromium`` and ``chromedriver`` through Selenium (``.ci/run`` installs both); never a
browser download. Requests are read from Chromium's own network log (``goog:loggingPrefs``).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag

import pytest

from tests.archive.helpers import archive_config, send_editions
from tests.support.cli import newsletter

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARCHIVE = """
[archive]
subscribe_mailto = "subscribe@example.org"

[[archive.targets]]
remote = "public"
url = "https://cr-archive.pages.dev"
"""


def _driver(tmp: Path) -> Any:
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (os.path.exists(chromium) and os.path.exists(driver_path)):
        pytest.skip("needs Debian's chromium and chromedriver (as .ci/run installs)")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    service = webdriver.ChromeService(executable_path=driver_path)
    return webdriver.Chrome(options=options, service=service)


def _network(driver: Any) -> list[dict[str, Any]]:
    out = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"].startswith("Network."):
            out.append(message)
    return out


def crawl(driver: Any, base: str) -> tuple[set[str], list[str]]:
    """Open the root and every page linked from inside the archive; return the pages seen and
    every problem found (a failed load, an HTTP error, a request to another origin)."""
    problems: list[str] = []
    seen: set[str] = set()
    todo = [base + "index.html"]
    driver.get("about:blank")
    _network(driver)  # the browser's own start-up (its new-tab page) is not the archive's doing
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        driver.get(url)
        if not driver.find_elements("css selector", 'meta[name="generator"][content="newsletter-archive"]'):
            problems.append(f"{url}: not an archive page ({driver.title!r})")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.src, i.complete && i.naturalWidth > 0])")
        problems += [f"{url}: image {src} did not load" for src, ok in images if not ok]
        links = driver.execute_script("return Array.from(document.links).map(a => a.href)")
        for link in links:
            target = urldefrag(link).url
            if not target.startswith(base):
                if not target.startswith(("https://", "mailto:")):
                    problems.append(f"{url}: link {link} leaves the archive oddly")
                continue
            if target.endswith(".html"):
                todo.append(target)
            elif not target.endswith("feed.atom"):
                problems.append(f"{url}: link {link} is neither a page nor the feed")
            elif base.startswith("file://"):
                if not Path(target[len("file://"):]).is_file():
                    problems.append(f"{url}: feed {link} is missing")
            else:
                status = driver.execute_async_script(
                    "const done = arguments[arguments.length - 1];"
                    "fetch(arguments[0]).then(r => done(r.status), e => done(String(e)));", target)
                if status != 200:
                    problems.append(f"{url}: feed {link} answered {status}")
        for event in _network(driver):
            params = event["params"]
            if event["method"] == "Network.requestWillBeSent":
                req = params["request"]["url"]
                if not req.startswith((base, "data:")):
                    problems.append(f"{url}: requested {req} from another origin")
            elif event["method"] == "Network.responseReceived":
                status = params["response"].get("status", 200)
                if status >= 400:
                    problems.append(f"{url}: {params['response']['url']} answered {status}")
            elif event["method"] == "Network.loadingFailed":
                problems.append(f"{url}: a load failed: {params.get('errorText')}")
    return seen, problems


@pytest.fixture
def built(tmp_path: Path, sqlite_url: str) -> Path:
    config = archive_config(tmp_path, sqlite_url, archive=ARCHIVE)
    send_editions(config, 2)
    # Under a sub-path of the served folder, as on a host where the archive is not the root.
    out = tmp_path / "www" / "news" / "archive"
    result = newsletter(config, "archive", "build", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def served(built: Path) -> Iterator[str]:
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(built.parent.parent))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/news/archive/"
    server.shutdown()
    server.server_close()


def _expected_pages(base: str) -> set[str]:
    pages = {base + "index.html"}
    for lang in ("en", "zh-Hans"):
        pages |= {f"{base}{lang}/index.html", f"{base}{lang}/1.html", f"{base}{lang}/2.html"}
    return pages


def test_the_archive_works_from_file_urls(tmp_path: Path, built: Path) -> None:
    driver = _driver(tmp_path)
    try:
        base = built.as_uri() + "/"
        seen, problems = crawl(driver, base)
    finally:
        driver.quit()
    assert not problems, "\n".join(problems)
    assert seen == _expected_pages(base)


def test_the_archive_works_under_a_sub_path_over_http(tmp_path: Path, served: str) -> None:
    driver = _driver(tmp_path)
    try:
        seen, problems = crawl(driver, served)
        driver.get(served + "zh-Hans/1.html")
        text = driver.find_element("tag name", "body").text
    finally:
        driver.quit()
    assert not problems, "\n".join(problems)
    assert seen == _expected_pages(served)
    assert "维权律师的软件与信息安全" in text
