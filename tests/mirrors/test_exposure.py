"""Exposure records: counts per (edition, mirror) and first/last sent per mirror."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, insert, select

from mailer.db import open_engine
from mailer.mirrors.exposure import exposure_for, record_exposure
from mailer.mirrors.registry import load_health
from mailer.schema import editions, mirror_exposure, mirror_state
from tests.mirrors.helpers import NOW

A, B = "https://a.example.net", "https://b.example.net"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = open_engine(db_url)
    with eng.begin() as conn:
        for eid in (1, 2):
            conn.execute(insert(editions).values(id=eid, kind="digest", state="sending",
                                                 created_at=NOW, updated_at=NOW))
    yield eng
    eng.dispose()


def test_counts_add_up_and_dates_are_kept(engine: Engine) -> None:
    with engine.begin() as conn:  # a mirror the health check already knows
        conn.execute(insert(mirror_state).values(url=B, healthy=True, consecutive_failures=0,
                                                 blocked_json="{}"))
    record_exposure(engine, 1, {A: 10, B: 5, "https://unused.example": 0}, NOW)
    record_exposure(engine, 1, {A: 2}, NOW + timedelta(minutes=5))  # a resumed send
    later = NOW + timedelta(days=3)
    record_exposure(engine, 2, {A: 7}, later)
    with engine.connect() as conn:
        rows = {(r.edition_id, r.mirror_url): r.recipients
                for r in conn.execute(select(mirror_exposure))}
    assert rows == {(1, A): 12, (1, B): 5, (2, A): 7}
    health = load_health(engine)
    assert health[A].first_sent_at == NOW
    assert health[A].last_sent_at == later
    assert health[B].first_sent_at == NOW
    assert health[B].healthy
    assert "https://unused.example" not in health
    totals = exposure_for(engine)
    assert totals[A].editions == 2
    assert totals[A].recipients == 19
    assert totals[A].first_sent_at == NOW
    assert totals[B].recipients == 5


def test_senders_finishing_the_same_edition_at_once_add_up(engine: Engine) -> None:
    """Workers finish an edition together: every count lands, none fails on a duplicate key."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda _: record_exposure(engine, 1, {A: 3, B: 1}, NOW), range(12)))
    with engine.connect() as conn:
        rows = {r.mirror_url: r.recipients for r in conn.execute(select(mirror_exposure))}
    assert rows == {A: 36, B: 12}
