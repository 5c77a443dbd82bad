"""The language choices, owned here alone (``mailer.config`` validates against them).

A subscriber chooses one of the configured languages, or a configured bilingual pair written
``"zh-Hans+en"``. ``subscribers`` never imports ``mailer``, so the owner lives on this side.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["KNOWN_LANGUAGES", "choices", "halves", "is_pair_of"]

KNOWN_LANGUAGES = ("zh-Hans", "zh-Hant", "en")  # each has a catalog in templates/locale


def choices(languages: Sequence[str], bilingual: Sequence[str]) -> tuple[str, ...]:
    """Every language a subscriber may choose: the single ones, then the bilingual pairs."""
    return (*languages, *bilingual)


def halves(choice: str) -> tuple[str, ...]:
    """``("zh-Hans", "en")`` for ``"zh-Hans+en"``; a single language is one half."""
    return tuple(choice.split("+"))


def is_pair_of(pair: str, languages: Sequence[str]) -> bool:
    """Whether ``pair`` is two different ones of ``languages``, like ``"zh-Hans+en"``."""
    parts = halves(pair)
    return len(parts) == 2 and all(h in languages for h in parts) and parts[0] != parts[1]
