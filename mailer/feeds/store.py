"""The post store: feeds' validators and health, and each post stored once per (feed, guid).

A post seen again with other content is an *edit*: its row is updated and its revision goes
up, but ``is_new`` is left alone, so an edit is never sent again unless an editor asks.
On the first successful poll of a feed only posts from the last ``backlog_days`` are new; the
rest are recorded as seen (``is_new`` false), as Mailchimp does on a first RSS send.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from mailer.clock import Clock, as_utc
from mailer.config import FeedSettings
from mailer.feeds.fetch import Validators
from mailer.feeds.ids import content_hash
from mailer.models import Post, PostImage
from mailer.schema import feeds, posts

__all__ = ["FeedState", "FeedStatus", "PostStore", "StoreResult"]

# SQLite allows 999 bound parameters per statement in old builds; stay well below.
_CHUNK = 400


class FeedStatus(enum.StrEnum):
    NEW = "new"  # configured, never read successfully
    OK = "ok"
    FAILING = "failing"


@dataclass(frozen=True)
class FeedState:
    """One feed's row: validators for the next conditional GET, and its health."""

    id: int
    url: str
    name: str | None
    status: FeedStatus
    etag: str | None
    last_modified: str | None
    first_polled_at: datetime | None
    last_polled_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    failing_since: datetime | None

    @property
    def validators(self) -> Validators:
        return Validators(self.etag, self.last_modified)


