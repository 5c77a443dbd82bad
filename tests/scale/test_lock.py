"""DatabaseLock on SQLite (row lease) and PostgreSQL (advisory lock), in and across processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from mailer.db import open_engine
from mailer.errors import LockError
from mailer.lock import DatabaseLock, advisory_key
from tests.support.clock import ManualClock

REPO = Path(__file__).resolve().parents[2]


FakeClock = ManualClock

@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = open_engine(db_url)
    yield eng
    eng.dispose()


def test_second_owner_is_refused_until_release(engine: Engine) -> None:
    a = DatabaseLock(engine, "daemon", "a")
    b = DatabaseLock(engine, "daemon", "b")
    assert a.acquire()
    assert not b.acquire()
    assert not b.acquire(wait=True, timeout=0.3)
    holder = b.holder()
    assert holder is not None
    assert holder.owner == "a"
    a.heartbeat()
    a.release()
    assert b.acquire()
    assert not a.acquire()
    b.release()
    assert b.holder() is None


def test_names_are_independent(engine: Engine) -> None:
    a = DatabaseLock(engine, "daemon", "a")
    b = DatabaseLock(engine, "scheduler-leader", "b")
    assert a.acquire()
    assert b.acquire()
    a.release()
    b.release()


def test_context_manager_raises_lock_error_naming_the_holder(engine: Engine) -> None:
    with (DatabaseLock(engine, "daemon", "first"),
          pytest.raises(LockError, match="held by first"),
          DatabaseLock(engine, "daemon", "x")):
        pass
    with DatabaseLock(engine, "daemon", "second") as lock:
        assert lock.held


def test_heartbeat_without_holding_raises(engine: Engine) -> None:
    with pytest.raises(LockError):
        DatabaseLock(engine, "daemon", "a").heartbeat()


def test_sqlite_lease_expires_and_old_holder_learns_it(sqlite_url: str) -> None:
    clock = FakeClock()
    engine = open_engine(sqlite_url)
    a = DatabaseLock(engine, "daemon", "a", clock=clock, lease=timedelta(seconds=30))
    b = DatabaseLock(engine, "daemon", "b", clock=clock, lease=timedelta(seconds=30))
    assert a.acquire()
    clock.now += timedelta(seconds=20)
    a.heartbeat()  # pushes the lease to +50 s
    clock.now += timedelta(seconds=25)
    assert not b.acquire()  # still within the renewed lease
    clock.now += timedelta(seconds=10)
    assert b.acquire()  # a stopped beating: its lease expired
    with pytest.raises(LockError, match="lost"):
        a.heartbeat()
    assert not a.held
    a.release()  # harmless after the loss, and must not free b's lock
    holder = b.holder()
    assert holder is not None
    assert holder.owner == "b"
    b.release()
    engine.dispose()


@pytest.mark.postgres
def test_postgres_standby_takes_over_when_leader_session_ends(postgres_url: str) -> None:
    engine = open_engine(postgres_url)
    leader = DatabaseLock(engine, "scheduler-leader", "leader")
    standby = DatabaseLock(engine, "scheduler-leader", "standby", poll_interval=0.05)
    assert leader.acquire()
    assert not standby.acquire()
    # Kill the leader's session from outside, as a crash or network loss would.
    assert leader._conn is not None
    pid = leader._conn.execute(text("select pg_backend_pid()")).scalar_one()
    with engine.connect() as conn:
        conn.execute(text("select pg_terminate_backend(:p)"), {"p": pid})
    assert standby.acquire(wait=True, timeout=10)
    with pytest.raises(LockError, match="lost"):
        leader.heartbeat()
    holder = standby.holder()
    assert holder is not None
    assert holder.owner == "standby"
    standby.heartbeat()
    leader.release()
    standby.release()
    engine.dispose()


@pytest.mark.postgres
def test_postgres_schemas_do_not_share_locks(postgres_url: str) -> None:
    from tests.support.db import postgres_schema_url

    other = postgres_schema_url()
    other_url = next(other)
    try:
        e1, e2 = open_engine(postgres_url), open_engine(other_url)
        a, b = DatabaseLock(e1, "daemon", "a"), DatabaseLock(e2, "daemon", "b")
        assert a.acquire()
        assert b.acquire()
        a.release()
        b.release()
        e1.dispose()
        e2.dispose()
    finally:
        other.close()


async def test_acquire_async_waits_for_release(engine: Engine) -> None:
    a = DatabaseLock(engine, "daemon", "a")
    b = DatabaseLock(engine, "daemon", "b", poll_interval=0.05)
    assert a.acquire()
    assert not await b.acquire_async(wait=True, timeout=0.2)
    a.release()
    assert await b.acquire_async(wait=True, timeout=5)
    b.release()


@given(st.text(max_size=50), st.text(min_size=1, max_size=64))
def test_advisory_key_is_a_stable_signed_bigint(schema: str, name: str) -> None:
    key = advisory_key(schema, name)
    assert -(2**63) <= key < 2**63
    assert key == advisory_key(schema, name)


# ----------------------------------------------------------------- across real processes

_HOLDER = textwrap.dedent("""
    import sys, time
    from datetime import timedelta
    from mailer.db import open_engine
    from mailer.lock import DatabaseLock
    lock = DatabaseLock(open_engine(sys.argv[1]), "daemon", sys.argv[2],
                        lease=timedelta(seconds=float(sys.argv[3])), poll_interval=0.05)
    assert lock.acquire(wait=True, timeout=60)
    print("HELD", flush=True)
    while True:
        lock.heartbeat()
        time.sleep(0.1)
""")


def _spawn(url: str, owner: str, lease: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _HOLDER, url, owner, str(lease)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_sigkilled_holder_is_replaced_by_a_waiting_process(db_url: str) -> None:
    open_engine(db_url).dispose()
    lease = 1.0  # only matters on SQLite; PostgreSQL frees the lock when the session dies
    first = _spawn(db_url, "first", lease)
    second = None
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "HELD"
        second = _spawn(db_url, "second", lease)
        engine = open_engine(db_url, create=False)
        assert not DatabaseLock(engine, "daemon", "probe").acquire()
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert second.stdout is not None
        assert second.stdout.readline().strip() == "HELD"
        holder = DatabaseLock(engine, "daemon", "probe").holder()
        assert holder is not None
        assert holder.owner == "second"
        engine.dispose()
    finally:
        for proc in (first, second):
            if proc is None:
                continue
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
