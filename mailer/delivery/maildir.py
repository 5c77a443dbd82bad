"""Maildir transport: the embedded default, and a hand-off folder for a local MTA's pickup.

Each message is written to ``tmp/`` and renamed into ``new/``: the rename is atomic, so a reader
(or an MTA) never sees half a message, and a crash leaves at most a stray file in ``tmp/``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from pathlib import Path

from mailer.delivery.classify import NO_REPLY, SendResult

__all__ = ["MaildirTransport"]


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
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        final = self.path / "new" / name
        os.replace(tmp, final)
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
