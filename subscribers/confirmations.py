"""Confirmation mails still to send: a small durable queue beside the subscriber list, and the
worker that sends them.

A reader who uses the subscribe form must get the confirmation mail, or they are lost: relays
defer mail (greylisting, a provider's rate limit) and ``serve`` restarts on every deployment.
So the form only records the request (``ConfirmationQueue.request``); ``ConfirmationSender``,
running in ``serve``, claims it, and either removes it (``done``) or tries again later
(``retry``) on the schedule in ``BACKOFF``. A row names the subscriber by id only: the address
is decrypted when the mail is built. Several ``serve`` processes may share the queue: a claim is
a lease. A row with a ``language`` asks an active reader to confirm a change of language.

What goes into the queue is decided by ``subscribers.signup``; the sender runs its intake first
on every round, so a form request becomes a mail within moments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import Connection, Engine, and_, case, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from subscribers.lifecycle import SubscriberState
from subscribers.mail import ConfirmTexts, confirmation_message
from subscribers.schema import confirmations as q
from subscribers.store import SubscriberStore
from subscribers.tokens import TokenSigner

__all__ = ["BACKOFF", "ConfirmationQueue", "ConfirmationSender", "Deliver", "Delivered"]

log = logging.getLogger("newsletter.web")

# ``deliver(recipient_address, message_bytes)``: one attempt through the caller's transport
# (SMTP pool or Maildir): "sent", "refused" (for good) or "deferred" (try again later).
Delivered = Literal["sent", "refused", "deferred"]
Deliver = Callable[[str, bytes], Awaitable[Delivered]]
_IDLE = 30.0  # seconds between looks at the queue when nothing is due

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

    def request(self, subscriber_id: int, language: str | None = None, *,
                conn: Connection | None = None) -> None:
        """Queue a confirmation now (of a subscription, or with ``language`` of a change of
        language); asking again restarts the schedule. In the caller's transaction if ``conn``."""
        if conn is None:
            with self.engine.begin() as own:
                self.request(subscriber_id, language, conn=own)
            return
        now = self.clock()
        values = {"attempts": 0, "next_attempt_at": now, "lease_until": None,
                  "requested_at": now, "language": language}
        if conn.execute(update(q).where(q.c.subscriber_id == subscriber_id)
                        .values(**values)).rowcount:
            return
        try:
            with conn.begin_nested():
                conn.execute(q.insert().values(subscriber_id=subscriber_id, **values))
        except IntegrityError:  # another process queued it a moment ago: that one counts
            pass

    def claim(self, limit: int = 20,
              lease: timedelta = LEASE) -> list[tuple[int, int, str | None]]:
        """Lease up to ``limit`` due requests: (subscriber id, attempts so far, the language a
        change asks for or None)."""
        now = self.clock()
        free = or_(q.c.lease_until.is_(None), q.c.lease_until < now)
        due = and_(q.c.next_attempt_at <= now, free)
        claimed = []
        with self.engine.begin() as conn:
            rows = conn.execute(select(q.c.subscriber_id, q.c.attempts, q.c.language)
                                .where(due).order_by(q.c.next_attempt_at).limit(limit)).all()
            for sid, attempts, language in rows:
                # Guarded on the lease: of two processes that saw the row, one takes it.
                if conn.execute(update(q).where(and_(q.c.subscriber_id == sid, free))
                                .values(lease_until=now + lease)).rowcount:
                    claimed.append((int(sid), int(attempts), language))
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


@dataclass
class ConfirmationSender:
    """Sends what the queue holds, now and as it falls due (``run``, for as long as ``serve``
    runs); ``wake`` after a new request sends it at once."""

    queue: ConfirmationQueue
    store: SubscriberStore
    tokens: TokenSigner
    deliver: Deliver
    from_addr: str
    public_url: str
    names: Mapping[str, str]
    clock: Callable[[], datetime]
    texts: ConfirmTexts  # the mails' text per kind and language, from the message catalog
    # Decides the requests that came in (``SignupDesk.intake``) before each round of sending.
    intake: Callable[[], int] | None = None
    # The Reply-To for a confirmation's token (``c-TOKEN`` / ``l-TOKEN``), so that replying
    # confirms like the link (``[inbound] address``); None: no Reply-To.
    reply_to: Callable[[str], str] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self._wake.set()

    async def send_one(self, sid: int, attempts: int, language: str | None = None) -> None:
        """One attempt at one queued confirmation; the queue learns the outcome."""
        queue = self.queue
        wanted = SubscriberState.ACTIVE if language else SubscriberState.PENDING
        try:
            record = await asyncio.to_thread(self.store.get, sid)
            address = await asyncio.to_thread(self.store.address_of, sid)
            if record is None or address is None or record.state is not wanted:
                await asyncio.to_thread(queue.done, sid)  # confirmed, left or gone meanwhile
                return
            if language:
                token = self.tokens.language_token(sid, language)
                url, tag = f"{self.public_url}/language/{token}", "l-" + token
            else:
                token = self.tokens.confirm_token(sid)
                url, tag = f"{self.public_url}/confirm/{token}", "c-" + token
            data = confirmation_message(from_addr=self.from_addr, to=address,
                                        language=record.language, url=url, names=self.names,
                                        now=self.clock(), texts=self.texts,
                                        choice=language or "",
                                        reply_to=self.reply_to(tag) if self.reply_to else "")
            outcome = await self.deliver(address, data)
        except Exception as exc:  # a failed confirmation must not take the server down
            log.warning("confirmation for subscriber %d failed: %s", sid, type(exc).__name__)
            outcome = "deferred"
        if outcome == "sent":
            await asyncio.to_thread(queue.done, sid)
            log.info("confirmation sent to subscriber %d", sid)
        elif outcome == "refused":
            await asyncio.to_thread(queue.done, sid)
            log.warning("confirmation for subscriber %d refused by the relay", sid)
        elif await asyncio.to_thread(queue.retry, sid, attempts):
            log.info("confirmation for subscriber %d deferred (attempt %d)", sid, attempts + 1)
        else:
            log.warning("confirmation for subscriber %d given up after %d attempts", sid,
                        attempts + 1)

    async def round(self) -> int:
        """Decide the waiting requests, then send what is due once; how many were tried.
        ``newsletter inbound`` calls this after a reader subscribed by mail, so a deployment
        without ``serve`` still answers."""
        if self.intake is not None:
            await asyncio.to_thread(self.intake)
        claimed = await asyncio.to_thread(self.queue.claim)
        for sid, attempts, language in claimed:
            await self.send_one(sid, attempts, language)
        return len(claimed)

    async def run(self) -> None:
        """Until cancelled: claim what is due, send it, sleep until the next is due."""
        while True:
            self._wake.clear()  # before looking: a request from now on wakes the wait below
            try:
                if self.intake is not None:
                    await asyncio.to_thread(self.intake)
                for sid, attempts, language in await asyncio.to_thread(self.queue.claim):
                    await self.send_one(sid, attempts, language)
                due = await asyncio.to_thread(self.queue.next_due)
            except Exception as exc:  # the database away for a moment: try again soon
                log.warning("confirmation queue: %s", type(exc).__name__)
                due = None
            wait = _IDLE if due is None else max(
                0.05, min(_IDLE, (due - self.clock()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
