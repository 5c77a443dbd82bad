"""The delivery engine: claims outbox rows, sends through a transport, records every reply.

How it stays exactly-once-ish (issue 7):

- A worker per transport connection takes one row at a time, sends it, and waits until the
  outcome is *committed* before taking the next (group commit: the outcomes of all workers that
  answered meanwhile go in one transaction). So at any instant the messages delivered but not yet
  recorded are at most one per connection: that is the duplicate bound after ``kill -9``.
- Rows are claimed a small batch ahead with a lease (``Outbox.claim``); rows claimed but never
  handed to the transport are released when the run stops, and a crashed run's rows come back
  when their lease expires.
- Between batches the edition's state is read: ``paused`` or ``cancelled`` stops the claiming;
  the messages in flight finish and are recorded.
- Recipients are looked up (``recipients``) just before their batch is queued; a subscriber
  who is no longer active is recorded ``suppressed`` instead of being mailed.
- ``stop()`` (the CLI and the daemon call it on SIGTERM/SIGINT) does the same as a pause: finish
  in flight, record, release, return. The engine installs no signal handler.

Provider pace (issue 21): a reply the provider rules call *slow down* halves that domain's pace
for a while (``Throttle.slow_down``); a domain with an hourly or daily cap takes small grants
from the database before sending (``DomainBudget``), and once the cap is reached its rows wait,
deferred to the next window, counting no attempt; a *blocklisted* reply stops the whole
provider family for every sender (``provider_blocks``), its rows wait likewise, and
``on_blocked`` tells the editors, once. Other domains carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from mailer.clock import Clock
from mailer.config import DeliverySettings
from mailer.delivery.budget import DomainBudget
from mailer.delivery.classify import Classifier, SendResult, scrub_reply
from mailer.delivery.outbox import STOP_STATES, Outbox, OutboxRow, Outcome, RecipientLike
from mailer.delivery.pace import hour_start
from mailer.delivery.peers import SenderRegistry
from mailer.delivery.progress import NullProgress, Progress, progress_for
from mailer.delivery.providers import Verdict, family_key
from mailer.delivery.ratelimit import DomainLimits, Throttle
from mailer.delivery.transport import Transport
from mailer.models import OutboxState

__all__ = ["DeliveryEngine", "DeliveryObserver", "DeliveryReport", "Recipient"]

log = logging.getLogger("newsletter.delivery")


class DeliveryObserver(Protocol):
    """Told of each outcome once it is committed, and of each wait on a domain's rate limit
    (``mailer.metrics.Metrics``). ``domain`` is the outbox's; the observer classes it."""

    def recorded(self, domain: str, state: OutboxState, code: int, relay: str | None) -> None: ...

    def waited(self, domain: str, seconds: float) -> None: ...


class Recipient(RecipientLike, Protocol):
    """``subscribers.store.Recipient``: the decrypted address is used only for the envelope."""

    @property
    def address(self) -> str: ...


@dataclass(frozen=True)
class DeliveryReport:
    """What one ``run`` did. ``stopped`` says why it returned: done, paused, cancelled, signal,
    or deferred (only rows waiting for a retry time remain)."""

    edition_id: int
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    bounced: int = 0
    content_rejected: int = 0
    suppressed: int = 0
    remaining: int = 0
    elapsed: float = 0.0
    stopped: str = "done"
    by_relay: Mapping[str, int] = field(default_factory=dict)
    # Rows held back (cap reached, provider blocked) and until when, per domain or family.
    held: int = 0
    held_until: Mapping[str, datetime] = field(default_factory=dict)

    @property
    def attempted(self) -> int:
        return self.sent + self.deferred + self.failed + self.bounced + self.content_rejected

    @property
    def rate(self) -> float:
        return self.attempted / self.elapsed if self.elapsed > 0 else 0.0

    def then(self, later: DeliveryReport) -> DeliveryReport:
        """This run followed by ``later`` on the same edition (a send that claimed again for
        rows queued after its last claim): counts add up, the state is the later one's."""
        relays = dict(self.by_relay)
        for name, n in later.by_relay.items():
            relays[name] = relays.get(name, 0) + n
        return replace(
            later, sent=self.sent + later.sent, deferred=self.deferred + later.deferred,
            failed=self.failed + later.failed, bounced=self.bounced + later.bounced,
            content_rejected=self.content_rejected + later.content_rejected,
            suppressed=self.suppressed + later.suppressed, elapsed=self.elapsed + later.elapsed,
            by_relay=relays, held=self.held + later.held)

    def summary(self) -> str:
        text = (f"edition {self.edition_id}: sent {self.sent}, deferred {self.deferred}, "
                f"failed {self.failed}, bounced {self.bounced}, "
                f"content_rejected {self.content_rejected}, suppressed {self.suppressed}; "
                f"{self.remaining} left; {self.elapsed:.1f}s ({self.rate:.0f}/s); {self.stopped}")
        if self.held_until:
            text += "; waiting: " + ", ".join(
                f"{k} until {v:%Y-%m-%d %H:%M} UTC" for k, v in sorted(self.held_until.items()))
        return text


