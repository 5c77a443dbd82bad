"""Whole messages: every variant parses without defects; golden files per language and layout.

Golden files hold a readable, normalised dump of the message (headers, then each part decoded),
with Message-ID, boundaries and Date replaced, so a diff shows what a reader would see change.
Regenerate after an intended change with ``NEWSLETTER_UPDATE_GOLDEN=1 pytest tests/render``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from PIL import Image

from mailer.config import ImageSettings
from mailer.message import HeaderSettings, MessageTemplate, PersonalSlots, feedback_id
from mailer.models import Edition, Post
from mailer.render.images import FetchedImage, fit_images
from mailer.render.safe import remote_references
from mailer.render.variant import RenderContext, render_variant
from tests.render.conftest import ORIGIN, digest_edition, sample_posts, single_edition

GOLDEN = Path(__file__).parent / "golden"
CHOICES = ["zh-Hans", "zh-Hant", "en", "zh-Hans+en", "zh-Hant+en"]
SEND_DATE = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
HEADERS = HeaderSettings(
    from_addr="公民权利通讯 <digest@example.org>",
    list_id="<newsletter.news.example.org>",
    message_id_domain="example.org",
    feedback_id=feedback_id(7, "digest", "example.org"),
    unsubscribe_mailto="unsubscribe@example.org",
    # Readers' replies go to the inbound address, tagged with the message's token (issue 17).
    reply_tagged="digest@example.org",
)
REPLY_TOKEN = "a" * 42
MIRRORS = ("https://d1a2b3c4.cloudfront.net", "https://storage.googleapis.com/cr-mirror-7f3a")
UNSUB = "https://news.example.org/u/" + "T" * 43
IMAGE_URL = "https://blogger.googleusercontent.com/img/b/R29vZ2xl/s1600/photo.png"
MISSING_URL = "https://1.bp.blogspot.com/-missing/s1600/gone.jpg"


def _png() -> bytes:
    img = Image.new("RGB", (32, 16), (180, 20, 20))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _posts_with_images() -> tuple[Post, ...]:
    first, *rest = sample_posts()
    first = dataclasses.replace(
        first,
        content_html=first.content_html
        + (f'<p><img src="{IMAGE_URL}" alt="培训现场"></p><p><img src="{MISSING_URL}" alt="律师合影"></p>'),
    )
    return (first, *rest)


@pytest.fixture
def image_ctx(ctx: RenderContext) -> RenderContext:
    images = fit_images([FetchedImage(IMAGE_URL, _png()), FetchedImage(MISSING_URL, None)], ImageSettings())
    return dataclasses.replace(ctx, images=images)


def _edition(layout: str) -> Edition:
    posts = _posts_with_images()
    return digest_edition(posts) if layout == "digest" else single_edition(posts[0])


def build(ctx: RenderContext, layout: str, choice: str, subscriber_id: int = 42) -> bytes:
    variant = render_variant(_edition(layout), choice, ctx)
    template = MessageTemplate.build(variant, edition_id=7, headers=HEADERS, date=SEND_DATE)
    return template.personalise(
        PersonalSlots(
            subscriber_id=subscriber_id,
            address=f"reader{subscriber_id}@example.com",
            unsubscribe_url=UNSUB,
            mirrors=MIRRORS,
            reply_token=REPLY_TOKEN,
        )
    )


def parse(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def normalised_dump(raw: bytes) -> str:
    """Headers and decoded parts, with the per-build values (boundaries, ids, date) replaced."""
    msg = parse(raw)
    boundaries = [p.get_boundary() for p in msg.walk() if p.is_multipart()]
    out = []
    for name, value in msg.items():
        if name.lower() == "message-id":
            value = "<MESSAGE-ID>"
        elif name.lower() == "date":
            value = "<DATE>"
        out.append(f"{name}: {value}")
    for part in msg.walk():
        out.append("")
        out.append(f"----- part {part.get_content_type()} -----")
        if part.is_multipart():
            continue
        if part.get_content_maintype() == "image":
            data = part.get_payload(decode=True)
            assert isinstance(data, bytes)
            out.append(f"Content-ID: {part['Content-ID']}  ({len(data)} bytes)")
            continue
        out.append(part.get_content())
    text = "\n".join(out)
    for i, b in enumerate(boundaries):
        if b:
            text = text.replace(b, f"<BOUNDARY-{i}>")
    return text.replace("\r\n", "\n").rstrip() + "\n"


@pytest.mark.parametrize("choice", CHOICES)
@pytest.mark.parametrize("layout", ["digest", "post"])
def test_golden(image_ctx: RenderContext, layout: str, choice: str) -> None:
    dump = normalised_dump(build(image_ctx, layout, choice))
    path = GOLDEN / f"{layout}-{choice}.txt"
    if os.environ.get("NEWSLETTER_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(dump, encoding="utf-8")
    assert path.is_file(), f"no golden file {path.name}; run with NEWSLETTER_UPDATE_GOLDEN=1"
    assert dump == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("choice", CHOICES)
@pytest.mark.parametrize("layout", ["digest", "post"])
def test_message_parses_without_defects_and_is_self_contained(
    image_ctx: RenderContext, layout: str, choice: str
) -> None:
    raw = build(image_ctx, layout, choice)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"@@SLOT_" not in raw
    msg = parse(raw)
    for part in msg.walk():
        assert part.defects == [], part.get_content_type()
    assert msg["To"] == "reader42@example.com"
    assert len(msg.get_all("To") or []) == 1
    assert msg["Content-Language"] == ", ".join(choice.split("+"))
    assert msg["List-Unsubscribe"].startswith(f"<{UNSUB}>")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    top = msg.get_payload()
    assert isinstance(top, list)
    assert top[0].get_content_type() == "text/plain", "text/plain comes first"
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None
    assert html is not None
    for part in (text, html):
        assert part["Content-Transfer-Encoding"] == "base64"
        content = part.get_content()
        assert remote_references(content) == []
        assert UNSUB in content
        assert f"{MIRRORS[0]}/2026/11/lawyers.html" in content
        assert f"{MIRRORS[1]}/" in content
    images = [p for p in msg.walk() if p.get_content_maintype() == "image"]
    assert len(images) == 1
    cid = images[0]["Content-ID"].strip("<>")
    assert f"cid:{cid}" in html.get_content()
    assert MISSING_URL in html.get_content()
    assert f'src="{MISSING_URL}"' not in html.get_content()


def test_subject_is_rfc2047_encoded_and_decodes_to_the_post_language(image_ctx: RenderContext) -> None:
    raw = build(image_ctx, "post", "zh-Hant")
    head = raw.split(b"\r\n\r\n", 1)[0]
    subject_line = re.search(rb"^Subject: (.*(?:\r\n[ \t].*)*)", head, re.M)
    assert subject_line is not None
    assert b"=?utf-8?" in subject_line.group(1).lower()
    assert parse(raw)["Subject"] == "維權律師的軟體與資訊安全"


def test_message_id_is_deterministic_per_edition_and_subscriber(image_ctx: RenderContext) -> None:
    a = parse(build(image_ctx, "digest", "en", subscriber_id=5))["Message-ID"]
    b = parse(build(image_ctx, "digest", "en", subscriber_id=5))["Message-ID"]
    c = parse(build(image_ctx, "digest", "en", subscriber_id=6))["Message-ID"]
    assert a == b
    assert a != c


def test_origin_link_text_in_other_sites_is_left_alone(image_ctx: RenderContext) -> None:
    msg = parse(build(image_ctx, "digest", "en"))
    html = msg.get_body(("html",))
    assert html is not None
    assert 'href="https://example.net/guide"' in html.get_content()
    assert f"{MIRRORS[0]}/guide" not in html.get_content()
    assert f'href="{ORIGIN}/2026/11/training.html"' in html.get_content()  # the original stays


@pytest.mark.parametrize("choice", CHOICES)
def test_text_part_is_flowed_and_never_cuts_a_url(image_ctx: RenderContext, choice: str) -> None:
    from mailer.render.text import unflow

    msg = parse(build(image_ctx, "digest", choice))
    text = msg.get_body(("plain",))
    assert text is not None
    assert text.get_param("format") == "flowed"
    assert text.get_param("delsp") == "yes"
    raw = text.get_content()
    shown = unflow(raw.replace("\r\n", "\n"))
    # Every URL a flowed reader sees is whole on one line of what was sent.
    for url in re.findall(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+", shown):
        assert any(url in line for line in raw.splitlines()), url
    # No hard-wrapped Chinese: a soft break ends in a space, which a flowed reader joins.
    for line in raw.splitlines():
        if len(line) > 40 and re.search(r"[\u4e00-\u9fff]$", line):
            raise AssertionError(f"a long Chinese line ends with a hard break: {line!r}")
