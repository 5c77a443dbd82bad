"""Our answers to readers who write: help, mirrors, "reply to leave", and the one warning past
the daily limit. Pure: texts come from the one message catalog (templates/locale), in the
reader's language.

Every answer is marked ``Auto-Submitted: auto-replied`` (RFC 3834) and answers the reader's
message (``In-Reply-To``), and carries no link that loads anything: plain text only.
"""

from __future__ import annotations

import email.utils
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from mailer.render.catalog import catalog_for

__all__ = ["MSGIDS", "Answering", "help_message", "leave_message", "limit_message", "mirrors_message"]

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


@dataclass(frozen=True)
class Answering:
    """Whom an answer goes to, in which language, and what it answers."""

    from_addr: str
    to: str
    language: str
    now: datetime
    in_reply_to: str
    domain: str
    override_dir: Path | None = None

    def text(self, msgid: str) -> str:
        return catalog_for(self.language, override_dir=self.override_dir).gettext(msgid)


def _message(a: Answering, subject: str, body: str, reply_to: str = "") -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = a.from_addr
    msg["To"] = a.to
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(a.now)
    msg["Message-ID"] = email.utils.make_msgid("answer", domain=a.domain)
    in_reply_to = a.in_reply_to.strip()
    if in_reply_to and "\n" not in in_reply_to and "\r" not in in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(body, charset="utf-8", cte="base64")
    return msg.as_bytes()


def help_message(a: Answering, address: str) -> bytes:
    return _message(a, a.text(SUBJECT_HELP), a.text(HELP) % {"address": address or a.from_addr})


def leave_message(a: Answering, reply_to: str) -> bytes:
    return _message(a, a.text(SUBJECT_LEAVE), a.text(LEAVE), reply_to=reply_to)


def limit_message(a: Answering) -> bytes:
    return _message(a, a.text(SUBJECT_LIMIT), a.text(LIMIT))


def mirrors_message(a: Answering, links: Sequence[str], onions: Sequence[str], latest: str) -> bytes:
    lines = [a.text(MIRRORS), "", *links]
    if onions:
        lines += ["", "Tor:", *onions]
    if latest:
        lines += ["", a.text(LATEST) % {"subject": latest}]
    return _message(a, a.text(SUBJECT_MIRRORS), "\n".join(lines))
