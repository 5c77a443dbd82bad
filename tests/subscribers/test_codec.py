"""AEAD codec and blind index: round trips, row binding, corruption and the wrong key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subscribers.codec import NONCE_BYTES, Codec
from subscribers.errors import WrongKeyError
from subscribers.keys import KeyRing

RING = KeyRing.generate(__import__("pathlib").Path("/nonexistent/keys.json"))
CODEC = Codec(RING)
ids = st.integers(min_value=1, max_value=2**63 - 1)


@given(ids, st.binary(max_size=300))
def test_round_trip(row_id: int, plain: bytes) -> None:
    blob = CODEC.seal(row_id, plain)
    if len(plain) >= 8:  # shorter strings may appear in random bytes by chance
        assert plain not in blob[NONCE_BYTES:]
    assert CODEC.open(row_id, CODEC.current_key_id, blob) == plain


@given(ids, ids, st.binary(min_size=1, max_size=64))
def test_ciphertext_is_bound_to_its_row(a: int, b: int, plain: bytes) -> None:
    if a == b:
        return
    blob = CODEC.seal(a, plain)
    with pytest.raises(WrongKeyError, match=str(b)):
        CODEC.open(b, CODEC.current_key_id, blob)


def test_same_plaintext_seals_differently() -> None:
    assert CODEC.seal(1, b"a@qq.com") != CODEC.seal(1, b"a@qq.com")


@given(st.binary(min_size=1, max_size=40), st.data())
def test_any_corruption_is_detected(plain: bytes, data: st.DataObject) -> None:
    blob = bytearray(CODEC.seal(7, plain))
    pos = data.draw(st.integers(0, len(blob) - 1))
    blob[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(WrongKeyError):
        CODEC.open(7, CODEC.current_key_id, bytes(blob))


def test_wrong_key_and_unknown_key_id() -> None:
    blob = CODEC.seal(9, b"someone@163.com")
    other = Codec(KeyRing.generate(RING.path))
    with pytest.raises(WrongKeyError) as exc:
        other.open(9, CODEC.current_key_id, blob)
    assert "someone" not in str(exc.value)
    assert exc.value.exit_code == 2
    with pytest.raises(WrongKeyError, match="does not hold"):
        CODEC.open(9, "k-missing", blob)
    with pytest.raises(WrongKeyError):
        CODEC.open(9, CODEC.current_key_id, blob[:10])  # truncated


@given(st.text(max_size=60), st.text(max_size=60))
def test_blind_index_is_a_keyed_function(a: str, b: str) -> None:
    assert CODEC.blind_index(a) == CODEC.blind_index(a)
    assert len(CODEC.blind_index(a)) == 32
    if a != b:
        assert CODEC.blind_index(a) != CODEC.blind_index(b)
    other = Codec(KeyRing.generate(RING.path))
    assert other.blind_index(a) != CODEC.blind_index(a)


def test_old_rows_open_after_a_new_key() -> None:
    blob = CODEC.seal(5, b"old@qq.com")
    newer = Codec(RING.with_new_key())
    assert newer.current_key_id != CODEC.current_key_id
    assert newer.open(5, CODEC.current_key_id, blob) == b"old@qq.com"
    assert newer.blind_index("x") == CODEC.blind_index("x")  # the index key never rotates
