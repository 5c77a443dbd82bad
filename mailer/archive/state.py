"""What the last publish did on each target (``archive_targets``), so a failed one is retried.

Targets are named by their rclone remote; the table holds no credential and nothing personal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, insert, select, update

from mailer.archive.publish import TargetResult
from mailer.clock import as_utc
from mailer.schema import archive_targets

__all__ = ["TargetState", "load_states", "record_results"]


@dataclass(frozen=True)
class TargetState:
    """One target's last publish."""

    remote: str
    ok: bool
    consecutive_failures: int
    last_attempt_at: datetime | None
    last_ok_at: datetime | None
    last_error: str | None


def load_states(engine: Engine) -> dict[str, TargetState]:
    """Every target's last publish, by remote; a target never published has no entry."""
    with engine.connect() as conn:
        return {
            row.remote: TargetState(row.remote, bool(row.ok), row.consecutive_failures or 0,
                                    as_utc(row.last_attempt_at), as_utc(row.last_ok_at), row.last_error)
            for row in conn.execute(select(archive_targets))
        }


def record_results(engine: Engine, results: Iterable[TargetResult], now: datetime) -> None:
    """Store each target's outcome (one transaction)."""
    previous: Mapping[str, TargetState] = load_states(engine)
    with engine.begin() as conn:
        for r in results:
            prev = previous.get(r.remote)
            values: dict[str, object] = {
                "ok": r.ok, "last_attempt_at": now, "last_error": None if r.ok else r.detail,
                "consecutive_failures": 0 if r.ok else (prev.consecutive_failures if prev else 0) + 1,
            }
            if r.ok:
                values["last_ok_at"] = now
            if prev is None:
                conn.execute(insert(archive_targets).values(remote=r.remote, **values))
            else:
                conn.execute(update(archive_targets).where(archive_targets.c.remote == r.remote)
                             .values(**values))
