"""The Maildir edge of inbound mail: read each waiting message, hand it to the processing,
then delete it, or move it to ``.unmatched`` for a person.

A message is removed only after its handler returned, that is after its effect is committed:
a crash before that leaves it for the next run, and the handler's record of what it already did
(``pipeline/inbound.py``) makes the repeat act once. Handled mail is deleted because it holds a
reader's address; only what is not handled yet, and what a person must read, stays. Safe to
run from several processes: a message another one took meanwhile is skipped.
"""

from __future__ import annotations

import contextlib
import logging
import mailbox
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["UNMATCHED", "Handled", "InboundReport", "deliver", "process_maildir"]

log = logging.getLogger("newsletter.inbound")

UNMATCHED = "unmatched"


@dataclass(frozen=True)
class Handled:
    """What the processing made of one message; ``keep``: a person must read it."""

    kind: str
    keep: bool = False


@dataclass
class InboundReport:
    """Counts by kind only: the messages hold addresses, the report never does."""

    read: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    failed: int = 0  # the handler raised: left in place for the next run
    answered: int = 0

    @property
    def unmatched(self) -> int:
        return self.kinds["unmatched"]

    @property
    def unsubscribed(self) -> int:
        return self.kinds["unsubscribed"]


def _folder(box: mailbox.Maildir, name: str) -> mailbox.Maildir:
    return box.get_folder(name) if name in box.list_folders() else box.add_folder(name)


def deliver(folder: Path, raw: bytes) -> str:
    """Put ``raw`` in the Maildir ``folder`` (tmp/ then new/, so a reader never sees half a
    message); its key. The LMTP listener writes here before it answers 250."""
    box = mailbox.Maildir(folder, factory=None, create=True)
    return str(box.add(raw))


def process_maildir(folder: Path, handle: Callable[[bytes, Sequence[str]], Handled],
                    only: Sequence[str] | None = None) -> InboundReport:
    """Handle every message waiting in ``folder`` (or just the keys in ``only``)."""
    box = mailbox.Maildir(folder, factory=None, create=False)
    report = InboundReport()
    unmatched: mailbox.Maildir | None = None
    for key in list(only if only is not None else box.iterkeys()):
        try:
            raw = box.get_bytes(key)
        except KeyError:
            continue  # taken by another process
        report.read += 1
        try:
            handled = handle(raw, ())
        except Exception:  # a bug or the database away: the message stays for the next run
            log.exception("inbound: a message could not be handled; it stays in the Maildir")
            report.failed += 1
            continue
        report.kinds[handled.kind] += 1
        if handled.keep:
            if unmatched is None:
                unmatched = _folder(box, UNMATCHED)
            unmatched.add(raw)
        with contextlib.suppress(KeyError):  # removed by another process meanwhile
            box.remove(key)
    if report.unmatched:
        log.warning("inbound: %d message(s) for a person: see the Maildir folder .%s",
                    report.unmatched, UNMATCHED)
    return report
