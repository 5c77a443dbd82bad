"""Enqueue and deliver an edition: the one way an edition goes out.

``send``, ``run --once``, the daemon's jobs and ``newsletter worker`` all come here. The scheduler
(or the CLI) calls :func:`start_edition` to enqueue, :func:`deliver` to send what is claimable,
and :func:`finish_if_done` to mark it sent when every row has its outcome; :func:`send_edition`
does all three.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.exc import IntegrityError

from mailer.app import App
from mailer.delivery.classify import SendResult
from mailer.delivery.engine import DeliveryEngine, DeliveryReport
from mailer.delivery.outbox import OutboxRow
from mailer.editions.notify import Notifier
from mailer.editions.testsend import TEST_SUBSCRIBER_ID, mark_as_test
from mailer.errors import EditionError
from mailer.inbound.addresses import tagged, verp_base
from mailer.mirrors.exposure import record_exposure
from mailer.models import EditionState
from mailer.pipeline.prepare import (
    PreparedEdition,
    Reader,
    personalise,
    personaliser,
    prepare_edition,
)
from subscribers.lifecycle import Event, Recipient

__all__ = [
    "Held",
    "SendSummary",
    "deliver",
    "delivery_engine",
    "finish_if_done",
    "send_edition",
    "send_new_posts",
    "send_test",
    "start_edition",
    "welcome",
]

log = logging.getLogger("newsletter.pipeline")

DEFAULT_ENGINE_LEASE = timedelta(minutes=5)  # one sender per edition: renewals are rare


def start_edition(app: App, edition_id: int) -> int:
    """Move to ``sending`` and enqueue every active subscriber once (idempotent after a crash).
    Returns how many rows were new."""
    info = app.editions.info(edition_id)
    if info.state is not EditionState.SENDING:
        app.editions.set_state(edition_id, EditionState.SENDING)
    added = app.outbox.enqueue(edition_id, app.subscribers.stream_active())
    app.editions.set_total(edition_id, app.outbox.total(edition_id))
    return added


def envelope_for(app: App) -> Callable[[OutboxRow], str] | None:
    """VERP: with ``[delivery] envelope_from``, each message's envelope sender is
    ``base+TOKEN@domain`` (``mailer.inbound.addresses``), so its bounce names the row."""
    base = verp_base(app.config)
    if base is None:
        return None
    tokens = app.tokens

    def sender(row: OutboxRow) -> str:
        return tagged(base, tokens.bounce_token(row.edition_id, row.subscriber_id))

    return sender


def delivery_engine(app: App, prepared: PreparedEdition, *, progress: bool = False,
                    batch_size: int | None = None, lease: timedelta = DEFAULT_ENGINE_LEASE,
                    owner: str | None = None) -> DeliveryEngine[Recipient]:
    """The delivery engine for ``prepared`` over the app's outbox, transport and relay peers."""
    return DeliveryEngine(
        app.outbox,
        app.transport,
        recipients=app.subscribers.get_recipients,
        message_for=personaliser(app, prepared),
        envelope_from=app.config.envelope_sender,
        envelope_for=envelope_for(app),
        settings=app.config.delivery,
        clock=app.clock,
        on_bounce=lambda sid: app.subscribers.apply(sid, Event.BOUNCE),
        progress=progress,
        peers=app.senders,
        batch_size=batch_size,
        lease=lease,
        owner=owner,
    )


async def deliver(app: App, engine: DeliveryEngine[Recipient], prepared: PreparedEdition,
                  edition_id: int) -> DeliveryReport:
    """Send what is claimable now, then add this run's mirror exposure to the edition's tally."""
    report = await engine.run(edition_id)
    counts = dict(prepared.exposure)
    prepared.exposure.clear()
    for attempt in range(3):
        try:
            await asyncio.to_thread(record_exposure, app.engine, edition_id, counts, app.clock())
            break
        except IntegrityError:  # two senders created the same tally row at once; add again
            if attempt == 2:
                raise
    return report


def finish_if_done(app: App, edition_id: int) -> bool:
    """Mark the edition sent when every row has its outcome. True only for the caller whose
    compare-and-set won, so the editors hear it once however many senders share it."""
    if app.outbox.unfinished(edition_id) != 0:
        return False
    if app.editions.info(edition_id).state is not EditionState.SENDING:
        return False
    try:
        app.editions.set_state(edition_id, EditionState.SENT)
    except EditionError:  # another sender marked it first, or an editor acted
        return False
    return True


