"""What operators see from outside: the metrics endpoint, and the events sent as webhooks.

The stages decide what happened (a feed's health flipped, a mirror went down, an edition was
sent); this module only turns those outcomes into counters and webhook events, so there is
one place that knows which outcome is which event. ``observing`` runs the ``/metrics`` server
and the webhook sender beside a long-running command (``run``, ``worker``); a short command
(``send``, ``run --once``) delivers what it queued on its way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from mailer.app import App
from mailer.feeds.fetch import redact
from mailer.feeds.poll import PollReport
from mailer.metrics import DatabaseCollector, feed_label, serve_metrics
from mailer.mirrors.health import CheckResult
from mailer.mirrors.state import MirrorHealth, load_health
from mailer.webhooks import WebhookSender

__all__ = ["daily_counts", "emit", "flush_webhooks", "mirrors_blocked", "mirrors_checked",
           "observing", "polled", "start_metrics"]

log = logging.getLogger("newsletter.observe")

FLUSH_TIMEOUT = 15.0  # a short command waits this long for its webhooks at most


def emit(app: App, event: str, data: Mapping[str, Any]) -> None:
    """Queue a webhook event (``App.emit``: a failure never stops the work that caused it)."""
    app.emit(event, data)


def polled(app: App, report: PollReport) -> None:
    """Count each feed's result; a feed that started failing or recovered is an event."""
    names = {f.url: f.name for f in app.config.feeds}
    for o in report.outcomes:
        result = "failed" if o.error else "not_modified" if o.not_modified else "ok"
        app.metrics.polled(feed_label(o.url, names.get(o.url)), result)
    errors = {o.url: o.error for o in report.outcomes}
    for url in report.newly_failing:
        emit(app, "feed.failing", {"feed": feed_label(url, names.get(url)), "url": redact(url),
                                   "error": errors.get(url) or ""})
    for url in report.recovered:
        emit(app, "feed.recovered", {"feed": feed_label(url, names.get(url)),
                                     "url": redact(url)})


def mirrors_checked(app: App, before: Mapping[str, MirrorHealth],
                    results: Sequence[CheckResult]) -> None:
    """``mirror.down`` once, when a check takes a mirror from up to down."""
    for r in results:
        prev = before.get(r.url)
        if not r.healthy and (prev is None or prev.healthy):
            emit(app, "mirror.down", {"mirror": r.url, "detail": r.detail,
                                      "consecutive_failures": r.consecutive_failures})


def mirrors_blocked(app: App, urls: Sequence[str], country: str) -> None:
    """``mirror.blocked`` for each mirror OONI newly shows blocked in ``country``."""
    for url in urls:
        emit(app, "mirror.blocked", {"mirror": url, "country": country})


def daily_counts(app: App) -> None:
    """``subscriber.counts``: the day's totals by state, nothing finer."""
    if not any("subscriber.counts" in h.events for h in app.config.webhooks):
        return
    counts = {state.value: n for state, n in app.subscribers.counts().items()}
    emit(app, "subscriber.counts", {"counts": counts, "total": sum(counts.values())})


def start_metrics(app: App, listen: tuple[str, int] | None) -> Any:
    """Serve ``/metrics`` for this process (None: not configured). Returns the server."""
    if listen is None:
        return None
    app.metrics.expose(DatabaseCollector(app.engine, lambda: app.config,
                                         lambda: load_health(app.engine)))
    try:
        server, _port = serve_metrics(app.metrics, listen)
    except OSError as exc:
        # Not fatal: a second daemon must still reach (and report) the database lock, and a
        # standby on the same host shares the port with the one it waits for.
        log.warning("metrics: cannot listen on %s:%d (%s); no /metrics from this process",
                    listen[0], listen[1], exc.strerror or type(exc).__name__)
        return None
    return server


async def flush_webhooks(app: App, within: float = FLUSH_TIMEOUT) -> None:
    """One round of webhook delivery, bounded: what fails stays queued for the daemon."""
    if not app.config.webhooks:
        return
    async with WebhookSender.client_for() as client:
        sender = WebhookSender(app.webhooks, client, app.clock, app.metrics.webhook)
        try:
            await asyncio.wait_for(sender.deliver_due(), within)
        except TimeoutError:
            log.warning("webhooks: not all delivered within %.0fs; they stay queued", within)
        except Exception as exc:
            log.warning("webhooks: %s; they stay queued", type(exc).__name__)


@contextlib.asynccontextmanager
async def observing(app: App, listen: tuple[str, int] | None) -> AsyncIterator[None]:
    """Beside a long-running command: ``/metrics`` on ``listen`` and the webhook sender."""
    server = start_metrics(app, listen)
    task: asyncio.Task[None] | None = None
    client = WebhookSender.client_for() if app.config.webhooks else None
    if client is not None:
        sender = WebhookSender(app.webhooks, client, app.clock, app.metrics.webhook)
        task = asyncio.create_task(sender.run())
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if client is not None:
            await client.aclose()
            await flush_webhooks(app)  # events of the last moments (edition.sent at a stop)
        if server is not None:
            server.shutdown()
            server.server_close()
