"""Unsubscribing by mail: the token in the mailto subject, a real Maildir, the real store, and
the whole way from a delivered newsletter to an unsubscribed reader."""

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

from subscribers.lifecycle import SubscriberState
from subscribers.mailin import UNMATCHED, process_maildir, tokens_in
from subscribers.store import SubscriberStore
from subscribers.tokens import TokenSigner
from tests.subscribers.support import in_process, listed_ids, write_config

token = st.from_regex(r"[A-Za-z0-9_-]{16,60}", fullmatch=True)


def request(subject: str, body: str = "", sender: str = "reader@qq.com") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "unsubscribe@example.org"
    msg["Subject"] = subject
    msg.set_content(body or "\n")
    return msg.as_bytes()


@given(token, st.sampled_from(["unsubscribe {t}", "Re: unsubscribe {t}", "UNSUBSCRIBE  {t}",
                               "退订 / unsubscribe {t}"]))
def test_the_token_is_found_in_the_subject_however_a_client_dresses_it(
        tok: str, shape: str) -> None:
    assert tokens_in(request(shape.format(t=tok))) == [tok]


@given(token)
def test_the_token_is_found_in_the_body_too_and_nothing_else_counts(tok: str) -> None:
    assert tokens_in(request("退订", f"Please remove me.\nunsubscribe {tok}\n")) == [tok]
    assert tokens_in(request("hello", f"see https://news.example.org/u/{tok}")) == []
    assert tokens_in(request("unsubscribe", "")) == []


def test_an_encoded_subject_is_decoded() -> None:
    raw = (b"From: reader@qq.com\r\nTo: unsubscribe@example.org\r\n"
           b"Subject: =?utf-8?b?6YCA6K6iIHVuc3Vic2NyaWJlIEFBQUFCQkJCQ0NDQ0RERERF?=\r\n"
           b"\r\nbody\r\n")
    assert tokens_in(raw) == ["AAAABBBBCCCCDDDDE"]


def maildir(folder: Path) -> mailbox.Maildir:
    folder.parent.mkdir(parents=True, exist_ok=True)
    return mailbox.Maildir(folder, create=True)


def test_process_unsubscribes_the_token_not_the_sender_and_keeps_no_copy(
        store: SubscriberStore, signer: TokenSigner, tmp_path: Path) -> None:
    reader = store.add("reader@qq.com", "en", confirmed=True)
    other = store.add("other@163.com", "en", confirmed=True)
    box = maildir(tmp_path / "unsub")
    box.add(request(f"unsubscribe {signer.unsubscribe_token(reader)}", sender="anyone@x.org"))
    box.add(request("unsubscribe", sender="other@163.com"))  # no token: a person decides
    forged = signer.unsubscribe_token(other)
    box.add(request(f"unsubscribe {forged[:-1]}{'B' if forged[-1] != 'B' else 'C'}"))

    report = process_maildir(tmp_path / "unsub", store, signer.verify_unsubscribe)
    assert (report.read, report.unsubscribed, report.unmatched) == (3, 1, 2)
    got = store.get(reader)
    assert got is not None
    assert got.state is SubscriberState.UNSUBSCRIBED
    still = store.get(other)
    assert still is not None
    assert still.state is SubscriberState.ACTIVE  # its From proves nothing
    assert len(box) == 0  # handled messages are gone: they held the readers' addresses
    assert len(box.get_folder(UNMATCHED)) == 2
    again = process_maildir(tmp_path / "unsub", store, signer.verify_unsubscribe)
    assert again.read == 0


def test_from_a_delivered_newsletter_to_an_unsubscribed_reader(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    text = config.read_text(encoding="utf-8")
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
    capsys.readouterr()

    assert in_process(config, "subscribers", "mailin") == 0
    assert capsys.readouterr().out.strip() == (
        "1 messages: 1 readers unsubscribed, 0 without a valid token (moved to .unmatched)")
    assert in_process(config, "subscribers", "count") == 0
    assert capsys.readouterr().out.strip() == "0"
    assert in_process(config, "subscribers", "mailin", "--maildir", str(tmp_path / "nope")) == 2
