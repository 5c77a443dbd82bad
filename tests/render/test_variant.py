"""render_variant: languages, script conversion, order, slots, premailer once, self-contained."""

from __future__ import annotations

import dataclasses
import re
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from mailer.config import Config
from mailer.errors import RenderError
from mailer.message import HeaderSettings, MessageTemplate, PersonalSlots
from mailer.models import Post
from mailer.render.env import TEMPLATES_DIR
from mailer.render.safe import remote_references
from mailer.render.text import unflow
from mailer.render.variant import RenderContext, order_posts, render_variant
from tests.render.conftest import (
    BUILD_DATE,
    ORIGIN,
    digest_edition,
    sample_posts,
    single_edition,
    write_config,
)
from tests.support.http import HTTPServer, Reply

LANGS = ["zh-Hans", "zh-Hant", "en", "zh-Hans+en", "zh-Hant+en"]


def _counting(ctx: RenderContext) -> tuple[RenderContext, list[str]]:
    calls: list[str] = []

    def inliner(doc: str) -> str:
        calls.append(doc)
        return ctx.inline_css(doc)

    return dataclasses.replace(ctx, inline_css=inliner), calls


@pytest.mark.parametrize("language", LANGS)
@pytest.mark.parametrize("kind", ["digest", "post"])
def test_every_variant_renders_self_contained(ctx: RenderContext, language: str, kind: str) -> None:
    edition = digest_edition() if kind == "digest" else single_edition()
    counted, calls = _counting(ctx)
    variant = render_variant(edition, language, counted)
    assert len(calls) == 1, "premailer must run exactly once per variant"
    assert variant.language == language
    assert variant.mirror_slots == 2
    for part in (variant.html, variant.text):
        assert "@@SLOT_UNSUB_URL@@" in part
        assert "@@SLOT_M0@@/" in part
        assert "@@SLOT_M1@@/" in part
        assert "@@SLOT_M2@@" not in part
        assert ".onion/" in part
    assert remote_references(variant.html) == []
    assert "<style" not in variant.html or "@media" in variant.html
    assert 'style="' in variant.html  # inlined, so clients that drop <style> keep the layout


def test_zh_hant_gets_traditional_forms_of_simplified_text(ctx: RenderContext) -> None:
    v = render_variant(digest_edition(), "zh-Hant", ctx)
    # s2twp: characters and Taiwan phrases (软件 -> 軟體, 信息 -> 資訊).
    assert "維權律師的軟體與資訊安全" in v.html
    assert "維權律師的軟體與資訊安全" in v.text
    assert "我們為維權律師提供了新的軟體培訓" in v.text
    assert "维权律师" not in v.html + v.text
    # The link target is untouched, its text converted.
    assert f'href="{ORIGIN}/2026/11/training.html"' in v.html
    assert "培訓說明" in v.html


def test_zh_hans_gets_simplified_forms_of_traditional_text(ctx: RenderContext) -> None:
    v = render_variant(digest_edition(), "zh-Hans", ctx)
    assert "台湾的声援活动与网络信息" in v.html  # tw2sp: mainland words (網路資訊 -> 网络信息)
    assert "这是一篇繁体中文的文章" in v.text
    assert "臺灣的聲援" not in v.html + v.text


def test_taiwan_phrases_off_converts_characters_only(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, taiwan=False)
    ctx = RenderContext.from_config(cfg, date=BUILD_DATE, strict=True)
    v = render_variant(digest_edition(), "zh-Hant", ctx)
    assert "維權律師的軟件與信息安全" in v.text


def test_english_stays_and_mixed_keeps_both_halves(ctx: RenderContext) -> None:
    v = render_variant(digest_edition(), "zh-Hant", ctx)
    assert "Court hearing postponed again" in v.text
    assert "We publish a joint statement calling for the release" in v.text
    assert "我們發表聯合" in v.text  # s2twp: 声明 -> 宣告 (Taiwan usage)
    en = render_variant(digest_edition(), "en", ctx)
    assert "维权律师的软件与信息安全" in en.text  # Chinese posts reach English readers as written
    assert "我们发表联合声明" in en.text


