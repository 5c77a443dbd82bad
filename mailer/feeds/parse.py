"""Feed bytes → sanitised posts. Pure: no I/O, no clock.

We decode the bytes ourselves (BOM, then the XML declaration, then the HTTP charset, then
UTF-8 and GB18030 as fallbacks) and hand feedparser UTF-8 with its own sanitiser and
relative-URI resolution turned off: those two passes cost about three quarters of its time,
and ``sanitise_html`` does both better, once. GB2312/GBK are read as GB18030 and Big5 as
Big5-HKSCS, their supersets, because Chinese sites declare the old name and use the new
characters. When GB18030 and Big5 both decode the bytes, charset-normalizer picks the one
that reads as Chinese (``_chinese``).
"""

from __future__ import annotations

import codecs
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import charset_normalizer
import feedparser

from mailer.errors import NotAFeedError
from mailer.feeds.ids import post_guid
from mailer.feeds.language import detect_language
from mailer.feeds.sanitise import sanitise_html, strip_tags
from mailer.models import Post

__all__ = ["ParsedFeed", "decode_feed", "parse_feed"]

_SUPERSETS = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "cp936": "gb18030",
    "euc-cn": "gb18030", "hz-gb-2312": "gb18030", "csgb2312": "gb18030",
    "big5": "big5hkscs", "big-5": "big5hkscs", "cn-big5": "big5hkscs", "x-x-big5": "big5hkscs",
    "cp950": "cp950",
}
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_XML_DECL = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._:-]+)[\"']")
_XML_DECL_STR = re.compile(r"^\s*<\?xml[^>]*\?>")
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9._:-]+)", re.IGNORECASE)
_HTML_START = re.compile(
    r"^\s*(<\?xml[^>]*\?>\s*)?(<!--.*?-->\s*)*(<!doctype\s+html|<html|<head|<body|<meta|<title)",
    re.IGNORECASE | re.DOTALL,
)
_FEED_ROOT = re.compile(r"<(rss|feed|rdf:RDF|RDF)\b", re.IGNORECASE)
# Escaped markup in a text element (Blogger's <content type='html'>&lt;p&gt;...). Expat hands
# feedparser one callback per run between two entity references, tens of thousands for a
# Blogger feed, and feedparser does Python work on each. The same text as one CDATA section is
# the same XML (the parser reports the same characters) and arrives in a few large pieces.
_ESCAPED_ELEMENT = re.compile(
    r"(<(content|summary|description|content:encoded)\b[^>]*(?<!/)>)([^<]{256,})(</\2\s*>)")
_XML_REF = re.compile(r"&(lt|gt|amp|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);")
_NON_XML_REF = re.compile(r"&(?!(?:lt|gt|amp|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);)")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


def _xml_unescape(text: str) -> str:
    if "&#" not in text:
        # Safe in this order: no replacement can create another reference, and &amp; is last.
        return (text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
                .replace("&apos;", "'").replace("&amp;", "&"))

    def one(m: re.Match[str]) -> str:
        ref = m.group(1)
        if ref[0] != "#":
            return _NAMED[ref]
        code = int(ref[2:], 16) if ref[1] in "xX" else int(ref[1:])
        return chr(code) if 0 < code < 0x110000 else m.group(0)

    return _XML_REF.sub(one, text)


def _as_cdata(m: re.Match[str]) -> str:
    text = m.group(3)
    if "&" not in text or _NON_XML_REF.search(text):
        return m.group(0)  # nothing escaped, or not well-formed: leave it to feedparser
    raw = _xml_unescape(text).replace("]]>", "]]]]><![CDATA[>")
    return f"{m.group(1)}<![CDATA[{raw}]]>{m.group(4)}"


