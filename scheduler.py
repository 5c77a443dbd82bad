"""The scheduler daemon: APScheduler 3 on asyncio, its job store in the project's database.

It only wires the pipeline's pieces to a timetable:

* ``poll``     every ``schedule.poll_every``: fetch the feeds; in per-post mode new posts become
               editions, each due after ``schedule.hold``;
* ``digest``   the cron ``schedule.digest`` read in ``schedule.timezone`` (DST-correct because the
               trigger works in that zone, not in UTC);
* ``tick``     every 30 s, and ``edition:<id>`` at each edition's own time: send what is due,
               hold what is unapproved, mark missed what is too late;
* ``retry``    every ``schedule.retry_every``: editions with deferred deliveries whose time came
               are sent again (the outbox hands out only those rows);
* ``mirrors``  every ``schedule.mirror_check_every``: mirror health checks.

Jobs live in a ``SQLAlchemyJobStore`` (table ``scheduler_jobs``) so a restart keeps the timetable
and can tell a send that is merely late from one that was missed. A stored job holds a function
reference and at most an edition id: never an address.

One daemon per database: a ``DatabaseLock`` (advisory lock on PostgreSQL, a row lease on SQLite).
SIGTERM/SIGINT stop scheduling, let in-flight sends finish, and leave every row in a known state;
SIGHUP reloads the config (schedule, feeds, mirrors).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from mailer import pipeline
from mailer.app import App
from mailer.config import Config, load_config
from mailer.db import open_engine
from mailer.editions.notify import Notifier
from mailer.editions.runner import (
    DAEMON_PAUSE_REASON,
    process_due,
    resume_after_stop,
    short_delta,
)
from mailer.editions.store import Decision
from mailer.errors import ConfigError, EditionError, LockError, NewsletterError
from mailer.lock import DAEMON_LOCK, DatabaseLock
from mailer.models import EditionState

__all__ = [
    "JOBS_TABLE",
    "LOCK_NAME",
    "Actions",
    "Daemon",
    "crontab_trigger",
    "describe_time",
    "next_fire_times",
]

log = logging.getLogger("newsletter.scheduler")

LOCK_NAME = DAEMON_LOCK  # kept for callers that know the daemon by this name
JOBS_TABLE = "scheduler_jobs"
TICK_EVERY = timedelta(seconds=30)
EDITION_JOB = "edition:"

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


# --------------------------------------------------------------------------- pure timetable helpers


def _crontab_dow(field_text: str) -> str:
    """Crontab counts weekdays from Sunday = 0 (and 7); APScheduler 3 from Monday = 0.

    ``from_crontab`` passes numbers through unchanged, so ``1-5`` would mean Tuesday to Saturday.
    We turn numbers into names, which both read the same way.
    """
    parts = []
    for part in field_text.split(","):
        body, slash, step = part.partition("/")
        names = "-".join(_DAYS[int(x)] if x.isdigit() else x for x in body.split("-"))
        parts.append(names + slash + step)
    return ",".join(parts)


def crontab_trigger(expr: str, timezone: str) -> CronTrigger:
    """A trigger for a 5-field crontab read in ``timezone`` (08:00 stays 08:00 across DST)."""
    fields = expr.split()
    if len(fields) != 5:
        raise ConfigError(f"{expr!r} is not a 5-field cron expression", key="schedule.digest")
    minute, hour, day, month, dow = fields
    try:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_crontab_dow(dow), timezone=ZoneInfo(timezone))
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{expr!r}: {exc}", key="schedule.digest") from None


def next_fire_times(expr: str, timezone: str, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` digest times strictly after ``after``, aware, in ``timezone``."""
    trigger = crontab_trigger(expr, timezone)
    out: list[datetime] = []
    previous: datetime | None = None
    now = after + timedelta(microseconds=1)
    while len(out) < count:
        nxt = trigger.get_next_fire_time(previous, now)
        if nxt is None:
            break
        out.append(nxt)
        previous, now = nxt, nxt + timedelta(microseconds=1)
    return out


