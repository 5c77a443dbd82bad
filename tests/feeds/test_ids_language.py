"""Stable post ids and language detection (pure helpers, with hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.feeds.ids import normalise_link, post_guid
from mailer.feeds.language import declared_language, detect_language


def test_guid_wins_then_link_then_hash() -> None:
    assert post_guid(" tag:x,1:post-1 ", "https://a/b", "t", "c") == "tag:x,1:post-1"
    assert post_guid(None, "https://a/b", "t", "c") == "link:https://a/b"
    assert post_guid("", "", "t", "c").startswith("sha256:")
    assert post_guid(None, None, "t", "c") != post_guid(None, None, "t", "c2")
    assert post_guid(None, "not a url", "t", "c").startswith("sha256:")


@pytest.mark.parametrize(("a", "b"), [
    ("http://Example.com/2026/11/p.html", "https://example.com/2026/11/p.html"),
    ("https://example.com:443/p.html#comments", "https://example.com/p.html"),
    ("https://example.com/p.html?utm_source=rss&utm_medium=feed", "https://example.com/p.html"),
    ("https://example.com/p?id=3&fbclid=zz", "https://example.com/p?id=3"),
    ("https://example.com", "https://example.com/"),
])
def test_links_that_name_the_same_page_normalise_alike(a: str, b: str) -> None:
    assert normalise_link(a) == normalise_link(b)


def test_different_pages_stay_different() -> None:
    assert normalise_link("https://e.com/p?id=3") != normalise_link("https://e.com/p?id=4")
    assert normalise_link("https://e.com/a") != normalise_link("https://e.com/b")


_URLS = st.builds(
    lambda scheme, host, path, q: f"{scheme}://{host}/{path}" + (f"?{q}" if q else ""),
    st.sampled_from(["http", "https", "HTTP"]),
    st.sampled_from(["example.com", "Blog.Example.org", "x.net:443", "x.net:8080"]),
    st.text(alphabet="abz09/_-.%", max_size=20),
    st.text(alphabet="ab=&%_", max_size=12),
)


@given(_URLS)
def test_normalising_is_idempotent(url: str) -> None:
    once = normalise_link(url)
    assert normalise_link(once) == once
    assert once.startswith("https://")


@given(st.text(), st.text())
def test_hash_ids_are_deterministic(title: str, content: str) -> None:
    assert post_guid(None, None, title, content) == post_guid(None, None, title, content)


@pytest.mark.parametrize(("text", "expected"), [
    ("今天我们讨论人权律师的处境，以及他们的家属所面对的压力。", "zh-Hans"),
    ("今天我們討論人權律師的處境，以及他們的家屬所面對的壓力。", "zh-Hant"),
    ("Today we discuss the situation of human-rights lawyers and the pressure on their families.",
     "en"),
    ("Today we discuss the situation of human-rights lawyers and the pressure on their families. "
     "今天我们讨论人权律师的处境，以及他们的家属所面对的压力。", "mixed"),
    ("今天我们讨论人权律师的处境，以及他们的家属所面对的压力。Amnesty International 与 UN。", "zh-Hans"),
    ("", "zh-Hans"),
    ("2026 · 11 · 20", "zh-Hans"),
])
def test_detect_language(text: str, expected: str) -> None:
    assert detect_language(text) == expected


def test_override_and_declared() -> None:
    assert detect_language("Plain English words here", override="zh-Hant") == "zh-Hant"
    assert detect_language("", declared="en-GB") == "en"
    assert detect_language("中文", declared="zh-HK") == "zh-Hant"
    assert detect_language("中文", declared="zh-Hans-CN") == "zh-Hans"
    # a feed that says "en" but carries Chinese text: the text decides
    assert detect_language("今天我們討論人權律師的處境", declared="en") == "zh-Hant"


@pytest.mark.parametrize(("tag", "expected"), [
    ("zh-TW", "zh-Hant"), ("zh_HK", "zh-Hant"), ("zh-Hant-TW", "zh-Hant"), ("zh-CN", "zh-Hans"),
    ("zh-Hans", "zh-Hans"), ("zh", None), ("en-US", "en"), ("EN", "en"), ("fr", None), (None, None),
])
def test_declared_language(tag: str | None, expected: str | None) -> None:
    assert declared_language(tag) == expected


@given(st.text(max_size=300))
def test_detection_always_answers_one_of_ours(text: str) -> None:
    assert detect_language(text) in ("en", "zh-Hans", "zh-Hant", "mixed")
