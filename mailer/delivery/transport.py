"""The seam between the delivery engine and whatever carries a message: SMTP pool or Maildir."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from mailer.delivery.classify import NO_REPLY, SendResult
from mailer.errors import DeliveryError

__all__ = ["RETRY_PAUSES", "SendResult", "Transport", "send_now"]


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


# Pauses before each try of a message sent outside the outbox: at once, then after 5 s, 30 s
# and 2 min. Long enough to ride out a relay's greylisting or a short outage.
RETRY_PAUSES = (0.0, 5.0, 30.0, 120.0)


async def send_now(transport: Transport, envelope_from: str, recipient: str, data: bytes, *,
                   pauses: Sequence[float] = RETRY_PAUSES,
                   sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> SendResult:
    """Send one message that has no outbox row (a confirmation), retrying temporary refusals.

    Returns the accepting reply. A permanent refusal, or a temporary one on the last try,
    raises ``DeliveryError`` naming the reply code (never the recipient). The caller runs this
    in the background: a visitor's page never waits for the relay.
    """
    result = SendResult(NO_REPLY)
    for pause in pauses:
        if pause:
            await sleep(pause)
        result = await transport.send(envelope_from, recipient, data)
        if result.accepted:
            return result
        if 500 <= result.code < 600:
            raise DeliveryError(f"the relay refused the message ({result.code})")
    raise DeliveryError(f"the relay deferred the message {len(pauses)} times "
                        f"(last reply {result.code or 'none'})")
