"""Webhooks: signed JSON POSTs from a durable queue, retried with backoff, given up after a day.

Real receivers on loopback (``tests.observe.receiver``), a real database, and the real
``newsletter run --once`` for the end-to-end case.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.app import App
from mailer.errors import ConfigError
from mailer.webhooks import (
    GIVE_UP_AFTER,
    SIGNATURE_HEADER,
    WebhookSender,
    event_body,
    retry_at,
    sign,
    signature_header,
    verify,
)
from tests.observe.receiver import Posted, Receiver, free_port
from tests.scheduler.helpers import write_config
from tests.support.cli import ENV, newsletter_cmd
from tests.support.clock import DEFAULT_START, ManualClock

SECRET = "whsec-test-5d1f"
ENVIRON = {"HOOK_SECRET": SECRET}


def hooks(url: str, events: tuple[str, ...]) -> str:
    names = ", ".join(f'"{e}"' for e in events)
    return f'\n[[webhooks]]\nurl = "{url}"\nevents = [{names}]\nsecret_env = "HOOK_SECRET"\n'


def verified(p: Posted, now: float) -> dict[str, object]:
    """What a receiver does: check the signature, then read the JSON."""
    assert verify(SECRET, p.headers[SIGNATURE_HEADER.lower()], p.body, now), p.headers
    doc = json.loads(p.body)
    assert isinstance(doc, dict)
    return doc


# ------------------------------------------------------------------------------ pure helpers


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=2**40))
def test_a_signature_verifies_and_any_change_breaks_it(body: bytes, stamp: int) -> None:
    header = signature_header(SECRET, stamp, body)
    assert verify(SECRET, header, body, now=stamp)
    assert not verify(SECRET, header, body + b"x", now=stamp)
    assert not verify("other-secret", header, body, now=stamp)
    assert not verify(SECRET, header, body, now=stamp + 301)  # a stale replay
    assert not verify(SECRET, f"t={stamp + 1},v1={sign(SECRET, stamp, body)}", body, now=stamp)


def test_event_body_is_sorted_json_and_refuses_objects() -> None:
    body = event_body("abc", "edition.sent", DEFAULT_START, {"edition": 7, "counts": {"sent": 3}})
    assert json.loads(body) == {"id": "abc", "event": "edition.sent",
                                "time": "2026-11-23T12:00:00+00:00",
                                "data": {"edition": 7, "counts": {"sent": 3}}}
    with pytest.raises(TypeError):
        event_body("abc", "edition.sent", DEFAULT_START, {"who": object()})
    with pytest.raises(ValueError, match="unknown webhook event"):
        event_body("abc", "edition.exploded", DEFAULT_START, {})


def test_backoff_grows_and_stops_after_a_day() -> None:
    created = DEFAULT_START
    first = retry_at(created, 1, created)
    second = retry_at(created, 2, created)
    assert first is not None
    assert second is not None
    assert first - created < second - created
    assert retry_at(created, 9, created + GIVE_UP_AFTER - timedelta(minutes=1)) is None


def test_config_names_the_key_of_a_bad_webhook(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"sqlite:///{tmp_path / 'n.db'}",
                        extra=hooks("https://ops.example.org/h", ("edition.exploded",)))
    with pytest.raises(ConfigError, match=r"webhooks\[0\]\.events\[0\].*unknown event"):
        App.from_path(path, environ=ENVIRON)
    path = write_config(tmp_path, f"sqlite:///{tmp_path / 'n.db'}",
                        extra=hooks("https://ops.example.org/h", ("edition.sent",)))
    with pytest.raises(ConfigError, match=r"webhooks\[0\]\.secret_env.*HOOK_SECRET is not set"):
        App.from_path(path, environ={})


# ------------------------------------------------------------------------------ the queue


async def test_a_receiver_down_at_first_gets_each_event_later_exactly_once(
        tmp_path: Path, db_url: str) -> None:
    port = free_port()
    clock = ManualClock()
    config = write_config(tmp_path, db_url, extra=hooks(
        f"http://127.0.0.1:{port}/hook", ("edition.sent", "feed.failing", "subscriber.counts")))
    app = App.from_path(config, environ=ENVIRON, clock=clock)
    app.emit("edition.sent", {"edition": 7, "counts": {"sent": 1200}})
    app.emit("feed.failing", {"feed": "blog", "error": "HTTP 503"})
    app.emit("subscriber.counts", {"counts": {"active": 30000}, "total": 30000})
    app.emit("mirror.down", {"mirror": "https://m.example"})  # not subscribed: never queued
    assert app.webhooks.counts() == {"pending": 3, "given_up": 0}

    async with httpx.AsyncClient(timeout=5) as client:
        sender = WebhookSender(app.webhooks, client, clock)
        assert await sender.deliver_due() == 0  # nobody listens yet
        assert await sender.deliver_due() == 0  # and nothing is due again so soon
        receiver = Receiver(port=port).start()
        try:
            assert await sender.deliver_due() == 0  # still within the backoff pause
            clock.advance(seconds=6)
            assert await sender.deliver_due() == 3
            delivered_at = clock.now.timestamp()
            clock.advance(hours=2)
            assert await sender.deliver_due() == 0
        finally:
            receiver.stop()
    docs = [verified(p, delivered_at) for p in receiver.posted]
    assert sorted(str(d["event"]) for d in docs) == ["edition.sent", "feed.failing",
                                                     "subscriber.counts"]
    assert len({d["id"] for d in docs}) == 3  # each once
    assert app.webhooks.counts() == {"pending": 0, "given_up": 0}
    app.engine.dispose()


async def test_an_event_is_given_up_after_a_day_and_reported(
        tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    port = free_port()
    config = write_config(tmp_path, sqlite_url, extra=hooks(
        f"http://127.0.0.1:{port}/hook", ("edition.missed",)))
    app = App.from_path(config, environ=ENVIRON, clock=clock)
    app.emit("edition.missed", {"edition": 3})
    outcomes = []
    async with httpx.AsyncClient(timeout=5) as client:
        sender = WebhookSender(app.webhooks, client, clock,
                               on_result=lambda event, result: outcomes.append(result))
        with caplog.at_level(logging.INFO, logger="newsletter.webhooks"):
            for _ in range(60):
                await sender.deliver_due()
                clock.advance(hours=1)
    assert outcomes[-1] == "given_up"
    assert outcomes.count("given_up") == 1
    assert set(outcomes[:-1]) == {"retry"}
    assert app.webhooks.counts() == {"pending": 0, "given_up": 1}
    (host, event, _at, attempts, error) = app.webhooks.given_up()[0]
    assert (host, event) == (f"http://127.0.0.1:{port}", "edition.missed")
    assert attempts == len(outcomes)
    assert error == "ConnectError"
    assert any(r.levelno == logging.ERROR and "given up" in r.getMessage()
               for r in caplog.records)
    app.engine.dispose()


# ------------------------------------------------------------------------------ end to end


def test_run_once_posts_signed_events_that_verify(tmp_path: Path, sqlite_url: str) -> None:
    """A feed that fails is a feed.failing event, POSTed by the real command before it exits."""
    receiver = Receiver().start()
    try:
        dead_feed = f"http://127.0.0.1:{free_port()}/feed.xml"
        config = write_config(tmp_path, sqlite_url, feeds=(dead_feed,), extra=hooks(
            receiver.url(), ("feed.failing", "feed.recovered", "edition.sent")))
        done = subprocess.run(newsletter_cmd(config, "run", "--once"), capture_output=True,
                              text=True, env={**ENV, **ENVIRON}, timeout=120, check=False,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "webhook feed.failing delivered" in done.stderr
    finally:
        receiver.stop()
    assert len(receiver.posted) == 1
    p = receiver.posted[0]
    assert p.path == "/hook"
    assert p.headers["content-type"] == "application/json"
    doc = verified(p, time.time())
    assert doc["event"] == "feed.failing"
    data = doc["data"]
    assert isinstance(data, dict)
    assert data["feed"] == "127.0.0.1"
    assert data["url"] == dead_feed
    assert "@" not in p.body.decode()


# ------------------------------------------------------------------------------ emission points


async def test_edition_events_come_from_the_editors_reports_once(tmp_path: Path,
                                                                 sqlite_url: str) -> None:
    """sent / content_rejected / held / missed are the Notifier's moments; three processes
    that each see the edition finish queue one edition.sent between them."""
    from mailer.editions.notify import Notifier
    from mailer.models import EditionState as S
    from tests.editions.helpers import add_posts

    events = ("edition.sent", "edition.content_rejected", "edition.held", "edition.missed")
    config = write_config(tmp_path, sqlite_url, editors=(),
                          extra=hooks("https://ops.example.org/hook", events))
    apps = [App.from_path(config, environ=ENVIRON) for _ in range(3)]
    add_posts(apps[0].engine, 2)
    eid = apps[0].editions.create()
    assert eid is not None
    apps[0].editions.set_state(eid, S.SENDING)
    apps[0].editions.set_state(eid, S.SENT)
    for app in apps:
        base = Notifier.for_app(app)
        notifier = Notifier(app.config, None, app.clock, counts=lambda _: {
            "sent": 90, "content_rejected": 10}, claim_sent=base.claim_sent, events=app.emit)
        await notifier.sent(app.editions.info(eid))
    await Notifier.for_app(apps[0]).held(apps[0].editions.info(eid))
    await Notifier.for_app(apps[0]).missed(apps[0].editions.info(eid))
    queued = apps[0].webhooks.claim(limit=100)
    docs = [json.loads(d.body) for d in queued]
    assert sorted(d["event"] for d in docs) == sorted(events)
    sent = next(d for d in docs if d["event"] == "edition.sent")
    assert sent["data"] == {"edition": eid, "kind": "digest", "total": 100,
                            "counts": {"sent": 90, "content_rejected": 10}}
    rejected = next(d for d in docs if d["event"] == "edition.content_rejected")
    assert rejected["data"]["rate"] == 0.1
    assert rejected["data"]["threshold"] == 0.05
    for app in apps:
        app.engine.dispose()
