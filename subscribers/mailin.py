"""Unsubscribe requests that arrive by mail: the ``mailto:`` of List-Unsubscribe.

Readers in mainland China often cannot open the web pages (the organisation's sites are
blocked), and a mail provider there cannot POST to them either; mail still gets through. Every
message offers ``mailto:ADDRESS?subject=unsubscribe%20TOKEN``; a mail server delivers what
arrives at that address to a Maildir, and ``process_maildir`` reads it: the token (not the
From, which anyone can forge) names the reader, who is unsubscribed. The message is deleted
afterwards, since it holds the reader's address. A message without a valid token is moved to
the Maildir's ``.unmatched`` folder for a person to handle (``subscribers find`` and
``subscribers suppress``).
"""

from __future__ import annotations

import contextlib
import email
import logging
import mailbox
import re
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path

from subscribers.errors import InputError
from subscribers.store import SubscriberStore

__all__ = ["UNMATCHED", "MailinReport", "process_maildir", "tokens_in"]

log = logging.getLogger("newsletter.subscribers.mailin")

UNMATCHED = "unmatched"
# "unsubscribe TOKEN": what our mailto puts in the subject; tokens are URL-safe base64.
_REQUEST = re.compile(r"\bunsubscribe\s+([A-Za-z0-9_-]{16,})", re.IGNORECASE)
_BODY_LIMIT = 20_000


def tokens_in(raw: bytes) -> list[str]:
    """The tokens a message asks to unsubscribe: ``unsubscribe TOKEN`` in its Subject (any
    ``Re:`` or encoding), then in its plain-text body. Pure; nothing is verified here."""
    msg = email.message_from_bytes(raw, policy=policy.default)
    texts = [str(msg.get("Subject", ""))]
    if isinstance(msg, EmailMessage):
        body = msg.get_body(preferencelist=("plain",))
        if body is not None:
            with contextlib.suppress(LookupError, ValueError):  # unknown charset, bad encoding
                texts.append(str(body.get_content())[:_BODY_LIMIT])
    found: list[str] = []
    for text in texts:
        found += _REQUEST.findall(text)
    return list(dict.fromkeys(found))


@dataclass
class MailinReport:
    """Counts only: the messages hold addresses, the report never does."""

    read: int = 0
    unsubscribed: int = 0  # readers unsubscribed (or already were)
    unmatched: int = 0  # moved to .unmatched for a person


def process_maildir(folder: Path, store: SubscriberStore,
                    verify: Callable[[str], int]) -> MailinReport:
    """Handle every message waiting in the Maildir ``folder`` (see the module docstring).

    ``verify`` turns a token into a subscriber id or raises ``InputError`` (the token signer's
    ``verify_unsubscribe``). Safe to run from several processes: a message another one took
    meanwhile is skipped.
    """
    box = mailbox.Maildir(folder, factory=None, create=False)
    report = MailinReport()
    unmatched: mailbox.Maildir | None = None
    for key in list(box.iterkeys()):
        try:
            raw = box.get_bytes(key)
        except KeyError:
            continue  # taken by another process
        report.read += 1
        ids = []
        for token in tokens_in(raw):
            try:
                ids.append(verify(token))
            except InputError:
                continue
        for sid in dict.fromkeys(ids):
            store.unsubscribe(sid)
            log.info("subscriber %d unsubscribed by mail", sid)
        if ids:
            report.unsubscribed += len(set(ids))
        else:
            if unmatched is None:
                unmatched = (box.get_folder(UNMATCHED) if UNMATCHED in box.list_folders()
                             else box.add_folder(UNMATCHED))
            unmatched.add(raw)
            report.unmatched += 1
        with contextlib.suppress(KeyError):  # removed by another process meanwhile
            box.remove(key)
    if report.unmatched:
        log.warning("%d unsubscribe messages had no valid token: see the Maildir folder .%s",
                    report.unmatched, UNMATCHED)
    return report
