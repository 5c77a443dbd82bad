"""What a scheduler tick costs once a list has a few years of history.

Run: ``.venv/bin/python -m bench.editions [--postgres]``. A database with 40,000 posts, 8,000
sent editions of 5 posts each, 300 new posts and 20 editions scheduled ahead. Each figure is
compared with a reference measured in the same run, on the same database, and reported as a
ratio:

- ``unsent_post_ids`` (new posts in no edition except cancelled ones: an anti-join) against
  the bare scan ``SELECT id FROM posts WHERE is_new`` with no join at all;
- one tick's reads, ``due(now)`` + ``upcoming(now)``, against one bare ``SELECT id FROM
  editions WHERE state IN ('scheduled', 'approved')``;
- ``decide`` (the pure send policy), per edition, against constructing the ``EditionInfo``.

Best of several rounds per side. The machine is shared with the other engineers' test runs,
so absolute times move; the ratios are steadier.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, insert, select, text

from mailer.db import open_engine
from mailer.editions.store import EditionInfo, EditionStore, decide
from mailer.schema import edition_posts, editions, feeds, posts

__all__ = ["main"]

POSTS = 40_000
SENT_EDITIONS = 8_000
PER_EDITION = 5
NEW_POSTS = 300
AHEAD = 20
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def best(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def fill(engine: Engine) -> None:
    """History: sent editions over old posts, new posts waiting, editions scheduled ahead."""
    total = POSTS + NEW_POSTS
    with engine.begin() as conn:
        feed_id = conn.execute(insert(feeds).values(url="https://example.blogspot.com/f",
                                                    status="ok").returning(feeds.c.id)).scalar()
        conn.execute(insert(posts), [
            {"id": i + 1, "feed_id": feed_id, "guid": f"g{i}", "link": None, "title": f"t{i}",
             "content_html": "<p>x</p>", "language": "en", "content_hash": f"{i:064d}",
             "images_json": "[]", "is_new": True, "revision": 1,
             "published": NOW - timedelta(minutes=total - i),
             "created_at": NOW, "updated_at": NOW}
            for i in range(total)
        ])
        conn.execute(insert(editions), [
            {"id": e + 1, "kind": "digest", "state": "sent", "notes_json": "{}",
             "scheduled_at": NOW - timedelta(days=e), "created_at": NOW, "updated_at": NOW}
            for e in range(SENT_EDITIONS)
        ] + [
            {"id": SENT_EDITIONS + a + 1, "kind": "per-post", "state": "scheduled",
             "notes_json": "{}", "scheduled_at": NOW + timedelta(hours=a + 1),
             "created_at": NOW, "updated_at": NOW}
            for a in range(AHEAD)
        ])
        conn.execute(insert(edition_posts), [
            {"edition_id": e + 1, "post_id": e * PER_EDITION + k + 1, "position": k,
             "excluded": False}
            for e in range(SENT_EDITIONS) for k in range(PER_EDITION)
        ])
        conn.execute(insert(edition_posts), [
            {"edition_id": SENT_EDITIONS + a + 1, "post_id": POSTS + a + 1, "position": 0,
             "excluded": False}
            for a in range(AHEAD)
        ])
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE"))
        # Postgres serials must move past the explicit ids.
        if engine.dialect.name == "postgresql":
            for table in ("posts", "editions"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))


def run(engine: Engine, label: str) -> list[tuple[str, float, float]]:
    fill(engine)
    store = EditionStore(engine, lambda: NOW)
    unsent = store.unsent_post_ids()
    assert len(unsent) == NEW_POSTS - AHEAD, len(unsent)
    assert store.due(NOW) == []
    assert len(store.upcoming(NOW)) == AHEAD

    def bare_unsent() -> object:
        with engine.connect() as conn:
            return conn.execute(select(posts.c.id).where(posts.c.is_new.is_(True))).all()

    def bare_tick() -> object:
        with engine.connect() as conn:
            return conn.execute(select(editions.c.id).where(
                editions.c.state.in_(["scheduled", "approved"]))).all()

    infos = store.upcoming(NOW)
    n = 20_000

    def make_infos() -> object:
        i = infos[0]
        return [EditionInfo(i.id, i.kind, i.state, i.scheduled_at, i.approved_at, i.created_at,
                            i.updated_at, None, None, None, None, i.post_ids, (), {})
                for _ in range(n)]

    def decide_all() -> object:
        grace = timedelta(hours=1)
        return [decide(i, NOW, grace=grace, require_approval=True) for i in infos * (n // AHEAD)]

    rows = [
        (f"{label}: unsent_post_ids ({POSTS + NEW_POSTS:,} posts)",
         best(store.unsent_post_ids, 7), best(bare_unsent, 7)),
        (f"{label}: tick reads, due + upcoming ({SENT_EDITIONS + AHEAD:,} editions)",
         best(lambda: (store.due(NOW), store.upcoming(NOW)), 7), best(bare_tick, 7)),
        (f"{label}: decide, per edition (µs)",
         best(decide_all, 3) / n * 1e6, best(make_infos, 3) / n * 1e6),
    ]
    assert {d.value for d in decide_all()} == {"wait"}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.editions")
    parser.add_argument("--postgres", action="store_true",
                        help="also run on PostgreSQL at 127.0.0.1:5432 (database 'test')")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        results += run(engine, "sqlite")
        engine.dispose()
    if args.postgres:
        schema = f"bench_{secrets.token_hex(4)}"
        admin = open_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", create=False)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            engine = open_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test"
                                 f"?options=-csearch_path%3D{schema}")
            results += run(engine, "postgres")
            engine.dispose()
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    print(f"{'figure':<62} {'ours':>10} {'reference':>10} {'ratio':>7}")
    for name, ours, ref in results:
        scale, unit = (1.0, "µs") if "µs" in name else (1000.0, "ms")
        print(f"{name:<62} {ours * scale:>7.2f}{unit} {ref * scale:>8.2f}{unit} "
              f"{ours / ref:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
