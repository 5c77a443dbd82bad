"""Rate limits: the pure pacer, and arrivals counted at a real server (a short behaviour test)."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from mailer.delivery.engine import DeliveryEngine
from mailer.delivery.outbox import Outbox
from mailer.delivery.peers import SenderRegistry
from mailer.delivery.ratelimit import DomainLimits, Pacer, Throttle, match_domain
from mailer.delivery.smtp import SMTPTransport, is_loopback
from mailer.schema import senders
from tests.delivery.helpers import (
    FakeClock,
    directory,
    make_edition,
    message,
    recipients,
    relay,
    settings,
)
from tests.support.smtp import RecordingHandler, SMTPServer


@given(st.floats(0.5, 5000), st.lists(st.floats(0, 0.01), min_size=2, max_size=200))
def test_pacer_spaces_slots_by_the_interval(rate: float, gaps: list[float]) -> None:
    pacer = Pacer(rate)
    now = 100.0
    slots = []
    for gap in gaps:
        now += gap
        slots.append(now + pacer.reserve(now))
    for a, b in itertools.pairwise(slots):
        assert b - a >= 1 / rate - 1e-9
    # Never slower than needed: each slot is at the request time or right after the previous.
    assert slots[0] == 100.0 + gaps[0]


def test_match_domain_covers_subdomains() -> None:
    rates = {"qq.com": 1.0, "163.com": 2.0}
    assert match_domain("QQ.com", rates) == "qq.com"
    assert match_domain("vip.qq.com", rates) == "qq.com"
    assert match_domain("notqq.com", rates) is None
    assert match_domain("126.com", rates) is None


def arrival_server() -> tuple[SMTPServer, list[tuple[float, str]]]:
    arrivals: list[tuple[float, str]] = []

    def fault(step: str, envelope: object, n: int) -> str | None:
        if step == "data":
            arrivals.append((time.monotonic(), getattr(envelope, "rcpt_tos", [""])[0]))
        return None

    return SMTPServer(RecordingHandler(fault=fault)).start(), arrivals


def measured_rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0])


async def send_all(db: Engine, port: int, n: int, domains: tuple[str, ...], **kw: object) -> None:
    box = Outbox(db, FakeClock())
    edition = make_edition(db)
    people = recipients(n, domains)
    box.enqueue(edition, people)
    transport = SMTPTransport([relay(port, connections=4, **kw.pop("relay_kw", {}))])  # type: ignore[arg-type]
    report = await DeliveryEngine(box, transport, recipients=directory(people),
                                  message_for=message, envelope_from="b@example.org",
                                  settings=settings(**kw), clock=FakeClock()).run(
                                      edition)
    await transport.aclose()
    assert report.sent == n


async def test_relay_rate_holds_within_ten_percent(sqlite_db: Engine) -> None:
    server, arrivals = arrival_server()
    try:
        await send_all(sqlite_db, server.port, 100, ("example.org",), relay_kw={"rate": 40.0})
    finally:
        server.stop()
    times = sorted(t for t, _ in arrivals)
    assert abs(measured_rate(times) - 40.0) <= 4.0
    # No burst either: no half-second holds more than its share (+1 for the window edge).
    assert max(sum(1 for t in times if s <= t < s + 0.5) for s in times) <= 40 * 0.5 * 1.1 + 1


async def test_domain_rate_limits_only_that_domain(sqlite_db: Engine) -> None:
    server, arrivals = arrival_server()
    try:
        await send_all(sqlite_db, server.port, 120, ("qq.com", "example.org"),
                       domain_rates={"qq.com": 25.0})
    finally:
        server.stop()
    qq = sorted(t for t, rcpt in arrivals if rcpt.endswith("@qq.com"))
    other = sorted(t for t, rcpt in arrivals if not rcpt.endswith("@qq.com"))
    assert len(qq) == 60
    assert abs(measured_rate(qq) - 25.0) <= 2.5
    # The unlimited domain is not held back behind qq.com's pace.
    assert other[-1] - other[0] < (qq[-1] - qq[0]) / 2


# ------------------------------------------------------------------ shared among live senders


@given(st.floats(0.5, 5000), st.integers(1, 16), st.lists(st.floats(0, 0.01), min_size=2,
                                                          max_size=100))
def test_a_share_paces_at_its_part_of_the_rate(rate: float, share: int,
                                               gaps: list[float]) -> None:
    limiter = Throttle(rate)
    limiter.set_share(share)
    assert limiter.rate == rate / share
    assert limiter.configured == rate
    assert limiter._pacer is not None
    now, slots = 100.0, []
    for gap in gaps:
        now += gap
        slots.append(now + limiter._pacer.reserve(now))
    for a, b in itertools.pairwise(slots):
        assert b - a >= share / rate - 1e-9
    limiter.set_share(1)  # the others stopped: back to the whole rate
    assert limiter.rate == rate


def test_unlimited_stays_unlimited_and_loopback_relays_keep_their_rate() -> None:
    unlimited = Throttle(0)
    unlimited.set_share(4)
    assert unlimited._pacer is None
    transport = SMTPTransport([relay(25, host="relay.example.net", rate=30.0),
                               relay(25, host="127.0.0.1", rate=30.0),
                               relay(25, host="localhost", rate=30.0)])
    transport.set_share(3)
    assert [p._limiter.rate for p in transport.pools] == [10.0, 30.0, 30.0]
    assert is_loopback("::1")
    assert not is_loopback("smtp.qq.com")
    limits = DomainLimits({"qq.com": 20.0, "163.com": 8.0})
    limits.set_share(2)
    assert (limits.limiter("qq.com").rate, limits.limiter("163.com").rate) == (10.0, 4.0)


async def test_a_second_live_sender_halves_a_domain_rate(sqlite_db: Engine) -> None:
    # Another worker is sending (its row in ``senders`` is fresh): qq.com's limit is the
    # deployment's, so this process paces at half of it, and leaves its row when done.
    peers = SenderRegistry(sqlite_db, lambda: datetime.now(UTC))
    peers.beat("other-host:4242:cafe", timedelta(minutes=5))
    server, arrivals = arrival_server()
    box = Outbox(sqlite_db, FakeClock())
    edition = make_edition(sqlite_db)
    people = recipients(40, ("qq.com",))
    box.enqueue(edition, people)
    transport = SMTPTransport([relay(server.port, connections=4)])
    engine = DeliveryEngine(box, transport, recipients=directory(people), message_for=message,
                            envelope_from="b@example.org",
                            settings=settings(domain_rates={"qq.com": 40.0}), clock=FakeClock(),
                            peers=peers)
    try:
        report = await engine.run(edition)
    finally:
        await transport.aclose()
        server.stop()
    assert report.sent == 40
    assert engine.share == 2
    times = sorted(t for t, _ in arrivals)
    assert abs(measured_rate(times) - 20.0) <= 2.0
    with sqlite_db.connect() as conn:
        assert [r.owner for r in conn.execute(select(senders.c.owner))] == ["other-host:4242:cafe"]