@dataclass(frozen=True)
class SendSummary:
    edition_id: int
    enqueued: int
    report: DeliveryReport


async def send_edition(app: App, edition_id: int, *, progress: bool = False,
                       stop: asyncio.Event | None = None) -> SendSummary:
    """Enqueue every active subscriber once, then deliver until nothing is due.

    Safe to call again after a crash: enqueueing is idempotent and the outbox only hands out
    rows whose reply is not yet known. ``stop`` is the caller's (the CLI and the daemon set it
    on SIGTERM/SIGINT): when it is set, messages in flight finish and nothing more is claimed.
    """
    prepared = await asyncio.to_thread(prepare_edition, app, edition_id)
    enqueued = await asyncio.to_thread(start_edition, app, edition_id)
    engine = delivery_engine(app, prepared, progress=progress)
    watcher = asyncio.create_task(_stop_when_set(stop, engine)) if stop is not None else None
    try:
        report = await deliver(app, engine, prepared, edition_id)
    finally:
        if watcher is not None:
            watcher.cancel()
    finish_if_done(app, edition_id)
    return SendSummary(edition_id, enqueued, report)


async def _stop_when_set(stop: asyncio.Event, engine: DeliveryEngine[Recipient]) -> None:
    await stop.wait()
    engine.stop("signal")


@dataclass(frozen=True)
class Held:
    """An automatic edition that went to the editors instead of the readers, and why."""

    edition_id: int
    reason: str


async def send_new_posts(app: App, *, progress: bool = False,
                         stop: asyncio.Event | None = None) -> SendSummary | Held | None:
    """``newsletter send``: one edition of every stored post not yet sent, delivered now, or
    held for the editors (and they told) when it has more than ``[schedule] max_posts``."""
    post_ids = app.editions.unsent_post_ids()
    if not post_ids:
        return None
    edition_id = app.editions.create(post_ids, kind="per-post" if len(post_ids) == 1 else "digest")
    if edition_id is None:
        return None
    reason = app.editions.hold_if_over(edition_id, app.config.schedule.max_posts)
    if reason is not None:
        log.warning("edition %d held: %s", edition_id, reason)
        await Notifier.for_app(app).held(app.editions.info(edition_id))
        return Held(edition_id, reason)
    app.editions.approve(edition_id)
    return await send_edition(app, edition_id, progress=progress, stop=stop)


async def send_test(app: App, edition_id: int, address: str, language: str) -> SendResult:
    """``editions test-send``: the real rendered mail for ``language`` to ``address``, once.

    The same prepare and personalise path as the real send, so what the editor sees is what
    subscribers get, but it never touches the outbox (no totals, no exactly-once bookkeeping)
    and the address is neither logged nor stored: it is not a subscriber's, yet it is personal.
    """
    prepared = await asyncio.to_thread(prepare_edition, app, edition_id)
    unsubscribe = f"{app.config.newsletter.public_url}/u/test"
    data = personalise(app, prepared, Reader(TEST_SUBSCRIBER_ID, address, language, unsubscribe))
    transport = app.transport
    try:
        return await transport.send(app.config.envelope_sender, address, mark_as_test(data))
    finally:
        await transport.aclose()


async def welcome(app: App, subscriber_ids: Sequence[int]) -> int:
    """Readers who just confirmed get the latest edition now, not only the next one. Through
    the outbox like any send, so each gets it once: afterwards the row (edition, subscriber)
    exists, and a reader who had it already (a re-subscription) gets nothing. Only active
    readers are enqueued. Returns how many rows were new."""
    latest = app.editions.find([EditionState.SENT], limit=1)
    if not latest or not subscriber_ids:
        return 0
    edition_id = latest[0].id
    # Only the still-active ones (``get_recipients`` filters), decrypted for the outbox's domain.
    readers = await asyncio.to_thread(app.subscribers.get_recipients, list(subscriber_ids))
    active = list(readers.values())
    added = await asyncio.to_thread(app.outbox.enqueue, edition_id, active) if active else 0
    if not added:
        return 0
    prepared = await asyncio.to_thread(prepare_edition, app, edition_id)
    await deliver(app, delivery_engine(app, prepared), prepared, edition_id)
    log.info("welcome: edition %d to %d new reader(s)", edition_id, added)
    return added
