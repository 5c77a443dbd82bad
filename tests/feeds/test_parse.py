"""Parsing real-world feed shapes and encodings (pure: bytes in, posts out)."""

from __future__ import annotations

import codecs
import html
from xml.etree import ElementTree
from xml.sax.saxutils import escape as xml_escape

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.errors import NotAFeedError
from mailer.feeds.parse import _ESCAPED_ELEMENT, _as_cdata, decode_feed, parse_feed
from tests.feeds.conftest import fixture_bytes


@pytest.mark.parametrize(("name", "version", "titles", "languages"), [
    ("blogger.atom.xml", "atom10",
     ["律师被拘留的第七天", "臺灣記者會聲明全文", "Weekly digest: detentions and releases"],
     ["zh-Hans", "zh-Hant", "en"]),
    ("wordpress.rss2.xml", "rss20",
     ["Court hearing postponed again", "Statement on the new regulations"], ["en", "en"]),
    ("rss092.xml", "rss092", ["Annual report published", "Café meeting cancelled"], ["en", "en"]),
    ("rss10.rdf", "rss10", ["香港法院判決"], ["zh-Hant"]),
    ("gb18030.xml", "rss20", ["国家安全法修订草案"], ["zh-Hans"]),
    ("gbk.xml", "rss20", ["朱镕基与李喆的讲话"], ["zh-Hans"]),
    ("big5.xml", "rss20", ["立法會選舉結果公佈"], ["zh-Hant"]),
    ("utf8-bom.xml", "rss20", ["带BOM的订阅源"], ["zh-Hans"]),
])
def test_formats_and_encodings(name: str, version: str, titles: list[str],
                               languages: list[str]) -> None:
    feed = parse_feed(fixture_bytes(name), feed_url=f"https://feeds.example/{name}")
    assert feed.version == version
    assert feed.warning is None
    assert [p.title for p in feed.posts] == titles
    assert [p.language for p in feed.posts] == languages
    assert all(p.content_html.startswith("<") for p in feed.posts)


def test_encodings_keep_characters_outside_the_declared_charset() -> None:
    # U+20BB7 exists only in GB18030; 镕 and 喆 are GBK but not GB2312 (which gbk.xml declares).
    assert "𠮷" in parse_feed(fixture_bytes("gb18030.xml"), feed_url="x").posts[0].content_html
    gbk = parse_feed(fixture_bytes("gbk.xml"), feed_url="x").posts[0].content_html
    assert "朱镕基" in gbk
    assert "李喆" in gbk
    big5 = parse_feed(fixture_bytes("big5.xml"), feed_url="x").posts[0].content_html
    assert "投票率創下歷史新低" in big5


def test_http_charset_is_a_fallback_when_no_declaration() -> None:
    body = fixture_bytes("big5.xml").replace(b' encoding="big5"', b"")
    text, enc = decode_feed(body, "application/rss+xml; charset=Big5")
    assert enc == "big5hkscs"
    assert "立法會" in text
    bom = codecs.BOM_UTF8 + b"<rss/>"
    assert decode_feed(bom, "text/xml; charset=gbk") == ("<rss/>", "utf-8")


@pytest.mark.parametrize("label", [b' encoding="gb2312"', b""], ids=["labelled-gb2312", "unlabelled"])
def test_big5_labelled_gb_or_not_at_all_is_read_as_big5(label: bytes) -> None:
    # An old Hong Kong feed: Big5 bytes that GB18030 also decodes, into nonsense.
    body = fixture_bytes("big5.xml").replace(b' encoding="big5"', label)
    assert body.decode("gb18030")  # no error: the decoder alone cannot tell
    text, enc = decode_feed(body)
    assert enc == "big5hkscs"
    assert "立法會選舉結果公佈" in text
    # GB text stays GB: Big5 cannot decode it, so nothing is second-guessed.
    gb, gb_enc = decode_feed(fixture_bytes("gbk.xml"))
    assert gb_enc == "gb18030"
    assert "朱镕基" in gb


