"""The daemon as real processes: one per database, standby takeover, graceful SIGTERM mid-send."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mailer.app import App
from mailer.models import EditionState as S
from mailer.pipeline.policy import DAEMON_PAUSE_REASON
from mailer.schema import outbox
from tests.editions.helpers import add_posts
from tests.scheduler.helpers import make_app, write_config
from tests.support.smtp import RecordingHandler, SMTPServer

pytestmark = pytest.mark.slow

NEWSLETTER = str(Path(sys.executable).parent / "newsletter")


class Proc:
    """``newsletter run`` in a subprocess, its log in a file we can wait on."""

    def __init__(self, config: Path, log: Path, *args: str) -> None:
        self.log = log
        self._fh = log.open("wb")
        self.popen = subprocess.Popen([NEWSLETTER, "--config", str(config), "run", *args],
                                      stdout=self._fh, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, needle: str, limit: float = 60) -> None:
        end = time.monotonic() + limit
        while needle not in self.text():
            if self.popen.poll() is not None and needle not in self.text():
                raise AssertionError(f"exited {self.popen.returncode} before {needle!r}:\n"
                                     f"{self.text()}")
            if time.monotonic() > end:
                raise AssertionError(f"no {needle!r} in the log:\n{self.text()}")
            time.sleep(0.05)

    def stop(self, limit: float = 60) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(limit)
        finally:
            self._fh.close()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._fh.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def test_one_daemon_per_database_and_standby_takes_over(
        tmp_path: Path, db_url: str, procs: list[Proc]) -> None:
    config = write_config(tmp_path, db_url, digest="0 8 1 1 *")
    first = Proc(config, tmp_path / "first.log")
    procs.append(first)
    first.wait_for("holding the database lock")
    first.wait_for("next poll:")

    second = subprocess.run([NEWSLETTER, "--config", str(config), "run"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert second.returncode == 2
    assert "another daemon" in second.stderr
    assert f":{first.popen.pid}" in second.stderr  # it names the holder (host:pid)

    once = subprocess.run([NEWSLETTER, "--config", str(config), "run", "--once"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert once.returncode == 2
    assert "is running on this database" in once.stderr

    standby = Proc(config, tmp_path / "standby.log", "--standby")
    procs.append(standby)
    standby.wait_for("standby: another daemon")
    assert "took over" not in standby.text()

    assert first.stop() == 0
    assert "the database lock is released" in first.text()
    standby.wait_for("took over the database lock")
    standby.wait_for("next poll:")
    assert standby.stop() == 0


@pytest.fixture
def slow_smtp() -> Iterator[SMTPServer]:
    server = SMTPServer(RecordingHandler(delay=0.15)).start()
    yield server
    server.stop()


def _states(app: App, edition_id: int) -> Counter[str]:
    with app.engine.connect() as conn:
        rows = conn.execute(select(outbox.c.state, func.count())
                            .where(outbox.c.edition_id == edition_id)
                            .group_by(outbox.c.state)).all()
    return Counter({str(s): int(n) for s, n in rows})


def test_sigterm_while_sending_finishes_in_flight_and_resumes(
        tmp_path: Path, db_url: str, slow_smtp: SMTPServer, procs: list[Proc]) -> None:
    readers = [f"reader{i}@example.com" for i in range(40)]
    config = write_config(tmp_path, db_url, digest="0 8 1 1 *", smtp_port=slow_smtp.port,
                          editors=())
    app = make_app(config)
    for r in readers:
        app.subscribers.add(r, "en", confirmed=True)
    add_posts(app.engine, 2)
    eid = app.editions.create()
    assert eid is not None
    app.editions.approve(eid)  # approved with no time: due now

    def received() -> list[str]:
        return [rcpt for m in slow_smtp.received for rcpt in m.rcpt_tos]

    daemon = Proc(config, tmp_path / "daemon.log")
    procs.append(daemon)
    wait_until(lambda: len(received()) >= 5, "some messages delivered", daemon)
    assert daemon.stop() == 0
    assert "stopping" in daemon.text()
    delivered = received()
    states = _states(app, eid)
    # No row in an unknown state: every message the relay accepted is recorded as sent, and
    # every other row is back in the queue.
    assert states["sending"] == 0
    assert states["sent"] == len(delivered)
    assert states["queued"] + states["sent"] == len(readers)
    assert states["queued"] > 0
    info = app.editions.info(eid)
    assert info.state in (S.SENDING, S.PAUSED)
    if info.state is S.PAUSED:
        assert info.reason == DAEMON_PAUSE_REASON

    again = Proc(config, tmp_path / "again.log")
    procs.append(again)
    wait_until(lambda: app.editions.info(eid).state is S.SENT, "the edition finished", again)
    assert again.stop() == 0
    assert "resuming edition" in again.text()
    assert sorted(received()) == sorted(readers)  # everyone once, nobody twice
    app.engine.dispose()


def wait_until(pred: Callable[[], bool], what: str, proc: Proc, limit: float = 90) -> None:
    end = time.monotonic() + limit
    while not pred():
        if proc.popen.poll() is not None:
            raise AssertionError(f"daemon exited {proc.popen.returncode} before {what}:\n"
                                 f"{proc.text()}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}:\n{proc.text()}")
        time.sleep(0.05)
