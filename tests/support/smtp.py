"""A real aiosmtpd server on an ephemeral loopback port that records what it receives.

Faults are scripted per test: answer 421/451/550 at a chosen step, drop the line after DATA,
or stall longer than the client's timeout.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["Received", "RecordingHandler", "SMTPServer"]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


# A fault decides the reply for one step. It gets (step, envelope, count) and returns an SMTP
# reply string, "drop" to close the connection, None for the normal answer.
Fault = Callable[[str, Envelope, int], str | None]


@dataclass
class RecordingHandler:
    received: list[Received] = field(default_factory=list)
    fault: Fault | None = None
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _count: int = 0
    ehlos: int = 0  # sessions opened: tells a reused connection from a new one per message
    pipelining: bool = False  # advertise PIPELINING (aiosmtpd answers pipelined commands in order)
    hangup_on_421: bool = False  # after a scripted 421 reply, close the line as real relays do

    def _fault(self, step: str, envelope: Envelope) -> str | None:
        if self.fault is None:
            return None
        with self.lock:
            self._count += 1
            n = self._count
        return self.fault(step, envelope, n)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        with self.lock:
            self.ehlos += 1
        session.host_name = hostname
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        reply = self._fault("rcpt", envelope)
        if reply == "drop":
            assert server.transport is not None  # the line is the server's, not the session's
            server.transport.close()
            return "421 closing"
        if reply and reply.startswith("421") and self.hangup_on_421:
            await server.push(reply)
            assert server.transport is not None
            server.transport.close()
            return reply
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        reply = self._fault("data", envelope)
        if reply == "drop":
            assert server.transport is not None
            cast(asyncio.Transport, server.transport).abort()
            return "421 closing"
        if reply:
            return reply
        content = envelope.original_content or envelope.content
        assert isinstance(content, bytes)
        with self.lock:
            self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), content))
        return "250 2.0.0 Ok: queued"


class _EphemeralController(Controller):
    """aiosmtpd 1.4 connects to ``self.port`` to check readiness, which fails for port 0:
    learn the bound port first."""

    def _trigger_server(self) -> None:
        if not self.port and self.server is not None:
            self.port = int(cast(asyncio.Server, self.server).sockets[0].getsockname()[1])
        super()._trigger_server()  # type: ignore[no-untyped-call]


class SMTPServer:
    """Start/stop an aiosmtpd Controller on 127.0.0.1 with an ephemeral port."""

    def __init__(self, handler: RecordingHandler | None = None, **kwargs: Any) -> None:
        self.handler = handler or RecordingHandler()
        kwargs.setdefault("decode_data", False)
        kwargs.setdefault("data_size_limit", 64 * 1024 * 1024)
        port = int(kwargs.pop("port", 0))  # a fixed port: a relay that comes back where it was
        self.controller = _EphemeralController(self.handler, hostname="127.0.0.1", port=port,
                                               **kwargs)

    @property
    def port(self) -> int:
        server = self.controller.server
        assert server is not None
        return int(cast(asyncio.Server, server).sockets[0].getsockname()[1])

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def start(self) -> SMTPServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
