"""Provider pace with real parts: aiosmtpd answering NetEase's codes, the real outbox and engine.

A throttling provider (``421 HL:ICC``) slows that domain down and the send still completes; an
hourly cap spreads a send over two simulated hours (a manual clock), for every sender at once;
a blocklisted reply (``450 DT:RBL``) stops that provider, and nothing else.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
from datetime import UTC, datetime, timedelta

from aiosmtpd.smtp import Envelope
from sqlalchemy import Engine, select

from mailer.config import DomainCap
from mailer.delivery.budget import DomainBudget
from mailer.delivery.engine import DeliveryEngine
from mailer.delivery.outbox import Outbox
from mailer.delivery.report import edition_report, format_report
from mailer.delivery.smtp import SMTPTransport
from mailer.schema import domain_sends, outbox, provider_blocks
from tests.delivery.helpers import (
    Rcpt,
    directory,
    make_edition,
    message,
    recipients,
    relay,
    settings,
)
from tests.support.clock import ManualClock
from tests.support.smtp import RecordingHandler, SMTPServer

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def rcpt_of(envelope: Envelope) -> str:
    return str(envelope.rcpt_tos[0]) if envelope.rcpt_tos else ""


async def run_engine(db: Engine, port: int, edition: int, people: list[Rcpt], clock: ManualClock,
                     **kw: object) -> tuple[DeliveryEngine[Rcpt], object]:
    on_blocked = kw.pop("on_blocked", None)
    transport = SMTPTransport([relay(port, connections=2)])
    engine = DeliveryEngine(Outbox(db, clock, ["163.com"]), transport,
                            recipients=directory(people), message_for=message,
                            envelope_from="b@example.org", settings=settings(**kw), clock=clock,
                            on_blocked=on_blocked)  # type: ignore[arg-type]
    try:
        report = await engine.run(edition)
    finally:
        await transport.aclose()
    return engine, report


def states(db: Engine, edition: int) -> dict[str, collections.Counter[str]]:
    out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    with db.connect() as conn:
        for domain, state in conn.execute(select(outbox.c.domain, outbox.c.state)
                                          .where(outbox.c.edition_id == edition)):
            out[str(domain)][str(state)] += 1
    return out


async def test_a_throttling_provider_slows_that_domain_down_and_the_send_completes(
        sqlite_db: Engine) -> None:
    lock = threading.Lock()
    seen = {"n": 0}
    arrivals: list[float] = []

    def fault(step: str, envelope: Envelope, _n: int) -> str | None:
        if step != "data" or not rcpt_of(envelope).endswith("@163.com"):
            return None
        with lock:
            seen["n"] += 1
            if 10 <= seen["n"] <= 12:
                return "421 HL:ICC 163 mx3,too many connections from your IP"
            arrivals.append(time.monotonic())
        return None

    server = SMTPServer(RecordingHandler(fault=fault)).start()
    clock = ManualClock(T0)
    people = recipients(40, ("163.com", "example.org", "163.com", "163.com"))
    edition = make_edition(sqlite_db)
    Outbox(sqlite_db, clock, ["163.com"]).enqueue(edition, people)
    try:
        engine, report = await run_engine(sqlite_db, server.port, edition, people, clock,
                                          domain_rates={"163.com": 20.0})
        limiter = engine.domain_limits.limiter("163.com")
        assert limiter.factor == 0.5  # three replies in a burst: halved once
        assert limiter.rate == 10.0
        assert report.deferred == 3  # type: ignore[attr-defined]
        # After the slow-down the domain really went at about half its pace.
        after = [t for t in arrivals[9:]]
        gaps = [b - a for a, b in itertools.pairwise(after)]
        assert sum(gaps) / len(gaps) >= 1 / 20 * 1.6
        # The retries come due later; the next run (here a restart) finishes the edition.
        clock.advance(minutes=10)
        _, again = await run_engine(sqlite_db, server.port, edition, people, clock,
                                    domain_rates={"163.com": 20.0})
    finally:
        server.stop()
    assert again.sent == 3  # type: ignore[attr-defined]
    got = collections.Counter(r.rcpt_tos[0] for r in server.received)
    assert set(got) == {p.address for p in people}
    assert set(got.values()) == {1}
    assert Outbox(sqlite_db, clock).unfinished(edition) == 0


async def test_an_hourly_cap_spreads_a_send_over_two_hours_and_resumes_after_a_restart(
        db: Engine) -> None:
    server = SMTPServer().start()
    clock = ManualClock(T0)
    caps = {"163.com": DomainCap(per_hour=6)}
    people = recipients(15, ("163.com", "163.com", "example.org"))  # 10 at 163.com
    edition = make_edition(db)
    box = Outbox(db, clock, ["163.com"])
    box.enqueue(edition, people)
    try:
        _, first = await run_engine(db, server.port, edition, people, clock, domain_caps=caps)
        assert first.sent == 11  # type: ignore[attr-defined]  # 6 to 163.com, 5 elsewhere
        assert first.held_until == {"163.com": T0 + timedelta(hours=1)}  # type: ignore[attr-defined]
        assert states(db, edition)["163.com"] == {"sent": 6, "deferred": 4}
        with db.connect() as conn:  # held back, not attempted
            attempts = conn.execute(select(outbox.c.attempts).where(
                outbox.c.edition_id == edition, outbox.c.state == "deferred")).scalars().all()
        assert set(attempts) == {0}
        # editions report: when 163.com will be finished.
        report = edition_report(db, edition, settings(domain_caps=caps), clock)
        assert report.finish["163.com"].at == T0 + timedelta(hours=1)
        assert report.finish["163.com"].left == 4
        assert "finished by 2026-11-23 13:00 UTC" in format_report(report)
        # A restart within the hour sends nothing more to 163.com.
        clock.advance(minutes=30)
        _, idle = await run_engine(db, server.port, edition, people, clock, domain_caps=caps)
        assert idle.sent == 0  # type: ignore[attr-defined]
        clock.now = T0 + timedelta(hours=1)
        _, second = await run_engine(db, server.port, edition, people, clock, domain_caps=caps)
    finally:
        server.stop()
    assert second.sent == 4  # type: ignore[attr-defined]
    assert box.unfinished(edition) == 0
    with db.connect() as conn:
        counted = dict(conn.execute(select(domain_sends.c.starts_at, domain_sends.c.sent)
                                    .where(domain_sends.c.span == "h")).all())
    assert sorted(counted.values()) == [4, 6]
    got = collections.Counter(r.rcpt_tos[0] for r in server.received)
    assert set(got) == {p.address for p in people}
    assert set(got.values()) == {1}


async def test_a_cap_holds_for_two_senders_at_once(db: Engine) -> None:
    server = SMTPServer().start()
    clock = ManualClock(T0)
    caps = {"163.com": DomainCap(per_hour=50, per_day=8)}
    a, b = make_edition(db), make_edition(db)
    people_a = recipients(10, ("163.com",))
    people_b = recipients(10, ("163.com",), start=100)
    box = Outbox(db, clock, ["163.com"])
    box.enqueue(a, people_a)
    box.enqueue(b, people_b)
    try:
        (_, ra), (_, rb) = await asyncio.gather(
            run_engine(db, server.port, a, people_a, clock, domain_caps=caps),
            run_engine(db, server.port, b, people_b, clock, domain_caps=caps))
    finally:
        server.stop()
    assert ra.sent + rb.sent == 8  # type: ignore[attr-defined]
    assert len(server.received) == 8
    tomorrow = T0.replace(hour=0) + timedelta(days=1)
    assert ra.held_until == {"163.com": tomorrow}  # type: ignore[attr-defined]
    assert DomainBudget(db).used(clock()) == {"163.com": (8, 8)}


async def test_a_blocklisted_reply_stops_that_provider_and_nothing_else(db: Engine) -> None:
    lock = threading.Lock()
    tries: collections.Counter[str] = collections.Counter()
    blocking = {"on": True}

    def fault(step: str, envelope: Envelope, _n: int) -> str | None:
        to = rcpt_of(envelope)
        if step != "data" or not to.endswith("@163.com") or not blocking["on"]:
            return None
        with lock:
            tries["163"] += 1
        return f"450 DT:RBL 163 mx1, 192.0.2.1 is in the blocklist (for {to})"

    server = SMTPServer(RecordingHandler(fault=fault)).start()
    clock = ManualClock(T0)
    told: list[tuple[str, datetime, str]] = []

    async def on_blocked(family: str, until: datetime, reason: str) -> None:
        told.append((family, until, reason))

    people = recipients(30, ("163.com", "qq.com", "example.org"))
    first, second = make_edition(db), make_edition(db)
    box = Outbox(db, clock, ["163.com"])
    box.enqueue(first, people)
    try:
        _, report = await run_engine(db, server.port, first, people, clock,
                                     on_blocked=on_blocked)
        assert report.sent == 20  # type: ignore[attr-defined]  # qq.com and example.org
        assert tries["163"] <= 2  # only the messages in flight on the two connections
        by = states(db, first)
        assert by["163.com"] == {"deferred": 10}  # waiting, none failed
        assert by["qq.com"] == {"sent": 10}
        assert by["other"] == {"sent": 10}  # example.org is kept as "other"
        until = T0 + timedelta(hours=24)
        assert [(f, u) for f, u, _ in told] == [("netease", until)]  # told once
        assert "blocklisted" in told[0][2]
        assert "DT:RBL" in told[0][2]
        with db.connect() as conn:
            blocks = conn.execute(select(provider_blocks.c.family, provider_blocks.c.reason)).all()
        assert [b.family for b in blocks] == ["netease"]
        assert "@" not in blocks[0].reason
        assert "user" not in blocks[0].reason
        assert not any("user" in r for _, _, r in told)
        report_text = format_report(edition_report(db, first, settings(), clock))
        assert "NetEase (163, 126, yeah.net) blocklists us" in report_text
        # Another sender, another edition: it reads the block and sends 163.com nothing.
        box.enqueue(second, people)
        before = tries["163"]
        _, other = await run_engine(db, server.port, second, people, clock,
                                    on_blocked=on_blocked)
        assert tries["163"] == before
        assert other.sent == 20  # type: ignore[attr-defined]
        assert len(told) == 1  # the block was known: nobody is told twice
        # Delisted: the operator lifts the block, the waiting rows go.
        blocking["on"] = False
        assert DomainBudget(db).lift("netease")
        assert box.release_held(["163.com"]) == 20
        _, after = await run_engine(db, server.port, first, people, clock)
    finally:
        server.stop()
    assert after.sent == 10  # type: ignore[attr-defined]
    assert box.unfinished(first) == 0
