"""What is due and what to do with it: send, hold for approval, mark missed, make editions.

The daemon's jobs and ``run --once`` both go through here, so an edition due days ago is
missed (and the editors told) whichever of them finds it, and nothing unapproved goes out.
``scheduler.py`` only decides *when* these run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

from mailer.app import App
from mailer.delivery.progress import LogProgress
from mailer.editions.notify import Notifier
from mailer.editions.store import Decision, EditionInfo, decide
from mailer.errors import EditionError
from mailer.feeds.poll import PollReport, poll_feeds
from mailer.inbound.maildir import InboundReport
from mailer.lock import process_is_gone
from mailer.mirrors.health import CheckResult, MirrorChecker
from mailer.mirrors.state import load_health
from mailer.models import EditionState
from mailer.pipeline import observe
from mailer.pipeline.archive import archive_after_send, retry_failed_targets
from mailer.pipeline.send import Held, SendSummary, send_edition, send_new_posts

__all__ = [
    "DAEMON_PAUSE_REASON",
    "DIGEST_SLOT",
    "Resumed",
    "RunSummary",
    "announce_scheduled",
    "carry_on",
    "check_mirrors",
    "describe_time",
    "digest_now",
    "digest_slot_taken",
    "ensure_sample_subscribers",
    "forget_suppressed",
    "inbound",
    "missed_digest",
    "pause_for_stop",
    "per_post_editions",
    "poll",
    "process_due",
    "resume_after_stop",
    "resume_interrupted",
    "run_once",
    "send_with_stop",
    "short_delta",
    "unsubscribe_by_mail",
    "whats_next",
]

log = logging.getLogger("newsletter.editions")

SAMPLE_DOMAIN = "example.org"

# The daemon pauses an edition it is sending when told to stop, so the delivery engine claims
# no more rows while in-flight ones finish; on start it resumes exactly those (not editors').
DAEMON_PAUSE_REASON = "the daemon stopped while sending; it resumes when the daemon starts"

SendOne = Callable[[int], Awaitable[object]]

# An editors' edition sent this close to the automatic digest's time takes the digest's place:
# readers get one mail, and the posts that would have made the digest wait for the next one.
DIGEST_SLOT = timedelta(hours=1)
# The editions that count: on their way to readers, or already with them.
_TAKES_SLOT = (EditionState.SCHEDULED, EditionState.APPROVED, EditionState.SENDING,
               EditionState.PAUSED, EditionState.SENT)


def short_delta(delta: timedelta) -> str:
    """``2d 3h``, ``45m``: lateness for people, not ``2 days, 3:00:00.000123``."""
    seconds = int(delta.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "",
             f"{minutes}m" if minutes and not days else ""]
    return " ".join(p for p in parts if p) or f"{seconds}s"


def describe_time(at: datetime, timezone: str) -> str:
    """``2026-11-24 08:00 CST (Asia/Shanghai) = 2026-11-24 00:00 UTC``: editors read both."""
    local = at.astimezone(ZoneInfo(timezone))
    utc = at.astimezone(UTC)
    return (f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({timezone}) = "
            f"{utc:%Y-%m-%d %H:%M} UTC")


def _req(at: datetime | None) -> datetime:
    assert at is not None
    return at


def _local(info: EditionInfo, tz: str) -> str:
    assert info.scheduled_at is not None
    return f"{info.scheduled_at.astimezone(ZoneInfo(tz)):%Y-%m-%d %H:%M} {tz}"


async def process_due(app: App, send: SendOne, notifier: Notifier | None = None, *,
                      should_stop: Callable[[], bool] = lambda: False,
                      ) -> list[tuple[int, Decision]]:
    """Every due edition gets its decision applied; returns what was done, in order."""
    store = app.editions
    grace = app.config.schedule.misfire_grace
    tz = app.config.schedule.timezone
    notifier = notifier or Notifier.for_app(app)
    done: list[tuple[int, Decision]] = []
    for eid in store.due(app.clock()):
        if should_stop():
            break
        now = app.clock()
        info = store.info(eid)
        decision = decide(info, now, grace=grace, require_approval=store.require_approval)
        try:
            if decision is Decision.SEND:
                await send(eid)  # reported when it ends (send.finish_and_report)
            elif decision is Decision.HOLD:
                store.hold(eid, "not approved at its send time")
                log.warning("edition %d held: approval is required and it is not approved", eid)
                await notifier.held(store.info(eid))
            elif decision is Decision.MISS:
                assert info.scheduled_at is not None
                late = short_delta(now - info.scheduled_at)
                store.set_state(eid, EditionState.MISSED,
                                f"due {_local(info, tz)}, {late} late: beyond the "
                                f"{short_delta(grace)} grace period, so not sent")
                log.warning("edition %d missed: due %s, %s late; not sent", eid,
                            _local(info, tz), late)
                await notifier.missed(store.info(eid))
        except EditionError as exc:  # an editor changed it a moment ago: theirs wins
            log.warning("%s", exc)
            continue
        done.append((eid, decision))
    return done


def resume_after_stop(app: App) -> list[int]:
    """Editions the daemon paused on its way out go back to sending; editors' pauses stay."""
    store = app.editions
    resumed = []
    for info in store.find([EditionState.PAUSED]):
        if info.reason == DAEMON_PAUSE_REASON:
            store.resume(info.id)
            resumed.append(info.id)
    return resumed


