"""Rate limits: the pure pacer, and arrivals counted at a real server (a short behaviour test)."""

from __future__ import annotations

import itertools
import time

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine

from mailer.delivery.engine import DeliveryEngine
from mailer.delivery.outbox import Outbox
from mailer.delivery.ratelimit import Pacer, match_domain
from mailer.delivery.smtp import SMTPTransport
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
                                      edition, handle_signals=False)
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
