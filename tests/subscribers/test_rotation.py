"""Key rotation: batches, interruption and resume, retirement, tokens still valid."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from subscribers.codec import Codec
from subscribers.errors import WrongKeyError
from subscribers.keys import KeyRing
from subscribers.rotation import SealedRow, reseal, rotate
from subscribers.schema import subscribers as t
from subscribers.store import SubscriberStore
from subscribers.tokens import TokenSigner
from tests.subscribers.conftest import LANGS, Clock


def key_ids_in_use(store: SubscriberStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {k: n for k, n in conn.execute(select(t.c.key_id, func.count()).group_by(t.c.key_id))}


def test_interrupted_rotation_resumes_and_retires(store: SubscriberStore, ring: KeyRing,
                                                  clock: Clock) -> None:
    ids = [store.add(f"r{i}@qq.com", "en", confirmed=True) for i in range(25)]
    token = TokenSigner(ring.token_key, clock).unsubscribe_token(ids[0])
    old = ring.current
    progress: list[tuple[int, int]] = []
    first = rotate(store, batch_size=10, stop_after=1, progress=lambda d, n: progress.append((d, n)))
    assert progress == [(10, 25)]
    assert not first.retired
    mixed = key_ids_in_use(store)
    assert mixed == {old: 15, first.new_key_id: 10}

    # "A new process": reload the key file, which now holds both keys.
    reloaded = KeyRing.load(ring.path)
    assert set(reloaded.aead) == {old, first.new_key_id}
    store2 = SubscriberStore(store.engine, Codec(reloaded), clock, LANGS)
    store2.verify_key()
    assert len(list(store2.stream_active())) == 25
    # A subscriber added mid-rotation is sealed with the new key.
    late = store2.add("late@qq.com", "en", confirmed=True)

    second = rotate(store2, batch_size=10)
    assert second.resumed
    assert second.new_key_id == first.new_key_id
    assert second.retired == (old,)
    assert key_ids_in_use(store2) == {first.new_key_id: 26}
    on_disk = json.loads(ring.path.read_text())
    assert [k["id"] for k in on_disk["aead"]] == [first.new_key_id]

    final = SubscriberStore(store.engine, Codec(KeyRing.load(ring.path)), clock, LANGS)
    final.verify_key()
    addresses = {r.id: r.address for r in final.stream_active()}
    assert addresses[ids[7]] == "r7@qq.com"
    assert addresses[late] == "late@qq.com"
    signer = TokenSigner(KeyRing.load(ring.path).token_key, clock)
    assert signer.verify_unsubscribe(token) == ids[0]
    assert final.lookup("r3@qq.com") is not None  # the blind index did not change


def test_a_wrong_key_file_touches_nothing(store: SubscriberStore, ring: KeyRing,
                                          clock: Clock) -> None:
    store.add("w@qq.com", "en", confirmed=True)
    with store.engine.connect() as conn:
        before = conn.execute(select(t)).all()
    key_file = ring.path.read_bytes()
    wrong = SubscriberStore(store.engine, Codec(KeyRing.generate(ring.path)), clock, LANGS)
    with pytest.raises(WrongKeyError):
        wrong.verify_key()
    with pytest.raises(WrongKeyError):
        rotate(wrong)
    with store.engine.connect() as conn:
        assert conn.execute(select(t)).all() == before
    assert ring.path.read_bytes() == key_file  # the real key file was not replaced


def test_a_running_process_follows_the_rotation(store: SubscriberStore, ring: KeyRing,
                                                clock: Clock) -> None:
    """The daemon or ``serve`` loaded the key file before the rotation and keeps running."""
    ids = [store.add(f"d{i}@qq.com", "en", confirmed=True) for i in range(5)]
    running = SubscriberStore(store.engine, Codec(KeyRing.load(ring.path)), clock, LANGS)
    rotator = SubscriberStore(store.engine, Codec(KeyRing.load(ring.path)), clock, LANGS)
    written_meanwhile: list[int] = []

    def settle(seconds: float) -> None:
        # Before its timer fires, the running process still seals under the old key...
        assert seconds == 7
        written_meanwhile.append(running.add("meanwhile@qq.com", "en", confirmed=True))
        assert key_ids_in_use(store)[ring.current] == 1

    result = rotate(rotator, batch_size=2, settle=timedelta(seconds=7), sleep=settle)
    # ...and the rotation waited for it, re-sealed that row too, then retired the old key.
    assert result.retired == (ring.current,)
    assert key_ids_in_use(store) == {result.new_key_id: 6}
    # Rows re-encrypted under a key the running process never loaded still open (it looks once)...
    assert set(running.get_recipients([*ids, *written_meanwhile])) == {*ids, *written_meanwhile}
    # ...and after its timer's reload, what it writes is sealed with the new key.
    assert running.codec.refresh() is False  # the miss above already loaded it
    late = running.add("after@qq.com", "en", confirmed=True)
    assert key_ids_in_use(store) == {result.new_key_id: 7}
    fresh = SubscriberStore(store.engine, Codec(KeyRing.load(ring.path)), clock, LANGS)
    assert fresh.get_recipients([late])[late].address == "after@qq.com"


def test_sealing_reads_no_key_file(store: SubscriberStore, ring: KeyRing, clock: Clock) -> None:
    """The hot path is I/O free: a rewritten key file changes nothing until ``refresh()``."""
    running = SubscriberStore(store.engine, Codec(KeyRing.load(ring.path)), clock, LANGS)
    rotated = ring.with_new_key()
    rotated.save()
    running.add("before-reload@qq.com", "en", confirmed=True)
    assert key_ids_in_use(store) == {ring.current: 1}
    assert running.codec.refresh() is True
    running.add("after-reload@qq.com", "en", confirmed=True)
    assert key_ids_in_use(store) == {ring.current: 1, rotated.current: 1}


_OLD = KeyRing.generate(Path("/nonexistent/keys.json"))
_NEW = _OLD.with_new_key()


@given(row_id=st.integers(1, 2**40), email=st.binary(min_size=1, max_size=200),
       extra=st.none() | st.binary(max_size=200))
def test_reseal_is_multifernet_rotate_for_one_row(row_id: int, email: bytes,
                                                  extra: bytes | None) -> None:
    old, new = Codec(_OLD), Codec(_NEW)
    row = SealedRow(row_id, old.current_key_id, old.seal(row_id, email),
                    None if extra is None else old.seal(row_id, extra, b"extra:"))
    after = reseal(new, row)
    assert after.id == row_id
    assert after.key_id == _NEW.current != row.key_id
    assert new.open(row_id, after.key_id, after.email_ct) == email
    if extra is None:
        assert after.extra_ct is None
    else:
        assert after.extra_ct is not None
        assert new.open(row_id, after.key_id, after.extra_ct, b"extra:") == extra
    assert reseal(new, after) is after  # a row already under the current key is left alone
    with pytest.raises(WrongKeyError):  # a ring without the row's key writes nothing
        reseal(Codec(KeyRing.generate(Path("/nonexistent/other.json"))), row)
