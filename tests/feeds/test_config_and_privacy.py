"""The feed keys of the config, and that feed credentials never reach logs or screens."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.config import FeedSettings, FetchSettings, ImageSettings, load_config
from mailer.errors import ConfigError
from mailer.feeds.fetch import redact
from mailer.feeds.parse import decode_feed
from mailer.feeds.poll import poll_feeds
from mailer.feeds.store import PostStore
from tests.feeds.conftest import Clock, fixture_bytes
from tests.support.http import HTTPServer, Reply

BASE = """
[newsletter]
from = "Digest <digest@example.org>"
public_url = "https://news.example.org"
"""


def _load(tmp_path: Path, extra: str) -> object:
    path = tmp_path / "newsletter.toml"
    path.write_text(BASE + extra, encoding="utf-8")
    return load_config(path)


def test_fetch_and_feed_keys_load(tmp_path: Path) -> None:
    cfg = _load(tmp_path, """
[fetch]
user_agent = "digest-bot/2"
concurrency = 4
connect_timeout = 3
read_timeout = 7.5
deadline = 90
max_redirects = 3
max_body = "2MB"
proxy = "socks5h://127.0.0.1:9050"

[[feeds]]
url = "https://example.blogspot.com/feeds/posts/default"
language = "zh-Hant"
backlog_days = 3
proxy = "http://127.0.0.1:8118"
name = "Main blog"

[[feeds]]
url = "feeds/local.xml"
""")
    fetch: FetchSettings = cfg.fetch  # type: ignore[attr-defined]
    feeds: tuple[FeedSettings, ...] = cfg.feeds  # type: ignore[attr-defined]
    assert fetch == FetchSettings(user_agent="digest-bot/2", concurrency=4, connect_timeout=3.0,
                                  read_timeout=7.5, deadline=90.0, max_redirects=3,
                                  max_body=2_000_000, proxy="socks5h://127.0.0.1:9050")
    assert feeds[0].language == "zh-Hant"
    assert feeds[0].backlog_days == 3
    assert feeds[0].proxy == "http://127.0.0.1:8118"
    assert feeds[1].is_local
    assert feeds[1].url == str(tmp_path / "feeds/local.xml")


@pytest.mark.parametrize(("extra", "key"), [
    ("[fetch]\ndeadline = 0\n", "fetch.deadline"),
    ("[fetch]\nmax_redirects = -1\n", "fetch.max_redirects"),
    ("[fetch]\nconcurrency = 0\n", "fetch.concurrency"),
    ("[fetch]\nproxy = \"ftp://x\"\n", "fetch.proxy"),
    ("[[feeds]]\nurl = \"ftp://x/feed\"\n", "feeds[0].url"),
    ("[[feeds]]\nurl = \"https://x/feed\"\nlanguage = \"fr\"\n", "feeds[0].language"),
    ("[[feeds]]\nurl = \"https://x/feed\"\nbacklog_days = -2\n", "feeds[0].backlog_days"),
    ("[[feeds]]\nurl = \"https://x/feed\"\nlanguge = \"en\"\n", "feeds[0].languge"),
])
def test_bad_feed_keys_are_named(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, extra)
    assert info.value.key == key


def test_images_use_the_fetch_proxy_and_user_agent_unless_they_say_otherwise(tmp_path: Path) -> None:
    fetch = """
[fetch]
user_agent = "digest-bot/2"
proxy = "socks5h://127.0.0.1:9050"
max_redirects = 2
"""
    inherited: ImageSettings = _load(tmp_path, fetch).images  # type: ignore[attr-defined]
    assert (inherited.proxy, inherited.user_agent, inherited.max_redirects) == (
        "socks5h://127.0.0.1:9050", "digest-bot/2", 2)
    assert inherited.unsafe_allow_networks_for_tests == ()
    own: ImageSettings = _load(tmp_path, fetch + """
[images]
proxy = "http://127.0.0.1:8118"
user_agent = "img/1"
timeout = 5
deadline = 30
""").images  # type: ignore[attr-defined]
    assert (own.proxy, own.user_agent, own.timeout, own.deadline) == ("http://127.0.0.1:8118", "img/1", 5.0, 30.0)
    direct: ImageSettings = _load(tmp_path, fetch + '[images]\nproxy = "none"\n').images  # type: ignore[attr-defined]
    assert direct.proxy is None


@pytest.mark.parametrize(("extra", "key"), [
    ("[images]\ntimeout = 0\n", "images.timeout"),
    ("[images]\ndeadline = -1\n", "images.deadline"),
    ("[images]\nproxy = \"ftp://x\"\n", "images.proxy"),
    ("[fetch]\nunsafe_allow_networks_for_tests = [\"127.0.0.300/8\"]\n",
     "fetch.unsafe_allow_networks_for_tests[0]"),
])
def test_bad_image_keys_are_named(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, extra)
    assert info.value.key == key


def test_redact_hides_passwords_only() -> None:
    assert redact("https://reader:s3cret@feeds.example/f") == "https://reader:***@feeds.example/f"
    assert redact("https://feeds.example/f?token=1") == "https://feeds.example/f?token=1"
    assert redact("/var/feeds/local.xml") == "/var/feeds/local.xml"


@given(st.text(alphabet="abcXYZ019-_.~", min_size=1, max_size=12))
def test_redact_never_shows_the_password(password: str) -> None:
    assert redact(f"https://user:{password}@h.example/feed") == "https://user:***@h.example/feed"


async def test_credentials_stay_out_of_logs_and_errors(sqlite_store: PostStore, clock: Clock,
                                                       http_server: HTTPServer,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    http_server.routes["/private"] = Reply(status=401, body=b"who are you")
    url = http_server.url("/private").replace("http://", "http://reader:hunter2@")
    with caplog.at_level(logging.DEBUG, logger="newsletter.feeds"):
        report = await poll_feeds([FeedSettings(url=url)], store=sqlite_store,
                                  fetch=FetchSettings(connect_timeout=2, read_timeout=2), clock=clock)
    assert report.failed == (url,)
    assert "hunter2" not in caplog.text
    assert "reader:***@" in caplog.text
    state = sqlite_store.feed(url)
    assert state is not None
    assert "hunter2" not in (state.last_error or "")
    assert http_server.requests[0][1]["authorization"].startswith("Basic ")


def test_gbk_mislabelled_as_utf8_is_still_read() -> None:
    body = fixture_bytes("gbk.xml").replace(b'encoding="gb2312"', b'encoding="utf-8"')
    text, encoding = decode_feed(body, "application/xml; charset=utf-8")
    assert encoding == "gb18030"
    assert "朱镕基" in text
