"""Message catalogs for the email chrome, one gettext ``.po`` file per language, read at runtime.

The files live in ``templates/locale/<lang>/LC_MESSAGES/messages.po`` and are parsed with Babel
when first used, so there is no compile step at install. In strict mode (tests, preview) a
message with no translation raises instead of falling back to English: a Chinese reader must
never get a half-English footer unnoticed. A bilingual edition ("zh-Hans+en") shows each
chrome string in both languages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from mailer.errors import RenderError
from mailer.render.env import TEMPLATES_DIR
from subscribers.catalog import parse_po

__all__ = [
    "BilingualCatalog",
    "Lazy",
    "MessageCatalog",
    "PerLanguage",
    "Translator",
    "catalog_for",
    "load_catalog",
    "locale_dir",
]



def locale_dir(templates_dir: Path = TEMPLATES_DIR) -> Path:
    return templates_dir / "locale"


@dataclass(frozen=True)
class Lazy:
    """A msgid used as a ``%(name)s`` value, translated by whichever catalog formats it.

    A bilingual catalog formats each half in its own language, so "Written in %(language)s"
    becomes "简体中文文章 / Written in Simplified Chinese", not a tangle of both in both.
    """

    msgid: str


@dataclass(frozen=True)
class PerLanguage:
    """A ``%(name)s`` value that differs by language but is no msgid: the newsletter's name.

    Each half of a bilingual line takes its own ("您订阅了公民权利通讯 / ... subscribed to
    Citizens' Rights Digest"); a language with none takes ``fallback``."""

    values: Mapping[str, str]
    fallback: str

    def in_language(self, language: str) -> str:
        return self.values.get(language) or self.fallback


@dataclass(frozen=True)
class MessageCatalog:
    """One language's translations; ``gettext``/``ngettext`` as ``jinja2.ext.i18n`` expects."""

    language: str
    messages: Mapping[str, str | tuple[str, ...]]
    strict: bool = False

    def _lookup(self, msgid: str) -> str | tuple[str, ...] | None:
        found = self.messages.get(msgid)
        if not found:
            if self.strict:
                raise RenderError(f"catalog {self.language}: no translation for {msgid!r}")
            return None
        return found

    def gettext(self, message: str) -> str:
        found = self._lookup(message)
        if found is None:
            return message
        return found if isinstance(found, str) else found[0]

    def translate(self, message: str, values: Mapping[str, object]) -> str:
        """``gettext`` then ``%`` formatting, translating any ``Lazy`` value in this language."""
        text = self.gettext(message)
        if not values:
            return text
        return text % {k: self._value(v) for k, v in values.items()}

    def _value(self, value: object) -> object:
        if isinstance(value, Lazy):
            return self.gettext(value.msgid)
        if isinstance(value, PerLanguage):
            return value.in_language(self.language)
        return value

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        found = self._lookup(singular)
        if found is None:
            return singular if n == 1 else plural
        if isinstance(found, str):
            return found
        # Chinese has one plural form; English two. Index by the catalog's own form count.
        index = 0 if len(found) == 1 or n == 1 else 1
        return found[index]


@dataclass(frozen=True)
class BilingualCatalog:
    """Both languages at once: "目录 / Contents". Identical strings are shown once."""

    first: MessageCatalog
    second: MessageCatalog
    separator: str = " / "

    @property
    def language(self) -> str:
        return f"{self.first.language}+{self.second.language}"

    def _join(self, a: str, b: str) -> str:
        return a if a == b else f"{a}{self.separator}{b}"

    def gettext(self, message: str) -> str:
        return self._join(self.first.gettext(message), self.second.gettext(message))

    def translate(self, message: str, values: Mapping[str, object]) -> str:
        return self._join(self.first.translate(message, values), self.second.translate(message, values))

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return self._join(self.first.ngettext(singular, plural, n), self.second.ngettext(singular, plural, n))


Translator = MessageCatalog | BilingualCatalog


def load_catalog(path: Path, language: str, *, strict: bool = False) -> MessageCatalog:
    """Parse one ``.po`` file. Fuzzy entries count as missing, as ``msgfmt`` would treat them."""
    try:
        messages = parse_po(path.read_bytes(), language)
    except FileNotFoundError:
        raise RenderError(f"no message catalog for {language!r} at {path}") from None
    except ValueError as exc:
        raise RenderError(f"cannot read message catalog {path}: {exc}") from None
    return MessageCatalog(language=language, messages=messages, strict=strict)


@lru_cache(maxsize=32)
def _cached(path: Path, language: str, strict: bool) -> MessageCatalog:
    return load_catalog(path, language, strict=strict)


def catalog_for(language: str, *, override_dir: Path | None = None, strict: bool = False) -> Translator:
    """The catalog for a subscriber choice ("en", "zh-Hant", "zh-Hans+en").

    A deployment's own template folder may carry its own ``locale/`` and wins when it has the file.
    """
    if "+" in language:
        first, second = language.split("+", 1)
        a = catalog_for(first, override_dir=override_dir, strict=strict)
        b = catalog_for(second, override_dir=override_dir, strict=strict)
        assert isinstance(a, MessageCatalog)
        assert isinstance(b, MessageCatalog)
        return BilingualCatalog(a, b)
    rel = Path(language) / "LC_MESSAGES" / "messages.po"
    if override_dir is not None and (locale_dir(override_dir) / rel).is_file():
        return _cached(locale_dir(override_dir) / rel, language, strict)
    return _cached(locale_dir() / rel, language, strict)
