"""AES-256-GCM sealing of personal fields, bound to their row, and the keyed blind index.

A sealed value is ``nonce (12) || ciphertext || tag (16)``; the key id is stored in its own
column beside it. The associated data is the field name and the row id, so a ciphertext copied
into another row or column fails to open instead of silently changing whom we mail.

The blind index is keyed BLAKE2b-256 of the index form of the address, with its own key: it gives
uniqueness and lookup without decrypting, and is useless without the key (no dictionary attack
on a copied database).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from subscribers.errors import KeyStoreError, WrongKeyError
from subscribers.keys import KeyRing

__all__ = ["NONCE_BYTES", "Codec"]

NONCE_BYTES = 12
_ROW = struct.Struct(">q")


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino


class Codec:
    """Seal and open fields with the ring's keys; compute blind indexes. Stateless per call."""

    def __init__(self, ring: KeyRing) -> None:
        self._use(ring)

    def _use(self, ring: KeyRing) -> None:
        self.ring = ring
        self._aead = {kid: AESGCM(k.key) for kid, k in ring.aead.items()}
        self._current = ring.current
        self._current_aead = self._aead[ring.current]
        self._index_key = ring.index_key
        # Keyed BLAKE2b spends a compression on the key block; copying a primed hasher skips it.
        self._index_base = hashlib.blake2b(key=ring.index_key, digest_size=32,
                                           person=b"nl-email-index")
        self._stamp = _stamp(ring.path)

    def refresh(self) -> bool:
        """Reload the key file if ``keys rotate`` rewrote it since we read it; True if it did.

        The owner of a long-running process (the daemon, ``serve``, ``worker``) calls this on
        its own timer, every ``[storage] key_reload_every``; the store never does, so sealing
        and opening read no file. ``keys rotate`` waits longer than that timer before it
        retires the old key, so no process is left sealing under a retired key. The one
        exception is :meth:`open` meeting a key id it does not hold: rows re-sealed by a
        rotation that this process has not yet heard of, so it looks once. Only a file with
        the same index and token keys is accepted.
        """
        stamp = _stamp(self.ring.path)
        if stamp is None or stamp == self._stamp:
            return False
        try:
            ring = KeyRing.load(self.ring.path, self.ring.passphrase)
        except KeyStoreError:
            return False  # caught mid-write or damaged: keep what we have
        if ring.index_key != self.ring.index_key or ring.token_key != self.ring.token_key:
            return False  # a different key file altogether: never switch silently
        self._use(ring)
        return True

    @property
    def current_key_id(self) -> str:
        return self._current

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._aead)

    @staticmethod
    def _ad(field: bytes, row_id: int) -> bytes:
        return field + _ROW.pack(row_id)

    def seal(self, row_id: int, plaintext: bytes, field: bytes = b"email:") -> bytes:
        """Encrypt with the current key (its id is ``current_key_id``)."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._current_aead.encrypt(nonce, plaintext, field + _ROW.pack(row_id))

    def seal_many(self, row_ids: Sequence[int], plaintexts: Sequence[bytes],
                  field: bytes = b"email:") -> list[bytes]:
        """``seal`` for a batch, with all nonces from one read of the system CSPRNG."""
        nonces = os.urandom(NONCE_BYTES * len(row_ids))
        enc = self._current_aead.encrypt
        pack = _ROW.pack
        out = []
        for i, (row_id, plain) in enumerate(zip(row_ids, plaintexts, strict=True)):
            nonce = nonces[i * NONCE_BYTES:(i + 1) * NONCE_BYTES]
            out.append(nonce + enc(nonce, plain, field + pack(row_id)))
        return out

    def open(self, row_id: int, key_id: str, blob: bytes, field: bytes = b"email:") -> bytes:
        """Decrypt, or raise ``WrongKeyError`` naming the row and key id (never the content)."""
        aead = self._aead.get(key_id)
        if aead is not None and len(blob) > NONCE_BYTES:
            try:  # the hot path of every send: one dict lookup, one decrypt
                return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                    field + _ROW.pack(row_id))
            except InvalidTag:
                pass
        if aead is None and self.refresh():  # the failure path only: a rotation we missed
            return self.open(row_id, key_id, blob, field)
        if aead is None:
            raise WrongKeyError(
                f"subscriber {row_id} is sealed with key {key_id!r}, which the key file "
                f"{self.ring.path} does not hold (wrong or outdated key file?)"
            )
        try:
            return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                field + _ROW.pack(row_id))
        except (InvalidTag, ValueError):
            raise WrongKeyError(
                f"subscriber {row_id}: key {key_id!r} in {self.ring.path} does not open this row "
                "(wrong key file, or the row is corrupted)"
            ) from None

    def blind_index(self, index_form: str) -> bytes:
        """Keyed BLAKE2b-256 of the normalised address."""
        h = self._index_base.copy()
        h.update(index_form.encode("utf-8"))
        return h.digest()
