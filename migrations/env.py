"""Alembic environment: the schema is ``mailer.schema.metadata``; the URL comes from the caller.

``mailer.migrate`` passes an open connection in ``config.attributes["connection"]`` (that is how
``newsletter db upgrade`` and the tests run it). Run by hand (``alembic -c migrations/alembic.ini``)
it takes ``sqlalchemy.url`` from the ini, else the database of ``$NEWSLETTER_CONFIG`` or
``./newsletter.toml``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from mailer.migrate import configure_context
from mailer.schema import metadata

config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    import os

    from mailer.config import DEFAULT_CONFIG_NAME, load_config

    path = os.environ.get("NEWSLETTER_CONFIG") or DEFAULT_CONFIG_NAME
    return load_config(path, dict(os.environ)).storage.database


def _run(connection: Connection) -> None:
    configure_context(context, connection, metadata)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url())
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
