"""Archive commands: ``archive build [--out DIR]`` and ``archive publish`` (registered on import)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailer.app import App
from mailer.cli.base import cli, pass_app

__all__ = ["archive_group"]


@cli.group("archive")
def archive_group() -> None:
    """The web archive: every sent edition as a static site, synced with rclone to [[archive.targets]]."""


@archive_group.command("build")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write (default: [archive] folder).")
@pass_app
def build_command(app: App, out: Path | None) -> None:
    """Write the site: a language chooser, per language an index, a page per edition, an Atom feed."""
    from mailer.pipeline.archive import build_archive

    report = build_archive(app, out)
    w = report.write
    click.echo(f"archive: {report.editions} edition(s) in {', '.join(report.languages)} → {report.folder} "
               f"({len(w.written)} written, {w.unchanged} unchanged, {len(w.removed)} removed)")


@archive_group.command("publish")
@pass_app
def publish_command(app: App) -> None:
    """Sync the built folder to every [[archive.targets]] with rclone; one line per target.

    A failed target does not stop the others; it is retried on the next run. Exit 1 if any failed."""
    from mailer.archive.state import load_states
    from mailer.pipeline.archive import publish_archive

    if not app.config.archive.targets:
        click.echo("no [[archive.targets]] configured")
        return
    before = load_states(app.engine)
    results = publish_archive(app)
    for r in results:
        where = f" ({r.url})" if r.url else ""
        retried = " (retried after a failure)" if r.remote in before and not before[r.remote].ok else ""
        if r.ok:
            click.echo(f"ok      {r.remote}{where}{retried}")
        else:
            click.echo(f"FAILED  {r.remote}{where}: {r.detail}")
    if any(not r.ok for r in results):
        click.echo(f"{sum(not r.ok for r in results)} of {len(results)} target(s) failed; "
                   "run again to retry them", err=True)
        sys.exit(1)
