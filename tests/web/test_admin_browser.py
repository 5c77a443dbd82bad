"""The editors' whole day in a real browser: Debian's chromium, driven by Selenium through
Debian's chromedriver (never a downloaded browser or driver).

An editor logs in, creates an edition from the unsent posts, writes the intro note in every
language, looks at every language's preview, schedules it; a second editor approves it (four
eyes: the first may not); the daemon (``newsletter run``) sends it to aiosmtpd at its time, and
the report page shows what went out. Nothing leaves loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.support.cli import ENV, newsletter, newsletter_cmd
from tests.support.smtp import SMTPServer
from tests.web.support import PASSWORD, add_user, admin_config, admin_serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
NOTES = {"zh-Hans": "本期导语：编辑的话", "zh-Hant": "本期導言：編輯的話",
         "en": "A word from the editors this week"}
READERS = [("r1@example.com", "zh-Hans"), ("r2@example.net", "zh-Hant"), ("r3@example.org", "en"),
           ("r4@qq.com", "zh-Hans+en")]


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[object]:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a driver or browser
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", "--lang=en-US", f"--user-data-dir={tmp_path / 'p'}"):
        options.add_argument(flag)
    d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    d.set_page_load_timeout(120)
    try:
        yield d
    finally:
        d.quit()


class Daemon:
    def __init__(self, config: Path) -> None:
        self.log = config.parent / "daemon.log"
        self._fh = self.log.open("wb")
        self.proc = subprocess.Popen(newsletter_cmd(config, "run"), cwd=config.parent,
                                     stdout=self._fh, stderr=subprocess.STDOUT, env=ENV)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._fh.close()


def _login(d: object, base: str, name: str) -> None:
    from selenium.webdriver.common.by import By

    d.get(f"{base}/login")  # type: ignore[attr-defined]
    d.find_element(By.ID, "name").send_keys(name)  # type: ignore[attr-defined]
    d.find_element(By.ID, "password").send_keys(PASSWORD)  # type: ignore[attr-defined]
    _submit(d, "form[action='/login'] button")
    assert "/login" not in d.current_url, d.page_source[:2000]  # type: ignore[attr-defined]


def _submit(d: object, selector: str) -> None:
    """Click a form's button and wait until the next page has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    page = d.find_element(By.TAG_NAME, "html")  # type: ignore[attr-defined]
    d.find_element(By.CSS_SELECTOR, selector).click()  # type: ignore[attr-defined]
    WebDriverWait(d, 120).until(expected_conditions.staleness_of(page))  # type: ignore[arg-type]


def _logout(d: object) -> None:

    _submit(d, "form[action='/logout'] button")


