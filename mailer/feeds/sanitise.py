"""Sanitise a post's HTML with nh3 and an allowlist, make its links absolute, list its images.

We turn feedparser's own sanitiser off (it is slow, and it keeps things we do not want in
mail) and do the work here, once, in Rust. What is dropped, and why:

- ``script``, ``style``, ``iframe``, ``object``, ``embed``, forms: active content that mail
  clients block anyway and that Chinese providers' filters score as spam;
- event handlers and ``javascript:`` URLs; ``data:`` URLs except raster images in ``img``,
  which the rendering stage turns into inline parts;
- style declarations that hide content (``display:none``, zero font size...): hidden text is a
  classic spam-filter signal;
- elements nested deeper than ``MAX_DEPTH``: their tags go, their text stays. lxml (premailer,
  at render time) silently drops everything past libxml2's limit of 256 levels, and a post
  3,000 levels deep took the posts after it with it;
- 1×1 tracking images (Blogger's ``/tracker/``, WordPress stats, Feedburner): they would leak
  each reader's opening of the mail from inside a censored network.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from itertools import accumulate
from urllib.parse import urljoin, urlsplit

import nh3

from mailer.models import PostImage

__all__ = ["ALLOWED_TAGS", "MAX_DEPTH", "SanitisedHTML", "flatten_deep", "sanitise_html",
           "strip_bidi", "strip_tags"]

# Far above any real post (Blogger's deepest are about 15), far below libxml2's 256 minus the
# mail template's own dozen levels.
MAX_DEPTH = 64
_VOID = frozenset({"br", "col", "hr", "img"})
_ANY_TAG = re.compile(r"<(/?)([a-z][a-z0-9]*)[^>]*>")
_NON_VOID = re.compile(r"<(/?)(?!(?:br|col|hr|img)[\s>/])[a-z]")

ALLOWED_TAGS = frozenset({
    "a", "abbr", "b", "blockquote", "br", "caption", "center", "cite", "code", "col", "colgroup",
    "dd", "del", "div", "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "img", "ins", "li", "mark", "ol", "p", "pre", "q", "s", "small", "span",
    "strike", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "time", "tr",
    "u", "ul",
})

# Removed together with everything inside them (the text of a form or a script is not prose).
_DROP_WITH_CONTENT = frozenset({
    "script", "style", "iframe", "object", "embed", "form", "template", "select", "textarea",
    "button", "applet", "frameset", "frame", "noembed", "svg", "math",
})

_ATTRIBUTES = {
    "*": {"style", "dir", "lang", "title"},
    "a": {"href", "name"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan", "align", "valign"},
    "th": {"colspan", "rowspan", "align", "valign"},
    "table": {"border", "cellpadding", "cellspacing", "align"},
    "col": {"span", "width"},
    "ol": {"start", "type"},
    "blockquote": {"cite"},
    "q": {"cite"},
    "time": {"datetime"},
}

_STYLE_PROPERTIES = frozenset({
    "text-align", "font-weight", "font-style", "text-decoration", "color", "background-color",
    "margin", "margin-left", "margin-right", "margin-top", "margin-bottom", "padding",
    "padding-left", "padding-right", "padding-top", "padding-bottom", "border", "border-collapse",
    "width", "max-width", "height", "float", "clear", "vertical-align", "line-height",
    "font-size", "list-style-type", "white-space",
})

# A declaration that makes the element invisible or unreadably small.
_END = r"\s*(!\s*important\s*)?(;|$|\")"
_HIDING = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*(hidden|collapse)|opacity\s*:\s*0(\.0*)?" + _END
    + r"|font-size\s*:\s*0(\.\d+)?\s*(px|pt|em|rem|%)?" + _END + r"|font-size\s*:\s*1px"
    r"|(max-)?height\s*:\s*0+(px)?" + _END + r"|text-indent\s*:\s*-\d{3,}"
    r"|(left|top)\s*:\s*-\d{3,}",
    re.IGNORECASE,
)
_DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|jpg|gif|webp);base64,", re.IGNORECASE)

# Hosts and paths of known open-tracking images, in case their size is not declared.
_TRACKERS = re.compile(
    r"//(blogger\.googleusercontent\.com/tracker/|feeds\.feedburner\.com/~r/|"
    r"stats\.wordpress\.com/|pixel\.wp\.com/|feeds\.wordpress\.com/.*/(comments|go)/)",
    re.IGNORECASE,
)
_ATTR = re.compile(r'([a-zA-Z_:][-a-zA-Z0-9_:.]*)="([^"]*)"')
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class SanitisedHTML:
    """Clean HTML whose links are absolute, and the images it shows, in order."""

    html: str
    images: tuple[PostImage, ...]


_SCHEMES = {"http", "https", "mailto", "data"}

# Built once: nh3 checks tags, attributes, URL schemes and style properties in Rust. We do not
# pass an ``attribute_filter``: a Python call per attribute cost more than nh3 itself. What is
# left (absolute links, data: URLs, hiding sizes, tracking pixels) is done in one pass below
# over nh3's output, whose form is fixed: every attribute value is double-quoted with ``"``,
# ``<`` and ``>`` escaped, and text never holds a raw ``<``, so a tag is ``<name ...>``.
_CLEANER = nh3.Cleaner(
    tags=set(ALLOWED_TAGS),
    clean_content_tags=set(_DROP_WITH_CONTENT),
    attributes={k: set(v) for k, v in _ATTRIBUTES.items()},
    strip_comments=True,
    link_rel=None,
    url_schemes=set(_SCHEMES),
    filter_style_properties=set(_STYLE_PROPERTIES),
)
# The tags worth a Python call: those that carry URLs, and those whose (already normalised,
# space-free) style may hide them or is left empty. Every other tag is skipped by the regex.
_NEEDS_WORK = re.compile(
    r"<(?:(a|img|q|blockquote)(\s[^>]*)"
    r'|([a-z][a-z0-9]*)(\s(?:[^>]*?\s)?style="(?:"|[^"]*(?:font-size:(?:0|1px)|height:0))[^>]*))>'
)
_URL_TAGS = frozenset({"a", "img", "q", "blockquote"})
_HREF = re.compile(r'\shref="([^"]*)"')
# An <a> whose only URL is already absolute http(s): the common case, nothing to do.
_LINK_DONE = re.compile(r'(?:\s(?!href=|src=|cite=)[a-z-]+="[^"]*")*\shref="https?://[^"]*"'
                        r'(?:\s(?!href=|src=|cite=)[a-z-]+="[^"]*")*')


def _attr_text(attrs: dict[str, str]) -> str:
    return "".join(
        f' {k}="{v.replace("&", "&amp;").replace(chr(34), "&quot;").replace("<", "&lt;").replace(">", "&gt;")}"'
        for k, v in attrs.items()
    )


class _Fixer:
    """The pass over nh3's output: one call per tag that ``_NEEDS_WORK`` picked out."""

    __slots__ = ("base", "images")

    def __init__(self, base: str | None) -> None:
        self.base = base
        self.images: list[PostImage] = []

    def __call__(self, m: re.Match[str]) -> str:
        name, raw = m.group(1) or m.group(3), m.group(2) or m.group(4)
        # nh3 has already removed every style property outside the allowlist (display,
        # visibility, opacity, position...); of those left, only a zero size can hide text.
        style_work = False
        at = raw.find(' style="')
        if at >= 0:
            style = raw[at + 8:raw.find('"', at + 8)]
            style_work = not style or (
                ("font-size" in style or "height" in style) and _HIDING.search(style) is not None)
        if not style_work and (name not in _URL_TAGS or _LINK_DONE.fullmatch(raw)):
            return m.group(0)
        if name == "a" and not style_work:
            return _HREF.sub(self._href, m.group(0))  # only the link changes: skip the rebuild
        attrs = {k: html.unescape(v) if "&" in v else v for k, v in _ATTR.findall(raw)}
        changed = False
        if "style" in attrs and (not attrs["style"].strip() or _HIDING.search(attrs["style"])):
            del attrs["style"]
            changed = True
        for key in ("href", "src", "cite"):
            if key in attrs:
                fixed = self._url(name, key, attrs[key])
                if fixed is None:
                    del attrs[key]
                    changed = True
                elif fixed != attrs[key]:
                    attrs[key] = fixed
                    changed = True
        if name == "img":
            src = attrs.get("src")
            if not src or _is_tracker(src, attrs):
                return ""
            self.images.append(PostImage(url=src, alt=attrs.get("alt", "")))
            if changed is False and src.startswith(("http://", "https://")):
                return m.group(0)  # nothing to rewrite: keep nh3's own serialisation
        return f"<{name}{_attr_text(attrs)}>"

    def _href(self, m: re.Match[str]) -> str:
        fixed = self._url("a", "href", html.unescape(m.group(1)))
        return "" if fixed is None else _attr_text({"href": fixed})

    def _url(self, tag: str, attr: str, value: str) -> str | None:
        if value.startswith(("https://", "http://")):
            return value
        v = value.strip()
        if v[:5].lower() == "data:":
            return v if tag == "img" and attr == "src" and _DATA_IMAGE.match(v) else None
        if self.base and not v.startswith(("#", "http://", "https://")) and not urlsplit(v).scheme:
            return urljoin(self.base, v)
        return v