def describe_time(at: datetime, timezone: str) -> str:
    """``2026-11-24 08:00 CST (Asia/Shanghai) = 2026-11-24 00:00 UTC``: editors read both."""
    local = at.astimezone(ZoneInfo(timezone))
    utc = at.astimezone(UTC)
    return (f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({timezone}) = "
            f"{utc:%Y-%m-%d %H:%M} UTC")


# --------------------------------------------------------------------------- what the jobs do

SendFn = Callable[[App, int, asyncio.Event], Awaitable[object]]
AppFn = Callable[[App], Awaitable[object]]


async def default_poll(app: App) -> object:
    return await pipeline.poll(app)


async def default_send(app: App, edition_id: int, stop: asyncio.Event) -> object:
    """``mailer.pipeline.send_edition`` with the daemon's ``stop``: finish in flight, claim no more."""
    return await pipeline.send_edition(app, edition_id, stop=stop)


async def default_check_mirrors(app: App) -> object:
    return await app.mirrors.check()


@dataclass(frozen=True)
class Actions:
    """The pipeline steps the daemon drives. Tests and the CLI assemble the real ones."""

    poll: AppFn = default_poll
    send: SendFn = default_send
    check_mirrors: AppFn = default_check_mirrors


# The timetable's own jobs (edition jobs are named per edition).
_TIMETABLE_JOBS = ("poll", "tick", "retry", "mirrors", "digest", "retention", "mailin")

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
    # Operators rotate mirrors by editing the config: pick that up without a restart or SIGHUP.
    daemon.app.mirrors.reload_if_changed(daemon.app.config.path)
    await daemon.process_due()


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


# --------------------------------------------------------------------------- the daemon


def _has_work(app: App, edition_id: int, now: datetime) -> bool:
    """Rows a sender could take now: queued, deferred and due, or leased by a sender long gone.

    An edition with no rows at all was interrupted before its recipients were enqueued.
    """
    from sqlalchemy import and_, func, or_, select

    from mailer.schema import outbox

    c = outbox.c
    with app.engine.connect() as conn:
        total, ready = conn.execute(
            select(func.count(),
                   func.count().filter(or_(
                       c.state == "queued",
                       and_(c.state == "deferred", c.next_attempt_at <= now),
                       and_(c.state == "sending", c.lease_expires_at < now))))
            .where(c.edition_id == edition_id)
        ).one()
    return bool(ready) or not total


def _class_add(loop: asyncio.AbstractEventLoop, sig: int, callback: Callable[..., object],
               *args: object) -> None:
    """The loop class's own method, past any instance-level wrapper (see ``_share_signals``)."""
    type(loop).add_signal_handler(loop, sig, callback, *args)