def per_post_editions(app: App) -> list[int]:
    """Per-post mode: each new post becomes its own edition, due after ``schedule.hold``."""
    store = app.editions
    tz = app.config.schedule.timezone
    created = []
    for post_id in reversed(store.unsent_post_ids()):  # oldest first
        eid = store.create([post_id], kind="per-post")
        if eid is None:
            continue
        store.schedule(eid, app.clock() + app.config.schedule.hold, allow_past=True)
        announce_scheduled(app, eid)
        created.append(eid)
        log.info("post %d: edition %d, due %s", post_id, eid,
                 describe_time(app.clock() + app.config.schedule.hold, tz))
    return created


def digest_slot_taken(editions: Iterable[EditionInfo], when: datetime, *,
                      slot: timedelta = DIGEST_SLOT) -> EditionInfo | None:
    """Pure: the edition that takes the digest of ``when``'s place, or None.

    An edition an editor scheduled (or that already went out) within ``slot`` of the digest
    time wins: the digest makes no edition, so readers never get two mails that morning. Its
    posts are never the digest's anyway (a post is in one edition), and the new ones wait for
    the following digest. Held, draft, missed and cancelled editions do not count: nothing of
    theirs reaches readers then.
    """
    for info in sorted(editions, key=lambda i: i.id):
        if (info.state in _TAKES_SLOT and info.scheduled_at is not None
                and abs(info.scheduled_at - when) <= slot):
            return info
    return None


def digest_now(app: App) -> int | None:
    """Digest time: every unsent post becomes one edition, due now (None: no new posts, or an
    editors' edition takes this digest's place: :func:`digest_slot_taken`)."""
    store = app.editions
    now = app.clock()
    taken = digest_slot_taken(store.find(_TAKES_SLOT, limit=100), now)
    if taken is not None:
        log.info("digest time: edition %d is sent at %s, so no digest now; new posts wait for "
                 "the next digest", taken.id, describe_time(_req(taken.scheduled_at),
                                                            app.config.schedule.timezone))
        return None
    eid = store.create(kind="digest")
    if eid is None:
        log.info("digest time: no new posts, so no edition")
    elif (reason := store.hold_if_over(eid, app.config.schedule.max_posts)) is not None:
        log.warning("digest time: edition %d held: %s", eid, reason)
    else:
        store.schedule(eid, app.clock(), allow_past=True)
        announce_scheduled(app, eid)
        log.info("digest time: edition %d with %d post(s)", eid, len(store.info(eid).post_ids))
    return eid


