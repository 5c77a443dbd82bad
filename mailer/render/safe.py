"""Make a post's HTML self-contained for email: nothing remote, nothing that runs.

Posts arrive sanitised by the feeds stage, but an email has stricter rules than a web page:
a remote ``src`` is both a tracking beacon and, in China, a request to a blocked host that can
get the whole message flagged. So every image is swapped for its embedded ``cid:`` part or, when
it could not be embedded, for its alt text and a link; scripts, handlers, ``url(...)`` and
anything else that loads or runs is dropped. ``remote_references`` is the check tests and the
renderer run on the finished HTML.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from html.parser import HTMLParser

from mailer.models import InlineImage
from mailer.slots import SLOT_PREFIX

__all__ = ["make_self_contained", "remote_references"]

_DROP_WITH_CONTENT = frozenset(
    {
        "script",
        "style",
        "iframe",
        "object",
        "embed",
        "noscript",
        "template",
        "svg",
        "math",
        "frame",
        "frameset",
        "applet",
        "canvas",
        "audio",
        "video",
        "form",
        "select",
        "textarea",
        "button",
    }
)
_DROP_TAG = frozenset({"link", "meta", "base", "source", "track", "input", "param", "html", "body", "head", "title"})
_VOID = frozenset({"br", "hr", "img", "wbr", "col", "area"})
_URL_ATTRS = frozenset(
    {
        "href",
        "src",
        "action",
        "formaction",
        "background",
        "poster",
        "cite",
        "longdesc",
        "usemap",
        "data",
        "srcset",
        "lowsrc",
        "dynsrc",
        "ping",
    }
)
_BAD_STYLE = re.compile(r"url\s*\(|expression\s*\(|@import|behavior\s*:|-moz-binding", re.I)
_SAFE_HREF = ("http://", "https://", "mailto:", SLOT_PREFIX, "#")

# Fallback markup for an image that is not embedded: (alt, url) -> HTML.
ImageFallback = Callable[[str, str], str]


def _default_fallback(alt: str, url: str) -> str:
    shown = html.escape(alt or url)
    if not url:
        return f"[{shown}]"
    return f'[<a href="{html.escape(url, quote=True)}">{shown}</a>]'


class _Cleaner(HTMLParser):
    def __init__(self, images: Mapping[str, InlineImage], fallback: ImageFallback) -> None:
        super().__init__(convert_charrefs=False)
        self.images = images
        self.fallback = fallback
        self.out: list[str] = []
        self.dropping: list[str] = []
        self.used: dict[str, InlineImage] = {}

    def _attrs(self, tag: str, attrs: list[tuple[str, str | None]]) -> str:
        parts = []
        for name, value in attrs:
            name = name.lower()
            if name.startswith("on") or name in ("srcset", "background", "ping", "formaction"):
                continue
            if value is None:
                parts.append(f" {name}")
                continue
            if name == "style" and _BAD_STYLE.search(value):
                continue
            if name in _URL_ATTRS:
                v = value.strip()
                if name == "href" and not v.lower().startswith(_SAFE_HREF):
                    continue
                if name != "href" and not v.lower().startswith("cid:"):
                    continue
            parts.append(f' {name}="{html.escape(value, quote=True)}"')
        return "".join(parts)

    def _start(self, tag: str, attrs: list[tuple[str, str | None]], close: bool) -> None:
        tag = tag.lower()
        if self.dropping:
            if tag in _DROP_WITH_CONTENT and not close and tag not in _VOID:
                self.dropping.append(tag)
            return
        if tag in _DROP_WITH_CONTENT:
            if not close:
                self.dropping.append(tag)
            return
        if tag in _DROP_TAG:
            return
        if tag == "img":
            a = dict(attrs)
            src = (a.get("src") or "").strip()
            alt = a.get("alt") or ""
            image = self.images.get(src)
            if image is None:
                if src.lower().startswith("cid:"):
                    pass  # already embedded by someone upstream (a template override)
                else:
                    # Only a web address becomes a link: a data: or javascript: src that was not
                    # embedded shows its alt text alone (readers' clients would open or run it).
                    remote = src.lower().startswith(("http://", "https://"))
                    if remote or alt:
                        self.out.append(self.fallback(alt, src if remote else ""))
                    return
            else:
                self.used[image.cid] = image
                attrs = [(k, v) for k, v in attrs if k.lower() != "src"]
                attrs.insert(0, ("src", f"cid:{image.cid}"))
        self.out.append(f"<{tag}{self._attrs(tag, attrs)}{' /' if close else ''}>")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, tag.lower() in _VOID)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, True)

    def handle_endtag(self, tag: str) -> None:
        tag = tag.lower()
        if self.dropping:
            if tag == self.dropping[-1]:
                self.dropping.pop()
            return
        if tag in _DROP_WITH_CONTENT or tag in _DROP_TAG or tag in _VOID:
            return
        self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if not self.dropping:
            self.out.append(data)

    def handle_entityref(self, name: str) -> None:
        if not self.dropping:
            self.out.append(f"&{name};")

    def handle_charref(self, name: str) -> None:
        if not self.dropping:
            self.out.append(f"&#{name};")


def make_self_contained(
    fragment: str,
    images: Mapping[str, InlineImage],
    fallback: ImageFallback = _default_fallback,
) -> tuple[str, tuple[InlineImage, ...]]:
    """Return the cleaned fragment and the inline images it now refers to (in first-use order)."""
    cleaner = _Cleaner(images, fallback)
    cleaner.feed(fragment)
    cleaner.close()
    return "".join(cleaner.out), tuple(cleaner.used.values())


_REMOTE = [
    ("script element", re.compile(r"<\s*script", re.I)),
    ("event handler", re.compile(r"<[^>]*\son[a-z]+\s*=", re.I)),
    ("remote src", re.compile(r"""\ssrc\s*=\s*["']?\s*(?!cid:)[a-z][a-z0-9+.-]*:""", re.I)),
    ("protocol-relative src", re.compile(r"""\ssrc\s*=\s*["']?\s*//""", re.I)),
    ("css url()", re.compile(r"url\s*\(", re.I)),
    ("css @import", re.compile(r"@import", re.I)),
    ("remote background", re.compile(r"\sbackground\s*=", re.I)),
    ("external stylesheet", re.compile(r"<\s*link\b", re.I)),
]


def remote_references(document: str) -> list[str]:
    """Name every way ``document`` could load or run something; empty means self-contained."""
    return [name for name, pattern in _REMOTE if pattern.search(document)]
