"""A welcome the relay defers is retried until it is delivered (issue 17), as an operator runs it.

A reader confirms by replying to the confirmation (``newsletter inbound``); the relay (aiosmtpd)
answers 451 to the welcome; the edition it belongs to is ``sent`` already, so only the outbox's
rule (``Outbox.editions_with_work``) brings a sender back to it: here the real daemon
(``newsletter run``) with a one-second backoff, and ``newsletter send``, including after the
process that was delivering the welcome was killed (``inbound``, and ``serve`` for the web's
confirm page). A reader who confirms while an edition is going out gets that edition, once.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select

from mailer.app import App
from mailer.clock import as_utc
from mailer.models import EditionState
from mailer.schema import outbox
from subscribers.lifecycle import SubscriberState
from tests.inbound.test_inbound_cli import (
    READERS,
    delivered_to,
    inbound,
    inbox,
    mail,
    setup,
    state,
    subscribe_on_the_web,
)
from tests.subscribers.support import NEWSLETTER, REPO, in_process, run
from tests.support.smtp import RecordingHandler, SMTPServer

STRANGER = "xiao.ming@qq.com"
LATE = "late@corp.example.net"
COLUMNS = ("sent", "deferred", "failed", "bounced", "content_rejected", "suppressed", "queued",
           "sending", "cancelled")


class WelcomeRelay(RecordingHandler):
    """The relay: edition mail (a VERP envelope, ``bounces+…``) gets 451 at RCPT while
    ``defer`` is above zero, and waits ``hang`` seconds at RCPT while that is set (a sender to
    kill mid-send); every other mail (the confirmation) goes through."""

    def __init__(self) -> None:
        super().__init__()
        self.defer = 0
        self.hang = 0.0
        self.attempts = 0  # RCPTs of edition mail after ``watch()``
        self.watching = False
        self.hold_next = False  # hold the next edition RCPT until ``holding`` is cleared
        self.holding = False

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if self.watching and str(envelope.mail_from).startswith("bounces+"):
            self.attempts += 1
            if self.hold_next:  # a send kept under way (one connection) while the test acts
                self.hold_next, self.holding = False, True
                while self.holding:  # noqa: ASYNC110 - cleared from the test's thread
                    await asyncio.sleep(0.05)
            if self.hang:  # the sender is killed meanwhile; its line goes with it
                await asyncio.sleep(self.hang)
                return "451 4.3.0 Temporary local problem, try again later"
            if self.defer > 0:
                self.defer -= 1
                return "451 4.3.0 Temporary local problem, try again later"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


@pytest.fixture
def relay() -> Iterator[SMTPServer]:
    server = SMTPServer(WelcomeRelay()).start()
    yield server
    server.stop()


def handler(relay: SMTPServer) -> WelcomeRelay:
    assert isinstance(relay.handler, WelcomeRelay)
    return relay.handler


def fast_retries(config: Path) -> None:
    """A one-second backoff base and retry job, so the test sees several attempts."""
    text = config.read_text(encoding="utf-8")
    text = text.replace('transport = "smtp"\n', 'transport = "smtp"\nbackoff_base = "1s"\n')
    config.write_text(text + '\n[schedule]\nretry_every = "1s"\n', encoding="utf-8")


def confirm_by_mail(config: Path, relay: SMTPServer) -> str:
    """The stranger subscribes by mail and confirms by replying; returns ``inbound``'s output."""
    inbox(config).add(mail(STRANGER, "digest+zh-hant@example.org", "订阅"))
    assert "subscribe 1" in inbound(config)
    [confirmation] = delivered_to(relay, STRANGER)
    handler(relay).watching = True  # from here on, only the welcome is edition mail
    inbox(config).add(mail(STRANGER, str(confirmation["Reply-To"]),
                           "Re: " + str(confirmation["Subject"]), "> please confirm"))
    out = inbound(config)
    assert "confirmed 1" in out
    assert state(config, STRANGER) is SubscriberState.ACTIVE
    return out


def outbox_editions(config: Path) -> set[int]:
    app = App.from_path(config)
    try:
        with app.engine.connect() as conn:
            return set(conn.execute(select(outbox.c.edition_id).distinct()).scalars())
    finally:
        app.engine.dispose()


def welcomes(relay: SMTPServer, reader: str = STRANGER, edition_id: int = 1) -> list[str]:
    """The Message-IDs of edition ``edition_id`` the relay took for ``reader``."""
    return [str(m["Message-ID"]) for m in delivered_to(relay, reader)
            if str(m["Message-ID"]).startswith(f"<e{edition_id}.")]


