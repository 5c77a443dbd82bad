"""Helpers for edition tests: real posts in a real database, written through SQLAlchemy Core."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, select

from mailer.schema import feeds, posts
from tests.support.clock import ManualClock

__all__ = ["T0", "Clock", "add_posts"]

T0 = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)


class Clock(ManualClock):
    """Editions tests start their day at midnight UTC."""

    def __init__(self, now: datetime = T0) -> None:
        super().__init__(now)

def add_posts(engine: Engine, n: int, *, language: str = "en", is_new: bool = True,
              feed_url: str = "https://example.blogspot.com/feeds/posts/default") -> list[int]:
    """Insert ``n`` posts (published an hour apart, oldest first) and return their ids."""
    with engine.begin() as conn:
        feed_id = conn.execute(select(feeds.c.id).where(feeds.c.url == feed_url)).scalar()
        if feed_id is None:
            feed_id = conn.execute(insert(feeds).values(url=feed_url, status="ok")
                                   .returning(feeds.c.id)).scalar_one()
        count = len(conn.execute(select(posts.c.id)).all())
        ids = []
        for i in range(n):
            k = count + i
            ids.append(conn.execute(insert(posts).values(
                feed_id=feed_id, guid=f"tag:post-{k}", link=f"https://example.blogspot.com/{k}.html",
                title=f"Post {k}", content_html=f"<p>Body {k}</p>", language=language,
                published=T0 - timedelta(days=1) + timedelta(hours=k), content_hash=f"{k:064d}",
                images_json="[]", is_new=is_new, revision=1, created_at=T0, updated_at=T0,
            ).returning(posts.c.id)).scalar_one())
    return ids
