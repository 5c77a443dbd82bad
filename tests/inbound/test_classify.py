"""The pure core of inbound mail on real shapes: DSNs and providers' own bounces (Postfix,
Exim, QQ, NetEase, Gmail, Outlook, Yahoo), ARF reports (Yahoo, Outlook), auto-replies, and
readers' commands; plus the VERP token, the plus-addresses and the soft-bounce score."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.config import DEFAULT_CONTENT_REJECTIONS, DeliverySettings
from mailer.delivery.classify import Classifier
from mailer.inbound.addresses import InboundAddresses, Reference, tagged
from mailer.inbound.classify import Kind, classify, decode_text
from mailer.inbound.commands import Command, language_code, parse_command
from mailer.inbound.score import add_soft_bounce, decayed
from mailer.message import message_id_for
from subscribers.tokens import BOUNCE_TOKEN_LENGTH, BadToken, TokenSigner

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
SIGNER = TokenSigner(b"k" * 32, lambda: NOW)
ADDRESSES = InboundAddresses("bounces@example.org", "digest@example.org",
                             frozenset({"example.org"}))
# The shipped rules: the default patterns and the providers' own (mailer/delivery/providers.toml).
RULES = Classifier(DEFAULT_CONTENT_REJECTIONS, max_attempts=8, max_age=timedelta(days=3),
                   backoff_base=timedelta(minutes=1), providers=DeliverySettings().providers)
EDITION, SUBSCRIBER = 7, 4_611_686_018_427_387_909


def fixture(name: str, *, token: str | None = None) -> bytes:
    token = token or SIGNER.bounce_token(EDITION, SUBSCRIBER)
    text = (FIXTURES / name).read_text(encoding="utf-8")
    text = (text.replace("@@VERP@@", tagged("bounces@example.org", token))
            .replace("@@RCPT@@", "wei.lan@corp.example.net")
            .replace("@@READER@@", "digest@example.org")
            .replace("@@MSGID@@", message_id_for(EDITION, SUBSCRIBER, "example.org")))
    return text.replace("\n", "\r\n").encode("utf-8")


@pytest.mark.parametrize(("name", "kind", "status"), [
    ("postfix_user_unknown.eml", Kind.HARD_BOUNCE, "5.1.1"),
    ("outlook_not_found.eml", Kind.HARD_BOUNCE, "5.1.10"),
    ("gmail_over_quota.eml", Kind.SOFT_BOUNCE, "5.2.2"),
    ("exim_mailbox_full.eml", Kind.SOFT_BOUNCE, "5.2.2"),
    ("yahoo_deferred.eml", Kind.SOFT_BOUNCE, "4.7.0"),
    ("qq_content_denied.eml", Kind.CONTENT_REJECTED, ""),
    ("netease_dt_spm.eml", Kind.CONTENT_REJECTED, ""),
    # Sina's own shape: GBK, quoted-printable, no DSN part, the returned headers only.
    ("sina_user_unknown.eml", Kind.HARD_BOUNCE, "5.1.1"),
    ("sina_content_spam.eml", Kind.CONTENT_REJECTED, "5.7.1"),
    # The verdict only in the notice, in Chinese: no SMTP line, or one that says nothing.
    ("qq_content_zh_only.eml", Kind.CONTENT_REJECTED, ""),  # UTF-8, base64
    ("qq_mailbox_full_zh_only.eml", Kind.SOFT_BOUNCE, ""),  # UTF-8, quoted-printable
    ("netease_user_unknown_gbk.eml", Kind.HARD_BOUNCE, ""),  # GBK, base64, no charset label
    ("sina_rejected_zh_verdict.eml", Kind.CONTENT_REJECTED, ""),  # GBK labelled gb2312, QP
    ("aliyun_dsn_zh_content.eml", Kind.CONTENT_REJECTED, "5.0.0"),  # a DSN, GB18030 notice
    # QQ says this when throttling or refusing content: never a hard bounce on its own.
    ("qq_access_denied.eml", Kind.SOFT_BOUNCE, ""),
    ("postfix_delayed.eml", Kind.IGNORED, ""),
    ("yahoo_arf.eml", Kind.COMPLAINT, ""),
    ("outlook_arf.eml", Kind.COMPLAINT, ""),
    ("vacation_to_verp.eml", Kind.IGNORED, ""),
    ("vacation_to_reader_address.eml", Kind.IGNORED, ""),
])
def test_each_shape_gets_its_kind(name: str, kind: Kind, status: str) -> None:
    verdict = classify(fixture(name), addresses=ADDRESSES, rules=RULES)
    assert verdict.kind is kind, verdict
    assert verdict.status == status
    if kind in (Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE, Kind.CONTENT_REJECTED):
        # The VERP address names the message, whatever the provider's shape.
        assert Reference("verp", SIGNER.bounce_token(EDITION, SUBSCRIBER)) in verdict.references


def test_a_gbk_provider_bounce_is_read_in_its_own_charset() -> None:
    """Sina writes its notice in GBK, quoted-printable: the reply line is found in the decoded
    text."""
    raw = fixture("sina_content_spam.eml")
    assert "垃圾邮件".encode() not in raw  # only as GBK quoted-printable
    verdict = classify(raw, addresses=ADDRESSES, rules=RULES)
    assert verdict.reply == "554 5.7.1 Message rejected: content looks like spam"
    assert verdict.kind is Kind.CONTENT_REJECTED  # the reader stays; the edition's report counts it


@pytest.mark.parametrize(("name", "words"), [
    ("qq_content_zh_only.eml", "未被许可的信息"),
    ("netease_user_unknown_gbk.eml", "用户不存在"),
    ("sina_rejected_zh_verdict.eml", "被判定为垃圾邮件"),
    ("aliyun_dsn_zh_content.eml", "判定为垃圾邮件"),
])
def test_the_chinese_line_that_decided_is_the_reply_kept(name: str, words: str) -> None:
    """The editors' report shows why: the notice's line, decoded from its own charset."""
    raw = fixture(name)
    assert words.encode("utf-8") not in raw  # encoded: base64 or GBK quoted-printable
    verdict = classify(raw, addresses=ADDRESSES, rules=RULES)
    assert words in verdict.reply


def test_an_english_reply_that_is_certain_outranks_the_notice() -> None:
    """A 5.1.1 is a bounce and QQ's ambiguous refusal stays soft, whatever the notice adds."""
    raw = fixture("qq_access_denied.eml").replace(
        "退信原因".encode(), "退信原因 该邮件被退回: 被判定为垃圾邮件".encode())
    assert classify(raw, addresses=ADDRESSES, rules=RULES).kind is Kind.SOFT_BOUNCE
    raw = fixture("sina_user_unknown.eml")
    assert classify(raw, addresses=ADDRESSES, rules=RULES).kind is Kind.HARD_BOUNCE


