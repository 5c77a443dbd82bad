"""``newsletter inbound`` end to end, as an operator runs it: a real edition sent through the
Maildir transport (VERP envelope, tagged Reply-To), real bounce and ARF files dropped in the
inbound Maildir, the real command in a subprocess, the real database read back."""

from __future__ import annotations

import contextlib
import email
import mailbox
import os
import re
import smtplib
import subprocess
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from mailer.app import App
from mailer.inbound.maildir import UNMATCHED, InboundReport, process_maildir
from mailer.inbound.replies import SUBJECT_LIMIT
from mailer.pipeline.inbound import Inbound
from mailer.render.catalog import catalog_for
from mailer.schema import outbox, soft_bounces
from subscribers.lifecycle import SubscriberState
from tests.inbound.test_classify import FIXTURES
from tests.subscribers.support import (
    NEWSLETTER,
    REPO,
    Server,
    in_process,
    listed_ids,
    run,
    write_config,
)
from tests.support.smtp import SMTPServer

READERS = {name: f"{name}@corp.example.net" for name in
           ("hard", "content", "complaint", "away", "soft1", "soft3", "qq", "leaver", "sina")}


@pytest.fixture
def relay() -> Iterator[SMTPServer]:
    """aiosmtpd as the relay: it records each message's envelope sender (the VERP address)."""
    server = SMTPServer().start()
    yield server
    server.stop()


def setup(tmp_path: Path, relay: SMTPServer) -> Path:
    config = write_config(tmp_path)
    text = config.read_text(encoding="utf-8")
    text = text.replace('transport = "maildir"\nmaildir = "data/outbox"\n',
                        'transport = "smtp"\nenvelope_from = "bounces@example.org"\n'
                        f'[[delivery.relays]]\nhost = "127.0.0.1"\nport = {relay.port}\n'
                        'security = "none"\nconnections = 1\nrate = 0\n')
    text += '\n[inbound]\nmaildir = "mail/inbound"\naddress = "digest@example.org"\n'
    config.write_text(text, encoding="utf-8")
    (tmp_path / "mail").mkdir()
    mailbox.Maildir(tmp_path / "mail" / "inbound", create=True)
    listed_ids(config, "".join(f"{a},en\n" for a in READERS.values()))
    assert in_process(config, "poll") == 0
    assert in_process(config, "send") == 0
    return config


def sent(relay: SMTPServer) -> dict[str, tuple[str, EmailMessage]]:
    """The first message the relay took for each recipient, with its envelope sender."""
    out: dict[str, tuple[str, EmailMessage]] = {}
    for got in relay.received:
        for rcpt in got.rcpt_tos:
            out.setdefault(rcpt, (got.mail_from, got.message()))
    return out


def delivered_to(relay: SMTPServer, address: str) -> list[EmailMessage]:
    return [got.message() for got in relay.received if address in got.rcpt_tos]


def subscribe_on_the_web(server: Server, relay: SMTPServer, reader: str) -> str:
    """Subscribe ``reader`` on the real server's form; the confirm link's path, from the mail."""
    import httpx

    assert httpx.post(f"{server.base}/subscribe", data={"email": reader, "language": "en"},
                      timeout=30).status_code == 200
    deadline = time.monotonic() + 30
    while not delivered_to(relay, reader):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    [confirmation] = delivered_to(relay, reader)
    body = confirmation.get_body(("plain",))
    assert body is not None
    link = re.search(r"http://127\.0\.0\.1(/confirm/\S+)", body.get_content())
    assert link is not None
    return link.group(1)


def drop(config: Path, relay: SMTPServer, name: str, reader: str) -> None:
    """A fixture file as the bounce of the message ``reader`` got."""
    verp, letter = sent(relay)[reader]
    text = (FIXTURES / name).read_text(encoding="utf-8")
    text = (text.replace("@@VERP@@", verp).replace("@@RCPT@@", reader)
            .replace("@@READER@@", "digest@example.org")
            .replace("@@MSGID@@", str(letter["Message-ID"])))
    inbox(config).add(text.replace("\n", "\r\n").encode("utf-8"))


def inbox(config: Path) -> mailbox.Maildir:
    return mailbox.Maildir(config.parent / "mail" / "inbound", create=False)


