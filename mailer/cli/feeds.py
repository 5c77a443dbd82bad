"""Feed commands: ``poll``, ``feeds`` and ``posts`` (registered on import)."""

from __future__ import annotations

import asyncio
import json

import click

from mailer.app import App
from mailer.cli.base import cli, pass_app
from mailer.errors import FeedError
from mailer.feeds.fetch import redact
from mailer.feeds.poll import PollReport, poll_feeds

__all__ = ["feeds_command", "poll_command", "posts_command"]


def _summary(report: PollReport) -> str:
    parts = [f"{report.new} new post{'s' if report.new != 1 else ''}",
             f"from {report.feeds} feed{'s' if report.feeds != 1 else ''}"]
    extra = []
    if report.updated:
        extra.append(f"{report.updated} updated")
    if report.backlog:
        extra.append(f"{report.backlog} older recorded as seen")
    if report.duplicate:
        extra.append(f"{report.duplicate} already seen in another feed")
    if report.not_modified:
        extra.append(f"{report.not_modified} unchanged")
    if report.failed:
        extra.append(f"{len(report.failed)} failed")
    return " ".join(parts) + (f" ({', '.join(extra)})" if extra else "")


@cli.command("poll")
@pass_app
def poll_command(app: App) -> None:
    """Fetch every feed and store new posts. Exit 1 if any feed could not be read."""
    report = asyncio.run(poll_feeds(
        app.config.feeds, store=app.post_store, fetch=app.config.fetch, clock=app.clock,
    ))
    click.echo(_summary(report))
    for outcome in report.outcomes:
        if outcome.error and outcome.failing_since is not None:
            click.echo(f"still failing since {_when(outcome.failing_since)}: "
                       f"{redact(outcome.url)}: {outcome.error}", err=True)
        elif outcome.error:
            click.echo(f"failed: {redact(outcome.url)}: {outcome.error}", err=True)
        elif outcome.warning:
            click.echo(f"warning: {redact(outcome.url)}: {outcome.warning}")
    if report.failed:
        # FeedError's exit code is 1; run_cli prints it as the one error line.
        raise FeedError(f"{len(report.failed)} of {report.feeds} feeds could not be read; "
                        "the posts of the others were stored")


def _when(value: object) -> str:
    return value.isoformat(timespec="seconds") if hasattr(value, "isoformat") else "-"


@cli.command("feeds")
@pass_app
def feeds_command(app: App) -> None:
    """List configured feeds: status, last success, last error."""
    store = app.post_store
    states = store.ensure_feeds(app.config.feeds)
    for f in app.config.feeds:
        s = states[f.url]
        label = f"{s.name} <{redact(s.url)}>" if s.name else redact(s.url)
        line = f"{label}\t{s.status}\tlast success: {_when(s.last_success_at)}"
        if s.last_error:
            line += f"\tlast error: {_when(s.last_error_at)} {s.last_error}"
        click.echo(line)


@cli.command("posts")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@pass_app
def posts_command(app: App, as_json: bool) -> None:
    """List stored posts: id, feed, language, published, title."""
    for p in app.post_store.list_posts():
        published = p.published.isoformat() if p.published else None
        if as_json:
            click.echo(json.dumps({
                "id": p.id, "feed": redact(p.feed_url), "language": p.language, "published": published,
                "title": p.title, "link": p.link,
            }, ensure_ascii=False))
        else:
            click.echo(f"{p.id}\t{redact(p.feed_url)}\t{p.language}\t{published or '-'}\t{p.title}")
