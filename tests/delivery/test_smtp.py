"""The SMTP pool against real aiosmtpd servers with scripted faults, TLS and AUTH."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import Engine, select

from mailer.delivery.classify import NO_REPLY
from mailer.delivery.engine import DeliveryEngine, DeliveryReport
from mailer.delivery.outbox import Outbox
from mailer.delivery.smtp import SMTPTransport
from mailer.models import OutboxState
from mailer.schema import outbox as outbox_table
from tests.delivery.helpers import (
    FakeClock,
    directory,
    make_edition,
    message,
    recipients,
    relay,
    settings,
)
from tests.support.smtp import Fault, RecordingHandler, SMTPServer

MSG = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: t\r\n\r\nhello\r\n"


@pytest.fixture(params=[False, True], ids=["plain", "pipelining"])
def pipelining(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def server_factory() -> Iterator[type[SMTPServer]]:
    started: list[SMTPServer] = []

    class Tracked(SMTPServer):
        def start(self) -> SMTPServer:
            started.append(self)
            return super().start()

    yield Tracked
    for s in started:
        s.stop()


def serve(factory: type[SMTPServer], fault: Fault | None = None, *, pipelining: bool = False,
          delay: float = 0.0, hangup_on_421: bool = False, **kw: object) -> SMTPServer:
    handler = RecordingHandler(fault=fault, delay=delay, pipelining=pipelining,
                               hangup_on_421=hangup_on_421)
    return factory(handler, **kw).start()


async def deliver(db: Engine, port: int, n: int, *, connections: int = 2,
                  bounced: list[int] | None = None, **relay_kw: object) -> DeliveryReport:
    box = Outbox(db, FakeClock())
    edition = make_edition(db)
    people = recipients(n, ("qq.com", "163.com"))
    box.enqueue(edition, people)
    transport = SMTPTransport([relay(port, connections=connections, **relay_kw)])
    try:
        return await DeliveryEngine(
            box, transport, recipients=directory(people), message_for=message,
            envelope_from="bounces@example.org", settings=settings(), clock=FakeClock(),
            on_bounce=bounced.append if bounced is not None else None,
        ).run(edition)
    finally:
        await transport.aclose()


def nth(step: str, k: int, reply: str) -> Fault:
    """Answer ``reply`` to the k-th command of kind ``step`` (1-based), normally otherwise."""
    seen = {"n": 0}

    def fault(at: str, envelope: object, _n: int) -> str | None:
        if at != step:
            return None
        seen["n"] += 1
        return reply if seen["n"] == k else None

    return fault


def only(db: Engine, state: str) -> tuple[int, int | None, str | None]:
    """The one row in ``state``: its subscriber id, last code and last reply."""
    with db.connect() as conn:
        row = conn.execute(select(outbox_table.c.subscriber_id, outbox_table.c.last_code,
                                  outbox_table.c.last_reply)
                           .where(outbox_table.c.state == state)).one()
    return row.subscriber_id, row.last_code, row.last_reply


async def test_connections_are_reused(sqlite_db: Engine, server_factory: type[SMTPServer],
                                      pipelining: bool) -> None:
    server = serve(server_factory, pipelining=pipelining)
    report = await deliver(sqlite_db, server.port, 20, connections=2)
    assert report.sent == 20
    assert len(server.received) == 20
    assert server.handler.ehlos == 2


@pytest.mark.parametrize("hangup", [False, True], ids=["stays", "hangs-up"])
async def test_421_mid_session_defers_and_reconnects(sqlite_db: Engine,
                                                     server_factory: type[SMTPServer],
                                                     pipelining: bool, hangup: bool) -> None:
    fault = nth("rcpt", 3, "421 4.7.0 Too many messages, closing")
    server = serve(server_factory, fault, pipelining=pipelining, hangup_on_421=hangup)
    report = await deliver(sqlite_db, server.port, 10, connections=1)
    assert report.sent == 9
    assert report.deferred == 1
    assert len(server.received) == 9
    assert server.handler.ehlos == 2  # the connection was replaced after the 421
    assert only(sqlite_db, "deferred")[1] == 421


async def test_550_user_unknown_bounces_and_suppresses(sqlite_db: Engine,
                                                       server_factory: type[SMTPServer],
                                                       pipelining: bool) -> None:
    fault = nth("rcpt", 2, "550 5.1.1 <user2@qq.com>: Recipient address rejected: User unknown")
    server = serve(server_factory, fault, pipelining=pipelining)
    bounced: list[int] = []
    report = await deliver(sqlite_db, server.port, 4, connections=1, bounced=bounced)
    assert report.bounced == 1
    assert report.sent == 3
    sid, code, reply = only(sqlite_db, "bounced")
    assert bounced == [sid]
    assert code == 550
    assert reply is not None
    assert "user2@qq.com" not in reply  # the relay's words, address scrubbed


class _CountingRSET(RecordingHandler):
    """Counts the RSET commands the client sends."""

    rsets = 0

    async def handle_RSET(self, server: object, session: object, envelope: object) -> str:
        self.rsets += 1
        return "250 OK"


async def test_rset_only_after_an_aborted_transaction(sqlite_db: Engine,
                                                      server_factory: type[SMTPServer],
                                                      pipelining: bool) -> None:
    """A completed transaction leaves the relay reset (RFC 5321 §4.1.1.4): no RSET before the
    next; a refused RCPT leaves MAIL open, so the next one starts with RSET (else 503)."""
    handler = _CountingRSET(fault=nth("rcpt", 3, "550 5.1.1 User unknown"), pipelining=pipelining)
    server = server_factory(handler).start()
    report = await deliver(sqlite_db, server.port, 6, connections=1)
    assert (report.sent, report.bounced) == (5, 1)
    assert len(server.received) == 5
    assert handler.rsets == 1


async def test_550_content_denied_is_not_a_bounce(sqlite_db: Engine,
                                                  server_factory: type[SMTPServer]) -> None:
    def fault(step: str, envelope: object, n: int) -> str | None:
        return "550 Mail content denied. http://service.mail.qq.com/cgi-bin/help?id=20022" \
            if step == "data" else None

    server = serve(server_factory, fault)
    bounced: list[int] = []
    report = await deliver(sqlite_db, server.port, 3, bounced=bounced)
    assert report.content_rejected == 3
    assert bounced == []
    with sqlite_db.connect() as conn:
        codes = conn.execute(select(outbox_table.c.last_code).distinct()).scalars().all()
    assert codes == [550]


async def test_drop_after_data_defers_the_message(sqlite_db: Engine,
                                                  server_factory: type[SMTPServer],
                                                  pipelining: bool) -> None:
    fault = nth("data", 2, "drop")
    server = serve(server_factory, fault, pipelining=pipelining)
    report = await deliver(sqlite_db, server.port, 5, connections=1)
    assert report.deferred == 1
    assert report.sent == 4
    _, code, reply = only(sqlite_db, "deferred")
    assert code == NO_REPLY
    assert reply is not None
    assert "connection lost" in reply


async def test_server_slower_than_the_timeout_is_deferred(sqlite_db: Engine,
                                                          server_factory: type[SMTPServer]) -> None:
    server = serve(server_factory, delay=1.5)
    report = await deliver(sqlite_db, server.port, 1, connections=1, timeout=0.3)
    assert report.deferred == 1
    assert report.sent == 0
    assert "timed out" in (only(sqlite_db, "deferred")[2] or "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_relay_down_fails_over_and_comes_back(server_factory: type[SMTPServer]) -> None:
    live = serve(server_factory)
    down_port = free_port()
    now = [0.0]
    transport = SMTPTransport([relay(down_port, name="a"), relay(live.port, name="b")],
                              monotonic=lambda: now[0])
    results = [await transport.send("f@example.org", f"u{i}@example.org", MSG) for i in range(6)]
    assert all(r.code == 250 for r in results)
    assert {r.relay for r in results} == {"b"}
    # Relay a starts listening; once its cool-off has passed traffic is shared again.
    back = server_factory(RecordingHandler(), port=down_port).start()
    now[0] += 10
    results = [await transport.send("f@example.org", f"v{i}@example.org", MSG) for i in range(6)]
    await transport.aclose()
    assert all(r.code == 250 for r in results)
    assert {r.relay for r in results} == {"a", "b"}
    assert len(back.received) == 3


async def test_every_relay_down_defers() -> None:
    transport = SMTPTransport([relay(free_port()), relay(free_port())], down_wait=0.0)
    result = await transport.send("f@example.org", "u@example.org", MSG)
    await transport.aclose()
    assert result.code == NO_REPLY
    assert "no relay reachable" in result.reply


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


async def test_implicit_tls_with_a_verified_certificate(server_factory: type[SMTPServer],
                                                        ca: trustme.CA, ca_file: Path) -> None:
    server = serve(server_factory, ssl_context=server_tls(ca))
    transport = SMTPTransport([relay(server.port, security="tls", ca_file=ca_file)])
    result = await transport.send("f@example.org", "u@example.org", MSG)
    await transport.aclose()
    assert result.code == 250
    assert len(server.received) == 1


async def test_a_certificate_from_another_ca_is_refused(server_factory: type[SMTPServer],
                                                        ca: trustme.CA, tmp_path: Path) -> None:
    server = serve(server_factory, ssl_context=server_tls(ca))
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    transport = SMTPTransport([relay(server.port, security="tls", ca_file=other)])
    result = await transport.send("f@example.org", "u@example.org", MSG)
    await transport.aclose()
    assert result.code == NO_REPLY
    assert "CERTIFICATE_VERIFY_FAILED" in result.reply or "certificate" in result.reply.lower()
    assert server.received == []


def authenticator(server: object, session: object, envelope: object, mechanism: str,
                  auth_data: object) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"s3cret"
    return AuthResult(success=ok)


async def test_starttls_and_auth(server_factory: type[SMTPServer], ca: trustme.CA,
                                 ca_file: Path) -> None:
    server = serve(server_factory, tls_context=server_tls(ca), require_starttls=True,
                   authenticator=authenticator, auth_required=True)
    good = SMTPTransport([relay(server.port, security="starttls", ca_file=ca_file,
                                username="digest", password="s3cret")])
    result = await good.send("f@example.org", "u@example.org", MSG)
    await good.aclose()
    assert result.code == 250
    bad = SMTPTransport([relay(server.port, security="starttls", ca_file=ca_file,
                               username="digest", password="wrong", timeout=1.0)])
    result = await bad.send("f@example.org", "u@example.org", MSG)
    await bad.aclose()
    assert result.code == NO_REPLY
    assert len(server.received) == 1


async def test_outcomes_reach_the_outbox_per_state(sqlite_db: Engine,
                                                   server_factory: type[SMTPServer]) -> None:
    def fault(step: str, envelope: object, n: int) -> str | None:
        rcpt = getattr(envelope, "rcpt_tos", [])
        if step == "data" and rcpt and rcpt[0].endswith("@163.com"):
            return "554 DT:SPM 163 smtp14, please see http://mail.163.com/help/help_spam_16.htm"
        return None

    server = serve(server_factory, fault)
    report = await deliver(sqlite_db, server.port, 6)
    assert report.content_rejected == 3  # the 163.com half
    assert report.sent == 3
    counts = Outbox(sqlite_db, FakeClock()).counts_by_domain(1)
    assert counts["163.com"][OutboxState.CONTENT_REJECTED] == 3
    assert counts["qq.com"][OutboxState.SENT] == 3


async def test_a_short_outage_of_every_relay_is_waited_out(
        server_factory: type[SMTPServer]) -> None:
    port = free_port()
    impatient = SMTPTransport([relay(port)], down_wait=0.0)
    patient = SMTPTransport([relay(port)], down_wait=10.0)
    assert (await impatient.send("f@example.org", "u@example.org", MSG)).code == NO_REPLY
    assert (await patient.send("f@example.org", "u@example.org", MSG)).code == NO_REPLY
    server = server_factory(RecordingHandler(), port=port).start()
    # Both relays are cooling off now: one gives up at once, the other waits and then sends.
    assert (await impatient.send("f@example.org", "u@example.org", MSG)).code == NO_REPLY
    assert (await patient.send("f@example.org", "u@example.org", MSG)).code == 250
    await impatient.aclose()
    await patient.aclose()
    assert len(server.received) == 1


async def test_weights_share_traffic_between_relays(server_factory: type[SMTPServer]) -> None:
    heavy, light = serve(server_factory), serve(server_factory)
    transport = SMTPTransport([relay(heavy.port, weight=3), relay(light.port, weight=1)])
    for i in range(40):
        assert (await transport.send("f@example.org", f"u{i}@example.org", MSG)).code == 250
    await transport.aclose()
    assert (len(heavy.received), len(light.received)) == (30, 10)


async def test_non_ascii_address_uses_smtputf8_only_where_offered(
        server_factory: type[SMTPServer]) -> None:
    utf8 = serve(server_factory)
    plain = serve(server_factory, enable_SMTPUTF8=False)
    t_utf8 = SMTPTransport([relay(utf8.port)])
    t_plain = SMTPTransport([relay(plain.port)])
    ok = await t_utf8.send("f@example.org", "读者@example.org", MSG)
    refused = await t_plain.send("f@example.org", "读者@example.org", MSG)
    ascii_ok = await t_plain.send("f@example.org", "reader@example.org", MSG)
    await t_utf8.aclose()
    await t_plain.aclose()
    assert ok.code == 250
    assert utf8.received[0].rcpt_tos == ["读者@example.org"]
    assert refused.code == 553  # permanent for this relay: failed, never sent garbled
    assert ascii_ok.code == 250
    assert len(plain.received) == 1


async def test_a_line_break_in_an_address_never_reaches_the_relay(
        server_factory: type[SMTPServer]) -> None:
    server = serve(server_factory)
    transport = SMTPTransport([relay(server.port)])
    result = await transport.send("f@example.org", "a@example.org>\r\nRCPT TO:<b@example.org", MSG)
    ok = await transport.send("f@example.org", "c@example.org", MSG)
    await transport.aclose()
    assert result.code == 501
    assert ok.code == 250
    assert [r.rcpt_tos for r in server.received] == [["c@example.org"]]


@pytest.mark.parametrize("bad", ["\x00", "\t", "\x1b", "\x7f", "\x85"],
                         ids=["nul", "tab", "esc", "del", "c1-nel"])
async def test_every_control_character_in_an_address_is_refused(
        server_factory: type[SMTPServer], bad: str) -> None:
    server = serve(server_factory)
    transport = SMTPTransport([relay(server.port)])
    refused = await transport.send("f@example.org", f"a{bad}b@example.org", MSG)
    sender = await transport.send(f"f{bad}@example.org", "d@example.org", MSG)
    ok = await transport.send("f@example.org", "c@example.org", MSG)
    await transport.aclose()
    assert (refused.code, sender.code) == (501, 501)
    assert f"control character U+{ord(bad):04X}" in refused.reply
    assert ok.code == 250
    assert [r.rcpt_tos for r in server.received] == [["c@example.org"]]


async def _endless_reply_server(chunk: bytes) -> tuple[asyncio.Server, list[int]]:
    """Greets and answers EHLO, then answers MAIL with ``chunk`` repeated until the client hangs
    up: a relay that never ends its reply. Records how many bytes it got out."""
    sent = [0]

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hostile ESMTP\r\n")
        try:
            while line := await reader.readline():
                if line.upper().startswith((b"EHLO", b"HELO")):
                    writer.write(b"250-hostile\r\n250 PIPELINING\r\n")
                elif line.upper().startswith(b"QUIT"):
                    writer.write(b"221 bye\r\n")
                    break
                elif line.upper().startswith((b"MAIL", b"RSET")):
                    writer.write(b"250 " if chunk.startswith(b"x") else b"")
                    while sent[0] < 200_000_000:
                        writer.write(chunk)
                        sent[0] += len(chunk)
                        await writer.drain()
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(session, "127.0.0.1", 0), sent


@pytest.mark.parametrize("chunk", [b"x" * 65536, b"250-more\r\n" * 4096],
                         ids=["endless-line", "endless-continuation"])
async def test_an_endless_reply_ends_the_session_cleanly(chunk: bytes) -> None:
    server, sent = await _endless_reply_server(chunk)
    port = server.sockets[0].getsockname()[1]
    transport = SMTPTransport([relay(port, timeout=20.0)])
    try:
        result = await asyncio.wait_for(
            transport.send("f@example.org", "u@example.org", MSG), 10)
    finally:
        await transport.aclose()
        server.close()
    assert result.code == NO_REPLY  # deferred: another relay or a later attempt takes it
    assert "reply is longer than" in result.reply
    assert sent[0] < 10_000_000  # we hung up early, not after buffering what it streamed
