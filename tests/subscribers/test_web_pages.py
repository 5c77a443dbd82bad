"""The home page, the embeddable subscribe form and cross-site posts, against ``newsletter serve``.

A form on another site (the organisation's blog) may subscribe: the request is pending until
confirmed. A form on another site must not confirm, change a language or unsubscribe. The
browser test puts Debian's Chromium on a page of another origin (``localhost`` against our
``127.0.0.1``: another site) that submits a plain form, as a blog's embedded form would.
"""

from __future__ import annotations

import email
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from mailer.db import open_engine
from subscribers.codec import Codec
from subscribers.keys import KeyRing
from subscribers.lifecycle import SubscriberState
from subscribers.store import SubscriberStore
from subscribers.tokens import TokenSigner
from subscribers.web import is_cross_site
from tests.subscribers.conftest import LANGS
from tests.subscribers.support import Server, run, serve, write_config

pytestmark = pytest.mark.slow

BLOG = {"origin": "https://blog.example.net", "sec-fetch-site": "cross-site"}
OWN = frozenset({"https://news.example.org"})


def test_is_cross_site() -> None:
    assert is_cross_site({"sec-fetch-site": "cross-site"}, OWN)
    assert is_cross_site({"sec-fetch-site": "same-site"}, OWN)
    assert is_cross_site({"origin": "https://blog.example.net"}, OWN)
    assert not is_cross_site({"sec-fetch-site": "same-origin", "origin": "null"}, OWN)
    assert not is_cross_site({"origin": "https://news.example.org"}, OWN)
    assert not is_cross_site({}, OWN)  # a mail provider's one-click POST, from its servers
    assert not is_cross_site({"sec-fetch-site": "none"}, OWN)  # typed or bookmarked


class Site:
    def __init__(self, folder: Path, server: Server) -> None:
        self.folder = folder
        self.server = server
        ring = KeyRing.load(folder / "secrets" / "keys.json")
        self.store = SubscriberStore(open_engine(f"sqlite:///{folder / 'data' / 'newsletter.db'}"),
                                     Codec(ring), lambda: datetime.now(UTC), LANGS)
        self.tokens = TokenSigner(ring.token_key, lambda: datetime.now(UTC))

    def mail_to(self, to: str) -> email.message.EmailMessage:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for f in sorted((self.folder / "data" / "outbox" / "new").glob("*")):
                msg = email.message_from_bytes(f.read_bytes(), policy=policy.default)
                assert isinstance(msg, email.message.EmailMessage)
                if msg["To"] == to:
                    return msg
            time.sleep(0.05)
        raise AssertionError(f"no confirmation mail to {to}")

    def state(self, address: str) -> SubscriberState | None:
        record = self.store.lookup(address)
        return None if record is None else record.state


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("pages")
    config = write_config(folder)
    text = config.read_text(encoding="utf-8")
    text = text.replace('unsubscribe_mailto = "unsubscribe@example.org"\n',
                        'unsubscribe_mailto = "unsubscribe@example.org"\n'
                        'contact = "editors@example.org"\n')
    text = text.replace("[web]\n", '[web]\nmirrors = ["https://d9pages.cloudfront.net"]\n')
    config.write_text(text, encoding="utf-8")
    assert run(config, "keys", "init").code == 0
    (folder / "list.csv").write_text("email,language\nreader.one@qq.com,zh-Hant\n"
                                     "reader.two@163.com,en\n", encoding="utf-8")
    assert run(config, "subscribers", "import", "list.csv", "--confirmed").code == 0
    with serve(config) as server:
        s = Site(folder, server)
        yield s
        s.store.engine.dispose()


def test_home_page_says_what_it_is_in_the_visitors_language(site: Site) -> None:
    hant = httpx.get(f"{site.server.base}/", headers={"accept-language": "zh-TW"}, timeout=30)
    assert hant.status_code == 200
    assert '<html lang="zh-Hant">' in hant.text
    assert "公民權利通訊" in hant.text  # the newsletter's name in the visitor's language
    assert "我們的文章會完整地寄到您的信箱" in hant.text
    assert "Our posts, sent to your inbox in full" in hant.text  # then English
    assert 'action="/subscribe"' in hant.text
    assert 'name="email"' in hant.text
    assert 'href="mailto:unsubscribe@example.org?subject=subscribe"' in hant.text  # by mail
    assert 'href="https://d9pages.cloudfront.net/"' in hant.text  # the page's own mirrors
    assert "editors@example.org" in hant.text
    assert "csrf" not in hant.text
    hans = httpx.get(f"{site.server.base}/?lang=zh-Hans", timeout=30)
    assert "公民权利通讯" in hans.text
    assert "我们的文章会完整地发送到您的邮箱" in hans.text


def test_pages_use_the_fonts_of_their_script(site: Site) -> None:
    css = httpx.get(f"{site.server.base}/site.css", timeout=30).text
    hant = re.search(r":lang\(zh-Hant\)[^{]*\{([^}]*)\}", css)
    hans = re.search(r":lang\(zh-Hans\)[^{]*\{([^}]*)\}", css)
    assert hant is not None
    assert hans is not None
    assert "PingFang TC" in hant.group(1)
    assert "Noto Sans CJK TC" in hant.group(1)
    assert " SC" not in hant.group(1)
    assert "PingFang SC" in hans.group(1)


