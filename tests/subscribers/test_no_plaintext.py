"""The byte search: after import, send, rotation, backup and unsubscribe, no address appears in
any byte the project wrote (database, WAL, backups) or logged, nor a rare recipient domain."""

from __future__ import annotations

import email
import mailbox
import re
import sqlite3
from email import policy
from pathlib import Path

import httpx
import pytest

from tests.subscribers.support import run, serve, write_config

pytestmark = pytest.mark.slow

ADDRESSES = [
    "zhang.wei.q7x3@qq.com",
    "li.na.k2m9@163.com",
    "chen.jie.w5t1@126.com",
    "reader.h8v4@example.org",
    "王小明z9p2@qq.com",
    "lam.k4r8@rights-watch-hk.org",  # a rare domain: it alone could single a reader out
]
RARE_DOMAIN = b"rights-watch-hk"


def needles(address: str) -> list[bytes]:
    local = address.rpartition("@")[0]
    return [address.encode(), local.encode(), address.encode("utf-16-le"),
            address.upper().encode()]


def project_bytes(folder: Path) -> dict[str, bytes]:
    """Every file the project wrote except the delivered mail itself and the inbound mail kept
    for a person (``.unmatched``: it is a reader's letter)."""
    out = {}
    for f in folder.rglob("*"):
        if f.is_file() and "outbox" not in f.parts and ".unmatched" not in f.parts and \
                f.suffix not in (".csv", ".toml"):
            out[str(f.relative_to(folder))] = f.read_bytes()
    return out


def assert_clean(blobs: dict[str, bytes]) -> None:
    for name, data in blobs.items():
        assert RARE_DOMAIN not in data, f"the rare domain found in {name}"
        for address in ADDRESSES:
            for needle in needles(address):
                assert needle not in data, f"{address!r} found in {name}"


def test_no_address_in_any_byte_written(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace('maildir = "data/outbox"\n', 'maildir = "data/outbox"\n'
                                   'envelope_from = "bounces@example.org"\n')
                      + '[inbound]\nmaildir = "mail/inbound"\naddress = "digest@example.org"\n',
                      encoding="utf-8")
    (tmp_path / "mail").mkdir()
    inbox = mailbox.Maildir(tmp_path / "mail" / "inbound", create=True)
    logs: list[str] = []

    def cli(*args: str) -> None:
        result = run(config, "-v", *args)
        logs.extend([result.out, result.err])
        assert result.code == 0, result.err

    cli("keys", "init")
    (tmp_path / "list.csv").write_text(
        "email,language\n" + "".join(f"{a},{lang}\n" for a, lang in
                                     zip(ADDRESSES, ["zh-Hans", "zh-Hant", "en", "zh-Hans+en", "zh-Hans", "en"],
                                         strict=True)),
        encoding="utf-8")
    cli("subscribers", "import", "list.csv", "--confirmed")
    # Hold a connection open so SQLite keeps its WAL file (the last connection to close
    # checkpoints and deletes it): the later writes stay in the WAL for the search.
    holder = sqlite3.connect(tmp_path / "data" / "newsletter.db")
    holder.execute("select count(*) from subscribers").fetchone()
    cli("poll")
    cli("send")
    cli("keys", "rotate")
    cli("subscribers", "export", "backup.bin", "--encrypted")
    cli("subscribers", "count")

    mails = sorted((tmp_path / "data" / "outbox" / "new").glob("*"))
    assert len(mails) == len(ADDRESSES)  # the send really happened, one message each
    # Positive control: the search finds an address where one must be (the delivered mail).
    assert any(ADDRESSES[0].encode() in m.read_bytes() for m in mails)
    first = email.message_from_bytes(mails[0].read_bytes(), policy=policy.default)
    # Inbound mail (issue 17): a bounce that spells the address, a reader's command, a letter.
    for m in mails:
        letter = email.message_from_bytes(m.read_bytes(), policy=policy.default)
        if str(letter["To"]) == ADDRESSES[2]:
            inbox.add((
                "From: MAILER-DAEMON@126.com\r\nTo: bounces@example.org\r\nSubject: failure\r\n"
                'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
                f"--B\r\nContent-Type: text/plain\r\n\r\n<{ADDRESSES[2]}>: user unknown\r\n"
                f"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; 126.com\r\n"
                f"\r\nFinal-Recipient: rfc822; {ADDRESSES[2]}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
                f"Diagnostic-Code: smtp; 550 5.1.1 user {ADDRESSES[2]} unknown\r\n\r\n"
                f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {letter['Message-ID']}\r\n"
                "\r\n--B--\r\n").encode())
    inbox.add(f"From: {ADDRESSES[3]}\r\nTo: digest@example.org\r\nSubject: help\r\n\r\n\r\n"
              .encode())
    inbox.add(f"From: {ADDRESSES[4]}\r\nTo: digest@example.org\r\nSubject: hi\r\n\r\nthanks\r\n"
              .encode())
    cli("inbound")
    assert len(inbox) == 0
    assert len(inbox.get_folder("unmatched")) == 1
    unsub = re.search(r"/u/([A-Za-z0-9_-]+)>", str(first["List-Unsubscribe"]))
    assert unsub is not None

    with serve(config) as server:
        resp = httpx.post(f"{server.base}/u/{unsub.group(1)}",
                          data={"List-Unsubscribe": "One-Click"}, timeout=30)
        assert resp.status_code == 200
        with httpx.Client(base_url=server.base, timeout=30) as client:
            assert client.get("/subscribe").status_code == 200
            form = client.post("/subscribe", data={"email": ADDRESSES[1], "language": "en"})
            assert form.status_code == 200
        # While the server runs, the SQLite WAL and shared-memory files exist: search them too.
        live = project_bytes(tmp_path)
        assert any(name.endswith("-wal") for name in live)
        assert_clean(live)
    logs.append(server.log())
    holder.close()

    assert_clean(project_bytes(tmp_path))
    assert_clean({f"log {i}": text.encode() for i, text in enumerate(logs)})
    count = run(config, "subscribers", "count")
    assert count.out.strip() == str(len(ADDRESSES) - 2)  # the unsubscribe and the bounce held


