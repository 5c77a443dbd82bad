"""Subscriber states and the rules that move between them: pure, so every rule is testable.

    pending ──confirm──► active ──unsubscribe / bounce / complaint──► unsubscribed | bounced |
    complained

Suppression: unsubscribed, bounced and complained addresses are never re-activated by an import
unless the operator passes ``--reactivate``. Re-subscribing through the form does bring them
back, but only through double opt-in (to ``pending``, then a confirmation), because the form is
the subscriber's own act and the confirmation proves the mailbox is theirs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "SUPPRESSED",
    "TIMESTAMP_COLUMN",
    "Event",
    "Recipient",
    "Subscriber",
    "SubscriberState",
    "next_state",
]


class SubscriberState(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


SUPPRESSED = frozenset(
    {SubscriberState.UNSUBSCRIBED, SubscriberState.BOUNCED, SubscriberState.COMPLAINED}
)

# The column that records when a subscriber entered each state (pending uses created_at or
# state_changed_at; a re-subscription resets state_changed_at).
TIMESTAMP_COLUMN: dict[SubscriberState, str] = {
    SubscriberState.PENDING: "state_changed_at",
    SubscriberState.ACTIVE: "confirmed_at",
    SubscriberState.UNSUBSCRIBED: "unsubscribed_at",
    SubscriberState.BOUNCED: "bounced_at",
    SubscriberState.COMPLAINED: "complained_at",
}


class Event(enum.StrEnum):
    FORM = "form"  # the subscribe form (double opt-in follows)
    IMPORT = "import"  # a CSV import without --confirmed
    IMPORT_CONFIRMED = "import_confirmed"  # a CSV import with --confirmed
    CONFIRM = "confirm"  # a valid confirmation token
    UNSUBSCRIBE = "unsubscribe"
    BOUNCE = "bounce"  # a hard bounce
    COMPLAINT = "complaint"  # a feedback-loop complaint


_TERMINAL = {
    Event.UNSUBSCRIBE: SubscriberState.UNSUBSCRIBED,
    Event.BOUNCE: SubscriberState.BOUNCED,
    Event.COMPLAINT: SubscriberState.COMPLAINED,
}


def next_state(current: SubscriberState | None, event: Event, *,
               reactivate: bool = False, was_suppressed: bool = False) -> SubscriberState:
    """The state after ``event``; ``current`` is None for an address not yet on the list.

    ``was_suppressed``: the row unsubscribed, bounced or complained before and is pending
    again because someone used the subscribe form. Only the reader's own confirmation (or an
    explicit ``reactivate``) makes it active: anyone can type an address into the form, and an
    import must not turn that into mail the reader refused.

    Returning ``current`` unchanged means "nothing to do"; callers skip the write.
    """
    if event in _TERMINAL:
        if current is None:
            return _TERMINAL[event]
        # A complaint outranks an unsubscribe or a bounce: it is the strongest "never again".
        if current is SubscriberState.COMPLAINED:
            return current
        return _TERMINAL[event]
    if event is Event.CONFIRM:
        # Confirming twice is harmless; a confirmation never undoes a later unsubscribe.
        return SubscriberState.ACTIVE if current is SubscriberState.PENDING else (
            current or SubscriberState.PENDING)
    if event is Event.FORM:
        if current is SubscriberState.ACTIVE:
            return current
        return SubscriberState.PENDING
    confirmed = event is Event.IMPORT_CONFIRMED
    target = SubscriberState.ACTIVE if confirmed else SubscriberState.PENDING
    if current is None:
        return target
    if current in SUPPRESSED:
        return target if reactivate else current
    if current is SubscriberState.PENDING and confirmed and (reactivate or not was_suppressed):
        return SubscriberState.ACTIVE
    return current


@dataclass(frozen=True, slots=True)
class Recipient:
    """What the sender needs for one message: id, decrypted address, language."""

    id: int
    address: str
    language: str

    @property
    def domain(self) -> str:
        """The ASCII, lower-case domain (for per-domain rates and reports)."""
        return self.address.rpartition("@")[2].lower()

    def __repr__(self) -> str:  # never show the address in logs or tracebacks
        return f"Recipient(id={self.id}, language={self.language!r})"


@dataclass(frozen=True)
class Subscriber:
    """A subscriber's record without the address: safe to log and to show to editors."""

    id: int
    language: str
    state: SubscriberState
    key_id: str
    created_at: datetime
    state_changed_at: datetime
    confirmed_at: datetime | None = None
    unsubscribed_at: datetime | None = None
    bounced_at: datetime | None = None
    complained_at: datetime | None = None
