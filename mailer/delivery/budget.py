"""Hourly and daily caps, and blocked providers, held in the database for the whole deployment.

The per-second limits are shared by dividing them among the live senders (``peers``). A cap
cannot be divided that way (a sender that finishes early would leave its part unused), so the
count itself is in the database: ``domain_sends`` counts the messages handed to the relay per
capped domain and UTC hour and day, and a sender takes a small grant from it before sending
(:meth:`DomainBudget.take`, one short transaction per grant, rows locked). A grant not used is
given back when the run ends; one lost in a crash only makes the cap a little stricter.

``provider_blocks`` holds the provider families that answered "blocklisted" (163's
``DT:RBL``): every sender reads it, so the whole deployment stops sending to them until then.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from mailer.clock import as_utc
from mailer.delivery.pace import allowance, day_start, hour_start, reopens_at
from mailer.schema import domain_sends, provider_blocks

__all__ = ["Block", "DomainBudget", "Grant"]


@dataclass(frozen=True)
class Grant:
    """``granted`` messages may go now; if fewer than asked, none more until ``reopens``."""

    granted: int
    hour: datetime
    reopens: datetime | None = None
    cap: str = ""  # "hourly" or "daily": the one reached


@dataclass(frozen=True)
class Block:
    family: str
    since: datetime
    until: datetime
    reason: str


class DomainBudget:
    """The ``domain_sends`` counters and the ``provider_blocks`` rows."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert: Any = (
            postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        )

    # ------------------------------------------------------------------ caps

    def take(self, domain: str, want: int, per_hour: int | None, per_day: int | None,
             now: datetime) -> Grant:
        """Count up to ``want`` messages to ``domain`` against its caps in one transaction."""
        hour, day = hour_start(now), day_start(now)
        c = domain_sends.c
        spans = [(s, t) for s, t, cap in (("d", day, per_day), ("h", hour, per_hour))
                 if cap is not None]
        with self.engine.begin() as conn:
            # The INSERT takes SQLite's write lock for the whole transaction; on PostgreSQL
            # FOR UPDATE locks the two counters (always day, then hour: no deadlock cycle).
            for span, start in spans:
                conn.execute(self._insert(domain_sends).values(
                    domain=domain, span=span, starts_at=start, sent=0).on_conflict_do_nothing())
            used = {"h": 0, "d": 0}
            for span, start in spans:
                used[span] = int(conn.execute(
                    select(c.sent).where(c.domain == domain, c.span == span, c.starts_at == start)
                    .with_for_update()).scalar_one())
            granted = allowance(want, per_hour, per_day, used["h"], used["d"])
            if granted:
                for span, start in spans:
                    conn.execute(update(domain_sends)
                                 .where(c.domain == domain, c.span == span, c.starts_at == start)
                                 .values(sent=c.sent + granted))
            # Yesterday's counters are of no use any more.
            conn.execute(delete(domain_sends).where(c.domain == domain,
                                                    c.starts_at < day - timedelta(days=1)))
        if granted >= want:
            return Grant(granted, hour)
        h, d = used["h"] + granted, used["d"] + granted
        daily = per_day is not None and d >= per_day
        return Grant(granted, hour, reopens_at(now, per_hour, per_day, h, d),
                     "daily" if daily else "hourly")

    def give_back(self, domain: str, n: int, hour: datetime) -> None:
        """Return ``n`` messages of a grant taken in ``hour`` that were never sent."""
        if n <= 0:
            return
        c = domain_sends.c
        with self.engine.begin() as conn:
            for span, start in (("d", day_start(hour)), ("h", hour)):
                conn.execute(update(domain_sends)
                             .where(c.domain == domain, c.span == span, c.starts_at == start,
                                    c.sent >= n)
                             .values(sent=c.sent - n))

    def used(self, now: datetime) -> Mapping[str, tuple[int, int]]:
        """Messages counted this hour and this day, per capped domain."""
        c = domain_sends.c
        out: dict[str, tuple[int, int]] = {}
        with self.engine.connect() as conn:
            for domain, span, sent in conn.execute(
                select(c.domain, c.span, c.sent).where(
                    ((c.span == "h") & (c.starts_at == hour_start(now)))
                    | ((c.span == "d") & (c.starts_at == day_start(now))))):
                h, d = out.get(domain, (0, 0))
                out[domain] = (int(sent), d) if span == "h" else (h, int(sent))
        return out

    # ------------------------------------------------------------------ blocks

    def block(self, family: str, until: datetime, reason: str, now: datetime) -> bool:
        """Stop sending to ``family`` until ``until``. True if it was not blocked already (so
        one process tells the editors)."""
        b = provider_blocks.c
        with self.engine.begin() as conn:
            if conn.execute(self._insert(provider_blocks).values(
                    family=family, since=now, until=until, reason=reason[:500])
                    .on_conflict_do_nothing().returning(b.family)).first() is not None:
                return True
            current = as_utc(conn.execute(select(b.until).where(b.family == family)
                                          .with_for_update()).scalar())
            if current is not None and current > now:
                if until > current:
                    conn.execute(update(provider_blocks).where(b.family == family)
                                 .values(until=until))
                return False
            conn.execute(update(provider_blocks).where(b.family == family)
                         .values(since=now, until=until, reason=reason[:500]))
        return True

    def blocks(self, now: datetime) -> list[Block]:
        """The families blocked at ``now``."""
        b = provider_blocks.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(b.family, b.since, b.until, b.reason)
                                .where(b.until > now).order_by(b.family)).all()
        return [Block(str(r.family), as_utc(r.since) or now, as_utc(r.until) or now,
                      str(r.reason)) for r in rows]

    def lift(self, family: str) -> bool:
        """End a block now (the operator had the IP delisted). True if there was one."""
        with self.engine.begin() as conn:
            n = conn.execute(delete(provider_blocks)
                             .where(provider_blocks.c.family == family)).rowcount
        return bool(n)
