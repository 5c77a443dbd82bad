"""Unsubscribing by mail (now one kind of inbound mail, ``mailer.inbound``): the token in the
mailto subject, a real Maildir, the real store, and the whole way from a delivered newsletter
to an unsubscribed reader."""

from __future__ import annotations

import email
import mailbox
import re
from email import policy
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.inbound.commands import Command, parse_command
from mailer.inbound.maildir import UNMATCHED
from tests.subscribers.support import in_process, listed_ids, write_config

token = st.from_regex(r"[A-Za-z0-9_-]{16,60}", fullmatch=True)


def tokens_in(raw: bytes) -> list[str]:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    body = msg.get_body(preferencelist=("plain",))
    found = parse_command(str(msg["Subject"] or ""), str(body.get_content()) if body else "")
    return [found.argument] if found is not None and found.argument else []


def request(subject: str, body: str = "", sender: str = "reader@qq.com") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "unsubscribe@example.org"
    msg["Subject"] = subject
    msg.set_content(body or "\n")
    return msg.as_bytes()


@given(token, st.sampled_from(["unsubscribe {t}", "Re: unsubscribe {t}", "UNSUBSCRIBE  {t}",
                               "退订 / unsubscribe {t}", "Re: 退訂 {t}"]))
def test_the_token_is_found_in_the_subject_however_a_client_dresses_it(
        tok: str, shape: str) -> None:
    assert tokens_in(request(shape.format(t=tok))) == [tok]


@given(token)
def test_the_token_is_found_in_the_body_too_and_nothing_else_counts(tok: str) -> None:
    assert tokens_in(request("Re: the digest", f"unsubscribe {tok}\n\n> quoted\n")) == [tok]
    assert tokens_in(request("hello", f"see https://news.example.org/u/{tok}")) == []
    assert tokens_in(request("unsubscribe", "")) == []
    # A quoted footer is never the reader's words.
    assert parse_command("Re: 公民权利通讯", f"> 退订 / unsubscribe {tok}\n") is None
    assert parse_command("Re: 公民权利通讯", "退订\n> footer") == Command("unsubscribe")


def test_an_encoded_subject_is_decoded() -> None:
    raw = (b"From: reader@qq.com\r\nTo: unsubscribe@example.org\r\n"
           b"Subject: =?utf-8?b?6YCA6K6iIHVuc3Vic2NyaWJlIEFBQUFCQkJCQ0NDQ0RERERF?=\r\n"
           b"\r\nbody\r\n")
    assert tokens_in(raw) == ["AAAABBBBCCCCDDDDE"]


def maildir(folder: Path) -> mailbox.Maildir:
    folder.parent.mkdir(parents=True, exist_ok=True)
    return mailbox.Maildir(folder, create=True)


def test_from_a_delivered_newsletter_to_an_unsubscribed_reader(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    text = config.read_text(encoding="utf-8")
    # The older key still works: it is read like [inbound] maildir.
    config.write_text(text.replace("[web]\n", '[web]\nunsubscribe_maildir = "mail/unsubscribe"\n'),
                      encoding="utf-8")
    assert len(listed_ids(config, "wei.lan@qq.com,zh-Hans\n")) == 1
    assert in_process(config, "poll") == 0
    assert in_process(config, "send") == 0
    [delivered] = (tmp_path / "data" / "outbox" / "new").glob("*")
    letter = email.message_from_bytes(delivered.read_bytes(), policy=policy.default)
    mailto = re.search(r"<(mailto:[^>]+)>", str(letter["List-Unsubscribe"]))
    assert mailto is not None
    # What a mail client does with the mailto: a message to its address, with its subject.
    target = urlsplit(mailto.group(1))
    subject = parse_qs(target.query)["subject"][0]
    assert unquote(target.path) == "unsubscribe@example.org"
    box = maildir(tmp_path / "mail" / "unsubscribe")
    box.add(request(subject, sender="wei.lan@qq.com"))
    box.add(request("unsubscribe " + "A" * 32, sender="wei.lan@qq.com"))  # forged token
    capsys.readouterr()

    assert in_process(config, "subscribers", "mailin") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "2 message(s): unmatched 1, unsubscribed 1; 0 answer(s) sent"
    assert len(box) == 0  # handled mail is gone: it held the reader's address
    assert len(box.get_folder(UNMATCHED)) == 1
    assert in_process(config, "subscribers", "count") == 0
    assert capsys.readouterr().out.strip() == "0"
    assert in_process(config, "subscribers", "mailin", "--maildir", str(tmp_path / "nope")) == 2
