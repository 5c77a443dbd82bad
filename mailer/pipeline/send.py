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
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from mailer.app import App
from mailer.delivery.classify import SendResult
from mailer.delivery.engine import DeliveryEngine, DeliveryReport
from mailer.delivery.outbox import OutboxRow
from mailer.delivery.progress import Progress
from mailer.editions.notify import Notifier
from mailer.editions.testsend import TEST_SUBSCRIBER_ID, check_test_addresses, mark_as_test
from mailer.errors import EditionError
from mailer.inbound.addresses import tagged, verp_base
from mailer.mirrors.exposure import record_exposure
from mailer.models import EditionState, OutboxState
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
    "SentCopy",
    "cancel_edition",
    "deliver",
    "delivery_engine",
    "finish_and_report",
    "finish_if_done",
    "send_edition",
    "send_new_posts",
    "send_test",
    "start_edition",
    "unblock_provider",
    "welcome",
]

log = logging.getLogger("newsletter.pipeline")

DEFAULT_ENGINE_LEASE = timedelta(minutes=5)  # one sender per edition: renewals are rare


def start_edition(app: App, edition_id: int) -> int:
    """Move to ``sending`` and enqueue every active subscriber once (idempotent after a crash).
    Returns how many rows were new.

    An edition already sent is left as it is and gets nobody new: a sender comes back to it
    only for the rows added since (:func:`welcome`) that still wait (``Outbox.DELIVERING``);
    enqueueing the list again would mail an old edition to everyone who joined since.

    Several senders may start one edition at once (``send`` and ``run --once`` resuming it, the
    daemon, with workers polling). All of it happens in ``Outbox.enqueuing``, the edition's
    one enqueue transaction (on PostgreSQL under its advisory lock), so they take turns:

    - the state is read under the lock, so the second sees ``sending`` and does not try the
      transition again (which the store refuses: "changed state while we looked");
    - the rows and their total commit together (``Outbox.enqueue`` counts them), so a worker
      never delivers part of the list and marks the edition sent before the rest is there;
    - the second sender's inserts all meet existing rows and add nobody.

    An editor's cancel or pause is not locked out: the transition is a compare-and-set
    (``EditionStore.set_state``), and rows committed into a cancelled edition become
    ``cancelled`` at once (``Outbox.enqueuing``)."""
    with app.outbox.enqueuing(edition_id) as conn:
        info = app.editions.info(edition_id)
        if info.state is EditionState.SENT:
            return 0
        if info.state is not EditionState.SENDING:
            # Its own short transaction, committed now: the rows' transaction has written
            # nothing yet, so on SQLite it holds no write lock that this would wait on.
            app.editions.set_state(edition_id, EditionState.SENDING)
        return app.outbox.enqueue(edition_id, app.subscribers.stream_active(), conn)


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


def delivery_engine(app: App, prepared: PreparedEdition, *, progress: bool | Progress = False,
                    batch_size: int | None = None, lease: timedelta = DEFAULT_ENGINE_LEASE,
                    owner: str | None = None) -> DeliveryEngine[Recipient]:
    """The delivery engine for ``prepared`` over the app's outbox, transport and relay peers;
    a provider that blocklists us is reported to the editors (once, by the process that saw it
    first)."""
    edition_id = prepared.edition_id

    async def blocked(family: str, until: datetime, reason: str) -> None:
        info = await asyncio.to_thread(app.editions.info, edition_id)
        await Notifier.for_app(app).blocklisted(info, family, until, reason)

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
        on_blocked=blocked,
        observer=app.metrics,
    )


async def deliver(app: App, engine: DeliveryEngine[Recipient], prepared: PreparedEdition,
                  edition_id: int) -> DeliveryReport:
    """Send what is claimable now, then add this run's mirror exposure to the edition's tally."""
    report = await engine.run(edition_id)
    if report.remaining:
        await asyncio.to_thread(_say_what_is_left, app, edition_id)
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


def _say_what_is_left(app: App, edition_id: int) -> None:
    """``edition 7: 1,200 of 30,000 sent, 5 deferred, next retry 14:05 UTC``: when it goes on."""
    counts = app.outbox.counts(edition_id)
    due = app.outbox.next_due(edition_id)
    sent, total = counts.get(OutboxState.SENT, 0), sum(counts.values())
    deferred = counts.get(OutboxState.DEFERRED, 0)
    when = f"next retry {due.astimezone(UTC):%H:%M} UTC" if due is not None else "no retry due"
    if due is not None and due.astimezone(UTC).date() != app.clock().astimezone(UTC).date():
        when = f"next retry {due.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    log.info("edition %d: %s of %s sent, %s deferred, %s", edition_id, f"{sent:,}", f"{total:,}",
             f"{deferred:,}", when, extra={"edition_id": edition_id, "sent": sent,
                                           "total": total, "deferred": deferred})


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


