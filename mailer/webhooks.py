"""Outgoing webhooks: a signed JSON POST per event to each ``[[webhooks]]`` receiver.

Like the confirmation queue (``subscribers/confirmations.py``), an event is first a row in a
durable table (``webhook_deliveries``), so a receiver that is down, or a restart, loses
nothing: ``WebhookSender`` claims due rows under a lease, POSTs them, deletes them on a 2xx
answer and otherwise tries again on the schedule in ``BACKOFF``. An event not delivered within
``GIVE_UP_AFTER`` (a day) is given up: kept with ``gave_up_at`` for the report, logged as an
error and counted in the metrics.

The signature (``X-Newsletter-Signature: t=<unix time>,v1=<hex>``) is HMAC-SHA256 with the
receiver's secret over ``<t>.<body>``: the receiver recomputes it (:func:`verify`) and rejects
a stale ``t``, so a captured request cannot be replayed later. Each body carries an ``id``: a
receiver that got an event but whose answer was lost sees it again with the same id.

Payloads hold counts, edition ids, feed names and mirror URLs, never a subscriber's address:
the callers pass only such values, and :func:`event_body` refuses anything but plain scalars
and flat mappings of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine, and_, delete, func, or_, select, update

from mailer.config import WEBHOOK_EVENTS, WebhookSettings
from mailer.schema import webhook_deliveries as w

__all__ = [
    "BACKOFF",
    "GIVE_UP_AFTER",
    "SIGNATURE_HEADER",
    "WebhookQueue",
    "WebhookSender",
    "event_body",
    "sign",
    "signature_header",
    "verify",
]

log = logging.getLogger("newsletter.webhooks")

SIGNATURE_HEADER = "X-Newsletter-Signature"
GIVE_UP_AFTER = timedelta(days=1)
# Pauses before each further attempt; the last one repeats until the day is over.
BACKOFF = (timedelta(seconds=5), timedelta(seconds=30), timedelta(minutes=2),
           timedelta(minutes=10), timedelta(minutes=30), timedelta(hours=1))
LEASE = timedelta(minutes=2)
TIMEOUT = httpx.Timeout(10.0, connect=5.0)  # a slow receiver must not hold the daemon up
_IDLE = 30.0


# ---------------------------------------------------------------------------- pure helpers


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``<timestamp>.<body>`` under ``secret``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, now: float,
           tolerance: float = 300.0) -> bool:
    """What a receiver does: the header's ``t`` is recent and its ``v1`` matches the body."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(fields.get("v1", ""), sign(secret, timestamp, body))


def _check(value: Any, where: str) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _check(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_check(v, where) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"webhook field {where} is a {type(value).__name__}")


def event_body(event_id: str, event: str, at: datetime, data: Mapping[str, Any]) -> bytes:
    """The JSON body: ``{"id", "event", "time", "data"}``; keys sorted, UTF-8."""
    if event not in WEBHOOK_EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    doc = {"id": event_id, "event": event, "time": at.astimezone(UTC).isoformat(),
           "data": _check(data, "data")}
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def retry_at(created: datetime, attempts: int, now: datetime) -> datetime | None:
    """When to try again after ``attempts`` failed ones; None when the day is over."""
    pause = BACKOFF[min(attempts - 1, len(BACKOFF) - 1)] if attempts > 0 else BACKOFF[0]
    nxt = now + pause
    if nxt - created > GIVE_UP_AFTER:
        return None
    return nxt


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------- the queue


@dataclass(frozen=True)
class Delivery:
    id: int
    url: str
    event: str
    body: bytes
    attempts: int
    created_at: datetime


