"""Readers' commands by mail, in English or Chinese: pure parsing, nothing is acted on here.

A command is read from the Subject (without ``Re:``/``回复:``) and then from the first line of
the body that is not quoted: a reply to an edition quotes its footer, which itself says
"退订 / unsubscribe", and quoted text must never count as the reader's words. The commands
follow GetTor and BridgeDB: one word, optionally an argument.

    subscribe [language]   订阅 / 訂閱
    unsubscribe [TOKEN]    退订 / 退訂 / 取消订阅 (TOKEN: the List-Unsubscribe mailto's)
    language LANGUAGE      语言 / 語言
    mirrors                镜像 / 鏡像
    help                   帮助 / 幫助
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["COMMANDS", "Command", "language_code", "parse_command"]

COMMANDS: dict[str, tuple[str, ...]] = {
    "subscribe": ("subscribe", "join", "订阅", "訂閱"),
    "unsubscribe": ("unsubscribe", "leave", "stop", "退订", "退訂", "取消订阅", "取消訂閱"),
    "language": ("language", "lang", "语言", "語言"),
    "mirrors": ("mirrors", "mirror", "links", "镜像", "鏡像"),
    "help": ("help", "帮助", "幫助", "?", "？"),
}
_WORDS = {word: name for name, words in COMMANDS.items() for word in words}
# Longest first, so 取消订阅 wins over any shorter word it contains.
_LEADING = re.compile(
    r"^\s*(" + "|".join(re.escape(w) for w in sorted(_WORDS, key=len, reverse=True)) + r")"
    r"(?=$|[\s:：,，.。!！]|[^\x00-\x7f])(.*)$", re.IGNORECASE)
_REPLY_PREFIX = re.compile(r"(?i)^\s*((re|aw|fwd?|sv|回复|回覆|答复|答覆|转发|轉寄)\s*[:：]\s*)+")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,}$")
_LANGUAGE_WORDS = {
    "english": "en", "英文": "en", "英语": "en", "英語": "en",
    "简体": "zh-Hans", "简体中文": "zh-Hans", "简中": "zh-Hans", "中文": "zh-Hans",
    "simplified": "zh-Hans", "繁體": "zh-Hant", "繁体": "zh-Hant", "繁體中文": "zh-Hant",
    "繁体中文": "zh-Hant", "traditional": "zh-Hant", "双语": "zh-Hans+en", "雙語": "zh-Hant+en",
    "bilingual": "zh-Hans+en",
}
_LINE_LIMIT = 200


@dataclass(frozen=True)
class Command:
    """``name`` is one of ``COMMANDS``; ``argument`` is the rest of the line, trimmed."""

    name: str
    argument: str = ""


def language_code(word: str) -> str:
    """A language as a reader may write it (``繁體``, ``english``, ``zh-hant``) as our code;
    unknown words come back as given, for the store to accept or refuse."""
    word = word.strip().strip("。.!！")
    if word.lower() in _LANGUAGE_WORDS:
        return _LANGUAGE_WORDS[word.lower()]
    if word in _LANGUAGE_WORDS:
        return _LANGUAGE_WORDS[word]
    parts = word.split("+")
    out = []
    for part in parts:
        bits = part.split("-")
        out.append("-".join([bits[0].lower(), *[b.title() if len(b) == 4 else b.upper()
                                                 for b in bits[1:]]]))
    return "+".join(out)


def _first_line(body: str) -> str:
    for line in body.replace("\r\n", "\n").split("\n"):
        text = line.strip()
        if not text or text.startswith(">"):
            continue
        return text[:_LINE_LIMIT]
    return ""


def _parse(line: str) -> Command | None:
    m = _LEADING.match(line)
    if m is None:
        return None
    name = _WORDS[m.group(1).lower()] if m.group(1).lower() in _WORDS else _WORDS[m.group(1)]
    argument = m.group(2).strip(" \t:：,，.。!！")
    if name == "unsubscribe":
        # The mailto's token, however a client dressed the subject ("退订 / unsubscribe TOKEN");
        # "unsubscribe me please" has none.
        tokens = [w for w in re.split(r"[\s/:：,，]+", argument) if _TOKEN.match(w)]
        argument = tokens[0] if tokens else ""
    elif argument:
        argument = argument.split()[0]
    return Command(name, argument)


def parse_command(subject: str, body: str) -> Command | None:
    """The command in ``subject``, else in the body's first unquoted line; None when neither
    starts with one. The subject of a reply (``Re:``) is ours, an edition's, which may well
    start with "Mirrors…": only an ``unsubscribe TOKEN`` (our mailto's) counts there."""
    bare = _REPLY_PREFIX.sub("", subject).strip()[:_LINE_LIMIT]
    found = _parse(bare)
    if found is not None and (bare == subject.strip()[:_LINE_LIMIT] or
                              (found.name == "unsubscribe" and found.argument)):
        return found
    return _parse(_first_line(body))
