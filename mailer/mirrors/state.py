"""What the checks, OONI and the sends have recorded about each mirror (``mirror_state``).

Its own module so that the registry (which hands mirrors out) and the health check (which
writes this state) both read it without importing each other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from mailer.clock import as_utc
from mailer.schema import mirror_state

__all__ = ["MirrorHealth", "load_health"]


@dataclass(frozen=True)
class MirrorHealth:
    """One ``mirror_state`` row: what the checks, OONI and the sends have recorded."""

    url: str
    healthy: bool = True
    consecutive_failures: int = 0
    last_check_at: datetime | None = None
    last_ok_at: datetime | None = None
    last_error: str | None = None
    blocked: Mapping[str, str] | None = None  # country -> ISO time of the measurement
    first_sent_at: datetime | None = None
    last_sent_at: datetime | None = None

    def blocked_in(self, countries: Sequence[str]) -> bool:
        return bool(self.blocked) and any(cc in (self.blocked or {}) for cc in countries)


def load_health(engine: Engine) -> dict[str, MirrorHealth]:
    """Every ``mirror_state`` row by URL. Mirrors never checked have no row and count healthy."""
    out: dict[str, MirrorHealth] = {}
    with engine.connect() as conn:
        for row in conn.execute(select(mirror_state)):
            try:
                blocked = json.loads(row.blocked_json or "{}")
            except ValueError:
                blocked = {}
            out[row.url] = MirrorHealth(
                url=row.url,
                healthy=bool(row.healthy),
                consecutive_failures=row.consecutive_failures or 0,
                last_check_at=as_utc(row.last_check_at),
                last_ok_at=as_utc(row.last_ok_at),
                last_error=row.last_error,
                blocked=blocked if isinstance(blocked, dict) else {},
                first_sent_at=as_utc(row.first_sent_at),
                last_sent_at=as_utc(row.last_sent_at),
            )
    return out
