"""DKIM: keys, signatures that survive re-folding and long lines, and the signing transport
in front of the real Maildir and SMTP transports."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest
import time_machine
from dkim.crypto import RSASSA_PKCS1_v1_5_sign as pure_rsa_sign
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailer.delivery import dkim as ours
from mailer.delivery.dkim import (
    DKIMKey,
    DKIMSigner,
    SigningTransport,
    create_key_file,
    dns_record,
    keys_to_json,
    load_keys,
)
from mailer.delivery.maildir import MaildirTransport
from mailer.delivery.smtp import SMTPTransport
from mailer.errors import KeyStoreError
from tests.delivery.helpers import relay
from tests.support.smtp import SMTPServer


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[DKIMKey, ...]:
    d = tmp_path_factory.mktemp("dkim")
    create_key_file(d / "rsa.pem", "rsa-sha256")
    create_key_file(d / "ed.pem", "ed25519-sha256")
    return load_keys([d / "rsa.pem", d / "ed.pem"], "news", "example.org")


def dns_for(keys: tuple[DKIMKey, ...]) -> Callable[..., bytes]:
    records = {f"{k.record_name}.".encode(): dns_record(k).encode() for k in keys}
    return lambda name, timeout=5: records.get(name, b"")


def verify_all(data: bytes, keys: tuple[DKIMKey, ...]) -> list[bytes]:
    """Verify every DKIM-Signature in ``data``; return the algorithms that verified."""
    n = len(re.findall(rb"^DKIM-Signature:", data, re.MULTILINE))
    ok = []
    for i in range(n):
        d = dkim.DKIM(data)
        try:
            if d.verify(idx=i, dnsfunc=dns_for(keys)):
                ok.append(d.signature_fields[b"a"])
        except dkim.DKIMException:
            pass
    return ok


MSG = (b"From: Digest <news@example.org>\r\nTo: reader@example.com\r\nSubject: hello\r\n"
       b"Date: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n"
       b"List-Unsubscribe: <https://news.example.org/u/abc>\r\n"
       b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: text/plain; charset=utf-8\r\nX-Other: not signed\r\n\r\n"
       b"body\r\n.line that SMTP dot-stuffs\r\n")


def test_dual_signed_both_verify_and_only_present_headers_are_signed(keys: tuple[DKIMKey, ...]) -> None:
    signed = DKIMSigner(keys).sign(MSG)
    assert signed.endswith(MSG)
    assert sorted(verify_all(signed, keys)) == [b"ed25519-sha256", b"rsa-sha256"]
    h = dkim.DKIM(signed)
    h.verify(dnsfunc=dns_for(keys))
    listed = [x.strip().lower() for x in h.signature_fields[b"h"].split(b":")]
    assert listed == [b"from", b"to", b"subject", b"date", b"message-id", b"list-unsubscribe",
                      b"list-unsubscribe-post", b"mime-version", b"content-type"]


def test_tampered_body_fails(keys: tuple[DKIMKey, ...]) -> None:
    signed = DKIMSigner(keys).sign(MSG)
    assert verify_all(signed.replace(b"body", b"bodY"), keys) == []


def test_openssl_rsa_gives_dkimpys_own_bytes(keys: tuple[DKIMKey, ...]) -> None:
    """PKCS#1 v1.5 is deterministic: the fast path must be byte-identical to dkimpy's."""
    import hashlib

    from dkim.crypto import parse_pem_private_key

    pk = parse_pem_private_key(keys[0].private)
    for text in (b"", b"a", b"x" * 1000):
        assert ours._openssl_rsa_sign(hashlib.sha256(text), pk) == pure_rsa_sign(hashlib.sha256(text), pk)


def refold(data: bytes) -> bytes:
    """What a relay may do under relaxed canonicalisation: unfold and refold every header
    differently, and add trailing white space to body lines."""
    head, _, body = data.partition(b"\r\n\r\n")
    fields = re.split(rb"\r\n(?![ \t])", head)
    out = []
    for f in fields:
        name, _, value = f.partition(b":")
        words = re.sub(rb"\r\n[ \t]+", b" ", value).split(b" ")
        out.append(name + b":" + b"\r\n\t".join(w for w in words if w) if len(words) > 2
                   else name + b":  " + value.strip())
    return b"\r\n".join(out) + b"\r\n\r\n" + body.replace(b"\r\n", b" \r\n")