def test_blogger_content_is_unescaped_sanitised_and_absolute() -> None:
    posts = parse_feed(fixture_bytes("blogger.atom.xml"), feed_url="https://b/feed").posts
    first = posts[0]
    assert first.guid == "tag:blogger.com,1999:blog-7001.post-1001"
    assert first.link == "https://citizens-rights.blogspot.com/2026/11/lawyer-day-7.html"
    assert '<a href="https://citizens-rights.blogspot.com/2026/11/background.html">' in first.content_html
    assert "<script" not in first.content_html
    assert "track()" not in first.content_html
    assert "tracker" not in first.content_html
    assert [i.url for i in first.images] == [
        "https://blogger.googleusercontent.com/img/b/R29v/s320/photo.jpg"]
    # relative to the entry's own link, not the feed's
    assert 'href="https://citizens-rights.blogspot.com/2026/11/statement.html"' in posts[1].content_html
    assert "onclick" not in posts[1].content_html
    assert "javascript" not in posts[2].content_html


def test_wordpress_prefers_content_encoded_over_the_summary() -> None:
    post = parse_feed(fixture_bytes("wordpress.rss2.xml"), feed_url="https://m/feed/").posts[0]
    assert "six hours" in post.content_html
    assert "[&#8230;]" not in post.content_html
    assert post.guid == "https://monitor.example.org/?p=4242"
    assert post.images[0].url == "https://monitor.example.org/wp-content/uploads/2026/11/court.jpg"
    assert post.images[0].alt == "The court building"
    assert len(post.images) == 1  # the pixel.wp.com stats image is gone
    assert "<iframe" not in post.content_html
    assert "youtube" not in post.content_html
    assert "display" not in post.content_html
    assert "srcset" not in post.content_html


def test_rss092_relative_link_resolves_against_the_entry() -> None:
    post = parse_feed(fixture_bytes("rss092.xml"), feed_url="http://old.example.net/rss").posts[0]
    assert 'href="http://old.example.net/reports/2026.html"' in post.content_html


def test_missing_guid_falls_back_to_link_then_hash() -> None:
    posts = parse_feed(fixture_bytes("no-guid.rss2.xml"), feed_url="https://n/").posts
    assert posts[0].guid == "link:https://noguid.example.com/2026/11/a.html"
    assert posts[1].guid.startswith("sha256:")
    again = parse_feed(fixture_bytes("no-guid.rss2.xml"), feed_url="https://n/").posts
    assert [p.guid for p in again] == [p.guid for p in posts]


def test_truncated_feed_keeps_whole_entries_and_says_why() -> None:
    feed = parse_feed(fixture_bytes("truncated.atom.xml"), feed_url="https://t/")
    assert [p.guid[-4:] for p in feed.posts] == ["1001", "1002"]
    assert feed.warning is not None
    assert "dropped 1" in feed.warning


def test_bozo_feed_with_all_entries_closed_keeps_them_all() -> None:
    body = fixture_bytes("wordpress.rss2.xml").replace(b"<description>Reports</description>",
                                                       b"<description>R & D</description>")
    feed = parse_feed(body, feed_url="https://m/")
    assert feed.warning is not None
    assert len(feed.posts) == 2


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "empty body"),
    (b"   \n", "empty body"),
    (fixture_bytes("blockpage.html"), "HTML page"),
    (b"<html><body>Please log in to the Wi-Fi</body></html>", "HTML page"),
    (b"just some text, not xml", "not a feed"),
    (b'{"error": "forbidden"}', "not a feed"),
])
def test_not_a_feed(body: bytes, reason: str) -> None:
    with pytest.raises(NotAFeedError, match=reason) as info:
        parse_feed(body, feed_url="https://blocked.example/feed")
    assert info.value.feed == "https://blocked.example/feed"


def test_feed_language_setting_overrides_detection() -> None:
    posts = parse_feed(fixture_bytes("blogger.atom.xml"), feed_url="x", language="zh-Hant").posts
    assert {p.language for p in posts} == {"zh-Hant"}


def test_declared_language_decides_between_the_two_scripts() -> None:
    # Characters common to both scripts: the text cannot tell, the declaration can.
    body = fixture_bytes("rss10.rdf").replace("香港法院判決".encode(), "中文中文".encode()).replace(
        "香港法院今日就案件作出判決，多名被告被判有罪。".encode(), "中文中文中文".encode())
    assert parse_feed(body, feed_url="x").posts[0].language == "zh-Hant"
    simplified = body.replace(b"zh-TW", b"zh-CN")
    assert parse_feed(simplified, feed_url="x").posts[0].language == "zh-Hans"


