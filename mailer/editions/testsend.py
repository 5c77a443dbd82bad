"""``editions test-send``: how a test copy is marked and to whom it may go
(``mailer.pipeline.send.send_test`` sends it).

It goes through the same render and message code as the real send, so what the editor sees is
what subscribers get, but it never touches the outbox (no totals, no exactly-once bookkeeping)
and the address is neither logged nor stored: it is not a subscriber's, yet it is personal.
The command and the admin echo it back to the editor who typed it, and nothing else does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mailer.errors import InputError

__all__ = [
    "MAX_TEST_ADDRESSES",
    "TEST_HEADER",
    "TEST_SUBSCRIBER_ID",
    "check_test_addresses",
    "mark_as_test",
]

# A test goes to the editors' own inboxes: a handful. More would make the admin a mail cannon.
MAX_TEST_ADDRESSES = 10

TEST_HEADER = b"X-Newsletter-Test: yes"
# A subscriber id no real subscriber has (ids are random positive 63-bit integers).
TEST_SUBSCRIBER_ID = 0

_SUBJECT = re.compile(rb"^Subject:[ \t]?", re.IGNORECASE | re.MULTILINE)


def mark_as_test(message: bytes) -> bytes:
    """Prefix the Subject with ``[TEST]`` and add ``X-Newsletter-Test``, in the header block only.

    A plain word before an RFC 2047 encoded-word is valid, so the encoded subject stays intact.
    """
    head, sep, body = message.partition(b"\r\n\r\n")
    head, n = _SUBJECT.subn(b"Subject: [TEST] ", head, count=1)
    if n == 0:
        head += b"\r\nSubject: [TEST]"
    return TEST_HEADER + b"\r\n" + head + sep + body


def check_test_addresses(given: Iterable[str]) -> tuple[str, ...]:
    """Pure: the addresses a test goes to, checked, each once, in the order given.

    One plain address each (no display name, no list, no CR/LF that could start a header), at
    least one and at most :data:`MAX_TEST_ADDRESSES`. The error never repeats the address.
    """
    out: list[str] = []
    for i, raw in enumerate(given, 1):
        address = raw.strip()
        local, at, domain = address.rpartition("@")
        if (not at or not local or "." not in domain or domain.startswith(".")
                or any(c in address for c in "\r\n\t <>,;\"()[]\\")):
            raise InputError(f"test address {i}: give one plain email address, like "
                             f"editor@example.org")
        if address.lower() not in (a.lower() for a in out):
            out.append(address)
    if not out:
        raise InputError("give at least one address for the test (--to ADDR)")
    if len(out) > MAX_TEST_ADDRESSES:
        raise InputError(f"{len(out)} test addresses: at most {MAX_TEST_ADDRESSES}")
    return tuple(out)
