"""``newsletter inbound``: read the inbound Maildir once, or listen for LMTP; print counts."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from mailer.app import App
from mailer.cli.base import cli, on_signals, pass_app
from mailer.inbound.maildir import InboundReport

__all__ = ["inbound_cmd", "print_report"]

log = logging.getLogger("newsletter.inbound")


def print_report(report: InboundReport) -> None:
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(report.kinds.items())) or "nothing"
    click.echo(f"{report.read} message(s): {kinds}; {report.answered} answer(s) sent"
               + (f"; {report.failed} left for the next run (see the log)" if report.failed else ""))
    if report.unmatched:
        click.echo(f"{report.unmatched} for a person: see the Maildir folder .unmatched")


@cli.command("inbound")
@click.option("--maildir", type=click.Path(path_type=Path), default=None,
              help="The Maildir to read (default: [inbound] maildir).")
@click.option("--lmtp", "listen", default=None, metavar="HOST:PORT",
              help="Listen for LMTP (an MTA hands mail in) until SIGTERM, instead of reading once.")
@pass_app
def inbound_cmd(app: App, maildir: Path | None, listen: str | None) -> None:
    """Handle mail that came back: bounces, complaints, and readers' commands by mail. The
    daemon reads the Maildir every 30 s when [inbound] maildir is set."""
    from mailer.pipeline import inbound, unsubscribe_by_mail

    if listen is None:
        print_report(unsubscribe_by_mail(app, maildir))
        return
    from mailer.inbound.lmtp import parse_listen, start_lmtp

    host, port = parse_listen(listen)
    folder = inbound.spool(app, maildir)

    async def serve() -> None:
        stop = asyncio.Event()
        server = await start_lmtp(host, port, lambda raw, rcpts: inbound.accept(
            app, folder, raw, rcpts), inbound.inbound_addresses(app).accepts)
        bound = server.sockets[0].getsockname()
        click.echo(f"listening for LMTP on {bound[0]}:{bound[1]}; the Maildir {folder} is the spool",
                   err=True)
        with on_signals(lambda _name: stop.set()):
            await stop.wait()
        server.close()
        await server.wait_closed()
        await app.close_transports()

    asyncio.run(serve())