# A relay that names the recipient without angle brackets, as some do (issue 15, item 6).
RELAY_REPLIES = {
    "secretname3@corp-example.org": "550 mailbox secretname3 unavailable",
    "secretname1@corp-example.org": "550 5.1.1 no such user (secretname1 at corp-example.org)",
    "secretname4@corp-example.org": "450 4.2.0 secretname4%40corp-example.org greylisted",
    "Secretname5@corp-example.org": '550 "SECRETNAME5"@Corp-Example.ORG refused',
}


def test_no_address_from_a_relay_reply_is_stored_or_logged(tmp_path: Path) -> None:
    from tests.support.smtp import RecordingHandler, SMTPServer

    def fault(step: str, envelope: object, count: int) -> str | None:
        if step != "data":  # by DATA the envelope holds the recipient
            return None
        rcpt = getattr(envelope, "rcpt_tos", [])
        return RELAY_REPLIES.get(rcpt[-1]) if rcpt else None

    relay = SMTPServer(RecordingHandler(fault=fault)).start()
    try:
        config = write_config(tmp_path)
        text = config.read_text(encoding="utf-8")
        config.write_text(text.replace(
            'transport = "maildir"\nmaildir = "data/outbox"\n',
            f'transport = "smtp"\n[[delivery.relays]]\nhost = "127.0.0.1"\nport = {relay.port}\n'
            'security = "none"\nconnections = 1\nrate = 0\n'), encoding="utf-8")
        logs: list[str] = []
        for args in (("keys", "init"), ("subscribers", "import", "list.csv", "--confirmed"),
                     ("poll",), ("send",)):
            if args[0] == "subscribers":
                (tmp_path / "list.csv").write_text(
                    "email\n" + "".join(f"{a}\n" for a in RELAY_REPLIES), encoding="utf-8")
            result = run(config, "-v", *args)
            logs.extend([result.out, result.err])
            # ``send`` exits 1 while a deferred message is left, as here by design.
            assert result.code == (1 if args == ("send",) else 0), result.err
        assert relay.handler.ehlos > 0  # the relay really answered
        db = sqlite3.connect(tmp_path / "data" / "newsletter.db")
        replies = [r for (r,) in db.execute("select last_reply from outbox")]
        db.close()
        assert len(replies) == len(RELAY_REPLIES), replies
        assert all(replies), replies
        assert any("<recipient>" in r for r in replies), replies  # scrubbed, and kept
    finally:
        relay.stop()
    blobs = {**project_bytes(tmp_path), **{f"log {i}": t.encode() for i, t in enumerate(logs)}}
    for name, data in blobs.items():
        folded = data.lower()
        for address in RELAY_REPLIES:
            local = address.partition("@")[0].lower().encode()
            assert local not in folded, f"{local!r} found in {name}"
        assert b"corp-example" not in folded, f"the recipients' domain found in {name}"
