"""Database fixtures: a real SQLite file, and PostgreSQL at 127.0.0.1:5432 in a schema per test.

PostgreSQL tests skip on a machine without the server, saying why, unless
``NEWSLETTER_TEST_POSTGRES`` is set (CI sets it): then an unreachable server is a failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

__all__ = ["POSTGRES_ADMIN_URL", "postgres_schema_url", "require_postgres"]

POSTGRES_ADMIN_URL = os.environ.get(
    "NEWSLETTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def require_postgres() -> None:
    """Skip (or, in CI, fail) when PostgreSQL cannot be reached."""
    try:
        engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:
        reason = f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable ({type(exc).__name__})"
        if os.environ.get("NEWSLETTER_TEST_POSTGRES", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{reason}, and NEWSLETTER_TEST_POSTGRES is set, so it must be", pytrace=False)
        pytest.skip(f"{reason}; set up the server or run only the SQLite tests")


def postgres_schema_url() -> Iterator[str]:
    """Create a fresh schema, yield a URL whose search_path points at it, then drop it."""
    require_postgres()
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_ADMIN_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
