"""DKIM signing (RFC 6376, Ed25519 per RFC 8463): keys, the DNS records to publish, and the
``SigningTransport`` that signs exactly the bytes every transport sends.

Every message body differs (mirror links, unsubscribe token), so each needs its own signature.
An RSA-2048 signature is CPU work the event loop must not do: past a few messages the signing
moves to worker processes (``signing_pool`` runs ``signing_worker``: one per core, each loading
the keys once, on sockets the loop reads) so both cores sign while the loop keeps the relay
connections busy.
Confirmations and test-sends sign inline; a pool costs more to start than they take.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim import parse_pem_private_key as _dkimpy_parse_pem_private_key
from dkim import rfc822_parse as _dkimpy_rfc822_parse
from dkim.canonicalization import Relaxed, correct_empty_body, strip_trailing_lines
from dkim.crypto import RSASSA_PKCS1_v1_5_sign as _pure_rsa_sign

from mailer.delivery.classify import SendResult
from mailer.delivery.signing_pool import PoolBroken, SigningFailed, SigningPool
from mailer.delivery.transport import Transport
from mailer.errors import KeyStoreError

_DKIMPY_RELAXED_BODY = Relaxed.canonicalize_body
_DKIMPY_RELAXED_HEADERS = Relaxed.canonicalize_headers

__all__ = [
    "SIGNED_HEADERS",
    "DKIMKey",
    "DKIMSigner",
    "SigningTransport",
    "create_key_file",
    "default_workers",
    "dns_record",
    "keys_from_json",
    "keys_to_json",
    "load_keys",
    "selector_for",
]

log = logging.getLogger("newsletter.delivery.dkim")

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]

# The fields the issue names, in this order; only those present are listed in h=, so a
# later hop adding one (a relay's List-Id, say) does not break the signature.
SIGNED_HEADERS = (
    "From", "To", "Subject", "Date", "Message-ID", "List-Id", "List-Unsubscribe",
    "List-Unsubscribe-Post", "Feedback-ID", "MIME-Version", "Content-Type",
)
_SIGNED_NAMES = tuple((h.encode(), h.lower().encode()) for h in SIGNED_HEADERS)
_SIGNED_LOWER = frozenset(lower for _, lower in _SIGNED_NAMES)

# Relaxed/relaxed (RFC 6376 §3.4.2, §3.4.4): header re-folding and trailing white space
# added by relays (some rewrap long lines) must not invalidate the signature.
_CANON = (b"relaxed", b"relaxed")

# Below this many messages a transport signs inline: a pool's start-up (fork, key load) costs
# more than a confirmation or a test-send takes to sign.
POOL_AFTER = 32


def selector_for(selector: str, algorithm: Algorithm) -> str:
    """The one rule for selectors: the RSA key uses ``[dkim] selector`` itself, the Ed25519
    key ``<selector>-ed25519``; each DNS name holds one key (RFC 6376 §3.6.2.1)."""
    return selector if algorithm == "rsa-sha256" else f"{selector}-ed25519"


@dataclass(frozen=True)
class DKIMKey:
    """One private key, in the form dkimpy takes, and the public half for DNS."""

    algorithm: Algorithm
    selector: str
    domain: str
    private: bytes = field(repr=False)  # PKCS#1 PEM (RSA) or base64 of the 32-byte seed (Ed25519)
    public_b64: str

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


def _from_private(key: object, path: Path, selector: str, domain: str) -> DKIMKey:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise KeyStoreError(f"{path}: RSA key has {key.key_size} bits; DKIM needs at least 2048")
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return DKIMKey("rsa-sha256", selector_for(selector, "rsa-sha256"), domain, pem,
                       base64.b64encode(pub).decode())
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return DKIMKey("ed25519-sha256", selector_for(selector, "ed25519-sha256"), domain,
                       base64.b64encode(seed), base64.b64encode(pub).decode())
    raise KeyStoreError(f"{path}: not an RSA or Ed25519 private key")


def load_keys(paths: Sequence[Path], selector: str, domain: str) -> tuple[DKIMKey, ...]:
    """Read the configured PEM files; at most one key of each algorithm."""
    keys: list[DKIMKey] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise KeyStoreError(f"{path}: DKIM key file not found (create it with `newsletter dkim init`)") from None
        except OSError as exc:
            raise KeyStoreError(f"{path}: cannot read DKIM key: {exc.strerror}") from None
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise KeyStoreError(f"{path}: not an unencrypted PEM private key") from None
        key = _from_private(private, path, selector, domain)
        if any(k.algorithm == key.algorithm for k in keys):
            raise KeyStoreError(f"{path}: a second {key.algorithm} key; give one RSA and one Ed25519 key")
        keys.append(key)
    return tuple(keys)


def create_key_file(path: Path, algorithm: Algorithm) -> None:
    """Write a new private key, mode 0600; never overwrite one (its public half is in DNS)."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa-sha256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyStoreError(f"{path}: already exists; not replacing a DKIM key that DNS may publish") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def keys_to_json(keys: Sequence[DKIMKey]) -> bytes:
    """The keys as a signing worker reads them from its socket (never argv or the environment)."""
    return json.dumps([{"algorithm": k.algorithm, "selector": k.selector, "domain": k.domain,
                        "private": base64.b64encode(k.private).decode(), "public_b64": k.public_b64}
                       for k in keys]).encode()


