"""The registry of live senders, on SQLite and PostgreSQL: counting, expiry, leaving."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, func, select

from mailer.delivery.peers import SenderRegistry
from mailer.schema import senders
from tests.support.clock import ManualClock

TTL = timedelta(seconds=30)


def test_live_senders_are_counted_and_the_dead_expire(db: Engine) -> None:
    clock = ManualClock()
    peers = SenderRegistry(db, clock)
    assert peers.beat("a", TTL) == 1  # alone
    assert peers.beat("b", TTL) == 2
    assert peers.beat("a", TTL) == 2  # a renewal is not a new sender
    clock.advance(timedelta(seconds=20))
    assert peers.beat("a", TTL) == 2  # b's row is 20 s old: still live
    clock.advance(timedelta(seconds=20))
    assert peers.beat("a", TTL) == 1  # b stopped beating 40 s ago: gone, and its row removed
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(senders)).scalar_one() == 1


def test_a_sender_that_leaves_gives_its_part_back_at_once(db: Engine) -> None:
    peers = SenderRegistry(db, ManualClock())
    for owner in ("a", "b", "c"):
        peers.beat(owner, TTL)
    peers.leave("b")
    peers.leave("b")  # twice is harmless
    assert peers.beat("a", TTL) == 2
