"""Wording per region after OpenCC: the pairs its phrase conversion misses (覆议 -> 复议).

The pairs are data (``phrases.toml`` beside this module, extended by an operator's
``[newsletter] phrases_file``; ``mailer/config.py`` reads both). This module only applies them,
as one regular expression per table, longest key first, so that a pair never rewrites what
another pair wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["NO_PHRASES", "SHIPPED_PHRASES", "PhraseTable", "Phrases", "apply_phrases"]

# (what OpenCC wrote, what the region's readers write), in the reader's script.
PhraseTable = tuple[tuple[str, str], ...]
NO_PHRASES: PhraseTable = ()

SHIPPED_PHRASES = Path(__file__).with_name("phrases.toml")


@dataclass(frozen=True)
class Phrases:
    """The pairs for Simplified readers (``mainland``) and for Traditional ones (``taiwan``)."""

    mainland: PhraseTable = NO_PHRASES
    taiwan: PhraseTable = NO_PHRASES

    def merged(self, other: Phrases) -> Phrases:
        """These pairs with ``other``'s added; ``other`` wins where both have a key."""
        def one(base: PhraseTable, own: PhraseTable) -> PhraseTable:
            return tuple(sorted({**dict(base), **dict(own)}.items()))
        return Phrases(one(self.mainland, other.mainland), one(self.taiwan, other.taiwan))


@lru_cache(maxsize=16)
def _pattern(table: PhraseTable) -> tuple[re.Pattern[str], dict[str, str]]:
    keys = sorted((k for k, _ in table), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, keys))), dict(table)


def apply_phrases(text: str, table: PhraseTable) -> str:
    """``text`` with every key of ``table`` replaced, in one left-to-right pass."""
    if not table:
        return text
    pattern, pairs = _pattern(table)
    return pattern.sub(lambda m: pairs[m.group(0)], text)