_GB_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@given(_GB_TEXT, st.sampled_from(["gb2312", "GBK", "gb18030", "cp936", "x-gbk", "euc-cn"]))
def test_decode_text_reads_every_gb_label_as_gb18030(text: str, label: str) -> None:
    assert decode_text(text.encode("gb18030"), label) == text


@given(_GB_TEXT, st.sampled_from([None, "", "us-ascii", "x-unknown", "utf-8", "UTF8"]))
def test_decode_text_reads_utf8_under_a_missing_or_wrong_label(text: str, label: str | None) -> None:
    assert decode_text(text.encode("utf-8"), label) == text


@given(st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5), min_size=2,
               max_size=40))
def test_decode_text_guesses_gbk_without_a_label(text: str) -> None:
    data = text.encode("gbk")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        assert decode_text(data, None) == text
    else:
        assert decode_text(data, None) == data.decode("utf-8")  # both read: UTF-8 first


@given(st.binary(max_size=200), st.one_of(st.none(), st.text(max_size=20),
                                          st.sampled_from(["hex", "base64", "utf-16", "big5"])))
def test_decode_text_never_raises(data: bytes, label: str | None) -> None:
    assert isinstance(decode_text(data, label), str)


def plain(name: str, message_id: str | None = None) -> bytes:
    """A fixture as it comes when a relay rewrote the envelope sender: to the plain bounce
    address, no VERP token anywhere; ``message_id``: what the returned headers carry instead
    of ours."""
    raw = fixture(name).replace(tagged("bounces@example.org", SIGNER.bounce_token(
        EDITION, SUBSCRIBER)).encode(), b"bounces@example.org")
    if message_id is not None:
        raw = raw.replace(message_id_for(EDITION, SUBSCRIBER, "example.org").encode(),
                          message_id.encode())
    return raw


