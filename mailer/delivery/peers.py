"""The processes sending right now, so that rate limits hold for the deployment, not per process.

``rate`` (per relay) and ``domain_rates`` (per destination, qq.com above all) are what the relay
and the provider may see from the whole newsletter. Every sending process (a worker, the
daemon, ``newsletter send``) keeps a row in ``senders`` fresh while it sends and paces at its
part of each limit: the configured rate divided by the number of live rows. A process that dies
stops renewing; its row expires after ``ttl`` and the others take its part back.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, delete, func, insert, select, update

from mailer.clock import Clock
from mailer.schema import senders

__all__ = ["SenderRegistry"]


class SenderRegistry:
    """Rows in ``senders``: one per live sending process, by the engine's ``owner``."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    def beat(self, owner: str, ttl: timedelta) -> int:
        """Renew ``owner``'s row for ``ttl``, drop expired rows, return how many are live."""
        now = self.clock()
        values = {"heartbeat_at": now, "expires_at": now + ttl}
        with self.engine.begin() as conn:
            conn.execute(delete(senders).where(senders.c.expires_at < now))
            if conn.execute(update(senders).where(senders.c.owner == owner)
                            .values(**values)).rowcount == 0:
                # Only the owner writes its row, and owners are unique (host, pid, random).
                conn.execute(insert(senders).values(owner=owner, **values))
            live = conn.execute(select(func.count()).select_from(senders)
                                .where(senders.c.expires_at >= now)).scalar_one()
        return max(1, int(live))

    def leave(self, owner: str) -> None:
        """A sender that finished gives its part back at once."""
        with self.engine.begin() as conn:
            conn.execute(delete(senders).where(senders.c.owner == owner))
