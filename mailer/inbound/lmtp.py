"""The LMTP edge (RFC 2033): an MTA hands mail straight in, and each message is written to the
Maildir before we answer 250, so a crash loses nothing; then it goes through the same
processing as ``newsletter inbound`` (``on_message``). aiosmtpd's ``LMTP`` speaks the protocol.

Status is per recipient (RFC 2033): a recipient that is not one of our mailboxes is refused at
``RCPT`` with ``550 5.1.1`` (the MTA bounces it to its sender, or keeps it for a person), and
``DATA`` answers once for each recipient taken.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiosmtpd.lmtp import LMTP

from mailer.errors import InputError

__all__ = ["InboundHandler", "parse_listen", "start_lmtp"]

log = logging.getLogger("newsletter.inbound")

OnMessage = Callable[[bytes, Sequence[str]], Awaitable[object]]
Accepts = Callable[[str], bool]
_MAX_SIZE = 10 * 1024 * 1024  # a bounce with its returned message fits; a flood does not


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:24`` for IPv6) for ``--lmtp``; ``InputError`` if it is not one."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"--lmtp {text!r}: give HOST:PORT, for example 127.0.0.1:8024")
    return host, int(port)


class InboundHandler:
    """aiosmtpd's handler: one ``on_message`` call per message, after it is stored."""

    def __init__(self, on_message: OnMessage, accepts: Accepts | None = None) -> None:
        self.on_message = on_message
        self.accepts = accepts

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if self.accepts is not None and not self.accepts(address):
            # The reply names no address: the MTA logs its own recipient, we log none.
            log.info("inbound: LMTP refused a recipient that is not ours")
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        rcpts = list(envelope.rcpt_tos)
        try:
            await self.on_message(bytes(raw), rcpts)
        except Exception:  # not stored: the MTA keeps it and tries again later
            log.exception("inbound: LMTP message not stored; the MTA will retry")
            return "\r\n".join(["451 4.3.0 try again later"] * max(len(rcpts), 1))
        # LMTP answers once per recipient (RFC 2033 §4.2).
        return "\r\n".join(["250 2.0.0 OK"] * max(len(rcpts), 1))


async def start_lmtp(host: str, port: int, on_message: OnMessage,
                     accepts: Accepts | None = None) -> asyncio.Server:
    """Listen on ``host:port``, taking mail for the recipients ``accepts`` allows (all, if
    None); the caller closes the server."""
    handler = InboundHandler(on_message, accepts)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: LMTP(handler, data_size_limit=_MAX_SIZE, decode_data=False,
                     hostname="newsletter-inbound"),
        host, port)