def test_a_dsn_at_the_plain_address_names_its_failed_recipient() -> None:
    verdict = classify(plain("postfix_user_unknown.eml", "<x.1@relay.example.net>"),
                       addresses=ADDRESSES, rules=RULES)
    assert (verdict.kind, verdict.status, verdict.references) == (Kind.HARD_BOUNCE, "5.1.1", ())
    assert verdict.recipients == ("wei.lan@corp.example.net",)
    assert "recipients" not in repr(verdict)  # not shown (the reply is scrubbed before use)
    # Our Message-ID, when it comes back, names the message: the pipeline prefers it.
    ours = classify(plain("postfix_user_unknown.eml"), addresses=ADDRESSES, rules=RULES)
    assert ours.references == (Reference("message-id", f"{EDITION}.{SUBSCRIBER:016x}"),)
    relayed = classify(fixture("relay_rewritten_dsn.eml"), addresses=ADDRESSES, rules=RULES)
    assert (relayed.kind, relayed.references) == (Kind.HARD_BOUNCE, ())
    assert relayed.recipients == ("wei.lan@corp.example.net",)


def test_a_providers_bounce_at_the_plain_address_is_a_bounce_not_an_auto_reply() -> None:
    """Exim's own shape (Mailman's detectors know it), and QQ's with our Message-ID returned."""
    exim = classify(plain("exim_mailbox_full.eml", "<x.2@relay.example.net>"),
                    addresses=ADDRESSES, rules=RULES)
    assert (exim.kind, exim.status) == (Kind.SOFT_BOUNCE, "5.2.2")
    assert exim.recipients == ("wei.lan@corp.example.net",)
    qq = classify(plain("qq_content_zh_only.eml"), addresses=ADDRESSES, rules=RULES)
    assert qq.kind is Kind.CONTENT_REJECTED
    assert qq.references == (Reference("message-id", f"{EDITION}.{SUBSCRIBER:016x}"),)
    # Without recipients nor our Message-ID it names nothing: still only an automatic mail.
    lost = classify(plain("qq_content_zh_only.eml", "<x.3@relay.example.net>"),
                    addresses=ADDRESSES, rules=RULES)
    assert lost.kind is Kind.IGNORED


def test_a_persons_mail_quoting_a_bounce_is_no_bounce() -> None:
    body = ("Final-Recipient: rfc822; wei.lan@corp.example.net\r\nAction: failed\r\n"
            "550 5.1.1 User unknown\r\n用户不存在\r\n")
    for to in ("bounces@example.org", "digest@example.org"):
        verdict = classify(reader_mail("why did this bounce?", body, to=to),
                           addresses=ADDRESSES, rules=RULES)
        assert verdict.kind not in (Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE, Kind.CONTENT_REJECTED)


def test_a_redacted_arf_report_still_names_our_message_by_its_message_id() -> None:
    verdict = classify(fixture("yahoo_arf.eml"), addresses=ADDRESSES, rules=RULES)
    assert Reference("message-id", f"{EDITION}.{SUBSCRIBER:016x}") in verdict.references
    outlook = classify(fixture("outlook_arf.eml"), addresses=ADDRESSES, rules=RULES)
    assert Reference("verp", SIGNER.bounce_token(EDITION, SUBSCRIBER)) in outlook.references


def test_the_envelope_recipient_counts_when_headers_do_not_name_it() -> None:
    raw = fixture("qq_content_denied.eml").replace(b"Delivered-To:", b"X-Other:")
    raw = raw.replace(b"To: bounces+", b"To: someone+")
    token = SIGNER.bounce_token(EDITION, SUBSCRIBER)
    assert classify(raw, addresses=ADDRESSES, rules=RULES).kind is not Kind.CONTENT_REJECTED
    verdict = classify(raw, addresses=ADDRESSES, rules=RULES,
                       envelope=[tagged("bounces@example.org", token)])
    assert verdict.kind is Kind.CONTENT_REJECTED


def reader_mail(subject: str, body: str, to: str = "digest@example.org", **headers: str) -> bytes:
    head = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return (f"From: reader@qq.com\r\nTo: {to}\r\nSubject: {subject}\r\n{head}"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body).encode("utf-8")


@pytest.mark.parametrize(("subject", "body", "command"), [
    ("订阅", "", Command("subscribe")),
    ("subscribe zh-hant", "", Command("subscribe", "zh-hant")),
    ("", "訂閱 繁體\n", Command("subscribe", "繁體")),
    ("Re: 公民权利通讯 2026-12-01", "退订\n\n> 回复 退订 / unsubscribe 即可退订", Command("unsubscribe")),
    ("Re: 公民权利通讯", "> 退订 / unsubscribe\nthanks for the news", None),
    ("Re: Mirrors are down", "great issue", None),  # an edition's subject is not a command
    ("镜像", "", Command("mirrors")),
    ("hello", "HELP", Command("help")),
    ("language en", "", Command("language", "en")),
    ("Please add me", "I would like to subscribe", None),
])
def test_commands_in_english_and_chinese(subject: str, body: str, command: Command | None) -> None:
    assert parse_command(subject, body) == command


