"""Fixtures for the feed tests: the fixture files, a store on a real database, a fixed clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailer.db import open_engine
from mailer.feeds.store import PostStore
from tests.support.clock import ManualClock

FIXTURES = Path(__file__).parent / "fixtures"

# The fixtures' posts are dated 18-20 November 2026.
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


class Clock(ManualClock):
    def __init__(self, now: datetime = NOW) -> None:
        super().__init__(now)

def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_url: str, clock: Clock) -> Iterator[PostStore]:
    engine = open_engine(db_url)
    yield PostStore(engine, clock)
    engine.dispose()


@pytest.fixture
def sqlite_store(sqlite_url: str, clock: Clock) -> Iterator[PostStore]:
    engine = open_engine(sqlite_url)
    yield PostStore(engine, clock)
    engine.dispose()
