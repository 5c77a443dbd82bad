"""``newsletter worker``: one of N sender processes that share editions through the outbox.

The scale-out deployment (issue 9, docs/deployment.md) is one scheduler and several workers on
one PostgreSQL database. The scheduler decides *what* goes out and enqueues it
(``start_edition``); every worker loops: find editions in ``sending`` with claimable rows, claim
small batches (``Outbox.claim``: ``FOR UPDATE SKIP LOCKED`` with a lease, so workers never share a
row), send them through the same ``DeliveryEngine`` and its relay pool, and record each reply.
A worker that dies holds its rows only until their lease expires; then another one takes them,
so the duplicates stay within the delivery engine's bound (messages in flight, at most the dead
worker's connections). With SQLite, ``newsletter run`` sends by itself and no worker is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Any

import click
from sqlalchemy import ColumnElement, Engine, and_, exists, or_, select
from sqlalchemy.exc import IntegrityError

from mailer.app import App
from mailer.cli.base import cli, pass_app
from mailer.config import parse_duration
from mailer.delivery.engine import DeliveryEngine, DeliveryReport
from mailer.errors import EditionError, NewsletterError
from mailer.models import EditionState, OutboxState
from mailer.schema import editions, outbox

__all__ = [
    "DEFAULT_LEASE",
    "SenderWorker",
    "WorkerReport",
    "editions_unfinished",
    "editions_with_work",
    "start_edition",
    "worker_owner",
]

log = logging.getLogger("newsletter.worker")

# Long enough that a busy worker renews well before expiry (the engine renews every lease/3);
# short enough that a dead worker's rows do not wait long for another one.
DEFAULT_LEASE = timedelta(minutes=2)
BROKEN_RETRY = 60.0  # seconds before a worker tries again an edition that failed to prepare


def worker_owner() -> str:
    """``worker:host:pid:random`` (fits ``outbox.lease_owner``): unique even after a PID reuse."""
    return f"worker:{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(4)}"


def _claimable(now: datetime) -> ColumnElement[bool]:
    # The same rows Outbox.claim hands out: queued, deferred and due, or leased and expired.
    return or_(
        outbox.c.state == OutboxState.QUEUED.value,
        and_(outbox.c.state == OutboxState.DEFERRED.value, outbox.c.next_attempt_at <= now),
        and_(outbox.c.state == OutboxState.SENDING.value, outbox.c.lease_expires_at < now),
    )


def editions_with_work(engine: Engine, now: datetime) -> list[int]:
    """Editions in ``sending`` that have at least one row a worker may claim now."""
    stmt = (
        select(editions.c.id)
        .where(editions.c.state == EditionState.SENDING.value)
        .where(exists().where(outbox.c.edition_id == editions.c.id, _claimable(now)))
        .order_by(editions.c.id)
    )
    with engine.connect() as conn:
        return [int(i) for i in conn.execute(stmt).scalars()]


def editions_unfinished(engine: Engine) -> list[int]:
    """Editions in ``sending`` with rows still queued, leased (maybe elsewhere) or deferred."""
    open_states = [OutboxState.QUEUED.value, OutboxState.SENDING.value, OutboxState.DEFERRED.value]
    stmt = (
        select(editions.c.id)
        .where(editions.c.state == EditionState.SENDING.value)
        .where(exists().where(outbox.c.edition_id == editions.c.id,
                              outbox.c.state.in_(open_states)))
        .order_by(editions.c.id)
    )
    with engine.connect() as conn:
        return [int(i) for i in conn.execute(stmt).scalars()]


def start_edition(app: App, edition_id: int) -> int:
    """The scheduler's half when workers send: move to ``sending`` and enqueue every active
    subscriber once (idempotent after a crash). Returns how many rows were new."""
    info = app.editions.info(edition_id)
    if info.state is not EditionState.SENDING:
        app.editions.set_state(edition_id, EditionState.SENDING)
    added = app.outbox.enqueue(edition_id, app.subscribers.stream_active())
    app.editions.set_total(edition_id, app.outbox.total(edition_id))
    return added


@dataclass
class WorkerReport:
    """What one worker process did, summed over its runs."""

    owner: str
    runs: list[DeliveryReport] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)  # editions this worker marked sent

    @property
    def sent(self) -> int:
        return sum(r.sent for r in self.runs)

    def summary(self) -> str:
        eds = sorted({r.edition_id for r in self.runs})
        return (f"worker {self.owner}: {len(self.runs)} run(s) over editions {eds or '-'}; "
                f"sent {self.sent}; marked sent: {self.finished or '-'}")


class SenderWorker:
    """The worker loop. ``app`` supplies the engine, outbox, key ring, transport and clock."""

    def __init__(self, app: App, *, lease: timedelta = DEFAULT_LEASE, poll: float = 2.0,
                 batch_size: int | None = None, once: bool = False, owner: str | None = None,
                 progress: bool = False) -> None:
        self.app = app
        self.lease = lease
        self.poll = poll
        self.batch_size = batch_size
        self.once = once
        self.owner = (owner or worker_owner())[:64]
        self.progress = progress
        self._stopping = asyncio.Event()
        self._current: DeliveryEngine[Any] | None = None
        self._prepared: dict[int, Any] = {}
        self.outbox = app.outbox
        self._skip_until: dict[int, float] = {}  # edition -> monotonic time to try again

    def stop(self, reason: str = "signal") -> None:
        """Finish the messages in flight, record them, release the rest, and return."""
        if not self._stopping.is_set():
            log.info("worker %s stopping (%s)", self.owner, reason)
        self._stopping.set()
        if self._current is not None:
            self._current.stop(reason)

    async def run(self, *, handle_signals: bool = True) -> WorkerReport:
        # Open the key file now: a worker with a missing or different key must fail at start
        # (exit 2, KeyStoreError), not when the first edition comes due.
        await asyncio.to_thread(lambda: self.app.subscribers)
        report = WorkerReport(self.owner)
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self.stop, sig.name)
                    installed.append(sig)
        log.info("worker %s started (lease %ss, poll %ss)", self.owner,
                 int(self.lease.total_seconds()), self.poll)
        try:
            while not self._stopping.is_set():
                work = await asyncio.to_thread(editions_with_work, self.app.engine,
                                               self.app.clock())
                now = time.monotonic()
                work = [e for e in work if self._skip_until.get(e, 0.0) <= now]
                for edition_id in work:
                    if self._stopping.is_set():
                        break
                    try:
                        await self._send(edition_id, report)
                    except NewsletterError as exc:
                        if self.once:
                            raise
                        # One broken edition (a template error, an edition without posts) must
                        # not stop the others: log it, leave its rows, and look again later.
                        log.error("edition %d: %s; retrying in %ds", edition_id, exc,
                                  int(BROKEN_RETRY))
                        self._skip_until[edition_id] = time.monotonic() + BROKEN_RETRY
                        self._prepared.pop(edition_id, None)
                if work:
                    continue
                if self.once and not await asyncio.to_thread(editions_unfinished,
                                                             self.app.engine):
                    break
                # Nothing claimable: other workers hold the rest, or retries are not due yet.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.poll)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.app.transport.aclose()
        log.info("%s", report.summary())
        return report

    async def _send(self, edition_id: int, report: WorkerReport) -> None:
        from mailer.mirrors.exposure import record_exposure
        from mailer.pipeline import PreparedEdition, personaliser, prepare_edition

        app = self.app
        prepared = self._prepared.get(edition_id)
        if prepared is None:
            # Rendered once per edition per worker: the same bytes every other worker makes.
            prepared = await asyncio.to_thread(prepare_edition, app, edition_id)
            self._prepared[edition_id] = prepared
        assert isinstance(prepared, PreparedEdition)
        envelope_from = (app.config.delivery.envelope_from
                         or parseaddr(app.config.newsletter.from_addr)[1])

        def on_bounce(subscriber_id: int) -> object:
            return app.subscribers.set_state(subscriber_id, "bounced")

        engine = DeliveryEngine(
            self.outbox, app.transport,
            recipients=app.subscribers.get_recipients,
            message_for=personaliser(app, prepared),
            envelope_from=envelope_from,
            settings=app.config.delivery,
            clock=app.clock,
            on_bounce=on_bounce,
            progress=self.progress,
            batch_size=self.batch_size,
            lease=self.lease,
            owner=self.owner,
            peers=app.senders,
        )
        self._current = engine
        try:
            result = await engine.run(edition_id, handle_signals=False)
        finally:
            self._current = None
        report.runs.append(result)
        counts = dict(prepared.exposure)
        prepared.exposure.clear()
        for attempt in range(3):
            try:
                await asyncio.to_thread(record_exposure, app.engine, edition_id, counts,
                                        app.clock())
                break
            except IntegrityError:  # two workers created the same tally row at once; add again
                if attempt == 2:
                    raise
        if await asyncio.to_thread(app.outbox.unfinished, edition_id) == 0:
            try:
                app.editions.set_state(edition_id, EditionState.SENT)
            except EditionError:
                return  # another worker (or the scheduler) marked it first, or an editor acted
            report.finished.append(edition_id)
            log.info("edition %d: every row has its outcome; marked sent", edition_id)
            # Only the worker whose compare-and-set won gets here, so the editors hear it once.
            from mailer.editions.notify import Notifier

            try:
                await Notifier.for_app(app).sent(app.editions.info(edition_id))
            except Exception:
                log.exception("edition %d: the editors' report could not be sent", edition_id)


@cli.command("worker")
@click.option("--once", is_flag=True,
              help="Exit when no edition in 'sending' has unfinished rows (instead of polling).")
@click.option("--lease", "lease_text", default="2m", show_default=True,
              help="How long claimed rows stay ours without a renewal (a dead worker's wait).")
@click.option("--poll", "poll_text", default="2s", show_default=True,
              help="How often to look for work when there is none.")
@click.option("--batch", "batch_size", type=int, default=None,
              help="Rows per claim (default: 4 per connection, at least 64).")
@click.option("--progress/--no-progress", default=False, help="A progress bar on a terminal.")
@pass_app
def worker_cmd(app: App, once: bool, lease_text: str, poll_text: str, batch_size: int | None,
               progress: bool) -> None:
    """Send queued mail: claim outbox rows in batches and deliver them (run N of these)."""
    try:
        lease, poll = parse_duration(lease_text), parse_duration(poll_text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if app.engine.dialect.name == "sqlite":
        log.warning("SQLite: `newsletter run` sends by itself; several workers need PostgreSQL")
    worker = SenderWorker(app, lease=lease, poll=poll.total_seconds(), batch_size=batch_size,
                          once=once, progress=progress)
    result = asyncio.run(worker.run())
    click.echo(result.summary())
