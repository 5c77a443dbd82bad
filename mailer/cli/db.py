"""``newsletter db``: the schema's version, and upgrading it (Alembic, see ``mailer.migrate``)."""

from __future__ import annotations

import click
from sqlalchemy import Engine, inspect

from mailer import migrate
from mailer.app import App
from mailer.cli.base import cli, pass_app
from mailer.db import open_engine
from mailer.errors import StorageError

__all__ = ["db"]


def _engine(app: App) -> Engine:
    # Not ``app.engine``: that one refuses a database that is behind, which is what we fix here.
    return open_engine(app.config.storage.database, create=False)


@cli.group("db")
def db() -> None:
    """The database schema: show its version, upgrade it."""


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_app
def upgrade_cmd(app: App, revision: str) -> None:
    """Upgrade the schema to REVISION (default: head). Stop the workers and the scheduler first."""
    engine = _engine(app)
    try:
        if migrate.current_revision(engine) is None and not _has_tables(engine):
            click.echo("fresh database: creating the schema")
        before, after = migrate.upgrade(engine, revision)
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"schema already at {after}")
    else:
        click.echo(f"schema upgraded: {before or 'empty'} -> {after}")


@db.command("current")
@pass_app
def current_cmd(app: App) -> None:
    """Show the schema's revision and the one this version of the code needs."""
    engine = _engine(app)
    try:
        current = migrate.current_revision(engine)
    finally:
        engine.dispose()
    head = migrate.head_revision()
    state = "up to date" if current == head else "behind: run `newsletter db upgrade`"
    click.echo(f"database: {current or 'none'}\ncode:     {head}\n{state}")


@db.command("check")
@pass_app
def check_cmd(app: App) -> None:
    """Compare the database with the code's tables; exit 2 if they differ."""
    engine = _engine(app)
    try:
        diff = migrate.schema_diff(engine)
    finally:
        engine.dispose()
    for item in diff:
        click.echo(f"  {item}")
    if diff:
        raise StorageError(f"the database differs from the code's schema in {len(diff)} place(s)")
    click.echo("the database matches the code's schema")


@db.command("stamp")
@click.argument("revision", default="head")
@pass_app
def stamp_cmd(app: App, revision: str) -> None:
    """Record REVISION as applied without running it (a database made before migrations)."""
    engine = _engine(app)
    try:
        migrate.stamp(engine, revision)
    finally:
        engine.dispose()
    click.echo(f"schema stamped at {revision}")


def _has_tables(engine: Engine) -> bool:
    return bool(inspect(engine).get_table_names())