async def finish_and_report(app: App, edition_id: int) -> bool:
    """:func:`finish_if_done`, then, from the one caller whose mark won, the editors' report
    and the ``edition.sent`` event (``Notifier.sent``). Every sender ends an edition through
    this: the daemon, ``send``, ``run --once`` and workers alike, so an edition finished by a
    retry or a resumed send is reported too, once."""
    if not await asyncio.to_thread(finish_if_done, app, edition_id):
        return False
    log.info("edition %d: every row has its outcome; marked sent", edition_id)
    try:
        await Notifier.for_app(app).sent(app.editions.info(edition_id))
    except Exception:  # the send is done; a report that fails must not undo it
        log.exception("edition %d: the editors' report could not be sent", edition_id)
    return True


def cancel_edition(app: App, edition_id: int, reason: str | None = None) -> int:
    """Cancel an edition (the CLI and the admin): the store refuses what cannot be cancelled;
    rows never sent become ``cancelled`` in the outbox. Returns how many rows that was.

    A sender busy with it stops at its next batch; what is in flight gets its real outcome."""
    app.editions.cancel(edition_id, reason)
    return app.outbox.cancel_unsent(edition_id)


@dataclass(frozen=True)
class SendSummary:
    edition_id: int
    enqueued: int
    report: DeliveryReport


async def send_edition(app: App, edition_id: int, *, progress: bool | Progress = False,
                       stop: asyncio.Event | None = None) -> SendSummary:
    """Enqueue every active subscriber once, then deliver until nothing is due.

    Safe to call again after a crash: enqueueing is idempotent and the outbox only hands out
    rows whose reply is not yet known. For an edition already sent it only delivers the rows
    added since that are due (welcomes, :func:`start_edition`). ``stop`` is the caller's (the CLI and the daemon set it
    on SIGTERM/SIGINT): when it is set, messages in flight finish and nothing more is claimed.
    """
    prepared = await asyncio.to_thread(prepare_edition, app, edition_id)
    enqueued = await asyncio.to_thread(start_edition, app, edition_id)
    engine = delivery_engine(app, prepared, progress=progress)
    watcher = asyncio.create_task(_stop_when_set(stop, engine)) if stop is not None else None
    try:
        report = await deliver(app, engine, prepared, edition_id)
        # The engine's last claim came while its last messages were in flight: a reader who
        # confirmed meanwhile has a row queued since (``queue_welcome``). This send delivers
        # it too, instead of leaving the edition unfinished for the next sender. Each pass
        # claims every queued row, so this ends once no one confirms during a pass.
        while report.stopped in ("done", "deferred") and not (stop and stop.is_set()):
            if await asyncio.to_thread(app.outbox.queued, edition_id) == 0:
                break
            report = report.then(await deliver(app, engine, prepared, edition_id))
    finally:
        if watcher is not None:
            watcher.cancel()
    await finish_and_report(app, edition_id)
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
    # The configured mode names the edition: in digest mode even one post is a digest (its
    # layout, subject and label); in per-post mode one post is a per-post edition.
    per_post = app.config.newsletter.mode == "per-post" and len(post_ids) == 1
    edition_id = app.editions.create(post_ids, kind="per-post" if per_post else "digest")
    if edition_id is None:
        return None
    reason = app.editions.hold_if_over(edition_id, app.config.schedule.max_posts)
    if reason is not None:
        log.warning("edition %d held: %s", edition_id, reason)
        await Notifier.for_app(app).held(app.editions.info(edition_id))
        return Held(edition_id, reason)
    app.editions.approve(edition_id)
    return await send_edition(app, edition_id, progress=progress, stop=stop)


@dataclass(frozen=True)
class SentCopy:
    """One test copy: where it went (the editor's own address, echoed back to them only) and
    what the transport answered."""

    address: str
    result: SendResult

    @property
    def accepted(self) -> bool:
        return self.result.accepted


