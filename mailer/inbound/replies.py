"""Our answers to readers who write: help, mirrors, "reply to leave", and the one warning past
the daily limit. Pure: texts come from the one message catalog (templates/locale), in the
reader's language.

Every answer is marked ``Auto-Submitted: auto-replied`` (RFC 3834) and answers the reader's
message (``In-Reply-To``), and carries no link that loads anything: plain text only.
"""

from __future__ import annotations

import email.utils
from collections.abc import Sequence
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from mailer.render.catalog import catalog_for

__all__ = ["MSGIDS", "help_message", "leave_message", "limit_message", "mirrors_message"]

HELP = ("Write one of these words in the subject or on the first line of a mail to %(address)s:\n\n"
        "subscribe (订阅) - receive the newsletter; we send a confirmation first\n"
        "unsubscribe (退订) - stop receiving it\n"
        "language zh-Hans | zh-Hant | en (语言) - change the language\n"
        "mirrors (镜像) - fresh links to read our site\n"
        "help (帮助) - this message")
LEAVE = ("Someone, probably you, asked to stop sending you this newsletter. Reply to this "
         "mail (any text) to leave. If it was not you, do nothing: nothing changes.")
LIMIT = ("You have reached today's limit of answers from this address. We will not answer "
         "again today.")
MIRRORS = "Links to read our site, even where it is blocked:"
LATEST = "Latest edition: %(subject)s"
SUBJECT_HELP = "How to use this newsletter by mail"
SUBJECT_LEAVE = "Reply to leave"
SUBJECT_LIMIT = "No more answers today"
SUBJECT_MIRRORS = "Mirror links"
MSGIDS = (HELP, LEAVE, LIMIT, MIRRORS, LATEST, SUBJECT_HELP, SUBJECT_LEAVE, SUBJECT_LIMIT,
          SUBJECT_MIRRORS)


def _message(*, from_addr: str, to: str, subject: str, body: str, now: datetime,
             in_reply_to: str, domain: str, reply_to: str = "") -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = from_addr
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(now)
    msg["Message-ID"] = email.utils.make_msgid("answer", domain=domain)
    in_reply_to = in_reply_to.strip()
    if in_reply_to and "\n" not in in_reply_to and "\r" not in in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(body, charset="utf-8", cte="base64")
    return msg.as_bytes()


def _text(language: str, override_dir: Path | None, msgid: str) -> str:
    return catalog_for(language, override_dir=override_dir).gettext(msgid)


def help_message(*, language: str, address: str, override_dir: Path | None = None,
                 **common: object) -> bytes:
    body = _text(language, override_dir, HELP) % {"address": address or common["from_addr"]}
    return _message(subject=_text(language, override_dir, SUBJECT_HELP), body=body,
                    **common)  # type: ignore[arg-type]


def leave_message(*, language: str, reply_to: str, override_dir: Path | None = None,
                  **common: object) -> bytes:
    return _message(subject=_text(language, override_dir, SUBJECT_LEAVE),
                    body=_text(language, override_dir, LEAVE), reply_to=reply_to,
                    **common)  # type: ignore[arg-type]


def limit_message(*, language: str, override_dir: Path | None = None,
                  **common: object) -> bytes:
    return _message(subject=_text(language, override_dir, SUBJECT_LIMIT),
                    body=_text(language, override_dir, LIMIT), **common)  # type: ignore[arg-type]


def mirrors_message(*, language: str, links: Sequence[str], onions: Sequence[str], latest: str,
                    override_dir: Path | None = None, **common: object) -> bytes:
    lines = [_text(language, override_dir, MIRRORS), "", *links]
    if onions:
        lines += ["", "Tor:", *onions]
    if latest:
        lines += ["", _text(language, override_dir, LATEST) % {"subject": latest}]
    return _message(subject=_text(language, override_dir, SUBJECT_MIRRORS),
                    body="\n".join(lines), **common)  # type: ignore[arg-type]
