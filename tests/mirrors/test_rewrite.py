"""Rewriting origin links into slot alternatives: absolute, relative, protocol-relative."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from mailer.mirrors.rewrite import (
    add_mirror_lines,
    add_mirror_links,
    mirror_alternatives,
    origin_path,
)
from mailer.mirrors.sites import BLOGSPOT_COUNTRY_SUFFIXES

ORIGINS = ("https://citizens-rights.blogspot.com", "https://example.org/blog")


def label(i: int) -> str:
    return f"镜像{i + 1}"


def test_absolute_link_keeps_path_query_fragment() -> None:
    url = "https://citizens-rights.blogspot.com/2014/11/post.html?m=1#c5"
    assert origin_path(url, ORIGINS) == "/2014/11/post.html?m=1#c5"


def test_host_is_case_insensitive_and_http_matches() -> None:
    assert origin_path("HTTP://Citizens-Rights.BlogSpot.com/a", ORIGINS) == "/a"


def test_protocol_relative() -> None:
    assert origin_path("//citizens-rights.blogspot.com/2014/x.html", ORIGINS) == "/2014/x.html"


def test_relative_needs_base() -> None:
    assert origin_path("2014/11/post.html", ORIGINS) is None
    base = "https://citizens-rights.blogspot.com/2014/10/older.html"
    assert origin_path("../11/post.html", ORIGINS, base) == "/2014/11/post.html"
    assert origin_path("/p/about.html", ORIGINS, base) == "/p/about.html"


def test_origin_with_path_prefix() -> None:
    assert origin_path("https://example.org/blog/2014/p.html", ORIGINS) == "/2014/p.html"
    assert origin_path("https://example.org/blog", ORIGINS) == "/"
    assert origin_path("https://example.org/blogger/x", ORIGINS) is None
    assert origin_path("https://example.org/other", ORIGINS) is None


def test_other_sites_and_lookalikes_are_not_origins() -> None:
    for url in (
        "https://evil.com/citizens-rights.blogspot.com/x",
        "https://citizens-rights.blogspot.com.evil.com/x",
        "https://citizens-rights.blogspot.com@evil.com/x",
        "https://citizens-rights.blogspot.com:8443/x",
        "mailto:someone@example.org",
        "javascript:alert(1)",
        "ftp://citizens-rights.blogspot.com/x",
        "",
    ):
        assert origin_path(url, ORIGINS) is None, url


def test_default_port_is_the_origin() -> None:
    assert origin_path("https://citizens-rights.blogspot.com:443/x", ORIGINS) == "/x"


def test_alternatives() -> None:
    url = "https://citizens-rights.blogspot.com/2014/11/post.html"
    assert mirror_alternatives(url, ORIGINS, 3) == (
        "@@SLOT_M0@@/2014/11/post.html",
        "@@SLOT_M1@@/2014/11/post.html",
        "@@SLOT_M2@@/2014/11/post.html",
    )
    assert mirror_alternatives("https://twitter.com/x", ORIGINS, 3) == ()


def test_html_adds_alternatives_after_origin_links_only() -> None:
    html = (
        '<p>Read <a href="https://citizens-rights.blogspot.com/2014/11/post.html?a=1&amp;b=2">'
        'the post</a> and <a href="https://twitter.com/x">twitter</a>.</p>'
    )
    out = add_mirror_links(html, ORIGINS, 2, label)
    assert out.startswith(html[: html.index("</a>") + 4])  # the original link is kept as is
    assert '<a href="@@SLOT_M0@@/2014/11/post.html?a=1&amp;b=2">镜像1</a>' in out
    assert '<a href="@@SLOT_M1@@/2014/11/post.html?a=1&amp;b=2">镜像2</a>' in out
    assert '<a href="https://twitter.com/x">twitter</a>.</p>' in out
    assert out.count("@@SLOT_M") == 2


def test_html_protocol_relative_single_quotes_and_attribute_gt() -> None:
    html = ("<a title='a > b' href='//citizens-rights.blogspot.com/x.html'>x</a>"
            '<a data-href="https://citizens-rights.blogspot.com/no" href="https://other.org/">o</a>')
    out = add_mirror_links(html, ORIGINS, 1, label)
    assert out.count("@@SLOT_M0@@/x.html") == 1
    assert "@@SLOT_M0@@/no" not in out


def test_html_relative_links_with_base() -> None:
    html = '<a href="/2014/11/post.html">p</a><a href="#top">top</a>'
    out = add_mirror_links(html, ORIGINS, 1, label, base="https://citizens-rights.blogspot.com/")
    assert "@@SLOT_M0@@/2014/11/post.html" in out
    assert "@@SLOT_M0@@/#top" in out
    assert add_mirror_links(html, ORIGINS, 1, label) == html


def test_label_is_escaped_and_rewrite_is_idempotent() -> None:
    html = '<a href="https://citizens-rights.blogspot.com/x">x</a>'
    once = add_mirror_links(html, ORIGINS, 2, lambda i: f"<mirror {i}>")
    assert "&lt;mirror 0&gt;" in once
    assert add_mirror_links(once, ORIGINS, 2, lambda i: f"<mirror {i}>") == once


def test_zero_slots_is_identity() -> None:
    html = '<a href="https://citizens-rights.blogspot.com/x">x</a>'
    assert add_mirror_links(html, ORIGINS, 0, label) == html


def test_text_part_lines() -> None:
    text = ("请看https://citizens-rights.blogspot.com/2014/11/post.html。\n"
            "Other: https://twitter.com/x\n"
            "(//citizens-rights.blogspot.com/a.html)")
    out = add_mirror_lines(text, ORIGINS, 2, label)
    lines = out.split("\n")
    assert lines[0] == "请看https://citizens-rights.blogspot.com/2014/11/post.html。"
    assert lines[1] == "    镜像1: @@SLOT_M0@@/2014/11/post.html"
    assert lines[2] == "    镜像2: @@SLOT_M1@@/2014/11/post.html"
    assert lines[3] == "Other: https://twitter.com/x"
    assert lines[5:] == ["    镜像1: @@SLOT_M0@@/a.html", "    镜像2: @@SLOT_M1@@/a.html"]
    assert add_mirror_lines(out, ORIGINS, 2, label) == out


_path = st.lists(st.from_regex(r"[a-z0-9\-]{1,8}", fullmatch=True), min_size=0, max_size=4)


@given(parts=_path, query=st.from_regex(r"[a-z0-9=&]{0,10}", fullmatch=True))
def test_any_origin_path_round_trips(parts: list[str], query: str) -> None:
    path = "/" + "/".join(parts)
    url = "https://citizens-rights.blogspot.com" + path + (f"?{query}" if query else "")
    got = origin_path(url, ORIGINS)
    assert got == path + (f"?{query}" if query else "")
    # Filling the slot with a mirror base gives the same place on the mirror.
    for alt in mirror_alternatives(url, ORIGINS, 2):
        filled = re.sub(r"@@SLOT_M\d+@@", "https://mirror.example.net/pre", alt)
        assert filled == "https://mirror.example.net/pre" + got


@given(st.text(max_size=200))
def test_html_without_origin_links_is_unchanged(text: str) -> None:
    html = f'<p>{text}</p><a href="https://elsewhere.example/">e</a>'
    assert add_mirror_links(html, ORIGINS, 3, label) == html


@given(st.sampled_from(BLOGSPOT_COUNTRY_SUFFIXES))
def test_a_blogspot_origin_matches_its_country_domains(cc: str) -> None:
    # Old posts link to the country domain Blogger redirected their author to.
    url = f"http://Citizens-Rights.blogspot.{cc}/2014/11/post.html?m=1"
    assert origin_path(url, ORIGINS) == "/2014/11/post.html?m=1"
    assert origin_path(f"https://another-blog.blogspot.{cc}/2014/11/post.html", ORIGINS) is None


def test_country_aliases_are_for_blogspot_only_and_reach_the_text_part() -> None:
    assert origin_path("https://example.org.hk/blog/p.html", ORIGINS) is None
    assert origin_path("https://citizens-rights.blogspot.xyz/p.html", ORIGINS) is None
    assert origin_path("https://citizens-rights.blogspot.com.evil.example/p.html", ORIGINS) is None
    html = '<p><a href="https://citizens-rights.blogspot.hk/2014/11/a.html">a</a></p>'
    assert "@@SLOT_M0@@/2014/11/a.html" in add_mirror_links(html, ORIGINS, 2, label)
    text = "Read https://citizens-rights.blogspot.tw/2014/11/a.html today."
    assert "@@SLOT_M0@@/2014/11/a.html" in add_mirror_lines(text, ORIGINS, 2, label)
