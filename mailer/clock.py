"""The clock seam: code that asks "what time is it" takes a ``Clock`` so tests can control it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Clock", "system_clock", "utcnow"]

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """Aware UTC now. Every timestamp we store is aware UTC."""
    return datetime.now(UTC)


system_clock: Clock = utcnow


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; treat them as UTC, as they were written."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
