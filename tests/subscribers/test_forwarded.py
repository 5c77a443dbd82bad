"""The client behind trusted proxies (pure): the rightmost untrusted hop, never the client's say."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subscribers.forwarded import client_address

PROXIES = tuple(ipaddress.ip_network(n) for n in ("127.0.0.1", "10.0.0.0/8", "::1"))


@pytest.mark.parametrize(("peer", "headers", "client"), [
    ("203.0.113.9", [("X-Forwarded-For", "198.51.100.1")], "203.0.113.9"),  # not a proxy
    ("127.0.0.1", [], "127.0.0.1"),
    ("127.0.0.1", [("X-Forwarded-For", "198.51.100.1")], "198.51.100.1"),
    ("127.0.0.1", [("x-forwarded-for", "6.6.6.6, 198.51.100.1, 10.1.2.3")], "198.51.100.1"),
    ("127.0.0.1", [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.1")],
     "198.51.100.1"),
    ("127.0.0.1", [("X-Forwarded-For", "garbage, 10.0.0.5")], "10.0.0.5"),
    ("127.0.0.1", [("X-Forwarded-For", "10.0.0.7, 10.0.0.5")], "10.0.0.7"),
    ("::1", [("X-Forwarded-For", "2001:db8::5")], "2001:db8::5"),
    ("::ffff:127.0.0.1", [("X-Forwarded-For", "198.51.100.1")], "198.51.100.1"),
])
def test_rightmost_untrusted_hop(peer: str, headers: list[tuple[str, str]], client: str) -> None:
    assert client_address(peer, headers, PROXIES) == client


def test_forwarded_header_rfc7239() -> None:
    value = 'for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.2;by=10.0.0.1'
    assert client_address("127.0.0.1", [("Forwarded", value)], PROXIES,
                          "forwarded") == "2001:db8:cafe::17"
    # The other header is not read when the operator named this one.
    assert client_address("127.0.0.1", [("X-Forwarded-For", "6.6.6.6")], PROXIES,
                          "forwarded") == "127.0.0.1"


def test_nothing_is_believed_without_trusted_proxies() -> None:
    assert client_address("127.0.0.1", [("X-Forwarded-For", "6.6.6.6")], ()) == "127.0.0.1"


@given(st.lists(st.ip_addresses(v=4).map(str), max_size=6), st.ip_addresses(v=4).map(str))
def test_the_client_cannot_choose_its_address(spoofed: list[str], real: str) -> None:
    """Whatever a client puts in the header, behind one trusted proxy it is the address that
    proxy appended (unless that one is itself a trusted proxy's)."""
    header = ", ".join([*spoofed, real])
    got = client_address("127.0.0.1", [("X-Forwarded-For", header)], PROXIES)
    ip = ipaddress.ip_address(real)
    if not any(ip in net for net in PROXIES):
        assert got == real
