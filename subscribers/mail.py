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

from subscribers.catalog import ENDONYMS

__all__ = ["CONFIRM_BODY", "CONFIRM_SUBJECT", "LANGUAGE_BODY", "LANGUAGE_SUBJECT", "MSGIDS", "ConfirmTexts",
           "confirmation_message"]

# The English text is the msgid: the translations are in templates/locale/*/LC_MESSAGES
# beside the emails' and the pages' (one catalog), looked up by whoever wires the sender.
CONFIRM_SUBJECT = "Please confirm your subscription"
CONFIRM_BODY = (
    "Hello,\n\nSomeone (we hope you) subscribed this address to {name}.\n"
    "Open this link and press the button on the page to confirm:\n\n{url}\n\n"
    "If it was not you, ignore this message and you will not hear from us again.\n")
# An active reader's language changes only when they open this (issue 15): anyone can type
# their address into the form with another language.
LANGUAGE_SUBJECT = "Please confirm the change of language"
LANGUAGE_BODY = (
    "Hello,\n\nSomeone (we hope you) asked to receive {name} in: {choice}.\n"
    "Open this link and press the button on the page to confirm:\n\n{url}\n\n"
    "If it was not you, ignore this message and nothing will change.\n")
MSGIDS = {"confirm": (CONFIRM_SUBJECT, CONFIRM_BODY), "language": (LANGUAGE_SUBJECT, LANGUAGE_BODY)}

# kind ("confirm" or "language") -> language -> (subject, body), from the catalog
ConfirmTexts = Mapping[str, Mapping[str, tuple[str, str]]]


def _halves(language: str, texts: Mapping[str, tuple[str, str]]) -> list[str]:
    langs = [h for h in language.split("+") if h in texts] or ["en"]
    if "en" not in langs:
        langs.append("en")  # a confirmation is always bilingual: the reader's language + English
    return langs


def confirmation_message(*, from_addr: str, to: str, language: str, url: str,
                         names: Mapping[str, str], now: datetime, texts: ConfirmTexts,
                         choice: str = "", reply_to: str = "") -> bytes:
    """RFC 5322 bytes (CRLF) asking ``to`` to open ``url``: to confirm a subscription, or with
    ``choice`` (the language asked for) a change of language. ``texts`` must hold English.
    ``reply_to`` (a tagged ``[inbound] address``): replying confirms too, for readers who
    cannot open our pages."""
    kind = texts["language" if choice else "confirm"]
    chosen = " + ".join(ENDONYMS.get(h, h) for h in choice.split("+")) if choice else ""
    langs = _halves(language, kind)
    subject = " / ".join(kind[lang][0] for lang in langs)
    body = "\n----\n\n".join(
        kind[lang][1].format(name=names.get(lang) or names.get("en") or "", url=url,
                              choice=chosen)
        for lang in langs)
    msg = EmailMessage(policy=SMTP)
    msg["From"] = from_addr
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(now)
    domain = from_addr.rpartition("@")[2].strip("> ") or "localhost"
    msg["Message-ID"] = email.utils.make_msgid("confirm", domain=domain)
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(body, charset="utf-8", cte="base64")
    return msg.as_bytes()
