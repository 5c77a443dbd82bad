"""``newsletter worker``: one of N sender processes (see ``mailer.pipeline.worker``).

This command parses its options, owns SIGTERM/SIGINT (they stop the worker gracefully) and
prints the summary; the loop itself lives in the pipeline.
"""

from __future__ import annotations

import asyncio
import logging

import click

from mailer.app import App
from mailer.cli.base import cli, metrics_listen_for, metrics_listen_option, on_signals, pass_app
from mailer.config import parse_duration
from mailer.pipeline.worker import SenderWorker, WorkerReport

__all__ = ["worker_cmd"]

log = logging.getLogger("newsletter.worker")


async def _run_with_signals(worker: SenderWorker, app: App,
                            listen: tuple[str, int] | None) -> WorkerReport:
    from mailer.pipeline.observe import observing

    with on_signals(worker.stop):
        async with observing(app, listen):
            return await worker.run()


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
@metrics_listen_option
@pass_app
def worker_cmd(app: App, once: bool, lease_text: str, poll_text: str, batch_size: int | None,
               progress: bool, metrics_listen: str | None) -> None:
    """Send queued mail: claim outbox rows in batches and deliver them (run N of these)."""
    try:
        lease, poll = parse_duration(lease_text), parse_duration(poll_text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    app.config.delivery.require_secrets()  # it sends: a missing relay password fails at start
    if app.engine.dialect.name == "sqlite":
        log.warning("SQLite: `newsletter run` sends by itself; several workers need PostgreSQL")
    worker = SenderWorker(app, lease=lease, poll=poll.total_seconds(), batch_size=batch_size,
                          once=once, progress=progress)
    result = asyncio.run(_run_with_signals(worker, app, metrics_listen_for(app, metrics_listen)))
    click.echo(result.summary())
