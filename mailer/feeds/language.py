"""Tell a post's language: ``en``, ``zh-Hans``, ``zh-Hant`` or ``mixed``.

Order of authority: the feed's ``language`` setting (an operator's word beats any guess); then
the text, which decides Chinese versus English versus both; then, for Chinese text, the
declared language where it is specific (``zh-TW`` means Traditional) and OpenCC otherwise:
Traditional text changes under ``t2s`` and Simplified text changes under ``s2t``.
"""

from __future__ import annotations

import operator
import re
from functools import cache
from typing import Any

__all__ = ["LANGUAGES", "declared_language", "detect_language", "script_counts"]

LANGUAGES = ("en", "zh-Hans", "zh-Hant", "mixed")

# Enough text to decide; a long post is not more certain, only slower to convert.
_SAMPLE = 8000
_HAN_SAMPLE = 240
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_WORD = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*")
# An English word carries about as much as 1.7 Chinese characters (average word lengths in
# parallel texts), so words are weighed so before comparing the two shares. Counting words,
# not letters, keeps "Amnesty International" in a Chinese post from making it "mixed".
_WORD_WEIGHT = 1.7
_MIXED_LOW, _MIXED_HIGH = 0.2, 0.8

_HANT_TAGS = ("zh-hant", "zh-tw", "zh-hk", "zh-mo", "zh-yue")
_HANS_TAGS = ("zh-hans", "zh-cn", "zh-sg", "zh-my")


def declared_language(tag: str | None) -> str | None:
    """Map a feed's ``xml:lang`` / ``<language>`` to ours, or None if not specific."""
    if not tag:
        return None
    t = tag.strip().lower().replace("_", "-")
    if t.startswith(_HANT_TAGS) or "-hant" in t:
        return "zh-Hant"
    if t.startswith(_HANS_TAGS) or "-hans" in t:
        return "zh-Hans"
    if t == "en" or t.startswith("en-"):
        return "en"
    return None


def script_counts(text: str) -> tuple[int, int]:
    """(Han characters, Latin letters) in ``text``."""
    return len(_HAN.findall(text)), len(_LATIN.findall(text))


@cache
def _converter(config: str) -> Any:
    import opencc  # imported late: building the converter reads dictionaries from disk

    return opencc.OpenCC(config)


def _chinese_variant(han_text: str) -> str | None:
    """``zh-Hant`` / ``zh-Hans`` by which OpenCC direction changes more characters."""
    trad_marks = sum(map(operator.ne, han_text, _converter("t2s").convert(han_text)))
    simp_marks = sum(map(operator.ne, han_text, _converter("s2t").convert(han_text)))
    if trad_marks > simp_marks:
        return "zh-Hant"
    if simp_marks > trad_marks:
        return "zh-Hans"
    return None


def detect_language(text: str, *, declared: str | None = None, override: str = "auto",
                    default: str = "zh-Hans") -> str:
    """The language of ``text`` (plain text of title and body). ``override`` wins when set."""
    if override != "auto":
        return override
    declared_lang = declared_language(declared)
    sample = text[:_SAMPLE]
    han_chars = _HAN.findall(sample)
    han, words = len(han_chars), len(_WORD.findall(sample))
    if han == 0 and words == 0:
        return declared_lang or default
    share = han / (han + words * _WORD_WEIGHT)
    if share <= _MIXED_LOW:
        return "en"
    if share < _MIXED_HIGH:
        return "mixed"
    if declared_lang in ("zh-Hans", "zh-Hant"):
        return declared_lang
    return _chinese_variant("".join(han_chars[:_HAN_SAMPLE])) or (
        default if default in ("zh-Hans", "zh-Hant") else "zh-Hans"
    )