def keys_from_json(data: bytes) -> tuple[DKIMKey, ...]:
    return tuple(DKIMKey(k["algorithm"], k["selector"], k["domain"], base64.b64decode(k["private"]),
                         k["public_b64"]) for k in json.loads(data))


def dns_record(key: DKIMKey) -> str:
    """The TXT record value (RFC 6376 §3.6.1); the caller publishes it at ``key.record_name``."""
    k = "rsa" if key.algorithm == "rsa-sha256" else "ed25519"
    return f"v=DKIM1; k={k}; p={key.public_b64}"


class DKIMSigner:
    """Pure: message bytes in, the same bytes with one ``DKIM-Signature`` per key on top."""

    def __init__(self, keys: Sequence[DKIMKey]) -> None:
        if not keys:
            raise KeyStoreError("DKIM signing needs at least one key")
        self.keys = tuple(keys)
        _use_openssl_rsa()

    def sign(self, data: bytes) -> bytes:
        return self.signature(data) + data

    def signature(self, data: bytes) -> bytes:
        """The ``DKIM-Signature`` header lines to put on top of ``data`` (empty without From).

        The message is split once for all keys, and dkimpy is handed only the fields it will
        hash (those of ``SIGNED_HEADERS`` present), in their order: ``select_headers`` picks
        the same ones from either list, so the signature is the same, without dkimpy parsing
        the message and canonicalizing every field again for each key.
        """
        import dkim

        fields, body = _rfc822_parse(data)
        signed = [f for f in fields if f[0].lower() in _SIGNED_LOWER]
        present = {f[0].lower() for f in signed}
        if b"from" not in present:
            return b""  # RFC 6376 §5.4: From is mandatory; a message without it is not ours
        include = [h for h, lower in _SIGNED_NAMES if lower in present]
        out = b""
        # Each signature covers the message as built; DKIM-Signature is not among the signed
        # fields, so the order of the two does not matter to verifiers (RFC 8463 §3).
        for key in self.keys:
            signer = dkim.DKIM(None, signature_algorithm=key.algorithm.encode(), linesep=b"\r\n")
            signer.headers, signer.body = signed, body
            out += signer.sign(key.selector.encode(), key.domain.encode(), key.private,
                               canonicalize=_CANON, include_headers=include)
        return out


_rsa_keys: dict[int, rsa.RSAPrivateKey] = {}


