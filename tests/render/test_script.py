"""Every Han character a reader gets is in the reader's script, chrome and posts alike.

A character-level check: no zh-Hant part (HTML text and text part) holds a character that
OpenCC would change on the way to Traditional, and no zh-Hans part one it would change on the
way to Simplified. The edition carries an English post with Chinese in its title and body, the
case that slipped through (OpenCC leaves Latin letters alone, so every post can be converted).
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime

import opencc
import pytest

from mailer.config import Config
from mailer.feeds.sanitise import strip_tags
from mailer.models import Edition, EditionState, Post
from mailer.render.convert import Conversion, conversion_for, convert_html, convert_quotes, convert_text
from mailer.render.text import unflow
from mailer.render.variant import RenderContext, render_variant
from tests.render.conftest import BUILD_DATE, ORIGIN, sample_posts

LIU = Post(
    guid="tag:blogger.com,1999:post-liu",
    title="Free Nobel Laureate Liu Xiaobo Rally (释放刘晓波)",
    content_html=("<p>Supporters gathered under the banner “释放刘晓波” and read "
                  "<i>零八宪章</i> aloud. He said: “it’s about 言论自由”.</p>"
                  '<p><img src="https://example.net/x.png" alt="集会现场"></p>'),
    language="en",
    link=f"{ORIGIN}/2010/10/liu.html",
    published=datetime(2010, 10, 9, 12, 0, tzinfo=UTC),
)
TAIWAN = Post(
    guid="tag:blogger.com,1999:post-tw",
    title="「軟體」與資訊安全",
    content_html="<p>他說：「我們需要更好的軟體和網路資訊。」覆議案今天表決。</p>",
    language="zh-Hant",
    link=f"{ORIGIN}/2026/11/tw.html",
)


def _edition() -> Edition:
    return Edition(id=9, kind="digest", state=EditionState.APPROVED,
                   posts=(*sample_posts(), LIU, TAIWAN))


def _differences(text: str, config: str) -> list[str]:
    converted = opencc.OpenCC(config).convert(text)
    if len(converted) != len(text):  # never for s2t / t2s, which map characters one to one
        return [f"length changed: {text!r} -> {converted!r}"]
    return [f"{a}->{b} in …{text[max(0, i - 8):i + 8]}…"
            for i, (a, b) in enumerate(zip(text, converted, strict=True)) if a != b]


def _parts(ctx: RenderContext, choice: str) -> dict[str, str]:
    variant = render_variant(_edition(), choice, ctx)
    html_text = strip_tags(re.sub(r"<style\b.*?</style>", "", variant.html, flags=re.S))
    return {"html": html_text, "text": unflow(variant.text), "subject": variant.subject}


@pytest.mark.parametrize("choice", ["zh-Hant", "zh-Hant+en"])
def test_no_zh_hant_part_holds_a_simplified_character(ctx: RenderContext, choice: str) -> None:
    for name, text in _parts(ctx, choice).items():
        assert _differences(text, "s2t") == [], f"{choice} {name}"
        assert not re.search(r"[“”](?=[\u3400-\u9fff])|(?<=[\u3400-\u9fff])[“”]", text), name
    parts = _parts(ctx, choice)
    assert "釋放劉曉波" in parts["html"]
    assert "釋放劉曉波" in parts["text"]
    assert "「釋放劉曉波」" in parts["html"]  # the quotation marks follow the script
    assert "it’s about 言論自由" in parts["html"]  # an English apostrophe stays
    assert "Free Nobel Laureate Liu Xiaobo Rally (釋放劉曉波)" in parts["text"]


@pytest.mark.parametrize("choice", ["zh-Hans", "zh-Hans+en"])
def test_no_zh_hans_part_holds_a_traditional_character(ctx: RenderContext, choice: str) -> None:
    for name, text in _parts(ctx, choice).items():
        assert _differences(text, "t2s") == [], f"{choice} {name}"
        assert not re.search(r"[「」『』]", text), name
    parts = _parts(ctx, choice)
    assert "“软件”与信息安全" in parts["html"]  # mainland words (tw2sp) and quotation marks
    assert "释放刘晓波" in parts["text"]


def test_the_check_finds_a_character_left_unconverted(ctx: RenderContext) -> None:
    """Positive control: without converting English posts, the Traditional part fails."""
    assert _differences("Liu Xiaobo Rally (释放刘晓波)", "s2t") != []
    assert _differences("軟體", "t2s") != []


def test_mainland_phrases_are_configurable(config: Config) -> None:
    phrases = RenderContext.from_config(config, date=BUILD_DATE, strict=True)
    plain = dataclasses.replace(phrases, newsletter=dataclasses.replace(
        config.newsletter, mainland_phrases=False))
    one = Edition(id=3, kind="post", state=EditionState.APPROVED, posts=(TAIWAN,))
    assert "“软件”与信息安全" in render_variant(one, "zh-Hans", phrases).subject
    assert "“软体”与资讯安全" in render_variant(one, "zh-Hans", plain).subject
    assert conversion_for("zh-Hant", "zh-Hans", taiwan_phrases=True) == Conversion("tw2sp")
    assert conversion_for("zh-Hant", "zh-Hans", taiwan_phrases=True,
                          mainland_phrases=False) == Conversion("t2s")
    assert conversion_for("en", "zh-Hant", taiwan_phrases=False) == Conversion("s2t")


def test_quotes_change_only_next_to_chinese() -> None:
    assert convert_quotes("他说“你好”", "zh-Hant") == "他说「你好」"
    assert convert_quotes("他說「你好」，『好』", "zh-Hans") == "他說“你好”，‘好’"
    assert convert_quotes("“Hello,” she said; don’t", "zh-Hant") == "“Hello,” she said; don’t"
    assert convert_text("“释放刘晓波”", Conversion("s2t")) == "「釋放劉曉波」"
    assert convert_html('<p title="“自由”">他说“自由”</p>', Conversion("s2t")) == \
        '<p title="「自由」">他說「自由」</p>'
    # A mark whose Chinese neighbour sits in the next text node, across a tag.
    assert convert_html("<p>他说“<b>自由</b>”。</p>", Conversion("s2t")) == "<p>他說「<b>自由</b>」。</p>"
    assert convert_html("<p>他說「<a href='/x'>自由</a>」</p>", Conversion("t2s")) == \
        '<p>他说“<a href="/x">自由</a>”</p>'
    assert convert_html("<p>“<i>Hello</i>” 中文</p>", Conversion("s2t")) == "<p>“<i>Hello</i>” 中文</p>"
