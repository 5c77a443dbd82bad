"""A tiny authoritative DNS server on a loopback UDP port answering TXT queries from a dict.

``records`` maps a name (no trailing dot, any case) to its TXT values; a value longer than 255
octets is split into several strings as a real zone would hold it (RFC 1035 §3.3.14).
"""

from __future__ import annotations

import socketserver
import threading
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

__all__ = ["DNSServer"]


class DNSServer:
    def __init__(self, records: dict[str, list[str]] | None = None) -> None:
        self.records: dict[str, list[str]] = records if records is not None else {}
        self.queries: list[str] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                query = dns.message.from_wire(data)
                reply = dns.message.make_response(query)
                reply.flags |= dns.flags.AA
                q = query.question[0]
                name = q.name.to_text().rstrip(".").lower()
                outer.queries.append(name)
                values = {k.lower(): v for k, v in outer.records.items()}.get(name)
                if values is None:
                    reply.set_rcode(dns.rcode.NXDOMAIN)
                elif q.rdtype == dns.rdatatype.TXT and values:
                    texts = []
                    for v in values:
                        chunks = [v[i:i + 255] for i in range(0, len(v), 255)] or [""]
                        texts.append(" ".join('"' + c.replace('"', '\\"') + '"' for c in chunks))
                    reply.answer.append(dns.rrset.from_text_list(q.name, 300, "IN", "TXT", texts))
                sock.sendto(reply.to_wire(), self.client_address)

        self._server = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> DNSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
