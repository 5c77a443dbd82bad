"""The address guard (mailer/net.py): pure rules by property, the connection rule on real sockets.

Loopback servers stand for both sides: 127.0.0.1 for an internal service that must get no
request, 127.0.0.2 for the public web (named in the guard's test-only allowance).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from mailer.config import FeedSettings, FetchSettings, ImageSettings
from mailer.errors import BlockedAddressError, FetchError
from mailer.feeds.fetch import Validators, build_client, fetch_feed
from mailer.models import Post
from mailer.net import (
    AddressGuard,
    IPAddress,
    guarded_transport,
    is_local_name,
    is_public,
    literal_address,
    open_guarded,
)
from mailer.render.images import fetch_images, image_client
from tests.feeds.conftest import fixture_bytes
from tests.support.http import HTTPServer, Reply

PUBLIC_NET = ipaddress.ip_network("127.0.0.2/32")
GUARD = AddressGuard((PUBLIC_NET,))

NOT_PUBLIC = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "::1/128", "::/128", "fc00::/7", "fe80::/10",
    "ff00::/8", "::ffff:127.0.0.0/104", "::ffff:10.0.0.0/104", "64:ff9b::7f00:0/104", "2002:7f00::/24",
]


@st.composite
def _in_network(draw: st.DrawFn, net: str) -> IPAddress:
    n = ipaddress.ip_network(net)
    return n[draw(st.integers(0, n.num_addresses - 1))]


@given(st.sampled_from(NOT_PUBLIC).flatmap(_in_network))
def test_no_address_in_a_non_public_network_is_public(ip: IPAddress) -> None:
    assert not is_public(ip)
    assert not AddressGuard().permits(ip)


@given(st.integers(0, 2**32 - 1))
def test_an_ipv4_mapped_address_is_judged_as_its_ipv4(n: int) -> None:
    v4 = ipaddress.IPv4Address(n)
    assert is_public(ipaddress.IPv6Address(f"::ffff:{v4}")) == is_public(v4)


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses_are_public(ip: str) -> None:
    assert is_public(ipaddress.ip_address(ip))


def _part(n: int, form: str) -> str:
    return {"dec": str(n), "oct": "0" + format(n, "o") if n else "0", "hex": hex(n)}[form]


@st.composite
def _v4_spelling(draw: st.DrawFn) -> str:
    count = draw(st.integers(1, 4))
    parts = [draw(st.integers(0, 255)) for _ in range(count - 1)]
    last = draw(st.integers(0, 2 ** (8 * (5 - count)) - 1))
    return ".".join(_part(p, draw(st.sampled_from(["dec", "oct", "hex"]))) for p in [*parts, last])


@given(st.one_of(_v4_spelling(), st.text("0123456789abcdefx.", max_size=20)))
def test_literal_address_reads_ipv4_as_inet_aton_does(host: str) -> None:
    """The resolver, and many proxies, read ``2130706433`` and ``0x7f.1`` as 127.0.0.1."""
    try:
        expected: str | None = socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        expected = None
    if host and host.strip() == host and not host.endswith("."):
        got = literal_address(host)
        assert (str(got) if got is not None else None) == expected


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "a.b.localhost", "localhost.localdomain"])
def test_localhost_names(host: str) -> None:
    assert is_local_name(host)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://localhost:8080/", "http://2130706433/", "http://0x7f.1/",
    "http://0177.0.0.1/", "http://[::ffff:127.0.0.1]/", "http://[::1]/", "http://169.254.169.254/",
    "http://100.64.1.1/", "http://[fe80::1]/", "ftp://example.org/", "file:///etc/passwd",
])
def test_check_url_refuses(url: str) -> None:
    # httpx itself rejects a dotted quad with octal parts as an invalid URL: refused either way.
    with pytest.raises((BlockedAddressError, httpx.InvalidURL)):
        AddressGuard().check_url(httpx.URL(url))


# ---- the connection rule, on real sockets ----


@pytest.fixture
def internal() -> Iterator[HTTPServer]:
    server = HTTPServer("127.0.0.1").start()
    server.routes["/secret"] = Reply(body=b"internal secret")
    yield server
    server.stop()


@pytest.fixture
def public() -> Iterator[HTTPServer]:
    server = HTTPServer("127.0.0.2").start()
    server.routes["/ok"] = Reply(body=b"public bytes")
    yield server
    server.stop()


class _Resolver:
    """A test-only DNS: the first answer is public, every later one rebinds to loopback."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        answer = self.answers[min(len(self.asked), len(self.answers)) - 1]
        return [ipaddress.ip_address(a) for a in answer]


async def _get(url: str, resolver: _Resolver, *, verify: ssl.SSLContext | None = None) -> bytes:
    transport = guarded_transport(GUARD, proxy=None, resolver=resolver, verify=verify)
    async with httpx.AsyncClient(transport=transport) as client, \
            open_guarded(client, url, guard=GUARD, max_redirects=3) as response:
        return await response.aread()


async def test_a_name_is_resolved_once_and_the_checked_address_is_connected(
        public: HTTPServer, internal: HTTPServer) -> None:
    dns = _Resolver(["127.0.0.2"], ["127.0.0.1"])
    url = f"http://rebind.example:{public.port}/ok"
    assert await _get(url, dns) == b"public bytes"
    assert dns.asked == ["rebind.example"]
    # The Host header still names the host: virtual hosting works, nothing leaks the address.
    assert public.requests[0][1]["host"] == f"rebind.example:{public.port}"
    assert internal.requests == []