# Language is judged on the start and the end of a long post (a bilingual post puts its
# Chinese half after the English one); stripping all of a long post costs time for nothing.
_LANGUAGE_SAMPLE = 4_000
_ENTRY_END = re.compile(r"</(?:[\w-]+:)?(?:entry|item)\s*>", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedFeed:
    """What a feed said. ``warning`` explains why only part of it could be read, if so."""

    title: str
    link: str | None
    language: str | None
    version: str
    posts: tuple[Post, ...]
    encoding: str
    warning: str | None = None


def _codec(name: str) -> str | None:
    label = name.strip().strip("\"'").lower()
    label = _SUPERSETS.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def decode_feed(data: bytes, content_type: str | None = None) -> tuple[str, str]:
    """Return (text, encoding used). The first candidate that decodes strictly wins."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(enc, errors="replace"), enc
    candidates: list[str] = []
    m = _XML_DECL.match(data[:512])
    if m:
        candidates.append(m.group(1).decode("ascii"))
    if content_type:
        c = _CHARSET.search(content_type)
        if c:
            candidates.append(c.group(1))
    candidates += ["utf-8", "gb18030"]
    for name in candidates:
        codec = _codec(name)
        if codec is None:
            continue
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        if codec in _CHINESE:
            return _chinese(data, text, codec)
        return text, codec
    return data.decode("utf-8", errors="replace"), "utf-8"


_CHINESE = ("gb18030", "big5hkscs")


def _chinese(data: bytes, text: str, codec: str) -> tuple[str, str]:
    """GB18030 and Big5 bytes often both decode without error, one of them into nonsense: an
    old Hong Kong or Taiwan feed labelled GB2312, or not labelled at all, is Big5. When both
    decode, charset-normalizer (made for this) judges which text is Chinese."""
    other = _CHINESE[1] if codec == _CHINESE[0] else _CHINESE[0]
    try:
        other_text = data.decode(other)
    except UnicodeDecodeError:
        return text, codec
    best = charset_normalizer.from_bytes(data, cp_isolation=list(_CHINESE)).best()
    if best is not None and best.encoding == other:
        return other_text, other
    return text, codec


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        y, mo, d, h, mi, sec = value[:6]
        return datetime(y, mo, d, h, mi, min(sec, 59), tzinfo=UTC)
    except (TypeError, ValueError):
        return None


def _content(entry: Mapping[str, Any]) -> tuple[str, str | None]:
    """The fullest HTML the entry offers (content:encoded, Atom content) over its summary."""
    best: Mapping[str, Any] | None = None
    for c in entry.get("content") or ():
        if best is None or len(c.get("value") or "") > len(best.get("value") or ""):
            best = c
    if best is None or not (best.get("value") or "").strip():
        detail = entry.get("summary_detail")
        best = detail if detail else {"value": entry.get("summary") or "", "type": "text/html"}
    value = best.get("value") or ""
    if (best.get("type") or "text/html") == "text/plain":
        value = "".join(f"<p>{html.escape(p.strip())}</p>" for p in value.split("\n\n") if p.strip())
    return value, best.get("language")


def _entries_whole(text: str, count: int) -> int:
    """How many entries closed before the text ended: the rest were cut by a truncated read."""
    return min(count, len(_ENTRY_END.findall(text)))


def parse_feed(data: bytes, *, feed_url: str, language: str = "auto",
               content_type: str | None = None, base_url: str | None = None) -> ParsedFeed:
    """Parse feed ``data`` fetched from ``feed_url``. Raise ``NotAFeedError`` for non-feeds.

    ``base_url`` is where the bytes really came from (after redirects); relative entry links
    resolve against it, and against ``feed_url`` when that is an http(s) URL.
    """
    if base_url is None and feed_url.startswith(("http://", "https://")):
        base_url = feed_url
    if not data.strip():
        raise NotAFeedError("empty body", feed=feed_url)
    text, encoding = decode_feed(data, content_type)
    head = text[:4096]
    if _HTML_START.match(head) and not _FEED_ROOT.search(head):
        raise NotAFeedError("an HTML page, not a feed (a block page or captive portal?)", feed=feed_url)
    # Tell feedparser the truth about the bytes we hand it.
    text = _XML_DECL_STR.sub('<?xml version="1.0" encoding="utf-8"?>', text, count=1)
    body = _ESCAPED_ELEMENT.sub(_as_cdata, text).encode("utf-8")
    parsed = feedparser.parse(
        body, sanitize_html=False, resolve_relative_uris=False,
        response_headers={"content-type": "application/xml; charset=utf-8",
                          # feedparser's base for relative <link>s and xml:base (RFC 3986 §5.1)
                          **({"content-location": base_url} if base_url else {})},
    )
    version = parsed.get("version") or ""
    entries = list(parsed.get("entries") or ())
    warning: str | None = None
    if parsed.get("bozo"):
        if not version and not entries:
            reason = parsed.get("bozo_exception")
            raise NotAFeedError(f"not a feed ({reason})" if reason else "not a feed", feed=feed_url)
        whole = _entries_whole(text, len(entries))
        dropped = len(entries) - whole
        entries = entries[:whole]
        reason = str(parsed.get("bozo_exception") or "malformed")
        warning = f"feed is malformed ({reason}); kept {whole} whole entries" + (
            f", dropped {dropped} cut short" if dropped else "")
    elif not version:
        raise NotAFeedError("not a feed (no RSS or Atom root element)", feed=feed_url)
    feed = parsed.get("feed") or {}
    feed_link = feed.get("link") or None
    feed_lang = feed.get("language") or None
    base_default = feed_link or base_url
    posts = tuple(
        p for p in (_post(e, feed_url, base_default, feed_lang, language) for e in entries) if p
    )
    return ParsedFeed(
        title=strip_tags(feed.get("title") or ""), link=feed_link, language=feed_lang,
        version=version, posts=posts, encoding=encoding, warning=warning,
    )


def _language_sample(content: str) -> str:
    if len(content) <= 2 * _LANGUAGE_SAMPLE:
        return strip_tags(content)
    return strip_tags(content[:_LANGUAGE_SAMPLE]) + " " + strip_tags(content[-_LANGUAGE_SAMPLE:])


def _post(entry: Mapping[str, Any], feed_url: str, base: str | None, feed_lang: str | None,
          override: str) -> Post | None:
    link = entry.get("link") or None
    raw, content_lang = _content(entry)
    title = strip_tags(entry.get("title") or "")
    if not raw.strip() and not title:
        return None
    clean = sanitise_html(raw, link or base)
    content = clean.html
    if content and not content.startswith("<"):
        content = f"<p>{content}</p>"  # bare text (RSS 0.9x descriptions): give it a paragraph
    if not title:
        title = strip_tags(content)[:80]
    published = _when(entry.get("published_parsed")) or _when(entry.get("updated_parsed"))
    lang = detect_language(
        title + " " + _language_sample(content),
        declared=content_lang or entry.get("language") or feed_lang, override=override,
    )
    return Post(
        guid=post_guid(entry.get("id"), link, title, content),
        title=title, content_html=content, language=lang, link=link,
        published=published, updated=_when(entry.get("updated_parsed")),
        images=clean.images, feed_url=feed_url,
    )
