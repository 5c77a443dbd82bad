"""Pause and cancel while sending, progress output, and logs that never hold an address."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from mailer.delivery.engine import DeliveryEngine, DeliveryReport
from mailer.delivery.outbox import Outbox
from mailer.delivery.progress import LogProgress
from mailer.delivery.smtp import SMTPTransport
from mailer.models import OutboxState
from tests.delivery.helpers import (
    FakeClock,
    directory,
    make_edition,
    message,
    recipients,
    relay,
    set_edition_state,
    settings,
)
from tests.support.smtp import RecordingHandler, SMTPServer


async def run_once(db: Engine, server: SMTPServer, edition: int, n: int,
                   **kw: object) -> DeliveryReport:
    transport = SMTPTransport([relay(server.port, connections=2)])
    try:
        return await DeliveryEngine(
            Outbox(db, FakeClock()), transport, recipients=directory(recipients(n, ("qq.com",))),
            message_for=message, envelope_from="bounces@example.org", settings=settings(),
            clock=FakeClock(), batch_size=4, **kw,  # type: ignore[arg-type]
        ).run(edition)
    finally:
        await transport.aclose()


@pytest.mark.parametrize("action", ["paused", "cancelled"])
async def test_pause_or_cancel_while_sending_stops_between_batches(sqlite_db: Engine,
                                                                   action: str) -> None:
    edition = make_edition(sqlite_db)
    n = 60
    Outbox(sqlite_db, FakeClock()).enqueue(edition, recipients(n, ("qq.com",)))
    seen = {"n": 0}

    def fault(step: str, envelope: object, _n: int) -> str | None:
        if step == "data":
            seen["n"] += 1
            if seen["n"] == 10:  # an editor presses pause (or cancel) mid-send
                set_edition_state(sqlite_db, edition, action)
        return None

    server = SMTPServer(RecordingHandler(fault=fault)).start()
    try:
        report = await run_once(sqlite_db, server, edition, n)
        assert report.stopped == action
        assert 10 <= report.sent < n
        counts = Outbox(sqlite_db, FakeClock()).counts(edition)
        assert counts[OutboxState.SENDING] == 0
        assert counts[OutboxState.SENT] == len(server.received) == report.sent
        # Paused rows wait, queued; a cancelled edition's never go, and say so (issue 18).
        waiting = OutboxState.QUEUED if action == "paused" else OutboxState.CANCELLED
        assert counts[waiting] == n - report.sent
        assert counts[OutboxState.QUEUED] + counts[OutboxState.CANCELLED] == n - report.sent
        if action == "paused":
            set_edition_state(sqlite_db, edition, "sending")  # resume
            report = await run_once(sqlite_db, server, edition, n)
            assert report.stopped == "done"
            assert len({r.rcpt_tos[0] for r in server.received}) == n
            assert len(server.received) == n  # nobody twice
        else:
            assert (await run_once(sqlite_db, server, edition, n)).sent == 0
    finally:
        server.stop()


async def test_logs_name_subscribers_by_id_only(sqlite_db: Engine,
                                                caplog: pytest.LogCaptureFixture) -> None:
    rcpts = {"n": 0}

    def fault(step: str, envelope: object, _n: int) -> str | None:
        if step == "rcpt":
            rcpts["n"] += 1
        if step == "rcpt" and rcpts["n"] % 2:
            return "550 5.1.1 <user1@qq.com>: Recipient address rejected: User unknown"
        return None

    server = SMTPServer(RecordingHandler(fault=fault)).start()
    edition = make_edition(sqlite_db)
    Outbox(sqlite_db, FakeClock()).enqueue(edition, recipients(6, ("qq.com",)))
    caplog.set_level(logging.DEBUG)
    progress = LogProgress(every=0.0, logger=logging.getLogger("newsletter.delivery.progress"))
    try:
        report = await run_once(sqlite_db, server, edition, 6, progress=progress)
    finally:
        server.stop()
    assert report.bounced == 3
    # Ours and the SMTP client's records (the test server's own "mail.log" is not ours).
    text = "\n".join(r.getMessage() for r in caplog.records
                     if r.name.startswith(("newsletter", "aiosmtplib")))
    assert "bounced" in text
    assert "edition" in text  # the progress lines and the summary were logged
    assert "@" not in text
    assert "user1" not in text


def test_log_progress_reports_counts_rate_and_eta() -> None:
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("tests.delivery.progress")
    logger.addHandler(Capture())
    logger.setLevel(logging.INFO)
    clock = [0.0]
    p = LogProgress(every=5.0, monotonic=lambda: clock[0], logger=logger)
    p.start(7, 100)
    counts = dict.fromkeys(OutboxState, 0)
    counts[OutboxState.SENT] = 40
    counts[OutboxState.DEFERRED] = 10
    clock[0] = 1.0
    p.update(counts)  # too soon: no line
    clock[0] = 10.0
    p.update(counts)
    assert lines[0] == "edition 7: sending to 100 recipients"
    assert len(lines) == 2
    assert lines[1] == ("edition 7: 40 of 100 sent, 10 deferred, 0 failed (50 done); 5/s, "
                        "10s left")  # 50 in 10 s, 50 to go


def test_report_timedelta_defaults_are_sane() -> None:
    # The lease must outlive a batch at the slowest sane rate, or rows would be taken over.
    engine_lease = DeliveryEngine.__init__.__kwdefaults__["lease"]  # type: ignore[index]
    assert engine_lease >= timedelta(minutes=1)


async def test_pause_releases_rows_waiting_in_a_slow_domain_lane(sqlite_db: Engine) -> None:
    edition = make_edition(sqlite_db)
    n = 30
    Outbox(sqlite_db, FakeClock()).enqueue(edition, recipients(n, ("qq.com",)))
    seen = {"n": 0}

    def fault(step: str, envelope: object, _n: int) -> str | None:
        if step == "data":
            seen["n"] += 1
            if seen["n"] == 2:
                set_edition_state(sqlite_db, edition, "paused")
        return None

    server = SMTPServer(RecordingHandler(fault=fault)).start()
    transport = SMTPTransport([relay(server.port, connections=2)])
    try:
        report = await DeliveryEngine(
            Outbox(sqlite_db, FakeClock()), transport,
            recipients=directory(recipients(n, ("qq.com",))), message_for=message,
            envelope_from="b@example.org", settings=settings(domain_rates={"qq.com": 2.0}),
            clock=FakeClock(), batch_size=10,
        ).run(edition)
    finally:
        await transport.aclose()
        server.stop()
    assert report.stopped == "paused"
    # The lane held up to 10 claimed rows; they were given back, not sent at 2/s after the pause.
    assert report.sent <= 5
    counts = Outbox(sqlite_db, FakeClock()).counts(edition)
    assert counts[OutboxState.SENDING] == 0
    assert counts[OutboxState.QUEUED] == n - report.sent


async def test_log_records_carry_structured_fields(sqlite_db: Engine,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    server = SMTPServer(RecordingHandler(fault=lambda step, env, n: "550 Mail content denied"
                                         if step == "data" else None)).start()
    edition = make_edition(sqlite_db)
    Outbox(sqlite_db, FakeClock()).enqueue(edition, recipients(2, ("qq.com",)))
    caplog.set_level(logging.DEBUG, logger="newsletter.delivery")
    try:
        await run_once(sqlite_db, server, edition, 2)
    finally:
        server.stop()
    outcomes = [r for r in caplog.records if getattr(r, "outcome", None)]
    assert {(r.domain, r.outcome, r.code) for r in outcomes} == {  # type: ignore[attr-defined]
        ("qq.com", "content_rejected", 550)}
    summary = [r for r in caplog.records if getattr(r, "stopped", None)]
    assert summary[-1].content_rejected == 2  # type: ignore[attr-defined]


async def test_unsubscribe_during_the_send_is_honoured_before_that_turn(sqlite_db: Engine) -> None:
    edition = make_edition(sqlite_db)
    n = 40
    people = recipients(n, ("qq.com",))
    Outbox(sqlite_db, FakeClock()).enqueue(edition, people)
    lookup = directory(people)
    seen = {"n": 0}

    def fault(step: str, envelope: object, _n: int) -> str | None:
        if step == "data":
            seen["n"] += 1
            if seen["n"] == 3:  # a reader near the end of the list unsubscribes mid-send
                lookup.book.pop(n, None)  # type: ignore[attr-defined]
        return None

    server = SMTPServer(RecordingHandler(fault=fault)).start()
    transport = SMTPTransport([relay(server.port, connections=1)])
    try:
        report = await DeliveryEngine(
            Outbox(sqlite_db, FakeClock()), transport, recipients=lookup, message_for=message,
            envelope_from="b@example.org", settings=settings(), clock=FakeClock(), batch_size=4,
        ).run(edition)
    finally:
        await transport.aclose()
        server.stop()
    assert report.suppressed == 1
    assert report.sent == n - 1
    assert f"user{n}@qq.com" not in {r.rcpt_tos[0] for r in server.received}


def test_rich_progress_ends_with_the_summary() -> None:
    import io

    from mailer.delivery.progress import RichProgress

    out = io.StringIO()
    bar = RichProgress(out)
    bar.start(3, 10)
    counts = dict.fromkeys(OutboxState, 0)
    counts[OutboxState.SENT] = 9
    counts[OutboxState.FAILED] = 1
    bar.update(counts)
    bar.finish(DeliveryReport(edition_id=3, sent=9, failed=1, elapsed=1.0))
    text = out.getvalue()
    assert "edition 3: sent 9" in text
    assert "failed 1" in text