def welcome_row(config: Path, reader: str = STRANGER) -> tuple[str, int]:
    """The reader's outbox row of edition 1: its state and attempts."""
    app = App.from_path(config)
    try:
        record = app.subscribers.lookup(reader)
        assert record is not None
        with app.engine.connect() as conn:
            row = conn.execute(select(outbox.c.state, outbox.c.attempts).where(
                outbox.c.edition_id == 1, outbox.c.subscriber_id == record.id)).one()
        assert app.editions.info(1).state is EditionState.SENT  # never reopened
        return str(row.state), int(row.attempts)
    finally:
        app.engine.dispose()


def retry_wait(config: Path) -> timedelta:
    """How long the deferred welcome was told to wait (its next attempt after its last)."""
    app = App.from_path(config)
    try:
        with app.engine.connect() as conn:
            row = conn.execute(select(outbox.c.next_attempt_at, outbox.c.updated_at).where(
                outbox.c.edition_id == 1, outbox.c.state == "deferred")).one()
        due, last = as_utc(row.next_attempt_at), as_utc(row.updated_at)
        assert due is not None
        assert last is not None
        return due - last
    finally:
        app.engine.dispose()


def report(config: Path) -> dict[str, dict[str, int]]:
    """``editions report 1`` read back: per domain (and ``total``), the count per state."""
    result = run(config, "editions", "report", "1")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    head = lines.index(f"edition 1: {len(READERS) + 1} recipients")
    out = {}
    for line in lines[head + 2:]:
        if not line.strip():
            break
        name, *numbers = line.split()
        out[name] = dict(zip(COLUMNS, map(int, numbers), strict=True))
    return out


def test_a_deferred_welcome_is_retried_by_the_daemon_and_delivered_once(
        tmp_path: Path, relay: SMTPServer) -> None:
    config = setup(tmp_path, relay)
    fast_retries(config)
    # A newer edition that was cancelled: it never reached readers, so it is no welcome.
    assert in_process(config, "editions", "create", "--posts", "1", "--include-sent") == 0
    assert in_process(config, "editions", "cancel", "2") == 0
    # A reader imported after edition 1 went out: retrying the welcome must not mail them it.
    (tmp_path / "late.csv").write_text(f"email,language\n{LATE},en\n", encoding="utf-8")
    assert in_process(config, "subscribers", "import", str(tmp_path / "late.csv"),
                      "--confirmed") == 0
    handler(relay).defer = 2  # the welcome's first two attempts
    confirm_by_mail(config, relay)
    assert welcomes(relay) == []
    assert welcome_row(config) == ("deferred", 1)
    before = report(config)
    assert before["qq.com"]["deferred"] == 1
    assert before["qq.com"]["sent"] == 0
    assert before["total"]["sent"] == len(READERS)
    show = run(config, "editions", "show", "1")
    assert f"enqueued: {len(READERS) + 1}" in show.out, show.out

    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        daemon = subprocess.Popen([*NEWSLETTER, "--config", str(config), "run"], cwd=tmp_path,
                                  stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            deadline = time.monotonic() + 60
            while not welcomes(relay) and time.monotonic() < deadline:
                assert daemon.poll() is None, log_path.read_text()
                time.sleep(0.2)
            assert welcomes(relay), log_path.read_text()
            time.sleep(4)  # several more retry jobs: none may send it again
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=30)
    text = log_path.read_text(encoding="utf-8")
    assert code == 0, text
    assert "Traceback" not in text, text
    assert " ERROR " not in text, text
    assert "edition 1: sending what is left" in text, text  # the retry job's path

    assert len(welcomes(relay)) == 1
    assert handler(relay).attempts == 3  # deferred, deferred, delivered: nothing more
    assert delivered_to(relay, LATE) == []
    assert outbox_editions(config) == {1}  # nothing went into the cancelled edition
    # Nobody else got edition 1 again: the list was not enqueued a second time.
    assert len(relay.received) == len(READERS) + 2  # the edition, the confirmation, the welcome
    assert welcome_row(config) == ("sent", 3)
    after = report(config)
    assert after["qq.com"]["sent"] == 1
    assert after["total"] == {**dict.fromkeys(COLUMNS, 0), "sent": len(READERS) + 1}


