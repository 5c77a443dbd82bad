"""Domain objects that flow between stages: frozen, so a stage cannot alter another's input."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "Edition",
    "EditionState",
    "OutboxState",
    "Post",
    "PostImage",
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
