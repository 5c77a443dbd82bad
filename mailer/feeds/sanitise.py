"""Sanitise a post's HTML with nh3 and an allowlist, make its links absolute, list its images.

We turn feedparser's own sanitiser off (it is slow, and it keeps things we do not want in
mail) and do the work here, once, in Rust. What is dropped, and why:

- ``script``, ``style``, ``iframe``, ``object``, ``embed``, forms: active content that mail
  clients block anyway and that Chinese providers' filters score as spam;
- event handlers and ``javascript:`` URLs; ``data:`` URLs except raster images in ``img``,
  which the rendering stage turns into inline parts;
- style declarations that hide content (``display:none``, zero font size...): hidden text is a
  classic spam-filter signal;
- 1×1 tracking images (Blogger's ``/tracker/``, WordPress stats, Feedburner): they would leak
  each reader's opening of the mail from inside a censored network.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import nh3

from mailer.models import PostImage

__all__ = ["ALLOWED_TAGS", "SanitisedHTML", "sanitise_html", "strip_tags"]

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
_HIDING = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*(hidden|collapse)|opacity\s*:\s*0(\.0*)?\s*(;|$)"
    r"|font-size\s*:\s*0(\.\d+)?\s*(px|pt|em|rem|%)?\s*(;|$)|font-size\s*:\s*1px"
    r"|(max-)?height\s*:\s*0+(px)?\s*(;|$)|text-indent\s*:\s*-\d{3,}"
    r"|(left|top)\s*:\s*-\d{3,}",
    re.IGNORECASE,
)
_DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|jpg|gif|webp);base64,", re.IGNORECASE)
_URL_ATTRS = frozenset({"href", "src", "cite"})

# Hosts and paths of known open-tracking images, in case their size is not declared.
_TRACKERS = re.compile(
    r"//(blogger\.googleusercontent\.com/tracker/|feeds\.feedburner\.com/~r/|"
    r"stats\.wordpress\.com/|pixel\.wp\.com/|feeds\.wordpress\.com/.*/(comments|go)/)",
    re.IGNORECASE,
)
_IMG = re.compile(r"<img\b([^>]*)>", re.IGNORECASE)
_ATTR = re.compile(r'([a-zA-Z_:][-a-zA-Z0-9_:.]*)="([^"]*)"')
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class SanitisedHTML:
    """Clean HTML whose links are absolute, and the images it shows, in order."""

    html: str
    images: tuple[PostImage, ...]


def _make_filter(base: str | None) -> _Filter:
    return _Filter(base)


class _Filter:
    """nh3 calls this for every attribute it has already allowed (after its URL scheme check)."""

    __slots__ = ("base",)

    def __init__(self, base: str | None) -> None:
        self.base = base

    def __call__(self, tag: str, attr: str, value: str) -> str | None:
        if attr in _URL_ATTRS:
            v = value.strip()
            if v[:5].lower() == "data:":
                return v if tag == "img" and attr == "src" and _DATA_IMAGE.match(v) else None
            if self.base and not urlsplit(v).scheme and not v.startswith("#"):
                return urljoin(self.base, v)
            return v
        if attr == "style":
            return None if _HIDING.search(value) else value
        return value


_SCHEMES = {"http", "https", "mailto", "data"}


def sanitise_html(fragment: str, base_url: str | None = None) -> SanitisedHTML:
    """Clean ``fragment``; relative links resolve against ``base_url`` (the entry's link)."""
    cleaned = nh3.clean(
        fragment,
        tags=set(ALLOWED_TAGS),
        clean_content_tags=set(_DROP_WITH_CONTENT),
        attributes={k: set(v) for k, v in _ATTRIBUTES.items()},
        attribute_filter=_make_filter(base_url),
        strip_comments=True,
        link_rel=None,
        url_schemes=set(_SCHEMES),
        filter_style_properties=set(_STYLE_PROPERTIES),
    )
    images: list[PostImage] = []

    def image(m: re.Match[str]) -> str:
        attrs = {k.lower(): html.unescape(v) for k, v in _ATTR.findall(m.group(1))}
        src = attrs.get("src", "")
        if not src or _is_tracker(src, attrs):
            return ""
        images.append(PostImage(url=src, alt=attrs.get("alt", "")))
        return m.group(0)

    if "<img" in cleaned:
        cleaned = _IMG.sub(image, cleaned)
    return SanitisedHTML(html=cleaned.strip(), images=tuple(images))


def _tiny(value: str | None) -> bool:
    if value is None:
        return False
    m = re.match(r"\s*(\d+(?:\.\d+)?)\s*(px)?\s*$", value)
    return bool(m) and float(m.group(1)) <= 1  # type: ignore[union-attr]


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


def strip_tags(fragment: str) -> str:
    """Plain text of an HTML fragment, for titles and language detection (not for display)."""
    if "<" in fragment:
        fragment = _TAG.sub(" ", fragment)
    if "&" in fragment:
        fragment = html.unescape(fragment)
    return _SPACE.sub(" ", fragment).strip()