def test_own_language_first_and_others_marked(ctx: RenderContext) -> None:
    en = render_variant(digest_edition(), "en", ctx)
    toc = en.text.split("\n\n")[1]
    assert toc.splitlines()[1].startswith("1. Court hearing postponed again")
    assert "(Written in Simplified Chinese)" in en.text
    assert "(Written in Chinese and English)" in en.text
    hant = render_variant(digest_edition(), "zh-Hant", ctx)
    first = hant.text.split("本期內容：")[1].strip().splitlines()[0]
    assert first.startswith("1. 臺灣的聲援活動")
    assert "由簡體中文轉換" in hant.text
    assert "英文文章" in hant.text


def test_order_posts_is_stable_and_bilingual_aware() -> None:
    posts = sample_posts()
    order = [p.language for p in order_posts(posts, "zh-Hans+en")]
    assert order == ["zh-Hans", "en", "zh-Hant", "mixed"]
    assert [p.language for p in order_posts(posts, "en")] == ["en", "mixed", "zh-Hans", "zh-Hant"]


def test_bilingual_chrome_shows_both_languages(ctx: RenderContext) -> None:
    v = render_variant(digest_edition(), "zh-Hans+en", ctx)
    assert "本期内容 / In this edition" in v.html
    assert "本期内容： / In this edition:" in v.text  # each half with its own colon
    assert "退订 / Unsubscribe" in v.html
    assert v.content_language == "zh-Hans, en"


def test_text_part_has_full_text_and_numbered_references(ctx: RenderContext) -> None:
    v = dataclasses.replace(render_variant(digest_edition(), "en", ctx),
                            text=unflow(render_variant(digest_edition(), "en", ctx).text))
    assert "The hearing of the twelve defendants was postponed for the third time." in v.text
    assert "our earlier report[" in v.text
    m = re.search(r"our earlier report\[(\d+)\]", v.text)
    assert m is not None
    n = m.group(1)
    block = v.text.split(f"[{n}] {ORIGIN}/2026/10/background.html\n", 1)[1]
    assert block.startswith("    @@SLOT_M0@@/2026/10/background.html\n    @@SLOT_M1@@/2026/10/background.html")
    # A link to another site is referenced but gets no mirror alternatives.
    assert re.search(r"\[\d+\] https://example.net/guide\n(?!    @@SLOT)", v.text)
    assert "<" not in v.text.replace("<b>", "")


def test_each_post_has_one_mirror_block_and_reads_online_on_a_mirror(ctx: RenderContext) -> None:
    v = render_variant(digest_edition(), "zh-Hans", ctx)
    # No "(镜像 1 · 镜像 2)" after each link in the body: the body's links are left as written.
    assert 'href="@@SLOT_M0@@/2026/10/background.html"' not in v.html
    assert v.html.count("如果我们的网站打不开，请在这里打开本文：") == 4  # one block per post
    # "Read online" opens the reader's first mirror, then the original is offered.
    readon = re.search(r'<p class="readon"[^>]*><a href="([^"]+)"[^>]*>在线阅读</a> · '
                       r'<a href="([^"]+)"[^>]*>原网址</a>', v.html)
    assert readon is not None
    assert readon.groups() == ("@@SLOT_M0@@/2026/11/lawyers.html", f"{ORIGIN}/2026/11/lawyers.html")
    assert 'href="@@SLOT_M1@@/2026/11/hearing.html"' in v.html  # in the block
    assert 'href="@@SLOT_M0@@/guide"' not in v.html
    # "镜像 2" never breaks: a no-break space and white-space: nowrap.
    assert re.search(r'style="white-space:nowrap[^"]*">镜像\u00a02</a>', v.html)
    text = unflow(v.text)
    assert "在线阅读：@@SLOT_M0@@/2026/11/lawyers.html" in text
    assert f"原网址：{ORIGIN}/2026/11/lawyers.html" in text


def test_subject_never_carries_crlf(ctx: RenderContext) -> None:
    post = dataclasses.replace(sample_posts()[1], title="Evil\r\nBcc: victim@example.com")
    v = render_variant(single_edition(post), "en", ctx)
    assert "\r" not in v.subject
    assert "\n" not in v.subject
    assert v.subject == "Evil Bcc: victim@example.com"