async def send_test(app: App, edition_id: int, addresses: Sequence[str],
                    language: str) -> list[SentCopy]:
    """``editions test-send`` and the admin: the real rendered mail for ``language`` to each of
    ``addresses`` (:func:`~mailer.editions.testsend.check_test_addresses` checks them), marked
    as a test.

    The same prepare and personalise path as the real send, so what the editor sees is what
    subscribers get, but it never touches the outbox (no totals, no exactly-once bookkeeping)
    and the addresses are neither logged nor stored: they are not subscribers', yet personal.
    Every transport works; Maildir writes to ``[delivery] test_maildir``, a folder of its own.
    """
    wanted = check_test_addresses([addresses] if isinstance(addresses, str) else addresses)
    prepared = await asyncio.to_thread(prepare_edition, app, edition_id)
    unsubscribe = f"{app.config.newsletter.public_url}/u/test"
    transport = app.open_test_transport()
    out = []
    try:
        for address in wanted:
            data = personalise(app, prepared,
                               Reader(TEST_SUBSCRIBER_ID, address, language, unsubscribe))
            result = await transport.send(app.config.envelope_sender, address, mark_as_test(data))
            out.append(SentCopy(address, result))
    finally:
        await transport.aclose()
    return out


def unblock_provider(app: App, family: str) -> int | None:
    """``newsletter relay unblock FAMILY``: end a provider's block (the operator had us
    delisted) and make its waiting rows due now. None if the family is unknown; else how many
    rows are due again (the daemon's ``retry`` job, or ``run --once``, sends them)."""
    from mailer.delivery.budget import DomainBudget

    fam = app.config.delivery.providers.get(family)
    if fam is None:
        return None
    DomainBudget(app.engine).lift(family)
    return app.outbox.release_held(fam.domains)


def queue_welcome(app: App) -> Callable[[Connection, Recipient], None]:
    """The welcome's outbox row, written in the transaction that confirms the reader
    (``SubscriberStore.confirm(then=…)``): a crash right after the confirmation cannot lose the
    welcome, because the row commits with it (and the edition's total counts it, in the same
    transaction: ``Outbox.enqueue_in``). The edition is ``EditionStore.welcome_edition``'s: the
    one going out if an edition is sending (or paused mid-send), so the reader gets the edition
    the list is getting, not the one before; else the last sent. :func:`welcome` then
    delivers it, or the running send claims it like any queued row, or any sender does later
    (``Outbox.editions_with_work``). ON CONFLICT keeps it one row: a reader the running send
    already enqueued keeps that row."""

    def queue(conn: Connection, reader: Recipient) -> None:
        edition = app.editions.welcome_edition(conn)
        if edition is not None:
            app.outbox.enqueue_in(conn, edition.id, reader)

    return queue


async def welcome(app: App, subscriber_ids: Sequence[int]) -> int:
    """Readers who just confirmed get the welcome edition now, not only the next one. Through
    the outbox like any send, so each gets it once: the row (edition, subscriber) was queued
    with the confirmation (:func:`queue_welcome`), and a reader who had the edition already (a
    re-subscription) has no row waiting and gets nothing. Returns how many had one waiting and
    were delivered now; one who left meanwhile is suppressed by the engine, as in any send.

    The edition is the one :func:`queue_welcome` chose (``EditionStore.welcome_edition``, the
    one rule). If it is still going out (sending or paused), nothing is done here: the running
    send claims the new row (at its next batch, or in the pass :func:`send_edition` makes for
    rows queued after its last claim), or the sender that resumes it does (``send``,
    ``run --once``, the daemon's ``retry`` job); a second engine here would take over the
    list's rows too.

    If it is ``sent`` (final, so no editor can cancel it under us), the row is delivered now.
    What the relay defers, or a crash leaves queued or leased, stays in that edition's outbox,
    and every sender comes back for it with the usual backoff (``Outbox.editions_with_work``:
    the daemon's ``retry`` job, ``send``, ``run --once``, workers) until it is sent or fails
    for good."""
    if not subscriber_ids:
        return 0
    edition = await asyncio.to_thread(app.editions.welcome_edition)
    if edition is None:
        return 0
    if edition.state is not EditionState.SENT:
        log.info("welcome: edition %d is %s; its send delivers the new reader(s)",
                 edition.id, edition.state.value)
        return 0
    edition_id = edition.id
    waiting = await asyncio.to_thread(app.outbox.waiting_among, edition_id, list(subscriber_ids))
    if not waiting:
        return 0
    prepared = await asyncio.to_thread(prepare_edition, app, edition_id)
    await deliver(app, delivery_engine(app, prepared), prepared, edition_id)
    log.info("welcome: edition %d to %d new reader(s)", edition_id, waiting)
    return waiting
