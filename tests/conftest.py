"""Shared fixtures: real servers on loopback and real databases. No mocks of I/O."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.db import postgres_schema_url
from tests.support.http import HTTPServer
from tests.support.smtp import SMTPServer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'newsletter.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from postgres_schema_url()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Run a database test on both backends."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'newsletter.db'}"
    else:
        yield from postgres_schema_url()


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    server = SMTPServer().start()
    yield server
    server.stop()


@pytest.fixture
def http_server() -> Iterator[HTTPServer]:
    server = HTTPServer().start()
    yield server
    server.stop()