def mail(frm: str, to: str, subject: str, body: str = "", **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = frm, to, subject
    msg["Message-ID"] = email.utils.make_msgid("r", "qq.com")
    for k, v in headers.items():
        msg[k.replace("_", "-")] = v
    msg.set_content(body or "\n")
    return msg.as_bytes()


def inbound(config: Path, *args: str) -> str:
    result = run(config, "inbound", *args)
    assert result.code == 0, result.err
    return result.out


def state(config: Path, address: str) -> SubscriberState:
    app = App.from_path(config)
    try:
        record = app.subscribers.lookup(address)
        assert record is not None
        return record.state
    finally:
        app.engine.dispose()


def row_state(config: Path, address: str) -> str:
    app = App.from_path(config)
    try:
        record = app.subscribers.lookup(address)
        assert record is not None
        with app.engine.connect() as conn:
            return str(conn.execute(select(outbox.c.state).where(
                outbox.c.subscriber_id == record.id)).scalar_one())
    finally:
        app.engine.dispose()


def test_each_message_gets_a_verp_envelope_a_tagged_reply_to_and_a_feedback_id(
        tmp_path: Path, relay: SMTPServer) -> None:
    config = setup(tmp_path, relay)
    letters = sent(relay)
    assert len(letters) == len(READERS)
    envelopes = {verp for verp, _ in letters.values()}
    assert len(envelopes) == len(READERS)  # one per message
    app = App.from_path(config)
    try:
        for address, (verp, letter) in letters.items():
            assert re.fullmatch(r"bounces\+[a-z2-7]{42}@example\.org", verp)
            assert re.fullmatch(r"digest\+r-[a-z2-7]{42}@example\.org", str(letter["Reply-To"]))
            assert re.fullmatch(r"e1:[a-z-]+:newsletter:example\.org", str(letter["Feedback-ID"]))
            # The token is the MAC of (edition, subscriber): it maps back without decryption
            # and carries nothing of the address (a substring test would fail by chance).
            token = verp.partition("+")[2].partition("@")[0]
            record = app.subscribers.lookup(address)
            assert record is not None
            assert app.tokens.verify_bounce(token) == (1, record.id)
            assert str(letter["Reply-To"]) == f"digest+r-{token}@example.org"
            assert address.partition("@")[2] not in verp + str(letter["Feedback-ID"])
    finally:
        app.engine.dispose()


def test_bounces_and_complaints_act_once_and_leave_nothing_behind(tmp_path: Path, relay: SMTPServer) -> None:
    config = setup(tmp_path, relay)
    drop(config, relay, "postfix_user_unknown.eml", READERS["hard"])
    drop(config, relay, "qq_content_denied.eml", READERS["content"])
    drop(config, relay, "yahoo_arf.eml", READERS["complaint"])
    drop(config, relay, "vacation_to_verp.eml", READERS["away"])
    drop(config, relay, "qq_access_denied.eml", READERS["qq"])
    drop(config, relay, "sina_user_unknown.eml", READERS["sina"])  # GBK, Sina's own shape
    before = len(relay.received)

    out = inbound(config)
    assert out.splitlines()[0] == ("6 message(s): complaint 1, content_rejected 1, hard_bounce 2, "
                                   "ignored 1, soft_bounce 1; 0 answer(s) sent")
    assert state(config, READERS["hard"]) is SubscriberState.BOUNCED
    assert state(config, READERS["sina"]) is SubscriberState.BOUNCED
    assert row_state(config, READERS["hard"]) == "bounced"
    # A content verdict is the editors' problem, not the reader's: they stay.
    assert state(config, READERS["content"]) is SubscriberState.ACTIVE
    assert row_state(config, READERS["content"]) == "content_rejected"
    assert state(config, READERS["complaint"]) is SubscriberState.COMPLAINED
    assert state(config, READERS["away"]) is SubscriberState.ACTIVE
    assert state(config, READERS["qq"]) is SubscriberState.ACTIVE  # QQ's ambiguous refusal
    assert len(relay.received) == before  # an auto-reply is never answered
    assert len(inbox(config)) == 0  # handled mail held addresses: gone
    assert UNMATCHED not in inbox(config).list_folders()
    # The editors see the content rejection per domain.
    report = run(config, "editions", "report", "1")
    assert report.code == 0, report.err
    lines = report.out.splitlines()
    head = next(line for line in lines if line.startswith("domain")).split()
    total = next(line for line in lines if line.startswith("total")).split()
    columns = dict(zip(head[1:], total[1:], strict=True))
    assert (columns["content_rejected"], columns["bounced"]) == ("1", "2")
    # Privacy: nothing in the inbound folder or the database spells the addresses.
    for path in [*(tmp_path / "mail").rglob("*"), tmp_path / "data" / "newsletter.db"]:
        if path.is_file():
            data = path.read_bytes()
            for address in READERS.values():
                assert address.encode() not in data, path


def test_three_soft_bounces_suppress_and_one_does_not(tmp_path: Path, relay: SMTPServer) -> None:
    config = setup(tmp_path, relay)
    drop(config, relay, "gmail_over_quota.eml", READERS["soft1"])
    for name in ("gmail_over_quota.eml", "exim_mailbox_full.eml", "yahoo_deferred.eml"):
        drop(config, relay, name, READERS["soft3"])
    out = inbound(config)
    assert "soft_bounce 4" in out
    assert state(config, READERS["soft1"]) is SubscriberState.ACTIVE
    assert state(config, READERS["soft3"]) is SubscriberState.BOUNCED


def test_a_crash_before_or_after_the_commit_loses_nothing_and_acts_once(tmp_path: Path, relay: SMTPServer) -> None:
    config = setup(tmp_path, relay)
    drop(config, relay, "gmail_over_quota.eml", READERS["soft1"])
    folder = tmp_path / "mail" / "inbound"
    app = App.from_path(config)
    try:
        def before_commit(raw: bytes, envelope: object) -> object:
            raise OSError("the database went away")

        report = process_maildir(folder, before_commit)
        assert (report.read, report.failed, len(inbox(config))) == (1, 1, 1)  # still there

        handler = Inbound(app)

        def after_commit(raw: bytes, envelope: object) -> object:
            handler.handle(raw, ())
            raise KeyboardInterrupt  # the process dies before the file is removed

        with pytest.raises(KeyboardInterrupt):
            process_maildir(folder, after_commit)
        assert len(inbox(config)) == 1
        again: InboundReport = process_maildir(folder, Inbound(app).handle)
        assert again.kinds["soft_bounce"] == 1
        assert len(inbox(config)) == 0
        with app.engine.connect() as conn:
            score = conn.execute(select(soft_bounces.c.score)).scalar_one()
        assert score == pytest.approx(1.0)  # counted once, not twice
    finally:
        app.engine.dispose()


def test_subscribe_confirm_by_mail_end_to_end(tmp_path: Path, relay: SMTPServer) -> None:
    config = setup(tmp_path, relay)
    stranger = "xiao.ming@qq.com"
    inbox(config).add(mail(stranger, "digest+zh-hant@example.org", "订阅"))
    out = inbound(config)
    assert "subscribe 1" in out
    [confirmation] = delivered_to(relay, stranger)
    reply_to = str(confirmation["Reply-To"])
    assert re.fullmatch(r"digest\+c-[A-Za-z0-9_-]{38}@example\.org", reply_to)
    assert state(config, stranger) is SubscriberState.PENDING
    # The reader's client answers to the Reply-To, quoting the mail.
    inbox(config).add(mail(stranger, reply_to, "Re: " + str(confirmation["Subject"]),
                           "> please confirm"))
    assert "confirmed 1" in inbound(config)
    assert state(config, stranger) is SubscriberState.ACTIVE
    # The welcome: the latest edition right away, not only the next one; and only once.
    [_, welcome] = delivered_to(relay, stranger)
    assert str(welcome["Message-ID"]).startswith("<e1.")  # edition 1, in the reader's language
    assert str(welcome["Subject"]).startswith("公民權利通訊")
    assert re.fullmatch(r"digest\+r-[a-z2-7]{42}@example\.org", str(welcome["Reply-To"]))
    inbox(config).add(mail(stranger, reply_to, "Re: again", "> please confirm"))
    inbound(config)
    assert len(delivered_to(relay, stranger)) == 2
    app = App.from_path(config)
    try:
        record = app.subscribers.lookup(stranger)
        assert record is not None
        assert record.language == "zh-Hant"  # the plus-address carried it
    finally:
        app.engine.dispose()


def test_a_forged_unsubscribe_does_nothing_but_ask_the_real_reader(tmp_path: Path, relay: SMTPServer) -> None:
    config = setup(tmp_path, relay)
    victim = READERS["leaver"]
    inbox(config).add(mail(victim, "digest@example.org", "unsubscribe"))  # From is forged
    inbox(config).add(mail(victim, "digest@example.org", "unsubscribe " + "A" * 32))
    out = inbound(config)
    assert "leave 1" in out
    assert "unmatched 1" in out
    assert state(config, victim) is SubscriberState.ACTIVE
    [ask] = delivered_to(relay, victim)[1:]  # after the edition: "reply to leave"
    assert str(ask["Auto-Submitted"]) == "auto-replied"
    leave = str(ask["Reply-To"])
    assert re.fullmatch(r"digest\+u-[A-Za-z0-9_-]{32}@example\.org", leave)
    # Only the mailbox's owner sees that mail; their reply unsubscribes.
    inbox(config).add(mail(victim, leave, "Re: " + str(ask["Subject"]), "yes"))
    assert "unsubscribed 1" in inbound(config)
    assert state(config, victim) is SubscriberState.UNSUBSCRIBED


def test_replying_退订_to_an_edition_unsubscribes_by_its_reply_to(tmp_path: Path, relay: SMTPServer) -> None:
    config = setup(tmp_path, relay)
    reader = READERS["leaver"]
    _, letter = sent(relay)[reader]
    # The reply comes from another address (a forward, an alias): the Reply-To token decides.
    inbox(config).add(mail("alias@163.com", str(letter["Reply-To"]),
                           "Re: " + str(letter["Subject"]),
                           "退订\n\n> 回复 退订 / unsubscribe 即可退订"))
    assert "unsubscribed 1" in inbound(config)
    assert state(config, reader) is SubscriberState.UNSUBSCRIBED


def test_the_reply_limit_holds_across_two_processes(tmp_path: Path, relay: SMTPServer) -> None:
    config = setup(tmp_path, relay)
    asker = "curious@qq.com"
    for i in range(2):
        inbox(config).add(mail(asker, "digest@example.org", "help", f"#{i}"))
    assert "help 2" in inbound(config)
    for i in range(3):
        inbox(config).add(mail(asker, "digest@example.org", "mirrors", f"#{i}"))
    out = inbound(config)  # a second process: the counts are in the database
    assert "mirrors 1" in out
    assert "limited 2" in out
    answers = delivered_to(relay, asker)
    assert len(answers) == 4  # 3 answers, then one warning, then silence
    assert all(str(m["Auto-Submitted"]) == "auto-replied" for m in answers)
    assert "cloudfront" in answers[2].get_content()  # the mirrors answer has the links
    # A stranger is answered in the default language (zh-Hans here), from the one catalog.
    assert str(answers[3]["Subject"]) == catalog_for("zh-Hans").gettext(SUBJECT_LIMIT) == "今天不再回复"
    inbox(config).add(mail(asker, "digest@example.org", "help", "again"))
    inbound(config)
    assert len(delivered_to(relay, asker)) == 4


def test_lmtp_hands_mail_straight_in(tmp_path: Path, relay: SMTPServer) -> None:
    config = setup(tmp_path, relay)
    verp, letter = sent(relay)[READERS["hard"]]
    text = (FIXTURES / "postfix_user_unknown.eml").read_text(encoding="utf-8")
    text = (text.replace("@@VERP@@", verp).replace("@@RCPT@@", READERS["hard"])
            .replace("@@MSGID@@", str(letter["Message-ID"])))
    text = "\n".join(line for line in text.split("\n") if not line.startswith("Delivered-To"))
    with lmtp_listener(config) as port:
        with smtplib.LMTP("127.0.0.1", port) as lmtp:
            refused = lmtp.sendmail("", [verp], text.replace("\n", "\r\n").encode())
        assert refused == {}
        for _ in range(100):
            if state(config, READERS["hard"]) is SubscriberState.BOUNCED:
                break
            time.sleep(0.05)
        assert state(config, READERS["hard"]) is SubscriberState.BOUNCED
        assert len(inbox(config)) == 0  # spooled, handled, removed


@contextlib.contextmanager
def lmtp_listener(config: Path, *options: str) -> Iterator[int]:
    """``newsletter inbound --lmtp 127.0.0.1:0`` in a subprocess; yields its port, then stops
    it with SIGTERM (exit 0). Its output is in ``lmtp.log`` beside the config."""
    log_path = config.parent / "lmtp.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*NEWSLETTER, *options, "--config", str(config), "inbound",
                                 "--lmtp", "127.0.0.1:0"], cwd=config.parent, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            port = None
            for _ in range(200):
                found = re.search(r"LMTP on 127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
                if found:
                    port = int(found.group(1))
                    break
                time.sleep(0.05)
            assert port is not None, log_path.read_text()
            yield port
        finally:
            proc.terminate()
            assert proc.wait(timeout=20) == 0


def test_lmtp_answers_for_each_recipient_and_logs_no_address(tmp_path: Path, relay: SMTPServer) -> None:
    """RFC 2033: a recipient that is not ours is refused at RCPT (550 5.1.1), DATA answers once
    for each recipient taken; and with ``-v`` the log still holds no address."""
    config = setup(tmp_path, relay)
    verp, letter = sent(relay)[READERS["hard"]]
    text = (FIXTURES / "postfix_user_unknown.eml").read_text(encoding="utf-8")
    text = (text.replace("@@VERP@@", verp).replace("@@RCPT@@", READERS["hard"])
            .replace("@@MSGID@@", str(letter["Message-ID"])))
    stranger = "someone.else@elsewhere.example"
    text_config = config.read_text(encoding="utf-8")
    config.write_text(text_config.replace('address = "digest@example.org"\n',
                                          'address = "digest@example.org"\nmailboxes = ["fbl@example.org"]\n'),
                      encoding="utf-8")
    with lmtp_listener(config, "-v") as port, smtplib.LMTP("127.0.0.1", port) as lmtp:
        lmtp.ehlo_or_helo_if_needed()
        assert lmtp.mail("")[0] == 250
        assert lmtp.rcpt(verp)[0] == 250
        code, reply = lmtp.rcpt(stranger)
        assert (code, reply) == (550, b"5.1.1 no such mailbox here")
        assert lmtp.rcpt("Digest+zh-Hant@EXAMPLE.org")[0] == 250  # a tag, any case
        assert lmtp.rcpt("digest@example.org.evil.example")[0] == 550
        assert lmtp.rcpt("fbl@example.org")[0] == 250  # [inbound] mailboxes
        first = lmtp.data(text.replace("\n", "\r\n").encode())
        rest = [lmtp.getreply()[0] for _ in range(2)]
        assert [first[0], *rest] == [250, 250, 250]  # one answer for each recipient taken
        for _ in range(100):
            if state(config, READERS["hard"]) is SubscriberState.BOUNCED:
                break
            time.sleep(0.05)
    assert state(config, READERS["hard"]) is SubscriberState.BOUNCED
    log = (tmp_path / "lmtp.log").read_text(encoding="utf-8", errors="replace")
    assert "refused a recipient" in log
    for address in (stranger, verp, READERS["hard"], "digest+zh-hant"):
        assert address.lower() not in log.lower()


def test_a_bad_inbound_setting_names_file_key_and_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = config.read_text(encoding="utf-8")
    config.write_text(text + '\n[inbound]\nmaildir = "mail/inbound"\n'
                      'address = "digest+news@example.org"\n', encoding="utf-8")
    line = config.read_text(encoding="utf-8").splitlines().index(
        'address = "digest+news@example.org"') + 1
    result = run(config, "inbound")
    assert result.code == 2
    assert "inbound.address" in result.err
    assert f":{line}" in result.err
    assert "newsletter.toml" in result.err
    config.write_text(text + '\n[inbound]\nmaildir = "mail/inbound"\n'
                      'mailboxes = ["fbl@example.org", "fbl+x@example.org"]\n', encoding="utf-8")
    tagged = run(config, "inbound")
    assert tagged.code == 2
    assert "inbound.mailboxes[1]" in tagged.err
    config.write_text(text + '\n[inbound]\nmaildir = "mail/nowhere"\n', encoding="utf-8")
    missing = run(config, "inbound")
    assert missing.code == 2
    assert "not a Maildir" in missing.err


def test_a_reader_who_confirms_on_the_web_gets_the_latest_edition_at_once(
        tmp_path: Path, relay: SMTPServer) -> None:
    """The welcome is the same by web as by mail: confirm on the page, get edition 1 now."""
    import httpx

    from tests.subscribers.support import serve

    config = setup(tmp_path, relay)
    reader = "web.reader@qq.com"
    with serve(config) as server:
        confirm = subscribe_on_the_web(server, relay, reader)
        deadline = time.monotonic() + 30
        page = httpx.post(server.base + confirm, timeout=30)
        assert page.status_code == 200
        while len(delivered_to(relay, reader)) < 2:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        # Confirming again (a second click) sends nothing more.
        assert httpx.post(server.base + confirm, timeout=30).status_code == 200
        time.sleep(1)
    [_, welcome] = delivered_to(relay, reader)
    assert str(welcome["Message-ID"]).startswith("<e1.")
    assert state(config, reader) is SubscriberState.ACTIVE


def test_newsletter_inbound_killed_before_its_commit_loses_nothing_and_acts_once(
        tmp_path: Path, relay: SMTPServer) -> None:
    """SIGKILL of the real command between reading a bounce and committing its effect: this
    test holds the database's write lock, so the command reads the message and then waits on
    the commit; the message stays, and the next run counts the bounce exactly once. Then the
    other window, after the commit and before the file is removed: the same bytes put back
    are recognised and not counted again."""
    import sqlite3

    config = setup(tmp_path, relay)
    drop(config, relay, "gmail_over_quota.eml", READERS["soft1"])
    [key] = list(inbox(config).keys())
    message = tmp_path / "mail" / "inbound" / "new" / key
    raw = message.read_bytes()
    os.utime(message, (message.stat().st_mtime - 10, message.stat().st_mtime))  # a read moves it
    read_before = message.stat().st_atime

    lock = sqlite3.connect(tmp_path / "data" / "newsletter.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # WAL: the command can read, not write
    try:
        output = tmp_path / "inbound.log"
        with output.open("wb") as out:
            proc = subprocess.Popen([*NEWSLETTER, "--config", str(config), "inbound"], cwd=tmp_path,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 60
        while message.stat().st_atime == read_before:  # the command has read the message
            assert proc.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "the command never read the message"
            time.sleep(0.02)
        time.sleep(1.0)  # classified, and now waiting on the lock (busy_timeout is 30 s)
        assert proc.poll() is None
        proc.kill()
        proc.wait(timeout=20)
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    assert message.exists()  # nothing was lost
    assert soft_score(config) is None  # and nothing was done

    assert "soft_bounce 1" in inbound(config)
    assert soft_score(config) == pytest.approx(1.0)
    assert len(inbox(config)) == 0

    inbox(config).add(raw)  # the crash after the commit: the file is still there
    assert "1 message(s)" in inbound(config)
    assert soft_score(config) == pytest.approx(1.0)  # counted once, not twice
    assert len(inbox(config)) == 0


def soft_score(config: Path) -> float | None:
    app = App.from_path(config)
    try:
        with app.engine.connect() as conn:
            return conn.execute(select(soft_bounces.c.score)).scalar_one_or_none()
    finally:
        app.engine.dispose()


def test_chinese_only_verdicts_are_read_in_their_own_charset_end_to_end(
        tmp_path: Path, relay: SMTPServer) -> None:
    """QQ, NetEase and Sina notices whose verdict is only in Chinese (UTF-8 base64, GBK base64
    without a charset label, GBK labelled gb2312): the real command classifies them like the
    English replies, and the row keeps the Chinese line, scrubbed."""
    config = setup(tmp_path, relay)
    drop(config, relay, "qq_content_zh_only.eml", READERS["content"])
    drop(config, relay, "netease_user_unknown_gbk.eml", READERS["hard"])
    drop(config, relay, "qq_mailbox_full_zh_only.eml", READERS["soft1"])
    drop(config, relay, "sina_rejected_zh_verdict.eml", READERS["sina"])
    out = inbound(config)
    assert out.splitlines()[0] == ("4 message(s): content_rejected 2, hard_bounce 1, "
                                   "soft_bounce 1; 0 answer(s) sent")
    assert state(config, READERS["hard"]) is SubscriberState.BOUNCED
    assert row_state(config, READERS["hard"]) == "bounced"
    for reader in (READERS["content"], READERS["sina"]):
        assert state(config, reader) is SubscriberState.ACTIVE  # the content's fault
        assert row_state(config, reader) == "content_rejected"
    assert state(config, READERS["soft1"]) is SubscriberState.ACTIVE
    assert soft_score(config) == pytest.approx(1.0)
    app = App.from_path(config)
    try:
        with app.engine.connect() as conn:
            replies = {r.last_reply for r in conn.execute(select(outbox.c.last_reply))}
    finally:
        app.engine.dispose()
    assert any(r and "未被许可的信息" in r for r in replies)
    assert any(r and "用户不存在" in r for r in replies)


def lmtp_send(port: int, to: str, text: str) -> None:
    with smtplib.LMTP("127.0.0.1", port) as lmtp:
        assert lmtp.sendmail("", [to], text.replace("\n", "\r\n").encode()) == {}


def wait_for(log: Path, needle: str, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while log.read_text(encoding="utf-8", errors="replace").count(needle) < count:
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.05)


def test_a_bounce_at_the_plain_bounce_address_is_recorded_without_its_address(
        tmp_path: Path, relay: SMTPServer) -> None:
    """A relay rewrote the envelope sender, so the DSN comes to ``bounces@example.org`` with no
    VERP token, through the real LMTP server. Its failed recipient is found by blind index and
    their latest message marked; with nothing else to prove it, it is one soft bounce, once per
    message. With our Message-ID returned it is proven and acts at once; one that names no
    subscriber is dropped; the log never spells an address."""
    config = setup(tmp_path, relay)
    log = tmp_path / "lmtp.log"
    rewritten = (FIXTURES / "relay_rewritten_dsn.eml").read_text(encoding="utf-8")
    _, letter = sent(relay)[READERS["sina"]]
    proven = ((FIXTURES / "postfix_user_unknown.eml").read_text(encoding="utf-8")
              .replace("@@VERP@@", "bounces@example.org").replace("@@RCPT@@", READERS["sina"])
              .replace("@@MSGID@@", str(letter["Message-ID"])))
    exim = ((FIXTURES / "exim_mailbox_full.eml").read_text(encoding="utf-8")
            .replace("@@VERP@@", "bounces@example.org").replace("@@RCPT@@", READERS["soft3"])
            .replace("@@MSGID@@", "<relay.9@relay.isp.example>"))
    stranger = "not.a.reader@corp.example.net"
    with lmtp_listener(config, "-v") as port:
        lmtp_send(port, "bounces@example.org", rewritten.replace("@@RCPT@@", READERS["hard"]))
        wait_for(log, "named by its recipient only")
        assert row_state(config, READERS["hard"]) == "bounced"  # the edition report counts it
        assert state(config, READERS["hard"]) is SubscriberState.ACTIVE  # unproven: one point
        assert soft_scores(config) == {READERS["hard"]: pytest.approx(1.0)}
        # Another copy of it (the relay tried again): the same message, no second point.
        again = rewritten.replace("@@RCPT@@", READERS["hard"]).replace("10:04:51", "11:04:51")
        lmtp_send(port, "bounces@example.org", again)
        wait_for(log, "named by its recipient only", 2)
        assert soft_scores(config) == {READERS["hard"]: pytest.approx(1.0)}
        # Exim's own shape, which flufl.bounce knows, at the plain address: no auto-reply.
        lmtp_send(port, "bounces@example.org", exim)
        wait_for(log, "named by its recipient only", 3)
        assert soft_scores(config)[READERS["soft3"]] == pytest.approx(1.0)
        # Our Message-ID came back: it names the message, so the bounce acts at once.
        lmtp_send(port, "bounces@example.org", proven)
        for _ in range(200):
            if state(config, READERS["sina"]) is SubscriberState.BOUNCED:
                break
            time.sleep(0.05)
        assert state(config, READERS["sina"]) is SubscriberState.BOUNCED
        lmtp_send(port, "digest@example.org", rewritten.replace("@@RCPT@@", stranger))
        wait_for(log, "names no subscriber of ours; dropped")
    assert len(inbox(config)) == 0  # handled, removed; nothing kept for a person
    text = log.read_text(encoding="utf-8", errors="replace").lower()
    for address in (stranger, *READERS.values()):
        assert address.lower() not in text
    assert "not.a.reader" not in text


def soft_scores(config: Path) -> dict[str, float]:
    app = App.from_path(config)
    try:
        with app.engine.connect() as conn:
            rows = conn.execute(select(soft_bounces.c.subscriber_id, soft_bounces.c.score)).all()
        return {address: score for sid, score in rows for address in READERS.values()
                if (record := app.subscribers.lookup(address)) is not None and record.id == sid}
    finally:
        app.engine.dispose()