def _openssl_rsa_sign(digest: Any, private_key: dict[str, int]) -> bytes:
    """dkimpy's RSASSA-PKCS1-v1_5 (RFC 8017 §8.2.1) done by OpenSSL instead of Python ``pow``:
    about 0.4 ms instead of 5-10 ms per RSA-2048 signature. PKCS#1 v1.5 is deterministic, so
    the bytes are the same as dkimpy's own (tests/delivery/test_dkim.py checks it)."""
    if digest.name != "sha256":
        return _pure_rsa_sign(digest, private_key)  # type: ignore[no-any-return]
    n = private_key["modulus"]
    key = _rsa_keys.get(n)
    if key is None:
        public = rsa.RSAPublicNumbers(private_key["publicExponent"], n)
        key = _rsa_keys[n] = rsa.RSAPrivateNumbers(
            private_key["prime1"], private_key["prime2"], private_key["privateExponent"],
            private_key["exponent1"], private_key["exponent2"], private_key["coefficient"], public,
        ).private_key()
    return key.sign(digest.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))


def _use_openssl_rsa() -> None:
    import dkim

    if dkim.RSASSA_PKCS1_v1_5_sign is not _openssl_rsa_sign:
        dkim.RSASSA_PKCS1_v1_5_sign = _openssl_rsa_sign
    if dkim.parse_pem_private_key is not _parsed_key:
        dkim.parse_pem_private_key = _parsed_key
    if dkim.rfc822_parse is not _rfc822_parse:
        dkim.rfc822_parse = _rfc822_parse
    if Relaxed.canonicalize_body is not _relaxed_body:
        Relaxed.canonicalize_body = staticmethod(_relaxed_body)
    if Relaxed.canonicalize_headers is not _relaxed_headers:
        Relaxed.canonicalize_headers = staticmethod(_relaxed_headers)


@functools.lru_cache(maxsize=8)
def _parsed_key(pem: bytes) -> Any:
    """dkimpy parses the key's PEM and ASN.1 on every signature (0.4 ms, a third of an RSA
    signature here); our keys do not change while we run. The result is only read."""
    return _dkimpy_parse_pem_private_key(pem)


def _relaxed_body(body: bytes) -> bytes:
    """dkimpy's relaxed body canonicalization (RFC 6376 §3.4.4), without its two regex passes
    when they would change nothing: with no tab, no run of spaces and no space before a line
    end, only the trailing empty lines go. Our bodies are base64 and quoted-printable, so the
    fast path is the rule; it cost half of each signature before (tests/delivery/test_dkim.py
    checks the two agree on any body)."""
    if b"\t" in body or _space_before_space_or_cr(body):
        return _DKIMPY_RELAXED_BODY(body)  # type: ignore[no-any-return]
    return correct_empty_body(strip_trailing_lines(body))  # type: ignore[no-any-return]


def _space_before_space_or_cr(body: bytes) -> bool:
    """A space followed by a space or a CR: ``"  "`` and ``" \r\n"`` (and ``" \r"``, to be
    safe). Our bodies hold a few spaces (MIME part headers), so hopping from space to space
    with ``find`` costs 2 us, where searching for the two patterns cost 28 us a message."""
    i = body.find(b" ")
    while i >= 0:
        if body[i + 1:i + 2] in (b" ", b"\r"):
            return True
        i = body.find(b" ", i + 1)
    return False


def _relaxed_headers(headers: Sequence[Sequence[bytes]]) -> list[tuple[bytes, bytes]]:
    """dkimpy's relaxed header canonicalization (RFC 6376 §3.4.2) without two regex passes per
    field (26 a message, a seventh of a signature): unfold, then ``split``/``join`` compresses
    and strips white space in one go. That equals dkimpy's only where the value's white space
    is spaces and tabs once folds are gone, so anything else (a bare CR, VT, FF) goes to
    dkimpy's own (tests/delivery/test_dkim.py checks the two agree on any header)."""
    out = []
    for name, value in headers:
        unfolded = value.replace(b"\r\n", b"").replace(b"\n", b"")
        if b"\r" in unfolded or b"\x0b" in unfolded or b"\x0c" in unfolded:
            return _DKIMPY_RELAXED_HEADERS(headers)  # type: ignore[no-any-return]
        out.append((name.lower().rstrip(), b" ".join(unfolded.split()) + b"\r\n"))
    return out


