"""Preview, test-send and a real send of one edition to one reader are the same bytes.

Through the real commands (``newsletter send``, ``editions test-send``, ``preview``) against an
aiosmtpd relay, with mirrors from the registry: what an editor previews is what a reader gets.
Only what must differ is masked: Date, MIME boundaries, the test marker, and the per-recipient
slots (address, unsubscribe token, the reader's own mirrors, Message-ID).
"""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from pathlib import Path

from mailer.app import App
from mailer.cli.base import run_cli
from mailer.editions.testsend import TEST_SUBSCRIBER_ID
from tests.editions.helpers import add_posts
from tests.scheduler.helpers import write_config
from tests.support.smtp import SMTPServer

READER = "reader-one@example.com"
SITES = "".join(f'\n[[mirrors.sites]]\nurl = "https://mirror-{i}.example.net"\nstatus = "active"\n'
                for i in range(6)) + (
    '\n[[mirrors.sites]]\nurl = "http://abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvw.onion"\n'
    'status = "active"\n')


def normalised(raw: bytes, *, address: str, mirrors: tuple[str, ...]) -> bytes:
    """``raw`` with what legitimately differs between the three replaced by fixed marks.

    Bodies are base64, so each part is decoded and the marks applied to its content: the
    headers are compared as bytes, the bodies as the bytes a reader's client shows.
    """
    boundaries = set(re.findall(rb'boundary="([^"]+)"', raw))
    for b in boundaries:
        raw = raw.replace(b, b"BOUNDARY")
    raw = re.sub(rb"^Date: .*\r\n", b"Date: DATE\r\n", raw, flags=re.MULTILINE)
    raw = re.sub(rb"^Message-ID: .*\r\n", b"Message-ID: ID\r\n", raw, flags=re.MULTILINE)
    raw = raw.replace(b"X-Newsletter-Test: yes\r\n", b"").replace(b"Subject: [TEST] ", b"Subject: ")

    def marks(data: bytes) -> bytes:
        data = data.replace(address.encode(), b"ADDRESS")
        data = re.sub(rb"https://news\.example\.org/u/[A-Za-z0-9_=.-]+", b"UNSUBSCRIBE", data)
        for i, m in enumerate(mirrors):
            data = data.replace(m.encode(), f"MIRROR-{i}".encode())
        return data

    msg = message_from_bytes(raw, policy=policy.default)
    head = raw.partition(b"\r\n\r\n")[0]
    parts = []
    for part in msg.walk():
        payload = part.get_payload(decode=True)
        parts.append(bytes(part.get_content_type(), "ascii") + b"\n"
                     + (marks(payload) if isinstance(payload, bytes) else b""))
    return marks(head) + b"\n\n" + b"\n--\n".join(parts)


def test_preview_test_send_and_send_give_one_reader_the_same_bytes(
        tmp_path: Path, sqlite_url: str, smtp_server: SMTPServer) -> None:
    config = write_config(tmp_path, sqlite_url, smtp_port=smtp_server.port, editors=(),
                          extra=SITES)
    app = App.from_path(config, environ={})
    add_posts(app.engine, 2)
    subscriber = app.subscribers.add(READER, "zh-Hans", confirmed=True)
    assert run_cli(["--config", str(config), "send"]) == 0
    [sent] = smtp_server.received
    [edition] = [info.id for info in app.editions.find()]
    assert run_cli(["--config", str(config), "editions", "test-send", str(edition),
                    "--to", READER, "--language", "zh-Hans"]) == 0
    tested = smtp_server.received[1]
    out = tmp_path / "preview"
    assert run_cli(["--config", str(config), "preview", "--edition", str(edition),
                    "--language", "zh-Hans", "--out", str(out)]) == 0
    previewed = (out / "zh-Hans.eml").read_bytes()

    # Slot order does not matter to a reader; the message puts a reader's mirrors in sorted order.
    reader_mirrors = tuple(sorted(app.mirrors.for_subscriber(subscriber)))
    stand_in_mirrors = tuple(sorted(app.mirrors.for_subscriber(TEST_SUBSCRIBER_ID)))
    assert reader_mirrors
    assert stand_in_mirrors
    # Preview and test-send stand for the same sample reader (id 0): byte for byte the same,
    # mirrors included, apart from Date, boundaries and the test marker.
    assert (normalised(previewed, address="reader@example.org", mirrors=())
            == normalised(tested.data, address=READER, mirrors=()))
    # And the real send differs from them only in this reader's own slots.
    assert (normalised(sent.data, address=READER, mirrors=reader_mirrors)
            == normalised(tested.data, address=READER, mirrors=stand_in_mirrors))
    body = sent.message().get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert all(m in text for m in reader_mirrors)  # the registry's set for this reader
    app.engine.dispose()


def test_a_retry_sends_the_language_the_row_was_enqueued_in(
        tmp_path: Path, sqlite_url: str, smtp_server: SMTPServer) -> None:
    """A reader who changes language mid-send gets this edition as enqueued (the same bytes on a
    retry), and the report's counts per language are what went out."""
    import asyncio

    from mailer.delivery.report import edition_report, format_report
    from mailer.models import OutboxState
    from mailer.pipeline.send import send_edition, start_edition

    config = write_config(tmp_path, sqlite_url, smtp_port=smtp_server.port, editors=())
    app = App.from_path(config, environ={})
    add_posts(app.engine, 2)
    reader = app.subscribers.add(READER, "zh-Hans", confirmed=True)
    app.subscribers.add("other-reader@example.com", "en", confirmed=True)
    edition = app.editions.create()
    start_edition(app, edition)                     # the rows are written...
    assert app.subscribers.set_language(reader, "en")  # ...then the reader changes language

    async def send() -> None:
        try:
            await send_edition(app, edition)
        finally:
            await app.transport.aclose()

    asyncio.run(send())
    languages = {m.message()["Content-Language"] for m in smtp_server.received
                 if READER in m.rcpt_tos}
    assert languages == {"zh-Hans"}
    report = edition_report(app.engine, edition)
    assert report.by_language["zh-Hans"][OutboxState.SENT] == 1
    assert report.by_language["en"][OutboxState.SENT] == 1
    text = format_report(report)
    assert "language" in text
    assert "zh-Hans" in text
    app.engine.dispose()