def test_a_cross_site_subscribe_post_is_pending(site: Site) -> None:
    resp = httpx.post(f"{site.server.base}/subscribe", headers=BLOG, timeout=30,
                      data={"email": "from.blog@qq.com", "language": "zh-Hans"})
    assert resp.status_code == 200
    assert "请查收邮件" in resp.text  # the same answer as our own form gives
    site.mail_to("from.blog@qq.com")  # a confirmation, through the queue
    assert site.state("from.blog@qq.com") is SubscriberState.PENDING
    # An active reader's address gets the very same page.
    again = httpx.post(f"{site.server.base}/subscribe", headers=BLOG, timeout=30,
                       data={"email": "reader.two@163.com", "language": "zh-Hans"})
    assert again.text == resp.text


def test_a_cross_site_unsubscribe_post_does_not_act(site: Site) -> None:
    record = site.store.lookup("reader.one@qq.com")
    assert record is not None
    token = site.tokens.unsubscribe_token(record.id)
    forged = httpx.post(f"{site.server.base}/u/{token}", headers=BLOG, timeout=30,
                        data={"List-Unsubscribe": "One-Click"})
    assert forged.status_code == 403
    assert "<button" in forged.text  # the page, to press the button here
    assert site.state("reader.one@qq.com") is SubscriberState.ACTIVE
    # The same POST from a mail provider's server (no browser headers) unsubscribes.
    one_click = httpx.post(f"{site.server.base}/u/{token}", timeout=30,
                           data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200
    assert site.state("reader.one@qq.com") is SubscriberState.UNSUBSCRIBED


def test_a_cross_site_confirm_post_does_not_confirm(site: Site) -> None:
    httpx.post(f"{site.server.base}/subscribe", data={"email": "confirm.here@qq.com"},
               timeout=30)
    body = site.mail_to("confirm.here@qq.com").get_body(("plain",))
    assert body is not None
    link = re.search(r"/confirm/([A-Za-z0-9_-]+)", body.get_content())
    assert link is not None
    forged = httpx.post(f"{site.server.base}/confirm/{link.group(1)}", headers=BLOG, timeout=30)
    assert forged.status_code == 403
    assert site.state("confirm.here@qq.com") is SubscriberState.PENDING
    own = httpx.post(f"{site.server.base}/confirm/{link.group(1)}", timeout=30,
                     headers={"sec-fetch-site": "same-origin", "origin": "null"})
    assert own.status_code == 200
    assert site.state("confirm.here@qq.com") is SubscriberState.ACTIVE


def test_the_bad_link_page_gives_the_contact_address(site: Site) -> None:
    page = httpx.get(f"{site.server.base}/u/not-a-token", timeout=30)
    assert page.status_code == 404
    assert "editors@example.org" in page.text
    assert "联系我们" in page.text or "Contact us" in page.text


# ---------------------------------------------------------------- a real browser, another site


class _Blog(BaseHTTPRequestHandler):
    pages: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.pages.get(self.path, b"")
        self.send_response(200 if body else 404)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _form(action: str, fields: dict[str, str]) -> bytes:
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
    return (f'<!doctype html><meta charset="utf-8"><form method="post" action="{action}">'
            f"{inputs}</form><script>document.forms[0].submit()</script>").encode()


def test_chromium_posts_an_embedded_form_from_another_site(site: Site, tmp_path: Path) -> None:
    from tests.render.test_browser import FLAGS, _chromium

    binary = _chromium()
    record = site.store.lookup("reader.two@163.com")
    assert record is not None
    token = site.tokens.unsubscribe_token(record.id)
    port = int(site.server.base.rsplit(":", 1)[1])
    ours = f"http://127.0.0.1:{port}"
    _Blog.pages = {
        "/subscribe.html": _form(f"{ours}/subscribe", {"email": "browser.blog@qq.com",
                                                       "language": "zh-Hant"}),
        "/unsubscribe.html": _form(f"{ours}/u/{token}", {"List-Unsubscribe": "One-Click"}),
    }
    blog = ThreadingHTTPServer(("127.0.0.1", 0), _Blog)
    threading.Thread(target=blog.serve_forever, daemon=True).start()
    try:
        # "localhost" is another site than "127.0.0.1", as a blog's host is than ours.
        for page in ("subscribe.html", "unsubscribe.html"):
            result = subprocess.run(
                [binary, *FLAGS, f"--user-data-dir={tmp_path / page}",
                 "--virtual-time-budget=5000", "--dump-dom",
                 f"http://localhost:{blog.server_address[1]}/{page}"],
                capture_output=True, text=True, timeout=120, check=False)
            assert result.returncode == 0, result.stderr[-2000:]
    finally:
        blog.shutdown()
        blog.server_close()
    site.mail_to("browser.blog@qq.com")
    assert site.state("browser.blog@qq.com") is SubscriberState.PENDING
    assert site.state("reader.two@163.com") is SubscriberState.ACTIVE
    assert "cross-site POST" in site.server.log()  # it did arrive, and was refused
