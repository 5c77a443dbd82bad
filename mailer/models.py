"""Domain objects that flow between stages: frozen, so a stage cannot alter another's input."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "Edition",
    "EditionState",
    "InlineImage",
    "OutboxState",
    "Post",
    "PostImage",
    "RenderedVariant",
]


@dataclass(frozen=True)
class PostImage:
    """An image a post shows; the rendering stage fetches and embeds it."""

    url: str
    alt: str = ""


@dataclass(frozen=True)
class Post:
    """A sanitised post. ``language`` is en, zh-Hans, zh-Hant or mixed."""

    guid: str
    title: str
    content_html: str
    language: str
    link: str | None = None
    published: datetime | None = None
    updated: datetime | None = None
    images: tuple[PostImage, ...] = ()
    feed_url: str = ""
    id: int | None = None  # set once stored


class EditionState(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    APPROVED = "approved"
    HELD = "held"
    SENDING = "sending"
    PAUSED = "paused"
    SENT = "sent"
    CANCELLED = "cancelled"
    MISSED = "missed"


class OutboxState(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    BOUNCED = "bounced"
    CONTENT_REJECTED = "content_rejected"
    SUPPRESSED = "suppressed"
    # Never sent: the edition was cancelled before this row's turn (``Outbox.cancel_unsent``).
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (OutboxState.QUEUED, OutboxState.SENDING, OutboxState.DEFERRED)


@dataclass(frozen=True)
class Edition:
    """An edition: the posts (in order) that go out together, and its schedule."""

    id: int
    kind: str
    state: EditionState
    posts: tuple[Post, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)
    scheduled_at: datetime | None = None
    created_at: datetime | None = None
    # The editors' subject per language (else the subject is derived from the posts).
    subjects: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InlineImage:
    """An image embedded as a ``cid:`` part, so the mail loads nothing remote."""

    cid: str
    content_type: str
    data: bytes
    filename: str = "image"


@dataclass(frozen=True)
class RenderedVariant:
    """One (edition, language) rendering, CSS already inlined, with ``@@SLOT_NAME@@`` placeholders.

    ``mirror_slots`` is how many ``M0..Mn`` slots the bodies use (the per-recipient mirror count).
    """

    language: str
    subject: str
    html: str
    text: str
    images: tuple[InlineImage, ...] = ()
    mirror_slots: int = 0
    content_language: str = ""
