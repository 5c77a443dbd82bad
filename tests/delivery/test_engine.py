"""The engine end to end: outbox on a real database, a real aiosmtpd relay or a Maildir."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine

from mailer.delivery.engine import DeliveryEngine
from mailer.delivery.maildir import MaildirTransport
from mailer.delivery.outbox import Outbox
from mailer.delivery.smtp import SMTPTransport
from mailer.models import OutboxState
from tests.delivery.helpers import (
    FakeClock,
    Rcpt,
    directory,
    make_edition,
    message,
    recipients,
    relay,
    set_edition_state,
    settings,
)
from tests.support.smtp import RecordingHandler, SMTPServer


async def test_sends_every_recipient_once_over_smtp(db: Engine, smtp_server: SMTPServer) -> None:
    engine = db
    clock = FakeClock()
    outbox = Outbox(engine, clock)
    edition = make_edition(engine)
    people = recipients(25, ("qq.com", "163.com", "example.org"))
    assert outbox.enqueue(edition, people) == 25
    transport = SMTPTransport([relay(smtp_server.port, connections=3)])
    delivery = DeliveryEngine(outbox, transport, recipients=directory(people), message_for=message,
                              envelope_from="bounces@example.org", settings=settings(), clock=clock)
    report = await delivery.run(edition)
    await transport.aclose()
    assert report.sent == 25
    assert report.remaining == 0
    assert report.stopped == "done"
    got = sorted(r.rcpt_tos[0] for r in smtp_server.received)
    assert got == sorted(p.address for p in people)
    # Dot-stuffing was undone by the server: the body arrives as written.
    assert all(b"\r\n.leading dot\r\n" in r.data for r in smtp_server.received)
    assert outbox.counts(edition)[OutboxState.SENT] == 25
    # A second run finds nothing to do: no resend to everyone (listmonk #2070).
    again = await DeliveryEngine(outbox, transport, recipients=directory(people),
                                 message_for=message, envelope_from="bounces@example.org",
                                 settings=settings(), clock=clock).run(edition)
    await transport.aclose()
    assert again.sent == 0
    assert len(smtp_server.received) == 25


async def test_maildir_transport_writes_each_message_atomically(sqlite_db: Engine,
                                                                tmp_path: Path) -> None:
    engine = sqlite_db
    outbox = Outbox(engine, FakeClock())
    edition = make_edition(engine)
    people = recipients(5)
    outbox.enqueue(edition, people)
    transport = MaildirTransport(tmp_path / "maildir")
    report = await DeliveryEngine(outbox, transport, recipients=directory(people),
                                  message_for=message, envelope_from="b@example.org",
                                  settings=settings(), clock=FakeClock()).run(
                                      edition)
    assert report.sent == 5
    files = sorted((tmp_path / "maildir" / "new").iterdir())
    assert len(files) == 5
    assert not list((tmp_path / "maildir" / "tmp").iterdir())
    bodies = {f.read_bytes() for f in files}
    assert bodies == {message(r, p) for r, p in zip(
        [type("R", (), {"edition_id": edition, "subscriber_id": p.id})() for p in people],
        people, strict=True)}


async def test_unsubscribed_meanwhile_is_suppressed(sqlite_db: Engine,
                                                    smtp_server: SMTPServer) -> None:
    engine = sqlite_db
    outbox = Outbox(engine, FakeClock())
    edition = make_edition(engine)
    people = recipients(6)
    outbox.enqueue(edition, people)
    lookup = directory(people)
    del lookup.book[3]  # type: ignore[attr-defined]
    transport = SMTPTransport([relay(smtp_server.port)])
    report = await DeliveryEngine(outbox, transport, recipients=lookup, message_for=message,
                                  envelope_from="b@example.org", settings=settings(),
                                  clock=FakeClock()).run(edition)
    await transport.aclose()
    assert report.sent == 5
    assert report.suppressed == 1
    assert "user3@example.org" not in {r.rcpt_tos[0] for r in smtp_server.received}
    assert outbox.counts(edition)[OutboxState.SUPPRESSED] == 1


async def test_paused_edition_is_not_sent_until_resumed(sqlite_db: Engine,
                                                        smtp_server: SMTPServer) -> None:
    engine = sqlite_db
    outbox = Outbox(engine, FakeClock())
    edition = make_edition(engine, state="paused")
    people = recipients(4)
    outbox.enqueue(edition, people)
    transport = SMTPTransport([relay(smtp_server.port)])

    def engine_run() -> DeliveryEngine[Rcpt]:
        return DeliveryEngine(outbox, transport, recipients=directory(people), message_for=message,
                              envelope_from="b@example.org", settings=settings(),
                              clock=FakeClock())

    report = await engine_run().run(edition)
    assert report.stopped == "paused"
    assert report.sent == 0
    assert outbox.counts(edition)[OutboxState.QUEUED] == 4
    set_edition_state(engine, edition, "sending")
    report = await engine_run().run(edition)
    await transport.aclose()
    assert report.sent == 4
    assert len(smtp_server.received) == 4


async def test_deferred_row_is_retried_after_backoff(sqlite_db: Engine) -> None:
    calls = {"n": 0}

    def fault(step: str, envelope: object, n: int) -> str | None:
        if step == "rcpt":
            calls["n"] += 1
            if calls["n"] == 1:
                return "451 4.7.1 Greylisted, try again later"
        return None

    server = SMTPServer(RecordingHandler(fault=fault)).start()
    try:
        engine = sqlite_db
        clock = FakeClock()
        outbox = Outbox(engine, clock)
        edition = make_edition(engine)
        people = recipients(1)
        outbox.enqueue(edition, people)
        transport = SMTPTransport([relay(server.port, connections=1)])

        def make() -> DeliveryEngine[Rcpt]:
            return DeliveryEngine(outbox, transport, recipients=directory(people),
                                  message_for=message, envelope_from="b@example.org",
                                  settings=settings(), clock=clock, rand=lambda: 0.0)

        first = await make().run(edition)
        assert first.deferred == 1
        assert first.stopped == "deferred"
        assert not server.received
        # Not due yet: half the base delay with rand=0 is 0.5 s.
        clock.advance(timedelta(milliseconds=400))
        assert (await make().run(edition)).attempted == 0
        clock.advance(timedelta(milliseconds=200))
        second = await make().run(edition)
        await transport.aclose()
        assert second.sent == 1
        assert len(server.received) == 1
    finally:
        server.stop()


async def test_maildir_for_mta_pickup_adds_envelope_headers(tmp_path: Path) -> None:
    transport = MaildirTransport(tmp_path / "pickup", delivered_to=True)
    result = await transport.send("bounces@example.org", "reader@qq.com", b"Subject: x\r\n\r\nhi\r\n")
    assert result.code == 250
    (path,) = (tmp_path / "pickup" / "new").iterdir()
    assert path.read_bytes() == (b"Return-Path: <bounces@example.org>\r\n"
                                 b"Delivered-To: reader@qq.com\r\nSubject: x\r\n\r\nhi\r\n")
