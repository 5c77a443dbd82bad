"""PostStore on SQLite and PostgreSQL: once per (feed, guid), edits, first-poll backlog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import event, select

from mailer.config import FeedSettings
from mailer.db import open_engine
from mailer.feeds.fetch import Validators
from mailer.feeds.store import FeedStatus, PostStore, StoreResult
from mailer.models import Post, PostImage
from mailer.schema import posts as posts_table
from tests.feeds.conftest import NOW, Clock


def _post(guid: str, *, days_old: float = 0, title: str | None = None, body: str = "<p>x</p>",
          published: bool = True) -> Post:
    return Post(
        guid=guid, title=title or f"Post {guid}", content_html=body, language="en",
        link=f"https://b.example/{guid}.html",
        published=NOW - timedelta(days=days_old) if published else None,
        images=(PostImage("https://b.example/i.jpg", "alt"),),
    )


def _feed(store: PostStore, url: str = "https://b.example/feed") -> int:
    return store.ensure_feeds([FeedSettings(url=url)])[url].id


def test_the_same_post_seen_twice_is_stored_once(store: PostStore) -> None:
    fid = _feed(store)
    first = store.record_success(fid, Validators(), [_post("a"), _post("b")], backlog_days=7)
    second = store.record_success(fid, Validators(), [_post("a"), _post("b"), _post("a")],
                                  backlog_days=7)
    assert (first.new, second.new, second.unchanged, second.updated) == (2, 0, 2, 0)
    assert [p.guid for p in store.list_posts()] == ["a", "b"]


def test_a_post_in_two_feeds_is_new_only_once(store: PostStore, clock: Clock) -> None:
    # A label feed and the main feed, or a feed whose URL the operator changed.
    f1, f2 = _feed(store, "https://one/feed"), _feed(store, "https://two/feed")
    first = store.record_success(f1, Validators(), [_post("a")], backlog_days=7)
    clock.now = NOW + timedelta(days=1)
    second = store.record_success(f2, Validators(), [_post("a"), _post("b")], backlog_days=7)
    assert (first.new, second.new, second.duplicate) == (1, 1, 1)
    assert sorted(p.feed_url for p in store.list_posts()) == [
        "https://one/feed", "https://two/feed", "https://two/feed"]
    assert [(p.guid, p.feed_url) for p in store.list_posts(only_new=True)] == [
        ("a", "https://one/feed"), ("b", "https://two/feed")]


def test_an_edit_is_an_update_not_a_new_post(store: PostStore, clock: Clock) -> None:
    fid = _feed(store)
    store.record_success(fid, Validators(), [_post("a", body="<p>first</p>")], backlog_days=7)
    [before] = store.list_posts()
    assert before.id is not None
    clock.now = NOW + timedelta(hours=2)
    result = store.record_success(fid, Validators(), [_post("a", body="<p>corrected</p>")],
                                  backlog_days=7)
    assert (result.new, result.updated) == (0, 1)
    [after] = store.list_posts()
    assert after.id == before.id
    assert after.content_html == "<p>corrected</p>"
    assert store.revision(after.id) == 2
    with store.engine.connect() as conn:
        row = conn.execute(select(posts_table).where(posts_table.c.id == after.id)).one()
    assert row.is_new is True  # unchanged: it was new once and is sent once
    # a third poll with the same edit is not another revision
    store.record_success(fid, Validators(), [_post("a", body="<p>corrected</p>")], backlog_days=7)
    assert store.revision(after.id) == 2


def _is_new(store: PostStore) -> dict[str, bool]:
    with store.engine.connect() as conn:
        return {r.guid: r.is_new for r in conn.execute(select(posts_table.c.guid, posts_table.c.is_new))}


def test_first_poll_takes_only_recent_posts_as_new(store: PostStore, clock: Clock) -> None:
    fid = _feed(store)
    backlog = [_post("today"), _post("6d", days_old=6), _post("8d", days_old=8),
               _post("old", days_old=400), _post("undated", published=False)]
    result = store.record_success(fid, Validators(), backlog, backlog_days=7)
    assert (result.new, result.backlog) == (2, 3)
    assert _is_new(store) == {"today": True, "6d": True, "8d": False, "old": False,
                              "undated": False}
    state = store.feed("https://b.example/feed")
    assert state is not None
    assert state.first_polled_at == NOW
    # After the first poll, any post we have not seen is new, whatever its date.
    clock.now = NOW + timedelta(days=1)
    later = store.record_success(fid, Validators(), [*backlog, _post("late", days_old=30)],
                                 backlog_days=7)
    assert (later.new, later.backlog, later.unchanged) == (1, 0, 5)
    assert store.list_posts(only_new=True)[-1].guid == "late"


def test_backlog_days_zero_takes_everything(store: PostStore) -> None:
    fid = _feed(store)
    result = store.record_success(fid, Validators(), [_post("old", days_old=400)], backlog_days=0)
    assert (result.new, result.backlog) == (1, 0)


def test_feed_health_and_validators_round_trip(store: PostStore, clock: Clock) -> None:
    fid = _feed(store)
    store.record_failure(fid, "HTTP 503 Service Unavailable")
    clock.now = NOW + timedelta(minutes=15)
    store.record_failure(fid, "HTTP 503 Service Unavailable")
    state = store.feed("https://b.example/feed")
    assert state is not None
    assert state.status is FeedStatus.FAILING
    assert state.failing_since == NOW  # since the first failure, not the latest
    assert state.last_error_at == NOW + timedelta(minutes=15)
    assert state.first_polled_at is None  # never read: the first success is still "first poll"
    store.record_success(fid, Validators('"e"', "Fri, 20 Nov 2026 02:00:00 GMT"), [], backlog_days=7)
    state = store.feed("https://b.example/feed")
    assert state is not None
    assert (state.status, state.etag, state.failing_since) == (FeedStatus.OK, '"e"', None)
    assert state.last_success_at == NOW + timedelta(minutes=15)
    assert state.last_error == "HTTP 503 Service Unavailable"  # kept for `newsletter feeds`


def test_loaded_posts_round_trip(store: PostStore) -> None:
    fid = _feed(store)
    store.record_success(fid, Validators(), [_post("a", title="标题")], backlog_days=7)
    [p] = store.list_posts()
    assert p.title == "标题"
    assert p.published == NOW
    assert p.published.tzinfo is not None
    assert p.images == (PostImage("https://b.example/i.jpg", "alt"),)
    assert store.load([]) == []
    assert p.id is not None
    assert store.load([p.id, p.id]) == [p, p]


def test_timestamps_are_aware_utc(store: PostStore) -> None:
    fid = _feed(store)
    store.record_not_modified(fid)
    state = store.feed("https://b.example/feed")
    assert state is not None
    assert state.last_success_at == datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def test_two_pollers_racing_store_each_post_once(db_url: str, clock: Clock) -> None:
    engine_a, engine_b = open_engine(db_url), open_engine(db_url)
    a, b = PostStore(engine_a, clock), PostStore(engine_b, clock)
    fid = _feed(a)
    found = [_post("x"), _post("y")]
    raced: list[StoreResult] = []

    def other_poller_first(conn: object, cursor: object, statement: str, *args: object) -> None:
        # Just before A inserts, B (another process, another connection) stores the same posts.
        if statement.lstrip().upper().startswith("INSERT INTO POSTS") and not raced:
            raced.append(b.record_success(fid, Validators(), found, backlog_days=7))

    event.listen(engine_a, "before_cursor_execute", other_poller_first)
    try:
        result = a.record_success(fid, Validators(), found, backlog_days=7)
    finally:
        event.remove(engine_a, "before_cursor_execute", other_poller_first)
        engine_b.dispose()
    assert raced[0].new == 2
    assert (result.new, result.unchanged) == (0, 2)
    assert sorted(p.guid for p in a.list_posts()) == ["x", "y"]
    engine_a.dispose()


def test_two_processes_adding_the_same_feed(db_url: str, clock: Clock) -> None:
    engine_a, engine_b = open_engine(db_url), open_engine(db_url)
    a, b = PostStore(engine_a, clock), PostStore(engine_b, clock)
    feeds = [FeedSettings(url="https://race.example/feed")]
    done: list[int] = []

    def other_process_first(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO FEEDS") and not done:
            done.append(b.ensure_feeds(feeds)["https://race.example/feed"].id)

    event.listen(engine_a, "before_cursor_execute", other_process_first)
    try:
        states = a.ensure_feeds(feeds)
    finally:
        event.remove(engine_a, "before_cursor_execute", other_process_first)
        engine_b.dispose()
    assert states["https://race.example/feed"].id == done[0]
    assert len(a.list_feeds()) == 1
    engine_a.dispose()
