"""Confirmation mails: the durable queue against real databases, and over real HTTP and SMTP a
confirmation that survives a relay that defers it and a restart of ``serve``."""

from __future__ import annotations

import socket
import time
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import Engine

from subscribers.confirmations import BACKOFF, ConfirmationQueue
from tests.subscribers.conftest import Clock
from tests.subscribers.support import serve, write_config
from tests.support.smtp import RecordingHandler, SMTPServer


def test_a_request_is_claimed_once_and_retried_on_the_schedule(engine: Engine,
                                                               clock: Clock) -> None:
    queue = ConfirmationQueue(engine, clock)
    other = ConfirmationQueue(engine, clock)  # a second serve process
    queue.request(7)
    queue.request(7)  # asking twice is one request
    assert queue.pending() == 1
    assert queue.claim() == [(7, 0, None)]
    assert other.claim() == []  # leased
    for attempt, pause in enumerate(BACKOFF):
        assert queue.retry(7, attempt)
        due = queue.next_due()
        assert due is not None
        assert due == clock() + pause
        clock.advance(pause - timedelta(seconds=1))
        assert queue.claim() == []
        clock.advance(seconds=1)
        assert other.claim() == [(7, attempt + 1, None)]
    assert not queue.retry(7, len(BACKOFF))  # given up: dropped
    assert queue.pending() == 0


def test_a_lease_that_expires_comes_back_and_asking_again_starts_over(
        engine: Engine, clock: Clock) -> None:
    queue = ConfirmationQueue(engine, clock)
    queue.request(3)
    assert queue.claim(lease=timedelta(minutes=5)) == [(3, 0, None)]  # a serve that then died
    assert queue.next_due() == clock() + timedelta(minutes=5)  # not before: no busy waiting
    clock.advance(minutes=5, seconds=1)
    assert queue.claim() == [(3, 0, None)]
    queue.retry(3, 0)
    queue.request(3)  # the reader used the form again: at once, from the start
    assert queue.claim() == [(3, 0, None)]
    queue.done(3)
    assert queue.pending() == 0
    assert queue.next_due() is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def subscribe(base: str, address: str) -> None:
    with httpx.Client(base_url=base, timeout=30) as client:
        answer = client.post("/subscribe", data={"email": address, "language": "zh-Hant"})
        assert answer.status_code == 200


def wait_for(predicate: object, what: str, limit: float = 60.0) -> None:
    end = time.monotonic() + limit
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.1)


def test_a_confirmation_survives_a_relay_outage_and_a_restart(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path)
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace(
        'transport = "maildir"\nmaildir = "data/outbox"\n',
        f'transport = "smtp"\n[[delivery.relays]]\nhost = "127.0.0.1"\nport = {port}\n'
        'security = "none"\nconnections = 1\nrate = 0\n'), encoding="utf-8")
    with serve(config) as server:  # the relay is down: nothing listens on its port
        subscribe(server.base, "gao.ming@qq.com")
        log = server.log
        wait_for(lambda: "confirmation for subscriber" in log(), "a deferred attempt")
    assert "deferred" in server.log()

    relay = SMTPServer(RecordingHandler(), port=port)
    relay.start()
    try:
        with serve(config) as again:  # a new process finds the request in the database
            wait_for(lambda: len(relay.received) == 1, "the confirmation at the relay", 90)
            wait_for(lambda: "confirmation sent to subscriber" in again.log(), "its log line")
        [mail] = relay.received
        assert mail.rcpt_tos == ["gao.ming@qq.com"]
        assert "/confirm/" in mail.message().get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "gao.ming" not in again.log()
    finally:
        relay.stop()