header_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subject_words=st.lists(header_text, min_size=1, max_size=60),
       folds=st.lists(st.booleans(), min_size=60, max_size=60),
       long_line=st.integers(min_value=0, max_value=3000),
       extra=st.lists(st.sampled_from(["List-Id", "Feedback-ID", "X-Mailer"]), unique=True))
def test_folding_and_long_lines_never_break_the_signature(
        keys: tuple[DKIMKey, ...], subject_words: list[str], folds: list[bool],
        long_line: int, extra: list[str]) -> None:
    subject = b""
    for word, fold in zip(subject_words, folds, strict=False):
        subject += (b"\r\n " if fold and subject else b" ") + word.encode()
    head = b"From: news@example.org\r\nTo: r@example.com\r\nSubject:" + subject + b"\r\n"
    for name in extra:
        head += f"{name}: <x.example.org>\r\n".encode()
    data = head + b"\r\n" + b"a" * long_line + b"\r\nend\r\n"
    signed = DKIMSigner(keys).sign(data)
    assert sorted(verify_all(signed, keys)) == [b"ed25519-sha256", b"rsa-sha256"]
    assert sorted(verify_all(refold(signed), keys)) == [b"ed25519-sha256", b"rsa-sha256"]


def test_key_files_checked(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="not found"):
        load_keys([tmp_path / "missing.pem"], "news", "example.org")
    create_key_file(tmp_path / "a.pem", "ed25519-sha256")
    assert (tmp_path / "a.pem").stat().st_mode & 0o777 == 0o600
    with pytest.raises(KeyStoreError, match="already exists"):
        create_key_file(tmp_path / "a.pem", "rsa-sha256")
    create_key_file(tmp_path / "b.pem", "ed25519-sha256")
    with pytest.raises(KeyStoreError, match="second ed25519"):
        load_keys([tmp_path / "a.pem", tmp_path / "b.pem"], "news", "example.org")
    (tmp_path / "c.pem").write_text("junk")
    with pytest.raises(KeyStoreError, match="not an unencrypted PEM"):
        load_keys([tmp_path / "c.pem"], "news", "example.org")
    [ed] = load_keys([tmp_path / "a.pem"], "news", "example.org")
    assert ed.record_name == "news-ed25519._domainkey.example.org"


@pytest.mark.parametrize("pool_after", [1000, 0])
async def test_signing_maildir_inline_and_in_the_pool(tmp_path: Path, keys: tuple[DKIMKey, ...],
                                                      pool_after: int) -> None:
    transport = SigningTransport(MaildirTransport(tmp_path / "md"), keys, workers=2, pool_after=pool_after)
    try:
        for _ in range(3):
            assert (await transport.send("bounce@example.org", "r@example.com", MSG)).code == 250
        assert (transport._pool is not None) == (pool_after == 0)
    finally:
        await transport.aclose()
    files = list((tmp_path / "md" / "new").iterdir())
    assert len(files) == 3
    for f in files:
        assert len(verify_all(f.read_bytes(), keys)) == 2


@pytest.mark.parametrize(("workers", "processes"), [(1, 1), (0, 0)])
async def test_workers_is_the_number_of_signing_processes(tmp_path: Path, keys: tuple[DKIMKey, ...],
                                                          workers: int, processes: int) -> None:
    """``[dkim] workers = 1`` is one signing process beside the loop; ``0`` signs inline."""
    transport = SigningTransport(MaildirTransport(tmp_path / "md"), keys, workers=workers,
                                 pool_after=0)
    try:
        for _ in range(3):
            assert (await transport.send("bounce@example.org", "r@example.com", MSG)).code == 250
        assert len(transport._pool.pids if transport._pool is not None else []) == processes
    finally:
        await transport.aclose()
    for f in (tmp_path / "md" / "new").iterdir():
        assert len(verify_all(f.read_bytes(), keys)) == 2


async def test_signing_smtp_verifies_after_dot_stuffing(smtp_server: SMTPServer,
                                                        keys: tuple[DKIMKey, ...]) -> None:
    transport = SigningTransport(SMTPTransport([relay(smtp_server.port)]), keys)
    transport.set_share(1)
    try:
        assert (await transport.send("bounce@example.org", "r@example.com", MSG)).code == 250
    finally:
        await transport.aclose()
    [got] = smtp_server.received
    assert b"\r\n.line that SMTP dot-stuffs" in got.data
    assert sorted(verify_all(got.data, keys)) == [b"ed25519-sha256", b"rsa-sha256"]


