"""Poll every configured feed concurrently; one broken feed never stops the others.

A feed that keeps failing is logged once when it starts failing and once when it recovers,
not on every poll (an operator reading the log of a 15-minute poller would otherwise drown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime

import httpx

from mailer.clock import Clock
from mailer.config import FeedSettings, FetchSettings
from mailer.errors import FeedError
from mailer.feeds.fetch import FetchOutcome, build_client, fetch_feed, redact
from mailer.feeds.parse import parse_feed
from mailer.feeds.store import FeedState, FeedStatus, PostStore, StoreResult
from mailer.models import Post

__all__ = ["FeedOutcome", "PollReport", "cap_posts", "poll_feeds"]

log = logging.getLogger("newsletter.feeds")


@dataclass(frozen=True)
class FeedOutcome:
    """One feed's poll: ``error`` is set when it failed; ``changed`` when its health flipped."""

    url: str
    result: StoreResult = field(default_factory=StoreResult)
    not_modified: bool = False
    error: str | None = None
    warning: str | None = None
    changed: bool = False
    failing_since: datetime | None = None  # set while failing: when the failures began


@dataclass(frozen=True)
class PollReport:
    """The whole poll. ``failed`` and ``recovered`` hold feed URLs."""

    feeds: int
    new: int
    updated: int
    backlog: int
    not_modified: int
    failed: tuple[str, ...]
    newly_failing: tuple[str, ...]
    recovered: tuple[str, ...]
    outcomes: tuple[FeedOutcome, ...]
    duplicate: int = 0  # posts already stored from another feed
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


async def poll_feeds(feeds: Sequence[FeedSettings], *, store: PostStore, fetch: FetchSettings,
                     clock: Clock, client: httpx.AsyncClient | None = None) -> PollReport:
    """Fetch, parse and store every feed, at most ``fetch.concurrency`` at a time.

    ``client`` serves feeds without their own proxy (tests pass one); feeds with a ``proxy``
    get a client of their own. ``clock`` dates the report; the store dates its rows itself.
    """
    started = clock()
    feeds = list({f.url: f for f in feeds}.values())  # a feed listed twice is polled once
    states = await asyncio.to_thread(store.ensure_feeds, feeds)
    limit = asyncio.Semaphore(fetch.concurrency)
    async with AsyncExitStack() as stack:
        clients: dict[str | None, httpx.AsyncClient] = {}
        if client is not None:
            clients[None] = client
        for f in feeds:
            key = f.proxy
            if not f.is_local and key not in clients:
                clients[key] = await stack.enter_async_context(build_client(fetch, key))

        async def one(f: FeedSettings) -> FeedOutcome:
            async with limit:
                return await _poll_one(f, states[f.url], store=store, fetch=fetch,
                                       client=None if f.is_local else clients[f.proxy])

        outcomes = await asyncio.gather(*(one(f) for f in feeds))
    quiet = [states[o.url].id for o in outcomes if o.not_modified]
    await asyncio.to_thread(store.record_not_modified, *quiet)
    failed = tuple(o.url for o in outcomes if o.error)
    return PollReport(
        feeds=len(feeds),
        new=sum(o.result.new for o in outcomes),
        updated=sum(o.result.updated for o in outcomes),
        backlog=sum(o.result.backlog for o in outcomes),
        duplicate=sum(o.result.duplicate for o in outcomes),
        not_modified=sum(o.not_modified for o in outcomes),
        failed=failed,
        newly_failing=tuple(o.url for o in outcomes if o.error and o.changed),
        recovered=tuple(o.url for o in outcomes if not o.error and o.changed),
        outcomes=tuple(outcomes),
        started_at=started,
        finished_at=clock(),
    )


async def _poll_one(feed: FeedSettings, state: FeedState, *, store: PostStore,
                    fetch: FetchSettings, client: httpx.AsyncClient | None) -> FeedOutcome:
    try:
        got = await fetch_feed(feed, state.validators, client=client, fetch=fetch)
        if got.outcome is FetchOutcome.NOT_MODIFIED:
            # recorded for all such feeds at once by poll_feeds
            return _healthy(feed, state, FeedOutcome(feed.url, not_modified=True))
        parsed = await asyncio.to_thread(
            parse_feed, got.body, feed_url=feed.url, language=feed.language,
            content_type=got.content_type, base_url=None if feed.is_local else got.final_url,
        )
        posts, capped = cap_posts(parsed.posts, feed.max_new_posts or fetch.max_new_posts)
        warning = "; ".join(w for w in (
            f"transfer cut short after {len(got.body)} bytes" if got.truncated else None,
            parsed.warning,
            f"{len(parsed.posts)} entries, more than max_new_posts = {len(posts)}: stored the "
            f"newest {len(posts)}, left {capped} out" if capped else None,
        ) if w) or None
        if warning:
            log.warning("feed %s: %s", redact(feed.url), warning)
        result = await asyncio.to_thread(
            store.record_success, state.id, got.validators, posts,
            backlog_days=feed.backlog_days,
        )
        return _healthy(feed, state, FeedOutcome(feed.url, result=result, warning=warning))
    except FeedError as exc:
        message = _reason(exc)
    except Exception as exc:  # a parser bug on one feed's bytes must not stop the others
        log.exception("feed %s: unexpected error", redact(feed.url))
        message = f"unexpected {type(exc).__name__}: {exc}"
    await asyncio.to_thread(store.record_failure, state.id, message)
    changed = state.status is not FeedStatus.FAILING
    if changed:
        log.warning("feed %s is failing: %s", redact(feed.url), message)
    else:
        log.debug("feed %s still failing: %s", redact(feed.url), message)
    since = None if changed else state.failing_since
    return FeedOutcome(feed.url, error=message, changed=changed, failing_since=since)


def cap_posts(posts: Sequence[Post], limit: int) -> tuple[tuple[Post, ...], int]:
    """The newest ``limit`` posts (undated ones count as oldest, feed order breaks ties), and
    how many were left out. One poll of one feed never stores more: a feed that floods is a
    feed gone wrong, and what it floods with is not news for this edition."""
    if len(posts) <= limit:
        return tuple(posts), 0
    def newest_first(i: int) -> tuple[bool, float, int]:
        when = posts[i].published
        return when is None, -when.timestamp() if when is not None else 0.0, i

    keep = sorted(sorted(range(len(posts)), key=newest_first)[:limit])
    return tuple(posts[i] for i in keep), len(posts) - limit


def _reason(exc: FeedError) -> str:
    text = str(exc)
    prefix = f"{exc.feed}: " if exc.feed else ""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def _healthy(feed: FeedSettings, state: FeedState, outcome: FeedOutcome) -> FeedOutcome:
    if state.status is FeedStatus.FAILING:
        log.warning("feed %s has recovered", redact(feed.url))
        return FeedOutcome(outcome.url, outcome.result, outcome.not_modified, None,
                           outcome.warning, changed=True)
    return outcome