@dataclass(frozen=True)
class _Hold:
    """Domains nobody sends to until ``until`` (a cap reached, a provider blocked)."""

    domains: frozenset[str]
    until: datetime
    reason: str


@dataclass
class _Credits:
    """What is left of a cap grant taken in ``hour``."""

    n: int
    hour: datetime


class _GroupCommit:
    """Collects outcomes as replies arrive and commits whatever is waiting in one transaction.

    ``record`` returns only once its outcome is durable, which is what bounds duplicates.
    """

    def __init__(self, engine: DeliveryEngine[Any], edition_id: int, owner: str) -> None:
        self._engine = engine
        self._edition_id = edition_id
        self._owner = owner
        self._pending: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        # One thread and one database connection for every commit of the run: a commit is on
        # the path of every message, and a fresh connection per commit (SQLite's NullPool
        # pragmas, PostgreSQL's pre-ping) cost more than the UPDATE itself.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="outbox-commit")
        self._conn: Connection | None = None

    def _commit_in_thread(self, outcomes: list[Outcome]) -> None:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._engine.outbox.engine.connect()
            try:
                self._engine._commit(self._edition_id, self._owner, outcomes, self._conn)
                return
            except DBAPIError as exc:
                # A dropped connection (PostgreSQL restart): one retry on a fresh one.
                self._close_in_thread()
                if attempt == 2 or not exc.connection_invalidated:
                    raise

    def _close_in_thread(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def submit(self, outcome: Outcome) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())
        return fut

    async def record(self, outcome: Outcome) -> None:
        await self.submit(outcome)

    async def _flush(self) -> None:
        limit = max(1, self._engine.settings.commit_every)
        while self._pending:
            group, self._pending = self._pending[:limit], self._pending[limit:]
            outcomes = [o for o, _ in group]
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._commit_in_thread, outcomes)
            except BaseException as exc:
                self.error = exc
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for _, fut in group:
                if not fut.done():
                    fut.set_result(None)
            self._engine._tally(outcomes)

    async def drain(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def close(self) -> None:
        await self.drain()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_in_thread)
        self._executor.shutdown(wait=False)


R = TypeVar("R", bound=Recipient)


class _Lane(Generic[R]):
    """Rows for one rate-limited destination (qq.com…), released to the workers at its pace.

    Workers never sleep on a domain's limit, so a slow provider does not hold up the others;
    while a lane is full the producer stops claiming that domain's rows.
    """

    def __init__(self, engine: DeliveryEngine[R], key: str, limiter: Throttle, capacity: int,
                 commits: _GroupCommit) -> None:
        self.engine = engine
        self.key = key
        self.limiter = limiter
        self.queue: asyncio.Queue[tuple[OutboxRow, R] | None] = asyncio.Queue(capacity)
        self.domains: set[str] = set()
        self.holding = False
        self._commits = commits
        self._sends: set[asyncio.Task[None]] = set()
        self.task = asyncio.create_task(self._feed())

    @property
    def busy(self) -> bool:
        return self.holding or not self.queue.empty()

    async def put(self, row: OutboxRow, rcpt: R) -> None:
        self.domains.add(row.domain)
        await self.queue.put((row, rcpt))

    async def _feed(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                break
            if self.engine._stop_reason is not None:
                continue  # left in 'sending'; released when the run ends
            self.holding = True
            try:
                if await self.engine._held(item[0], self._commits):
                    continue
                if not await self.engine._take(self.key, item[0], self._commits):
                    continue
                waited = self.engine._monotonic()
                await self.limiter.wait()
                self.engine._waited(item[0].domain, self.engine._monotonic() - waited)
                # Send at the paced moment on the next free connection; handing the row to the
                # shared queue instead would let it bunch up behind other domains' rows.
                await self.engine._slots.acquire()
                send = asyncio.create_task(self._send(*item))
                self._sends.add(send)
                send.add_done_callback(self._sends.discard)
            finally:
                self.holding = False
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)

    async def _send(self, row: OutboxRow, rcpt: R) -> None:
        try:
            await self.engine._deliver(row, rcpt, self._commits)
        finally:
            self.engine._slots.release()