def test_a_command_comes_with_the_tag_and_the_sender() -> None:
    verdict = classify(reader_mail("subscribe", "", to="digest+zh-hant@example.org"),
                       addresses=ADDRESSES, rules=RULES)
    assert verdict.kind is Kind.COMMAND
    assert verdict.command == Command("subscribe")
    assert verdict.tag == Reference("language", "zh-hant")
    assert verdict.sender == "reader@qq.com"
    assert "reader@qq.com" not in repr(verdict)  # logs never show the address


def test_auto_replies_and_loops_are_never_commands() -> None:
    for headers in ({"Auto_Submitted": "auto-replied"}, {"Precedence": "bulk"},
                    {"X_Autoreply": "yes"}):
        assert classify(reader_mail("help", "", **headers), addresses=ADDRESSES,
                        rules=RULES).kind is Kind.IGNORED
    assert classify(reader_mail("help", "", Auto_Submitted="no"), addresses=ADDRESSES,
                    rules=RULES).kind is Kind.COMMAND
    daemon = reader_mail("help", "").replace(b"From: reader@qq.com", b"From: MAILER-DAEMON@qq.com")
    assert classify(daemon, addresses=ADDRESSES, rules=RULES).kind is Kind.IGNORED


def test_a_reply_to_a_confirmation_is_recognised_by_its_tag() -> None:
    token = "A" * 38
    verdict = classify(reader_mail("Re: Confirm", "yes please", to=f"digest+c-{token}@example.org"),
                       addresses=ADDRESSES, rules=RULES)
    assert verdict.kind is Kind.COMMAND
    assert verdict.tag == Reference("confirm", token)


@given(st.integers(0, 2**31), st.integers(-(2**63), 2**63 - 1))
def test_bounce_tokens_round_trip_in_any_case_and_name_no_address(edition: int, sid: int) -> None:
    token = SIGNER.bounce_token(edition, sid)
    assert len(token) == BOUNCE_TOKEN_LENGTH
    assert token == token.lower()
    assert token.isalnum()
    assert SIGNER.verify_bounce(token.upper()) == (edition, sid)
    assert len(tagged("bounces@example.org", token).partition("@")[0]) <= 64  # RFC 5321


@given(st.integers(0, 2**31), st.integers(0, 2**62), st.integers(0, BOUNCE_TOKEN_LENGTH - 1))
def test_a_changed_bounce_token_is_refused(edition: int, sid: int, at: int) -> None:
    token = SIGNER.bounce_token(edition, sid)
    changed = token[:at] + ("a" if token[at] != "a" else "b") + token[at + 1:]
    with pytest.raises(BadToken):
        SIGNER.verify_bounce(changed)


@given(st.lists(st.floats(0, 30 * 86400), min_size=1, max_size=10))
def test_the_soft_bounce_score_decays_and_one_bounce_is_one(gaps: list[float]) -> None:
    half = timedelta(days=7)
    score, last, now = 0.0, None, NOW
    for gap in gaps:
        now = now + timedelta(seconds=gap)
        before = decayed(score, last, now, half) if last is not None else 0.0
        score, last = add_soft_bounce(score, last, now, half), now
        assert score == pytest.approx(before + 1)
        assert 1 <= score <= len(gaps)
    assert decayed(score, now, now + half, half) == pytest.approx(score / 2)


def test_three_bounces_in_a_day_reach_three_and_a_month_apart_do_not() -> None:
    half = timedelta(days=7)
    close = add_soft_bounce(add_soft_bounce(1.0, NOW, NOW + timedelta(hours=1), half),
                            NOW + timedelta(hours=1), NOW + timedelta(hours=2), half)
    assert close == 3.0  # on one day, no decay: the default threshold is reached
    apart = add_soft_bounce(add_soft_bounce(1.0, NOW, NOW + timedelta(days=30), half),
                            NOW + timedelta(days=30), NOW + timedelta(days=60), half)
    assert apart < 1.2


def test_language_words() -> None:
    assert language_code("繁體") == "zh-Hant"
    assert language_code("zh-hans") == "zh-Hans"
    assert language_code("English") == "en"
    assert language_code("zh-hans+en") == "zh-Hans+en"
