"""The encrypted subscriber store: add, import batches, look up, stream, change state.

Addresses exist in plaintext only in this process's memory: the table holds the AEAD ciphertext,
the key id and the blind index. Rows are named by a random 63-bit id chosen before the insert, so
the ciphertext can be bound to it in the same statement (and ids reveal nothing about sign-up
order or list size).

SQLAlchemy Core only; every query runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

from sqlalchemy import Engine, and_, delete, func, literal_column, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from subscribers.codec import Codec
from subscribers.errors import IndexRulesError, InputError
from subscribers.lifecycle import (
    SUPPRESSED,
    TIMESTAMP_COLUMN,
    Event,
    Recipient,
    Subscriber,
    SubscriberState,
    next_state,
)
from subscribers.normalise import InvalidAddress, fold, validate
from subscribers.schema import forgotten, list_meta
from subscribers.schema import subscribers as t
from subscribers.settings import ListSettings

__all__ = ["INDEX_RULES", "INSERT_COLUMNS", "BatchResult", "InConfirmation", "SubscriberStore",
           "bulk_connection", "insert_rows", "new_id"]

log = logging.getLogger("newsletter.subscribers")

# The ``list_meta`` row that records the blind index's folding rules.
INDEX_RULES = "index_rules"

# PostgreSQL and SQLite both accept this many bound values in one IN (...) comfortably.
_IN_CHUNK = 2000


def new_id() -> int:
    """A random positive 63-bit id (BigInteger on both backends)."""
    return secrets.randbits(63) or 1


def new_ids(n: int) -> list[int]:
    """``n`` random positive 63-bit ids from one read of the system CSPRNG."""
    block = os.urandom(8 * n)
    return [(int.from_bytes(block[i:i + 8], "big") >> 1) or 1 for i in range(0, 8 * n, 8)]


# The columns of a new row, in the order ``insert_rows`` takes them.
INSERT_COLUMNS = ("id", "email_index", "email_ct", "key_id", "language", "state", "created_at",
                  "state_changed_at", "confirmed_at")
_COPY_TYPES = ("int8", "bytea", "bytea", "varchar", "varchar", "varchar", "timestamptz",
               "timestamptz", "timestamptz")


def insert_rows(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert new subscriber rows (tuples in ``INSERT_COLUMNS`` order, timestamps already in
    the driver's form) inside the caller's transaction, by the cheapest bulk path.

    Imports are dominated by per-row overhead. On PostgreSQL a binary COPY costs a tenth of the
    client CPU of an ``executemany`` and half the wall time (bench/README.md); elsewhere one
    driver-level ``executemany`` of a statement compiled once skips SQLAlchemy's per-row
    parameter processing.
    """
    if not rows:
        return
    dialect = conn.dialect
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        raw: Any = conn.connection.driver_connection
        sql = f"COPY {t.name} ({', '.join(INSERT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        with raw.cursor() as cur, cur.copy(sql) as copy:
            copy.set_types(list(_COPY_TYPES))
            for row in rows:
                copy.write_row(row)
        return
    compiled = t.insert().compile(dialect=dialect, column_keys=list(INSERT_COLUMNS))
    if compiled.positional:
        order = [INSERT_COLUMNS.index(k) for k in compiled.positiontup or []]
        params: list[Any] = (list(rows) if order == list(range(len(INSERT_COLUMNS)))
                             else [tuple(r[i] for i in order) for r in rows])
    else:
        params = [dict(zip(INSERT_COLUMNS, r, strict=True)) for r in rows]
    conn.exec_driver_sql(str(compiled), params)


