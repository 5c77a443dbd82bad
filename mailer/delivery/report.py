"""The edition report: each outcome counted per destination domain.

This is how editors learn that, say, qq.com refused the content while 163.com took it, and,
for a send that hourly or daily caps or a blocked provider spread over hours or days, when each
domain will be finished. ``newsletter editions report ID`` prints
``format_report(edition_report(engine, ID, settings))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from mailer.clock import Clock, system_clock
from mailer.config import DeliverySettings
from mailer.delivery.budget import DomainBudget
from mailer.delivery.outbox import Outbox
from mailer.delivery.pace import finish_estimate
from mailer.delivery.providers import family_key
from mailer.delivery.ratelimit import match_domain
from mailer.models import OutboxState

__all__ = ["EditionReport", "Finish", "edition_report", "finish_times", "format_report"]

_OPEN = (OutboxState.QUEUED, OutboxState.SENDING, OutboxState.DEFERRED)


@dataclass(frozen=True)
class Finish:
    """When a domain's last waiting message should go (None: more than about a year), and why
    it takes that long (the caps, a block), in words."""

    left: int
    at: datetime | None
    why: str = ""


@dataclass(frozen=True)
class EditionReport:
    """Counts only: domains and states, never an address."""

    edition_id: int
    totals: Mapping[OutboxState, int]
    by_domain: Mapping[str, Mapping[OutboxState, int]]
    by_language: Mapping[str, Mapping[OutboxState, int]] = field(default_factory=dict)
    finish: Mapping[str, Finish] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    def rate(self, domain: str, state: OutboxState) -> float:
        """Share of ``domain``'s rows in ``state`` (for the content-rejection alert)."""
        row = self.by_domain.get(domain, {})
        n = sum(row.values())
        return row.get(state, 0) / n if n else 0.0


def edition_report(engine: Engine, edition_id: int, settings: DeliverySettings | None = None,
                   clock: Clock = system_clock) -> EditionReport:
    """Read the outbox once and count each outcome, overall and per destination domain; with
    ``settings``, also estimate when each domain with waiting rows will be finished."""
    outbox = Outbox(engine, clock)
    by_domain = outbox.counts_by_domain(edition_id)
    totals = dict.fromkeys(OutboxState, 0)
    for row in by_domain.values():
        for state, n in row.items():
            totals[state] += n
    ordered = dict(sorted(by_domain.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])))
    languages = dict(sorted(outbox.counts_by_language(edition_id).items()))
    finish = finish_times(engine, outbox, edition_id, ordered, settings, clock()) if settings \
        else {}
    return EditionReport(edition_id, totals, ordered, languages, finish)


def finish_times(engine: Engine, outbox: Outbox, edition_id: int,
                 by_domain: Mapping[str, Mapping[OutboxState, int]],
                 settings: DeliverySettings, now: datetime) -> dict[str, Finish]:
    """Per domain with rows still to send: the estimate of ``pace.finish_estimate`` from its
    rate, its caps and what this hour and day used, after any block or deferral."""
    budget = DomainBudget(engine)
    used = budget.used(now)
    blocks = budget.blocks(now)
    due = outbox.due_by_domain(edition_id)
    limited = settings.limited_domains
    out: dict[str, Finish] = {}
    for domain, row in by_domain.items():
        left = sum(row.get(s, 0) for s in _OPEN)
        if not left:
            continue
        key = match_domain(domain, limited)
        rate = settings.domain_rates.get(key, 0.0) if key else 0.0
        cap = settings.domain_caps.get(key) if key else None
        why = []
        not_before = None
        for block in blocks:
            fam = settings.providers.get(block.family)
            if fam is not None and family_key(domain, fam.domains) is not None:
                not_before = block.until
                why.append(f"{fam.label} blocklists us")
        if not_before is None and not row.get(OutboxState.QUEUED, 0) \
                and not row.get(OutboxState.SENDING, 0) and domain in due:
            not_before = due[domain]
            why.append("waiting for a retry")
        if cap is not None:
            why += [f"{n:,} per {unit}" for n, unit in ((cap.per_hour, "hour"),
                                                        (cap.per_day, "day")) if n]
        if rate:
            why.append(f"{rate:g}/s")
        h, d = used.get(key, (0, 0)) if key else (0, 0)
        at = finish_estimate(left, now, rate=rate,
                             per_hour=cap.per_hour if cap else None,
                             per_day=cap.per_day if cap else None,
                             used_hour=h, used_day=d, not_before=not_before)
        out[domain] = Finish(left, at, ", ".join(why))
    return out


_COLUMNS = (
    OutboxState.SENT, OutboxState.DEFERRED, OutboxState.FAILED, OutboxState.BOUNCED,
    OutboxState.CONTENT_REJECTED, OutboxState.SUPPRESSED, OutboxState.QUEUED,
    OutboxState.SENDING, OutboxState.CANCELLED,
)


def format_report(report: EditionReport, *, top: int | None = None, tz: str = "UTC") -> str:
    """A plain-text table (one line per domain, busiest first) for the CLI and logs, then when
    each unfinished domain will be finished, in ``tz``."""
    names = [c.value for c in _COLUMNS]
    width = max([len("domain"), len("total"), *(len(d) for d in report.by_domain)])
    head = f"{'domain':<{width}}  " + "  ".join(f"{n:>8}" for n in names)
    lines = [f"edition {report.edition_id}: {report.total} recipients", head]
    domains = list(report.by_domain.items())
    if top is not None:
        domains = domains[:top]
    for domain, row in domains:
        lines.append(f"{domain:<{width}}  " + "  ".join(f"{row.get(c, 0):>8}" for c in _COLUMNS))
    lines.append(f"{'total':<{width}}  "
                 + "  ".join(f"{report.totals.get(c, 0):>8}" for c in _COLUMNS))
    if len(report.by_language) > 1:
        lwidth = max([len("language"), *(len(lang) for lang in report.by_language)])
        lines.append("")
        lines.append(f"{'language':<{lwidth}}  " + "  ".join(f"{n:>8}" for n in names))
        for lang, row in report.by_language.items():
            lines.append(f"{lang:<{lwidth}}  " + "  ".join(f"{row.get(c, 0):>8}" for c in _COLUMNS))
    if report.finish:
        lines += ["", "still to send, and when each domain will be finished (estimate):"]
        zone = ZoneInfo(tz)
        for domain, f in report.finish.items():
            when = (f"{f.at.astimezone(zone):%Y-%m-%d %H:%M} {tz}" if f.at is not None
                    else "in more than a year")
            why = f"  ({f.why})" if f.why else ""
            lines.append(f"{domain:<{width}}  {f.left:>8} left  finished by {when}{why}")
    return "\n".join(lines)
