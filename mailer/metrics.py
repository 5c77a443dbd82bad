"""Prometheus metrics: what this process did (counters) and what the database holds (gauges).

One registry per process, never prometheus-client's global one and never its multiprocess
mode: ``newsletter run``, each ``newsletter worker`` and ``serve`` are separate programs (often
on separate hosts), not forks of one server, so each serves its own ``/metrics`` on
``[metrics] listen`` and Prometheus tells them apart by ``instance``. Counters are this
process's own (sum them across instances); the gauges are read from the database when scraped,
so every process reports the same deployment-wide numbers (take ``max`` across instances).
See docs/monitoring.md.

No label carries an address, a token or a rare domain: a recipient domain is a public provider
by name or ``other`` (:func:`mailer.delivery.domains.metric_domain`); feeds are named by the
config (their name, else their host); mirrors are only counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from mailer.clock import as_utc
from mailer.config import Config
from mailer.delivery.domains import metric_domain
from mailer.delivery.outbox import OPEN_STATES
from mailer.models import EditionState, OutboxState
from mailer.schema import editions, feeds, outbox, webhook_deliveries
from subscribers.schema import confirmations

__all__ = ["DatabaseCollector", "Metrics", "feed_label", "serve_metrics"]

log = logging.getLogger("newsletter.metrics")

_LIVE_EDITIONS = ("sending", "paused")


def feed_label(url: str, name: str | None) -> str:
    """A feed's label: its configured name, else its host (never a path or a query, which can
    carry a key)."""
    return name or (urlsplit(url).hostname or "feed")


class Metrics:
    """This process's counters. The delivery engine reports through ``recorded`` and
    ``waited``; the pipeline through ``polled`` and ``webhook``."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter(
            "newsletter_messages", "Messages whose outcome was recorded in the outbox, by "
            "outcome and recipient domain class (public provider by name, else other).",
            ["outcome", "domain"], registry=r)
        self.relay_errors = Counter(
            "newsletter_relay_connection_errors", "Sends that got no reply from a relay "
            "(connection refused, dropped, timed out), by relay.", ["relay"], registry=r)
        self.rate_waits = Histogram(
            "newsletter_rate_limit_wait_seconds", "Time a message waited for its domain's "
            "rate limit before it was sent.", ["domain"], registry=r,
            buckets=(0.01, 0.1, 0.5, 1, 5, 30, 120))
        self.feed_polls = Counter(
            "newsletter_feed_polls", "Feed fetches, by feed and result (ok, not_modified, "
            "failed).", ["feed", "result"], registry=r)
        self.webhooks = Counter(
            "newsletter_webhook_deliveries", "Webhook POST attempts, by event and result "
            "(delivered, retry, given_up).", ["event", "result"], registry=r)
        self._seconds = time.monotonic

    # -------------------------------------------------------------- delivery engine hooks

    def recorded(self, domain: str, state: OutboxState, code: int, relay: str | None) -> None:
        """One outcome committed to the outbox (``domain`` as the outbox keeps it)."""
        self.messages.labels(state.value, metric_domain(domain)).inc()
        if code == 0 and state is not OutboxState.SUPPRESSED:  # NO_REPLY: the relay never answered
            self.relay_errors.labels(relay or "none").inc()

    def waited(self, domain: str, seconds: float) -> None:
        self.rate_waits.labels(metric_domain(domain)).observe(max(0.0, seconds))

    # -------------------------------------------------------------- pipeline hooks

    def polled(self, feed: str, result: str) -> None:
        self.feed_polls.labels(feed, result).inc()

    def webhook(self, event: str, result: str) -> None:
        self.webhooks.labels(event, result).inc()

    def expose(self, collector: Collector) -> None:
        """Add the database's gauges (once per process)."""
        if not getattr(self, "_exposed", False):
            self.registry.register(collector)
            self._exposed = True


