"""Open the database: one engine factory for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from mailer.errors import StorageError

__all__ = ["create_schema", "is_postgres", "is_sqlite", "open_engine"]


_OPEN_TRIES = 6  # about 1.5 s of retries in all


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the web endpoints read while a send writes; busy_timeout waits out short locks
    # instead of failing; foreign keys are off by default in SQLite.
    # busy_timeout first: switching a new file to WAL takes a lock another process may hold.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_engine(url: str, *, create: bool = True) -> Engine:
    """Create an engine for ``url``; with ``create`` make the folder and tables if missing."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, poolclass=NullPool)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    if create:
        try:
            create_schema(engine)
        except BaseException:
            engine.dispose()  # a refused database must not leave pooled connections behind
            raise
    return engine


def create_schema(engine: Engine) -> None:
    """Build a fresh database (stamped at the head migration), or check an existing one is current.

    A database at an older revision raises ``StorageError``: ``newsletter db upgrade`` (see
    ``mailer.migrate``) is an operator's step, never a side effect of opening the database.
    """
    from mailer.migrate import prepare_schema  # alembic is imported only when a schema is needed

    for attempt in range(_OPEN_TRIES):
        try:
            prepare_schema(engine)
            return
        except OperationalError as exc:
            if is_sqlite(engine) and "locked" in str(exc.orig) and attempt < _OPEN_TRIES - 1:
                # While another process turns a brand-new file into a WAL database, SQLite can
                # answer "locked" at once instead of calling the busy handler: wait and retry.
                time.sleep(0.05 * 2**attempt)
                continue
            raise StorageError(f"cannot open database "
                               f"{engine.url.render_as_string(hide_password=True)}: {exc.orig}") from None
