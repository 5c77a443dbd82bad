"""Confirmation mails still to send: a small durable queue beside the subscriber list.

A reader who uses the subscribe form must get the confirmation mail, or they are lost: relays
defer mail (greylisting, a provider's rate limit) and ``serve`` restarts on every deployment.
So the form only records the request (``request``); a worker in ``serve`` sends it
(``claim``), and either removes it (``done``) or tries again later (``retry``) on the schedule
in ``BACKOFF``. A row names the subscriber by id only: the address is decrypted when the mail
is built. Several ``serve`` processes may share the queue: a claim is a lease.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, and_, case, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from subscribers.schema import confirmations as q

__all__ = ["BACKOFF", "ConfirmationQueue"]

# Pauses before each further attempt; after the last one the request is dropped (the reader
# can use the form again). Greylisting is usually over within minutes, a provider's rate limit
# within the hour.
BACKOFF = (timedelta(seconds=5), timedelta(seconds=30), timedelta(minutes=2),
           timedelta(minutes=10), timedelta(hours=1), timedelta(hours=6))
LEASE = timedelta(minutes=5)


class ConfirmationQueue:
    """The ``confirmations`` table behind a small API; the engine and clock are passed in."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self.engine = engine
        self.clock = clock

    def request(self, subscriber_id: int) -> None:
        """Queue a confirmation now; asking again restarts the schedule."""
        now = self.clock()
        values = {"attempts": 0, "next_attempt_at": now, "lease_until": None,
                  "requested_at": now}
        with self.engine.begin() as conn:
            if conn.execute(update(q).where(q.c.subscriber_id == subscriber_id)
                            .values(**values)).rowcount:
                return
            try:
                with conn.begin_nested():
                    conn.execute(q.insert().values(subscriber_id=subscriber_id, **values))
            except IntegrityError:  # another process queued it a moment ago: that one counts
                pass

    def claim(self, limit: int = 20, lease: timedelta = LEASE) -> list[tuple[int, int]]:
        """Lease up to ``limit`` due requests: (subscriber id, attempts so far)."""
        now = self.clock()
        free = or_(q.c.lease_until.is_(None), q.c.lease_until < now)
        due = and_(q.c.next_attempt_at <= now, free)
        claimed = []
        with self.engine.begin() as conn:
            rows = conn.execute(select(q.c.subscriber_id, q.c.attempts).where(due)
                                .order_by(q.c.next_attempt_at).limit(limit)).all()
            for sid, attempts in rows:
                # Guarded on the lease: of two processes that saw the row, one takes it.
                if conn.execute(update(q).where(and_(q.c.subscriber_id == sid, free))
                                .values(lease_until=now + lease)).rowcount:
                    claimed.append((int(sid), int(attempts)))
        return claimed

    def done(self, subscriber_id: int) -> None:
        """Sent, refused for good, or no longer wanted: forget the request."""
        with self.engine.begin() as conn:
            conn.execute(delete(q).where(q.c.subscriber_id == subscriber_id))

    def retry(self, subscriber_id: int, attempts: int) -> bool:
        """Try again after the next pause of ``BACKOFF``; False (and dropped) after the last."""
        if attempts >= len(BACKOFF):
            self.done(subscriber_id)
            return False
        with self.engine.begin() as conn:
            conn.execute(update(q).where(q.c.subscriber_id == subscriber_id).values(
                attempts=attempts + 1, next_attempt_at=self.clock() + BACKOFF[attempts],
                lease_until=None))
        return True

    def next_due(self) -> datetime | None:
        """When the earliest request can next be claimed: a leased one when its lease ends."""
        free_at = case((q.c.lease_until > q.c.next_attempt_at, q.c.lease_until),
                       else_=q.c.next_attempt_at)
        with self.engine.connect() as conn:
            value = conn.execute(select(func.min(free_at))).scalar_one_or_none()
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # SQLite hands timestamps back naive
        return value

    def pending(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(q)).scalar_one())
