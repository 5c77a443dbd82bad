"""``editions test-send``: the real rendered mail to one address, marked as a test.

It goes through the same render and message code as the real send, so what the editor sees is
what subscribers get, but it never touches the outbox (no totals, no exactly-once bookkeeping)
and the address is neither logged nor stored: it is not a subscriber's, yet it is personal.
"""

from __future__ import annotations

import asyncio
import re
from email.utils import parseaddr
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailer.app import App

__all__ = ["TEST_HEADER", "mark_as_test", "send_test"]

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


async def send_test(app: App, edition_id: int, address: str, language: str) -> Any:
    """Render ``edition_id`` for ``language``, personalise for ``address``, and send it once."""
    from mailer.message import PersonalSlots
    from mailer.pipeline import prepare_edition

    prepared = await asyncio.to_thread(prepare_edition, app, edition_id)
    template = prepared.template_for(language)
    mirrors = app.mirrors.for_subscriber(TEST_SUBSCRIBER_ID, template.mirror_slots)
    data = template.personalise(PersonalSlots(
        subscriber_id=TEST_SUBSCRIBER_ID,
        address=address,
        unsubscribe_url=f"{app.config.newsletter.public_url}/u/test",
        mirrors=mirrors,
    ))
    sender = (app.config.delivery.envelope_from
              or parseaddr(app.config.newsletter.from_addr)[1])
    transport = app.transport
    try:
        return await transport.send(sender, address, mark_as_test(data))
    finally:
        await transport.aclose()