def _rfc822_parse(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's header/body split, done with ``split`` and ``partition`` when every line ends in
    CRLF (ours do) and every field is plain ``name:value`` or a fold: dkimpy's own runs a regex
    split and a regex per field (a twentieth of a signature here), and splits and joins the
    body again. Anything else goes to dkimpy's own, errors included (tests/delivery/test_dkim.py
    checks the two agree on any message)."""
    end = message.find(b"\r\n\r\n")
    if end < 0 or message.startswith(b"\r\n") or message.count(b"\n") != message.count(b"\r\n"):
        return _dkimpy_rfc822_parse(message)  # type: ignore[no-any-return]
    headers: list[list[bytes]] = []
    for line in message[:end].split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and headers:
            headers[-1][1] += line + b"\r\n"
            continue
        name, colon, value = line.partition(b":")
        if not colon or _FIELD_NAME.fullmatch(name) is None:
            return _dkimpy_rfc822_parse(message)  # type: ignore[no-any-return]
        headers.append([name, value + b"\r\n"])
    return headers, message[end + 4:]


# dkimpy's field name (``[\x21-\x7e]+?:``): printable US-ASCII up to the first colon.
_FIELD_NAME = re.compile(rb"[\x21-\x7e]+")


def default_workers(cores: int) -> int:
    """Signing processes when ``[dkim] workers`` is not set: one per core, none on one core
    (a worker there only takes turns with the sending loop; 0 signs in the sending process)."""
    return cores if cores >= 2 else 0


# Messages each signing worker may sign ahead of the connections (see SigningTransport).
SIGN_AHEAD = 8


class SigningTransport:
    """Wraps any ``Transport``: signs each message, then hands exactly those bytes on.

    SMTP dot-stuffs after this, so the signature covers the message as the recipient's
    server sees it once unstuffed (RFC 5321 §4.5.2).
    """

    def __init__(self, inner: Transport, keys: Sequence[DKIMKey], *, workers: int | None = None,
                 pool_after: int = POOL_AFTER) -> None:
        self.inner = inner
        self.signer = DKIMSigner(keys)
        self.workers = workers if workers is not None else default_workers(os.cpu_count() or 1)
        self.pool_after = pool_after
        self._count = 0
        self._pool: SigningPool | None = None

    @property
    def concurrency(self) -> int:
        """The inner transport's, and with signing workers ``SIGN_AHEAD`` more per worker:
        those messages are signed while every connection is busy, and wait for the next free
        one already signed, so no connection stands idle while its message is signed."""
        ahead = SIGN_AHEAD * self.workers
        return self.inner.concurrency + ahead

    @property
    def label(self) -> str:
        return str(getattr(self.inner, "label", "transport"))

    def set_share(self, share: int) -> None:
        """Pass the engine's share of the relay rate on to an SMTP pool (see SMTPTransport)."""
        set_share = getattr(self.inner, "set_share", None)
        if set_share is not None:
            set_share(share)

    async def sign(self, data: bytes) -> bytes:
        self._count += 1
        if not self.workers or self._count <= self.pool_after:
            return self.signer.sign(data)
        if self._pool is None:
            self._pool = SigningPool(keys_to_json(self.signer.keys), self.workers)
        try:
            return await self._pool.signature(data) + data
        except SigningFailed:
            return self.signer.sign(data)  # raises here what the worker met, with its type
        except PoolBroken:
            # A worker was killed (OOM killer, an operator's kill): sign here for the rest of the
            # run rather than fail every message; the send goes on at one core's speed.
            if self._pool is not None:
                log.warning("DKIM signing pool broke; signing in this process from now on")
                self.workers = 0
                pool, self._pool = self._pool, None
                await pool.aclose()
            return self.signer.sign(data)

    async def send(self, envelope_from: str, recipient: str, data: bytes) -> SendResult:
        return await self.inner.send(envelope_from, recipient, await self.sign(data))

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()
        await self.inner.aclose()
