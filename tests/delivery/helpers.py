"""Helpers for the delivery tests: a database with an edition, recipients, simple messages."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, update

from mailer.config import DeliverySettings, RelaySettings
from mailer.db import open_engine
from mailer.delivery.outbox import OutboxRow
from mailer.schema import editions
from tests.support.clock import ManualClock

__all__ = [
    "FakeClock",
    "Rcpt",
    "directory",
    "make_edition",
    "message",
    "new_engine",
    "recipients",
    "relay",
    "set_edition_state",
    "settings",
]

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


FakeClock = ManualClock  # starts at T0

@dataclass(frozen=True)
class Rcpt:
    id: int
    address: str
    language: str = "en"

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()


def new_engine(url: str) -> Engine:
    return open_engine(url)


def make_edition(engine: Engine, state: str = "sending") -> int:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        result = conn.execute(insert(editions).values(
            kind="digest", state=state, created_at=now, updated_at=now))
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])


def set_edition_state(engine: Engine, edition_id: int, state: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(editions).where(editions.c.id == edition_id).values(state=state))


def recipients(n: int, domains: Sequence[str] = ("example.org",), start: int = 1) -> list[Rcpt]:
    return [Rcpt(i, f"user{i}@{domains[i % len(domains)]}") for i in range(start, start + n)]


def directory(people: Iterable[Rcpt]) -> Callable[[Sequence[int]], Mapping[int, Rcpt]]:
    """The ``recipients`` lookup: a dict that tests may shrink to model an unsubscribe."""
    book = {p.id: p for p in people}

    def lookup(ids: Sequence[int]) -> Mapping[int, Rcpt]:
        return {i: book[i] for i in ids if i in book}

    lookup.book = book  # type: ignore[attr-defined]
    return lookup


def message(row: OutboxRow, rcpt: Rcpt) -> bytes:
    """A small CRLF message with a leading-dot line, so dot-stuffing is exercised."""
    return (
        f"From: digest@example.org\r\nTo: {rcpt.address}\r\nSubject: edition {row.edition_id}\r\n"
        f"Message-ID: <e{row.edition_id}.s{row.subscriber_id}@example.org>\r\n\r\n"
        f"hello {row.subscriber_id}\r\n.leading dot\r\n"
    ).encode()


def settings(**kw: object) -> DeliverySettings:
    base: dict[str, object] = {"max_attempts": 3, "backoff_base": timedelta(seconds=1)}
    base.update(kw)
    return DeliverySettings(**base)  # type: ignore[arg-type]


def relay(port: int, **kw: object) -> RelaySettings:
    base: dict[str, object] = {"host": "127.0.0.1", "port": port, "security": "none",
                               "connections": 2, "rate": 0.0, "timeout": 5.0}
    base.update(kw)
    return RelaySettings(**base)  # type: ignore[arg-type]
