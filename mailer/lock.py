"""A named lock in the project's database: "one daemon per database", "one scheduler leader".

Why in the database and not a PID file: the processes that compete may run on different
machines that share only the database (issue 9), and a PID file outlives a crashed process.

* **PostgreSQL**: a session-level ``pg_try_advisory_lock`` held on a dedicated connection. The
  server frees it the moment that session ends (crash, SIGKILL, network loss), so a standby
  polling ``acquire(wait=True)`` takes over without waiting out a lease. The key is derived from
  the lock's name *and* the current schema, because advisory locks are per database while a
  deployment's tables (and each test's) live in one schema.
* **SQLite**: there are no sessions shared between processes, so the lock is a row lease in the
  ``daemon_lock`` table: ``acquire`` takes the row if it is free or its lease has expired, and
  ``heartbeat`` pushes ``expires_at`` forward. A holder that stops heartbeating for ``lease``
  loses the lock to the next caller.

On both backends the ``daemon_lock`` row records who holds the lock and when it last beat, so
operators (and ``newsletter db status``-like commands) can see the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Connection, Engine, delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from mailer.clock import Clock, as_utc, system_clock
from mailer.errors import LockError
from mailer.schema import daemon_lock

__all__ = ["DAEMON_LOCK", "DEFAULT_LEASE", "DatabaseLock", "LockHolder", "advisory_key", "default_owner",
           "process_is_gone"]

# The lock the daemon and ``run --once`` hold: one scheduler per database.
DAEMON_LOCK = "scheduler"

log = logging.getLogger("newsletter.lock")

DEFAULT_LEASE = timedelta(seconds=30)


def default_owner() -> str:
    """``host:pid``: enough for an operator to find the process that holds the lock."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


