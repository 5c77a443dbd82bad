"""The region's words after OpenCC (issue 19: 覆议 -> 复议), shipped and from an operator's file."""

from __future__ import annotations

import tomllib
from html import escape as html_escape
from pathlib import Path

import opencc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.config import load_config, shipped_phrases
from mailer.errors import ConfigError
from mailer.render.convert import conversion_for, convert_html, convert_text
from mailer.render.phrases import SHIPPED_PHRASES, Phrases, apply_phrases
from tests.render.conftest import write_config
from tests.support.cli import newsletter

REPO = Path(__file__).resolve().parents[2]
SHIPPED = shipped_phrases()


def to_hans(text: str, phrases: Phrases = SHIPPED, *, on: bool = True) -> str:
    return convert_text(text, conversion_for("zh-Hant", "zh-Hans", taiwan_phrases=True,
                                             mainland_phrases=on, phrases=phrases))


def to_hant(text: str, phrases: Phrases = SHIPPED, *, on: bool = True) -> str:
    return convert_text(text, conversion_for("zh-Hans", "zh-Hant", taiwan_phrases=on,
                                             phrases=phrases))


def test_the_issues_example_and_its_way_back() -> None:
    assert to_hans("立法院今天覆議此案") == "立法院今天复议此案"
    assert to_hans("請登入您的帳號") == "请登录您的账号"  # 登录 is OpenCC's own
    assert to_hant("立法院今天复议此案") == "立法院今天覆議此案"
    # Characters-only readers get characters only: the pairs follow the phrase switch.
    assert to_hans("立法院今天覆議此案", on=False) == "立法院今天覆议此案"
    assert to_hant("立法院今天复议此案", on=False) == "立法院今天複議此案"


def test_markup_and_urls_are_never_rewritten() -> None:
    conversion = conversion_for("zh-Hant", "zh-Hans", taiwan_phrases=True, phrases=SHIPPED)
    out = convert_html('<p><a href="https://x.org/覆議/帳號" class="帳號">覆議</a></p>', conversion)
    assert out == '<p><a href="https://x.org/覆議/帳號" class="帳號">复议</a></p>'


@pytest.mark.parametrize("region", ["mainland", "taiwan"])
def test_every_shipped_pair_is_still_one_opencc_misses(region: str) -> None:
    """A pair OpenCC learns to convert by itself is dead weight: drop it on an OpenCC upgrade."""
    table = getattr(SHIPPED, region)
    assert table, "the shipped file lost a table"
    back = opencc.OpenCC("s2twp" if region == "mainland" else "tw2sp")
    forward = opencc.OpenCC("tw2sp" if region == "mainland" else "s2twp")
    for word, wanted in table:
        source = back.convert(word)  # the text a post would hold
        assert forward.convert(source) == word != wanted, (region, word)


def test_the_shipped_file_is_what_the_config_reads() -> None:
    data = tomllib.loads(SHIPPED_PHRASES.read_text(encoding="utf-8"))
    assert dict(SHIPPED.mainland) == data["mainland"]
    assert dict(SHIPPED.taiwan) == data["taiwan"]


HAN = st.sampled_from("覆议核帐号户连署公听会网志贴文移动电话复审查手机博客帖子自由的了")


@given(st.text(alphabet=HAN, max_size=40))
def test_applying_twice_is_applying_once(text: str) -> None:
    once = apply_phrases(text, SHIPPED.mainland)
    assert apply_phrases(once, SHIPPED.mainland) == once


@given(st.text(alphabet=st.sampled_from("abc xyz123<>&\"'/自由的了"), max_size=40))
def test_text_without_a_key_is_left_as_it_was(text: str) -> None:
    assert apply_phrases(text, SHIPPED.mainland) == text


def test_the_longest_key_wins_and_nothing_is_rewritten_twice() -> None:
    table = (("电话", "X"), ("移动电话", "手机"), ("手机", "Y"))
    assert apply_phrases("移动电话和电话", table) == "手机和X"


