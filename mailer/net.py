"""The address guard: a fetch whose URL comes from content reaches only public addresses.

A post names images and a feed names redirects, and the blog that writes them was compromised
once. Without this guard a post could make the edition build fetch ``http://127.0.0.1:5432/``,
``http://169.254.169.254/`` (cloud metadata) or an intranet page and mail the answer to every
subscriber (SSRF). So, for every connection made on content's behalf:

- only ``http`` and ``https``;
- ``localhost`` names (RFC 6761 §6.3) and non-public IP literals are refused before anything
  is sent, in every spelling ``inet_aton`` accepts (``2130706433``, ``0x7f.1``, ``0177.0.0.1``)
  and IPv4-mapped IPv6 (``[::ffff:127.0.0.1]``);
- a name is resolved once, every non-public address it gives is dropped, and the socket is
  opened to an address that was checked: the Host header and the TLS SNI still carry the name,
  so certificates are verified as usual, and a second DNS answer (rebinding) is never asked for;
- redirects are followed here, hop by hop, and each hop is checked again.

Through a proxy we cannot resolve for the proxy: only the literal host is checked, and the proxy
must refuse private destinations itself (docs/threat-model.md). ``AddressGuard.allow`` treats
some networks as public; it exists for tests that serve content from loopback and is named
``unsafe_allow_networks_for_tests`` in the config for that reason.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpcore
import httpx

from mailer.errors import BlockedAddressError

__all__ = [
    "AddressGuard",
    "IPAddress",
    "IPNetwork",
    "Resolver",
    "guarded_transport",
    "is_local_name",
    "is_public",
    "literal_address",
    "open_guarded",
    "tls_context",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

# Not covered, or not reliably across Python versions, by ``ipaddress``'s is_global.
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "::/96", "100::/64", "2001::/23", "2001:db8::/32", "fc00::/7",
        "fe80::/10", "fec0::/10", "ff00::/8",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the gateway connects to the IPv4 inside
_6TO4 = ipaddress.ip_network("2002::/16")  # RFC 3056: the IPv4 relay is in bits 16-48


def is_public(ip: IPAddress) -> bool:
    """Pure: may content make us connect to ``ip``? False for every address that is not global.

    IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4) are judged by that address:
    ``::ffff:127.0.0.1`` reaches loopback on a dual-stack socket.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public(ip.ipv4_mapped)
        if ip in _NAT64:
            return is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in _6TO4:
            return is_public(ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF))
        if ip.scope_id:
            return False
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or ip.is_link_local:
        return False
    if ip.is_loopback or ip.is_private or not ip.is_global:
        return False
    return not any(ip.version == n.version and ip in n for n in _NOT_PUBLIC)


_V4_PART = re.compile(r"^(0x[0-9a-f]*|0[0-7]*|[1-9][0-9]*)$", re.I)


def literal_address(host: str) -> IPAddress | None:
    """Pure: the address ``host`` spells, in any form a resolver accepts, or None for a name.

    ``inet_aton`` (and so getaddrinfo and many proxies) reads ``2130706433``, ``0x7f.1`` and
    ``0177.0.0.1`` as 127.0.0.1: a check that only knows dotted quads is walked past.
    """
    h = host.strip().rstrip(".").lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        try:
            return ipaddress.IPv6Address(h)
        except ValueError:
            return None
    parts = h.split(".")
    if not 1 <= len(parts) <= 4 or not all(_V4_PART.match(p) and p != "0x" for p in parts):
        return None
    nums = [int(p, 16) if p.startswith("0x") else int(p, 8) if p.startswith("0") else int(p)
            for p in parts]
    # a.b.c.d; a.b.c (c is 16 bits); a.b (b is 24 bits); a (32 bits), as inet_aton reads them.
    *head, last = nums
    if any(n > 255 for n in head) or last >= 1 << (8 * (5 - len(nums))):
        return None
    value = 0
    for n in head:
        value = value << 8 | n
    value = value << (8 * (5 - len(nums))) | last
    return ipaddress.IPv4Address(value)