class DeliveryEngine(Generic[R]):
    """Sends an edition's outbox through a transport; one instance per process and edition run."""

    def __init__(
        self,
        outbox: Outbox,
        transport: Transport,
        *,
        recipients: Callable[[Sequence[int]], Mapping[int, R]],
        message_for: Callable[[OutboxRow, R], bytes],
        envelope_from: str,
        settings: DeliverySettings,
        envelope_for: Callable[[OutboxRow], str] | None = None,
        clock: Clock,
        on_bounce: Callable[[int], object] | None = None,
        progress: Progress | bool | None = None,
        batch_size: int | None = None,
        lease: timedelta = timedelta(minutes=5),
        owner: str | None = None,
        rand: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
        peers: SenderRegistry | None = None,
        share_every: float = 10.0,
        on_blocked: Callable[[str, datetime, str], Awaitable[object]] | None = None,
        observer: DeliveryObserver | None = None,
    ) -> None:
        self.outbox = outbox
        self.transport = transport
        self.recipients = recipients
        self.message_for = message_for
        self.envelope_from = envelope_from
        # Per message (VERP, ``bounces+TOKEN@``): a bounce that comes back later names its row.
        self.envelope_for = envelope_for
        self.settings = settings
        self.clock = clock
        self.on_bounce = on_bounce
        # True: a bar on a terminal, log lines otherwise (what ``newsletter send`` wants).
        self.progress: Progress = (
            progress_for() if progress is True
            else NullProgress() if progress is None or progress is False
            else progress
        )
        self.concurrency = max(1, transport.concurrency)
        self.batch_size = batch_size or max(64, 4 * self.concurrency)
        self.lease = lease
        self.owner = owner or f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
        self.rand = rand
        self._monotonic = monotonic
        # With ``peers``, the rate limits are the deployment's: this process takes its part.
        self.peers = peers
        self.share_every = share_every
        self.share = 1
        self.observer = observer
        self.classifier = Classifier(settings.content_rejections, max_attempts=settings.max_attempts,
                                     max_age=settings.max_age, backoff_base=settings.backoff_base,
                                     providers=settings.providers)
        self.domain_limits = DomainLimits(settings.domain_rates, monotonic=monotonic,
                                          capped=settings.domain_caps)
        # Caps and blocks are the deployment's, in the database beside the outbox.
        self.budget = DomainBudget(outbox.engine)
        self.on_blocked = on_blocked
        self._holds: dict[str, _Hold] = {}
        self._credits: dict[str, _Credits] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._held_count = 0
        self._edition_id = 0
        self._blocks_read = float("-inf")
        self._stop_reason: str | None = None
        self._error: Exception | None = None
        self._lanes: dict[str, _Lane[R]] = {}
        self._slots = asyncio.Semaphore(1)
        self._counts: dict[OutboxState, int] = dict.fromkeys(OutboxState, 0)
        self._by_relay: dict[str, int] = {}

    # ------------------------------------------------------------------ control

    def stop(self, reason: str = "signal") -> None:
        """Finish what is in flight, record it, release the rest, and return from ``run``."""
        if self._stop_reason is None:
            log.info("stopping after the messages in flight (%s)", reason)
            self._stop_reason = reason

    # ------------------------------------------------------------------ the run

    async def run(self, edition_id: int) -> DeliveryReport:
        """Deliver what is claimable until done, paused, cancelled or :meth:`stop`; signals are
        the caller's (the CLI and the daemon call ``stop``)."""
        started = self._monotonic()
        self._stop_reason = None
        self._error = None
        self._counts = dict.fromkeys(OutboxState, 0)
        self._by_relay = {}
        self._edition_id = edition_id
        self._holds = {}
        self._credits = {}
        self._held_count = 0
        self._blocks_read = float("-inf")
        todo = await asyncio.to_thread(self.outbox.unfinished, edition_id)
        if self.peers is not None:
            await self._beat()  # our part of the rates is known before the first message
        self.progress.start(edition_id, todo)
        commits = _GroupCommit(self, edition_id, self.owner)
        queue: asyncio.Queue[tuple[OutboxRow, R] | None] = asyncio.Queue(
            maxsize=self.batch_size)
        workers = [asyncio.create_task(self._worker(edition_id, queue, commits))
                   for _ in range(self.concurrency)]
        renewer = asyncio.create_task(self._renew(edition_id))
        watcher = asyncio.create_task(self._watch(edition_id))
        sharer = asyncio.create_task(self._share_rates())
        self._lanes = {}
        # One slot per connection: what is in flight never exceeds it (the duplicate bound).
        self._slots = asyncio.Semaphore(self.concurrency)
        stopped = "done"
        try:
            stopped = await self._produce(edition_id, queue, commits)
        finally:
            for lane in self._lanes.values():
                await lane.queue.put(None)
            await asyncio.gather(*(lane.task for lane in self._lanes.values()),
                                 return_exceptions=True)
            for _ in workers:
                await queue.put(None)
            results = await asyncio.gather(*workers, return_exceptions=True)
            if self._pending:
                await asyncio.gather(*self._pending, return_exceptions=True)
            await commits.close()
            await self._give_back()
            for task in (renewer, watcher, sharer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.peers is not None:
                with contextlib.suppress(Exception):  # the row expires anyway
                    await asyncio.to_thread(self.peers.leave, self.owner)
            released = await asyncio.to_thread(self.outbox.release, edition_id, self.owner)
            if released:
                log.info("released %d claimed rows that were not sent", released)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        if commits.error is not None:
            raise commits.error
        if self._error is not None:
            raise self._error
        remaining = await asyncio.to_thread(self.outbox.unfinished, edition_id)
        if stopped == "done" and remaining:
            stopped = "deferred"
        c = self._counts
        report = DeliveryReport(
            edition_id=edition_id, sent=c[OutboxState.SENT], deferred=c[OutboxState.DEFERRED],
            failed=c[OutboxState.FAILED], bounced=c[OutboxState.BOUNCED],
            content_rejected=c[OutboxState.CONTENT_REJECTED],
            suppressed=c[OutboxState.SUPPRESSED], remaining=remaining,
            elapsed=self._monotonic() - started, stopped=stopped, by_relay=dict(self._by_relay),
            held=self._held_count,
            held_until={k: h.until for k, h in self._holds.items() if h.until > self.clock()},
        )
        self.progress.finish(report)
        # Structured fields for log shippers (JSON formatters read ``extra``): counts only.
        log.info("%s", report.summary(), extra={
            "edition_id": edition_id, "sent": report.sent, "deferred": report.deferred,
            "failed": report.failed, "bounced": report.bounced,
            "content_rejected": report.content_rejected, "suppressed": report.suppressed,
            "remaining": report.remaining, "stopped": report.stopped})
        return report

    async def _produce(self, edition_id: int, queue: asyncio.Queue[tuple[OutboxRow, R] | None],
                       commits: _GroupCommit) -> str:
        while True:
            if self._stop_reason is not None:
                return self._stop_reason
            if commits.error is not None:
                return "error"
            state = await asyncio.to_thread(self.outbox.edition_state, edition_id)
            if state in STOP_STATES:
                # Rows already claimed but not yet on a connection (queued for a worker or a
                # slow domain's lane) are released too, so a pause takes effect at once.
                self.stop(str(state))
                return str(state)
            await self._read_blocks()
            full = {d for lane in self._lanes.values() if lane.queue.full() for d in lane.domains}
            full |= self._held_domains()
            rows = await asyncio.to_thread(self.outbox.claim, edition_id, self.batch_size,
                                           self.owner, self.lease, full)
            if not rows:
                if any(lane.busy for lane in self._lanes.values()):
                    # Only rate-limited destinations are left: wait for their lanes to move.
                    await asyncio.sleep(0.05)
                    continue
                return "done"
            found = await asyncio.to_thread(self.recipients, [r.subscriber_id for r in rows])
            for row in rows:
                rcpt = found.get(row.subscriber_id)
                if rcpt is None:
                    # Unsubscribed (or bounced elsewhere) since the edition was enqueued.
                    done = commits.submit(Outcome(row.subscriber_id, OutboxState.SUPPRESSED,
                                                  reply="subscriber no longer active"))
                    done.add_done_callback(self._suppressed_callback(row.domain))
                    continue
                key = self.domain_limits.key_for(row.domain) if self.domain_limits else None
                if key is None:
                    await queue.put((row, rcpt))
                else:
                    await self._lane(key, commits).put(row, rcpt)

    def _lane(self, key: str, commits: _GroupCommit) -> _Lane[R]:
        lane = self._lanes.get(key)
        if lane is None:
            limiter = self.domain_limits.limiter(key)
            capacity = max(self.batch_size, int(2 * limiter.rate))
            lane = self._lanes[key] = _Lane(self, key, limiter, capacity, commits)
        return lane

    async def _worker(self, edition_id: int,
                      queue: asyncio.Queue[tuple[OutboxRow, R] | None],
                      commits: _GroupCommit) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            if self._stop_reason is not None or commits.error is not None:
                continue  # left in 'sending'; released when the run ends
            if self._holds and await self._held(item[0], commits):
                continue
            async with self._slots:
                await self._deliver(item[0], item[1], commits)

    async def _deliver(self, row: OutboxRow, rcpt: R, commits: _GroupCommit) -> None:
        """Send one message and wait until its outcome is committed (the caller holds a slot)."""
        if self._stop_reason is not None or commits.error is not None:
            return  # left in 'sending'; released when the run ends
        try:
            data = self.message_for(row, rcpt)
            sender = self.envelope_for(row) if self.envelope_for is not None else self.envelope_from
            result = await self.transport.send(sender, rcpt.address, data)
        except Exception as exc:
            # A bug, not a reply: stop cleanly (the row is released) and raise from run().
            self._error = self._error or exc
            self.stop("error")
            return
        outcome = self._outcome(row, result, rcpt.address)
        try:
            await commits.record(outcome)
        except Exception as exc:
            # The database refused the commit: stop (run() raises it); the queue keeps draining
            # so the producer is never left waiting on a dead worker.
            self._error = self._error or exc
            self.stop("error")
            return
        self._observed(row.domain, outcome.state, outcome.code, outcome.relay)

    def _observed(self, domain: str, state: OutboxState, code: int | None, relay: str) -> None:
        """Tell the observer (metrics) of a committed outcome; it never stops a send."""
        if self.observer is not None:
            try:
                self.observer.recorded(domain, state, -1 if code is None else code, relay or None)
            except Exception:
                log.exception("the delivery observer failed")

    def _suppressed_callback(self, domain: str) -> Callable[[asyncio.Future[None]], None]:
        def done(f: asyncio.Future[None]) -> None:
            if not f.cancelled() and f.exception() is None:
                self._observed(domain, OutboxState.SUPPRESSED, None, "")
        return done

    def _waited(self, domain: str, seconds: float) -> None:
        if self.observer is not None and seconds > 0:
            with contextlib.suppress(Exception):
                self.observer.waited(domain, seconds)

    def _outcome(self, row: OutboxRow, result: SendResult, recipient: str) -> Outcome:
        now = self.clock()
        age = now - row.created_at if row.created_at is not None else timedelta(0)
        decision = self.classifier.decide(result, attempts=row.attempts, age=age, rand=self.rand(),
                                          domain=row.domain)
        # Decided on the relay's words, stored and logged without any spelling of the address.
        result = replace(result, reply=scrub_reply(result.reply, recipient=recipient))
        if decision.verdict is Verdict.SLOW_DOWN:
            self._slow_down(row.domain)
        elif decision.verdict is Verdict.BLOCKLISTED and decision.family is not None:
            until = now + (decision.retry_in or timedelta(hours=24))
            self._block(decision.family, until, f"{result.code} {result.reply}")
        next_at = now + decision.retry_in if decision.retry_in is not None else None
        if decision.state is not OutboxState.SENT:
            log.debug("subscriber %d: %s %s %s", row.subscriber_id, decision.state.value,
                      result.code, result.reply, extra={
                          "edition_id": row.edition_id, "subscriber_id": row.subscriber_id,
                          "domain": row.domain, "outcome": decision.state.value,
                          "code": result.code, "relay": result.relay})
        return Outcome(row.subscriber_id, decision.state, result.code, result.reply,
                       result.relay, next_at)

    # ------------------------------------------------------------------ provider pace (issue 21)

    def _slow_down(self, domain: str) -> None:
        """A slow-down reply: halve the pace of the domain's lane (if it has a rate)."""
        key = self.domain_limits.key_for(domain) if self.domain_limits else None
        if key is None:
            log.warning("%s asks us to slow down, but [delivery] domain_rates gives it no rate "
                        "to halve: its rows are only deferred", domain)
            return
        limiter = self.domain_limits.limiter(key)
        if limiter.slow_down():
            log.warning("%s asks us to slow down: %.2f messages/s for now (recovering step by "
                        "step)", key, limiter.rate, extra={"domain": key, "rate": limiter.rate})

    def _held_domains(self) -> set[str]:
        now = self.clock()
        return {d for h in self._holds.values() if h.until > now for d in h.domains}

    def _hold_for(self, domain: str) -> _Hold | None:
        now = self.clock()
        for hold in self._holds.values():
            if hold.until > now and family_key(domain, hold.domains) is not None:
                return hold
        return None

    async def _held(self, row: OutboxRow, commits: _GroupCommit) -> bool:
        """Hold ``row`` back (deferred to the hold's end, no attempt counted) if its domain
        waits for a cap window or a blocked provider."""
        hold = self._hold_for(row.domain) if self._holds else None
        if hold is None:
            return False
        self._held_count += 1
        commits.submit(Outcome(row.subscriber_id, OutboxState.DEFERRED, None, hold.reason, "",
                               hold.until, held=True))
        return True

    async def _hold(self, name: str, domains: frozenset[str], until: datetime,
                    reason: str) -> None:
        """Nobody here sends to ``domains`` before ``until``; this edition's waiting rows for
        them are deferred to then (other senders learn it from the cap or the block)."""
        current = self._holds.get(name)
        if current is not None and current.until >= until:
            return
        self._holds[name] = _Hold(domains, until, reason)
        n = await asyncio.to_thread(self.outbox.hold_domains, self._edition_id, domains, until)
        log.warning("%s: %s; %d rows wait until %s", name, reason, n,
                    f"{until:%Y-%m-%d %H:%M} UTC", extra={"domain": name, "held": n})

    async def _take(self, key: str, row: OutboxRow, commits: _GroupCommit) -> bool:
        """One message of ``key``'s hourly and daily caps (a grant from the database, taken a
        few at a time); False, with the row held, once a cap is reached."""
        cap = self.settings.domain_caps.get(key)
        if cap is None:
            return True
        now = self.clock()
        credits = self._credits.get(key)
        if credits is not None and credits.n > 0:
            if credits.hour == hour_start(now):
                credits.n -= 1
                return True
            await asyncio.to_thread(self.budget.give_back, key, credits.n, credits.hour)
            credits.n = 0
        rate = self.domain_limits.limiter(key).rate
        want = max(1, min(20, int(rate) if rate > 0 else 20))
        grant = await asyncio.to_thread(self.budget.take, key, want, cap.per_hour, cap.per_day,
                                        now)
        if grant.granted == 0:
            await self._hold(key, frozenset({key}), grant.reopens or now + timedelta(hours=1),
                             f"{grant.cap} cap of [delivery] domain_rates reached")
            await self._held(row, commits)
            return False
        self._credits[key] = _Credits(grant.granted - 1, grant.hour)
        return True

    async def _give_back(self) -> None:
        for key, credits in self._credits.items():
            if credits.n > 0:
                with contextlib.suppress(Exception):  # a lost grant only tightens the cap
                    await asyncio.to_thread(self.budget.give_back, key, credits.n, credits.hour)
        self._credits = {}

    def _block(self, family: str, until: datetime, reply: str) -> None:
        """A blocklisted reply: stop the whole family now, for every sender (in the database),
        and tell the editors if this is news."""
        fam = self.classifier.providers.get(family)
        if fam is None or family in self._holds:
            return
        reason = f"{fam.label} answered that we are blocklisted ({reply[:200]})"
        self._holds[family] = _Hold(fam.domains, until, reason)
        task = asyncio.create_task(self._record_block(family, fam.domains, until, reason))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _record_block(self, family: str, domains: frozenset[str], until: datetime,
                            reason: str) -> None:
        try:
            new = await asyncio.to_thread(self.budget.block, family, until, reason, self.clock())
            self._holds.pop(family, None)  # _hold sets it again and defers the waiting rows
            await self._hold(family, domains, until, reason)
        except Exception as exc:  # the local hold stands; the next blocklisted reply retries
            log.warning("could not record the block of %s (%s)", family, type(exc).__name__)
            return
        if new and self.on_blocked is not None:
            try:
                await self.on_blocked(family, until, reason)
            except Exception:
                log.exception("could not tell the editors that %s blocks us", family)

    async def _read_blocks(self, every: float = 2.0) -> None:
        """Follow the blocks other senders recorded (every ``every`` seconds)."""
        now = self._monotonic()
        if now - self._blocks_read < every:
            return
        self._blocks_read = now
        for block in await asyncio.to_thread(self.budget.blocks, self.clock()):
            fam = self.classifier.providers.get(block.family)
            domains = fam.domains if fam is not None else frozenset()
            current = self._holds.get(block.family)
            if domains and (current is None or current.until < block.until):
                await self._hold(block.family, domains, block.until, block.reason)

    async def _watch(self, edition_id: int, every: float = 0.5) -> None:
        """Notice a pause or cancel even while the producer waits on a slow domain's lane."""
        while self._stop_reason is None:
            await asyncio.sleep(every)
            state = await asyncio.to_thread(self.outbox.edition_state, edition_id)
            if state in STOP_STATES:
                self.stop(str(state))

    async def _beat(self) -> None:
        assert self.peers is not None
        ttl = timedelta(seconds=3 * self.share_every)
        share = await asyncio.to_thread(self.peers.beat, self.owner, ttl)
        if share != self.share:
            log.info("%d processes are sending: this one paces at 1/%d of each rate", share, share)
            self.share = share
        self.domain_limits.set_share(share)
        set_share = getattr(self.transport, "set_share", None)
        if set_share is not None:
            set_share(share)

    async def _share_rates(self) -> None:
        """Renew our row in ``senders`` and follow the number of live senders."""
        if self.peers is None:
            return
        while True:
            await asyncio.sleep(self.share_every)
            try:
                await self._beat()
            except Exception as exc:  # keep the last share; the next beat tries again
                log.warning("could not renew the sender row (%s)", type(exc).__name__)

    async def _renew(self, edition_id: int) -> None:
        period = max(self.lease.total_seconds() / 3, 0.05)
        while True:
            await asyncio.sleep(period)
            await asyncio.to_thread(self.outbox.renew, edition_id, self.owner, self.lease)

    # ------------------------------------------------------------------ called by _GroupCommit

    def _commit(self, edition_id: int, owner: str, outcomes: Sequence[Outcome],
                conn: Connection | None = None) -> None:
        """Runs in the commit thread: one transaction, then the bounce callback per bad address."""
        self.outbox.record(edition_id, owner, outcomes, conn=conn)
        if self.on_bounce is not None:
            for o in outcomes:
                if o.state is OutboxState.BOUNCED:
                    try:
                        self.on_bounce(o.subscriber_id)
                    except Exception:
                        log.exception("could not suppress bounced subscriber %d", o.subscriber_id)

    def _tally(self, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            if o.held:
                continue  # not an attempt: counted in ``held``
            self._counts[o.state] += 1
            if o.relay:
                self._by_relay[o.relay] = self._by_relay.get(o.relay, 0) + 1
        self.progress.update(self._counts)
