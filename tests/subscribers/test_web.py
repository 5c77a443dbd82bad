"""The public endpoints over real HTTP, against ``newsletter serve`` started as a subprocess."""

from __future__ import annotations

import email
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import httpx
import pytest

from mailer.db import open_engine
from subscribers.catalog import page_strings
from subscribers.codec import Codec
from subscribers.keys import KeyRing
from subscribers.lifecycle import SubscriberState
from subscribers.store import SubscriberStore
from subscribers.tokens import TokenSigner
from tests.subscribers.conftest import LANGS
from tests.subscribers.support import Server, run, serve, write_config

pytestmark = pytest.mark.slow


class Site:
    def __init__(self, folder: Path, server: Server) -> None:
        self.folder = folder
        self.server = server
        ring = KeyRing.load(folder / "secrets" / "keys.json")
        self.store = SubscriberStore(open_engine(f"sqlite:///{folder / 'data' / 'newsletter.db'}"),
                                     Codec(ring), lambda: datetime.now(UTC), LANGS)
        self.tokens = TokenSigner(ring.token_key, lambda: datetime.now(UTC))
        self.http = httpx.Client(base_url=server.base, timeout=30)

    def mails(self) -> list[email.message.EmailMessage]:
        out = []
        for f in sorted((self.folder / "data" / "outbox" / "new").glob("*")):
            msg = email.message_from_bytes(f.read_bytes(), policy=policy.default)
            assert isinstance(msg, email.message.EmailMessage)
            out.append(msg)
        return out

    def wait_for_mail(self, to: str, count: int = 1) -> email.message.EmailMessage:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            mine = [m for m in self.mails() if m["To"] == to]
            if len(mine) >= count:
                return mine[-1]
            time.sleep(0.05)
        raise AssertionError(f"no confirmation mail #{count} arrived")

    def subscribe(self, address: str, language: str = "zh-Hans") -> httpx.Response:
        with httpx.Client(base_url=self.server.base, timeout=30) as client:  # fresh cookies
            return client.post("/subscribe", data={"email": address, "language": language})

    def close(self) -> None:
        self.http.close()
        self.store.engine.dispose()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("web")
    config = write_config(folder)
    assert run(config, "keys", "init").code == 0
    (folder / "list.csv").write_text("email,language\nactive.one@qq.com,zh-Hant\n"
                                     "active.two@163.com,en\n", encoding="utf-8")
    assert run(config, "subscribers", "import", "list.csv", "--confirmed").code == 0
    with serve(config) as server:
        s = Site(folder, server)
        yield s
        s.close()


def test_subscribe_page_is_bilingual_and_self_contained(site: Site) -> None:
    resp = site.http.get("/subscribe", headers={"accept-language": "zh-TW,zh;q=0.8"})
    assert resp.status_code == 200
    assert "訂閱" in resp.text
    assert "Subscribe" in resp.text
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "style-src 'self'" in csp
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["referrer-policy"] == "no-referrer"
    assert resp.headers["x-content-type-options"] == "nosniff"
    # Nothing is loaded from anywhere else: every src/href stays on this server.
    for url in re.findall(r'(?:src|href|action)="([^"]*)"', resp.text):
        assert url.startswith(("/", "?")), url
    assert "set-cookie" not in resp.headers  # the form needs no cookie (docs/web.md)
    css = site.http.get("/site.css")
    assert css.status_code == 200
    assert "url(" not in css.text
    assert "@import" not in css.text


def test_subscribe_without_a_token_only_asks_for_confirmation(site: Site) -> None:
    """No CSRF token: a form on another site may post here; double opt-in keeps it harmless."""
    resp = site.http.post("/subscribe", data={"email": "no.token@qq.com", "language": "en"})
    assert resp.status_code == 200
    site.wait_for_mail("no.token@qq.com")
    record = site.store.lookup("no.token@qq.com")
    assert record is not None
    assert record.state is SubscriberState.PENDING


def test_same_answer_whether_or_not_the_address_exists(site: Site) -> None:
    known = site.subscribe("active.two@163.com", "en")
    unknown = site.subscribe("brand.new@126.com", "en")
    assert known.status_code == unknown.status_code == 200
    assert known.text == unknown.text
    assert "brand.new" not in unknown.text


def tampered(token: str) -> str:
    """The token with its first character changed (to another one, whatever it was)."""
    return ("B" if token[0] == "A" else "A") + token[1:]


