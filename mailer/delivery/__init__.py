"""Delivery: the outbox, reply classification, SMTP pool, Maildir, rate limits and the engine."""

from __future__ import annotations

import asyncio

__all__ = ["use_uvloop"]


def use_uvloop() -> bool:
    """Run this process's event loops on uvloop when it is installed; True if it is.

    Call it once before ``asyncio.run`` in a sending process (``send``, ``worker``, the daemon):
    most of what the SMTP pool spends per message is event-loop work, which uvloop does in C.
    """
    try:
        import uvloop
    except ImportError:  # not on Windows, or not installed: the stdlib loop works the same
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