def announce_scheduled(app: App, edition_id: int) -> None:
    """``edition.scheduled``: an edition has its send time (per-post, digest, or an editor)."""
    info = app.editions.info(edition_id)
    observe.emit(app, "edition.scheduled", {
        "edition": edition_id, "kind": info.kind, "posts": len(info.post_ids),
        "scheduled_at": info.scheduled_at, "state": str(info.state)})


def missed_digest(app: App, when: datetime) -> EditionInfo | None:
    """A digest the daemon was not running for becomes a missed edition (the editors are told
    by the caller); None when there were no new posts."""
    tz = app.config.schedule.timezone
    store = app.editions
    eid = store.create(kind="digest")
    late = app.clock() - when
    if eid is None:
        log.warning("digest of %s missed (%s late); there were no new posts",
                    describe_time(when, tz), short_delta(late))
        return None
    store.schedule(eid, when, allow_past=True)
    store.set_state(eid, EditionState.MISSED,
                    f"digest due {when.isoformat()}: the daemon was not running; "
                    f"{short_delta(late)} late, beyond the grace period")
    log.warning("digest edition %d missed: due %s, %s late; not sent",
                eid, describe_time(when, tz), short_delta(late))
    return store.info(eid)


def ensure_sample_subscribers(app: App, notice: Callable[[str], None]) -> int:
    """On an empty list with ``sample_subscribers`` on, add one example.org reader per choice."""
    if not app.config.newsletter.sample_subscribers or app.subscribers.count(None) > 0:
        return 0
    added = 0
    for choice in app.config.newsletter.choices:
        local = "reader-" + choice.lower().replace("+", "-and-")
        app.subscribers.add(f"{local}@{SAMPLE_DOMAIN}", choice, confirmed=True)
        added += 1
    notice(f"added {added} sample subscribers at {SAMPLE_DOMAIN} (one per language choice)")
    return added


async def inbound(app: App) -> InboundReport:
    """The daemon's 30 s job: everything waiting in the inbound Maildir (unsubscribe mail,
    bounces, complaints, readers' commands), through ``mailer.pipeline.inbound``."""
    from mailer.pipeline.inbound import process_inbound

    report = await process_inbound(app)
    if report.read:
        log.info("inbound: %d message(s): %s", report.read, dict(report.kinds))
    return report


def unsubscribe_by_mail(app: App, maildir: Path | None = None) -> InboundReport:
    """``newsletter inbound`` and ``subscribers mailin``, once, from a command (no loop
    running): the answers' relay connections are closed before it returns."""
    from mailer.pipeline.inbound import process_inbound

    async def once() -> InboundReport:
        try:
            return await process_inbound(app, maildir)
        finally:
            await app.close_transports()

    return asyncio.run(once())


async def poll(app: App, client: httpx.AsyncClient | None = None) -> PollReport:
    """Fetch every configured feed; a broken feed is reported and the others go on."""
    report = await poll_feeds(app.config.feeds, store=app.post_store, fetch=app.config.fetch,
                              clock=app.clock, client=client)
    observe.polled(app, report)
    return report


@dataclass(frozen=True)
class RunSummary:
    """What one pass did: the poll, the sends, editors' editions decided, a held edition."""

    poll: PollReport
    sends: tuple[SendSummary, ...]
    decisions: tuple[tuple[int, Decision], ...] = ()
    held: int | None = None
    sample_subscribers: int = 0
    resumed: tuple[Resumed, ...] = ()
    held_reason: str = "approval is required"


