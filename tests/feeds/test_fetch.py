"""Fetching against a real loopback HTTP server: validators, redirects, limits, proxies."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from mailer.config import FeedSettings, FetchSettings
from mailer.errors import FetchError
from mailer.feeds.fetch import FetchOutcome, FetchResult, Validators, build_client, fetch_feed
from mailer.feeds.poll import poll_feeds
from mailer.feeds.store import FeedStatus, PostStore
from tests.feeds.conftest import Clock, fixture_bytes
from tests.feeds.socks import Socks5Server
from tests.support.http import HTTPServer, Reply

FETCH = FetchSettings(connect_timeout=2, read_timeout=2, concurrency=4, user_agent="test-agent/1")


NO_VALIDATORS = Validators()


async def _fetch(url: str, validators: Validators = NO_VALIDATORS,
                 fetch: FetchSettings = FETCH, proxy: str | None = None) -> FetchResult:
    async with build_client(fetch, proxy) as client:
        return await fetch_feed(FeedSettings(url=url), validators, client=client, fetch=fetch)


async def test_conditional_get_sends_validators_and_treats_304_as_nothing_new(
        sqlite_store: PostStore, http_server: HTTPServer, clock: Clock) -> None:
    body = fixture_bytes("blogger.atom.xml")

    def route(headers: dict[str, str]) -> Reply:
        if headers.get("if-none-match") == '"v1"':
            return Reply(status=304)
        return Reply(body=body, headers={"ETag": '"v1"',
                                         "Last-Modified": "Fri, 20 Nov 2026 02:00:00 GMT"})

    http_server.routes["/feed"] = route
    feeds = [FeedSettings(url=http_server.url("/feed"))]
    first = await poll_feeds(feeds, store=sqlite_store, fetch=FETCH, clock=clock)
    second = await poll_feeds(feeds, store=sqlite_store, fetch=FETCH, clock=clock)
    assert (first.new, first.not_modified) == (3, 0)
    assert (second.new, second.not_modified, second.failed) == (0, 1, ())
    _, h1 = http_server.requests[0]
    _, h2 = http_server.requests[1]
    assert "if-none-match" not in h1
    assert h2["if-none-match"] == '"v1"'
    assert h2["if-modified-since"] == "Fri, 20 Nov 2026 02:00:00 GMT"
    assert h1["user-agent"] == "test-agent/1"
    assert "gzip" in h1["accept-encoding"]
    state = sqlite_store.feed(feeds[0].url)
    assert state is not None
    assert state.etag == '"v1"'
    assert state.status is FeedStatus.OK


async def test_gzip_body_is_decoded(http_server: HTTPServer) -> None:
    http_server.routes["/gz"] = Reply(body=fixture_bytes("wordpress.rss2.xml"), gzip=True)
    got = await _fetch(http_server.url("/gz"))
    assert got.body == fixture_bytes("wordpress.rss2.xml")


async def test_redirects_are_followed(http_server: HTTPServer) -> None:
    http_server.routes["/old"] = Reply(status=301, headers={"Location": "/middle"})
    http_server.routes["/middle"] = Reply(status=302, headers={"Location": "/new"})
    http_server.routes["/new"] = Reply(body=b"<rss version='2.0'><channel/></rss>")
    got = await _fetch(http_server.url("/old"))
    assert got.outcome is FetchOutcome.FETCHED
    assert got.final_url == http_server.url("/new")


async def test_redirect_loop_fails_after_the_limit(http_server: HTTPServer) -> None:
    http_server.routes["/a"] = Reply(status=302, headers={"Location": "/b"})
    http_server.routes["/b"] = Reply(status=302, headers={"Location": "/a"})
    with pytest.raises(FetchError, match="more than 5 redirects"):
        await _fetch(http_server.url("/a"))
    assert len(http_server.requests) == 6  # the first request and five redirects, no more


async def test_slow_server_hits_the_read_timeout(http_server: HTTPServer) -> None:
    http_server.routes["/slow"] = Reply(body=b"<rss/>", delay=1.0)
    fetch = FetchSettings(connect_timeout=1, read_timeout=0.2)
    with pytest.raises(FetchError, match="timed out"):
        await _fetch(http_server.url("/slow"), fetch=fetch)


async def test_deadline_bounds_the_whole_fetch(http_server: HTTPServer) -> None:
    http_server.routes["/slow"] = Reply(body=b"<rss/>", delay=1.0)
    fetch = FetchSettings(connect_timeout=5, read_timeout=5, deadline=0.2)
    with pytest.raises(FetchError, match="deadline"):
        await _fetch(http_server.url("/slow"), fetch=fetch)


async def test_oversized_body_is_refused(http_server: HTTPServer) -> None:
    http_server.routes["/big"] = Reply(body=b"<rss>" + b" " * 5000 + b"</rss>")
    with pytest.raises(FetchError, match="over the 1000-byte limit"):
        await _fetch(http_server.url("/big"), fetch=FetchSettings(max_body=1000))


async def test_gzip_bomb_is_refused_by_decoded_size(http_server: HTTPServer) -> None:
    # 2 MB of spaces compresses to a few KB; the limit applies to what it inflates to.
    http_server.routes["/bomb"] = Reply(body=b"<rss>" + b" " * 2_000_000 + b"</rss>", gzip=True)
    with pytest.raises(FetchError, match="over the 100000-byte limit"):
        await _fetch(http_server.url("/bomb"), fetch=FetchSettings(max_body=100_000))


@pytest.mark.parametrize("status", [403, 404, 500, 502])
async def test_http_errors_name_the_status(http_server: HTTPServer, status: int) -> None:
    http_server.routes["/x"] = Reply(status=status, body=b"<html>denied</html>")
    with pytest.raises(FetchError, match=f"HTTP {status}") as info:
        await _fetch(http_server.url("/x"))
    assert info.value.status == status


async def test_connection_refused_is_a_fetch_error() -> None:
    with pytest.raises(FetchError):
        await _fetch("http://127.0.0.1:9/feed")


async def test_truncated_transfer_keeps_whole_entries_and_refetches_next_time(
        sqlite_store: PostStore, http_server: HTTPServer, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    body = fixture_bytes("blogger.atom.xml")
    cut = body.index(b"<title type='text'>Weekly digest")
    http_server.routes["/feed"] = Reply(body=body, headers={"ETag": '"full"'}, truncate_at=cut)
    feeds = [FeedSettings(url=http_server.url("/feed"))]
    with caplog.at_level(logging.WARNING, logger="newsletter.feeds"):
        report = await poll_feeds(feeds, store=sqlite_store, fetch=FETCH, clock=clock)
    assert (report.new, report.failed) == (2, ())
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert feeds[0].url in warnings[0]
    assert "cut short" in warnings[0]
    state = sqlite_store.feed(feeds[0].url)
    assert state is not None
    assert state.etag is None  # a broken copy must not earn a 304 next time

    http_server.routes["/feed"] = Reply(body=body, headers={"ETag": '"full"'})
    again = await poll_feeds(feeds, store=sqlite_store, fetch=FETCH, clock=clock)
    assert again.new == 1
    assert "if-none-match" not in http_server.requests[-1][1]


async def test_per_feed_proxy_is_used(http_server: HTTPServer) -> None:
    # The proxy is a second loopback server: an http proxy gets the absolute URL as the path.
    proxy = HTTPServer().start()
    try:
        target = "http://feeds.invalid/feed.xml"  # .invalid never resolves (RFC 2606)
        proxy.routes[target] = Reply(body=fixture_bytes("rss10.rdf"))
        feed = FeedSettings(url=target, proxy=f"http://127.0.0.1:{proxy.port}")
        async with build_client(FETCH, feed.proxy) as client:
            got = await fetch_feed(feed, Validators(), client=client, fetch=FETCH)
        assert got.body == fixture_bytes("rss10.rdf")
        assert proxy.requests[0][0] == target
    finally:
        proxy.stop()


async def test_global_proxy_applies_when_the_feed_has_none(sqlite_store: PostStore,
                                                           clock: Clock) -> None:
    proxy = HTTPServer().start()
    try:
        target = "http://global.invalid/feed.xml"
        proxy.routes[target] = Reply(body=fixture_bytes("rss10.rdf"))
        fetch = FetchSettings(proxy=f"http://127.0.0.1:{proxy.port}", connect_timeout=2)
        report = await poll_feeds([FeedSettings(url=target)], store=sqlite_store, fetch=fetch,
                                  clock=clock)
        assert (report.new, report.failed) == (1, ())
    finally:
        proxy.stop()


async def test_local_file_over_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.xml"
    path.write_bytes(b"<rss>" + b" " * 2000 + b"</rss>")
    with pytest.raises(FetchError, match="limit"):
        await fetch_feed(FeedSettings(url=str(path)), Validators(), client=None,
                         fetch=FetchSettings(max_body=1000))


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
async def test_socks5_proxy_resolves_the_name_itself(http_server: HTTPServer, scheme: str) -> None:
    http_server.routes["/feed.xml"] = Reply(body=fixture_bytes("rss10.rdf"))
    async with Socks5Server({"feeds.invalid": "127.0.0.1"}) as socks:
        feed = FeedSettings(url=f"http://feeds.invalid:{http_server.port}/feed.xml",
                            proxy=socks.url.replace("socks5", scheme, 1))
        async with build_client(FETCH, feed.proxy) as client:
            got = await fetch_feed(feed, Validators(), client=client, fetch=FETCH)
    assert got.body == fixture_bytes("rss10.rdf")
    assert socks.requested == [("feeds.invalid", http_server.port)]


async def test_concurrency_limit_is_obeyed(sqlite_store: PostStore, http_server: HTTPServer,
                                           clock: Clock) -> None:
    lock = threading.Lock()
    in_flight = [0]
    peak = [0]
    body = fixture_bytes("rss10.rdf")

    def route(headers: dict[str, str]) -> Reply:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)  # hold the slot so that overlapping requests would show
        with lock:
            in_flight[0] -= 1
        return Reply(body=body)

    for i in range(8):
        http_server.routes[f"/f{i}"] = route
    feeds = [FeedSettings(url=http_server.url(f"/f{i}")) for i in range(8)]
    fetch = FetchSettings(concurrency=2, connect_timeout=2, read_timeout=2)
    report = await poll_feeds(feeds, store=sqlite_store, fetch=fetch, clock=clock)
    assert report.failed == ()
    assert len(http_server.requests) == 8
    assert peak[0] <= 2
