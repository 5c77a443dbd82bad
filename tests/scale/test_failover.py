"""Leader failover: two ``newsletter run`` processes on one PostgreSQL database; the standby
takes over the moment the leader's session ends (issue 9: one scheduler, by advisory lock)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from mailer.db import open_engine
from mailer.lock import DatabaseLock
from scheduler import LOCK_NAME
from tests.scale.helpers import spawn_cli
from tests.scheduler.helpers import write_config


def _wait_for(log: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if needle in text:
            return text
        assert proc.poll() is None, f"process ended early:\n{text[-2000:]}"
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not logged within {timeout}s:\n{log.read_text()[-2000:]}")


def _holder(url: str) -> str | None:
    engine = open_engine(url, create=False)
    try:
        holder = DatabaseLock(engine, LOCK_NAME, "probe").holder()
        return None if holder is None else holder.owner
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_standby_scheduler_takes_over_when_the_leader_is_killed(
        tmp_path: Path, postgres_url: str) -> None:
    cfg = write_config(tmp_path, postgres_url)
    open_engine(postgres_url).dispose()  # the schema exists before two processes race for it
    logs = {name: tmp_path / f"{name}.log" for name in ("leader", "standby")}
    leader = spawn_cli(cfg, "run", log=logs["leader"])
    procs = [leader]
    try:
        _wait_for(logs["leader"], "holding the database lock", leader, 60)
        # A second daemon without --standby refuses, naming the holder (exit 2).
        refused = spawn_cli(cfg, "run", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = refused.communicate(timeout=60)
        assert refused.returncode == 2
        assert b"already running" in err
        standby = spawn_cli(cfg, "run", "--standby", log=logs["standby"])
        procs.append(standby)
        _wait_for(logs["standby"], "waiting to take over", standby, 60)
        leader_owner = _holder(postgres_url)
        assert leader_owner is not None
        assert leader_owner.endswith(f":{leader.pid}")
        time.sleep(1.0)  # the standby keeps polling and must not take the lock meanwhile
        assert "took over" not in logs["standby"].read_text()
        leader.send_signal(signal.SIGKILL)
        leader.wait(30)
        _wait_for(logs["standby"], "took over the database lock", standby, 30)
        new_owner = _holder(postgres_url)
        assert new_owner is not None
        assert new_owner.endswith(f":{standby.pid}")
        standby.send_signal(signal.SIGTERM)
        assert standby.wait(60) == 0, logs["standby"].read_text()[-2000:]
        assert _holder(postgres_url) is None  # released on a clean stop
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
            if proc.stderr is not None:
                proc.stderr.close()
