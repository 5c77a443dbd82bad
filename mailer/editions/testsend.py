"""``editions test-send``: how a test copy is marked (``mailer.pipeline.send.send_test`` sends it).

It goes through the same render and message code as the real send, so what the editor sees is
what subscribers get, but it never touches the outbox (no totals, no exactly-once bookkeeping)
and the address is neither logged nor stored: it is not a subscriber's, yet it is personal.
"""

from __future__ import annotations

import re

__all__ = ["TEST_HEADER", "TEST_SUBSCRIBER_ID", "mark_as_test"]

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