def test_newsletter_send_delivers_a_welcome_a_killed_sender_left_behind(
        tmp_path: Path, relay: SMTPServer) -> None:
    """The crash: ``inbound`` is killed while the relay holds the welcome's RCPT, so its row is
    leased by a process that is gone; ``newsletter send`` reclaims it at once and delivers it,
    once, after one more deferral with the normal backoff."""
    config = setup(tmp_path, relay)
    fast_retries(config)
    inbox(config).add(mail(STRANGER, "digest+zh-hant@example.org", "订阅"))
    assert "subscribe 1" in inbound(config)
    [confirmation] = delivered_to(relay, STRANGER)
    relay_state = handler(relay)
    relay_state.watching, relay_state.hang = True, 30.0
    inbox(config).add(mail(STRANGER, str(confirmation["Reply-To"]),
                           "Re: " + str(confirmation["Subject"]), "> please confirm"))
    proc = subprocess.Popen([*NEWSLETTER, "--config", str(config), "inbound"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while relay_state.attempts == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert relay_state.attempts == 1
    proc.kill()
    proc.wait(timeout=10)
    assert welcome_row(config) == ("sending", 1)  # leased by the dead process
    relay_state.hang, relay_state.defer = 0.0, 1

    first = run(config, "send")
    assert first.code == 1, first.out + first.err  # deferred again, nothing delivered: exit 1
    assert re.search(r"resumed edition 1: 1 left", first.out), first.out
    assert welcome_row(config) == ("deferred", 2)
    wait = retry_wait(config)  # the normal backoff: 2 attempts, base 1 s → between 1 and 2 s
    assert timedelta(seconds=1) <= wait <= timedelta(seconds=2)
    time.sleep(wait.total_seconds() + 0.5)
    second = run(config, "send")
    assert second.code == 0, second.out + second.err
    assert "resumed edition 1: 1 left" in second.out, second.out
    assert welcome_row(config) == ("sent", 3)
    assert len(welcomes(relay)) == 1
    assert run(config, "send").out.startswith("nothing to send")
    assert report(config)["total"]["sent"] == len(READERS) + 1


KILLED_AFTER_CONFIRMING = """\
import os, signal, sys
from mailer.app import App
from mailer.pipeline.inbound import Inbound
app = App.from_path(sys.argv[1])
handled = Inbound(app).handle(open(sys.argv[2], "rb").read())  # committed; nothing sent yet
print(handled.kind, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the batch's answers and the welcome never go out
"""


def confirm_and_die(tmp_path: Path, config: Path, relay: SMTPServer) -> None:
    """The stranger subscribes by mail, then the process handling their reply is killed the
    moment the confirmation committed, before it could deliver the welcome."""
    inbox(config).add(mail(STRANGER, "digest+zh-hant@example.org", "订阅"))
    assert "subscribe 1" in inbound(config)
    [confirmation] = delivered_to(relay, STRANGER)
    reply = tmp_path / "reply.eml"
    reply.write_bytes(mail(STRANGER, str(confirmation["Reply-To"]),
                           "Re: " + str(confirmation["Subject"]), "> please confirm"))
    script = tmp_path / "killed.py"
    script.write_text(KILLED_AFTER_CONFIRMING, encoding="utf-8")
    killed = subprocess.run([sys.executable, str(script), str(config), str(reply)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert killed.stdout.strip() == "confirmed"
    assert state(config, STRANGER) is SubscriberState.ACTIVE


def test_a_process_killed_right_after_the_confirmation_leaves_the_welcome_queued(
        tmp_path: Path, relay: SMTPServer) -> None:
    """The confirmation and the welcome's outbox row commit in one transaction: a process
    killed the moment the confirmation committed (before it could deliver, or even queue, the
    welcome) leaves the welcome queued in the sent edition, and ``newsletter send`` delivers it,
    once. Before, the row was added only after the commit, and this reader got no welcome."""
    config = setup(tmp_path, relay)
    confirm_and_die(tmp_path, config, relay)
    assert welcome_row(config) == ("queued", 0)
    assert welcomes(relay) == []

    resumed = run(config, "send")
    assert resumed.code == 0, resumed.out + resumed.err
    assert len(welcomes(relay)) == 1
    assert welcome_row(config) == ("sent", 1)
    assert run(config, "send").out.startswith("nothing to send")


def test_editions_show_counts_a_welcome_whose_process_died_after_the_confirmation(
        tmp_path: Path, relay: SMTPServer) -> None:
    """The edition's enqueued total grows in the transaction that adds the welcome's row, so a
    crash right after the confirmation leaves it right. Before, only ``welcome`` (which the
    crash skipped) updated it, and ``editions show`` was one short until the next welcome."""
    config = setup(tmp_path, relay)
    enqueued = f"enqueued: {len(READERS)}\n"
    assert enqueued in run(config, "editions", "show", "1").out
    confirm_and_die(tmp_path, config, relay)
    assert welcome_row(config) == ("queued", 0)
    show = run(config, "editions", "show", "1")
    assert show.code == 0, show.err
    assert f"enqueued: {len(READERS) + 1}\n" in show.out, show.out
    assert run(config, "send").code == 0
    assert f"enqueued: {len(READERS) + 1}\n" in run(config, "editions", "show", "1").out


def test_a_reader_who_confirms_while_an_edition_is_sending_gets_that_edition_once(
        tmp_path: Path, relay: SMTPServer) -> None:
    """Edition 2 is going out (``run --once``, held at the relay's first RCPT) when the stranger
    confirms by mail: their welcome is edition 2, delivered by that send, once; edition 1 never
    reaches them. Before, the welcome was edition 1 (the last *sent*), and edition 2, whose list
    was enumerated before they confirmed, never came."""
    config = setup(tmp_path, relay)
    inbox(config).add(mail(STRANGER, "digest+zh-hant@example.org", "订阅"))
    assert "subscribe 1" in inbound(config)
    [confirmation] = delivered_to(relay, STRANGER)
    assert in_process(config, "editions", "create", "--posts", "1", "--include-sent") == 0
    assert in_process(config, "editions", "approve", "2") == 0
    relay_state = handler(relay)
    relay_state.watching, relay_state.hold_next = True, True
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        sender = subprocess.Popen([*NEWSLETTER, "--config", str(config), "run", "--once"],
                                  cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 60
        while not relay_state.holding:
            assert sender.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        show = run(config, "editions", "show", "2")
        assert "edition 2 (digest): sending" in show.out, show.out
        assert f"enqueued: {len(READERS)}\n" in show.out, show.out  # the list, without them
        inbox(config).add(mail(STRANGER, str(confirmation["Reply-To"]),
                               "Re: " + str(confirmation["Subject"]), "> please confirm"))
        assert "confirmed 1" in inbound(config)
        assert state(config, STRANGER) is SubscriberState.ACTIVE
        assert len(delivered_to(relay, STRANGER)) == 1  # the confirmation; the send has it
        assert outbox_editions_of(config, STRANGER) == {2: "queued"}
        show = run(config, "editions", "show", "2")
        assert f"enqueued: {len(READERS) + 1}\n" in show.out, show.out
    finally:
        relay_state.holding = False
        try:
            code = sender.wait(timeout=120)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
    assert code == 0, log_path.read_text()

    assert len(welcomes(relay, STRANGER, 2)) == 1
    assert welcomes(relay, STRANGER, 1) == []
    assert outbox_editions_of(config, STRANGER) == {2: "sent"}
    for reader in READERS.values():
        assert len(welcomes(relay, reader, 2)) == 1
    assert run(config, "send").out.startswith("nothing to send")
    assert len(welcomes(relay, STRANGER, 2)) == 1


def outbox_editions_of(config: Path, reader: str) -> dict[int, str]:
    """The reader's outbox rows: edition → state."""
    app = App.from_path(config)
    try:
        record = app.subscribers.lookup(reader)
        assert record is not None
        with app.engine.connect() as conn:
            return {int(e): str(st) for e, st in conn.execute(
                select(outbox.c.edition_id, outbox.c.state)
                .where(outbox.c.subscriber_id == record.id))}
    finally:
        app.engine.dispose()


def test_newsletter_serve_killed_between_the_confirmation_and_the_welcome_loses_nothing(
        tmp_path: Path, relay: SMTPServer) -> None:
    """The web's confirm page commits the welcome's row with the confirmation, like the mail
    path. The real ``newsletter serve`` is SIGKILLed while the relay holds the welcome's RCPT
    (committed, not delivered); ``newsletter send`` then delivers it, exactly once."""
    import httpx

    from tests.subscribers.support import serve

    config = setup(tmp_path, relay)
    reader = "web.reader@qq.com"
    relay_state = handler(relay)
    with serve(config) as server:
        confirm = subscribe_on_the_web(server, relay, reader)
        deadline = time.monotonic() + 30
        relay_state.watching, relay_state.hang = True, 30.0
        assert httpx.post(server.base + confirm, timeout=30).status_code == 200
        while relay_state.attempts == 0:  # the welcome is on the wire
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        server.process.kill()
        assert server.process.wait(timeout=10) == -signal.SIGKILL
    assert state(config, reader) is SubscriberState.ACTIVE
    assert welcome_row(config, reader) == ("sending", 1)  # leased by the dead server
    assert welcomes(relay, reader) == []
    relay_state.hang = 0.0

    resumed = run(config, "send")
    assert resumed.code == 0, resumed.out + resumed.err
    assert "resumed edition 1: 1 left" in resumed.out, resumed.out
    assert len(welcomes(relay, reader)) == 1
    assert welcome_row(config, reader) == ("sent", 2)
    assert run(config, "send").out.startswith("nothing to send")
    assert len(welcomes(relay, reader)) == 1
    assert len(delivered_to(relay, reader)) == 2  # the confirmation and the welcome, once each
    assert f"enqueued: {len(READERS) + 1}\n" in run(config, "editions", "show", "1").out
