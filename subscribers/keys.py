"""The key file: several AEAD keys with ids, plus separate blind-index, token and master secrets.

Layout (JSON, mode 0600)::

    {"format": "newsletter-keys", "version": 1, "current": "k1a2b3c4",
     "aead": [{"id": "k1a2b3c4", "key": "<b64>", "created": "2026-11-23T19:00:00+00:00"}],
     "index": "<b64>", "token": "<b64>", "master": "<b64>"}

Only the AEAD keys rotate (``newsletter keys rotate``). The blind-index key must not change,
or lookups and uniqueness would break; the token key must not change, or the unsubscribe links
in mail already delivered would stop working. ``master`` feeds ``derive()`` so other stages get
stable secrets (the mirror partition fallback, encrypted backups) without their own key file.

With a passphrase the same JSON is sealed with AES-256-GCM under a scrypt-derived key, so a
copied file is useless without the passphrase held in an environment variable.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from subscribers.errors import KeyStoreError

__all__ = ["KEY_FORMAT", "AeadKey", "KeyRing"]

log = logging.getLogger("newsletter.keys")

KEY_FORMAT = "newsletter-keys"
SEALED_FORMAT = "newsletter-keys-sealed"
KEY_BYTES = 32
# scrypt cost: about 0.1 s and 32 MiB on a small server; stored in the file so it can grow later.
DEFAULT_SCRYPT_N = 2**15


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str, path: Path) -> bytes:
    if not isinstance(text, str):
        raise KeyStoreError(f"key file {path}: '{what}' is missing or not text")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyStoreError(f"key file {path}: '{what}' is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise KeyStoreError(f"key file {path}: '{what}' is {len(raw)} bytes, expected {KEY_BYTES} "
                            "(truncated or damaged)")
    return raw


def _new_key_id(taken: Mapping[str, object] = {}) -> str:
    while True:
        kid = "k" + secrets.token_hex(4)
        if kid not in taken:
            return kid


@dataclass(frozen=True)
class AeadKey:
    """One AES-256-GCM key and the id stored beside each ciphertext it sealed."""

    id: str
    key: bytes = field(repr=False)
    created: str = ""


@dataclass(frozen=True)
class KeyRing:
    """The loaded key file. Immutable: rotation builds a new ring and writes it atomically."""

    path: Path
    current: str
    aead: Mapping[str, AeadKey] = field(repr=False)
    index_key: bytes = field(repr=False)
    token_key: bytes = field(repr=False)
    master: bytes = field(repr=False)
    passphrase: str | None = field(default=None, repr=False)
    scrypt_n: int = DEFAULT_SCRYPT_N

    # ------------------------------------------------------------------ construction

    @classmethod
    def generate(cls, path: Path, passphrase: str | None = None,
                 *, scrypt_n: int = DEFAULT_SCRYPT_N) -> KeyRing:
        """A fresh ring in memory (nothing written)."""
        kid = _new_key_id()
        return cls(
            path=Path(path), current=kid,
            aead={kid: AeadKey(kid, secrets.token_bytes(KEY_BYTES), _now())},
            index_key=secrets.token_bytes(KEY_BYTES), token_key=secrets.token_bytes(KEY_BYTES),
            master=secrets.token_bytes(KEY_BYTES), passphrase=passphrase, scrypt_n=scrypt_n,
        )

    @classmethod
    def create(cls, path: Path | str, passphrase: str | None = None,
               *, scrypt_n: int = DEFAULT_SCRYPT_N) -> KeyRing:
        """Generate and write a new key file. Refuses to overwrite: a lost key loses the list."""
        path = Path(path)
        ring = cls.generate(path, passphrase, scrypt_n=scrypt_n)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = ring._serialise()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyStoreError(f"key file {path} already exists; refusing to overwrite it "
                                "(it is the only way to read the subscriber list)") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot create key file {path}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(path, 0o600)
        return ring

    @classmethod
    def load(cls, path: Path | str, passphrase: str | None = None) -> KeyRing:
        """Read and check the key file; every problem is a ``KeyStoreError`` naming the file."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise KeyStoreError(f"key file {path} not found; create one with "
                                "'newsletter keys init' (or restore your backup of it)") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot read key file {path}: {exc.strerror}") from None
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            mode = 0o600
        if mode & 0o077:
            log.warning("key file %s has mode %o; it should be 0600 (chmod 600 it)", path, mode)
        doc = _parse_json(raw, path)
        scrypt_n = DEFAULT_SCRYPT_N
        if doc.get("format") == SEALED_FORMAT:
            if not passphrase:
                raise KeyStoreError(f"key file {path} is protected by a passphrase; set the "
                                    "environment variable named by storage.passphrase_env")
            scrypt_n = int(doc.get("n", DEFAULT_SCRYPT_N))
            doc = _parse_json(_unseal(doc, passphrase, path), path)
        elif doc.get("format") != KEY_FORMAT:
            raise KeyStoreError(f"key file {path} is not a newsletter key file")
        return cls._from_doc(doc, path, passphrase, scrypt_n)

    @classmethod
    def load_or_create(cls, path: Path | str, passphrase: str | None,
                       notice: Callable[[str], None],
                       may_create: Callable[[], bool] = lambda: True) -> KeyRing:
        """Load, or on first use generate the key file and say so through ``notice``.

        ``may_create`` is asked first: when the database already holds encrypted rows a missing
        key file is an error, since a new key could never open them.
        """
        path = Path(path)
        if path.exists():
            return cls.load(path, passphrase)
        if not may_create():
            raise KeyStoreError(f"key file {path} not found, but the database holds subscribers "
                                "encrypted with it; restore the key file from your backup")
        ring = cls.create(path, passphrase)
        notice(f"generated a new key file at {path} (mode 0600). Back it up somewhere safe: "
               "without it the subscriber list cannot be read.")
        return ring

    @classmethod
    def _from_doc(cls, doc: Mapping[str, Any], path: Path, passphrase: str | None,
                  scrypt_n: int) -> KeyRing:
        entries = doc.get("aead")
        if not isinstance(entries, list) or not entries:
            raise KeyStoreError(f"key file {path}: no AEAD keys (truncated or damaged)")
        aead: dict[str, AeadKey] = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise KeyStoreError(f"key file {path}: aead[{i}] has no id")
            kid = entry["id"]
            aead[kid] = AeadKey(kid, _unb64(entry.get("key"), f"aead[{i}].key", path),
                                str(entry.get("created", "")))
        current = doc.get("current")
        if current not in aead:
            raise KeyStoreError(f"key file {path}: current key {current!r} is not in the file")
        return cls(
            path=path, current=str(current), aead=aead,
            index_key=_unb64(doc.get("index"), "index", path),
            token_key=_unb64(doc.get("token"), "token", path),
            master=_unb64(doc.get("master"), "master", path),
            passphrase=passphrase, scrypt_n=scrypt_n,
        )

    # ------------------------------------------------------------------ use

    @property
    def current_key(self) -> AeadKey:
        return self.aead[self.current]

    def derive(self, purpose: bytes) -> bytes:
        """A stable 32-byte secret for ``purpose`` (HKDF-SHA256 of the master secret)."""
        return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                    info=b"newsletter/" + purpose).derive(self.master)

    def with_new_key(self) -> KeyRing:
        """A ring whose current key is a fresh one; older keys stay so old rows still open."""
        kid = _new_key_id(self.aead)
        aead = dict(self.aead)
        aead[kid] = AeadKey(kid, secrets.token_bytes(KEY_BYTES), _now())
        return _replace(self, current=kid, aead=aead)

    def without_keys(self, retired: set[str]) -> KeyRing:
        """A ring without ``retired`` keys (never the current one)."""
        if self.current in retired:
            raise KeyStoreError("cannot retire the current key")
        return _replace(self, aead={k: v for k, v in self.aead.items() if k not in retired})

    def save(self) -> None:
        """Write atomically (temp file 0600, fsync, rename), so a crash leaves old or new."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self._serialise())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _serialise(self) -> bytes:
        doc = {
            "format": KEY_FORMAT, "version": 1, "current": self.current,
            "aead": [{"id": k.id, "key": _b64(k.key), "created": k.created}
                     for k in self.aead.values()],
            "index": _b64(self.index_key), "token": _b64(self.token_key),
            "master": _b64(self.master),
        }
        plain = json.dumps(doc, indent=1).encode()
        if not self.passphrase:
            return plain
        salt = secrets.token_bytes(16)
        nonce = secrets.token_bytes(12)
        key = _scrypt(self.passphrase, salt, self.scrypt_n)
        sealed = {
            "format": SEALED_FORMAT, "version": 1, "kdf": "scrypt", "n": self.scrypt_n, "r": 8,
            "p": 1, "salt": _b64(salt), "nonce": _b64(nonce),
            "ciphertext": _b64(AESGCM(key).encrypt(nonce, plain, SEALED_FORMAT.encode())),
        }
        return json.dumps(sealed, indent=1).encode()


def _replace(ring: KeyRing, **changes: Any) -> KeyRing:
    return dataclasses.replace(ring, **changes)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _parse_json(raw: bytes, path: Path) -> dict[str, Any]:
    if not raw.strip():
        raise KeyStoreError(f"key file {path} is empty (truncated?)")
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KeyStoreError(f"key file {path} is truncated or damaged (not valid JSON)") from None
    if not isinstance(doc, dict):
        raise KeyStoreError(f"key file {path} is not a newsletter key file")
    return doc


def _scrypt(passphrase: str, salt: bytes, n: int) -> bytes:
    return Scrypt(salt=salt, length=KEY_BYTES, n=n, r=8, p=1).derive(passphrase.encode())


def _unseal(doc: Mapping[str, Any], passphrase: str, path: Path) -> bytes:
    try:
        salt = base64.b64decode(doc["salt"])
        nonce = base64.b64decode(doc["nonce"])
        ct = base64.b64decode(doc["ciphertext"])
        n = int(doc.get("n", DEFAULT_SCRYPT_N))
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise KeyStoreError(f"key file {path} is truncated or damaged") from None
    try:
        return AESGCM(_scrypt(passphrase, salt, n)).decrypt(nonce, ct, SEALED_FORMAT.encode())
    except (InvalidTag, ValueError):
        raise KeyStoreError(f"key file {path}: wrong passphrase (or the file is damaged)") from None
