"""Fixtures for the subscriber tests: a real key file, a real database, a fixed clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mailer.db import open_engine
from subscribers.codec import Codec
from subscribers.keys import KeyRing
from subscribers.settings import ListSettings
from subscribers.store import SubscriberStore
from subscribers.tokens import TokenSigner
from tests.support.clock import ManualClock

LANGS = ListSettings(languages=("zh-Hans", "zh-Hant", "en"), bilingual=("zh-Hans+en",))


Clock = ManualClock

@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return KeyRing.create(tmp_path / "keys" / "keys.json")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = open_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: Engine, ring: KeyRing, clock: Clock) -> SubscriberStore:
    return SubscriberStore(engine, Codec(ring), clock, LANGS)


@pytest.fixture
def signer(ring: KeyRing, clock: Clock) -> TokenSigner:
    return TokenSigner(ring.token_key, clock)
