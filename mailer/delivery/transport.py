"""The seam between the delivery engine and whatever carries a message: SMTP pool or Maildir."""

from __future__ import annotations

from typing import Protocol

from mailer.delivery.classify import SendResult

__all__ = ["SendResult", "Transport"]


class Transport(Protocol):
    """Carries one message to one recipient and says what happened; never raises for a reply.

    ``data`` is the finished RFC 5322 message with CRLF line ends (``MessageTemplate`` output);
    SMTP transports do the dot-stuffing. ``concurrency`` is how many sends may be in flight at
    once: the engine runs that many workers, which is also the bound on duplicates after a crash.
    """

    @property
    def concurrency(self) -> int: ...

    async def send(self, envelope_from: str, recipient: str, data: bytes) -> SendResult: ...

    async def aclose(self) -> None: ...
