"""Kill the sending process mid-send (SIGKILL, then SIGTERM) and check what the server got."""

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
from sqlalchemy import Engine

from mailer.delivery.outbox import Outbox
from mailer.models import OutboxState
from tests.delivery.helpers import FakeClock, make_edition, recipients
from tests.support.smtp import RecordingHandler, SMTPServer

REPO = Path(__file__).resolve().parents[2]
N = 400
CONNECTIONS = 4

pytestmark = pytest.mark.slow


def start(url: str, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.delivery.sender_proc", url, str(port), str(N),
         str(CONNECTIONS)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def wait_for(server: SMTPServer, count: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while len(server.received) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sender made no progress"
        time.sleep(0.01)


@pytest.fixture
def slow_server() -> Iterator[SMTPServer]:
    # A little latency per message keeps several messages in flight when the signal lands.
    server = SMTPServer(RecordingHandler(delay=0.01)).start()
    yield server
    server.stop()


def received_counts(server: SMTPServer) -> collections.Counter[str]:
    return collections.Counter(r.rcpt_tos[0] for r in server.received)


def test_sigkill_mid_send_then_restart_delivers_everyone_within_the_bound(
        db: Engine, db_url: str, slow_server: SMTPServer) -> None:
    """On SQLite and on PostgreSQL (where the claim is FOR UPDATE SKIP LOCKED)."""
    assert make_edition(db) == 1
    proc = start(db_url, slow_server.port)
    wait_for(slow_server, N // 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    before = len(slow_server.received)
    assert before < N  # it really died mid-send
    again = start(db_url, slow_server.port)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()
    counts = received_counts(slow_server)
    assert set(counts) == {p.address for p in recipients(N)}  # everyone got the edition
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= CONNECTIONS  # at most the messages in flight at the kill
    assert Outbox(db, FakeClock()).counts(1)[OutboxState.SENT] == N


def test_sigterm_finishes_in_flight_and_leaves_rows_consistent(
        sqlite_db: Engine, sqlite_url: str, slow_server: SMTPServer) -> None:
    assert make_edition(sqlite_db) == 1
    proc = start(sqlite_url, slow_server.port)
    wait_for(slow_server, N // 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.rstrip().endswith(b"SIGTERM")  # stopped by the signal, not by finishing
    counts = Outbox(sqlite_db, FakeClock()).counts(1)
    assert counts[OutboxState.SENDING] == 0  # nothing left leased
    # Every message the server accepted is recorded as sent, and nothing else is.
    assert counts[OutboxState.SENT] == len(slow_server.received) < N
    assert counts[OutboxState.QUEUED] == N - counts[OutboxState.SENT]
    again = start(sqlite_url, slow_server.port)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()
    counts_at_server = received_counts(slow_server)
    assert len(counts_at_server) == N
    assert max(counts_at_server.values()) == 1  # a clean stop leaves no duplicate at all