def test_plain_text_content_is_escaped() -> None:
    body = b"""<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>
<entry><id>urn:1</id><title>Plain</title><content type="text">a &lt;b&gt; c

second paragraph</content></entry></feed>"""
    post = parse_feed(body, feed_url="x").posts[0]
    assert post.content_html == "<p>a &lt;b&gt; c</p><p>second paragraph</p>"


_XML_TEXT = st.lists(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Co", "Cn")),
            max_size=20)
    | st.sampled_from(["<", ">", "&", '"', "'", "]]>", "&amp;", "&#38;", "\n", "<p>", "中文"]),
    max_size=60,
).map("".join)


def _content_text(doc: str) -> str | None:
    return ElementTree.fromstring(doc).findtext("content")  # noqa: S314 (our own test strings)


@given(_XML_TEXT)
def test_escaped_content_as_cdata_is_the_same_xml(text: str) -> None:
    # The speed-up rewrites escaped markup as CDATA; the parser must see the very same text.
    escaped = xml_escape(text + " " * 256, {chr(34): "&quot;"})
    doc = f"<feed><content type='html'>{escaped}</content></feed>"
    rewritten = _ESCAPED_ELEMENT.sub(_as_cdata, doc)
    assert ("<![CDATA[" in rewritten) == ("&" in escaped)
    assert _content_text(rewritten) == _content_text(doc)


def test_numeric_references_survive_the_rewrite() -> None:
    text = "&lt;p&gt;a &#38;lt; b &amp;#38; c &#x4E2D;&lt;/p&gt;" + " " * 300
    doc = f"<feed><content>{text}</content></feed>"
    rewritten = _ESCAPED_ELEMENT.sub(_as_cdata, doc)
    assert "CDATA" in rewritten
    assert _content_text(rewritten) == "<p>a &lt; b &#38; c 中</p>" + " " * 300


def test_relative_entry_links_resolve_against_where_the_feed_came_from() -> None:
    body = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>
<entry><id>urn:x:1</id><title>Relative</title><link rel="alternate" href="/2026/11/rel.html"/>
<content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml"><p>See <a href="notes.html">notes</a>
and <img src="pic.png" alt="pic"/>.</p><script>x()</script></div></content></entry></feed>"""
    post = parse_feed(body, feed_url="https://old.example/feed",
                      base_url="https://new.example/feeds/atom").posts[0]
    assert post.link == "https://new.example/2026/11/rel.html"
    assert 'href="https://new.example/2026/11/notes.html"' in post.content_html
    assert post.images[0].url == "https://new.example/2026/11/pic.png"
    assert "<script" not in post.content_html
    assert "x()" not in post.content_html


@pytest.mark.parametrize("name", ["blogger.atom.xml", "wordpress.rss2.xml"])
def test_a_feed_cut_anywhere_yields_only_whole_posts(name: str) -> None:
    data = fixture_bytes(name)
    full = {p.guid: p for p in parse_feed(data, feed_url="https://cut.example/feed").posts}
    kept: set[int] = set()
    for cut in range(0, len(data), 29):
        try:
            posts = parse_feed(data[:cut], feed_url="https://cut.example/feed").posts
        except NotAFeedError:
            continue
        kept.add(len(posts))
        for p in posts:
            assert p == full[p.guid], f"cut at {cut} kept a partial post {p.guid}"
    assert {0, 1} <= kept  # some cuts fell inside the first post, some after it


@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_a_feed_or_not_a_feed(data: bytes) -> None:
    try:
        feed = parse_feed(data, feed_url="https://fuzz.example/feed")
    except NotAFeedError:
        return
    assert all(p.language in ("en", "zh-Hans", "zh-Hant", "mixed") for p in feed.posts)


def test_a_long_english_post_with_a_chinese_half_is_mixed() -> None:
    english = "<p>" + "The court hearing was postponed again and families waited outside. " * 12 + "</p>"
    chinese = "<p>" + "法院再次推迟了开庭，家属们在门外等候了六个小时。" * 12 + "</p>"
    content = html.escape(english * 14 + chinese * 8)  # the Chinese half starts past 11 KB
    body = (f'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>'
            f'<entry><id>urn:m:1</id><title>Hearing postponed</title>'
            f'<content type="html">{content}</content></entry></feed>').encode()
    assert parse_feed(body, feed_url="x").posts[0].language == "mixed"