def flatten_deep(cleaned: str, max_depth: int = MAX_DEPTH) -> str:
    """Drop the tags (not the text) of elements nested deeper than ``max_depth``.

    Works on nh3's output, which is balanced: every element but the void ones has its end tag.
    """
    if cleaned.count("</") < max_depth or max(accumulate(
            -1 if end else 1 for end in _NON_VOID.findall(cleaned)), default=0) <= max_depth:
        return cleaned  # not that deep: the common case costs a scan, no call per tag
    kept: list[bool] = []
    depth = 0

    def tag(m: re.Match[str]) -> str:
        nonlocal depth
        if m.group(2) in _VOID:
            return m.group(0)
        if not m.group(1):
            keep = depth < max_depth
            kept.append(keep)
            depth += keep
            return m.group(0) if keep else ""
        if not kept:
            return ""  # a stray end tag: nh3 never writes one, but never trust the count
        keep = kept.pop()
        depth -= keep
        return m.group(0) if keep else ""

    return _ANY_TAG.sub(tag, cleaned)


def sanitise_html(fragment: str, base_url: str | None = None) -> SanitisedHTML:
    """Clean ``fragment``; relative links resolve against ``base_url`` (the entry's link)."""
    cleaned = flatten_deep(_CLEANER.clean(fragment))
    fixer = _Fixer(base_url)
    cleaned = _NEEDS_WORK.sub(fixer, cleaned)
    if "<img>" in cleaned:
        cleaned = cleaned.replace("<img>", "")  # an image whose source was not allowed
    return SanitisedHTML(html=cleaned.strip(), images=tuple(fixer.images))


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(px)?\s*$")


