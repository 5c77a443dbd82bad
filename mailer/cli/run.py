"""``newsletter run [--once] [--standby]``: the scheduler daemon, or one pass of it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from mailer.app import App
from mailer.cli.base import cli, pass_app
from mailer.errors import LockError

__all__ = ["run"]


@cli.command()
@click.option("--once", is_flag=True,
              help="Poll once, send what is due, and exit (no timetable, no waiting).")
@click.option("--standby", is_flag=True,
              help="If another daemon holds this database, wait and take over when it stops.")
@pass_app
def run(app: App, once: bool, standby: bool) -> None:
    """The scheduler daemon: polls, digests, per-post editions, retries, mirror checks.

    One daemon per database: a second one refuses to start (exit 2) unless --standby.
    SIGTERM/SIGINT stop it gracefully; SIGHUP reloads the config.
    """
    if once:
        code = asyncio.run(_once(app))
        if code:
            sys.exit(code)
        return
    from scheduler import Daemon

    asyncio.run(Daemon(app, standby=standby).run())


async def _once(app: App) -> int:
    """One pass under the daemon's lock, so it never races a running daemon."""
    from mailer.cli.pipeline import print_send
    from mailer.editions.runner import process_due
    from mailer.lock import DatabaseLock
    from mailer.pipeline import run_once, send_edition
    from scheduler import LOCK_NAME

    lock = DatabaseLock(app.engine, LOCK_NAME, clock=app.clock)
    if not lock.acquire(wait=False):
        holder = lock.holder()
        raise LockError(f"a daemon ({holder.owner if holder else 'another process'}) is running "
                        f"on this database; it already does what run --once would")
    sends = []
    try:
        async def send(edition_id: int) -> None:
            sends.append(await send_edition(app, edition_id, progress=sys.stderr.isatty()))

        # Editors' scheduled editions first, through the policy (approval gate, misfire grace).
        for eid, decision in await process_due(app, send):
            if decision.value != "send":
                what = {"hold": "held for approval", "miss": "missed its time; not sent"}
                click.echo(f"edition {eid}: {what.get(decision.value, decision.value)} "
                           f"(see: newsletter editions show {eid})")
        notice = lambda line: click.echo(line, err=True)  # noqa: E731
        if app.config.newsletter.require_approval:
            poll, held = await _poll_and_hold(app, notice)
            later: Sequence[Any] = ()
        else:
            summary = await run_once(app, notice, progress=sys.stderr.isatty())
            poll, held, later = summary.poll, None, summary.sends
    finally:
        lock.release()
        transport = app.__dict__.get("transport")
        if transport is not None:
            await transport.aclose()
    click.echo(f"feeds polled: {poll.feeds}, new posts: {poll.new}"
               f"{f', failing feeds: {len(poll.failed)}' if poll.failed else ''}")
    if held is not None:
        click.echo(f"edition {held} created and held: approval is required "
                   f"(newsletter editions show {held}; newsletter editions approve {held})")
    all_sends = [*sends, *later]
    if not all_sends and held is None:
        click.echo("nothing to send: no new posts and no edition due")
    for s in all_sends:
        print_send(app, s)
    failed = any(s.report.failed or (s.report.sent == 0 and s.report.deferred) for s in all_sends)
    return 1 if failed else 0


async def _poll_and_hold(app: App, notice: Callable[[str], None]) -> tuple[Any, int | None]:
    """With ``require_approval``, new posts become an edition held for the editors, not a send."""
    from mailer.editions.notify import Notifier
    from mailer.pipeline import ensure_sample_subscribers, poll

    ensure_sample_subscribers(app, notice)
    report = await poll(app)
    eid = app.editions.create()
    if eid is not None:
        app.editions.hold(eid, "new posts awaiting an editor's approval")
        await Notifier.for_app(app).held(app.editions.info(eid))
    return report, eid