def test_an_operators_file_adds_and_replaces_pairs(tmp_path: Path) -> None:
    (tmp_path / "words.toml").write_text(
        '[mainland]\n"网志" = "网络日志"\n"脸书" = "Facebook"\n', encoding="utf-8")
    config = write_config(tmp_path)
    text = config.path.read_text(encoding="utf-8").replace(
        "[newsletter]\n", '[newsletter]\nphrases_file = "words.toml"\n', 1)
    config.path.write_text(text, encoding="utf-8")
    phrases = load_config(config.path).newsletter.phrases
    assert to_hans("我的網誌和臉書", phrases) == "我的网络日志和Facebook"
    assert to_hans("覆議", phrases) == "复议"  # the shipped pairs stay


@pytest.mark.parametrize(("body", "key", "line"), [
    ('[mainland]\n"网志" = "博客"\n"abc" = "x"\n', "mainland.abc", 3),
    ('[mainland]\n"网志" = ""\n', "mainland.网志", 2),
    ('[mainland]\n"网志" = 3\n', "mainland.网志", 2),
    ('[hongkong]\n"网志" = "博客"\n', "hongkong", 1),
    ('[mainland]\n"网志" = "博客\n', None, 2),
])
def test_a_bad_phrases_file_names_file_key_and_line(
        tmp_path: Path, body: str, key: str | None, line: int) -> None:
    words = tmp_path / "words.toml"
    words.write_text(body, encoding="utf-8")
    config = write_config(tmp_path)
    text = config.path.read_text(encoding="utf-8").replace(
        "[newsletter]\n", '[newsletter]\nphrases_file = "words.toml"\n', 1)
    config.path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(config.path)
    assert err.value.path == words
    assert err.value.key == key
    assert err.value.line == line


def test_a_missing_phrases_file_is_named_in_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = config.path.read_text(encoding="utf-8").replace(
        "[newsletter]\n", '[newsletter]\nphrases_file = "nowhere.toml"\n', 1)
    config.path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"nowhere\.toml does not exist") as err:
        load_config(config.path)
    assert (err.value.path, err.value.key, err.value.line) == (config.path, "newsletter.phrases_file", 3)


FEED = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><id>tag:tw,2026:feed</id><title>t</title>
<updated>2026-11-20T00:00:00Z</updated>
<entry><id>tag:tw,2026:post-1</id><title>立法院覆議案</title>
<link rel="alternate" href="https://citizens-rights.blogspot.com/2026/11/tw.html"/>
<published>2026-11-20T00:00:00Z</published><updated>2026-11-20T00:00:00Z</updated>
<content type="html">{body}</content></entry></feed>
"""


@pytest.mark.parametrize("mainland", [True, False])
def test_the_real_preview_of_a_taiwan_post_for_a_mainland_reader(tmp_path: Path, mainland: bool) -> None:
    feed = tmp_path / "tw.atom.xml"
    feed.write_text(FEED.replace("{body}", html_escape("<p>請用您的帳號連署，支持覆議。</p>")),
                    encoding="utf-8")
    text = (REPO / "newsletter.toml").read_text(encoding="utf-8")
    text = (text.replace("examples/sample-feed.atom.xml", str(feed))
            .replace('language = "auto"', 'language = "zh-Hant"')
            .replace("sqlite:///data/newsletter.db", f"sqlite:///{tmp_path / 'n.db'}")
            .replace("data/keys.json", str(tmp_path / "keys.json"))
            .replace('"data/outbox"', f'"{tmp_path / "outbox"}"')
            .replace("# mainland_phrases = true", f"mainland_phrases = {str(mainland).lower()}"))
    config = tmp_path / "newsletter.toml"
    config.write_text(text, encoding="utf-8")
    polled = newsletter(config, "poll")
    assert polled.returncode == 0, polled.stderr
    shown = newsletter(config, "preview", "--language", "zh-Hans", "--out", str(tmp_path / "p"))
    assert shown.returncode == 0, shown.stderr
    html = (tmp_path / "p" / "zh-Hans.html").read_text(encoding="utf-8")
    plain = (tmp_path / "p" / "zh-Hans.txt").read_text(encoding="utf-8")
    for part in (html, plain):
        if mainland:
            assert "立法院复议案" in part
            assert "请用您的账号联署，支持复议。" in part
            assert "覆议" not in part
            assert "帐号" not in part
        else:
            assert "立法院覆议案" in part
            assert "请用您的帐号连署，支持覆议。" in part