@contextmanager
def bulk_connection(engine: Engine) -> Iterator[Connection]:
    """One connection for a long bulk job (an import), a transaction per batch by the caller.

    Random ids and blind indexes touch pages all over the B-trees, so SQLite's page cache must
    survive from one batch to the next (a connection per batch would start cold every time)
    and be larger than its 2 MB default: 128 MB holds the indexes of a list of a million.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA cache_size=-131072")
            conn.commit()
        yield conn


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class BatchResult:
    """What one batch of new addresses did. Ids only, never addresses."""

    inserted: int = 0
    existing: int = 0
    changed: int = 0  # existing rows whose state moved (confirmed, reactivated)
    suppressed: int = 0  # existing rows left alone because they unsubscribed/bounced/complained
    ids: list[int] = field(default_factory=list)  # one per input row, in order
    pending_ids: list[int] = field(default_factory=list)  # rows pending after the batch


# Work that commits with a confirmation: (the open transaction, the reader just confirmed).
InConfirmation = Callable[[Connection, Recipient], None]


class SubscriberStore:
    """I/O edge for the ``subscribers`` table; the engine, codec and clock are passed in."""

    def __init__(self, engine: Engine, codec: Codec, clock: Callable[[], datetime],
                 settings: ListSettings | None = None) -> None:
        self.engine = engine
        self.codec = codec
        self.clock = clock
        self.settings = settings or ListSettings()

    # ------------------------------------------------------------------ helpers

    def check_language(self, language: str | None) -> str:
        """The language, defaulted; ``InputError`` if it is not one we offer."""
        if not language:
            return self.settings.default_language
        if language not in self.settings.choices:
            raise InputError(f"unknown language {language!r}; choose one of "
                             f"{', '.join(self.settings.choices)}")
        return language

    def index_of(self, delivery_address: str) -> bytes:
        """Blind index of an address already in delivery form (what ``validate`` returns)."""
        s = self.settings
        if not s.normalise_gmail_dots and not s.case_insensitive_domains:
            return self.codec.blind_index(delivery_address)  # the delivery form is the index form
        return self.codec.blind_index(fold(delivery_address, gmail_dots=s.normalise_gmail_dots,
                                           fold_case=s.case_insensitive_domains))

    def recorded_index_rules(self, conn: Connection) -> str | None:
        """The folding rules this list's blind indexes were made under, if recorded yet."""
        return conn.execute(select(list_meta.c.value)
                            .where(list_meta.c.name == INDEX_RULES)).scalar_one_or_none()

    def record_index_rules(self, conn: Connection) -> None:
        """Record the configured folding rules as the list's own (inside the caller's
        transaction)."""
        values = {"value": self.settings.index_rules, "updated_at": self.clock()}
        if conn.execute(update(list_meta).where(list_meta.c.name == INDEX_RULES)
                        .values(**values)).rowcount == 0:
            conn.execute(list_meta.insert().values(name=INDEX_RULES, **values))

    def verify_index_rules(self) -> None:
        """Refuse (``IndexRulesError``) a config that folds addresses differently from the
        rules the list was built under; on first use, record the configured rules.

        A list created before the rules were recorded takes the configured ones: that is what
        its indexes were made with unless the setting changed since, which cannot be known.
        """
        configured = self.settings.index_rules
        try:
            with self.engine.begin() as conn:
                recorded = self.recorded_index_rules(conn)
                if recorded is None:
                    self.record_index_rules(conn)
                    return
        except IntegrityError:  # another process recorded them a moment ago
            with self.engine.connect() as conn:
                recorded = self.recorded_index_rules(conn)
        if recorded != configured:
            raise IndexRulesError(recorded or "(none)", configured,
                                  self.settings.changed_rule(recorded or ""))

    def verify_key(self) -> None:
        """Fail with ``WrongKeyError`` before any write if the key file cannot open the rows.

        Every key id in use must be in the ring, and one row sealed by each must open.
        """
        with self.engine.connect() as conn:
            kids = [r[0] for r in conn.execute(select(t.c.key_id).distinct())]
            for kid in kids:
                row = conn.execute(select(t.c.id, t.c.email_ct).where(t.c.key_id == kid)
                                   .limit(1)).one()
                self.codec.open(row.id, kid, row.email_ct)

    def _record(self, row: Row[Any]) -> Subscriber:
        return Subscriber(
            id=row.id, language=row.language, state=SubscriberState(row.state),
            key_id=row.key_id, created_at=_utc(row.created_at) or self.clock(),
            state_changed_at=_utc(row.state_changed_at) or self.clock(),
            confirmed_at=_utc(row.confirmed_at), unsubscribed_at=_utc(row.unsubscribed_at),
            bounced_at=_utc(row.bounced_at), complained_at=_utc(row.complained_at),
        )

    _RECORD_COLS = (t.c.id, t.c.language, t.c.state, t.c.key_id, t.c.created_at,
                    t.c.state_changed_at, t.c.confirmed_at, t.c.unsubscribed_at,
                    t.c.bounced_at, t.c.complained_at)

    def _new_row(self, sid: int, address: str, index: bytes, language: str,
                 state: SubscriberState, now: datetime) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": sid, "email_index": index, "email_ct": self.codec.seal(sid, address.encode()),
            "key_id": self.codec.current_key_id, "language": language, "state": state.value,
            "created_at": now, "state_changed_at": now, "confirmed_at": None,
            "unsubscribed_at": None, "bounced_at": None, "complained_at": None,
        }
        if state is not SubscriberState.PENDING:
            row[TIMESTAMP_COLUMN[state]] = now
        return row

    @staticmethod
    def _state_values(state: SubscriberState, now: datetime) -> dict[str, Any]:
        values: dict[str, Any] = {"state": state.value, "state_changed_at": now}
        values[TIMESTAMP_COLUMN[state]] = now
        return values

    # ------------------------------------------------------------------ writes

    def add(self, address: str, language: str | None = None, *, confirmed: bool = False,
            reactivate: bool = False) -> int:
        """Add one address (or apply the import rules to an existing one); return its id, or
        0 for a forgotten address that stays suppressed."""
        try:
            delivery = validate(address)
        except InvalidAddress as exc:
            raise InputError(str(exc)) from None
        lang = self.check_language(language)
        event = Event.IMPORT_CONFIRMED if confirmed else Event.IMPORT
        result = self.add_batch([(delivery, lang)], event, reactivate=reactivate)
        return result.ids[0]

    def subscribe(self, address: str, language: str | None = None, *,
                  conn: Connection | None = None) -> tuple[int, SubscriberState]:
        """A reader's own request (subscribers/signup.py decides when): a new or suppressed
        address goes to pending (double opt-in); a pending one takes the language asked for,
        and keeps its state's time, so a confirmation link already sent stays valid; an active
        one is left alone (a language change needs the reader's confirmation).

        Returns the id and the state afterwards; inside the caller's transaction if ``conn``.
        """
        try:
            delivery = validate(address)
        except InvalidAddress as exc:
            raise InputError(str(exc)) from None
        lang = self.check_language(language)
        if conn is None:
            with self.engine.begin() as own:
                return self._subscribe(own, delivery, lang)
        return self._subscribe(conn, delivery, lang)

    def _subscribe(self, conn: Connection, delivery: str,
                   lang: str) -> tuple[int, SubscriberState]:
        index = self.index_of(delivery)
        now = self.clock()
        row = conn.execute(select(t.c.id, t.c.state).where(t.c.email_index == index)).first()
        if row is None:
            sid = new_id()
            fresh = self._new_row(sid, delivery, index, lang, SubscriberState.PENDING, now)
            # A forgotten reader who asks again starts afresh, through double opt-in; the
            # new row remembers the suppression until they confirm (``next_state``).
            gone = conn.execute(select(forgotten.c.state, forgotten.c.forgotten_at)
                                .where(forgotten.c.email_index == index)).first()
            if gone is not None:
                fresh[TIMESTAMP_COLUMN[SubscriberState(gone.state)]] = gone.forgotten_at
                conn.execute(delete(forgotten).where(forgotten.c.email_index == index))
            conn.execute(t.insert(), [fresh])
            log.info("subscriber %d signed up (pending)", sid)
            return sid, SubscriberState.PENDING
        before = SubscriberState(row.state)
        state = next_state(before, Event.FORM)
        if state is SubscriberState.ACTIVE:
            return int(row.id), state
        values: dict[str, Any] = {"language": lang}
        if state is not before:
            values.update(self._state_values(state, now))
        conn.execute(update(t).where(t.c.id == row.id).values(**values))
        log.info("subscriber %d used the subscribe form (%s -> %s)", row.id, before, state)
        return int(row.id), state

    def by_index(self, conn: Connection, index: bytes) -> Row[Any] | None:
        """(id, state, language) of the row with this blind index, inside ``conn``."""
        return conn.execute(select(t.c.id, t.c.state, t.c.language)
                            .where(t.c.email_index == index)).first()

    def expire_pending(self, older_than: timedelta) -> int:
        """Erase pending rows older than ``older_than``: an address someone typed into the form
        and never confirmed (or an import without ``--confirmed``) is kept no longer.

        Only a row that was suppressed before leaves its blind index behind, with its strongest
        suppression, as ``forget`` does: a stranger's address is not remembered at all."""
        cutoff = self.clock() - older_than
        total = 0
        while True:
            with self.engine.begin() as conn:
                rows = conn.execute(
                    select(t.c.id, t.c.email_index, t.c.unsubscribed_at, t.c.bounced_at,
                           t.c.complained_at)
                    .where(and_(t.c.state == SubscriberState.PENDING.value,
                                t.c.state_changed_at < cutoff)).limit(_IN_CHUNK)).all()
                if not rows:
                    return total
                kept = []
                for r in rows:
                    was = (SubscriberState.COMPLAINED if r.complained_at else
                           SubscriberState.BOUNCED if r.bounced_at else
                           SubscriberState.UNSUBSCRIBED if r.unsubscribed_at else None)
                    if was is not None:
                        kept.append({"email_index": bytes(r.email_index), "state": was.value,
                                     "forgotten_at": self.clock()})
                if kept:
                    conn.execute(delete(forgotten).where(forgotten.c.email_index.in_(
                        [k["email_index"] for k in kept])))
                    conn.execute(forgotten.insert(), kept)
                conn.execute(delete(t).where(t.c.id.in_([r.id for r in rows])))
            for r in rows:
                log.info("subscriber %d expired unconfirmed", r.id)
            total += len(rows)

    def add_batch(self, rows: Sequence[tuple[str, str]], event: Event, *,
                  reactivate: bool = False, conn: Connection | None = None,
                  indexes: Sequence[bytes] | None = None) -> BatchResult:
        """Insert or update a batch of (delivery address, language) in one transaction.

        Addresses must already be validated and languages checked; ``indexes`` may carry their
        blind indexes when the caller computed them already. Duplicates inside the batch map
        to the same id.

        The batch's new ids are drawn at random and then handed out in the order of the rows'
        blind indexes, and the rows go in sorted: both unique B-trees are then filled in one
        ascending sweep instead of at random pages, which cuts the database's share of a
        large import by about a quarter (bench/README.md). The ids are as random as before;
        their order inside a batch follows keyed hashes, which mean nothing without the key.
        """
        if conn is None:
            with self.engine.begin() as own:
                return self.add_batch(rows, event, reactivate=reactivate, conn=own,
                                      indexes=indexes)
        now = self.clock()
        if indexes is None:
            indexes = [self.index_of(addr) for addr, _ in rows]
        # Sorted by integer keys, not by the bytes: comparing bytes objects strewn over the
        # heap misses the CPU cache at every step, and cost more than the sort saved.
        unique = list(dict.fromkeys(indexes))
        unique.sort(key=int.from_bytes)
        existing = self._existing(conn, unique)
        result = BatchResult()
        new_rows: list[tuple[int, bytes, bytes, str]] = []
        changes: dict[int, SubscriberState] = {}
        target_new = next_state(None, event)
        fresh = [index for index in unique if index not in existing]
        kept_out = self._forgotten(conn, fresh)  # erased readers stay suppressed...
        if kept_out and reactivate:  # ...unless the operator says otherwise
            conn.execute(delete(forgotten).where(forgotten.c.email_index.in_(kept_out)))
            kept_out = set()
        elif kept_out:
            fresh = [index for index in fresh if index not in kept_out]
        fresh_ids = dict(zip(fresh, sorted(new_ids(len(fresh))), strict=True))
        for (addr, lang), index in zip(rows, indexes, strict=True):
            hit = existing.get(index)
            if hit is None and kept_out and index in kept_out:
                result.ids.append(0)
                result.existing += 1
                result.suppressed += 1
                continue
            if hit is None:
                sid = fresh_ids[index]
                new_rows.append((sid, index, addr.encode("utf-8"), lang))
                existing[index] = (sid, target_new.value, False)
                result.inserted += 1
                result.ids.append(sid)
                if target_new is SubscriberState.PENDING:
                    result.pending_ids.append(sid)
                continue
            sid, state, was_suppressed = hit
            result.ids.append(sid)
            result.existing += 1
            after = next_state(SubscriberState(state), event, reactivate=reactivate,
                               was_suppressed=was_suppressed)
            if after is SubscriberState.PENDING and sid not in result.pending_ids:
                result.pending_ids.append(sid)
            if after.value != state:
                changes[sid] = after
                existing[index] = (sid, after.value, was_suppressed)
            elif SubscriberState(state) in SUPPRESSED or (was_suppressed and not reactivate):
                result.suppressed += 1
        if new_rows:
            new_rows.sort(key=itemgetter(0))  # by id, which is blind-index order too
            self._bulk_insert(conn, new_rows, target_new, now)
        for sid, after in changes.items():
            conn.execute(update(t).where(t.c.id == sid).values(**self._state_values(after, now)))
        result.changed = len(changes)
        return result

    @staticmethod
    def _forgotten(conn: Connection, indexes: Sequence[bytes]) -> set[bytes]:
        """The blind indexes among ``indexes`` that belong to forgotten subscribers."""
        if not indexes or conn.execute(select(forgotten.c.state).limit(1)).first() is None:
            return set()  # the usual case, one cheap query per batch
        found: set[bytes] = set()
        for start in range(0, len(indexes), _IN_CHUNK):
            chunk = list(indexes[start:start + _IN_CHUNK])
            found.update(bytes(i) for i in conn.execute(
                select(forgotten.c.email_index).where(forgotten.c.email_index.in_(chunk)))
                .scalars())
        return found

    @classmethod
    def _taken_indexes(cls, conn: Connection, indexes: Sequence[bytes]) -> set[bytes]:
        """The blind indexes among ``indexes`` that are listed or forgotten (a restore adds
        neither again)."""
        listed = {bytes(b) for b in conn.execute(select(t.c.email_index)
                                                 .where(t.c.email_index.in_(indexes))).scalars()}
        return listed | cls._forgotten(conn, indexes)

    @staticmethod
    def _existing(conn: Connection,
                  indexes: Sequence[bytes]) -> dict[bytes, tuple[int, str, bool]]:
        """Id, state and whether it was ever suppressed (``next_state``'s ``was_suppressed``),
        of the rows among ``indexes`` (blind indexes) that are already stored.

        Plain driver SQL: SQLAlchemy's per-value bind processing of an expanding IN cost more
        than the lookup itself on an import of a million rows. On PostgreSQL the whole list
        goes as one binary array parameter: psycopg parsed each 2,000-marker statement afresh,
        which cost more client time than the server spent answering.
        """
        found: dict[bytes, tuple[int, str, bool]] = {}
        cols = (f"email_index, id, state, (unsubscribed_at IS NOT NULL OR bounced_at IS NOT NULL "
                f"OR complained_at IS NOT NULL) FROM {t.name}")
        if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
            raw: Any = conn.connection.driver_connection
            sql = f"SELECT {cols} WHERE email_index = ANY(%b)"
            with raw.cursor(binary=True) as cur:  # a binary bytea[]: no escaping per element
                for index, sid, state, before in cur.execute(sql, (list(indexes),)):
                    found[bytes(index)] = (int(sid), str(state), bool(before))
            return found
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        for start in range(0, len(indexes), _IN_CHUNK):
            chunk = indexes[start:start + _IN_CHUNK]
            sql = f"SELECT {cols} WHERE email_index IN ({', '.join([mark] * len(chunk))})"
            for index, sid, state, before in conn.exec_driver_sql(sql, tuple(chunk)):
                found[bytes(index)] = (int(sid), str(state), bool(before))
        return found

    def _bulk_insert(self, conn: Connection, rows: Sequence[tuple[int, bytes, bytes, str]],
                     state: SubscriberState, now: datetime) -> None:
        """Seal a batch of new rows and hand them to ``insert_rows`` as plain tuples."""
        to_db = t.c.created_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        stamp = to_db(now) if to_db is not None else now
        confirmed = stamp if state is SubscriberState.ACTIVE else None
        sealed = self.codec.seal_many([r[0] for r in rows], [r[2] for r in rows])
        kid = self.codec.current_key_id
        st = state.value
        insert_rows(conn, [(sid, index, ct, kid, lang, st, stamp, stamp, confirmed)
                           for (sid, index, _, lang), ct in zip(rows, sealed, strict=True)])

    def set_state(self, subscriber_id: int, state: SubscriberState | str) -> bool:
        """Force a state (operator action, bounce processing). True if the row changed."""
        state = SubscriberState(state)
        with self.engine.begin() as conn:
            res = conn.execute(update(t).where(and_(t.c.id == subscriber_id,
                                                    t.c.state != state.value))
                               .values(**self._state_values(state, self.clock())))
            changed = res.rowcount > 0
        if changed:
            log.info("subscriber %d is now %s", subscriber_id, state)
        return changed

    def forget(self, ids: Iterable[int]) -> int:
        """Erase subscribers: delete their rows, and the sealed address with them.

        Only the blind index is kept (``forgotten``), as the suppression it stands for: an
        import will not bring the address back (unless ``--reactivate``), while the subscribe
        form still can, through double opt-in. Returns how many rows were erased.
        """
        wanted = list(dict.fromkeys(ids))
        erased: list[int] = []
        now = self.clock()
        with self.engine.begin() as conn:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start:start + _IN_CHUNK]
                rows = conn.execute(select(t.c.id, t.c.email_index, t.c.state)
                                    .where(t.c.id.in_(chunk))).all()
                if not rows:
                    continue
                indexes = [bytes(r.email_index) for r in rows]
                conn.execute(delete(forgotten).where(forgotten.c.email_index.in_(indexes)))
                conn.execute(forgotten.insert(), [
                    {"email_index": index, "forgotten_at": now,
                     "state": (r.state if SubscriberState(r.state) in SUPPRESSED
                               else SubscriberState.UNSUBSCRIBED.value)}
                    for r, index in zip(rows, indexes, strict=True)])
                conn.execute(delete(t).where(t.c.id.in_([r.id for r in rows])))
                erased.extend(int(r.id) for r in rows)
        for sid in erased:
            log.info("subscriber %d forgotten", sid)
        return len(erased)

    def forget_suppressed(self, older_than: timedelta) -> int:
        """Forget every unsubscribed, bounced or complained subscriber whose state is older
        than ``older_than``: a retention limit for addresses we no longer mail."""
        cutoff = self.clock() - older_than
        suppressed = [s.value for s in SUPPRESSED]
        total = 0
        while True:
            with self.engine.connect() as conn:
                ids = list(conn.execute(
                    select(t.c.id).where(and_(t.c.state.in_(suppressed),
                                              t.c.state_changed_at < cutoff))
                    .limit(_IN_CHUNK)).scalars())
            if not ids:
                return total
            total += self.forget(ids)

    def count_forgotten(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(forgotten)).scalar_one())

    def insert_forgotten(self, conn: Connection, entries: Sequence[dict[str, Any]]) -> int:
        """Restore forgotten blind indexes (backup restore), unless the index is listed or
        already forgotten. Returns how many were added."""
        taken = self._taken_indexes(conn, [e["email_index"] for e in entries])
        fresh = [e for e in entries if e["email_index"] not in taken]
        if fresh:
            conn.execute(forgotten.insert(), fresh)
        return len(fresh)

    def stream_forgotten(self) -> Iterator[Row[Any]]:
        """Every forgotten blind index (for the encrypted backup)."""
        last = b""
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(select(forgotten).where(forgotten.c.email_index > last)
                                    .order_by(forgotten.c.email_index).limit(_IN_CHUNK)).all()
            yield from rows
            if len(rows) < _IN_CHUNK:
                return
            last = bytes(rows[-1].email_index)

    def apply(self, subscriber_id: int, event: Event) -> SubscriberState | None:
        """Apply a lifecycle event; None if the id is unknown. Idempotent."""
        with self.engine.begin() as conn:
            row = conn.execute(select(t.c.state).where(t.c.id == subscriber_id)).first()
            if row is None:
                return None
            before = SubscriberState(row.state)
            after = next_state(before, event)
            if after is not before:
                conn.execute(update(t).where(and_(t.c.id == subscriber_id,
                                                  t.c.state == before.value))
                             .values(**self._state_values(after, self.clock())))
                log.info("subscriber %d: %s -> %s (%s)", subscriber_id, before, after, event)
            return after

    def unsubscribe(self, subscriber_id: int) -> SubscriberState | None:
        return self.apply(subscriber_id, Event.UNSUBSCRIBE)

    def confirm(self, subscriber_id: int, issued_at: datetime | None = None, *,
                then: InConfirmation | None = None) -> SubscriberState | None:
        """Confirm a pending subscriber. A token issued before the subscriber's last state
        change (e.g. before a later unsubscribe) confirms nothing. ``then`` runs inside the
        confirming transaction, so what it writes (the welcome's outbox row) commits with the
        confirmation or not at all."""
        with self.engine.begin() as conn:
            row = conn.execute(select(t.c.state, t.c.state_changed_at, t.c.key_id, t.c.email_ct,
                                      t.c.language).where(t.c.id == subscriber_id)).first()
            if row is None:
                return None
            before = SubscriberState(row.state)
            if before is not SubscriberState.PENDING:
                return before
            changed_at = _utc(row.state_changed_at)
            if issued_at is not None and changed_at is not None and \
                    issued_at.replace(microsecond=0) < changed_at.replace(microsecond=0):
                return before
            conn.execute(update(t).where(and_(t.c.id == subscriber_id,
                                              t.c.state == before.value))
                         .values(**self._state_values(SubscriberState.ACTIVE, self.clock())))
            if then is not None:
                then(conn, Recipient(subscriber_id, self.codec.open(
                    subscriber_id, row.key_id, row.email_ct).decode("utf-8"), row.language))
            log.info("subscriber %d confirmed", subscriber_id)
            return SubscriberState.ACTIVE

    def set_language(self, subscriber_id: int, language: str) -> bool:
        lang = self.check_language(language)
        with self.engine.begin() as conn:
            return conn.execute(update(t).where(t.c.id == subscriber_id)
                                .values(language=lang)).rowcount > 0

    # ------------------------------------------------------------------ reads

    def get(self, subscriber_id: int) -> Subscriber | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(*self._RECORD_COLS).where(t.c.id == subscriber_id)).first()
        return self._record(row) if row is not None else None

    def _index_for(self, address: str) -> bytes | None:
        """The blind index of an address as someone typed it; None if it is not one."""
        try:
            return self.index_of(validate(address))
        except InvalidAddress:
            return None

    def lookup(self, address: str) -> Subscriber | None:
        """Find by address through the blind index: nothing is decrypted."""
        index = self._index_for(address)
        if index is None:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(*self._RECORD_COLS).where(t.c.email_index == index)).first()
        return self._record(row) if row is not None else None

    def forgotten_state(self, address: str) -> str | None:
        """The suppression a forgotten address stands for, or None if it was not forgotten."""
        index = self._index_for(address)
        if index is None:
            return None
        with self.engine.connect() as conn:
            return conn.execute(select(forgotten.c.state)
                                .where(forgotten.c.email_index == index)).scalar_one_or_none()

    def address_of(self, subscriber_id: int) -> str | None:
        """Decrypt one address (to send a confirmation mail)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(t.c.id, t.c.key_id, t.c.email_ct)
                               .where(t.c.id == subscriber_id)).first()
        if row is None:
            return None
        return self.codec.open(row.id, row.key_id, row.email_ct).decode("utf-8")

    def count(self, state: SubscriberState | str | None = SubscriberState.ACTIVE) -> int:
        """Rows in ``state`` (active by default); ``None`` counts every row."""
        q = select(func.count()).select_from(t)
        if state is not None:
            q = q.where(t.c.state == SubscriberState(state).value)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def counts(self) -> dict[SubscriberState, int]:
        out = {s: 0 for s in SubscriberState}
        with self.engine.connect() as conn:
            for state, n in conn.execute(select(t.c.state, func.count()).group_by(t.c.state)):
                out[SubscriberState(state)] = int(n)
        return out

    def counts_by_language(self) -> dict[tuple[SubscriberState, str], int]:
        """Rows per (state, language choice): the admin's dashboard, counts only."""
        with self.engine.connect() as conn:
            return {(SubscriberState(state), str(lang)): int(n) for state, lang, n in conn.execute(
                select(t.c.state, t.c.language, func.count()).group_by(t.c.state, t.c.language))}

    def _recipients(self, rows: Iterable[Row[Any]]) -> Iterator[Recipient]:
        open_ = self.codec.open
        for sid, kid, ct, lang, *_ in rows:
            yield Recipient(sid, open_(sid, kid, ct).decode("utf-8"), lang)

    def _walk(self, columns: Sequence[Any], batch_size: int) -> Iterator[Sequence[Row[Any]]]:
        """Batches of rows (keyset pagination on the primary key, or SQLite's rowid).

        One connection serves the whole walk, so SQLite keeps its page cache (the id index)
        from batch to batch; each batch is its own short read transaction, ended before the
        rows are handed out, so a long send never holds a snapshot open and a state change
        committed meanwhile is seen by the next batch.
        """
        last = -(2**63)
        with self.engine.connect() as conn:
            key: Any = t.c.id
            if conn.dialect.name == "sqlite":
                # SQLite stores rows in rowid (insertion) order and ids are random: walking the
                # id index reads a random table page per row, five times the cost of reading
                # in storage order. The rowid is as good a keyset (it never changes under us).
                key = literal_column("subscribers.rowid")
                conn.exec_driver_sql("PRAGMA cache_size=-32768")  # 32 MB
                conn.commit()
            q = select(*columns, key.label("walk_key"))
            while True:
                rows = conn.execute(q.where(key > last).order_by(key).limit(batch_size)).all()
                conn.commit()
                yield rows
                if len(rows) < batch_size:
                    return
                last = rows[-1].walk_key

    def stream_active(self, batch_size: int = 2000) -> Iterator[Recipient]:
        """Every active subscriber, decrypted a batch at a time; never the whole list at once.

        The filter on state is applied here, not in SQL: with ``state = 'active'`` in the
        WHERE clause SQLite may pick the state index and sort every remaining active row for
        each batch (quadratic on a large list); the keyset walk never does.
        """
        active = SubscriberState.ACTIVE.value
        cols = (t.c.id, t.c.key_id, t.c.email_ct, t.c.language, t.c.state)
        for rows in self._walk(cols, batch_size):
            yield from self._recipients(r for r in rows if r[4] == active)

    def stream_all(self, batch_size: int = 2000) -> Iterator[tuple[Row[Any], str]]:
        """Every row with its decrypted address (export and backup)."""
        for rows in self._walk((*self._RECORD_COLS, t.c.email_ct), batch_size):
            for r in rows:
                yield r, self.codec.open(r.id, r.key_id, r.email_ct).decode("utf-8")

    def stream_active_ids(self, batch_size: int = 5000) -> Iterator[int]:
        """Active ids only (enqueueing an edition needs no plaintext)."""
        last = -1
        active = SubscriberState.ACTIVE.value
        while True:  # primary-key walk, state filtered here (see ``stream_active``)
            with self.engine.connect() as conn:
                rows = conn.execute(select(t.c.id, t.c.state).where(t.c.id > last)
                                    .order_by(t.c.id).limit(batch_size)).all()
            yield from (int(r.id) for r in rows if r.state == active)
            if len(rows) < batch_size:
                return
            last = rows[-1].id

    def get_recipients(self, ids: Sequence[int]) -> dict[int, Recipient]:
        """The still-active subscribers among ``ids``, decrypted.

        The sender calls this right before each batch, so an unsubscribe committed a moment ago
        is honoured before that recipient's turn. The state is filtered here, not in SQL: with
        ``state = 'active'`` beside the id list, SQLite picks the state index and reads every
        active row for each batch (a send of N recipients would cost N² row reads).
        """
        out: dict[int, Recipient] = {}
        wanted = list(dict.fromkeys(ids))
        active = SubscriberState.ACTIVE.value
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start:start + _IN_CHUNK]
                rows = conn.execute(select(t.c.id, t.c.key_id, t.c.email_ct, t.c.language,
                                           t.c.state).where(t.c.id.in_(chunk)))
                for rec in self._recipients(r for r in rows if r.state == active):
                    out[rec.id] = rec
        return out

    def insert_raw(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
        """Insert fully formed rows (backup restore); rows whose id or address is already
        present are skipped, and so are forgotten addresses: an erasure is never undone by
        restoring a backup taken before it. Returns how many were inserted."""
        ids = [r["id"] for r in rows]
        taken_ids = set(conn.execute(select(t.c.id).where(t.c.id.in_(ids))).scalars())
        taken_idx = self._taken_indexes(conn, [r["email_index"] for r in rows])
        fresh = [r for r in rows if r["id"] not in taken_ids and r["email_index"] not in taken_idx]
        if fresh:
            conn.execute(t.insert(), fresh)
        return len(fresh)

