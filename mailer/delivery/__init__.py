"""Delivery: the outbox, reply classification, SMTP pool, Maildir, rate limits and the engine."""

__all__: list[str] = []
