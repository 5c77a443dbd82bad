"""Maildir transport: the embedded default, and a hand-off folder for a local MTA's pickup.

Each message is written to ``tmp/`` and renamed into ``new/``: the rename is atomic, so a reader
(or an MTA) never sees half a message. A write that fails (a full disk) removes its file from
``tmp/`` at once: a partial message holds a reader's address in clear. A crash can still leave
one, so opening the transport sweeps ``tmp/`` (see ``sweep_tmp``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from pathlib import Path

from mailer.delivery.classify import NO_REPLY, SendResult

__all__ = ["MaildirTransport", "sweep_tmp"]

# Maildir readers delete files in tmp/ untouched for 36 hours (maildir(5), D. J. Bernstein):
# by then no writer can still be working on them.
STALE_SECONDS = 36 * 3600


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def sweep_tmp(tmp: Path, host: str, *, now: float | None = None) -> int:
    """Remove what crashed writers left in ``tmp/``; return how many files went.

    Not every file: a ``send`` and the daemon's worker may write to the same folder at once, and
    an MTA's pickup folder may have other writers, so a live writer's file must stay. Ours are
    named ``<ns>.P<pid>Q<n>.<host>.eml``: one of this host whose process is gone is removed at
    once (our own pid counts as alive: another transport of this process may be writing);
    anything else only after the Maildir convention's 36 hours.
    """
    now = time.time() if now is None else now
    removed = 0
    for entry in tmp.iterdir():
        parts = entry.name.split(".")
        ours = (len(parts) >= 4 and entry.name.endswith(".eml") and parts[1].startswith("P")
                and "Q" in parts[1] and ".".join(parts[2:-1]) == host)
        dead = False
        if ours:
            pid = parts[1][1:].split("Q", 1)[0]
            dead = pid.isdigit() and not _pid_alive(int(pid))
        try:
            if dead or now - entry.stat().st_mtime > STALE_SECONDS:
                entry.unlink()
                removed += 1
        except FileNotFoundError:
            continue  # its writer renamed it into new/ meanwhile
    return removed


class MaildirTransport:
    """Write each message as ``new/<unique>.eml``; ``delivered_to`` adds the envelope headers
    a local delivery agent would (``Return-Path``, ``Delivered-To``) for MTA pickup.
    """

    def __init__(self, path: Path, *, delivered_to: bool = False, concurrency: int = 4) -> None:
        self.path = Path(path)
        self.delivered_to = delivered_to
        self._concurrency = concurrency
        self._counter = itertools.count()
        self._host = socket.gethostname().replace("/", "_").replace(":", "_") or "localhost"
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        sweep_tmp(self.path / "tmp", self._host)

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def label(self) -> str:
        return "maildir"

    def _unique(self) -> str:
        # The Maildir naming scheme: time, a per-process sequence and pid, host.
        return f"{time.time_ns()}.P{os.getpid()}Q{next(self._counter)}.{self._host}.eml"

    def write(self, envelope_from: str, recipient: str, data: bytes) -> Path:
        """The blocking part, also usable without an event loop."""
        if self.delivered_to:
            data = (f"Return-Path: <{envelope_from}>\r\nDelivered-To: {recipient}\r\n".encode()
                    + data)
        name = self._unique()
        tmp = self.path / "tmp" / name
        final = self.path / "new" / name
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    async def send(self, envelope_from: str, recipient: str, data: bytes) -> SendResult:
        try:
            await asyncio.to_thread(self.write, envelope_from, recipient, data)
        except OSError as exc:
            # A full disk is temporary from the outbox's point of view: the row is deferred.
            return SendResult(NO_REPLY, f"maildir write failed: {exc.strerror}", "maildir")
        return SendResult(250, "written to maildir", "maildir")

    async def aclose(self) -> None:
        return None
