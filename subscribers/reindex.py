"""Rebuild every blind index under new folding rules, merging rows that become one address.

The folding rules (``normalise_gmail_dots``, ``case_insensitive_domains``) decide what the blind
index hashes, so a list built under one set of rules cannot be searched under another: the
store refuses the mismatch (``IndexRulesError``) until this has run.

Everything happens in one transaction: rows are decrypted, their new indexes written to a
temporary table, the rows that now share an index are merged, the changed indexes are written
and the new rules recorded. Interrupted, it leaves the list as it was; run it again. With
``apply=False`` the same work is done and rolled back, to show what would happen.

When several rows become one address, one row stays (``survivor``) and the others are deleted:
a reader who unsubscribed, bounced or complained under any spelling stays suppressed. A row
that becomes the address of a forgotten reader is erased too. Forgotten blind indexes cannot
be recomputed (their address is gone) and keep the old rules: a spelling that only the new
rules fold onto them is no longer kept out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    LargeBinary,
    MetaData,
    Table,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.engine import Connection

from subscribers.lifecycle import SUPPRESSED, SubscriberState
from subscribers.schema import forgotten
from subscribers.schema import subscribers as t
from subscribers.store import SubscriberStore

__all__ = ["Candidate", "Merge", "ReindexReport", "reindex", "survivor"]

log = logging.getLogger("newsletter.subscribers")

_PAGE = 5000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Candidate:
    """One of several rows that became the same address: what decides which one stays."""

    id: int
    state: SubscriberState
    state_changed_at: datetime
    created_at: datetime


@dataclass(frozen=True)
class Merge:
    kept: int
    state: SubscriberState
    dropped: tuple[int, ...]


@dataclass(frozen=True)
class ReindexReport:
    rows: int
    changed: int  # rows kept whose blind index changed
    merges: tuple[Merge, ...]
    erased: tuple[int, ...]  # rows that turned out to be forgotten readers
    forgotten: int  # forgotten blind indexes, left as they were (their address is gone)
    rules_before: str | None
    rules_after: str
    applied: bool


def survivor(rows: Sequence[Candidate]) -> Candidate:
    """The row that stays when ``rows`` turn out to be one mailbox.

    A suppressed row wins (the latest such change first): the reader asked us to stop, or the
    mailbox refused us, and another spelling must not undo that. Otherwise an active row beats
    a pending one. Ties go to the oldest row, then the smallest id, so the choice is stable.
    """
    def rank(c: Candidate) -> tuple[int, float, float, int]:
        if c.state in SUPPRESSED:
            return (0, -(c.state_changed_at - _EPOCH).total_seconds(), 0.0, c.id)
        level = 1 if c.state is SubscriberState.ACTIVE else 2
        return (level, 0.0, (c.created_at - _EPOCH).total_seconds(), c.id)

    return min(rows, key=rank)


def _aware(value: datetime | None) -> datetime:
    if value is None:
        return _EPOCH
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def reindex(store: SubscriberStore, *, apply: bool = True,
            progress: Callable[[int, int], None] | None = None) -> ReindexReport:
    """Rebuild the blind indexes under ``store.settings``; see the module docstring."""
    work = Table("reindex_work", MetaData(),
                 Column("id", BigInteger, primary_key=True),
                 Column("new_index", LargeBinary, nullable=False, index=True),
                 prefixes=["TEMPORARY"])
    with store.engine.connect() as conn:
        trans = conn.begin()
        if conn.dialect.name == "sqlite":
            # Writers locked out before the first read: no signup or unsubscribe may land between
            # reading a row and merging or re-indexing it (it would keep an old-rule index, or
            # be merged away unseen). Other writers wait (busy_timeout) or fail cleanly.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"LOCK TABLE {t.name} IN EXCLUSIVE MODE")  # reads still go on
        try:
            report = _run(store, conn, work, apply, progress)
            if apply:
                trans.commit()
            else:
                trans.rollback()
        except BaseException:
            trans.rollback()
            raise
        work.drop(conn, checkfirst=True)
        conn.commit()
    if apply:
        log.info("blind indexes rebuilt: %d rows, %d changed, %d merges", report.rows,
                 report.changed, len(report.merges))
    return report


def _run(store: SubscriberStore, conn: Connection, work: Table, apply: bool,
         progress: Callable[[int, int], None] | None) -> ReindexReport:
    before = store.recorded_index_rules(conn)
    work.create(conn)
    total = int(conn.execute(select(func.count()).select_from(t)).scalar_one())
    codec, index_of = store.codec, store.index_of
    done, last = 0, None
    while True:
        q = select(t.c.id, t.c.key_id, t.c.email_ct).order_by(t.c.id).limit(_PAGE)
        if last is not None:
            q = q.where(t.c.id > last)
        rows = conn.execute(q).all()
        if not rows:
            break
        conn.execute(work.insert(), [
            {"id": r.id,
             "new_index": index_of(codec.open(r.id, r.key_id, r.email_ct).decode("utf-8"))}
            for r in rows])
        last = rows[-1].id
        done += len(rows)
        if progress is not None:
            progress(done, total)

    merges = []
    shared = select(work.c.new_index).group_by(work.c.new_index).having(func.count() > 1)
    for (index,) in conn.execute(shared).all():
        group = [Candidate(r.id, SubscriberState(r.state), _aware(r.state_changed_at),
                           _aware(r.created_at))
                 for r in conn.execute(select(t.c.id, t.c.state, t.c.state_changed_at,
                                              t.c.created_at)
                                       .join(work, work.c.id == t.c.id)
                                       .where(work.c.new_index == index))]
        kept = survivor(group)
        dropped = tuple(sorted(c.id for c in group if c.id != kept.id))
        conn.execute(delete(t).where(t.c.id.in_(dropped)))
        conn.execute(delete(work).where(work.c.id.in_(dropped)))
        merges.append(Merge(kept.id, kept.state, dropped))
        log.info("subscriber %d kept (%s); merged away %s", kept.id, kept.state,
                 ", ".join(map(str, dropped)))

    # A row that now shares the index of a forgotten reader is that reader: erased again.
    gone = [int(i) for i in conn.execute(
        select(work.c.id).join(forgotten, forgotten.c.email_index == work.c.new_index)).scalars()]
    if gone:
        conn.execute(delete(t).where(t.c.id.in_(gone)))
        conn.execute(delete(work).where(work.c.id.in_(gone)))
        for sid in gone:
            log.info("subscriber %d matches a forgotten address: erased", sid)

    changed = (select(work.c.id, work.c.new_index).join(t, t.c.id == work.c.id)
               .where(t.c.email_index != work.c.new_index))
    moves = [(int(r.id), bytes(r.new_index)) for r in conn.execute(changed)]
    # Rows that end on one index were merged above. Were a row to move onto an index that
    # another row leaves in this same pass, the unique index would refuse it and the whole
    # transaction roll back: nothing is lost. The folding rules cannot do that (a folded form
    # folds to itself), so one pass suffices.
    if moves:
        conn.execute(update(t).where(t.c.id == bindparam("sid"))
                     .values(email_index=bindparam("new")),
                     [{"sid": sid, "new": new} for sid, new in moves])
    if apply:
        store.record_index_rules(conn)
    remaining = int(conn.execute(select(func.count()).select_from(forgotten)).scalar_one())
    return ReindexReport(rows=total, changed=len(moves),
                         merges=tuple(merges), erased=tuple(sorted(gone)), forgotten=remaining,
                         rules_before=before,
                         rules_after=store.settings.index_rules, applied=apply)
