"""The ``@@SLOT_NAME@@`` placeholder syntax, owned here alone.

The renderer never sees a subscriber: it writes a slot where a per-recipient value goes, and
``mailer.message`` fills the slots per recipient in the encoded bytes. Two kinds exist: the
mirror bases ``M0``, ``M1`` … and the unsubscribe URL. Feed text is defused so that it can never
become a slot. Pure string work.
"""

from __future__ import annotations

import re

from mailer.errors import RenderError

__all__ = [
    "SLOT_PREFIX",
    "SLOT_RE",
    "UNSUB",
    "UNSUB_SLOT",
    "defuse",
    "fill",
    "is_known",
    "mirror_index",
    "mirror_slot",
    "slot",
]

SLOT_PREFIX = "@@SLOT_"
SLOT_RE = re.compile(r"@@SLOT_([A-Z0-9_]+)@@")
UNSUB = "UNSUB_URL"


def slot(name: str) -> str:
    """The placeholder the renderer writes where a per-recipient value goes."""
    return f"{SLOT_PREFIX}{name}@@"


UNSUB_SLOT = slot(UNSUB)


def mirror_slot(index: int) -> str:
    """The placeholder for the recipient's ``index``-th mirror base (no trailing slash)."""
    return slot(f"M{index}")


def mirror_index(name: str) -> int | None:
    """``3`` for the slot name ``M3``; None for any other name."""
    if name.startswith("M") and name[1:].isdigit():
        return int(name[1:])
    return None


def is_known(name: str) -> bool:
    """Whether ``name`` is a slot that a message can fill (the unsubscribe URL or a mirror)."""
    return name == UNSUB or mirror_index(name) is not None


def defuse(value: str) -> str:
    """Feed text must never become a slot: a post quoting ``@@SLOT_TO@@`` would otherwise be
    filled per recipient, or stop the whole edition as an unknown slot. A zero-width space
    keeps it looking the same to the reader."""
    return value.replace(SLOT_PREFIX, "@\u200b@SLOT_") if SLOT_PREFIX in value else value


def fill(text: str, values: dict[str, str]) -> str:
    """Replace every slot in ``text``; a slot without a value is an error, never a blank."""

    def repl(m: re.Match[str]) -> str:
        try:
            return values[m.group(1)]
        except KeyError:
            raise RenderError(f"no value for slot {m.group(1)}") from None

    return SLOT_RE.sub(repl, text)
