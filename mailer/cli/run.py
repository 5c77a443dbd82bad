"""``newsletter run [--once] [--standby]``: the scheduler daemon, or one pass of it."""

from __future__ import annotations

import asyncio
import sys

import click

from mailer.app import App
from mailer.cli.base import (
    cli,
    metrics_listen_for,
    metrics_listen_option,
    pass_app,
    stop_event_on_signals,
)
from mailer.errors import LockError

__all__ = ["run"]


@cli.command()
@click.option("--once", is_flag=True,
              help="Poll once, send what is due, and exit (no timetable, no waiting).")
@click.option("--standby", is_flag=True,
              help="If another daemon holds this database, wait and take over when it stops.")
@metrics_listen_option
@pass_app
def run(app: App, once: bool, standby: bool, metrics_listen: str | None) -> None:
    """The scheduler daemon: polls, digests, per-post editions, retries, mirror checks.

    One daemon per database: a second one refuses to start (exit 2) unless --standby.
    SIGTERM/SIGINT stop it gracefully; SIGHUP reloads the config.
    """
    listen = metrics_listen_for(app, metrics_listen)
    if once:
        code = asyncio.run(_once(app))
        if code:
            sys.exit(code)
        return
    app.config.delivery.require_secrets()  # it will send: a missing password fails now, not at 08:00
    asyncio.run(_daemon(app, standby, listen))


async def _daemon(app: App, standby: bool, listen: tuple[str, int] | None) -> None:
    """The daemon, with /metrics and the webhook sender beside it."""
    from mailer.pipeline.observe import observing
    from scheduler import Daemon

    async with observing(app, listen):
        await Daemon(app, standby=standby).run()


async def _once(app: App) -> int:
    """One pass under the daemon's lock, so it never races a running daemon."""
    from mailer.cli.pipeline import failed, print_held, print_resumed, print_send
    from mailer.lock import DAEMON_LOCK, DatabaseLock
    from mailer.pipeline import run_once
    from mailer.pipeline.observe import flush_webhooks

    lock = DatabaseLock(app.engine, DAEMON_LOCK, clock=app.clock)
    if not lock.acquire(wait=False):
        holder = lock.holder()
        raise LockError(f"a daemon ({holder.owner if holder else 'another process'}) is running "
                        f"on this database; it already does what run --once would")
    notice = lambda line: click.echo(line, err=True)  # noqa: E731
    try:
        with stop_event_on_signals() as stop:
            summary = await run_once(app, notice, progress=True, stop=stop)
    finally:
        lock.release()
        await app.close_transports()
        await flush_webhooks(app)
    what = {"hold": "held for approval", "miss": "missed its time; not sent"}
    for eid, decision in summary.decisions:
        if decision.value != "send":
            click.echo(f"edition {eid}: {what.get(decision.value, decision.value)} "
                       f"(see: newsletter editions show {eid})")
    poll, held, all_sends = summary.poll, summary.held, summary.sends
    click.echo(f"feeds polled: {poll.feeds}, new posts: {poll.new}"
               f"{f', failing feeds: {len(poll.failed)}' if poll.failed else ''}")
    if held is not None:
        print_held(held, summary.held_reason)
    print_resumed(app, summary.resumed)
    if not all_sends and held is None and not summary.resumed:
        click.echo("nothing to send: no new posts and no edition due")
    for s in all_sends:
        print_send(app, s)
    every = [*all_sends, *(r.summary for r in summary.resumed)]
    return 1 if any(failed(s) for s in every) else 0
