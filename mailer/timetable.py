"""The daemon's timetable as data: which jobs the config asks for, with their triggers.

:func:`timetable` is pure: a config in, job specs out (APScheduler triggers read in
``schedule.timezone``, so 08:00 stays 08:00 across DST). :func:`install` and
:func:`sync_editions` reconcile a running APScheduler with it; ``scheduler.py`` maps each job
id to its function and owns the process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from mailer.config import Config
from mailer.db import open_engine
from mailer.editions.store import EditionInfo
from mailer.errors import ConfigError

__all__ = ["EDITION_JOB", "TICK_EVERY", "TIMETABLE_JOBS", "JobSpec", "crontab_trigger", "install",
           "make_scheduler", "next_fire_times", "sync_editions", "timetable"]

EDITION_JOB = "edition:"
JobFn = Callable[..., Coroutine[Any, Any, None]]

log = logging.getLogger("newsletter.scheduler")

TICK_EVERY = timedelta(seconds=30)
# The timetable's own jobs (edition jobs are named per edition).
TIMETABLE_JOBS = ("poll", "tick", "keys", "retry", "mirrors", "digest", "retention", "mailin")

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


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


@dataclass(frozen=True)
class JobSpec:
    """One timetable job. ``spec`` is stored with the job: unchanged, the stored job (and its
    next run time) is kept. ``strict``: obeys the misfire grace (the digest); others coalesce.
    ``start_now``: a fresh daemon runs it at once."""

    trigger: Any
    spec: str
    strict: bool = False
    start_now: bool = False


def timetable(config: Config) -> dict[str, JobSpec]:
    """The jobs ``config`` asks for, by id."""
    s = config.schedule

    def every(period: timedelta, **kw: bool) -> JobSpec:
        return JobSpec(IntervalTrigger(seconds=period.total_seconds()), f"every {period}", **kw)

    jobs = {
        "poll": every(s.poll_every, start_now=True),
        "tick": every(TICK_EVERY),
        "keys": every(config.storage.key_reload_every),  # follow ``keys rotate``
        "retry": every(s.retry_every),
        "mirrors": every(s.mirror_check_every),
    }
    if config.newsletter.mode == "digest":
        jobs["digest"] = JobSpec(crontab_trigger(s.digest, s.timezone),
                                 f"cron {s.digest} {s.timezone}, grace {s.misfire_grace}",
                                 strict=True)
    # Daily: pending sign-ups expire, and suppressed readers are forgotten when configured.
    jobs["retention"] = JobSpec(IntervalTrigger(days=1), "daily", start_now=True)
    if config.inbound_maildir is not None:  # mail that comes back (mailer.pipeline.inbound)
        jobs["mailin"] = every(TICK_EVERY, start_now=True)
    return jobs


def make_scheduler(config: Config, table: str) -> AsyncIOScheduler:
    """APScheduler on asyncio, its jobs in ``table`` of the project's database."""
    grace = int(config.schedule.misfire_grace.total_seconds())
    return AsyncIOScheduler(
        # Its own engine: the job store disposes it on shutdown, which must not pull the
        # pool from under the lock's session or the pipeline's connections.
        jobstores={"default": SQLAlchemyJobStore(
            engine=open_engine(config.storage.database, create=False), tablename=table)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": grace},
        timezone=ZoneInfo(config.schedule.timezone),
    )


def install(sched: AsyncIOScheduler, wanted: Mapping[str, JobSpec], jobs: Mapping[str, JobFn],
            grace: int) -> None:
    """Put ``wanted`` in the store, keeping stored jobs whose spec is unchanged.

    A job re-added unchanged would lose its stored next run time, and with it the daemon's
    knowledge that a digest was due while it was down.
    """
    for job in sched.get_jobs():
        if job.id in TIMETABLE_JOBS and job.id not in wanted:
            job.remove()
    for job_id, spec in wanted.items():
        existing = sched.get_job(job_id)
        if existing is not None and existing.kwargs.get("spec") == spec.spec:
            continue
        # Interval jobs run once when late (coalesced); the digest obeys the grace period.
        extra: dict[str, Any] = {"misfire_grace_time": grace if spec.strict else None}
        if spec.start_now and existing is None:
            extra["next_run_time"] = datetime.now(UTC)  # a fresh daemon starts with these
        sched.add_job(jobs[job_id], spec.trigger, id=job_id, name=job_id,
                      kwargs={"spec": spec.spec}, replace_existing=True, **extra)
        log.info("timetable: %s %s", job_id, spec.spec)


def sync_editions(sched: AsyncIOScheduler, upcoming: Iterable[EditionInfo], job: JobFn) -> None:
    """One date job per scheduled edition, so it goes out at its minute, not the next tick."""
    wanted = {f"{EDITION_JOB}{i.id}": i for i in upcoming}
    for existing in sched.get_jobs():
        if existing.id.startswith(EDITION_JOB) and existing.id not in wanted:
            existing.remove()
    for job_id, info in wanted.items():
        assert info.scheduled_at is not None
        found = sched.get_job(job_id)
        if found is not None and found.next_run_time == info.scheduled_at:
            continue
        sched.add_job(job, DateTrigger(run_date=info.scheduled_at), id=job_id, name=job_id,
                      kwargs={"edition_id": info.id}, replace_existing=True,
                      misfire_grace_time=None)
