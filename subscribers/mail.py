"""The double opt-in confirmation message: a pure builder, sent by whatever transport is given.

Plain text only, bilingual, no remote content and no tracking: a confirmation must get past
QQ/163 content filters, and a short text message with one link on our own domain does.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP

__all__ = ["CONFIRM_TEXT", "LANGUAGE_TEXT", "confirmation_message"]

CONFIRM_TEXT: Mapping[str, tuple[str, str]] = {
    "zh-Hans": ("请确认您的订阅",
                "您好！\n\n有人（希望是您）用这个邮箱地址订阅了「{name}」。\n"
                "请打开下面的链接，点击页面上的按钮确认订阅：\n\n{url}\n\n"
                "如果不是您本人操作，请忽略此邮件，您不会再收到我们的邮件。\n"),
    "zh-Hant": ("請確認您的訂閱",
                "您好！\n\n有人（希望是您）用這個郵件地址訂閱了「{name}」。\n"
                "請打開下面的連結，按頁面上的按鈕確認訂閱：\n\n{url}\n\n"
                "如果不是您本人操作，請忽略此郵件，您不會再收到我們的郵件。\n"),
    "en": ("Please confirm your subscription",
           "Hello,\n\nSomeone (we hope you) subscribed this address to {name}.\n"
           "Open this link and press the button on the page to confirm:\n\n{url}\n\n"
           "If it was not you, ignore this message and you will not hear from us again.\n"),
}

# An active reader's language changes only when they open this (issue 15): anyone can type
# their address into the form with another language.
LANGUAGE_TEXT: Mapping[str, tuple[str, str]] = {
    "zh-Hans": ("请确认更改语言",
                "您好！\n\n有人（希望是您）请求把您收到的「{name}」改为：{choice}。\n"
                "请打开下面的链接，点击页面上的按钮确认：\n\n{url}\n\n"
                "如果不是您本人操作，请忽略此邮件，什么都不会改变。\n"),
    "zh-Hant": ("請確認更改語言",
                "您好！\n\n有人（希望是您）請求把您收到的「{name}」改為：{choice}。\n"
                "請打開下面的連結，按頁面上的按鈕確認：\n\n{url}\n\n"
                "如果不是您本人操作，請忽略此郵件，什麼都不會改變。\n"),
    "en": ("Please confirm the change of language",
           "Hello,\n\nSomeone (we hope you) asked to receive {name} in: {choice}.\n"
           "Open this link and press the button on the page to confirm:\n\n{url}\n\n"
           "If it was not you, ignore this message and nothing will change.\n"),
}
_LANGUAGE_NAMES = {"zh-Hans": "简体中文", "zh-Hant": "繁體中文", "en": "English"}


def _halves(language: str) -> list[str]:
    langs = [h for h in language.split("+") if h in CONFIRM_TEXT] or ["en"]
    if "en" not in langs:
        langs.append("en")  # a confirmation is always bilingual: the reader's language + English
    return langs


def confirmation_message(*, from_addr: str, to: str, language: str, url: str,
                         names: Mapping[str, str], now: datetime, choice: str = "") -> bytes:
    """RFC 5322 bytes (CRLF) asking ``to`` to open ``url``: to confirm a subscription, or with
    ``choice`` (the language asked for) a change of language."""
    texts = LANGUAGE_TEXT if choice else CONFIRM_TEXT
    chosen = " + ".join(_LANGUAGE_NAMES.get(h, h) for h in choice.split("+")) if choice else ""
    langs = _halves(language)
    subject = " / ".join(texts[lang][0] for lang in langs)
    body = "\n----\n\n".join(
        texts[lang][1].format(name=names.get(lang) or names.get("en") or "", url=url,
                              choice=chosen)
        for lang in langs)
    msg = EmailMessage(policy=SMTP)
    msg["From"] = from_addr
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(now)
    domain = from_addr.rpartition("@")[2].strip("> ") or "localhost"
    msg["Message-ID"] = email.utils.make_msgid("confirm", domain=domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(body, charset="utf-8", cte="base64")
    return msg.as_bytes()
