"""The text/plain part: every post in full, flowed for CJK and Latin alike, links as references.

Many mainland readers see the plain part first (QQ Mail's "plain text" view, phones with images
off), and with no link working it must still carry the whole post. Links become numbered
references listed under the post, each with its mirror alternatives.

The part is RFC 3676 ``format=flowed; delsp=yes``: paragraphs are written as one logical line
and ``flow`` cuts them into lines of about 72 columns with soft breaks (a trailing space). A
client that knows the format (Apple Mail, Thunderbird, K-9) joins them again and wraps to the
phone's width, so a Chinese sentence is never broken mid-phrase at column 38; ``DelSp=yes``
makes it delete the space it joins on, which a break between two Han characters needs. A client
that does not know it shows short lines, as before. A URL or an ``@@SLOT_M0@@/path``
placeholder is one token and never broken, whatever characters its path holds.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser

from mailer.slots import SLOT_PREFIX

__all__ = ["Reference", "TextBody", "display_width", "flow", "html_to_text", "unflow", "wrap"]

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
_NO_START = frozenset("。，、；：？！）」』】》〉”’…—．,.;:!?)]}%·\u00a0")
_NO_END = frozenset("（「『【《〈“‘([{\u00a0")
# White space is any space but a no-break one (U+00A0 keeps "镜像 2" together). A URL (RFC 3986
# characters, so "见https://x/p.html。" ends at the 。) is one token, even right after a word.
_SPACE = r"[^\S\u00a0]"
_URL_START = rf"(?:https?://|mailto:|{re.escape(SLOT_PREFIX)})"
_TOKEN = re.compile(
    rf"{_SPACE}+|{_URL_START}[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+"
    r"|[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]"
    rf"|(?:(?!{_SPACE}|{_URL_START})[^\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f])+"
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
        space = _is_space(tok)
        if out and not space and not _is_space(out[-1]) and (tok[0] in _NO_START or glue_next):
            out[-1] += tok
        else:
            out.append(tok)
        glue_next = not space and tok[-1] in _NO_END
    return out


def _is_space(token: str) -> bool:
    return token.isspace() and "\u00a0" not in token


def wrap(text: str, width: int = 72, indent: str = "", subsequent: str | None = None) -> list[str]:
    """Greedy wrap by display width. CJK may break between any two characters (not before
    closing punctuation); Latin words and URLs are never split, however long."""
    hang = indent if subsequent is None else subsequent
    lines: list[str] = []
    line = indent
    used = display_width(indent)
    base = used
    for tok in _tokens(" ".join(text.split("\n"))):
        if _is_space(tok):
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


_QUOTE = re.compile(r"^(>+) ?")


def _stuff(line: str) -> str:
    """RFC 3676 4.4: a line that starts with a space, "From " or ">" (not a quote of ours)
    gets one more space, which the reader removes."""
    return " " + line if line.startswith((" ", "From ", ">")) else line


def flow(text: str, width: int = 72) -> str:
    """RFC 3676 ``format=flowed; delsp=yes``: each line longer than ``width`` columns is cut
    into lines ending in a soft break (one space the reader deletes when it joins them).

    A line that starts with ``>`` is a quote: its pieces keep the marks. A break at a space
    keeps that space before the soft one, so "a b" comes back as "a b"; a break between two
    Han characters comes back with nothing between them. Tokens (Latin words, URLs, slots) are
    never split; closing CJK punctuation never starts a line (``wrap``'s rules). Input lines
    must not end in a space (``_normalise_text`` sees to it): a hard break is one that does not."""
    out: list[str] = []
    for line in text.split("\n"):
        quote = _QUOTE.match(line)
        prefix = quote.group(1) + " " if quote else ""
        body = line[quote.end():] if quote else line
        if display_width(line) <= width or not body.strip():
            out.append(prefix + body if quote else _stuff(line))
            continue
        room = max(width - display_width(prefix), 10)  # deep quotes still get some room
        pieces: list[str] = []
        current = ""
        used = 0
        for tok in _tokens(body):
            w = display_width(tok)
            if _is_space(tok):
                current += tok
                used += w
                continue
            if used + w > room and current.strip():
                pieces.append(current)
                current, used = "", 0
            current += tok
            used += w
        pieces.append(current)
        for i, piece in enumerate(pieces):
            soft = i < len(pieces) - 1
            piece = piece + " " if soft else piece.rstrip(" ")
            out.append(prefix + piece if quote else _stuff(piece))
    return "\n".join(out)


def unflow(text: str) -> str:
    """What a format=flowed, delsp=yes reader shows (RFC 3676 4.1-4.5), for tests and previews:
    soft-broken lines joined with their last space deleted, stuffing removed."""
    out: list[str] = []
    pending: str | None = None
    depth_of_pending = 0

    def shown(body: str, depth: int) -> str:
        return (">" * depth + " " if depth else "") + body

    for line in text.split("\n"):
        quote = _QUOTE.match(line) if line.startswith(">") else None
        depth = len(quote.group(1)) if quote else 0
        body = line[quote.end():] if quote else (line[1:] if line.startswith(" ") else line)
        if pending is not None and depth != depth_of_pending:
            out.append(shown(pending, depth_of_pending))
            pending = None
        soft = body.endswith(" ") and body != "-- "
        piece = body[:-1] if soft else body
        pending = piece if pending is None else pending + piece
        depth_of_pending = depth
        if not soft:
            out.append(shown(pending, depth))
            pending = None
    if pending is not None:
        out.append(shown(pending, depth_of_pending))
    return "\n".join(out)


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
        indent = ">" * self.quote + " " if self.quote else ""  # RFC 3676 quote marks
        first = indent + self.prefix
        hang = indent + " " * display_width(self.prefix)
        # width 0: one logical line per paragraph, for ``flow`` to cut with soft breaks.
        lines = wrap(text, self.width, indent=first, subsequent=hang) if self.width > 0 \
            else [first + text]
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
    """Turn a post's HTML into text with ``[n]`` link marks; pure. ``width`` 0 leaves each
    paragraph on one line (the variant flows the whole part afterwards, ``flow``)."""
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