async def test_non_public_answers_are_dropped_and_none_left_is_refused(
        public: HTTPServer, internal: HTTPServer) -> None:
    url = f"http://mixed.example:{public.port}/ok"
    assert await _get(url, _Resolver(["127.0.0.1", "127.0.0.2"])) == b"public bytes"
    with pytest.raises(BlockedAddressError, match=r"resolves to 127\.0\.0\.1"):
        await _get(f"http://inside.example:{internal.port}/secret", _Resolver(["127.0.0.1"]))
    assert internal.requests == []


async def test_every_redirect_hop_is_checked(public: HTTPServer, internal: HTTPServer) -> None:
    public.routes["/hop"] = Reply(302, headers={"Location": f"http://evil.example:{internal.port}/secret"})
    with pytest.raises(BlockedAddressError):
        await _get(f"http://good.example:{public.port}/hop", _Resolver(["127.0.0.2"], ["127.0.0.1"]))
    assert internal.requests == []


async def test_tls_is_verified_against_the_name_not_the_address() -> None:
    """SNI and the certificate check use the name while the socket goes to the checked address."""
    ca = trustme.CA()
    cert = ca.issue_cert("secure.example")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    seen: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: seen.append(name)  # type: ignore[assignment,func-returns-value]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    httpd = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    httpd.socket = server_ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        url = f"https://secure.example:{httpd.server_address[1]}/"
        assert await _get(url, _Resolver(["127.0.0.2"]), verify=client_ctx) == b"ok"
        assert seen == ["secure.example"]
        # A certificate for another name is refused, as without the guard.
        with pytest.raises(httpx.ConnectError, match=r"certificate|hostname"):
            await _get(f"https://other.example:{httpd.server_address[1]}/", _Resolver(["127.0.0.2"]),
                       verify=client_ctx)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_an_image_through_a_proxy_has_its_literal_host_checked_first() -> None:
    """Images use [fetch]'s proxy; what a proxy would resolve for us is checked as written."""
    proxy = HTTPServer().start()
    try:
        proxy.routes["http://images.invalid/ok.png"] = Reply(body=b"not an image, but fetched")
        settings = ImageSettings(proxy=f"http://127.0.0.1:{proxy.port}", user_agent="agent/2")
        post = Post(
            guid="g", title="t", language="en",
            content_html='<img src="http://images.invalid/ok.png"><img src="http://2130706433/x.png">'
                         '<img src="http://localhost/y.png"><img src="http://[::ffff:10.0.0.1]/z.png">',
        )
        assert fetch_images([post], settings) == {}  # the one fetched is not an image
        assert [p for p, _ in proxy.requests] == ["http://images.invalid/ok.png"]
        assert proxy.requests[0][1]["user-agent"] == "agent/2"
    finally:
        proxy.stop()


async def test_the_image_client_is_guarded_by_default(internal: HTTPServer) -> None:
    async with image_client(ImageSettings()) as client:
        with pytest.raises(BlockedAddressError):
            async with open_guarded(client, f"http://127.0.0.1:{internal.port}/secret",
                                    guard=AddressGuard(), max_redirects=1):
                pass
        # Even a request that skips open_guarded cannot connect: the transport checks too.
        with pytest.raises(BlockedAddressError):
            await client.get(f"http://localhost:{internal.port}/secret")
    assert internal.requests == []


# ---- feeds: the operator's host is trusted, where it redirects is not ----

FETCH = FetchSettings(connect_timeout=2, read_timeout=2, unsafe_allow_networks_for_tests=(PUBLIC_NET,))


async def _feed(url: str) -> bytes:
    async with build_client(FETCH) as client:
        got = await fetch_feed(FeedSettings(url=url), Validators(),
                               client=client, fetch=FETCH)
    return got.body


async def test_a_public_feed_that_redirects_inside_is_refused(public: HTTPServer, internal: HTTPServer) -> None:
    public.routes["/feed.xml"] = Reply(302, headers={"Location": internal.url("/secret")})
    with pytest.raises(FetchError, match=r"redirect refused: 127\.0\.0\.1 is not a public address"):
        await _feed(public.url("/feed.xml"))
    public.routes["/feed2.xml"] = Reply(302, headers={"Location": f"http://localhost:{internal.port}/secret"})
    with pytest.raises(FetchError, match="redirect refused"):
        await _feed(public.url("/feed2.xml"))
    assert internal.requests == []


async def test_a_loopback_feed_may_redirect_within_its_own_host_only(
        internal: HTTPServer, public: HTTPServer) -> None:
    other = HTTPServer("127.0.0.1").start()
    try:
        other.routes["/admin"] = Reply(body=b"another internal service")
        internal.routes["/feed.xml"] = Reply(301, headers={"Location": "/feed/"})
        internal.routes["/feed/"] = Reply(body=fixture_bytes("rss10.rdf"))
        assert await _feed(internal.url("/feed.xml")) == fixture_bytes("rss10.rdf")
        internal.routes["/moved.xml"] = Reply(302, headers={"Location": public.url("/ok")})
        assert await _feed(internal.url("/moved.xml")) == b"public bytes"
        # Another internal host (here: localhost, another port) is not the operator's choice.
        internal.routes["/evil.xml"] = Reply(302, headers={"Location": f"http://localhost:{other.port}/admin"})
        with pytest.raises(FetchError, match="redirect refused"):
            await _feed(internal.url("/evil.xml"))
        assert other.requests == []
    finally:
        other.stop()
