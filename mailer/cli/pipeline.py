"""Pipeline commands: ``send`` (one edition of every unsent post, now)."""

from __future__ import annotations

import asyncio
import sys

import click

from mailer.app import App
from mailer.cli.base import cli, pass_app, stop_event_on_signals
from mailer.pipeline.send import SendSummary

__all__ = ["print_send", "send"]


def print_send(app: App, summary: object) -> None:
    """One line per edition: sent, deferred and failed counts, and where the mail went."""
    assert isinstance(summary, SendSummary)
    r = summary.report
    where = (f"Maildir {app.config.delivery.maildir / 'new'}" if app.config.delivery.transport == "maildir"
             else ", ".join(x.label for x in app.config.delivery.relays))
    click.echo(f"edition {summary.edition_id}: {r.sent} sent, {r.deferred} deferred, {r.failed} failed"
               f"{f', {r.bounced} bounced' if r.bounced else ''}"
               f"{f', {r.content_rejected} content rejected' if r.content_rejected else ''}"
               f"{f', {r.suppressed} suppressed' if r.suppressed else ''} → {where}")


@cli.command()
@pass_app
def send(app: App) -> None:
    """Build one edition from every stored post not yet sent and deliver it now."""
    from mailer.pipeline import send_new_posts

    async def go() -> SendSummary | None:
        try:
            with stop_event_on_signals() as stop:
                return await send_new_posts(app, progress=sys.stderr.isatty(), stop=stop)
        finally:
            if app.built("transport"):  # close the relay connections politely (QUIT)
                await app.transport.aclose()

    summary = asyncio.run(go())
    if summary is None:
        click.echo("nothing to send: no stored post is waiting")
        return
    print_send(app, summary)
    r = summary.report
    if r.failed or (r.sent == 0 and r.deferred):
        sys.exit(1)
