"""Reply classification, backoff, scrubbing and dot-stuffing: pure functions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.config import DEFAULT_CONTENT_REJECTIONS, shipped_provider_rules
from mailer.delivery.classify import (
    NO_REPLY,
    Classifier,
    SendResult,
    backoff,
    dot_stuff,
    scrub_reply,
)
from mailer.delivery.providers import Verdict
from mailer.delivery.smtp import parse_replies
from mailer.models import OutboxState

C = Classifier(DEFAULT_CONTENT_REJECTIONS, max_attempts=5, max_age=timedelta(days=3),
               backoff_base=timedelta(minutes=1), providers=shipped_provider_rules())


@pytest.mark.parametrize(("code", "reply", "state"), [
    (250, "2.0.0 Ok: queued", OutboxState.SENT),
    (421, "4.7.0 Too many connections, closing", OutboxState.DEFERRED),
    (451, "4.7.1 Greylisted", OutboxState.DEFERRED),
    (451, "DT:SPM 163 mx14, temporarily rejected", OutboxState.DEFERRED),
    (NO_REPLY, "connection lost during the transaction", OutboxState.DEFERRED),
    (550, "5.1.1 <x@qq.com>: Recipient address rejected: User unknown", OutboxState.BOUNCED),
    (550, "User not found: abc@163.com", OutboxState.BOUNCED),
    (550, "Mailbox not found or access denied", OutboxState.BOUNCED),
    # QQ's throttling and content verdicts use this wording too: never a bounce on its own.
    (550, "Mailbox unavailable or access denied", OutboxState.DEFERRED),
    (550, "5.1.1 Mailbox unavailable or access denied", OutboxState.BOUNCED),
    (550, "Mail content denied. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022",
     OutboxState.CONTENT_REJECTED),
    (550, "Message contains inappropriate words or content", OutboxState.CONTENT_REJECTED),
    (554, "DT:SPM 163 smtp14,EsCowAD3 1700000000, please see http://mail.163.com/help",
     OutboxState.CONTENT_REJECTED),
    (552, "5.3.4 Message size exceeds fixed limit", OutboxState.FAILED),
    (554, "5.7.0 Relay access denied", OutboxState.FAILED),
])
def test_replies_are_classified(code: int, reply: str, state: OutboxState) -> None:
    assert C.state_for(code, reply) is state


def test_only_a_bounce_suppresses_the_subscriber() -> None:
    bounced = C.decide(SendResult(550, "5.1.1 user unknown"), attempts=1, age=timedelta(0), rand=0.5)
    rejected = C.decide(SendResult(550, "Mail content denied"), attempts=1, age=timedelta(0),
                        rand=0.5)
    assert bounced.suppress
    assert not rejected.suppress


def test_qqs_ambiguous_refusal_is_retried_then_failed_and_never_suppresses() -> None:
    r = SendResult(550, "Mailbox unavailable or access denied")
    first = C.decide(r, attempts=1, age=timedelta(0), rand=0.5)
    last = C.decide(r, attempts=5, age=timedelta(0), rand=0.5)
    assert (first.state, first.suppress) == (OutboxState.DEFERRED, False)
    assert (last.state, last.suppress) == (OutboxState.FAILED, False)


def test_deferral_turns_into_failure_at_the_attempt_limit() -> None:
    r = SendResult(451, "try later")
    assert C.decide(r, attempts=4, age=timedelta(0), rand=0.0).state is OutboxState.DEFERRED
    assert C.decide(r, attempts=5, age=timedelta(0), rand=0.0).state is OutboxState.FAILED


def test_deferral_turns_into_failure_past_the_age_limit() -> None:
    r = SendResult(NO_REPLY, "timed out")
    assert C.decide(r, attempts=1, age=timedelta(days=2), rand=0.0).state is OutboxState.DEFERRED
    assert C.decide(r, attempts=1, age=timedelta(days=3), rand=0.0).state is OutboxState.FAILED


@given(st.integers(1, 40), st.floats(0, 1, exclude_max=True), st.floats(0, 1, exclude_max=True))
def test_backoff_grows_and_stays_within_its_jitter_band(attempts: int, r1: float, r2: float) -> None:
    base = timedelta(seconds=30)
    cap = timedelta(hours=6)
    d = backoff(attempts, base, r1, cap)
    full = min(base * 2 ** min(attempts - 1, 30), cap)
    assert full / 2 <= d <= full
    # Without jitter the next attempt never waits less than this one.
    assert backoff(attempts + 1, base, 0.0, cap) >= backoff(attempts, base, 0.0, cap)
    assert backoff(attempts, base, r2, cap) <= full


@given(st.emails())
def test_scrub_removes_any_address(address: str) -> None:
    for reply in (f"5.1.1 <{address}>: Recipient address rejected",
                  f"User not found: {address}", f"{address} unknown"):
        assert address not in scrub_reply(reply)
        assert "@" not in scrub_reply(reply)


_LOCAL = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789._-+"), min_size=4,
                 max_size=20)
_DOMAIN = st.from_regex(r"\A[a-z0-9]{2,10}(-[a-z0-9]{1,6})?\.(org|com|cn|net)\Z")


def _spellings(local: str, domain: str) -> list[str]:
    """How relays were seen to echo a recipient they would not name in ``<...>``."""
    from urllib.parse import quote

    address = f"{local}@{domain}"
    return [f"550 mailbox {local} unavailable", f"550 ({local} at {domain})",
            f"550 {quote(address, safe='')} rejected", f"550 {address.upper()} unknown",
            f'550 "{local}"@{domain} unknown', f"550 {local.upper()} AT {domain.upper()}",
            f"550 {''.join(f'%{ord(c):02X}' for c in local)} unknown"]


@given(_LOCAL, _DOMAIN)
def test_scrub_removes_the_recipient_in_every_spelling(local: str, domain: str) -> None:
    from urllib.parse import unquote

    for reply in _spellings(local, domain):
        out = unquote(scrub_reply(reply, recipient=f"{local}@{domain}")).lower()
        assert local.lower() not in out, reply
        assert domain.lower() not in out, reply
        assert out.startswith("550"), reply  # the code survives: it is what we classify


def test_scrub_keeps_the_words_around_the_recipient() -> None:
    out = scrub_reply("550 mailbox secretname3 unavailable", recipient="secretname3@example.net")
    assert out == "550 mailbox <recipient> unavailable"
    # A short local part goes only as a word, so the relay's text stays readable.
    assert scrub_reply("550 5.1.1 bad mailbox: ab", recipient="ab@qq.com") == \
        "550 5.1.1 bad mailbox: <recipient>"


@given(st.lists(st.text(st.sampled_from("ab.\r\n"), max_size=12), max_size=8))
def test_dot_stuffing_round_trips(lines: list[str]) -> None:
    body = "\r\n".join(x.replace("\r", "").replace("\n", "") for x in lines).encode() + b"\r\n"
    wire = dot_stuff(body)
    assert wire.endswith(b"\r\n.\r\n")
    # What a server does (RFC 5321 §4.5.2): strip the terminator, then one leading dot per line.
    content = wire[: -len(b".\r\n")]
    unstuffed = b"".join(
        (ln[1:] if ln.startswith(b".") else ln) for ln in content.splitlines(keepends=True)
    )
    assert unstuffed == body
    assert not any(ln == b".\r\n" for ln in content.splitlines(keepends=True))


@given(st.lists(st.tuples(st.integers(200, 599),
                          st.lists(st.text("abc 12", max_size=10), min_size=1, max_size=3)),
                max_size=5), st.integers(0, 200))
def test_parse_replies_reads_whole_replies_only(replies: list[tuple[int, list[str]]],
                                                cut: int) -> None:
    wire = b"".join(
        b"".join(f"{code}{'-' if i < len(lines) - 1 else ' '}{t}\r\n".encode()
                 for i, t in enumerate(lines))
        for code, lines in replies
    )
    got, used = parse_replies(wire)
    assert [(c, t) for c, t in got] == [(c, "\n".join(lines)) for c, lines in replies]
    assert used == len(wire)
    # A partial buffer yields a prefix of the replies, never a half one.
    part, used_part = parse_replies(wire[:cut])
    assert part == got[: len(part)]
    assert used_part <= min(cut, len(wire))


@given(st.integers(-5, 700), st.text(max_size=200), st.integers(1, 20),
       st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10)),
       st.floats(0, 1, exclude_max=True))
def test_every_reply_gets_exactly_one_outcome(code: int, reply: str, attempts: int,
                                              age: timedelta, rand: float) -> None:
    d = C.decide(SendResult(code, reply), attempts=attempts, age=age, rand=rand)
    assert d.state in {OutboxState.SENT, OutboxState.DEFERRED, OutboxState.FAILED,
                       OutboxState.BOUNCED, OutboxState.CONTENT_REJECTED}
    assert (d.retry_in is not None) == (d.state is OutboxState.DEFERRED)
    if d.retry_in is not None and d.verdict is not Verdict.BLOCKLISTED:
        assert age + d.retry_in <= C.max_age  # a blocklisted provider's row is held, not failed


@given(_LOCAL, _DOMAIN, st.text(st.sampled_from("aBc xyz.@%-5ÉÅ好"), max_size=60))
def test_the_quick_check_never_skips_a_reply_that_names_the_recipient(
        local: str, domain: str, reply: str) -> None:
    """Skipping the recipient's pattern (compiled per recipient) must change nothing."""
    from mailer.delivery import classify

    recipient = f"{local}@{domain}"
    for text in (reply, f"{reply} {local.upper()} {reply}", f"{reply}{domain}"):
        pattern = classify._recipient_pattern(recipient)
        assert pattern is not None
        full = pattern.sub("<recipient>", classify._ADDRESS.sub("<address>", text))[:500]
        assert scrub_reply(text, recipient=recipient) == full