async def test_a_killed_signing_worker_does_not_fail_the_send(tmp_path: Path, keys: tuple[DKIMKey, ...]) -> None:
    import os
    import signal

    transport = SigningTransport(MaildirTransport(tmp_path / "md"), keys, workers=2, pool_after=0)
    try:
        assert (await transport.send("b@example.org", "r@example.com", MSG)).code == 250
        assert transport._pool is not None
        pids = transport._pool.pids
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for _ in range(2):
            assert (await transport.send("b@example.org", "r@example.com", MSG)).code == 250
        assert transport._pool is None
    finally:
        await transport.aclose()
    files = list((tmp_path / "md" / "new").iterdir())
    assert len(files) == 3
    assert all(len(verify_all(f.read_bytes(), keys)) == 2 for f in files)


def numbered(i: int) -> bytes:
    return MSG.replace(b"Message-ID: <1@", f"Message-ID: <{i}@".encode()) + f"reader {i}\r\n".encode() * i


async def test_the_pool_answers_each_message_with_its_own_signature(tmp_path: Path,
                                                                     keys: tuple[DKIMKey, ...]) -> None:
    """Many messages in flight at once: each comes back with the signature of its own body
    (answers are matched to requests by order; a mix-up would fail verification)."""
    import asyncio

    transport = SigningTransport(MaildirTransport(tmp_path / "md"), keys, workers=2, pool_after=0)
    try:
        signed = await asyncio.gather(*(transport.sign(numbered(i)) for i in range(120)))
        assert transport._pool is not None
        assert len(set(transport._pool.pids)) == 2
    finally:
        await transport.aclose()
    for i, data in enumerate(signed):
        assert data.endswith(numbered(i))
        assert sorted(verify_all(data, keys)) == [b"ed25519-sha256", b"rsa-sha256"]


def test_the_same_transport_signs_in_a_second_event_loop(tmp_path: Path, keys: tuple[DKIMKey, ...]) -> None:
    """The CLI may run several ``asyncio.run`` calls with one App: the pool starts again."""
    import asyncio

    transport = SigningTransport(MaildirTransport(tmp_path / "md"), keys, workers=2, pool_after=0)
    first = asyncio.run(transport.sign(numbered(1)))
    assert transport._pool is not None
    old = transport._pool.pids
    second = asyncio.run(transport.sign(numbered(2)))
    assert transport._pool.pids != old
    asyncio.run(transport.aclose())
    assert verify_all(first, keys)
    assert verify_all(second, keys)


async def test_a_message_a_worker_cannot_sign_fails_alone(tmp_path: Path, keys: tuple[DKIMKey, ...]) -> None:
    from mailer.delivery.signing_pool import SigningFailed, SigningPool

    pool = SigningPool(keys_to_json(keys), 1)
    try:
        # A header line with no colon: dkimpy refuses it.
        with pytest.raises(SigningFailed, match="Error"):
            await pool.signature(b"From: a@example.org\r\nnot a header\r\n\r\nbody\r\n")
        assert verify_all(await pool.signature(MSG) + MSG, keys)  # the worker lives on
    finally:
        await pool.aclose()


def test_signing_workers_exit_when_their_sender_is_killed(tmp_path: Path, keys: tuple[DKIMKey, ...]) -> None:
    """SIGKILL of the sending process closes the workers' pipes: they read EOF and exit."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "sender.py"
    script.write_text(
        "import asyncio, sys, time\n"
        "from pathlib import Path\n"
        "from mailer.delivery.dkim import keys_to_json, load_keys\n"
        "from mailer.delivery.signing_pool import SigningPool\n"
        "async def main():\n"
        f"    keys = load_keys([Path({str(keyfile_rsa(tmp_path))!r})], 'news', 'example.org')\n"
        "    pool = SigningPool(keys_to_json(keys), 2)\n"
        "    await pool.signature(b'From: a@example.org\\r\\n\\r\\nbody\\r\\n')\n"
        "    print(*pool.pids, flush=True)\n"
        "    time.sleep(60)\n"
        "asyncio.run(main())\n")
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        pids = [int(p) for p in child.stdout.readline().split()]
        assert len(pids) == 2
        os.kill(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)


def keyfile_rsa(tmp_path: Path) -> Path:
    path = tmp_path / "rsa.pem"
    create_key_file(path, "rsa-sha256")
    return path


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie whose parent died is reaped by init: not alive)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


_body_pieces = st.sampled_from([b"a", b"Z9", b" ", b"  ", b"\t", b"\r\n", b"\n", b"\r", b"=20",
                                b"\xe4\xb8\xad"])


@given(st.lists(_body_pieces, max_size=80).map(b"".join))
def test_the_fast_relaxed_body_is_dkimpys_own(body: bytes) -> None:
    """The fast path may skip dkimpy's regex passes only where they would change nothing."""
    assert ours._relaxed_body(body) == ours._DKIMPY_RELAXED_BODY(body)