class WebhookQueue:
    """The ``webhook_deliveries`` table behind a small API; engine, clock and receivers are
    passed in. Without receivers, ``emit`` writes nothing."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime],
                 hooks: Sequence[WebhookSettings]) -> None:
        self.engine = engine
        self.clock = clock
        self.hooks = tuple(hooks)
        self.on_emit: Callable[[], object] | None = None  # wakes a running sender

    def emit(self, event: str, data: Mapping[str, Any]) -> int:
        """Queue ``event`` for every receiver that asked for it; returns how many."""
        wanted = [h for h in self.hooks if event in h.events]
        if not wanted:
            return 0
        now = self.clock()
        event_id = secrets.token_hex(12)
        body = event_body(event_id, event, now, data).decode("utf-8")
        with self.engine.begin() as conn:
            for hook in wanted:
                conn.execute(w.insert().values(
                    url=hook.url, event=event, event_id=event_id, body=body, attempts=0,
                    created_at=now, next_attempt_at=now))
        log.debug("webhook %s queued for %d receiver(s)", event, len(wanted))
        if self.on_emit is not None:
            self.on_emit()
        return len(wanted)

    def claim(self, limit: int = 50, lease: timedelta = LEASE) -> list[Delivery]:
        now = self.clock()
        free = or_(w.c.lease_until.is_(None), w.c.lease_until < now)
        due = and_(w.c.gave_up_at.is_(None), w.c.next_attempt_at <= now, free)
        out = []
        with self.engine.begin() as conn:
            rows = conn.execute(select(w.c.id, w.c.url, w.c.event, w.c.body, w.c.attempts,
                                       w.c.created_at).where(due)
                                .order_by(w.c.next_attempt_at, w.c.id).limit(limit)).all()
            for rid, url, event, body, attempts, created in rows:
                # Guarded on the lease: of two processes that saw the row, one takes it.
                if conn.execute(update(w).where(and_(w.c.id == rid, free))
                                .values(lease_until=now + lease)).rowcount:
                    out.append(Delivery(int(rid), url, event, body.encode("utf-8"),
                                        int(attempts), _aware(created)))
        return out

    def delivered(self, delivery_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(w).where(w.c.id == delivery_id))

    def failed(self, d: Delivery, error: str, *, give_up: bool = False) -> bool:
        """Try again later (True), or give up after a day (False, kept for the report)."""
        now = self.clock()
        attempts = d.attempts + 1
        nxt = None if give_up else retry_at(d.created_at, attempts, now)
        values: dict[str, Any] = {"attempts": attempts, "last_error": error[:500],
                                  "lease_until": None}
        if nxt is None:
            values["gave_up_at"] = now
        else:
            values["next_attempt_at"] = nxt
        with self.engine.begin() as conn:
            conn.execute(update(w).where(w.c.id == d.id).values(**values))
        return nxt is not None

    def next_due(self) -> datetime | None:
        with self.engine.connect() as conn:
            value = conn.execute(select(func.min(w.c.next_attempt_at))
                                 .where(w.c.gave_up_at.is_(None))).scalar_one_or_none()
        return _aware(value) if value is not None else None

    def counts(self) -> dict[str, int]:
        """Pending and given-up events (for ``newsletter webhooks`` and the metrics)."""
        out = {"pending": 0, "given_up": 0}
        with self.engine.connect() as conn:
            for gave_up, n in conn.execute(select(w.c.gave_up_at.is_not(None), func.count())
                                           .group_by(w.c.gave_up_at.is_not(None))):
                out["given_up" if gave_up else "pending"] += int(n)
        return out

    def given_up(self) -> list[tuple[str, str, datetime, int, str | None]]:
        """(receiver host, event, given up at, attempts, last error) for the report."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(w.c.url, w.c.event, w.c.gave_up_at, w.c.attempts,
                                       w.c.last_error).where(w.c.gave_up_at.is_not(None))
                                .order_by(w.c.gave_up_at)).all()
        return [(_host(u), e, _aware(g), int(a), err) for u, e, g, a, err in rows]


def _host(url: str) -> str:
    """A receiver named by scheme and host only: its path may carry a token of its own."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


# ---------------------------------------------------------------------------- the sender


@dataclass
class WebhookSender:
    """POSTs what the queue holds: ``deliver_due`` once, or ``run`` until cancelled."""

    queue: WebhookQueue
    client: httpx.AsyncClient
    clock: Callable[[], datetime]
    on_result: Callable[[str, str], object] | None = None  # (event, result) for the metrics
    idle: float = _IDLE

    @staticmethod
    def client_for() -> httpx.AsyncClient:
        """Receivers are the operator's own: no proxy from the environment, no redirects."""
        return httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False, trust_env=False,
                                 headers={"User-Agent": "newsletter-webhooks/1"})

    def _secret(self, url: str) -> str | None:
        return next((h.secret for h in self.queue.hooks if h.url == url), None)

    async def send_one(self, d: Delivery) -> str:
        secret = self._secret(d.url)
        if secret is None:  # the receiver was removed from the config meanwhile
            error = "no longer configured"
        else:
            stamp = int(self.clock().timestamp())
            headers = {"Content-Type": "application/json", SIGNATURE_HEADER:
                       signature_header(secret, stamp, d.body), "X-Newsletter-Event": d.event}
            try:
                response = await self.client.post(d.url, content=d.body, headers=headers)
                if 200 <= response.status_code < 300:
                    await asyncio.to_thread(self.queue.delivered, d.id)
                    log.info("webhook %s delivered to %s", d.event, _host(d.url))
                    return self._result(d.event, "delivered")
                error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = type(exc).__name__
        if await asyncio.to_thread(self.queue.failed, d, error, give_up=secret is None):
            log.info("webhook %s to %s failed (%s); retrying (attempt %d)", d.event,
                     _host(d.url), error, d.attempts + 1)
            return self._result(d.event, "retry")
        log.error("webhook %s to %s given up after %d attempt(s) (%s)", d.event, _host(d.url),
                  d.attempts + 1, error)
        return self._result(d.event, "given_up")

    def _result(self, event: str, result: str) -> str:
        if self.on_result is not None:
            with contextlib.suppress(Exception):
                self.on_result(event, result)
        return result

    async def deliver_due(self) -> int:
        """One round: every due event once. Returns how many were delivered."""
        if not self.queue.hooks:
            return 0
        delivered = 0
        while batch := await asyncio.to_thread(self.queue.claim):
            for d in batch:
                delivered += await self.send_one(d) == "delivered"
        return delivered

    async def run(self) -> None:
        """Until cancelled: deliver what is due, sleep until the next is due or a new event."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        self.queue.on_emit = lambda: loop.call_soon_threadsafe(wake.set)
        try:
            while True:
                wake.clear()
                try:
                    await self.deliver_due()
                    due = await asyncio.to_thread(self.queue.next_due)
                except Exception as exc:  # the database away for a moment: try again soon
                    log.warning("webhook queue: %s", type(exc).__name__)
                    due = None
                wait = self.idle if due is None else max(
                    0.2, min(self.idle, (due - self.clock()).total_seconds()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait)
        finally:
            self.queue.on_emit = None
