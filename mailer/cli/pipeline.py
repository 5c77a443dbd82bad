"""Pipeline commands: ``send`` (one edition of every unsent post, now)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import click

from mailer.app import App
from mailer.cli.base import cli, pass_app, stop_event_on_signals
from mailer.cli.editions import format_when
from mailer.pipeline.send import Held, SendSummary

__all__ = ["print_held", "print_resumed", "print_send", "send"]


def print_send(app: App, summary: object) -> None:
    """One line per edition: sent, deferred and failed counts, and where the mail went."""
    assert isinstance(summary, SendSummary)
    r = summary.report
    delivery = app.config.delivery
    where = (f"Maildir {delivery.maildir_for('readers') / 'new'}" if delivery.transport == "maildir"
             else ", ".join(x.label for x in delivery.relays))
    if delivery.transport == "maildir" and app.config.newsletter.editors:
        where += f" (editors' reports: {delivery.maildir_for('editors') / 'new'})"
    click.echo(f"edition {summary.edition_id}: {r.sent} sent, {r.deferred} deferred, {r.failed} failed"
               f"{f', {r.bounced} bounced' if r.bounced else ''}"
               f"{f', {r.content_rejected} content rejected' if r.content_rejected else ''}"
               f"{f', {r.suppressed} suppressed' if r.suppressed else ''} → {where}")
    for name, until in sorted(r.held_until.items()):
        # A cap reached or a provider that blocklists us: those rows wait, nothing is lost.
        click.echo(f"  {name}: the rest waits until {format_when(until, app.config.schedule.timezone)}"
                   f" (newsletter editions report {summary.edition_id})")


def print_held(edition_id: int, reason: str) -> None:
    """An edition that waits for the editors: why, and the two commands that move it on."""
    click.echo(f"edition {edition_id} created and held: {reason} "
               f"(newsletter editions show {edition_id}; newsletter editions approve {edition_id})")


def print_resumed(app: App, resumed: Sequence[object]) -> None:
    """``resumed edition 3: 1,912 left``, then its usual line."""
    from mailer.pipeline import Resumed

    for r in resumed:
        assert isinstance(r, Resumed)
        click.echo(f"resumed edition {r.edition_id}: {r.left:,} left")
        print_send(app, r.summary)


def failed(summary: object) -> bool:
    """A send that failed messages, or delivered none and deferred some: exit 1."""
    from mailer.pipeline import SendSummary

    assert isinstance(summary, SendSummary)
    r = summary.report
    return bool(r.failed or (r.sent == 0 and r.deferred))


@cli.command()
@pass_app
def send(app: App) -> None:
    """Finish any interrupted edition, then build one edition from every stored post not yet
    sent and deliver it now."""
    from mailer.pipeline import resume_interrupted, send_edition, send_new_posts
    from mailer.pipeline.observe import flush_webhooks

    async def go() -> tuple[list[Any], SendSummary | Held | None]:
        try:
            with stop_event_on_signals() as stop:
                async def finish(edition_id: int) -> SendSummary:
                    # A bar on a terminal, else a line every few seconds (progress_for).
                    return await send_edition(app, edition_id, progress=True, stop=stop)

                resumed = await resume_interrupted(app, finish, should_stop=stop.is_set)
                if stop.is_set():
                    return resumed, None
                return resumed, await send_new_posts(app, progress=True, stop=stop)
        finally:
            await app.close_transports()  # the relay connections politely (QUIT)
            await flush_webhooks(app)

    resumed, summary = asyncio.run(go())
    print_resumed(app, resumed)
    sends = [r.summary for r in resumed]
    if summary is None:
        if not resumed:
            click.echo("nothing to send: no stored post is waiting")
    elif isinstance(summary, Held):
        print_held(summary.edition_id, summary.reason)
    else:
        print_send(app, summary)
        sends.append(summary)
    if any(failed(s) for s in sends):
        sys.exit(1)