def test_editor_creates_edits_previews_schedules_second_editor_approves_daemon_sends(
        tmp_path: Path, driver: object, smtp_server: SMTPServer) -> None:
    from selenium.webdriver.common.by import By

    d = driver
    config = admin_config(tmp_path, f"sqlite:///{tmp_path / 'nl.db'}", smtp_port=smtp_server.port,
                          admin="four_eyes = true")
    text = config.read_text(encoding="utf-8").replace("require_approval = false",
                                                      "require_approval = true")
    config.write_text(text, encoding="utf-8")
    assert "require_approval = true" in text
    (tmp_path / "list.csv").write_text(
        "email,language\n" + "".join(f"{a},{lang}\n" for a, lang in READERS), encoding="utf-8")
    imported = newsletter(config, "subscribers", "import", "--confirmed", "list.csv")
    assert imported.returncode == 0, imported.stderr
    polled = newsletter(config, "poll")
    assert polled.returncode == 0, polled.stderr
    add_user(config, "alice", "editor")
    add_user(config, "bob", "editor")
    tz = ZoneInfo("Asia/Shanghai")

    with admin_serve(config) as server:
        base = server.base
        _login(d, base, "alice")
        d.get(f"{base}/editions/new")  # type: ignore[attr-defined]
        boxes = d.find_elements(By.CSS_SELECTOR, "input[name=post]")  # type: ignore[attr-defined]
        assert boxes
        assert all(b.is_selected() for b in boxes)
        _submit(d, "form[action='/editions/new'] button")
        url = d.current_url  # type: ignore[attr-defined]
        edition = int(url.rstrip("/").rsplit("/", 1)[1])
        assert d.find_element(By.ID, "state").text == "draft"  # type: ignore[attr-defined]

        for lang, note in NOTES.items():
            area = d.find_element(By.ID, f"note_{lang}")  # type: ignore[attr-defined]
            area.clear()
            area.send_keys(note)
        _submit(d, f"form[action='/editions/{edition}/edit'] button")
        for lang, note in NOTES.items():
            assert d.find_element(By.ID, f"note_{lang}").get_attribute("value") == note  # type: ignore[attr-defined]

        # Every language's preview, side by side, each in a sandboxed frame.
        frames = d.find_elements(By.CSS_SELECTOR, ".previews iframe")  # type: ignore[attr-defined]
        choices = [f.get_attribute("src").rsplit("/", 1)[1] for f in frames]
        assert set(choices) == {"zh-Hans", "zh-Hant", "en", "zh-Hans+en", "zh-Hant+en"}
        for frame, choice in zip(frames, choices, strict=True):
            assert frame.get_attribute("sandbox") == ""
            d.switch_to.frame(frame)  # type: ignore[attr-defined]
            body = d.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]
            d.switch_to.default_content()  # type: ignore[attr-defined]
            for lang in choice.split("+"):
                assert NOTES[lang] in body, (choice, body[:500])

        # Schedule two minutes ahead with the date-time field (its value is what a picker sets).
        at = (datetime.now(tz) + timedelta(minutes=2)).replace(second=0, microsecond=0)
        field = d.find_element(By.ID, "at")  # type: ignore[attr-defined]
        assert field.get_attribute("type") == "datetime-local"
        d.execute_script("arguments[0].value = arguments[1]", field, at.strftime("%Y-%m-%dT%H:%M"))  # type: ignore[attr-defined]
        _submit(d, f"form[action='/editions/{edition}/schedule'] button")
        assert d.find_element(By.ID, "state").text == "scheduled"  # type: ignore[attr-defined]
        assert at.strftime("%Y-%m-%d %H:%M") in d.find_element(By.ID, "send-time").text  # type: ignore[attr-defined]
        # Four eyes: the editor who wrote it is offered no approve button.
        assert not d.find_elements(By.CSS_SELECTOR, "button[value=approve]")  # type: ignore[attr-defined]
        _logout(d)

        daemon = Daemon(config)
        try:
            _login(d, base, "bob")
            d.get(f"{base}/")  # type: ignore[attr-defined]
            assert f"/editions/{edition}" in d.page_source  # type: ignore[attr-defined]
            d.get(f"{base}/editions/{edition}")  # type: ignore[attr-defined]
            _submit(d, "button[value=approve]")
            assert d.find_element(By.ID, "state").text == "approved"  # type: ignore[attr-defined]

            readers = dict(READERS)

            def to_readers() -> list[object]:
                # The editors hear about the edition too (editors@example.org): not a reader.
                return [r for r in smtp_server.received if r.rcpt_tos[0] in readers]

            deadline = time.monotonic() + 240
            while len(to_readers()) < len(READERS):
                assert time.monotonic() < deadline, daemon.log.read_text()[-4000:]
                assert daemon.proc.poll() is None, daemon.log.read_text()[-4000:]
                time.sleep(1)
            # The note reaches the sent mail, in every language of each reader.
            for received in to_readers():
                msg = received.message()  # type: ignore[attr-defined]
                body = msg.get_body(("plain",))
                assert body is not None
                content = str(body.get_content())
                lang = readers[received.rcpt_tos[0]]  # type: ignore[attr-defined]
                for part in lang.split("+"):
                    assert NOTES[part] in content
            deadline = time.monotonic() + 60
            while True:
                d.get(f"{base}/editions/{edition}/report")  # type: ignore[attr-defined]
                if d.find_element(By.ID, "total").text == str(len(READERS)) and \
                        "sent" in d.find_element(By.TAG_NAME, "h1").text:  # type: ignore[attr-defined]
                    break
                assert time.monotonic() < deadline, d.page_source[:3000]  # type: ignore[attr-defined]
                time.sleep(1)
            page = d.page_source  # type: ignore[attr-defined]
            assert "<svg" in page
            assert "qq.com" in page
            d.get(f"{base}/audit")  # type: ignore[attr-defined]
            audit = d.find_element(By.TAG_NAME, "main").text  # type: ignore[attr-defined]
            for who, what in (("alice", "create"), ("alice", "edit"), ("alice", "schedule"),
                              ("bob", "approve")):
                assert who in audit
                assert what in audit
        finally:
            daemon.stop()
    assert shutil.which("chromium") or os.access(CHROMIUM, os.X_OK)
