"""Apply the send policy to due editions: send, hold for approval, or mark missed.

The daemon's jobs and ``run --once`` both go through here, so an edition due days ago is
missed (and the editors told) whichever of them finds it, and nothing unapproved goes out.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from mailer.editions.notify import Notifier
from mailer.editions.store import Decision, EditionInfo, decide
from mailer.errors import EditionError
from mailer.models import EditionState

if TYPE_CHECKING:
    from mailer.app import App

__all__ = ["DAEMON_PAUSE_REASON", "process_due", "resume_after_stop", "short_delta"]

log = logging.getLogger("newsletter.editions")

# The daemon pauses an edition it is sending when told to stop, so the delivery engine claims
# no more rows while in-flight ones finish; on start it resumes exactly those (not editors').
DAEMON_PAUSE_REASON = "the daemon stopped while sending; it resumes when the daemon starts"

SendOne = Callable[[int], Awaitable[object]]


def short_delta(delta: timedelta) -> str:
    """``2d 3h``, ``45m``: lateness for people, not ``2 days, 3:00:00.000123``."""
    seconds = int(delta.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "",
             f"{minutes}m" if minutes and not days else ""]
    return " ".join(p for p in parts if p) or f"{seconds}s"


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
                await send(eid)
                after = store.info(eid)
                if after.state is EditionState.SENT:
                    await notifier.sent(after)
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
