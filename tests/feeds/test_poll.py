"""Polling against a real loopback HTTP server and real databases."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mailer.config import FeedSettings, FetchSettings
from mailer.feeds.poll import poll_feeds
from mailer.feeds.store import FeedStatus, PostStore
from tests.feeds.conftest import FIXTURES, Clock, fixture_bytes
from tests.support.http import HTTPServer, Reply

FETCH = FetchSettings(connect_timeout=2, read_timeout=2, concurrency=4)


async def test_local_and_http_feeds_are_stored_once(store: PostStore, http_server: HTTPServer,
                                                    clock: Clock) -> None:
    http_server.routes["/wp"] = Reply(body=fixture_bytes("wordpress.rss2.xml"),
                                      headers={"Content-Type": "application/rss+xml"})
    feeds = [FeedSettings(url=str(FIXTURES / "blogger.atom.xml")),
             FeedSettings(url=http_server.url("/wp"))]
    report = await poll_feeds(feeds, store=store, fetch=FETCH, clock=clock)
    assert (report.feeds, report.new, report.failed) == (2, 5, ())
    assert report.started_at == clock.now
    again = await poll_feeds(feeds, store=store, fetch=FETCH, clock=clock)
    assert again.new == 0
    titles = [p.title for p in store.list_posts()]
    assert len(titles) == 5
    assert "Court hearing postponed again" in titles
    assert "律师被拘留的第七天" in titles


async def test_load_returns_posts_in_the_order_asked(store: PostStore, clock: Clock) -> None:
    feeds = [FeedSettings(url=str(FIXTURES / "blogger.atom.xml"))]
    await poll_feeds(feeds, store=store, fetch=FETCH, clock=clock)
    ids = [p.id for p in store.list_posts()]
    assert all(isinstance(i, int) for i in ids)
    wanted = [ids[2], ids[0], 999_999, ids[1]]
    loaded = store.load(wanted)  # type: ignore[arg-type]
    assert [p.id for p in loaded] == [ids[2], ids[0], ids[1]]
    assert loaded[0].language == "en"
    assert loaded[1].feed_url == str(FIXTURES / "blogger.atom.xml")
    assert loaded[1].images[0].alt == "律师事务所门口"
    assert loaded[1].published is not None
    assert loaded[1].published.tzinfo is not None


async def test_one_broken_feed_does_not_stop_the_others(store: PostStore, http_server: HTTPServer,
                                                        clock: Clock,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    http_server.routes["/good"] = Reply(body=fixture_bytes("wordpress.rss2.xml"))
    http_server.routes["/blocked"] = Reply(body=fixture_bytes("blockpage.html"),
                                           headers={"Content-Type": "text/html"})
    http_server.routes["/down"] = Reply(status=503, body=b"busy")
    feeds = [FeedSettings(url=http_server.url(p)) for p in ("/blocked", "/good", "/down")]
    feeds.append(FeedSettings(url="/nonexistent/feed.xml"))
    with caplog.at_level(logging.WARNING, logger="newsletter.feeds"):
        report = await poll_feeds(feeds, store=store, fetch=FETCH, clock=clock)
    assert report.new == 2
    assert set(report.failed) == {feeds[0].url, feeds[2].url, feeds[3].url}
    assert set(report.newly_failing) == set(report.failed)
    failing_logs = [r for r in caplog.records if "is failing" in r.getMessage()]
    assert len(failing_logs) == 3
    states = {s.url: s for s in store.list_feeds()}
    assert states[feeds[0].url].status is FeedStatus.FAILING
    assert "HTML page" in (states[feeds[0].url].last_error or "")
    assert "503" in (states[feeds[2].url].last_error or "")
    assert states[feeds[1].url].status is FeedStatus.OK

    # Failing again: no new warning. Then the feed recovers: one warning saying so.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="newsletter.feeds"):
        again = await poll_feeds(feeds, store=store, fetch=FETCH, clock=clock)
        assert again.newly_failing == ()
        assert not [r for r in caplog.records if "is failing" in r.getMessage()]
        http_server.routes["/down"] = Reply(body=fixture_bytes("rss10.rdf"))
        third = await poll_feeds(feeds, store=store, fetch=FETCH, clock=clock)
    assert third.recovered == (feeds[2].url,)
    assert [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()] == [
        f"feed {feeds[2].url} has recovered"]
    assert store.feed(feeds[2].url).status is FeedStatus.OK  # type: ignore[union-attr]


async def test_local_file_unchanged_is_not_reparsed(sqlite_store: PostStore, tmp_path: Path,
                                                    clock: Clock) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(fixture_bytes("blogger.atom.xml"))
    feeds = [FeedSettings(url=str(path))]
    first = await poll_feeds(feeds, store=sqlite_store, fetch=FETCH, clock=clock)
    second = await poll_feeds(feeds, store=sqlite_store, fetch=FETCH, clock=clock)
    assert (first.new, first.not_modified) == (3, 0)
    assert (second.new, second.not_modified) == (0, 1)
