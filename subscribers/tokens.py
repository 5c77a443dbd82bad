"""Unsubscribe and confirmation tokens: keyed MACs over the subscriber id, no lookup needed.

Unsubscribe tokens are always ``UNSUBSCRIBE_TOKEN_LENGTH`` url-safe characters: the message
serialiser reserves a fixed-width slot for them. They do not expire (a link in an old mail must
keep working, RFC 8058) and use the key file's token key, which ``keys rotate`` never changes,
so they survive a rotation. Verifying one is a MAC check; the address is never decrypted.

Confirmation tokens carry their issue time and expire after the configured TTL; a language
change token also carries the language asked for (an active reader's language changes only
through a link mailed to them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from subscribers.errors import InputError

__all__ = [
    "BOUNCE_TOKEN_LENGTH",
    "CONFIRM_TOKEN_LENGTH",
    "UNSUBSCRIBE_TOKEN_LENGTH",
    "BadToken",
    "ConfirmToken",
    "LanguageToken",
    "TokenSigner",
]

_ID = struct.Struct(">q")
_ID_TIME = struct.Struct(">qI")
_ID_PAIR = struct.Struct(">qq")
_BOUNCE_MAC = 10  # 80 bits: a forger gets one guess per bounce mail they send us
BOUNCE_TOKEN_LENGTH = 42  # base32(8 + 8 + 10 bytes) = 41.6 -> 42, no padding; 50 with "bounces+"
_MAC = 16  # 128-bit tag: forgery needs 2**128 tries, and every try is one HTTP request
UNSUBSCRIBE_TOKEN_LENGTH = 32  # base64url(8 + 16 bytes), no padding
CONFIRM_TOKEN_LENGTH = 38  # base64url(12 + 16 bytes) = 37.33 -> 38, no padding


class BadToken(InputError):
    """The token is malformed, forged, or expired. Says nothing about any subscriber."""


@dataclass(frozen=True)
class ConfirmToken:
    subscriber_id: int
    issued_at: datetime


@dataclass(frozen=True)
class LanguageToken:
    subscriber_id: int
    language: str
    issued_at: datetime


_MAX_LANGUAGE = 16  # the column's width


def _enc(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _dec(token: str, length: int) -> bytes:
    if len(token) != length or not token.isascii():
        raise BadToken("this link is not valid")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise BadToken("this link is not valid") from None
    if _enc(raw) != token:  # one spelling per token: no unused bits set in the last character
        raise BadToken("this link is not valid")
    return raw


class TokenSigner:
    """Sign and verify tokens with the key ring's token key (a separate key from the AEAD ones)."""

    def __init__(self, key: bytes, clock: Callable[[], datetime],
                 confirm_ttl: timedelta = timedelta(days=7)) -> None:
        if len(key) < 16:
            raise ValueError("token key too short")
        self._unsub_key = hmac.digest(key, b"unsubscribe", "sha256")
        self._confirm_key = hmac.digest(key, b"confirm", "sha256")
        self._csrf_key = hmac.digest(key, b"csrf", "sha256")
        self._language_key = hmac.digest(key, b"language", "sha256")
        self._bounce_key = hmac.digest(key, b"bounce", "sha256")
        self._clock = clock
        self.confirm_ttl = confirm_ttl

    # ------------------------------------------------------------------ unsubscribe

    def _mac(self, key: bytes, body: bytes) -> bytes:
        return hashlib.blake2s(body, key=key, digest_size=_MAC).digest()

    def unsubscribe_token(self, subscriber_id: int) -> str:
        body = _ID.pack(subscriber_id)
        return _enc(body + self._mac(self._unsub_key, body))

    def verify_unsubscribe(self, token: str) -> int:
        raw = _dec(token, UNSUBSCRIBE_TOKEN_LENGTH)
        body, tag = raw[:8], raw[8:]
        if len(tag) != _MAC or not hmac.compare_digest(tag, self._mac(self._unsub_key, body)):
            raise BadToken("this link is not valid")
        return int(_ID.unpack(body)[0])

    # ------------------------------------------------------------------ confirm

    def confirm_token(self, subscriber_id: int, at: datetime | None = None) -> str:
        issued = int((at or self._clock()).timestamp())
        body = _ID_TIME.pack(subscriber_id, issued)
        return _enc(body + self._mac(self._confirm_key, body))

    def verify_confirm(self, token: str) -> ConfirmToken:
        raw = _dec(token, CONFIRM_TOKEN_LENGTH)
        body, tag = raw[:12], raw[12:]
        if len(tag) != _MAC or not hmac.compare_digest(tag, self._mac(self._confirm_key, body)):
            raise BadToken("this link is not valid")
        sid, issued = _ID_TIME.unpack(body)
        issued_at = datetime.fromtimestamp(issued, UTC)
        if self._clock() - issued_at > self.confirm_ttl:
            raise BadToken("this confirmation link has expired; please subscribe again")
        return ConfirmToken(int(sid), issued_at)

    # ------------------------------------------------------------------ language change

    def language_token(self, subscriber_id: int, language: str,
                       at: datetime | None = None) -> str:
        lang = language.encode("ascii")
        if not 0 < len(lang) <= _MAX_LANGUAGE:
            raise ValueError("language code too long")
        body = _ID_TIME.pack(subscriber_id, int((at or self._clock()).timestamp())) + lang
        return _enc(body + self._mac(self._language_key, body))

    def verify_language(self, token: str) -> LanguageToken:
        """The subscriber, the language asked for and when; ``BadToken`` if forged or expired."""
        for size in range(_ID_TIME.size + 1, _ID_TIME.size + _MAX_LANGUAGE + 1):
            if len(token) == len(_enc(bytes(size + _MAC))):
                raw = _dec(token, len(token))
                break
        else:
            raise BadToken("this link is not valid")
        body, tag = raw[:-_MAC], raw[-_MAC:]
        if not hmac.compare_digest(tag, self._mac(self._language_key, body)):
            raise BadToken("this link is not valid")
        sid, issued = _ID_TIME.unpack(body[:_ID_TIME.size])
        try:
            language = body[_ID_TIME.size:].decode("ascii")
        except UnicodeDecodeError:
            raise BadToken("this link is not valid") from None
        issued_at = datetime.fromtimestamp(issued, UTC)
        if self._clock() - issued_at > self.confirm_ttl:
            raise BadToken("this link has expired")
        return LanguageToken(int(sid), language, issued_at)

    # ------------------------------------------------------------------ bounces (VERP)

    def bounce_token(self, edition_id: int, subscriber_id: int) -> str:
        """``BOUNCE_TOKEN_LENGTH`` lower-case base32 characters naming one message (edition,
        subscriber): the VERP envelope ``bounces+TOKEN@…`` and the Reply-To tag. Base32,
        because mail servers may fold the case of a local part; no address in it."""
        body = _ID_PAIR.pack(edition_id, subscriber_id)
        raw = body + self._mac(self._bounce_key, body)[:_BOUNCE_MAC]
        return base64.b32encode(raw).decode("ascii").rstrip("=").lower()

    def verify_bounce(self, token: str) -> tuple[int, int]:
        """(edition id, subscriber id) of a bounce token in any case; ``BadToken`` if forged."""
        if len(token) != BOUNCE_TOKEN_LENGTH or not token.isascii() or not token.isalnum():
            raise BadToken("this reference is not valid")
        try:
            raw = base64.b32decode(token.upper() + "=" * (-len(token) % 8))
        except (binascii.Error, ValueError):
            raise BadToken("this reference is not valid") from None
        if base64.b32encode(raw).decode("ascii").rstrip("=").lower() != token.lower():
            raise BadToken("this reference is not valid")  # one spelling: no stray low bits
        body, tag = raw[:_ID_PAIR.size], raw[_ID_PAIR.size:]
        if not hmac.compare_digest(tag, self._mac(self._bounce_key, body)[:_BOUNCE_MAC]):
            raise BadToken("this reference is not valid")
        edition_id, subscriber_id = _ID_PAIR.unpack(body)
        return int(edition_id), int(subscriber_id)

    # ------------------------------------------------------------------ csrf (forms)

    def csrf_token(self, nonce: str) -> str:
        """A stateless form token: issue time + MAC, bound to a per-page nonce."""
        issued = int(self._clock().timestamp())
        body = struct.pack(">I", issued)
        return _enc(body + self._mac(self._csrf_key, body + nonce.encode()))

    def verify_csrf(self, token: str, nonce: str, max_age: timedelta = timedelta(hours=2)) -> bool:
        try:
            raw = _dec(token, 27)
        except BadToken:
            return False
        body, tag = raw[:4], raw[4:]
        if not hmac.compare_digest(tag, self._mac(self._csrf_key, body + nonce.encode())):
            return False
        issued = datetime.fromtimestamp(struct.unpack(">I", body)[0], UTC)
        return timedelta(0) <= self._clock() - issued + timedelta(seconds=5) <= max_age
