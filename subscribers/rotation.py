"""Key rotation: add a new AEAD key, re-seal every row, retire keys no row uses.

Re-sealing is ``reseal``, a pure step over one row in the manner of ``MultiFernet.rotate``:
open under whichever key of the ring sealed it, seal under the ring's current key. ``rotate``
only walks the rows with it, using a codec of its own; the store's codec is never swapped.

The new key is written to the key file first (atomically), and progress is kept in the
``key_rotation`` table, one commit per batch: an interrupted rotation (even SIGKILL) resumes
where it stopped and never loses a row, because every row is readable under the old or the
new key throughout, and a row is updated only if it still carries the key it was read with.
Old keys are removed from the file only after a count shows no row still uses them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, func, select, update

from subscribers.codec import Codec
from subscribers.schema import key_rotation
from subscribers.schema import subscribers as t
from subscribers.store import SubscriberStore

__all__ = ["RotationResult", "SealedRow", "reseal", "rotate"]

log = logging.getLogger("newsletter.keys")


@dataclass(frozen=True)
class RotationResult:
    new_key_id: str
    reencrypted: int
    retired: tuple[str, ...]
    resumed: bool


@dataclass(frozen=True)
class SealedRow:
    """A subscriber row's ciphertexts and the id of the key that sealed them."""

    id: int
    key_id: str
    email_ct: bytes
    extra_ct: bytes | None


def reseal(codec: Codec, row: SealedRow) -> SealedRow:
    """The row sealed under ``codec``'s current key; a row already under it comes back as is.

    Raises ``WrongKeyError`` if no key of the ring opens it, so nothing is written.
    """
    new = codec.current_key_id
    if row.key_id == new:
        return row
    email = codec.seal(row.id, codec.open(row.id, row.key_id, row.email_ct))
    extra = None
    if row.extra_ct is not None:
        extra = codec.seal(row.id, codec.open(row.id, row.key_id, row.extra_ct, b"extra:"),
                           b"extra:")
    return SealedRow(row.id, new, email, extra)


def _unfinished(store: SubscriberStore) -> str | None:
    with store.engine.connect() as conn:
        row = conn.execute(select(key_rotation.c.new_key_id)
                           .where(key_rotation.c.finished_at.is_(None))).first()
    return None if row is None else str(row.new_key_id)


def rotate(store: SubscriberStore, *, batch_size: int = 2000,
           progress: Callable[[int, int], None] | None = None,
           stop_after: int | None = None, settle: timedelta = timedelta(0),
           sleep: Callable[[float], None] = time.sleep) -> RotationResult:
    """Rotate (or resume an interrupted rotation). ``stop_after`` batches simulates a crash.

    ``settle``: how long running processes may take to load the new key file (``keys rotate``
    passes a little more than ``[storage] key_reload_every``). After the pass, the rotation
    waits that long, re-seals what they wrote under the old key meanwhile, and only then
    retires it.
    """
    store.verify_key()  # a wrong key file must not gain a key, nor touch a row
    ring = store.codec.ring
    pending = _unfinished(store)
    resumed = pending is not None and pending == ring.current
    if not resumed:
        ring = ring.with_new_key()
        ring.save()
        with store.engine.begin() as conn:
            conn.execute(key_rotation.insert().values(new_key_id=ring.current, last_id=-1, done=0,
                                                      started_at=store.clock()))
        log.info("key rotation started: new key %s", ring.current)
    codec = Codec(ring)
    new = ring.current
    with store.engine.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(t)
                                 .where(t.c.key_id != new)).scalar_one())
        last, done = conn.execute(select(key_rotation.c.last_id, key_rotation.c.done)
                                  .where(key_rotation.c.new_key_id == new)).one()
    batches = 0
    reencrypted = 0
    settled = False
    while True:
        with store.engine.begin() as conn:
            rows = conn.execute(select(t.c.id, t.c.key_id, t.c.email_ct, t.c.extra_ct)
                                .where(and_(t.c.id > last, t.c.key_id != new))
                                .order_by(t.c.id).limit(batch_size)).all()
            for r in rows:
                after = reseal(codec, SealedRow(r.id, r.key_id, r.email_ct, r.extra_ct))
                values: dict[str, object] = {"key_id": after.key_id, "email_ct": after.email_ct}
                if after.extra_ct is not None:
                    values["extra_ct"] = after.extra_ct
                # Guard on the old key id: a row re-sealed meanwhile is not touched twice.
                conn.execute(update(t).where(and_(t.c.id == r.id, t.c.key_id == r.key_id))
                             .values(**values))
            if rows:
                last = rows[-1].id
                done += len(rows)
                reencrypted += len(rows)
            conn.execute(update(key_rotation).where(key_rotation.c.new_key_id == new)
                         .values(last_id=last, done=done))
        if progress is not None and rows:
            progress(reencrypted, total)
        if len(rows) >= batch_size:
            batches += 1
            if stop_after is not None and batches >= stop_after:
                return RotationResult(new, reencrypted, (), resumed)
            continue
        if settled or settle <= timedelta(0):
            break
        # Processes that loaded the key file before this rotation seal new rows under the old
        # key until their next reload: wait for it, then sweep once more from the start.
        log.info("key rotation %s: waiting %ds for running processes to load the new key",
                 new, round(settle.total_seconds()))
        sleep(settle.total_seconds())
        settled, last = True, -1
    # Rows written under the old key after the sweep (a process that missed its reload): count
    # per key; only keys with no rows are retired.
    with store.engine.connect() as conn:
        in_use = {str(k) for k in conn.execute(select(t.c.key_id).distinct()).scalars()}
    retired = tuple(sorted(k for k in ring.aead if k != new and k not in in_use))
    if retired:
        ring = ring.without_keys(set(retired))
        ring.save()
    with store.engine.begin() as conn:
        conn.execute(update(key_rotation).where(key_rotation.c.new_key_id == new)
                     .values(finished_at=store.clock()))
    log.info("key rotation %s finished: %d rows re-encrypted, retired %s", new, reencrypted,
             ", ".join(retired) or "none")
    return RotationResult(new, reencrypted, retired, resumed)