def process_is_gone(owner: str) -> bool:
    """True when ``owner`` (``host:pid``, or a sender's ``[worker:]host:pid:random``) names a
    process on this host that no longer runs: its leases need not be waited out.

    A holder on another host, or an owner we cannot read, is presumed alive.
    """
    parts = owner.removeprefix("worker:").split(":")
    if len(parts) < 2 or not parts[1].isdigit():
        return False
    host, pid = parts[0], int(parts[1])
    me = socket.gethostname()
    if host not in {me, me[:30], me[:40]} or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    try:  # killed, but its parent has not reaped it yet (Linux: state Z)
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def advisory_key(schema: str, name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock`` from the schema and the lock name."""
    digest = hashlib.sha256(f"newsletter:{schema}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class LockHolder:
    """Who holds a lock, as recorded in ``daemon_lock`` (for messages and status output)."""

    __slots__ = ("expires_at", "heartbeat_at", "owner")

    def __init__(self, owner: str, heartbeat_at: object, expires_at: object) -> None:
        self.owner = owner
        self.heartbeat_at = heartbeat_at
        self.expires_at = expires_at

    def __repr__(self) -> str:
        return f"LockHolder(owner={self.owner!r}, heartbeat_at={self.heartbeat_at!r})"


class DatabaseLock:
    """A lock named ``name`` in the database behind ``engine``, held by ``owner``.

    Use it as ``lock.acquire(wait=...)`` then ``lock.heartbeat()`` every ``lease / 3`` or so, and
    ``lock.release()`` on shutdown. ``heartbeat`` raises :class:`LockError` when the lock was lost
    (PostgreSQL session ended, or SQLite lease taken over), so the holder stops acting as leader.
    """

    def __init__(
        self,
        engine: Engine,
        name: str,
        owner: str | None = None,
        clock: Clock = system_clock,
        lease: timedelta = DEFAULT_LEASE,
        *,
        poll_interval: float = 0.5,
    ) -> None:
        if not name or len(name) > 64:
            raise ValueError("a lock name is 1 to 64 characters")
        if lease <= timedelta(0):
            raise ValueError("the lease must be positive")
        self.engine = engine
        self.name = name
        self.owner = (owner or default_owner())[:128]
        self.clock = clock
        self.lease = lease
        self.poll_interval = poll_interval
        self._conn: Connection | None = None  # PostgreSQL: the session that holds the lock
        self._key: int | None = None
        self._held = False

    # ----------------------------------------------------------------- public API

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @property
    def held(self) -> bool:
        """Whether this object believes it holds the lock (``heartbeat`` checks for real)."""
        return self._held

    def acquire(self, wait: bool = False, timeout: float | None = None) -> bool:
        """Take the lock. Without ``wait``, try once; with it, poll until held or ``timeout``."""
        if self._held:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._try_acquire():
                return True
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                self._close_idle()
                return False
            pause = self.poll_interval
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            time.sleep(pause)

    async def acquire_async(self, wait: bool = True,
                            timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """``acquire`` for an event loop: each try is one short query; the wait is asyncio.sleep.

        The try runs on the loop, not in a thread: a cancelled thread would go on and could take
        the lock after its caller gave up and released (and share the session with ``release``).
        """
        if self._held:
            return True
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._try_acquire():
                return True
            if not wait or (deadline is not None and loop.time() >= deadline):
                self._close_idle()
                return False
            pause = self.poll_interval
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - loop.time()))
            await asyncio.sleep(pause)

    def heartbeat(self) -> None:
        """Prove we still hold the lock and extend the lease; raise ``LockError`` if lost."""
        if not self._held:
            raise LockError(f"lock {self.name!r} is not held by {self.owner}")
        if self.is_postgres:
            self._pg_check()
            self._write_row(self._pg_conn_or_lost())
        else:
            now = self.clock()
            with self.engine.begin() as conn:
                result = conn.execute(
                    update(daemon_lock)
                    .where(daemon_lock.c.name == self.name, daemon_lock.c.owner == self.owner)
                    .values(heartbeat_at=now, expires_at=now + self.lease)
                )
            if result.rowcount != 1:
                self._held = False
                raise LockError(f"lock {self.name!r} was lost by {self.owner}: "
                                f"its lease expired and another process took it")

    def release(self) -> None:
        """Give the lock up. Safe to call twice, or after the lock was lost."""
        was_held, self._held = self._held, False
        try:
            if self.is_postgres:
                self._pg_release(unlock=was_held)
            if was_held:
                with self.engine.begin() as conn:
                    conn.execute(delete(daemon_lock).where(
                        daemon_lock.c.name == self.name, daemon_lock.c.owner == self.owner))
        except DBAPIError as exc:  # the session is already gone: the server freed the lock
            log.warning("releasing lock %r: %s", self.name, type(exc.orig).__name__)

    def holder(self) -> LockHolder | None:
        """The recorded holder, if any (it may be stale on SQLite once its lease expired)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(daemon_lock.c.owner, daemon_lock.c.heartbeat_at, daemon_lock.c.expires_at)
                .where(daemon_lock.c.name == self.name)
            ).first()
        if row is None:
            return None
        return LockHolder(row.owner, as_utc(row.heartbeat_at), as_utc(row.expires_at))

    def __enter__(self) -> DatabaseLock:
        if not self.acquire():
            holder = self.holder()
            who = f" (held by {holder.owner})" if holder else ""
            raise LockError(f"lock {self.name!r} is held by another process{who}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ----------------------------------------------------------------- SQLite: a row lease

    def _try_acquire(self) -> bool:
        if self.is_postgres:
            return self._pg_try_acquire()
        now = self.clock()
        values = {"owner": self.owner, "heartbeat_at": now, "expires_at": now + self.lease}
        # Take over an expired (or our own) row in one conditional UPDATE, else insert a new one;
        # the primary key makes the insert race-free between processes.
        with self.engine.begin() as conn:
            result = conn.execute(
                update(daemon_lock)
                .where(daemon_lock.c.name == self.name)
                .where((daemon_lock.c.owner == self.owner) | (daemon_lock.c.expires_at < now))
                .values(**values)
            )
            if result.rowcount == 1:
                self._held = True
                return True
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(daemon_lock).values(name=self.name, **values))
        except IntegrityError:
            return self._take_from_dead()
        self._held = True
        return True

    def _take_from_dead(self) -> bool:
        """A killed holder on this host never released its row: take it now, not in ``lease``."""
        holder = self.holder()
        if holder is None or not process_is_gone(holder.owner):
            return False
        now = self.clock()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(daemon_lock)
                .where(daemon_lock.c.name == self.name, daemon_lock.c.owner == holder.owner)
                .values(owner=self.owner, heartbeat_at=now, expires_at=now + self.lease))
        self._held = result.rowcount == 1
        if self._held:
            log.info("lock %r taken from %s, which is no longer running", self.name, holder.owner)
        return self._held

    # ----------------------------------------------------------------- PostgreSQL: advisory lock

    def _pg_try_acquire(self) -> bool:
        if self._conn is None:
            # AUTOCOMMIT: the session must hold the lock without holding a transaction open.
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._conn = conn
        conn = self._conn
        try:
            if self._key is None:
                schema = conn.execute(text("select current_schema()")).scalar_one()
                self._key = advisory_key(str(schema), self.name)
            got = bool(conn.execute(text("select pg_try_advisory_lock(:k)"),
                                    {"k": self._key}).scalar_one())
        except DBAPIError:
            self._drop_conn()
            raise
        if not got:
            return False
        self._held = True
        self._write_row(conn)
        return True

    def _pg_conn_or_lost(self) -> Connection:
        if self._conn is None:
            self._held = False
            raise LockError(f"lock {self.name!r} was lost by {self.owner}: no session")
        return self._conn

    def _pg_check(self) -> None:
        """Ask the server whether our session still holds the advisory lock."""
        conn = self._pg_conn_or_lost()
        key = self._key
        assert key is not None
        unsigned = key & 0xFFFFFFFFFFFFFFFF
        try:
            held = conn.execute(
                text("select count(*) from pg_locks where locktype = 'advisory' "
                     "and pid = pg_backend_pid() and granted "
                     "and classid = :hi and objid = :lo and objsubid = 1"),
                {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF},
            ).scalar_one()
        except DBAPIError as exc:
            self._held = False
            self._drop_conn()
            raise LockError(f"lock {self.name!r} was lost by {self.owner}: the database "
                            f"session ended ({type(exc.orig).__name__})") from None
        if not held:
            self._held = False
            self._drop_conn()
            raise LockError(f"lock {self.name!r} was lost by {self.owner}: "
                            f"the session no longer holds it")

    def _write_row(self, conn: Connection) -> None:
        """Record the holder, for operators; on PostgreSQL the advisory lock is what counts."""
        now = self.clock()
        values = {"owner": self.owner, "heartbeat_at": now, "expires_at": now + self.lease}
        result = conn.execute(update(daemon_lock).where(daemon_lock.c.name == self.name)
                              .values(**values))
        if result.rowcount == 0:
            # A racing writer wins the insert; our next heartbeat overwrites its row.
            with contextlib.suppress(IntegrityError):
                conn.execute(insert(daemon_lock).values(name=self.name, **values))

    def _pg_release(self, *, unlock: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if unlock and self._key is not None:
                conn.execute(text("select pg_advisory_unlock(:k)"), {"k": self._key})
        except DBAPIError:
            conn.invalidate()
            raise
        finally:
            conn.close()

    def _close_idle(self) -> None:
        """A try that failed holds nothing: give its session back rather than keep it open."""
        if not self._held and self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # never return a session that may hold a lock to the pool
                conn.close()
            except DBAPIError:
                pass
