"""SIGKILL the commands operators run (``send``, ``run --once``) mid-send, then run them again.

Real processes, a real aiosmtpd server, SQLite files and PostgreSQL: the second run must finish
the interrupted edition by itself (no daemon, no waiting out a lease), everyone gets the edition,
and only the messages in flight at the kill may arrive twice.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from mailer.schema import editions
from tests.support.cli import ENV, newsletter, newsletter_cmd, write_config
from tests.support.smtp import RecordingHandler, SMTPServer

N = 2000
CONNECTIONS = 4
KILL_AFTER = 600

pytestmark = pytest.mark.slow


def addresses(n: int = N) -> list[str]:
    return [f"reader{i:05d}@d{i % 7}.example" for i in range(n)]


@pytest.fixture
def slow_server() -> Iterator[SMTPServer]:
    # A little latency per message keeps every connection busy when the signal lands.
    server = SMTPServer(RecordingHandler(delay=0.005)).start()
    yield server
    server.stop()


@pytest.fixture
def config(tmp_path: Path, db_url: str, slow_server: SMTPServer) -> Path:
    path = write_config(tmp_path, db_url, slow_server.port, connections=CONNECTIONS)
    csv = tmp_path / "list.csv"
    csv.write_text("email,language\n" + "".join(f"{a},en\n" for a in addresses()),
                   encoding="utf-8")
    for step in (["keys", "init"], ["subscribers", "import", str(csv), "--confirmed"]):
        done = newsletter(path, *step)
        assert done.returncode == 0, done.stderr
    return path


def kill_mid_send(config: Path, server: SMTPServer, *args: str) -> None:
    proc = subprocess.Popen(newsletter_cmd(config, *args), env=ENV, cwd=config.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(server.received) < KILL_AFTER:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sender made no progress"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert len(server.received) < N  # it really died mid-send


def edition_states(db_url: str) -> list[str]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [str(s) for s in conn.execute(select(editions.c.state)).scalars()]
    finally:
        engine.dispose()


EDITORS = "editors@example.org"  # the shipped newsletter.toml's


def assert_everyone_once(server: SMTPServer) -> None:
    counts = collections.Counter(r.rcpt_tos[0] for r in server.received)
    reports = counts.pop(EDITORS, 0)
    assert set(counts) == set(addresses())  # every recipient got the edition
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= CONNECTIONS  # only the messages in flight at the kill
    assert reports == 1  # the run that finished it told the editors, once


@pytest.mark.parametrize("command", [("send",), ("run", "--once")], ids=["send", "run-once"])
def test_a_killed_command_is_finished_by_running_it_again(
        config: Path, db_url: str, slow_server: SMTPServer, command: tuple[str, ...]) -> None:
    if command == ("send",):
        polled = newsletter(config, "poll")
        assert polled.returncode == 0, polled.stderr
    kill_mid_send(config, slow_server, *command)
    assert edition_states(db_url) == ["sending"]

    started = time.monotonic()
    again = newsletter(config, *command)
    assert again.returncode == 0, again.stderr
    assert "resumed edition 1: " in again.stdout
    assert edition_states(db_url) == ["sent"]
    assert_everyone_once(slow_server)
    # The dead sender's leases (5 minutes) were not waited out.
    assert time.monotonic() - started < 120

    third = newsletter(config, *command)
    assert third.returncode == 0, third.stderr
    assert "nothing to send" in third.stdout
    assert_everyone_once(slow_server)


def test_send_resumes_an_edition_the_daemon_paused_on_its_way_out(
        config: Path, db_url: str, slow_server: SMTPServer) -> None:
    from mailer.pipeline.policy import DAEMON_PAUSE_REASON

    assert newsletter(config, "poll").returncode == 0
    kill_mid_send(config, slow_server, "send")
    engine = create_engine(db_url)
    with engine.begin() as conn:  # what Daemon.request_stop leaves behind
        conn.execute(editions.update().values(state="paused", state_reason=DAEMON_PAUSE_REASON))
    engine.dispose()
    again = newsletter(config, "send")
    assert again.returncode == 0, again.stderr
    assert "resumed edition 1: " in again.stdout
    assert edition_states(db_url) == ["sent"]
    assert_everyone_once(slow_server)


def test_process_is_gone_only_for_a_dead_process_on_this_host() -> None:
    import socket

    from mailer.lock import process_is_gone

    host = socket.gethostname()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for owner in (f"{host}:{child.pid}", f"{host[:40]}:{child.pid}:ab12cd34",
                      f"worker:{host[:30]}:{child.pid}:ab12cd34"):
            assert not process_is_gone(owner)
        child.kill()
        time.sleep(0.2)
        assert process_is_gone(f"{host}:{child.pid}")  # killed, not yet reaped
        child.wait()
        assert process_is_gone(f"worker:{host[:30]}:{child.pid}:ab12cd34")
        assert process_is_gone(f"{host[:40]}:{child.pid}:ab12cd34")
    finally:
        child.kill()
        child.wait()
    assert not process_is_gone(f"other-host.example:{child.pid}")  # another host: its lease
    assert not process_is_gone(f"{host}:{os.getpid()}")  # ourselves
    assert not process_is_gone("not an owner")
