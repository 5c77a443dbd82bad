"""Script conversion with OpenCC: a Chinese post reaches each reader in the reader's own script.

Only text is converted, never markup or URLs: a link to ``/软件/`` must keep working after the
visible text around it became ``軟體``. OpenCC leaves Latin text alone, so every post is converted,
English ones too: "Liu Xiaobo Rally (释放刘晓波)" reaches a Traditional reader as "(釋放劉曉波)".
Chinese quotation marks follow the script (「」 in Traditional, “” in Simplified); English ones,
with Latin letters on both sides, are left alone. After OpenCC come the region's own words that
its phrase conversion misses (``phrases.py``: 覆议 -> 复议 for mainland readers).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser

import opencc

from mailer.render.phrases import NO_PHRASES, Phrases, PhraseTable, apply_phrases

__all__ = [
    "CHINESE",
    "Conversion",
    "conversion_for",
    "convert_html",
    "convert_quotes",
    "convert_text",
    "has_han",
]

CHINESE = ("zh-Hans", "zh-Hant")

# Attributes whose values are words a reader sees; every other attribute (href, src, ...) stays.
_TEXT_ATTRS = frozenset({"alt", "title"})
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def has_han(text: str) -> bool:
    """Whether there is anything for OpenCC to do (it costs a C call per string otherwise)."""
    return _HAN.search(text) is not None


_NO_PAIRS = Phrases()


@dataclass(frozen=True)
class Conversion:
    """How text reaches one script: an OpenCC config, then the region's own phrase pairs."""

    opencc: str
    phrases: PhraseTable = NO_PHRASES

    @property
    def target(self) -> str:
        return "zh-Hant" if self.opencc.startswith("s2t") else "zh-Hans"


def conversion_for(source: str, target: str, *, taiwan_phrases: bool, mainland_phrases: bool = True,
                   phrases: Phrases = _NO_PAIRS) -> Conversion | None:
    """How ``source`` text is turned into ``target`` script, or None for not at all.

    ``s2twp`` also swaps mainland words for Taiwan ones (软件 -> 軟體); ``s2t`` changes only the
    characters, which Hong Kong and diaspora readers often prefer. ``tw2sp`` is the way back,
    Taiwan words to mainland ones (軟體 -> 软件, 資訊 -> 信息), ``t2s`` characters only. A mixed
    or English post may hold either script, so it is converted toward the target whichever it
    holds (OpenCC leaves Latin letters alone). ``phrases`` adds the words OpenCC misses, only
    where the phrase conversion is on: characters-only readers get characters only.
    """
    if target not in CHINESE or source == target:
        return None
    if target == "zh-Hant":
        return Conversion("s2twp", phrases.taiwan) if taiwan_phrases else Conversion("s2t")
    return Conversion("tw2sp", phrases.mainland) if mainland_phrases else Conversion("t2s")


@lru_cache(maxsize=8)
def _converter(config: str) -> opencc.OpenCC:
    # Loading a config reads dictionaries from disk: do it once per process, not per post.
    return opencc.OpenCC(config)


# Han, CJK punctuation and full-width forms: a quotation mark next to one of these is Chinese.
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]")
_TO_HANT = {"\u201c": "\u300c", "\u201d": "\u300d", "\u2018": "\u300e", "\u2019": "\u300f"}
_TO_HANS = {v: k for k, v in _TO_HANT.items()}
_QUOTES_HANT = re.compile("[\u201c\u201d\u2018\u2019]")
_QUOTES_HANS = re.compile("[\u300c\u300d\u300e\u300f]")


def convert_quotes(text: str, target: str) -> str:
    """“” ‘’ become 「」 『』 for Traditional readers, and back for Simplified ones.

    OpenCC keeps quotation marks as they are. Only a mark with a CJK character on either side
    is changed: "don’t" and an English “quote” inside a Chinese post stay English."""
    table, marks = (_TO_HANT, _QUOTES_HANT) if target == "zh-Hant" else (_TO_HANS, _QUOTES_HANS)

    def one(m: re.Match[str]) -> str:
        i = m.start()
        before = text[i - 1] if i else ""
        after = text[i + 1] if i + 1 < len(text) else ""
        if _CJK.match(before) or _CJK.match(after):
            return table[m.group(0)]
        return m.group(0)

    return marks.sub(one, text)


def convert_text(text: str, conversion: Conversion | None) -> str:
    """Convert plain text (titles, alt text) into the conversion's script; None leaves it."""
    if conversion is None or not has_han(text):
        return text
    converted = apply_phrases(str(_converter(conversion.opencc).convert(text)), conversion.phrases)
    return convert_quotes(converted, conversion.target)


class _TextConverter(HTMLParser):
    """Re-emit HTML unchanged except for text nodes and alt/title attribute values."""

    def __init__(self, conversion: Conversion) -> None:
        super().__init__(convert_charrefs=False)
        self.conversion = conversion
        self.out: list[str] = []
        self.text_at: list[int] = []  # which pieces of ``out`` are text nodes

    def _attrs(self, attrs: list[tuple[str, str | None]]) -> str:
        parts = []
        for name, value in attrs:
            if value is None:
                parts.append(f" {name}")
                continue
            if name in _TEXT_ATTRS:
                value = convert_text(value, self.conversion)
            parts.append(f' {name}="{html.escape(value, quote=True)}"')
        return "".join(parts)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.out.append(f"<{tag}{self._attrs(attrs)}>")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.out.append(f"<{tag}{self._attrs(attrs)} />")

    def handle_endtag(self, tag: str) -> None:
        self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        self.text_at.append(len(self.out))
        self.out.append(convert_text(data, self.conversion))

    def quotes_across_tags(self) -> None:
        """A quotation mark whose Chinese neighbour is in the next text node (“<b>自由</b>”):
        judge it on the visible text, tags left out. Marks only swap one for one, so each node
        keeps its length and takes its own slice back."""
        pieces = [self.out[i] for i in self.text_at]
        joined = convert_quotes("".join(pieces), self.conversion.target)
        start = 0
        for i, piece in zip(self.text_at, pieces, strict=True):
            self.out[i] = joined[start:start + len(piece)]
            start += len(piece)

    def handle_entityref(self, name: str) -> None:
        self.out.append(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self.out.append(f"&#{name};")

    def handle_comment(self, data: str) -> None:
        pass  # comments are never shown; dropping them also drops conditional-comment tricks

    def handle_decl(self, decl: str) -> None:
        self.out.append(f"<!{decl}>")


def convert_html(fragment: str, conversion: Conversion | None) -> str:
    """Convert the visible text of an HTML fragment; tags, hrefs and srcs are left as they are."""
    if conversion is None or not has_han(fragment):
        return fragment
    parser = _TextConverter(conversion)
    parser.feed(fragment)
    parser.close()
    parser.quotes_across_tags()
    return "".join(parser.out)