async def run_once(app: App, notice: Callable[[str], None], *, progress: bool = False,
                   stop: asyncio.Event | None = None) -> RunSummary:
    """``run --once``: one pass of what the daemon does, under the same send policy.

    Editions a crash or a stopping daemon left unfinished are finished first
    (:func:`resume_interrupted`); editors' scheduled editions then go through the policy
    (approval gate, misfire grace); then the feeds are polled and new posts go out as an
    edition now — or, when approval is required, become an edition held for the editors.
    """
    seeded = ensure_sample_subscribers(app, notice)
    sends: list[SendSummary] = []

    async def finish(edition_id: int) -> SendSummary:
        return await send_edition(app, edition_id, progress=progress, stop=stop)

    resumed = await resume_interrupted(app, finish, should_stop=lambda: stop is not None and stop.is_set())

    async def send(edition_id: int) -> None:
        sends.append(await finish(edition_id))

    decisions = await process_due(app, send)
    report = await poll(app)
    held = None
    held_reason = RunSummary.held_reason
    if app.config.newsletter.require_approval:
        held = app.editions.create()
        if held is not None:
            app.editions.hold(held, "new posts awaiting an editor's approval")
            await Notifier.for_app(app).held(app.editions.info(held))
    else:
        fresh = await send_new_posts(app, progress=progress, stop=stop)
        if isinstance(fresh, Held):
            held, held_reason = fresh.edition_id, fresh.reason
        elif fresh is not None:
            sends.append(fresh)
    return RunSummary(report, tuple(sends), tuple(decisions), held, seeded, tuple(resumed), held_reason)


def pause_for_stop(app: App, edition_ids: Iterable[int]) -> None:
    """The daemon is stopping: pause what it sends, so the delivery engine (which reads the
    state between batches) claims no more rows and the ones in flight finish, recorded."""
    for eid in sorted(edition_ids):
        if app.editions.info(eid).state is EditionState.SENT:
            continue  # a welcome's rows: sent is final; the stop event alone ends its engine
        try:
            app.editions.set_state(eid, EditionState.PAUSED, DAEMON_PAUSE_REASON)
            log.info("edition %d paused until the daemon starts again", eid)
        except EditionError as exc:
            log.info("%s", exc)


async def carry_on(app: App, send: SendOne, *, busy: Collection[int],
                   should_stop: Callable[[], bool] = lambda: False) -> list[int]:
    """Editions with rows to send now that no one here is sending (``busy``): pick them up.

    That covers deferred rows whose time came (the ``retry`` job), an edition an editor
    resumed, rows a dead sender left leased, and the welcome of a reader who confirmed after
    the edition went out (its edition is ``sent``). Which editions those are is the outbox's
    rule (``Outbox.editions_with_work``). The outbox hands each row to one sender, so a
    ``newsletter worker`` busy with the same edition is no problem.
    """
    retried = []
    for eid in app.outbox.editions_with_work(unstarted=True):
        if should_stop():
            break
        if eid in busy:
            continue
        log.info("edition %d: sending what is left (queued, due for retry, or orphaned)", eid)
        await send(eid)
        retried.append(eid)
    return retried


def forget_suppressed(app: App) -> int:
    """The daily retention job: pending sign-ups past their time expire, and readers
    suppressed for longer than ``[storage] forget_suppressed_after`` are erased."""
    app.signup.expire()
    observe.daily_counts(app)  # the day's subscriber.counts webhook rides on this daily job
    age = app.config.storage.forget_suppressed_after
    if age is None:
        return 0
    n = app.subscribers.forget_suppressed(age)
    if n:
        log.info("retention: forgot %s readers suppressed for more than %s", n, age)
    return n