@dataclass(frozen=True)
class StoreResult:
    """What storing one poll's posts did: ``new`` are to be sent, ``backlog`` recorded as seen."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0
    backlog: int = 0
    duplicate: int = 0  # already stored from another feed


def _feed_state(row: RowMapping) -> FeedState:
    return FeedState(
        id=row["id"], url=row["url"], name=row["name"], status=FeedStatus(row["status"]),
        etag=row["etag"], last_modified=row["last_modified"],
        first_polled_at=as_utc(row["first_polled_at"]), last_polled_at=as_utc(row["last_polled_at"]),
        last_success_at=as_utc(row["last_success_at"]), last_error=row["last_error"],
        last_error_at=as_utc(row["last_error_at"]), failing_since=as_utc(row["failing_since"]),
    )


def _images_json(images: Iterable[PostImage]) -> str:
    return json.dumps([{"url": i.url, "alt": i.alt} for i in images], ensure_ascii=False)


def _post(row: RowMapping) -> Post:
    images = tuple(PostImage(url=i["url"], alt=i.get("alt", "")) for i in json.loads(row["images_json"]))
    return Post(
        id=row["id"], guid=row["guid"], title=row["title"], content_html=row["content_html"],
        language=row["language"], link=row["link"], published=as_utc(row["published"]),
        updated=as_utc(row["updated"]), images=images, feed_url=row["feed_url"],
    )


_POST_COLUMNS = (*(c for c in posts.c), feeds.c.url.label("feed_url"))


class PostStore:
    """Posts and feed state in the database. ``clock`` dates every write."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    # ------------------------------------------------------------------ feeds

    def ensure_feeds(self, configured: Sequence[FeedSettings]) -> dict[str, FeedState]:
        """Make sure each configured feed has a row; return the states by URL."""
        try:
            return self._ensure_feeds(configured)
        except IntegrityError:  # another process added the same feed a moment ago
            return self._ensure_feeds(configured)

    def _ensure_feeds(self, configured: Sequence[FeedSettings]) -> dict[str, FeedState]:
        with self.engine.begin() as conn:
            known = {r["url"]: r for r in conn.execute(select(feeds)).mappings()}
            for f in configured:
                if f.url not in known:
                    conn.execute(feeds.insert().values(url=f.url, name=f.name, status=FeedStatus.NEW))
                elif f.name and known[f.url]["name"] != f.name:
                    conn.execute(feeds.update().where(feeds.c.url == f.url).values(name=f.name))
            rows = conn.execute(select(feeds).where(feeds.c.url.in_([f.url for f in configured])))
            return {r["url"]: _feed_state(r) for r in rows.mappings()}

    def feed(self, url: str) -> FeedState | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(feeds).where(feeds.c.url == url)).mappings().first()
        return _feed_state(row) if row else None

    def list_feeds(self) -> list[FeedState]:
        with self.engine.connect() as conn:
            return [_feed_state(r) for r in conn.execute(select(feeds).order_by(feeds.c.id)).mappings()]

    def record_not_modified(self, *feed_ids: int) -> None:
        """A 304 (or an unchanged file): healthy, nothing new. One statement for many feeds,
        because a poll of hundreds of quiet feeds is mostly this."""
        if not feed_ids:
            return
        now = self.clock()
        with self.engine.begin() as conn:
            ids = list(feed_ids)
            for i in range(0, len(ids), _CHUNK):
                conn.execute(feeds.update().where(feeds.c.id.in_(ids[i:i + _CHUNK])).values(
                    status=FeedStatus.OK, last_polled_at=now, last_success_at=now,
                    failing_since=None,
                ))

    def record_failure(self, feed_id: int, error: str) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            row = conn.execute(select(feeds.c.failing_since).where(feeds.c.id == feed_id)).first()
            since = row[0] if row and row[0] is not None else now
            conn.execute(feeds.update().where(feeds.c.id == feed_id).values(
                status=FeedStatus.FAILING, last_polled_at=now, last_error=error[:2000],
                last_error_at=now, failing_since=since,
            ))

    def record_success(self, feed_id: int, validators: Validators, found: Sequence[Post], *,
                       backlog_days: int) -> StoreResult:
        """Store one poll's posts and the feed's new validators in a single transaction.

        Two pollers racing on one feed (the daemon and a hand-run ``newsletter poll``) can both
        find a post missing and both insert it; the unique (feed, guid) key stops the second,
        which then reads again and finds the post stored: once, as it must be.
        """
        try:
            return self._record_success(feed_id, validators, found, backlog_days=backlog_days)
        except IntegrityError:
            return self._record_success(feed_id, validators, found, backlog_days=backlog_days)

    def _record_success(self, feed_id: int, validators: Validators, found: Sequence[Post], *,
                        backlog_days: int) -> StoreResult:
        now = self.clock()
        with self.engine.begin() as conn:
            first = conn.execute(
                select(feeds.c.first_polled_at).where(feeds.c.id == feed_id)
            ).scalar_one() is None
            result = self._store(conn, feed_id, found, now=now, first=first, backlog_days=backlog_days)
            values: dict[str, object] = dict(
                status=FeedStatus.OK, etag=validators.etag, last_modified=validators.last_modified,
                last_polled_at=now, last_success_at=now, failing_since=None,
            )
            if first:
                values["first_polled_at"] = now
            conn.execute(feeds.update().where(feeds.c.id == feed_id).values(**values))
        return result

    # ------------------------------------------------------------------ posts

    def _store(self, conn: Connection, feed_id: int, found: Sequence[Post], *, now: datetime,
               first: bool, backlog_days: int) -> StoreResult:
        unique: dict[str, Post] = {}
        for p in found:
            unique.setdefault(p.guid, p)  # a feed listing a post twice: the first (newest) wins
        existing: dict[str, tuple[int, str]] = {}
        elsewhere: set[str] = set()  # already stored from another feed
        guids = list(unique)
        for i in range(0, len(guids), _CHUNK):
            rows = conn.execute(
                select(posts.c.guid, posts.c.id, posts.c.content_hash, posts.c.feed_id)
                .where(posts.c.guid.in_(guids[i:i + _CHUNK]))
            )
            for r in rows:
                if r.feed_id == feed_id:
                    existing[r.guid] = (r.id, r.content_hash)
                else:
                    elsewhere.add(r.guid)
        cutoff = now - timedelta(days=backlog_days)
        inserts: list[dict[str, object]] = []
        new = updated = unchanged = backlog = duplicate = 0
        for guid, p in unique.items():
            digest = content_hash(p.title, p.content_html)
            if guid in existing:
                post_id, old = existing[guid]
                if old == digest:
                    unchanged += 1
                    continue
                conn.execute(posts.update().where(posts.c.id == post_id).values(
                    title=p.title, content_html=p.content_html, language=p.language, link=p.link,
                    published=p.published, updated=p.updated or now, content_hash=digest,
                    images_json=_images_json(p.images), revision=posts.c.revision + 1,
                    updated_at=now,
                ))
                updated += 1
                continue
            # backlog_days = 0 turns the first-poll limit off (the embedded sample uses this).
            is_new = (not first or backlog_days == 0
                      or (p.published is not None and p.published >= cutoff))
            if guid in elsewhere:
                # Stored under another feed already: recorded here, but sent only once.
                is_new = False
                duplicate += 1
            else:
                new += is_new
                backlog += not is_new
            inserts.append(dict(
                feed_id=feed_id, guid=guid, link=p.link, title=p.title, content_html=p.content_html,
                language=p.language, published=p.published, updated=p.updated, content_hash=digest,
                images_json=_images_json(p.images), is_new=is_new, revision=1,
                created_at=now, updated_at=now,
            ))
        if inserts:
            conn.execute(posts.insert(), inserts)
        return StoreResult(new=new, updated=updated, unchanged=unchanged, backlog=backlog,
                           duplicate=duplicate)

    def load(self, post_ids: Sequence[int]) -> list[Post]:
        """The posts with these ids, in the order given; an unknown id is skipped."""
        if not post_ids:
            return []
        found: dict[int, Post] = {}
        ids = list(dict.fromkeys(post_ids))
        with self.engine.connect() as conn:
            for i in range(0, len(ids), _CHUNK):
                q = (select(*_POST_COLUMNS).join(feeds, feeds.c.id == posts.c.feed_id)
                     .where(posts.c.id.in_(ids[i:i + _CHUNK])))
                found.update({r["id"]: _post(r) for r in conn.execute(q).mappings()})
        return [found[i] for i in post_ids if i in found]

    def list_posts(self, *, only_new: bool = False) -> list[Post]:
        """Every stored post in the order stored (``only_new``: not the first-poll backlog)."""
        q = select(*_POST_COLUMNS).join(feeds, feeds.c.id == posts.c.feed_id).order_by(posts.c.id)
        if only_new:
            q = q.where(posts.c.is_new.is_(True))
        with self.engine.connect() as conn:
            return [_post(r) for r in conn.execute(q).mappings()]

    def revision(self, post_id: int) -> int:
        """How many versions of the post we have seen (1 until the publisher edits it)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(posts.c.revision).where(posts.c.id == post_id)).scalar_one())
