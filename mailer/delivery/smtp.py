"""SMTP transport: a pool of reused aiosmtplib connections per relay, with weighted failover.

aiosmtplib opens each connection: greeting, EHLO, STARTTLS or implicit TLS with certificate
verification (an optional CA file), AUTH. Then the connection is handed to ``_Wire``, a small
protocol that can read several replies per packet, which aiosmtplib's protocol cannot: that is
what PIPELINING (RFC 2920) needs. Per message we write ``MAIL RCPT DATA`` in one packet (``RSET``
in front after an aborted transaction) and the dot-stuffed bytes in a second: two round trips
instead of five, no per-message regexes, no address parsing (``sendmail`` did both, and reached
0.04-0.24x of smtp-source; issue 7).

Any failure of the line (drop, timeout, 421) closes that connection; the next message on it
reconnects. A relay that refuses connections is marked down for a cool-off that doubles up to a
minute, traffic moves to the others by weight, and it comes back after the cool-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import aiosmtplib
from aiosmtplib.protocol import MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH

from mailer.config import RelaySettings
from mailer.delivery.classify import NO_REPLY, SendResult, dot_stuff, scrub_reply
from mailer.delivery.ratelimit import Throttle
from mailer.errors import DeliveryError

__all__ = ["RelayPool", "SMTPTransport", "parse_replies"]

log = logging.getLogger("newsletter.delivery.smtp")

_MAX_COOLOFF = 60.0
_FIRST_COOLOFF = 2.0

# C0 controls, DEL and C1 controls. CR or LF would smuggle a command into the session (RFC 5321
# §4.1.1 ends commands with CRLF); NUL, TAB and the rest have no place in an address either.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def parse_replies(buffer: bytes | bytearray) -> tuple[list[tuple[int, str]], int]:
    """Every complete SMTP reply at the start of ``buffer``, and how many bytes they used.

    A reply is ``ddd-text`` continuation lines ended by a ``ddd text`` line (RFC 5321 §4.2.1).
    A malformed line yields code -1, which the classifier treats as a protocol fault.
    Runs for every packet a relay sends, so it splits once instead of scanning line by line.
    """
    end = buffer.rfind(b"\n")
    if end < 0:
        return [], 0
    replies: list[tuple[int, str]] = []
    pending: list[bytes] = []
    consumed = pos = 0
    for raw in bytes(buffer[: end + 1]).split(b"\n")[:-1]:
        pos += len(raw) + 1
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if len(line) >= 4 and line[3:4] == b"-":
            pending.append(line[4:])
            continue
        try:
            code = int(line[:3])
        except ValueError:
            code = -1
        body = b"\n".join([*pending, line[4:]]) if pending else line[4:]
        replies.append((code, body.decode("utf-8", "replace")))
        pending = []
        consumed = pos
    return replies, consumed


class _Disconnected(ConnectionError):
    """The relay closed the line or it broke."""


class _ReplyTooLong(_Disconnected):
    """The relay sent more than a reply may hold; we closed the line."""


class _Wire(asyncio.Protocol):
    """The connection after setup: writes commands, queues every reply it reads, in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._replies: deque[tuple[int, str]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost = False
        self._fault: str | None = None  # why we closed the line ourselves
        self._closed = asyncio.Event()  # set once the socket is really closed

    def attach(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_protocol(self)

    def data_received(self, data: bytes) -> None:
        if self._fault is not None:
            return
        self._buffer.extend(data)
        replies, used = parse_replies(self._buffer)
        if replies:
            del self._buffer[:used]
            self._replies.extend(replies)
            self._wake()
        # A relay (or a man in the middle) that streams a line without end, or continuation
        # lines without end, must not grow our memory: aiosmtplib's own limits, per line and
        # per reply, end the session as it does during setup.
        tail = len(self._buffer) - (self._buffer.rfind(b"\n") + 1)
        if tail > MAX_LINE_LENGTH or len(self._buffer) > MAX_RESPONSE_LENGTH:
            limit = MAX_LINE_LENGTH if tail > MAX_LINE_LENGTH else MAX_RESPONSE_LENGTH
            self._fault = f"the relay's reply is longer than {limit} bytes"
            self._buffer.clear()
            self.close()
            self._wake()

    def eof_received(self) -> bool:
        self._lost = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.transport = None
        self._wake()
        self._closed.set()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def usable(self) -> bool:
        return not self._lost and self.transport is not None and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        if not self.usable:
            raise _Disconnected("connection lost")
        assert self.transport is not None
        self.transport.write(data)

    async def reply(self) -> tuple[int, str]:
        while not self._replies:
            if self._fault is not None:
                raise _ReplyTooLong(self._fault)
            if self._lost:
                raise _Disconnected("connection lost before the reply")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._replies.popleft()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._lost = True

    @property
    def closed(self) -> bool:
        """The socket is closed (not only closing)."""
        return self._closed.is_set() or self.transport is None

    async def aclose(self, grace: float = 2.0) -> None:
        """Close, and wait until the socket is really closed.

        Closing TLS waits for the relay's close_notify: a process (or a test) that stops its
        event loop before that leaves the socket open. A relay that does not answer within
        ``grace`` seconds gets the connection aborted instead.
        """
        transport = self.transport
        self.close()
        if transport is None:
            return
        try:
            async with asyncio.timeout(grace):
                await self._closed.wait()
        except TimeoutError:
            transport.abort()
            await asyncio.sleep(0)  # the abort closes the socket on the next loop turn


@dataclass
class _Connection:
    """One pooled connection; ``wire`` is None until (re)connected."""

    wire: _Wire | None = None
    pipelining: bool = False
    smtputf8: bool = False
    messages: int = 0
    clean: bool = True  # no transaction state on the server: fresh, or the last one completed


class _ConnectFailed(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: a relay on this machine, not shared with others."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _OpeningSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client, used only to open a session (greeting, EHLO, TLS, AUTH).

    A session that fails while opening (a refused login after STARTTLS, say) is aborted, not
    closed: a graceful TLS close waits for the relay that just refused us, up to 30 s, and
    keeps the socket open meanwhile.
    """

    def close(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            cast(asyncio.Transport, transport).abort()
        super().close()


class RelayPool:
    """``connections`` reused connections to one relay, paced at its ``rate``."""

    def __init__(self, relay: RelaySettings, *, local_hostname: str | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.relay = relay
        self.label = relay.label
        self._local_hostname = local_hostname
        self._monotonic = monotonic
        self._limiter = Throttle(relay.rate, monotonic=monotonic)
        self._idle: asyncio.LifoQueue[_Connection] | None = None
        self._all: list[_Connection] = []
        self._retired: set[_Wire] = set()  # closed sessions whose sockets may still be closing
        self.down_until = 0.0
        self._cooloff = _FIRST_COOLOFF
        self._tls: ssl.SSLContext | None = None

    # ------------------------------------------------------------------ health

    def is_up(self) -> bool:
        return self._monotonic() >= self.down_until

    def mark_down(self, reason: str) -> None:
        if self.is_up():
            log.warning("relay %s is down (%s); retrying it in %.0fs", self.label, reason,
                        self._cooloff)
        self.down_until = self._monotonic() + self._cooloff
        self._cooloff = min(self._cooloff * 2, _MAX_COOLOFF)

    def mark_up(self) -> None:
        if self._cooloff != _FIRST_COOLOFF:
            log.info("relay %s is back", self.label)
        self._cooloff = _FIRST_COOLOFF
        self.down_until = 0.0

    # ------------------------------------------------------------------ connections

    def _queue(self) -> asyncio.LifoQueue[_Connection]:
        if self._idle is None:
            self._idle = asyncio.LifoQueue()
            for _ in range(self.relay.connections):
                conn = _Connection()
                self._all.append(conn)
                self._idle.put_nowait(conn)
        return self._idle

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            cafile = str(self.relay.ca_file) if self.relay.ca_file else None
            self._tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        return self._tls

    async def _connect(self, conn: _Connection) -> None:
        r = self.relay
        security = r.security
        smtp = _OpeningSMTP(
            hostname=r.host, port=r.port, timeout=r.timeout,
            use_tls=security == "tls",
            start_tls=security == "starttls",
            tls_context=self._tls_context() if security != "none" else None,
            username=r.username, password=r.password if r.username else None,
            local_hostname=self._local_hostname,
        )
        try:
            await smtp.connect()
            if not smtp.last_ehlo_response:
                await smtp.ehlo()
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
            smtp.close()
            raise _ConnectFailed(f"{type(exc).__name__}: {scrub_reply(str(exc), 200)}") from None
        transport = smtp.transport
        # uvloop's transports are not asyncio.Transport subclasses; what we need is duck-typed.
        if transport is None or not hasattr(transport, "set_protocol"):
            smtp.close()
            raise _ConnectFailed("no transport after connect")
        conn.pipelining = smtp.supports_extension("pipelining")
        conn.smtputf8 = smtp.supports_extension("smtputf8")
        # From here on the connection is ours: aiosmtplib's protocol reads one reply per wake-up.
        smtp.protocol = None
        smtp.transport = None
        wire = _Wire()
        wire.attach(cast(asyncio.Transport, transport))
        conn.wire = wire
        conn.messages = 0
        conn.clean = True

    async def send(self, envelope_from: str, recipient: str, payload: bytes) -> SendResult:
        """Send dot-stuffed ``payload``. Raises ``_ConnectFailed`` if the relay cannot be reached
        (nothing was sent, so the caller may try another relay).
        """
        idle = self._queue()
        conn = await idle.get()
        try:
            if conn.wire is None or not conn.wire.usable:
                await self._connect(conn)
            await self._limiter.wait()
            return await self._transaction(conn, envelope_from, recipient, payload)
        finally:
            idle.put_nowait(conn)

    async def _transaction(self, conn: _Connection, envelope_from: str, recipient: str,
                           payload: bytes) -> SendResult:
        wire = conn.wire
        assert wire is not None
        utf8 = not (envelope_from.isascii() and recipient.isascii())
        if utf8 and not conn.smtputf8:
            return SendResult(553, "address needs SMTPUTF8, which the relay does not offer",
                              self.label)
        bad = _CONTROL.search(envelope_from) or _CONTROL.search(recipient)
        if bad is not None:
            return SendResult(501, f"address contains the control character U+{ord(bad[0]):04X};"
                                   " refused before it reached the relay", self.label)
        mail = b"MAIL FROM:<" + envelope_from.encode() + (b"> SMTPUTF8\r\n" if utf8 else b">\r\n")
        rcpt = b"RCPT TO:<" + recipient.encode() + b">\r\n"
        try:
            async with asyncio.timeout(self.relay.timeout):
                return await self._exchange(conn, wire, mail, rcpt, payload)
        except (TimeoutError, _Disconnected, OSError) as exc:
            self._retire(conn, wire)
            if isinstance(exc, _ReplyTooLong):
                return SendResult(NO_REPLY, f"{exc}; closed the connection", self.label)
            what = "timed out" if isinstance(exc, TimeoutError) else "connection lost"
            return SendResult(NO_REPLY, f"{what} during the transaction", self.label)

    async def _exchange(self, conn: _Connection, wire: _Wire, mail: bytes, rcpt: bytes,
                        payload: bytes) -> SendResult:
        if conn.pipelining:
            # After an aborted transaction, RSET leads the group: it costs no round trip and
            # clears what the relay kept of it (RFC 2920 lets RSET, MAIL and RCPT lead a group).
            # After a completed one the relay has reset itself (RFC 5321 §4.1.1.4), so no RSET:
            # one reply less to parse here, one command less for the relay, per message.
            group = [b"RSET\r\n"] if not conn.clean else []
            group += [mail, rcpt, b"DATA\r\n"]
            conn.clean = False
            wire.write(b"".join(group))
            replies: list[tuple[int, str]] = []
            try:
                while len(replies) < len(group):
                    replies.append(await wire.reply())
            except _Disconnected:
                # A relay that says 421 and hangs up answers no further command of the group;
                # its 421 is the honest outcome, not "connection lost".
                closing = next((r for r in replies if r[0] == 421), None)
                if closing is None:
                    raise
                return self._result(conn, wire, closing)
            data_r = replies[-1]
            first_bad = next((r for r in replies[:-1] if not 200 <= r[0] < 300), None)
            if data_r[0] == 354 and first_bad is not None:
                # A server that accepted DATA anyway gets an empty message, which it must not
                # deliver without a valid recipient; then the session is reset.
                wire.write(b".\r\nRSET\r\n")
                await wire.reply()
                await wire.reply()
                conn.clean = True
            if first_bad is not None:
                return self._result(conn, wire, first_bad)
            if data_r[0] != 354:
                return self._result(conn, wire, data_r)
        else:
            if not conn.clean:
                # Without pipelining RSET costs a round trip, so only after an aborted one.
                wire.write(b"RSET\r\n")
                await wire.reply()
            conn.clean = False
            for cmd in (mail, rcpt):
                wire.write(cmd)
                r = await wire.reply()
                if not 200 <= r[0] < 300:
                    return self._result(conn, wire, r)
            wire.write(b"DATA\r\n")
            r = await wire.reply()
            if r[0] != 354:
                return self._result(conn, wire, r)
        wire.write(payload)
        conn.messages += 1
        final = await wire.reply()
        conn.clean = True  # after the final reply to DATA the transaction is over either way
        return self._result(conn, wire, final)

    def _result(self, conn: _Connection, wire: _Wire, reply: tuple[int, str]) -> SendResult:
        code, text = reply
        if code == 421 or code < 0:
            # 421: the relay is closing this session (RFC 5321 §3.8); the next send reconnects.
            self._retire(conn, wire)
        return SendResult(code, scrub_reply(text), self.label)

    def _retire(self, conn: _Connection, wire: _Wire) -> None:
        """Close a broken or refused session; ``aclose`` waits for it to finish closing."""
        wire.close()
        conn.wire = None
        self._retired = {w for w in self._retired if not w.closed}
        self._retired.add(wire)

    async def aclose(self) -> None:
        closing = [w.aclose() for w in self._retired if not w.closed]
        self._retired = set()
        for conn in self._all:
            wire = conn.wire
            if wire is not None:
                if wire.usable:
                    with contextlib.suppress(Exception):
                        wire.write(b"QUIT\r\n")
                closing.append(wire.aclose())
            conn.wire = None
        await asyncio.gather(*closing)


class SMTPTransport:
    """Several relays by weight (smooth weighted round robin), failing over while one is down."""

    def __init__(self, relays: Sequence[RelaySettings], *, local_hostname: str | None = None,
                 monotonic: Callable[[], float] = time.monotonic, down_wait: float = 10.0) -> None:
        """``down_wait``: how long a message waits for a relay to come back when every relay is
        down, before it is deferred; so a short outage does not burn retry attempts for the
        whole edition in a few seconds."""
        if not relays:
            raise DeliveryError("the SMTP transport needs at least one relay")
        self.down_wait = down_wait
        self._monotonic = monotonic
        self.pools = [RelayPool(r, local_hostname=local_hostname, monotonic=monotonic)
                      for r in relays]
        self._current = [0] * len(self.pools)

    @property
    def concurrency(self) -> int:
        return sum(p.relay.connections for p in self.pools)

    def set_share(self, share: int) -> None:
        """``share`` processes send at once: each paces a shared relay at its part of ``rate``.

        A relay on loopback is each machine's own (a local Postfix), so its rate stays whole.
        """
        for pool in self.pools:
            if not is_loopback(pool.relay.host):
                pool._limiter.set_share(share)

    def _choose(self, exclude: set[int]) -> int | None:
        candidates = [i for i, p in enumerate(self.pools) if i not in exclude and p.is_up()]
        if not candidates:
            return None
        total = sum(self.pools[i].relay.weight for i in candidates)
        for i in candidates:
            self._current[i] += self.pools[i].relay.weight
        best = max(candidates, key=lambda i: self._current[i])
        self._current[best] -= total
        return best

    async def send(self, envelope_from: str, recipient: str, data: bytes) -> SendResult:
        payload = dot_stuff(data)
        tried: set[int] = set()
        reason = "every relay is down"
        give_up = self._monotonic() + self.down_wait
        while True:
            index = self._choose(tried)
            if index is None:
                wait = min(p.down_until for p in self.pools) - self._monotonic()
                if tried or self._monotonic() + max(wait, 0) > give_up:
                    return SendResult(NO_REPLY, f"no relay reachable ({reason})")
                await asyncio.sleep(max(wait, 0.01))
                continue
            pool = self.pools[index]
            try:
                result = await pool.send(envelope_from, recipient, payload)
            except _ConnectFailed as exc:
                pool.mark_down(exc.reason)
                tried.add(index)
                reason = f"{pool.label}: {exc.reason}"
                continue
            pool.mark_up()
            return result

    async def aclose(self) -> None:
        for pool in self.pools:
            await pool.aclose()