_header_pieces = st.sampled_from([b"a", b"Z9", b" ", b"  ", b"\t", b"\r\n ", b"\r\n\t", b"\n", b"\r",
                                  b"\x0b", b"\x0c", b":", b"\xe4\xb8\xad"])


@given(st.lists(st.tuples(st.sampled_from([b"From", b"Subject ", b"to", b"List-Id\t"]),
                          st.lists(_header_pieces, max_size=30).map(b"".join)), max_size=6))
def test_the_fast_relaxed_headers_are_dkimpys_own(headers: list[tuple[bytes, bytes]]) -> None:
    assert ours._relaxed_headers(headers) == [tuple(h) for h in ours._DKIMPY_RELAXED_HEADERS(headers)]


@given(head=st.lists(st.sampled_from([b"From: a@example.org", b"To: b@qq.com", b" folded",
                                      b"\tfolded", b"Subject: x  y", b"X-A::b", b"From mbox",
                                      b"Bad name: x", b"\xe4\xb8\xad: y", b": empty", b"NoColon",
                                      b"To:", b"List-Id:\t<a.b>"]), max_size=6),
       body=st.lists(_body_pieces, max_size=60).map(b"".join),
       separator=st.sampled_from([b"\r\n", b"\n"]))
def test_the_fast_header_split_is_dkimpys_own(head: list[bytes], body: bytes,
                                               separator: bytes) -> None:
    while head and head[0][:1] in (b" ", b"\t"):
        head = head[1:]
    message = separator.join([*head, b"", body]) if head else b"\r\n" + body
    try:
        theirs = ours._dkimpy_rfc822_parse(message)
    except Exception as exc:  # dkimpy refuses it: so must we, the same way
        with pytest.raises(type(exc)):
            ours._rfc822_parse(message)
        return
    assert ours._rfc822_parse(message) == theirs


def test_a_pooled_signer_keeps_a_few_messages_signed_ahead_of_the_connections(
        tmp_path: Path, keys: tuple[DKIMKey, ...]) -> None:
    """With workers, the engine runs SIGN_AHEAD more sends per worker than there are
    connections, so a connection never waits for its signature; inline, just the connections."""
    inner = MaildirTransport(tmp_path / "out", concurrency=4)
    assert SigningTransport(inner, keys, workers=2).concurrency == 4 + 2 * ours.SIGN_AHEAD
    assert SigningTransport(inner, keys, workers=1).concurrency == 4 + ours.SIGN_AHEAD
    assert SigningTransport(inner, keys, workers=0).concurrency == 4
    # Unset: one per core, and none on one core, where a worker only takes turns with the loop.
    assert [ours.default_workers(n) for n in (1, 2, 4)] == [0, 2, 4]


@pytest.mark.parametrize("message", [
    MSG,
    # A field twice, unsigned fields between and a fold: select_headers picks the same ones.
    b"X-First: 1\r\nFrom: a@example.org\r\nTo: b@qq.com\r\nX-Mid: 2\r\nTo: c@qq.com\r\n"
    b"Subject: folded\r\n  over two lines\r\n\r\nbody\r\n",
])
def test_the_signature_is_dkimpys_own_sign(keys: tuple[DKIMKey, ...], message: bytes) -> None:
    """Splitting once and handing dkimpy only the fields it hashes gives ``dkim.sign``'s bytes."""
    include = [h.encode() for h in ours.SIGNED_HEADERS
               if re.search(rb"(?im)^" + h.encode() + rb":", message.split(b"\r\n\r\n")[0])]
    with time_machine.travel(datetime(2026, 12, 3, 12, 0, tzinfo=UTC), tick=False):
        theirs = b"".join(
            dkim.sign(message, k.selector.encode(), k.domain.encode(), k.private,
                      canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=k.algorithm.encode(),
                      include_headers=include, linesep=b"\r\n") for k in keys)
        assert DKIMSigner(keys).signature(message) == theirs
