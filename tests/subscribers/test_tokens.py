"""Unsubscribe and confirmation tokens: fixed length, unforgeable, survive rotation, expire."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subscribers.keys import KeyRing
from subscribers.tokens import (
    CONFIRM_TOKEN_LENGTH,
    UNSUBSCRIBE_TOKEN_LENGTH,
    BadToken,
    TokenSigner,
)

RING = KeyRing.generate(Path("/nonexistent/keys.json"))
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
SIGNER = TokenSigner(RING.token_key, lambda: NOW)
ids = st.integers(min_value=0, max_value=2**63 - 1)
URLSAFE = re.compile(r"^[A-Za-z0-9_-]+$")


@given(ids)
def test_unsubscribe_round_trip_fixed_length(sid: int) -> None:
    token = SIGNER.unsubscribe_token(sid)
    assert len(token) == UNSUBSCRIBE_TOKEN_LENGTH
    assert URLSAFE.match(token)
    assert SIGNER.verify_unsubscribe(token) == sid


@given(ids, st.booleans(), st.data())
def test_tampered_tokens_are_refused(sid: int, confirm: bool, data: st.DataObject) -> None:
    # Any changed character, the last one included: a confirmation token's last character
    # has unused bits, and a second spelling of a valid token must not pass either.
    token = SIGNER.confirm_token(sid) if confirm else SIGNER.unsubscribe_token(sid)
    verify = SIGNER.verify_confirm if confirm else SIGNER.verify_unsubscribe
    pos = data.draw(st.integers(0, len(token) - 1))
    repl = data.draw(st.sampled_from("ABCdef012-_"))
    if repl == token[pos]:
        return
    forged = token[:pos] + repl + token[pos + 1:]
    with pytest.raises(BadToken):
        verify(forged)


@given(st.text(max_size=50))
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(BadToken):
        SIGNER.verify_unsubscribe(text)


def test_other_key_and_token_kinds_do_not_cross() -> None:
    other = TokenSigner(KeyRing.generate(RING.path).token_key, lambda: NOW)
    token = SIGNER.unsubscribe_token(42)
    with pytest.raises(BadToken):
        other.verify_unsubscribe(token)
    with pytest.raises(BadToken):
        SIGNER.verify_confirm(token)


def test_unsubscribe_token_survives_key_rotation() -> None:
    token = SIGNER.unsubscribe_token(1234)
    rotated = RING.with_new_key()
    assert TokenSigner(rotated.token_key, lambda: NOW).verify_unsubscribe(token) == 1234


def test_confirm_token_expires() -> None:
    clock = [NOW]
    signer = TokenSigner(RING.token_key, lambda: clock[0], confirm_ttl=timedelta(days=7))
    token = signer.confirm_token(99)
    assert len(token) == CONFIRM_TOKEN_LENGTH
    assert URLSAFE.match(token)
    clock[0] = NOW + timedelta(days=6)
    got = signer.verify_confirm(token)
    assert got.subscriber_id == 99
    assert got.issued_at == NOW
    clock[0] = NOW + timedelta(days=8)
    with pytest.raises(BadToken, match="expired"):
        signer.verify_confirm(token)


def test_csrf_tokens_are_bound_to_the_cookie_nonce() -> None:
    token = SIGNER.csrf_token("nonce-a")
    assert SIGNER.verify_csrf(token, "nonce-a")
    assert not SIGNER.verify_csrf(token, "nonce-b")
    assert not SIGNER.verify_csrf("x" * 27, "nonce-a")
    later = TokenSigner(RING.token_key, lambda: NOW + timedelta(hours=3))
    assert not later.verify_csrf(token, "nonce-a")


LANGUAGES = st.sampled_from(["zh-Hans", "zh-Hant", "en", "zh-Hans+en", "zh-Hant+en"])


@given(ids, LANGUAGES, st.data())
def test_language_tokens_round_trip_and_refuse_any_change(sid: int, language: str,
                                                         data: st.DataObject) -> None:
    token = SIGNER.language_token(sid, language)
    assert URLSAFE.match(token)
    got = SIGNER.verify_language(token)
    assert (got.subscriber_id, got.language, got.issued_at) == (sid, language, NOW)
    pos = data.draw(st.integers(0, len(token) - 1))
    repl = data.draw(st.sampled_from("ABCdef012-_"))
    if repl != token[pos]:
        with pytest.raises(BadToken):
            SIGNER.verify_language(token[:pos] + repl + token[pos + 1:])


@given(st.text(max_size=60))
def test_language_garbage_is_refused(text: str) -> None:
    with pytest.raises(BadToken):
        SIGNER.verify_language(text)


def test_a_language_token_is_no_other_token_and_expires() -> None:
    with pytest.raises(BadToken):
        SIGNER.verify_language(SIGNER.confirm_token(42))
    with pytest.raises(BadToken):
        SIGNER.verify_confirm(SIGNER.language_token(42, "en"))
    clock = [NOW]
    signer = TokenSigner(RING.token_key, lambda: clock[0], confirm_ttl=timedelta(days=7))
    token = signer.language_token(7, "en")
    clock[0] = NOW + timedelta(days=8)
    with pytest.raises(BadToken, match="expired"):
        signer.verify_language(token)