def whats_next(app: App, runs: Mapping[str, datetime]) -> list[str]:
    """For the log: the next poll, the next send with its local time, the next digest."""
    tz = app.config.schedule.timezone
    lines = []
    if "poll" in runs:
        lines.append(f"next poll: {describe_time(runs['poll'], tz)}")
    upcoming = app.editions.upcoming(app.clock())
    if upcoming and upcoming[0].scheduled_at is not None:
        lines.append(f"next send: edition {upcoming[0].id} at "
                     f"{describe_time(upcoming[0].scheduled_at, tz)}")
    if "digest" in runs:
        taken = digest_slot_taken(upcoming, runs["digest"])
        lines.append(f"next digest: {describe_time(runs['digest'], tz)}" + (
            f": none then, edition {taken.id} goes out instead (new posts wait for the "
            f"digest after)" if taken is not None else ""))
    elif not upcoming:
        lines.append(f"next send: none scheduled (mode {app.config.newsletter.mode})")
    return lines


@dataclass(frozen=True)
class Resumed:
    """An edition a crash or a stopping daemon left unfinished, and what resuming it gave."""

    edition_id: int
    left: int
    reclaimed: int
    summary: object


async def resume_interrupted(app: App, send: SendOne, *,
                             should_stop: Callable[[], bool] = lambda: False) -> list[Resumed]:
    """Finish every edition left ``sending`` (a crash) or paused by a stopping daemon.

    The daemon calls this on start, ``send`` and ``run --once`` before their own work, so an
    interrupted edition never waits for someone else. Rows leased by a dead process on this
    host are handed out at once (``process_is_gone``); a live sender's rows (a daemon, a
    worker) stay its own, and an edition whose unfinished rows are all held by live senders or
    deferred to later is left to them and to the ``retry`` job. An edition with nothing
    unfinished is still sent, which only marks it sent: a crash can come between the last
    row and that mark. The outbox keeps every row exactly-once.

    A sent edition with rows still open (a welcome that a crash left queued or leased, or that
    the relay deferred) is resumed the same way once a row is due; a sent one with nothing
    open is not sent again.
    """
    stopped = set(resume_after_stop(app))
    sending = {info.id for info in app.editions.find([EditionState.SENDING])}
    resumed = []
    for eid in sorted(sending | set(app.outbox.editions_unfinished())):
        if should_stop():
            break
        reclaimed = sum(app.outbox.expire_lease(eid, owner)
                        for owner in app.outbox.lease_holders(eid) if process_is_gone(owner))
        left = app.outbox.unfinished(eid)
        if not app.outbox.has_work(eid) and (left or eid not in sending):
            continue
        how = ("stopped while sending" if eid in stopped else "interrupted while sending"
               if eid in sending else "sent, with rows added since (welcomes)")
        log.info("resuming edition %d, %s: %d left, %d reclaimed from a dead sender",
                 eid, how, left, reclaimed)
        resumed.append(Resumed(eid, left, reclaimed, await send(eid)))
    return resumed


async def send_with_stop(app: App, edition_id: int, stop: asyncio.Event) -> object:
    """The daemon's send: :func:`send_edition` with its ``stop`` (finish in flight, claim no more),
    and a log line every few seconds (``edition 7: 1,200 of 30,000 sent …``), never a bar; once
    the edition is sent, the web archive is built and published ([archive] targets)."""
    # Rows added to an edition already sent (welcomes) change nothing the archive shows.
    was_sent = app.editions.info(edition_id).state is EditionState.SENT
    summary = await send_edition(app, edition_id, stop=stop, progress=LogProgress())
    if not stop.is_set() and not was_sent \
            and app.editions.info(edition_id).state is EditionState.SENT:
        await archive_after_send(app)
    return summary


async def check_mirrors(app: App, *, hand_out: bool = True) -> Sequence[CheckResult]:
    """Mirror health checks (the ``mirrors`` job; ``mirrors check`` with ``hand_out`` False,
    which needs no partition secret); a mirror that went down is a ``mirror.down`` event;
    archive targets whose last sync failed are synced again."""
    before = await asyncio.to_thread(load_health, app.engine)
    if hand_out:
        results = await app.mirrors.check()
    else:
        results = await MirrorChecker(app.config.mirrors, app.engine, app.clock).check()
    observe.mirrors_checked(app, before, results)
    await retry_failed_targets(app)
    return results
