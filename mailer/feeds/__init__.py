"""Feed ingestion: fetch (httpx or a file) → parse (feedparser) → sanitise → language → store.

The pure steps (``parse``, ``sanitise``, ``language``, ``ids``) know nothing of I/O; ``fetch``,
``store`` and ``poll`` do the I/O, with the client, engine and clock passed in.
"""

from __future__ import annotations

from mailer.feeds.poll import FeedOutcome, PollReport, poll_feeds
from mailer.feeds.store import FeedState, FeedStatus, PostStore, StoreResult

__all__ = ["FeedOutcome", "FeedState", "FeedStatus", "PollReport", "PostStore", "StoreResult", "poll_feeds"]