def test_hostile_post_html_is_neutralised(ctx: RenderContext) -> None:
    post = Post(
        guid="x",
        language="en",
        title="t",
        content_html=(
            '<p onclick="steal()">hi<script>alert(1)</script></p>'
            '<p style="background:url(https://track.example/p.gif)">styled</p>'
            '<img src="https://track.example/pixel.gif" width="1" height="1">'
            '<iframe src="https://evil.example/"></iframe>'
            '<a href="javascript:alert(1)">js</a>'
        ),
    )
    v = render_variant(single_edition(post), "en", ctx)
    assert remote_references(v.html) == []
    assert "track.example/p.gif" not in v.html
    assert "evil.example" not in v.html
    assert "javascript:" not in v.html
    assert "alert(1)" not in v.text


def test_strict_catalog_fails_on_missing_translation(tmp_path: Path, ctx: RenderContext) -> None:
    override = tmp_path / "override"
    (override / "email").mkdir(parents=True)
    (override / "email" / "post.txt").write_text('{{ _("A string nobody translated") }}\n')
    cfg = write_config(tmp_path)
    cfg = dataclasses.replace(cfg, newsletter=dataclasses.replace(cfg.newsletter, templates_dir=override))
    strict = RenderContext.from_config(cfg, date=ctx.date, strict=True)
    with pytest.raises(RenderError, match="no translation"):
        render_variant(single_edition(), "zh-Hans", strict)


def test_empty_edition_is_an_error(ctx: RenderContext) -> None:
    with pytest.raises(RenderError):
        render_variant(digest_edition(posts=()), "en", ctx)


def _override_base(tmp_path: Path, extra_head: str) -> RenderContext:
    base = (TEMPLATES_DIR / "email" / "base.html").read_text(encoding="utf-8")
    override = tmp_path / "override"
    (override / "email").mkdir(parents=True)
    (override / "email" / "base.html").write_text(base.replace("</head>", extra_head + "</head>"), encoding="utf-8")
    cfg = write_config(tmp_path)
    cfg = dataclasses.replace(cfg, newsletter=dataclasses.replace(cfg.newsletter, templates_dir=override))
    return RenderContext.from_config(cfg, date=BUILD_DATE, strict=True)


def test_premailer_fetches_nothing_even_when_an_override_asks(tmp_path: Path, http_server: HTTPServer) -> None:
    http_server.routes["/x.css"] = Reply(body=b"p { color: red }", headers={"Content-Type": "text/css"})
    css = http_server.url("/x.css")
    ctx = _override_base(
        tmp_path, f'<style>@import url("{css}"); p {{ color: blue }}</style><link rel="stylesheet" href="{css}">'
    )
    v = render_variant(digest_edition(), "en", ctx)
    assert http_server.requests == []
    assert css not in v.html
    assert remote_references(v.html) == []


def test_an_override_with_remote_css_url_fails_the_build(tmp_path: Path) -> None:
    ctx = _override_base(tmp_path, "<style>p { background: url(https://t.example/a.png) }</style>")
    with pytest.raises(RenderError, match="not self-contained"):
        render_variant(digest_edition(), "en", ctx)


def test_slot_lookalikes_in_a_post_stay_text(ctx: RenderContext) -> None:
    post = Post(
        guid="s",
        language="en",
        title="About @@SLOT_TO@@",
        content_html="<p>Write @@SLOT_UNSUB_URL@@ or @@SLOT_M0@@ or @@SLOT_EVIL@@.</p>",
        link=f"{ORIGIN}/2026/11/slots.html",
    )
    v = render_variant(single_edition(post), "en", ctx)
    template = MessageTemplate.build(
        v,
        edition_id=1,
        headers=HeaderSettings(from_addr="d@example.org", list_id="<l>", message_id_domain="example.org"),
    )
    raw = template.personalise(
        PersonalSlots(1, "r@example.com", "https://n.example/u/T", ("https://m1.example", "https://m2.example"))
    )
    msg = message_from_bytes(raw, policy=policy.default)
    body = msg.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Write @\u200b@SLOT_UNSUB_URL@@ or @\u200b@SLOT_M0@@" in text
    assert msg["Subject"] == "About @\u200b@SLOT_TO@@"


