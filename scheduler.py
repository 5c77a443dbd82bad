"""The scheduler daemon: the timetable and the process lifecycle, nothing else.

APScheduler 3 on asyncio runs the jobs of ``mailer.timetable`` (poll, digest, tick, keys,
retry, mirrors, retention, mailin: the inbound Maildir) and one ``edition:<id>`` date job per
scheduled edition; every job body is a ``mailer.pipeline`` function. Jobs live in a ``SQLAlchemyJobStore`` (table
``scheduler_jobs``) so a restart keeps the timetable and can tell a send that is merely late
from one that was missed; a stored job holds a function reference and at most an edition id.

One daemon per database (``DatabaseLock``). The daemon owns the signals: SIGTERM/SIGINT stop
scheduling, let in-flight sends finish and leave every row in a known state; SIGHUP re-reads
the config, and so does the 30 s tick when the file changed (mirrors only).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from mailer.app import App
from mailer.config import Config
from mailer.editions.notify import Notifier
from mailer.errors import NewsletterError
from mailer.lock import DAEMON_LOCK, DatabaseLock, keep_alive, take_or_wait
from mailer.models import EditionState
from mailer.pipeline import policy
from mailer.pipeline.policy import describe_time
from mailer.timetable import crontab_trigger, install, make_scheduler, next_fire_times, sync_editions, timetable

__all__ = ["JOBS_TABLE", "LOCK_NAME", "Actions", "Daemon", "crontab_trigger", "describe_time",
           "next_fire_times"]

log = logging.getLogger("newsletter.scheduler")

LOCK_NAME = DAEMON_LOCK  # kept for callers that know the daemon by this name
JOBS_TABLE = "scheduler_jobs"
EDITION_JOB = "edition:"

SendFn = Callable[[App, int, asyncio.Event], Awaitable[object]]
AppFn = Callable[[App], Awaitable[object]]


@dataclass(frozen=True)
class Actions:
    """The pipeline steps the daemon drives. Tests and the CLI assemble the real ones."""

    poll: AppFn = policy.poll
    send: SendFn = policy.send_with_stop
    check_mirrors: AppFn = policy.check_mirrors


# Jobs in the store refer to these module-level functions by name ("scheduler:job_poll"); they
# find the running daemon here. One daemon per process, by construction.
_running: Daemon | None = None


def _daemon() -> Daemon:
    if _running is None:
        raise RuntimeError("no daemon is running in this process")
    return _running


async def job_poll(**_: object) -> None:
    await _daemon().poll()


async def job_digest(**_: object) -> None:
    await _daemon().digest()


async def job_tick(**_: object) -> None:
    daemon = _daemon()
    # Operators rotate mirrors by editing the file: pick that up without a restart or SIGHUP.
    daemon.app.reload_mirrors_if_changed()
    await daemon.process_due()


async def job_keys(**_: object) -> None:
    _daemon().app.refresh_keys()


async def job_edition(edition_id: int, **_: object) -> None:
    await _daemon().process_due()


async def job_retry(**_: object) -> None:
    await _daemon().retry()


async def job_mirrors(**_: object) -> None:
    await _daemon().check_mirrors()


async def job_retention(**_: object) -> None:
    await _daemon().retention()


async def job_mailin(**_: object) -> None:
    await _daemon().mailin()


_JOBS: dict[str, Callable[..., Coroutine[Any, Any, None]]] = {
    "poll": job_poll, "tick": job_tick, "keys": job_keys, "retry": job_retry, "mirrors": job_mirrors,
    "digest": job_digest, "retention": job_retention, "mailin": job_mailin,
}


@dataclass
class Daemon:
    """One scheduler process. ``await run()`` until a signal or ``request_stop()``."""

    app: App
    actions: Actions = field(default_factory=Actions)
    standby: bool = False
    owner: str | None = None
    install_signals: bool = True
    lock_lease: timedelta = timedelta(seconds=30)

    def __post_init__(self) -> None:
        self.lock = DatabaseLock(self.app.engine, LOCK_NAME, self.owner, self.app.clock, self.lock_lease)
        self.notifier = Notifier.for_app(self.app)
        self.stop_event = asyncio.Event()
        self.stopping = False
        self._inflight: set[asyncio.Task[object]] = set()
        self._sending: set[int] = set()
        self._scheduler: AsyncIOScheduler | None = None
        self.started = asyncio.Event()

    @property
    def config(self) -> Config:
        return self.app.config

    async def run(self) -> None:
        """Take the lock (or wait as standby), run the timetable, stop gracefully."""
        global _running
        if _running is not None:
            raise RuntimeError("a daemon is already running in this process")
        loop = asyncio.get_running_loop()
        signals = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP] if self.install_signals else []
        for sig in signals:
            loop.add_signal_handler(sig, self.reload if sig == signal.SIGHUP else self.request_stop)
        try:
            if not await take_or_wait(self.lock, standby=self.standby, stopped=self.stop_event):
                return
            _running = self
            try:
                await self._serve()
            finally:
                _running = None
                self.lock.release()
                log.info("stopped; the database lock is released")
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: schedule nothing new; in-flight sends finish; then exit."""
        if not self.stopping:
            log.info("stopping: no new jobs; waiting for %d in-flight task(s)", len(self._inflight))
        self.stopping = True
        self.stop_event.set()
        policy.pause_for_stop(self.app, self._sending)
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.pause()

    async def _serve(self) -> None:
        scheduler = self._scheduler = make_scheduler(self.config, JOBS_TABLE)
        scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        # Paused first: the stored timetable is reconciled with the config before anything fires.
        scheduler.start(paused=True)
        heartbeat = asyncio.ensure_future(keep_alive(self.lock, self.request_stop))
        try:
            self._install_jobs()
            if not self.stopping:
                scheduler.resume()
            # In the background, tracked like a job: a shutdown waits for it, a signal stops it.
            startup = asyncio.ensure_future(self._guard("startup", self._startup()))
            self.log_next()
            self.started.set()
            await self.stop_event.wait()
            scheduler.pause()
            await startup
            if self._inflight:
                log.info("waiting for %d in-flight task(s) to finish", len(self._inflight))
                await asyncio.gather(*self._inflight, return_exceptions=True)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # shutdown runs via call_soon
            self._scheduler = None
            with contextlib.suppress(Exception):  # the relay connections politely (QUIT)
                await self.app.close_transports()

    def reload(self) -> None:
        """SIGHUP: read the config again (once); keep the old one if the new one is wrong."""
        if not self.app.reload_config():
            return
        self.notifier = Notifier.for_app(self.app)
        if self._scheduler is not None:
            self._install_jobs()
        log.info("reloaded %s", self.config.path)
        self.log_next()

    def _install_jobs(self) -> None:
        assert self._scheduler is not None
        install(self._scheduler, timetable(self.config), _JOBS,
                int(self.config.schedule.misfire_grace.total_seconds()))
        self._sync_edition_jobs()

    def _sync_edition_jobs(self) -> None:
        """One date job per scheduled edition, so it goes out at its minute, not the next tick."""
        if self._scheduler is not None:
            sync_editions(self._scheduler, self.app.editions.upcoming(self.app.clock()),
                          job_edition)

    def next_runs(self) -> dict[str, datetime]:
        """Job id -> next run time, for the log line and for tests."""
        sched = self._scheduler
        if sched is None:
            return {}
        return {j.id: j.next_run_time for j in sched.get_jobs() if j.next_run_time is not None}

    def log_next(self) -> None:
        """Say what happens next: the next poll, and the next send with its local time."""
        for line in policy.whats_next(self.app, self.next_runs()):
            log.info("%s", line)

    async def _guard(self, name: str, coro: Awaitable[object]) -> object:
        """Run a job body as a tracked task that a shutdown waits for and never cancels."""
        if self.stopping:
            if inspect.iscoroutine(coro):
                coro.close()
            return None
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        try:
            return await asyncio.shield(task)
        except NewsletterError as exc:
            log.error("%s failed: %s", name, exc)
        except Exception:  # a bug in one job must not take the daemon down; it is logged
            log.exception("%s failed", name)
        return None

    async def poll(self) -> None:
        await self._guard("poll", self._poll())

    async def _poll(self) -> object:
        result = await self.actions.poll(self.app)
        new = getattr(result, "new", None)
        if new is not None:
            log.info("polled: %d new post(s)", new)
        if self.config.newsletter.mode == "per-post" and policy.per_post_editions(self.app):
            self._sync_edition_jobs()
        await self._process_due()
        self.log_next()
        return result

    async def digest(self) -> None:
        await self._guard("digest", self._digest())

    async def _digest(self) -> object:
        eid = policy.digest_now(self.app)
        await self._process_due()
        self.log_next()
        return eid

    async def process_due(self) -> None:
        await self._guard("tick", self._process_due())

    async def _process_due(self) -> object:
        """Send, hold, or mark missed what is due; then carry on with editions left sending."""
        done = await policy.process_due(self.app, self._send, self.notifier, should_stop=lambda: self.stopping)
        self._sync_edition_jobs()
        await self._carry_on()
        return done

    async def _send(self, edition_id: int) -> None:
        if edition_id in self._sending:  # a tick and a date job can both find it due
            return
        store = self.app.editions
        before = store.info(edition_id).state
        if before in (EditionState.SCHEDULED, EditionState.APPROVED, EditionState.DRAFT):
            store.set_state(edition_id, EditionState.SENDING)
        self._sending.add(edition_id)
        log.info("sending edition %d%s", edition_id, " (rows added since it was sent)"
                 if before is EditionState.SENT else "")
        try:
            await self.actions.send(self.app, edition_id, self.stop_event)
        finally:
            self._sending.discard(edition_id)
        log.info("edition %d is %s", edition_id, store.info(edition_id).state)

    async def _startup(self) -> None:
        """Editions interrupted by the last stop carry on; then those that came due meanwhile."""
        async def one(eid: int) -> None:
            await self._guard(f"edition {eid}", self._send(eid))

        await policy.resume_interrupted(self.app, one, should_stop=lambda: self.stopping)
        if not self.stopping:
            await self._process_due()

    async def retry(self) -> None:
        await self._guard("retry", self._carry_on())

    async def _carry_on(self) -> list[int]:
        stop = lambda: self.stopping  # noqa: E731
        return await policy.carry_on(self.app, self._send, busy=self._sending, should_stop=stop)

    async def check_mirrors(self) -> None:
        await self._guard("mirrors", self.actions.check_mirrors(self.app))

    async def mailin(self) -> None:
        """Bounces, complaints and readers' commands by mail (``[inbound] maildir``)."""
        if self.config.inbound_maildir is not None:
            await self._guard("mailin", policy.inbound(self.app))

    async def retention(self) -> None:
        await self._guard("retention", asyncio.to_thread(policy.forget_suppressed, self.app))

    def _on_missed(self, event: JobExecutionEvent) -> None:
        """APScheduler skipped a run beyond the grace period: a digest becomes a missed edition."""
        if event.job_id != "digest" or self.stopping:
            return
        info = policy.missed_digest(self.app, event.scheduled_run_time)
        if info is None:
            return
        task = asyncio.ensure_future(self.notifier.missed(info))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
