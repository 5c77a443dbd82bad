"""Who the client is behind a reverse proxy: pure, so the rule is tested without one.

Behind nginx every request comes from the proxy's address, so a per-client rate limit keyed on
the peer is one bucket for everybody: one visitor at the limit locks everyone out of the forms.
The proxy says who its client was in ``X-Forwarded-For`` (or RFC 7239 ``Forwarded``), but so can
any client: the header is believed only when the peer is a proxy the operator named
(``[web] trusted_proxies``), and then only from the right, where each trusted proxy appended the
address it saw; the first hop from the right that is not a trusted proxy is the client. Anything
to its left was written by the client itself and is ignored.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

__all__ = ["Network", "client_address"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
# RFC 7239 §4: for=192.0.2.60, for="[2001:db8:cafe::17]:4711", for=unknown, for=_hidden.
_FOR = re.compile(r'(?i)(?:^|;)\s*for\s*=\s*("[^"]*"|[^;,\s]*)')


def _ip(text: str) -> _IP | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # "[2001:db8::1]:4711"
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # "192.0.2.60:4711"
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _hops(header: str, value: str) -> list[str]:
    if header == "forwarded":
        return [m.group(1) for element in value.split(",") if (m := _FOR.search(element))]
    return [part for part in value.split(",") if part.strip()]


def client_address(peer: str, headers: Sequence[tuple[str, str]],
                   trusted: Sequence[Network], header: str = "x-forwarded-for") -> str:
    """The client's address: ``peer`` unless it is a trusted proxy; then the rightmost hop of
    ``header`` (every line of it, in order) that is not one. ``headers`` are (name, value)
    pairs, names in any case. A hop a trusted proxy wrote that is no address stops the walk at
    that proxy (its own address is returned: one bucket, never one the client chose)."""
    def is_trusted(ip: _IP | None) -> bool:
        return ip is not None and any(ip in net for net in trusted)

    current = _ip(peer)
    if not trusted or not is_trusted(current):
        return peer
    header = header.lower()
    hops = [hop for name, value in headers if name.lower() == header
            for hop in _hops(header, value)]
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:
            break
        current = ip
        if not is_trusted(ip):
            break
    return str(current)