def is_local_name(host: str) -> bool:
    """Pure: a name that always means this machine (RFC 6761 §6.3), whatever DNS says."""
    h = host.strip().rstrip(".").lower()
    return h in ("", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback") or \
        h.endswith(".localhost")


# The hosts the operator configured for the fetch under way (a feed's own host): they may be
# anywhere, loopback included. Set per task by ``open_guarded``; read by the network backend,
# which sees only the host it is asked to connect to. A kept-alive connection to a trusted
# host can serve a later redirect that names exactly that host: it is one of the operator's
# feed hosts, so that is no way inside that the operator did not open.
_TRUSTED: ContextVar[frozenset[str]] = ContextVar("newsletter_trusted_hosts", default=frozenset())


@dataclass(frozen=True)
class AddressGuard:
    """The rule, with the test-only networks that count as public (empty in every deployment)."""

    allow: tuple[IPNetwork, ...] = ()

    def permits(self, ip: IPAddress) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return is_public(ip) or any(ip.version == n.version and ip in n for n in self.allow)

    def check_url(self, url: httpx.URL, *, trusted: Iterable[str] = ()) -> None:
        """Pure: refuse a scheme other than http(s), a localhost name or a non-public literal."""
        if url.scheme not in ("http", "https"):
            raise BlockedAddressError(f"scheme {url.scheme!r} is not http or https", url=str(url))
        host = url.host
        if host.lower() in trusted:
            return
        if is_local_name(host):
            raise BlockedAddressError(f"{host!r} names this machine", url=str(url))
        ip = literal_address(host)
        if ip is not None and not self.permits(ip):
            raise BlockedAddressError(f"{ip} is not a public address", url=str(url))


async def _getaddrinfo(host: str, port: int) -> list[IPAddress]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return out


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolve once, keep the public answers, connect to one of them (not to the name)."""

    def __init__(self, guard: AddressGuard, resolver: Resolver) -> None:
        self._guard = guard
        self._resolve = resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109 (httpcore's API)
        local_address: str | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if host.lower() in _TRUSTED.get():
            return await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        if is_local_name(host):
            raise BlockedAddressError(f"{host!r} names this machine", url=host)
        literal = literal_address(host)
        try:
            async with asyncio.timeout(timeout):
                found = [literal] if literal is not None else await self._resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took too long") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        allowed = [ip for ip in found if self._guard.permits(ip)]
        if not allowed:
            shown = ", ".join(str(ip) for ip in found) or "nothing"
            raise BlockedAddressError(f"{host} resolves to {shown}, not a public address", url=host)
        last: Exception | None = None
        for ip in allowed:
            try:
                return await self._inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,  # noqa: ASYNC109 (httpcore's API)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddressError("unix sockets are not fetched for content", url=path)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, with its connection pool built over the guarded backend.

    httpx 0.28 (pinned) offers no public way to pass a network backend, so the pool it made is
    replaced by one with the same settings; tests/feeds/test_guard.py fails if that stops working.
    """

    def __init__(self, guard: AddressGuard, resolver: Resolver, *, verify: ssl.SSLContext,
                 limits: httpx.Limits) -> None:
        super().__init__(verify=verify, limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(guard, resolver),
        )


@cache
def tls_context() -> ssl.SSLContext:
    """Loading the CA bundle takes ~0.2 s: do it once per process, not once per fetch."""
    return httpx.create_ssl_context()


def guarded_transport(
    guard: AddressGuard, *, proxy: str | None, verify: ssl.SSLContext | None = None,
    limits: httpx.Limits | None = None, resolver: Resolver | None = None,
) -> httpx.AsyncBaseTransport:
    """A transport for content fetches. Through ``proxy`` the proxy resolves (and must refuse
    private destinations); ``open_guarded`` still checks each hop's literal host."""
    verify = verify or tls_context()
    limits = limits or httpx.Limits()
    if proxy:
        return httpx.AsyncHTTPTransport(verify=verify, limits=limits, proxy=proxy, trust_env=False)
    return _GuardedTransport(guard, resolver or _getaddrinfo, verify=verify, limits=limits)


@asynccontextmanager
async def open_guarded(
    client: httpx.AsyncClient, url: str, *, guard: AddressGuard, max_redirects: int,
    headers: dict[str, str] | None = None, trusted: Iterable[str] = (),
) -> AsyncIterator[httpx.Response]:
    """GET ``url`` as a stream, following at most ``max_redirects`` redirects, each one checked.

    ``trusted`` names hosts the operator chose (a feed's configured host): they are not checked,
    wherever they resolve. Raises BlockedAddressError or httpx.TooManyRedirects.
    """
    hosts = frozenset(h.lower() for h in trusted)
    token = _TRUSTED.set(hosts)
    try:
        request = client.build_request("GET", url, headers=headers)
        for _hop in range(max_redirects + 1):
            guard.check_url(request.url, trusted=hosts)
            response = await client.send(request, stream=True, follow_redirects=False)
            nxt = response.next_request
            if nxt is None:
                try:
                    yield response
                finally:
                    await response.aclose()
                return
            await response.aclose()
            request = nxt
        raise httpx.TooManyRedirects(f"more than {max_redirects} redirects", request=request)
    finally:
        _TRUSTED.reset(token)