def test_double_opt_in_over_http(site: Site) -> None:
    assert site.subscribe("confirm.me@qq.com", "zh-Hans+en").status_code == 200
    mail = site.wait_for_mail("confirm.me@qq.com")  # the worker decided the request
    record = site.store.lookup("confirm.me@qq.com")
    assert record is not None
    assert record.state is SubscriberState.PENDING
    body = mail.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "请确认" in str(mail["Subject"])
    link = re.search(r"/confirm/([A-Za-z0-9_-]+)", text)
    assert link is not None
    token = link.group(1)
    # Opening the link (what a provider's link scanner does too) shows a button and confirms
    # nothing.
    for _ in range(2):
        page = site.http.get(f"/confirm/{token}")
        assert page.status_code == 200
        assert "确认订阅" in page.text
        assert "<button" in page.text
        assert f'action="/confirm/{token}"' in page.text
    pending = site.store.get(record.id)
    assert pending is not None
    assert pending.state is SubscriberState.PENDING
    # The button posts with no cookie and no CSRF token: the token is the proof.
    first = httpx.post(f"{site.server.base}/confirm/{token}", timeout=30)
    assert first.status_code == 200
    assert "订阅已确认" in first.text
    again = httpx.post(f"{site.server.base}/confirm/{token}", timeout=30)  # harmless twice
    assert again.status_code == 200
    assert "订阅已确认" in site.http.get(f"/confirm/{token}").text
    record = site.store.get(record.id)
    assert record is not None
    assert record.state is SubscriberState.ACTIVE
    assert site.http.get(f"/confirm/{tampered(token)}").status_code == 400
    assert site.http.post(f"/confirm/{tampered(token)}").status_code == 400


def test_unsubscribe_page_and_one_click(site: Site) -> None:
    record = site.store.lookup("active.one@qq.com")
    assert record is not None
    token = site.tokens.unsubscribe_token(record.id)
    page = site.http.get(f"/u/{token}")
    assert page.status_code == 200
    assert "取消訂閱" in page.text  # the subscriber's own language first
    assert "Unsubscribe" in page.text
    assert "<button" in page.text
    assert 'href="?lang=en"' in page.text
    english = site.http.get(f"/u/{token}?lang=en")
    assert english.text.index("Unsubscribe") < english.text.index("退订")
    # RFC 8058: what a mail provider sends, with no cookie and no CSRF token.
    one_click = httpx.post(f"{site.server.base}/u/{token}",
                           data={"List-Unsubscribe": "One-Click"}, timeout=30)
    assert one_click.status_code == 200
    assert "set-cookie" not in one_click.headers
    record = site.store.get(record.id)
    assert record is not None
    assert record.state is SubscriberState.UNSUBSCRIBED
    again = httpx.post(f"{site.server.base}/u/{token}",
                       data={"List-Unsubscribe": "One-Click"}, timeout=30)
    assert again.status_code == 200
    assert site.http.get(f"/u/{token}").status_code == 200
    assert site.http.post(f"/u/{tampered(token)}").status_code == 404
    assert site.http.get("/u/not-a-token").status_code == 404


def test_resubscribing_through_the_form_needs_a_new_confirmation(site: Site) -> None:
    sid = site.store.add("came.back@qq.com", "en", confirmed=True)
    site.store.unsubscribe(sid)
    assert site.subscribe("came.back@qq.com", "en").status_code == 200
    mail = site.wait_for_mail("came.back@qq.com")  # the worker decided the request
    record = site.store.get(sid)
    assert record is not None
    assert record.state is SubscriberState.PENDING
    body = mail.get_body(("plain",))
    assert body is not None
    link = re.search(r"/confirm/([A-Za-z0-9_-]+)", body.get_content())
    assert link is not None
    assert site.http.post(f"/confirm/{link.group(1)}").status_code == 200
    record = site.store.get(sid)
    assert record is not None
    assert record.state is SubscriberState.ACTIVE


def test_server_log_names_no_address(site: Site) -> None:
    log = site.server.log()
    assert "subscriber" in log  # it does log, by id
    for address in ("confirm.me", "came.back", "brand.new", "active.one", "qq.com", "163.com"):
        assert address not in log


def test_rate_limit(tmp_path: Path) -> None:
    config = write_config(tmp_path, rate_limit=2)
    assert run(config, "keys", "init").code == 0
    with serve(config) as server:
        codes = [httpx.post(f"{server.base}/subscribe", data={"email": "x@qq.com"},
                            timeout=30).status_code for _ in range(3)]
    assert codes[:2] == [200, 200]
    assert codes[2] == 429


def test_every_page_language_has_every_string() -> None:
    # The pages render each block in several languages with a strict environment: a string
    # missing from one language would turn that page into a server error.
    templates = Path(__file__).parents[2] / "templates"
    strings = page_strings(lambda path: (templates / path).read_bytes())
    langs = [k for k in strings if k != "language_names"]
    assert len(langs) >= 3
    for lang in langs:
        assert set(strings[lang]) == set(strings["en"]), lang
        assert all(v.strip() for v in strings[lang].values()), lang