class DatabaseCollector(Collector):
    """Gauges read at scrape time: the outbox of live editions, each feed's health, mirrors,
    the confirmation, webhook and inbound queues. ``config`` is a callable so a reload shows."""

    def __init__(self, engine: Engine, config: Callable[[], Config],
                 health: Callable[[], dict[str, Any]]) -> None:
        self.engine = engine
        self.config = config
        self.health = health

    def describe(self) -> Iterable[Metric]:
        return []  # described by collecting; never queried at registration

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._collect()
        except Exception as exc:  # a scrape must answer even with the database away
            log.warning("metrics: could not read the database (%s)", type(exc).__name__)
            up = GaugeMetricFamily("newsletter_database_up", "1 if the last scrape read the "
                                   "database.")
            up.add_metric([], 0)
            yield up

    def _collect(self) -> Iterator[Metric]:
        cfg = self.config()
        rows = GaugeMetricFamily("newsletter_outbox_rows", "Outbox rows of editions that are "
                                 "sending or paused, and rows still open in sent editions "
                                 "(welcomes), by state.", labels=["state"])
        progress = GaugeMetricFamily("newsletter_edition_rows", "An edition's outbox rows by "
                                     "state, for editions sending or paused.",
                                     labels=["edition", "state"])
        started = GaugeMetricFamily("newsletter_edition_started_timestamp_seconds",
                                    "When an edition still sending was created.",
                                    labels=["edition"])
        with self.engine.connect() as conn:
            live = {int(i): c for i, c in conn.execute(
                select(editions.c.id, editions.c.created_at)
                .where(editions.c.state.in_(_LIVE_EDITIONS)))}
            totals = dict.fromkeys(OutboxState, 0)
            if live:
                for eid, state, n in conn.execute(
                        select(outbox.c.edition_id, outbox.c.state, func.count())
                        .where(outbox.c.edition_id.in_(list(live)))
                        .group_by(outbox.c.edition_id, outbox.c.state)):
                    totals[OutboxState(state)] += int(n)
                    progress.add_metric([str(eid), str(state)], int(n))
            # A sent edition's open rows are welcomes waiting (or retrying): the queue too.
            for state, n in conn.execute(
                    select(outbox.c.state, func.count())
                    .select_from(outbox.join(editions, editions.c.id == outbox.c.edition_id))
                    .where(editions.c.state == EditionState.SENT.value,
                           outbox.c.state.in_(OPEN_STATES))
                    .group_by(outbox.c.state)):
                totals[OutboxState(state)] += int(n)
            for state, n in totals.items():
                rows.add_metric([state.value], n)
            for eid, created in live.items():
                if isinstance(created, datetime):
                    started.add_metric([str(eid)], _stamp(created))
            feed_rows = conn.execute(select(feeds.c.url, feeds.c.name, feeds.c.status,
                                            feeds.c.last_success_at)).all()
            pending = int(conn.execute(select(func.count()).select_from(confirmations))
                          .scalar_one())
            hooks = _webhook_counts(conn)
        yield rows
        yield progress
        yield started
        configured = {f.url: f.name for f in cfg.feeds}
        last_ok = GaugeMetricFamily("newsletter_feed_last_success_timestamp_seconds",
                                    "When each feed was last read successfully.", labels=["feed"])
        failing = GaugeMetricFamily("newsletter_feed_failing", "1 while a feed is failing.",
                                    labels=["feed"])
        for url, name, status, ok_at in feed_rows:
            if url not in configured:
                continue
            label = feed_label(url, configured[url] or name)
            failing.add_metric([label], 1 if status == "failing" else 0)
            if isinstance(ok_at, datetime):
                last_ok.add_metric([label], _stamp(ok_at))
        yield last_ok
        yield failing
        yield self._mirrors(cfg)
        conf = GaugeMetricFamily("newsletter_confirmations_pending",
                                 "Confirmation mails waiting to be sent or retried.")
        conf.add_metric([], pending)
        yield conf
        hook = GaugeMetricFamily("newsletter_webhooks_pending", "Webhook events waiting, and "
                                 "those given up after a day.", labels=["state"])
        for state, n in hooks.items():
            hook.add_metric([state], n)
        yield hook
        inbound = GaugeMetricFamily("newsletter_inbound_pending", "Mail waiting in the "
                                    "unsubscribe Maildir ([web] unsubscribe_maildir).")
        inbound.add_metric([], _maildir_count(cfg.web.unsubscribe_maildir))
        yield inbound
        up = GaugeMetricFamily("newsletter_database_up", "1 if the last scrape read the database.")
        up.add_metric([], 1)
        yield up

    def _mirrors(self, cfg: Config) -> Metric:
        """Counted by state, never named: the full mirror list is what a censor wants."""
        health = self.health()
        counts = {"up": 0, "down": 0, "blocked": 0, "unchecked": 0}
        for site in cfg.mirrors.sites:
            if site.status == "retired":
                continue
            h = health.get(site.url)
            if h is None or h.last_check_at is None:
                counts["unchecked"] += 1
            elif h.blocked_in(cfg.mirrors.countries):
                counts["blocked"] += 1
            elif not h.healthy or h.last_error:
                counts["down"] += 1
            else:
                counts["up"] += 1
        family = GaugeMetricFamily("newsletter_mirrors", "Active and reserve mirrors by state "
                                   "(a failed last check counts as down).", labels=["state"])
        for state, n in counts.items():
            family.add_metric([state], n)
        return family


def _webhook_counts(conn: Any) -> dict[str, int]:
    w = webhook_deliveries
    out = {"pending": 0, "given_up": 0}
    for gave_up, n in conn.execute(select(w.c.gave_up_at.is_not(None), func.count())
                                   .group_by(w.c.gave_up_at.is_not(None))):
        out["given_up" if gave_up else "pending"] += int(n)
    return out


def _stamp(value: datetime) -> float:
    aware = as_utc(value)
    assert aware is not None
    return aware.timestamp()


def _maildir_count(folder: Path | None) -> int:
    if folder is None:
        return 0
    try:
        return sum(1 for p in (folder / "new").iterdir() if p.is_file())
    except OSError:
        return 0


def serve_metrics(metrics: Metrics, listen: tuple[str, int]) -> tuple[Any, int]:
    """Start ``/metrics`` on ``listen`` in a background thread; returns (server, bound port)."""
    host, port = listen
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", bound)
    return server, bound
