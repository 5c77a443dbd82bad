"""The daemon's daily retention also erases pending rows nobody confirmed (issue 15): on SQLite
and PostgreSQL, under a moved wall clock, as in ``test_daemon``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import time_machine

from mailer.app import App
from tests.scheduler.test_daemon import READER, daemon, setup, until

__all__ = ["setup"]  # the fixture, shared with test_daemon


async def test_pending_rows_expire_daily_by_default(
        setup: Callable[..., tuple[Path, App]]) -> None:
    config, app = setup()  # no retention configured: pending rows still expire (30 days)
    with time_machine.travel(datetime(2026, 10, 1, 12, 0, tzinfo=UTC), tick=True):
        stranger, _ = app.subscribers.subscribe("typed-by-someone@example.com", "en")
    with time_machine.travel(datetime(2026, 11, 23, 12, 0, tzinfo=UTC), tick=True):
        recent, _ = app.subscribers.subscribe("asked-last-week@example.com", "en")
        async with daemon(config) as d:
            assert "retention" in d.next_runs()
            await until(lambda: app.subscribers.get(stranger) is None,
                        "the month-old pending row erased")
            assert app.subscribers.get(recent) is not None
            assert app.subscribers.lookup(READER) is not None
            assert app.subscribers.count_forgotten() == 0  # a stranger leaves no trace