def test_onions_can_come_from_the_registry(config: Config) -> None:
    ctx = RenderContext.from_config(config, date=BUILD_DATE, strict=True, onions=())
    v = render_variant(digest_edition(), "en", ctx)
    assert ".onion" not in v.html + v.text
    assert "In Tor Browser" not in v.text


@pytest.mark.parametrize("depth", [300, 3000])
def test_a_post_lost_in_rendering_is_an_error_not_a_silent_drop(ctx: RenderContext,
                                                                 depth: int) -> None:
    # Not through the sanitiser (which caps nesting): the check after inlining is the net.
    posts = list(sample_posts())
    posts.insert(1, dataclasses.replace(
        posts[1], guid="deep", title="Deep post",
        content_html="<div>" * depth + "<p>deep text</p>" + "</div>" * depth))
    with pytest.raises(RenderError, match="lost the post post-"):
        render_variant(digest_edition(tuple(posts)), "en", ctx)


def test_footer_names_the_newsletter_in_each_language_and_says_how_to_leave(config: Config) -> None:
    newsletter = dataclasses.replace(config.newsletter, unsubscribe_mailto="unsubscribe@example.org",
                                     contact="editors@example.org")
    ctx = RenderContext.from_config(dataclasses.replace(config, newsletter=newsletter),
                                    date=BUILD_DATE, strict=True)
    v = render_variant(digest_edition(), "zh-Hans+en", ctx)
    text = unflow(v.text)
    # The English half names the newsletter in English, the Chinese half in Chinese.
    assert "您订阅了公民权利通讯。 / You receive this because you subscribed to Citizens' Rights Digest." in text
    assert "发送一封写着“退订”的邮件到 unsubscribe@example.org 退订" in text
    assert "with the word “unsubscribe” to unsubscribe@example.org" in text
    assert "联系我们：editors@example.org / Write to us: editors@example.org" in text
    assert 'href="mailto:unsubscribe@example.org?subject=%E9%80%80%E8%AE%A2%20unsubscribe"' in v.html
    assert 'href="mailto:editors@example.org"' in v.html
    hant = render_variant(digest_edition(), "zh-Hant", ctx)
    assert "「退訂」" in hant.text
    assert "公民權利通訊" in hant.text
    # Without the keys, no such lines.
    plain = render_variant(digest_edition(), "en", RenderContext.from_config(config, date=BUILD_DATE, strict=True))
    assert "To leave" not in plain.text
    assert "Write to us" not in plain.text


def test_chinese_chrome_uses_full_width_colons_and_brackets(ctx: RenderContext) -> None:
    for choice in ("zh-Hans", "zh-Hant"):
        v = render_variant(digest_edition(), choice, ctx)
        text = unflow(v.text)
        for line in text.splitlines():
            if re.search(r"[\u4e00-\u9fff]", line) and not line.startswith(("http", " ")):
                assert not re.search(r"[\u4e00-\u9fff]:", line), (choice, line)  # no "本期内容:"
        assert re.search(r"（(由|英文|中英)", text)  # a remark in full-width brackets
        assert "(英文文章)" not in text
        assert "(英文文章)" not in v.html


def test_a_missing_image_links_to_the_image_on_a_mirror_not_the_post(ctx: RenderContext) -> None:
    from mailer.config import ImageSettings
    from mailer.render.images import FetchedImage, fit_images

    on_origin = f"{ORIGIN}/images/gone.jpg"
    elsewhere = "https://1.bp.blogspot.com/-x/s1600/gone.jpg"
    post = dataclasses.replace(sample_posts()[0], content_html=(
        f'<p><img src="{on_origin}" alt="合影"></p><p><img src="{elsewhere}" alt="现场"></p>'))
    images = fit_images([FetchedImage(on_origin, None), FetchedImage(elsewhere, None)],
                        ImageSettings())
    v = render_variant(single_edition(post), "zh-Hans", dataclasses.replace(ctx, images=images))
    body = v.html.split('<div class="body"', 1)[1].split("</div>", 1)[0]
    assert '<a href="@@SLOT_M0@@/images/gone.jpg"' in body
    assert ">查看图片</a>" in body
    assert 'href="@@SLOT_M1@@/images/gone.jpg"' in body
    assert f'href="{elsewhere}"' in body  # not on an origin: the image's own address
    assert "/2026/11/lawyers.html" not in body  # never the post instead of the image
