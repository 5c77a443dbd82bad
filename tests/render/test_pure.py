"""Property tests of the pure helpers: wrapping, script conversion, self-containment."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.render.convert import Conversion, conversion_for, convert_html, convert_text
from mailer.render.safe import make_self_contained, remote_references
from mailer.render.text import display_width, flow, html_to_text, unflow, wrap

CJK = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5)
WORDISH = st.text(alphabet=st.sampled_from("abcdefghij"), min_size=1, max_size=12)
# No deadlines: the first OpenCC call loads its dictionaries, and the machine is shared.
NO_DEADLINE = settings(deadline=None)

TOKENS = st.lists(
    st.one_of(WORDISH, CJK, st.sampled_from(["，", "。", "（", "）", " ", "https://x.org/a/b"])), max_size=80
)


@NO_DEADLINE
@given(TOKENS, st.integers(min_value=20, max_value=100))
def test_wrap_keeps_every_character_and_respects_width(tokens: list[str], width: int) -> None:
    text = "".join(tokens)
    lines = wrap(text, width)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    for line in lines:
        # A line may only be wider than asked when it is one unbreakable Latin word or URL
        # (plus any punctuation glued to it): no space and no Han character to break at.
        if display_width(line) > width:
            assert " " not in line.strip()
            assert not re.search(r"[\u4e00-\u9fff]", line)


@NO_DEADLINE
@given(st.lists(CJK, min_size=40, max_size=200))
def test_wrap_never_starts_a_line_with_closing_punctuation(chars: list[str]) -> None:
    text = "，".join("".join(chars[i : i + 5]) for i in range(0, len(chars), 5)) + "。"
    for line in wrap(text, 30)[1:]:
        assert line[0] not in "，。、）」"


@NO_DEADLINE
@given(st.text(alphabet=st.sampled_from("软件信息网络发表声明台湾 abc<>&\"'/"), max_size=60))
def test_convert_html_changes_text_only(words: str) -> None:
    href = "https://x.org/软件/信息.html"
    fragment = f'<p class="信息"><a href="{href}" title="软件">{_escape(words)}</a></p>'
    out = convert_html(fragment, Conversion("s2twp"))
    assert f'href="{href}"' in out
    assert 'class="信息"' in out  # only alt and title are words a reader sees
    assert 'title="軟體"' in out
    assert out.startswith("<p ")
    assert out.endswith("</a></p>")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@NO_DEADLINE
@given(st.text(alphabet=st.sampled_from("软件信息发表声明"), min_size=1, max_size=30))
def test_simplified_to_traditional_and_back_round_trips_characters(text: str) -> None:
    hant = convert_text(text, conversion_for("zh-Hans", "zh-Hant", taiwan_phrases=False))
    assert convert_text(hant, conversion_for("zh-Hant", "zh-Hans", taiwan_phrases=False)) == text


def test_conversion_choice() -> None:
    assert conversion_for("zh-Hans", "zh-Hant", taiwan_phrases=True) == Conversion("s2twp")
    assert conversion_for("zh-Hans", "zh-Hant", taiwan_phrases=False) == Conversion("s2t")
    assert conversion_for("zh-Hant", "zh-Hans", taiwan_phrases=True) == Conversion("tw2sp")  # mainland words
    assert conversion_for("zh-Hant", "zh-Hans", taiwan_phrases=True, mainland_phrases=False) == Conversion("t2s")
    assert conversion_for("mixed", "zh-Hans", taiwan_phrases=True) == Conversion("tw2sp")
    # English posts too: their Han characters (a name, a slogan) reach the reader's script.
    assert conversion_for("en", "zh-Hant", taiwan_phrases=True) == Conversion("s2twp")
    assert conversion_for("zh-Hant", "zh-Hant", taiwan_phrases=True) is None
    assert conversion_for("zh-Hans", "en", taiwan_phrases=True) is None


ATTACKS = st.sampled_from(
    [
        "<script>alert(1)</script>",
        '<img src="https://t.example/p.gif">',
        "<img src=//t.example/p>",
        '<p onclick="x()">a</p>',
        '<div style="background:url(https://t.example/a)">b</div>',
        "<style>@import url(https://t.example/a.css)</style>",
        "<link rel=stylesheet href=https://t/a.css>",
        '<iframe src="https://t.example"></iframe>',
        '<table background="https://t.example/bg.png">',
        '<a href="javascript:alert(1)">j</a>',
        "<svg><script>1</script></svg>",
        '<img srcset="https://t/a 2x">',
        '<video poster="https://t/p.png"></video>',
        "<p>fine text</p>",
        '<a href="https://ok.example/">ok</a>',
        '<IMG SRC="HTTPS://T.EXAMPLE/X">',
        '<p style="width: expression(alert(1))">e</p>',
        "<p>unclosed",
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(ATTACKS, max_size=8))
def test_make_self_contained_leaves_nothing_remote(pieces: list[str]) -> None:
    html, images = make_self_contained("".join(pieces), {})
    assert remote_references(html) == []
    assert "javascript:" not in html.lower()
    assert images == ()


def test_html_to_text_numbers_each_link_once() -> None:
    body = html_to_text(
        '<p><a href="https://a.example/1">one</a> <a href="https://a.example/1">again</a> '
        '<a href="https://a.example/2">two</a> https://a.example/3</p>',
        alternatives=lambda url: ("@@SLOT_M0@@/1",) if url.endswith("/1") else (),
    )
    assert body.text == "one[1] again[1] two[2] https://a.example/3"
    assert [(r.number, r.url, r.alternatives) for r in body.references] == [
        (1, "https://a.example/1", ("@@SLOT_M0@@/1",)),
        (2, "https://a.example/2", ()),
    ]


def test_html_to_text_keeps_preformatted_and_quotes() -> None:
    body = html_to_text("<pre>  a\n    b</pre><blockquote><p>quoted words</p></blockquote>")
    assert body.text == "  a\n    b\n\n> quoted words"


def test_html_to_text_keeps_table_cells_apart() -> None:
    body = html_to_text("<table><tr><td>日期</td><td>地点</td></tr><tr><td>11月</td><td>北京</td></tr></table>")
    assert body.text == "日期 | 地点\n\n11月 | 北京"


def test_source_line_breaks_inside_chinese_are_not_spaces() -> None:
    body = html_to_text("<p>我们为维权律师\n提供了培训。\nWe also\nwrote a guide.</p>")
    assert body.text == "我们为维权律师提供了培训。 We also wrote a guide."


# ---------------------------------------------------------------- format=flowed (RFC 3676)

URLS = ["https://x.org/%E8%BD%AF/a_b?c=1", "@@SLOT_M0@@/2026/11/p.html", "mailto:a@b.org"]
FLOW_TOKENS = st.lists(
    st.one_of(WORDISH, CJK, st.sampled_from(["，", "。", "（", "）", " ", "  ", "镜像\u00a02",
                                              "From", *URLS])), max_size=120)
FLOW_LINE = st.tuples(st.integers(min_value=0, max_value=2), FLOW_TOKENS).map(
    lambda d: (">" * d[0] + " " if d[0] else "") + "".join(d[1]).rstrip(" "))


@NO_DEADLINE
@given(st.lists(FLOW_LINE, max_size=6), st.integers(min_value=20, max_value=100))
def test_flow_round_trips_and_never_cuts_a_url(lines: list[str], width: int) -> None:
    text = "\n".join(lines)
    flowed = flow(text, width)
    assert unflow(flowed) == text  # what a flowed reader shows is exactly the text
    for line in flowed.split("\n"):
        body = line.rstrip(" ")
        if display_width(body) > width:  # only a token that cannot be cut is that long
            assert " " not in body.lstrip(" >"), line
    for url in URLS:
        for line in lines:
            if url in line:
                assert any(url in out for out in flowed.split("\n")), url
    # A no-break space keeps "镜像 2" on one line.
    assert all(not out.endswith("镜像 ") for out in flowed.split("\n"))


def test_flow_cuts_long_chinese_with_delsp_and_latin_keeping_its_space() -> None:
    chinese = "我们为维权律师提供了新的软件培训，" * 6
    out = flow(chinese, 40).split("\n")
    assert len(out) > 1
    assert all(line.endswith(" ") for line in out[:-1])  # soft breaks
    assert not out[-1].endswith(" ")  # the hard break
    assert unflow("\n".join(out)) == chinese  # joined with no space between Han characters
    latin = "We publish a joint statement calling for the release of detained defenders now."
    cut = flow(latin, 30)
    assert "  \n" in cut  # the word space, then the soft one that DelSp removes
    assert unflow(cut) == latin


def test_flow_stuffs_and_quotes() -> None:
    assert flow("From here", 72) == " From here"
    assert flow("    @@SLOT_M0@@/p.html", 72) == "     @@SLOT_M0@@/p.html"
    quoted = flow("> " + "引用的文字" * 20, 30).split("\n")
    assert all(line.startswith("> ") for line in quoted)
    assert unflow("\n".join(quoted)) == "> " + "引用的文字" * 20
