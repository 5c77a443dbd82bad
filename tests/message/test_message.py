"""MessageTemplate: per-recipient splicing must equal a from-scratch rendering, byte for byte."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mailer.errors import RenderError
from mailer.message import HeaderSettings, MessageTemplate, PersonalSlots
from mailer.models import InlineImage, RenderedVariant
from mailer.slots import SLOT_RE, slot
from mailer.slots import fill as fill_slots

HEADERS = HeaderSettings(
    from_addr="公民权利通讯 <digest@example.org>",
    list_id="<newsletter.example.org>",
    message_id_domain="example.org",
    unsubscribe_mailto="unsubscribe@example.org",
    feedback_id="e1:digest:example",
)


def parse(data: bytes) -> EmailMessage:
    msg = message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def variant(text: str, html_body: str, *, slots: int = 2, images: tuple[InlineImage, ...] = ()) -> RenderedVariant:
    return RenderedVariant(language="zh-Hans", subject="公民权利通讯：第 12 期\r\nBcc: x@evil.example",
                           html=html_body, text=text, images=images, mirror_slots=slots)


def expected(body: str, values: dict[str, str], escape: bool) -> str:
    vals = {k: html.escape(v) if escape else v for k, v in values.items()}
    return fill_slots(body, vals).replace("\r\n", "\n")


def slots_for(sid: int, token: str, mirrors: tuple[str, ...]) -> PersonalSlots:
    return PersonalSlots(sid, f"reader{sid}@example.org", f"https://news.example.org/u/{token}", mirrors)


def check(tpl: MessageTemplate, v: RenderedVariant, p: PersonalSlots) -> EmailMessage:
    data = tpl.personalise(p)
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")
    msg = parse(data)
    assert not msg.defects
    # Slots are filled from the recipient's mirrors in sorted order (the set is what matters).
    values = {"UNSUB_URL": p.unsubscribe_url} | {f"M{i}": m for i, m in enumerate(sorted(p.mirrors))}
    parts = list(msg.walk())
    text = next(x for x in parts if x.get_content_type() == "text/plain")
    htm = next(x for x in parts if x.get_content_type() == "text/html")
    assert not text.defects
    assert not htm.defects
    assert text.get_content().replace("\r\n", "\n") == expected(v.text, values, escape=False)
    assert htm.get_content().replace("\r\n", "\n") == expected(v.html, values, escape=True)
    assert msg["To"] == p.address
    assert p.unsubscribe_url in msg["List-Unsubscribe"]
    return msg


_chunk = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=40) | st.sampled_from(
    ["\n", slot("UNSUB_URL"), slot("M0"), slot("M1"), "中文", "&", "<"])
body_text = st.lists(_chunk, max_size=30).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=body_text, html_body=body_text, tokens=st.lists(
    st.text(alphabet="ABCDEFabcdef0123456789-_", min_size=32, max_size=32), min_size=1, max_size=4),
    mirrors=st.lists(st.sampled_from(["https://a.example", "https://bb.example/pre", "https://c&d.example"]),
                     min_size=2, max_size=2))
def test_spliced_messages_equal_fresh_renderings(text: str, html_body: str, tokens: list[str],
                                                 mirrors: list[str]) -> None:
    assume(all(n in ("UNSUB_URL", "M0", "M1") for n in SLOT_RE.findall(text + html_body)))
    v = variant(text, html_body)
    tpl = MessageTemplate.build(v, edition_id=7, headers=HEADERS)
    for i, token in enumerate(tokens):  # the first fills the cache; the rest take the splice path
        check(tpl, v, slots_for(1000 + i, token, tuple(mirrors)))


def test_value_of_another_length_falls_back_to_full_encoding() -> None:
    v = variant(f"unsubscribe: {slot('UNSUB_URL')}\n", f"<a href=\"{slot('UNSUB_URL')}\">x</a>", slots=0)
    tpl = MessageTemplate.build(v, edition_id=1, headers=HEADERS)
    check(tpl, v, slots_for(1, "a" * 32, ()))
    check(tpl, v, slots_for(2, "b" * 40, ()))
    check(tpl, v, slots_for(3, "c" * 32, ()))


def test_headers_are_encoded_and_deterministic() -> None:
    v = variant("正文", "<p>正文</p>", slots=0)
    tpl = MessageTemplate.build(v, edition_id=42, headers=HEADERS, date=datetime(2026, 11, 24, tzinfo=UTC))
    first = parse(tpl.personalise(slots_for(5, "t" * 32, ())))
    again = parse(tpl.personalise(slots_for(5, "t" * 32, ())))
    assert first["Message-ID"] == again["Message-ID"] == "<e42.s0000000000000005@example.org>"
    # CR/LF from a feed title cannot add a header
    assert first["Bcc"] is None
    assert first["Subject"].startswith("公民权利通讯：第 12 期")
    assert first["From"].addresses[0].display_name == "公民权利通讯"
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "mailto:unsubscribe@example.org" in first["List-Unsubscribe"]
    assert first["Content-Language"] == "zh-Hans"
    assert first["Date"].datetime == datetime(2026, 11, 24, tzinfo=UTC)
    raw = tpl.personalise(slots_for(5, "t" * 32, ()))
    assert b"=?utf-8?" in raw.split(b"\r\n\r\n", 1)[0]  # RFC 2047 for CJK headers


def test_inline_images_go_in_multipart_related() -> None:
    img = InlineImage(cid="img1@example.org", content_type="image/png", data=b"\x89PNG" + bytes(3000),
                      filename="a.png")
    v = variant("text", '<img src="cid:img1@example.org" alt="x">', slots=0, images=(img,))
    tpl = MessageTemplate.build(v, edition_id=1, headers=HEADERS)
    msg = check(tpl, v, slots_for(1, "x" * 32, ()))
    assert msg.get_content_type() == "multipart/alternative"
    first, second = msg.iter_parts()
    assert first.get_content_type() == "text/plain"
    assert second.get_content_type() == "multipart/related"
    parts = list(second.iter_parts())
    assert parts[1]["Content-ID"] == "<img1@example.org>"
    assert parts[1].get_content() == img.data


def test_missing_or_unknown_slots_are_errors() -> None:
    with pytest.raises(RenderError, match="unknown slot"):
        MessageTemplate.build(variant(slot("NOPE"), "", slots=0), edition_id=1, headers=HEADERS)
    tpl = MessageTemplate.build(variant(slot("M1"), "", slots=2), edition_id=1, headers=HEADERS)
    with pytest.raises(RenderError, match="mirrors"):
        tpl.personalise(slots_for(1, "x" * 32, ("https://a.example",)))
    with pytest.raises(RenderError, match="subscriber 9"):
        tpl.personalise(PersonalSlots(9, "a@b.org\r\nBcc: c@d.org", "https://x/u/t", ("a", "b")))


def test_the_date_header_comes_from_the_clock_passed_in() -> None:
    variant = RenderedVariant(language="en", subject="s", html="<p>x</p>", text="x", images=())
    at = datetime(2026, 12, 2, 8, 0, 5, tzinfo=UTC)
    template = MessageTemplate.build(variant, edition_id=1, headers=HEADERS, clock=lambda: at)
    raw = template.personalise(PersonalSlots(1, "a@example.org", "https://x.example/u/t"))
    assert b"Date: Wed, 02 Dec 2026 08:00:05 +0000\r\n" in raw


def test_the_tagged_reply_to_carries_the_token_and_nothing_else() -> None:
    """Issue 17: replies ("退订") reach the inbound address with the message's token; a token
    that is not alphanumeric can never put a header line into the message."""
    import dataclasses

    headers = dataclasses.replace(HEADERS, reply_tagged="digest@example.org")
    tpl = MessageTemplate.build(variant("t", "<p>h</p>", slots=0), edition_id=7, headers=headers)

    def reply_to(token: str) -> str:
        return str(parse(tpl.personalise(PersonalSlots(
            subscriber_id=1, address="r@example.com", unsubscribe_url="https://x/u/T",
            reply_token=token)))["Reply-To"])

    assert reply_to("abc234") == "digest+r-abc234@example.org"
    assert reply_to("x\r\nBcc: evil@example.com") == "digest+r-0@example.org"
    explicit = dataclasses.replace(headers, reply_to="editors@example.org")
    tpl = MessageTemplate.build(variant("t", "<p>h</p>", slots=0), edition_id=7, headers=explicit)
    assert "editors@example.org" in reply_to("abc234")  # the operator's Reply-To wins