def _class_remove(loop: asyncio.AbstractEventLoop, sig: int) -> bool:
    return type(loop).remove_signal_handler(loop, sig)


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
        self.lock = DatabaseLock(self.app.engine, LOCK_NAME, self.owner, self.app.clock,
                                 self.lock_lease)
        self.notifier = Notifier.for_app(self.app)
        self.stop_event = asyncio.Event()
        self.stopping = False
        self._inflight: set[asyncio.Task[object]] = set()
        self._sending: set[int] = set()
        self._scheduler: AsyncIOScheduler | None = None
        self.started = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    @property
    def config(self) -> Config:
        return self.app.config

    @property
    def tz(self) -> str:
        return self.config.schedule.timezone

    async def run(self) -> None:
        """Take the lock (or wait as standby), run the timetable, stop gracefully."""
        global _running
        if _running is not None:
            raise RuntimeError("a daemon is already running in this process")
        loop = asyncio.get_running_loop()
        self._install_signal_handlers()
        if self.install_signals:
            self._share_signals(loop)
        try:
            if not await self._take_lock():
                return
            _running = self
            try:
                await self._serve()
            finally:
                _running = None
                self.lock.release()
                log.info("stopped; the database lock is released")
        finally:
            if self.install_signals:
                self._unshare_signals(loop)

    def _install_signal_handlers(self) -> None:
        """Ours again: the delivery engine installs its own during a send and removes them after."""
        if not self.install_signals:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            _class_add(loop, sig, self.request_stop)
        _class_add(loop, signal.SIGHUP, self.reload)

    def _share_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let the delivery engine and the daemon both hear SIGTERM/SIGINT.

        During a send the engine installs its own handler (finish the messages in flight, record
        them, release the rest) and removes it afterwards, which would leave the daemon deaf or
        the process with the default, abrupt action. So on this loop, a handler someone else
        installs for those signals also stops the daemon, and removing it reinstates ours.
        """

        def add(sig: int, callback: Callable[..., object], *args: object) -> None:
            if sig in (signal.SIGTERM, signal.SIGINT) and callback != self.request_stop:
                def both(*a: object) -> None:
                    callback(*a)
                    self.request_stop()

                _class_add(loop, sig, both, *args)
            else:
                _class_add(loop, sig, callback, *args)

        def remove(sig: int) -> bool:
            removed = _class_remove(loop, sig)
            if sig in (signal.SIGTERM, signal.SIGINT) and _running is self:
                _class_add(loop, sig, self.request_stop)
            return removed

        setattr(loop, "add_signal_handler", add)  # noqa: B010  (instance-level, undone on exit)
        setattr(loop, "remove_signal_handler", remove)  # noqa: B010

    def _unshare_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for name in ("add_signal_handler", "remove_signal_handler"):
            loop.__dict__.pop(name, None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            _class_remove(loop, sig)

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: schedule nothing new; in-flight sends finish; then exit."""
        if not self.stopping:
            log.info("stopping: no new jobs; waiting for %d in-flight task(s)",
                     len(self._inflight))
        self.stopping = True
        self.stop_event.set()
        for eid in sorted(self._sending):
            # The delivery engine checks the edition's state between batches: paused, it claims
            # no more rows, and the ones in flight finish with their replies recorded.
            try:
                self.app.editions.set_state(eid, EditionState.PAUSED, DAEMON_PAUSE_REASON)
                log.info("edition %d paused until the daemon starts again", eid)
            except EditionError as exc:
                log.info("%s", exc)
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.pause()

    async def _take_lock(self) -> bool:
        if self.lock.acquire(wait=False):
            log.info("holding the database lock %r as %s", LOCK_NAME, self.lock.owner)
            return True
        holder = self.lock.holder()
        who = holder.owner if holder else "another process"
        if not self.standby:
            raise LockError(f"another daemon ({who}) is already running on this database; "
                            f"stop it first, or start this one with --standby")
        log.info("standby: another daemon (%s) holds the database lock; waiting to take over", who)
        acquire = asyncio.ensure_future(self.lock.acquire_async(wait=True))
        stopped = asyncio.ensure_future(self.stop_event.wait())
        await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if acquire.done() and acquire.result():
            stopped.cancel()
            log.info("took over the database lock %r as %s", LOCK_NAME, self.lock.owner)
            return True
        acquire.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquire
        self.lock.release()
        return False

    async def _serve(self) -> None:
        grace = int(self.config.schedule.misfire_grace.total_seconds())
        scheduler = AsyncIOScheduler(
            # Its own engine: the job store disposes it on shutdown, which must not pull the
            # pool from under the lock's session or the pipeline's connections.
            jobstores={"default": SQLAlchemyJobStore(
                engine=open_engine(self.config.storage.database, create=False),
                tablename=JOBS_TABLE)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": grace},
            timezone=ZoneInfo(self.tz),
        )
        scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        self._scheduler = scheduler
        # Paused first: the stored timetable is reconciled with the config before anything fires.
        scheduler.start(paused=True)
        heartbeat = asyncio.ensure_future(self._heartbeat())
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
            transport = self.app.__dict__.get("transport")
            if transport is not None:  # close the relay connections politely (QUIT)
                with contextlib.suppress(Exception):
                    await transport.aclose()

    async def _heartbeat(self) -> None:
        every = max(self.lock.lease.total_seconds() / 3, 0.2)
        while True:
            await asyncio.sleep(every)
            try:
                # In a thread: on a busy SQLite file a write may wait out busy_timeout, and the
                # event loop (and the sends on it) must not wait with it.
                await asyncio.to_thread(self.lock.heartbeat)
            except LockError as exc:
                log.error("%s; stopping so that two daemons never act at once", exc)
                self.request_stop()
                return
            except Exception as exc:
                log.warning("lock heartbeat failed (%s); will retry", type(exc).__name__)

    def reload(self) -> None:
        """SIGHUP: read the config again; keep the old one if the new one is wrong."""
        try:
            new = load_config(self.config.path, self.app.environ)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        if new.storage != self.config.storage:
            log.warning("[storage] changed: restart the daemon for that to take effect")
            new = dataclasses.replace(new, storage=self.config.storage)
        if new.delivery != self.config.delivery and "transport" in self.app.__dict__:
            # The open relay pool keeps its settings; a restart rebuilds it.
            log.warning("[delivery] changed: restart the daemon for relays to change")
        self.app.config = new
        self.app.__dict__.pop("editions", None)  # require_approval may have changed
        # The registry validates [mirrors] itself and keeps the last good set when that fails.
        self.app.mirrors.reload(new.path)
        self.notifier = Notifier.for_app(self.app)
        if self._scheduler is not None:
            self._install_jobs()
        log.info("reloaded %s", new.path)
        self.log_next()

    # ------------------------------------------------------------------ timetable

    def _install_jobs(self) -> None:
        """Put the config's timetable in the store, keeping stored jobs whose spec is unchanged.

        A job re-added unchanged would lose its stored next run time, and with it the daemon's
        knowledge that a digest was due while it was down.
        """
        sched = self._scheduler
        assert sched is not None
        s = self.config.schedule
        wanted: dict[str, tuple[Callable[..., Coroutine[Any, Any, None]], Any, str, bool]] = {
            "poll": (job_poll, IntervalTrigger(seconds=s.poll_every.total_seconds()),
                     f"every {s.poll_every}", False),
            "tick": (job_tick, IntervalTrigger(seconds=TICK_EVERY.total_seconds()),
                     f"every {TICK_EVERY}", False),
            "retry": (job_retry, IntervalTrigger(seconds=s.retry_every.total_seconds()),
                      f"every {s.retry_every}", False),
            "mirrors": (job_mirrors,
                        IntervalTrigger(seconds=s.mirror_check_every.total_seconds()),
                        f"every {s.mirror_check_every}", False),
        }
        if self.config.newsletter.mode == "digest":
            wanted["digest"] = (job_digest, crontab_trigger(s.digest, s.timezone),
                                f"cron {s.digest} {s.timezone}, grace {s.misfire_grace}", True)
        wanted["retention"] = (job_retention, IntervalTrigger(days=1), "daily", False)
        if self.config.web.unsubscribe_maildir is not None:
            wanted["mailin"] = (job_mailin, IntervalTrigger(seconds=TICK_EVERY.total_seconds()),
                                f"every {TICK_EVERY}", False)
        for job in sched.get_jobs():
            if job.id in _TIMETABLE_JOBS and job.id not in wanted:
                job.remove()
        for job_id, (fn, trigger, spec, strict) in wanted.items():
            existing = sched.get_job(job_id)
            if existing is not None and existing.kwargs.get("spec") == spec:
                continue
            # Interval jobs run once when late (coalesced); the digest obeys the grace period.
            extra: dict[str, Any] = {"misfire_grace_time": (
                int(s.misfire_grace.total_seconds()) if strict else None)}
            if job_id in ("poll", "retention", "mailin") and existing is None:
                extra["next_run_time"] = datetime.now(UTC)  # a fresh daemon starts with these
            sched.add_job(fn, trigger, id=job_id, name=job_id, kwargs={"spec": spec},
                          replace_existing=True, **extra)
            log.info("timetable: %s %s", job_id, spec)
        self._sync_edition_jobs()

    def _sync_edition_jobs(self) -> None:
        """One date job per scheduled edition, so it goes out at its minute, not the next tick."""
        sched = self._scheduler
        if sched is None:
            return
        upcoming = {f"{EDITION_JOB}{i.id}": i for i in self.app.editions.upcoming(self.app.clock())}
        for job in sched.get_jobs():
            if job.id.startswith(EDITION_JOB) and job.id not in upcoming:
                job.remove()
        for job_id, info in upcoming.items():
            assert info.scheduled_at is not None
            existing = sched.get_job(job_id)
            if existing is not None and existing.next_run_time == info.scheduled_at:
                continue
            sched.add_job(job_edition, DateTrigger(run_date=info.scheduled_at), id=job_id,
                          name=job_id, kwargs={"edition_id": info.id},
                          replace_existing=True, misfire_grace_time=None)

    def next_runs(self) -> dict[str, datetime]:
        """Job id -> next run time, for the log line and for tests."""
        sched = self._scheduler
        if sched is None:
            return {}
        return {j.id: j.next_run_time for j in sched.get_jobs() if j.next_run_time is not None}

    def log_next(self) -> None:
        """Say what happens next: the next poll, and the next send with its local time."""
        runs = self.next_runs()
        if "poll" in runs:
            log.info("next poll: %s", describe_time(runs["poll"], self.tz))
        upcoming = self.app.editions.upcoming(self.app.clock())
        if upcoming and upcoming[0].scheduled_at is not None:
            log.info("next send: edition %d at %s", upcoming[0].id,
                     describe_time(upcoming[0].scheduled_at, self.tz))
        if "digest" in runs:
            log.info("next digest: %s", describe_time(runs["digest"], self.tz))
        elif not upcoming:
            log.info("next send: none scheduled (mode %s)", self.config.newsletter.mode)

    # ------------------------------------------------------------------ job bodies

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
            return None
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
        if self.config.newsletter.mode == "per-post":
            self._per_post_editions()
        await self._process_due()
        self.log_next()
        return result

    def _per_post_editions(self) -> list[int]:
        """Per-post mode: each new post becomes its own edition, due after ``schedule.hold``."""
        store = self.app.editions
        created = []
        for post_id in reversed(store.unsent_post_ids()):  # oldest first
            eid = store.create([post_id], kind="per-post")
            if eid is None:
                continue
            store.schedule(eid, self.app.clock() + self.config.schedule.hold, allow_past=True)
            created.append(eid)
            log.info("post %d: edition %d, due %s", post_id, eid,
                     describe_time(self.app.clock() + self.config.schedule.hold, self.tz))
        if created:
            self._sync_edition_jobs()
        return created

    async def digest(self) -> None:
        await self._guard("digest", self._digest())

    async def _digest(self) -> object:
        store = self.app.editions
        eid = store.create(kind="digest")
        if eid is None:
            log.info("digest time: no new posts, so no edition")
        else:
            store.schedule(eid, self.app.clock(), allow_past=True)
            log.info("digest time: edition %d with %d post(s)", eid, len(store.info(eid).post_ids))
        await self._process_due()
        self.log_next()
        return eid

    async def process_due(self) -> None:
        await self._guard("tick", self._process_due())

    async def _process_due(self) -> list[tuple[int, Decision]]:
        """The shared policy (``mailer.editions.runner``): send, hold, or mark missed; then
        carry on with editions left sending (resumed by an editor, or interrupted)."""
        done = await process_due(self.app, self._send, self.notifier,
                                 should_stop=lambda: self.stopping)
        self._sync_edition_jobs()
        await self._carry_on()
        return done

    async def _send(self, edition_id: int) -> None:
        if edition_id in self._sending:  # a tick and a date job can both find it due
            return
        store = self.app.editions
        info = store.info(edition_id)
        if info.state in (EditionState.SCHEDULED, EditionState.APPROVED, EditionState.DRAFT):
            store.set_state(edition_id, EditionState.SENDING)
        self._sending.add(edition_id)
        log.info("sending edition %d", edition_id)
        try:
            await self.actions.send(self.app, edition_id, self.stop_event)
        finally:
            self._sending.discard(edition_id)
            self._install_signal_handlers()
        log.info("edition %d is %s", edition_id, store.info(edition_id).state)

    async def _startup(self) -> None:
        """Editions interrupted by the last stop carry on; those that came due meanwhile go."""
        await self._resume_interrupted()
        await self._process_due()

    async def _resume_interrupted(self) -> None:
        """Editions left sending by a stop or crash carry on; the outbox keeps them exactly-once."""
        resumed = set(resume_after_stop(self.app))
        for info in self.app.editions.find([EditionState.SENDING]):
            if self.stopping:
                return
            how = "stopped" if info.id in resumed else "interrupted"
            log.info("resuming edition %d, %s while sending", info.id, how)
            await self._guard(f"edition {info.id}", self._send_and_report(info.id))

    async def _send_and_report(self, edition_id: int) -> None:
        await self._send(edition_id)
        info = self.app.editions.info(edition_id)
        if info.state is EditionState.SENT:
            await self.notifier.sent(info)

    async def retry(self) -> None:
        await self._guard("retry", self._carry_on())

    async def _carry_on(self) -> list[int]:
        """Editions still sending that this daemon is not sending: pick them up again.

        That covers deferred rows whose time came (the ``retry`` job), an edition an editor
        resumed, and rows a dead sender left leased. The outbox hands each row to one sender,
        so a ``newsletter worker`` busy with the same edition is no problem.
        """
        retried = []
        now = self.app.clock()
        for info in self.app.editions.find([EditionState.SENDING]):
            if self.stopping or info.id in self._sending:
                continue
            if not _has_work(self.app, info.id, now):
                continue
            log.info("edition %d: sending what is left (queued, due for retry, or orphaned)",
                     info.id)
            await self._send_and_report(info.id)
            retried.append(info.id)
        return retried

    async def check_mirrors(self) -> None:
        await self._guard("mirrors", self.actions.check_mirrors(self.app))

    async def mailin(self) -> None:
        """Unsubscribe the readers who asked by mail (``[web] unsubscribe_maildir``)."""
        if self.config.web.unsubscribe_maildir is not None:
            await self._guard("mailin", asyncio.to_thread(pipeline.unsubscribe_by_mail, self.app))

    async def retention(self) -> None:
        """Erase readers suppressed for longer than ``forget_suppressed_after``."""
        await self._guard("retention", asyncio.to_thread(self.app.signup.expire))  # pending rows
        age = self.config.storage.forget_suppressed_after
        if age is None:
            return
        n = await self._guard("retention",
                              asyncio.to_thread(self.app.subscribers.forget_suppressed, age))
        if n:
            log.info("retention: forgot %s readers suppressed for more than %s", n, age)

    def _on_missed(self, event: JobExecutionEvent) -> None:
        """APScheduler skipped a run beyond the grace period: a digest becomes a missed edition."""
        if event.job_id != "digest" or self.stopping:
            return
        when: datetime = event.scheduled_run_time
        store = self.app.editions
        eid = store.create(kind="digest")
        late = self.app.clock() - when
        if eid is None:
            log.warning("digest of %s missed (%s late); there were no new posts",
                        describe_time(when, self.tz), short_delta(late))
            return
        store.schedule(eid, when, allow_past=True)
        store.set_state(eid, EditionState.MISSED,
                        f"digest due {when.isoformat()}: the daemon was not running; "
                        f"{short_delta(late)} late, beyond the grace period")
        log.warning("digest edition %d missed: due %s, %s late; not sent",
                    eid, describe_time(when, self.tz), short_delta(late))
        task = asyncio.ensure_future(self.notifier.missed(store.info(eid)))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

