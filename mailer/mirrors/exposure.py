"""Which mirrors went out in which edition, and to how many subscribers: counts only.

When a mirror is reported blocked, the operator needs to see when it was first sent and how
widely (was it burned by one leak or by mass exposure?). Recording *who* received it would let a
seized database map mirrors back to subscribers, so only counts are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from mailer.clock import as_utc
from mailer.schema import mirror_exposure, mirror_state

__all__ = ["ExposureRow", "exposure_for", "exposure_of_edition", "record_exposure"]


def record_exposure(engine: Engine, edition_id: int, counts: Mapping[str, int],
                    now: datetime) -> None:
    """Add ``counts`` (mirror base -> recipients) to the edition's tally; stamp first/last sent.

    Counts add up, so a send resumed after a crash (which records only what it sent itself)
    gives the right total.
    """
    upsert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    with engine.begin() as conn:
        for url, n in sorted(counts.items()):
            if n <= 0:
                continue
            # One statement each, so two senders finishing the same edition cannot both insert.
            tally = upsert(mirror_exposure).values(
                edition_id=edition_id, mirror_url=url, recipients=n, first_sent_at=now)
            conn.execute(tally.on_conflict_do_update(
                index_elements=[mirror_exposure.c.edition_id, mirror_exposure.c.mirror_url],
                set_={"recipients": mirror_exposure.c.recipients + tally.excluded.recipients}))
            state = upsert(mirror_state).values(
                url=url, healthy=True, consecutive_failures=0, blocked_json="{}",
                first_sent_at=now, last_sent_at=now)
            conn.execute(state.on_conflict_do_update(
                index_elements=[mirror_state.c.url],
                set_={"first_sent_at": func.coalesce(mirror_state.c.first_sent_at, now),
                      "last_sent_at": now}))


@dataclass(frozen=True)
class ExposureRow:
    """One mirror's exposure: editions it went out in, total recipients, first and last send."""

    url: str
    editions: int
    recipients: int
    first_sent_at: datetime | None
    last_sent_at: datetime | None


def exposure_for(engine: Engine) -> dict[str, ExposureRow]:
    """Totals per mirror over every edition (for ``mirrors list`` and blocked-mirror reports)."""
    q = (
        select(
            mirror_exposure.c.mirror_url,
            func.count().label("editions"),
            func.sum(mirror_exposure.c.recipients).label("recipients"),
            func.min(mirror_exposure.c.first_sent_at).label("first"),
            func.max(mirror_exposure.c.first_sent_at).label("last"),
        )
        .group_by(mirror_exposure.c.mirror_url)
    )
    with engine.connect() as conn:
        return {
            r.mirror_url: ExposureRow(r.mirror_url, int(r.editions), int(r.recipients or 0),
                                      as_utc(r.first), as_utc(r.last))
            for r in conn.execute(q)
        }


def exposure_of_edition(engine: Engine, edition_id: int) -> dict[str, int]:
    """Recipients per mirror for one edition (the admin's report): how far each one spread."""
    q = (select(mirror_exposure.c.mirror_url, mirror_exposure.c.recipients)
         .where(mirror_exposure.c.edition_id == edition_id)
         .order_by(mirror_exposure.c.recipients.desc()))
    with engine.connect() as conn:
        return {str(url): int(n) for url, n in conn.execute(q)}
