"""Posts for a benchmark edition, written straight into the posts table (no feed needed)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert

from mailer.schema import feeds, posts

__all__ = ["add_posts"]


def add_posts(engine: Engine, k: int, *, paragraphs: int = 4) -> list[int]:
    """``k`` bilingual posts of ``paragraphs`` paragraphs, each linking to the origin."""
    now = datetime.now(UTC)
    para = ("<p>公民社会的报道与分析。Reporting and analysis on civil society, with links to "
            '<a href="https://example.blogspot.com/2026/11/a.html">the source</a>.</p>') * paragraphs
    with engine.begin() as conn:
        fid = conn.execute(insert(feeds).values(url="https://example.blogspot.com/feeds",
                                                status="ok").returning(feeds.c.id)).scalar_one()
        return [conn.execute(insert(posts).values(
            feed_id=fid, guid=f"tag:{secrets.token_hex(6)}",
            link=f"https://example.blogspot.com/2026/11/p{i}.html", title=f"文章 {i} Post {i}",
            content_html=para, language="zh-Hans", published=now - timedelta(hours=i),
            content_hash=secrets.token_hex(32), images_json="[]", is_new=True, revision=1,
            created_at=now, updated_at=now).returning(posts.c.id)).scalar_one()
            for i in range(k)]
