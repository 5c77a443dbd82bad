"""Worker processes that sign DKIM on sockets the event loop reads: both cores sign, and the loop
pays only a socket write and a short read per message.

Why not ``ProcessPoolExecutor``: it pickles each call through a queue fed by one thread and
answered through a second, and those threads fight the event loop for the GIL; measured on this
2-core machine, the sending process spent most of a core on that bookkeeping and signed sending
reached 0.25x of smtp-source. Here each worker is a plain child process (``python -m
mailer.delivery.signing_worker``, started by exec, so nothing of the parent's threads or locks is
copied) speaking a framed protocol on its stdin and stdout, both one end of a Unix socket pair:

* parent → worker, once: the keys (JSON; they stay in the socket, never in argv or the environment);
* parent → worker, per message: a 4-byte big-endian length and the message bytes;
* worker → parent, per message, in order: a status byte (``0`` signed, ``1`` failed), a 4-byte
  length and the ``DKIM-Signature`` header lines (or the error text). Only the header travels
  back, not the message.

Answers come back in the order asked, so each worker keeps a FIFO of futures; a request goes to
the worker with the fewest in flight. A worker that dies (an operator's kill, the OOM killer)
fails what it held with ``PoolBroken``; the transport then signs those and the rest inline. A
message the worker cannot sign fails alone (``SigningFailed``), and the transport signs it
inline, where the real exception is raised. The workers read EOF and exit when the parent
closes its end or dies, even by SIGKILL: no signer outlives its sender.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import struct
import subprocess
import sys
from typing import IO

__all__ = ["ANSWER", "LENGTH", "PoolBroken", "SigningFailed", "SigningPool", "read_exactly"]

log = logging.getLogger("newsletter.delivery.dkim")

LENGTH = struct.Struct(">I")
ANSWER = struct.Struct(">BI")
# Room for a backlog of messages in the kernel, so the loop hands each over in one write
# instead of waiting for the worker to read (the kernel caps it at net.core.wmem_max).
_SEND_BUFFER = 1 << 20
# The worker's own module: it knows DKIM, this one only the framing.
WORKER_MODULE = "mailer.delivery.signing_worker"


class PoolBroken(RuntimeError):
    """A signing worker exited; what it held was not signed."""


class SigningFailed(RuntimeError):
    """The worker could not sign this one message (it goes on with the next)."""


class _Worker:
    """One child and its socket, a plain non-blocking file descriptor: it belongs to no event
    loop, so the same transport can sign under a later ``asyncio.run`` (the CLI runs
    several) once the worker is registered with that loop."""

    def __init__(self, keys: bytes) -> None:
        # A socket pair rather than two pipes: a 20 kB write into a pipe cost the loop 20-35 us of
        # CPU here, into a Unix socket 4 us (measured; the worker reads it as its stdin/stdout).
        self.channel, theirs = socket.socketpair()
        try:
            self.channel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
            self.process = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE],
                stdin=theirs.fileno(), stdout=theirs.fileno(), close_fds=True)
        except BaseException:
            self.channel.close()
            raise
        finally:
            theirs.close()
        self.channel.setblocking(False)
        self.request_fd = self.answer_fd = self.channel.fileno()
        self.waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.outgoing = bytearray(LENGTH.pack(len(keys)) + keys)
        self.incoming = bytearray()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.broken = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.add_reader(self.answer_fd, self._readable)
        self._flush()

    def submit(self, data: bytes) -> asyncio.Future[bytes]:
        if self.broken or self.loop is None:
            raise PoolBroken("a DKIM signing worker exited")
        future = self.loop.create_future()
        self.waiting.append(future)
        pending = bool(self.outgoing)
        self.outgoing += LENGTH.pack(len(data))
        self.outgoing += data
        if not pending:
            self._flush()
        return future

    def _flush(self) -> None:
        """Write what the socket takes now; the loop calls again when it has room."""
        assert self.loop is not None
        try:
            while self.outgoing:
                written = os.write(self.request_fd, self.outgoing)
                del self.outgoing[:written]
        except BlockingIOError:
            self.loop.add_writer(self.request_fd, self._flush)
            return
        except OSError:  # EPIPE: the worker is gone
            self._break()
            return
        self.loop.remove_writer(self.request_fd)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.answer_fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._break()
            return
        self.incoming += chunk
        while len(self.incoming) >= ANSWER.size:
            status, size = ANSWER.unpack_from(self.incoming)
            if len(self.incoming) < ANSWER.size + size:
                break
            payload = bytes(self.incoming[ANSWER.size:ANSWER.size + size])
            del self.incoming[:ANSWER.size + size]
            future = self.waiting.popleft()
            if future.done():
                continue
            if status == 0:
                future.set_result(payload)
            else:
                future.set_exception(SigningFailed(payload.decode("utf-8", "replace")))

    def _break(self) -> None:
        self.broken = True
        self.detach()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(PoolBroken("a DKIM signing worker exited"))

    def detach(self) -> None:
        loop, self.loop = self.loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.answer_fd)
            loop.remove_writer(self.request_fd)

    def stop(self, timeout: float) -> None:
        """Close our end (the worker reads EOF and exits), then wait; kill if it hangs."""
        self.detach()
        self.channel.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class SigningPool:
    """``size`` signing workers, started on first use and attached to the running loop."""

    def __init__(self, secret: bytes, size: int) -> None:
        self.secret = secret  # what each worker reads first: the keys, in the worker's own form
        self.size = size
        self._workers: list[_Worker] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def _ready(self) -> list[_Worker]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Answers still owed to a finished loop would land on the wrong futures: start afresh.
            self._stop(timeout=1)
            self._loop = loop
        if not self._workers:
            self._workers = [_Worker(self.secret) for _ in range(self.size)]
            for worker in self._workers:
                worker.attach(loop)
        return self._workers

    async def signature(self, data: bytes) -> bytes:
        """The ``DKIM-Signature`` lines for ``data``, from the least busy worker."""
        worker = min(self._ready(), key=lambda w: (w.broken, len(w.waiting)))
        return await worker.submit(data)

    def _stop(self, timeout: float) -> None:
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop(timeout)

    async def aclose(self) -> None:
        """Close the workers' sockets (they exit on EOF) and wait for them, off the loop."""
        await asyncio.to_thread(self._stop, 5)


def read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    """``size`` bytes from a blocking stream, or None at end of file (the worker's side)."""
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