def _tiny(value: str | None) -> bool:
    if value is None:
        return False
    m = _SIZE.match(value)
    return m is not None and float(m.group(1)) <= 1


def _is_tracker(src: str, attrs: dict[str, str]) -> bool:
    if _TRACKERS.search(src):
        return True
    width, height = attrs.get("width"), attrs.get("height")
    style = attrs.get("style", "")
    if style:
        sw = re.search(r"(?<![-\w])width\s*:\s*([\d.]+\s*(?:px)?)", style)
        sh = re.search(r"(?<![-\w])height\s*:\s*([\d.]+\s*(?:px)?)", style)
        width = sw.group(1) if sw else width
        height = sh.group(1) if sh else height
    return _tiny(width) and _tiny(height)


# Bidirectional embeddings, overrides, isolates and marks (Unicode UAX #9): in a title they make
# a Subject or a table of contents read differently from what it is ("Trojan Source",
# CVE-2021-42574), e.g. a file name or a link that looks reversed. A title needs none of them.
_BIDI_CONTROLS = dict.fromkeys(
    [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C])


def strip_bidi(text: str) -> str:
    """``text`` without bidirectional control characters."""
    return text.translate(_BIDI_CONTROLS)


def strip_tags(fragment: str) -> str:
    """Plain text of an HTML fragment, for titles and language detection (not for display).
    Bidirectional controls go too (``strip_bidi``), escaped or not."""
    if "<" in fragment:
        fragment = _TAG.sub(" ", fragment)
    if "&" in fragment:
        fragment = html.unescape(fragment)
    return _SPACE.sub(" ", strip_bidi(fragment)).strip()
