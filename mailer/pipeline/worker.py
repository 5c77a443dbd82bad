"""The scale-out sender: one of N processes that share editions through the outbox.

The scale-out deployment (issue 9, docs/deployment.md) is one scheduler and several workers on
one PostgreSQL database. The scheduler decides *what* goes out and enqueues it
(:func:`mailer.pipeline.send.start_edition`); every worker loops: find editions in ``sending``
(or ``sent`` with a welcome waiting) with claimable rows (``Outbox.editions_with_work``), claim
small batches (``Outbox.claim``: ``FOR UPDATE SKIP LOCKED`` with a lease, so workers never
share a row), send them through the same delivery engine as ``send``
(:func:`mailer.pipeline.send.deliver`), and record each reply. A worker that dies holds its
rows only until their lease expires; then another one takes them, so the duplicates stay within
the delivery engine's bound (messages in flight, at most the dead worker's connections). With
SQLite, ``newsletter run`` sends by itself and no worker is needed.

Signals belong to the caller (``newsletter worker``): it calls :meth:`SenderWorker.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta

from mailer.app import App
from mailer.delivery.engine import DeliveryEngine, DeliveryReport
from mailer.errors import NewsletterError
from mailer.pipeline.prepare import PreparedEdition, prepare_edition
from mailer.pipeline.send import deliver, delivery_engine, finish_and_report
from subscribers.lifecycle import Recipient

__all__ = ["DEFAULT_LEASE", "SenderWorker", "WorkerReport", "worker_owner"]

log = logging.getLogger("newsletter.worker")

# Long enough that a busy worker renews well before expiry (the engine renews every lease/3);
# short enough that a dead worker's rows do not wait long for another one.
DEFAULT_LEASE = timedelta(minutes=2)
BROKEN_RETRY = 60.0  # seconds before a worker tries again an edition that failed to prepare


def worker_owner() -> str:
    """``worker:host:pid:random`` (fits ``outbox.lease_owner``): unique even after a PID reuse."""
    return f"worker:{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(4)}"


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
        self._current: DeliveryEngine[Recipient] | None = None
        self._prepared: dict[int, PreparedEdition] = {}
        self.outbox = app.outbox
        self._skip_until: dict[int, float] = {}  # edition -> monotonic time to try again

    def stop(self, reason: str = "signal") -> None:
        """Finish the messages in flight, record them, release the rest, and return."""
        if not self._stopping.is_set():
            log.info("worker %s stopping (%s)", self.owner, reason)
        self._stopping.set()
        if self._current is not None:
            self._current.stop(reason)

    async def run(self) -> WorkerReport:
        # Open the key file now: a worker with a missing or different key must fail at start
        # (exit 2, KeyStoreError), not when the first edition comes due.
        await asyncio.to_thread(lambda: self.app.subscribers)
        report = WorkerReport(self.owner)
        log.info("worker %s started (lease %ss, poll %ss)", self.owner,
                 int(self.lease.total_seconds()), self.poll)
        try:
            while not self._stopping.is_set():
                work = await asyncio.to_thread(self.outbox.editions_with_work)
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
                if self.once and not await asyncio.to_thread(self.outbox.editions_unfinished):
                    break
                # Nothing claimable: other workers hold the rest, or retries are not due yet.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.poll)
        finally:
            await self.app.close_transports()
        log.info("%s", report.summary())
        return report

    async def _send(self, edition_id: int, report: WorkerReport) -> None:
        app = self.app
        prepared = self._prepared.get(edition_id)
        if prepared is None:
            # Rendered once per edition per worker: the same bytes every other worker makes.
            prepared = await asyncio.to_thread(prepare_edition, app, edition_id)
            self._prepared[edition_id] = prepared
        engine = delivery_engine(app, prepared, progress=self.progress,
                                 batch_size=self.batch_size, lease=self.lease, owner=self.owner)
        self._current = engine
        try:
            result = await deliver(app, engine, prepared, edition_id)
        finally:
            self._current = None
        report.runs.append(result)
        if await finish_and_report(app, edition_id):  # the editors hear it once, from the winner
            report.finished.append(edition_id)
