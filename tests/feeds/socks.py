"""A minimal SOCKS5 server (RFC 1928, no authentication, CONNECT only) for the proxy tests.

It resolves names itself through ``hosts``, as Tor does, so a feed on an unresolvable name
proves that the name travelled through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

__all__ = ["Socks5Server"]


class Socks5Server:
    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = hosts
        self.requested: list[tuple[str, int]] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"socks5://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Socks5Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
            with contextlib.suppress(ConnectionError, OSError):
                await w.wait_closed()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            ver, n = await reader.readexactly(2)
            await reader.readexactly(n)
            writer.write(b"\x05\x00")  # version 5, no authentication
            _, cmd, _, atyp = await reader.readexactly(4)
            if atyp == 1:
                host = socket.inet_ntoa(await reader.readexactly(4))
            elif atyp == 3:
                host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            else:
                writer.close()
                return
            (port,) = struct.unpack("!H", await reader.readexactly(2))
            self.requested.append((host, port))
            if ver != 5 or cmd != 1:
                writer.close()
                return
            up_reader, up_writer = await asyncio.open_connection(self.hosts.get(host, host), port)
            self._writers.add(up_writer)
            writer.write(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            writer.close()

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()
