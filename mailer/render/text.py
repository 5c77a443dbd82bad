"""The text/plain part: every post in full, wrapped for CJK and Latin alike, links as references.

Many mainland readers see the plain part first (QQ Mail's "plain text" view, phones with images
off), and with no link working it must still carry the whole post. Links become numbered
references listed under the post, each with its mirror alternatives; a reference line is never
wrapped, so a URL or an ``@@SLOT_M0@@/path`` placeholder is never broken across lines.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser

from mailer.slots import SLOT_PREFIX

__all__ = ["Reference", "TextBody", "display_width", "html_to_text", "wrap"]

_BLOCK = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "header",
        "footer",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "ul",
        "ol",
        "li",
        "blockquote",
        "pre",
        "table",
        "tr",
        "figure",
        "figcaption",
        "hr",
        "dl",
        "dt",
        "dd",
        "address",
        "center",
    }
)
_SKIP = frozenset({"script", "style", "head", "title", "noscript", "template", "iframe", "object"})

# Kinsoku shori: CJK punctuation that may not begin a line, and openers that may not end one.
_NO_START = frozenset("。，、；：？！）」』】》〉”’…—．,.;:!?)]}%·")
_NO_END = frozenset("（「『【《〈“‘([{")
_TOKEN = re.compile(
    r"\s+|[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]|[^\s\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]+"
)


_CJK_GAP = re.compile(
    r"(?<=[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f])\s+"
    r"(?=[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f])"
)


def display_width(text: str) -> int:
    """Columns a monospace terminal gives ``text``: CJK (wide/full-width) characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _tokens(text: str) -> list[str]:
    raw = _TOKEN.findall(text)
    out: list[str] = []
    glue_next = False
    for tok in raw:
        if out and not tok.isspace() and (tok[0] in _NO_START or glue_next):
            out[-1] += tok
        else:
            out.append(tok)
        glue_next = not tok.isspace() and tok[-1] in _NO_END
    return out


def wrap(text: str, width: int = 72, indent: str = "", subsequent: str | None = None) -> list[str]:
    """Greedy wrap by display width. CJK may break between any two characters (not before
    closing punctuation); Latin words and URLs are never split, however long."""
    hang = indent if subsequent is None else subsequent
    lines: list[str] = []
    line = indent
    used = display_width(indent)
    base = used
    for tok in _tokens(" ".join(text.split("\n"))):
        if tok.isspace():
            if used > base:
                line += " "
                used += 1
            continue
        w = display_width(tok)
        if used + w > width and used > base:
            lines.append(line.rstrip())
            line, used = hang, display_width(hang)
            base = used
        line += tok
        used += w
    if line.strip():
        lines.append(line.rstrip())
    return lines


@dataclass(frozen=True)
class Reference:
    """A numbered link under a post: the URL written out, and its mirror alternatives."""

    number: int
    url: str
    alternatives: tuple[str, ...] = ()


@dataclass
class TextBody:
    """A converted post body: wrapped paragraphs, and the references its ``[n]`` marks point at."""

    text: str
    references: list[Reference] = field(default_factory=list)


class _Walker(HTMLParser):
    def __init__(
        self,
        width: int,
        alternatives: Callable[[str], tuple[str, ...]],
        image_label: Callable[[str], str],
        first_number: int,
    ) -> None:
        super().__init__(convert_charrefs=True)
        self.width = width
        self.alternatives = alternatives
        self.image_label = image_label
        self.blocks: list[tuple[str, bool]] = []  # (text, is a list item)
        self.buf: list[str] = []
        self.skip = 0
        self.pre = 0
        self.quote = 0
        self.list_stack: list[list[int]] = []  # [counter] for ol, [] for ul
        self.prefix = ""
        self.refs: list[Reference] = []
        self.by_url: dict[str, int] = {}
        self.next_number = first_number
        self.link: tuple[str, int] | None = None  # (href, buffer length at <a>)

    def flush(self) -> None:
        text = "".join(self.buf)
        self.buf = []
        if self.pre:
            if text.strip("\n"):
                self.blocks.append((text.strip("\n"), False))
            return
        # Source line breaks inside a Chinese sentence are not word breaks (CSS Text 3, segment
        # break transformation): drop white space between two CJK characters, keep it elsewhere.
        text = _CJK_GAP.sub("", " ".join(text.split()))
        if not text:
            return
        indent = "> " * self.quote
        first = indent + self.prefix
        hang = indent + " " * display_width(self.prefix)
        lines = wrap(text, self.width, indent=first, subsequent=hang)
        self.prefix = ""
        self.blocks.append(("\n".join(lines), bool(self.list_stack)))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in _SKIP:
            self.skip += 1
            return
        if self.skip:
            return
        if tag == "br":
            if self.pre:
                self.buf.append("\n")
            else:
                self.flush()
            return
        if tag in _BLOCK:
            self.flush()
        if tag == "pre":
            self.pre += 1
        elif tag == "blockquote":
            self.quote += 1
        elif tag == "ul":
            self.list_stack.append([])
        elif tag == "ol":
            self.list_stack.append([0])
        elif tag == "li":
            if self.list_stack and self.list_stack[-1]:
                self.list_stack[-1][0] += 1
                self.prefix = f"{self.list_stack[-1][0]}. "
            else:
                self.prefix = "* "
            self.prefix = "  " * max(0, len(self.list_stack) - 1) + self.prefix
        elif tag in ("td", "th") and self.buf and "".join(self.buf).strip():
            self.buf.append(" | ")  # cells are inline; keep them apart in the plain text
        elif tag == "hr":
            self.blocks.append(("-" * 20, False))
        elif tag == "img":
            self.buf.append(f" {self.image_label(a.get('alt') or '')} ")
        elif tag == "a":
            href = (a.get("href") or "").strip()
            if href.startswith(("http://", "https://", SLOT_PREFIX, "mailto:")):
                self.link = (href, len(self.buf))

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if self.skip:
            return
        if tag == "a" and self.link is not None:
            href, start = self.link
            self.link = None
            shown = "".join(self.buf[start:]).strip()
            if shown == href or (href.startswith("mailto:") and shown == href[7:]):
                return  # the URL is already written out in the text
            number = self.by_url.get(href)
            if number is None:
                number = self.next_number
                self.next_number += 1
                self.by_url[href] = number
                self.refs.append(Reference(number, href, self.alternatives(href)))
            self.buf.append(f"[{number}]")
            return
        if tag in _BLOCK:
            self.flush()
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        elif tag == "blockquote":
            self.quote = max(0, self.quote - 1)
        elif tag in ("ul", "ol") and self.list_stack:
            self.list_stack.pop()

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.buf.append(data)


def html_to_text(
    fragment: str,
    *,
    width: int = 72,
    alternatives: Callable[[str], tuple[str, ...]] = lambda url: (),
    image_label: Callable[[str], str] = lambda alt: f"[{alt}]" if alt else "",
    first_number: int = 1,
) -> TextBody:
    """Turn a post's HTML into wrapped text with ``[n]`` link marks; pure."""
    walker = _Walker(width, alternatives, image_label, first_number)
    walker.feed(fragment)
    walker.close()
    walker.flush()
    # Paragraphs are separated by a blank line; items of one list are kept together.
    parts: list[str] = []
    previous_item = False
    for block, item in walker.blocks:
        if not block.strip():
            continue
        if parts:
            parts.append("\n" if item and previous_item else "\n\n")
        parts.append(block)
        previous_item = item
    text = "".join(parts)
    return TextBody(text=text, references=walker.refs)
