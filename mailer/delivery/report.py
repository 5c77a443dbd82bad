"""The edition report: each outcome counted per destination domain.

This is how editors learn that, say, qq.com refused the content while 163.com took it.
``newsletter editions report ID`` prints ``format_report(edition_report(engine, ID))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import Engine

from mailer.clock import system_clock
from mailer.delivery.outbox import Outbox
from mailer.models import OutboxState

__all__ = ["EditionReport", "edition_report", "format_report"]


@dataclass(frozen=True)
class EditionReport:
    """Counts only: domains and states, never an address."""

    edition_id: int
    totals: Mapping[OutboxState, int]
    by_domain: Mapping[str, Mapping[OutboxState, int]]
    by_language: Mapping[str, Mapping[OutboxState, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    def rate(self, domain: str, state: OutboxState) -> float:
        """Share of ``domain``'s rows in ``state`` (for the content-rejection alert)."""
        row = self.by_domain.get(domain, {})
        n = sum(row.values())
        return row.get(state, 0) / n if n else 0.0


def edition_report(engine: Engine, edition_id: int) -> EditionReport:
    """Read the outbox once and count each outcome, overall and per destination domain."""
    outbox = Outbox(engine, system_clock)
    by_domain = outbox.counts_by_domain(edition_id)
    totals = dict.fromkeys(OutboxState, 0)
    for row in by_domain.values():
        for state, n in row.items():
            totals[state] += n
    ordered = dict(sorted(by_domain.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])))
    languages = dict(sorted(outbox.counts_by_language(edition_id).items()))
    return EditionReport(edition_id, totals, ordered, languages)


_COLUMNS = (
    OutboxState.SENT, OutboxState.DEFERRED, OutboxState.FAILED, OutboxState.BOUNCED,
    OutboxState.CONTENT_REJECTED, OutboxState.SUPPRESSED, OutboxState.QUEUED,
    OutboxState.SENDING,
)


def format_report(report: EditionReport, *, top: int | None = None) -> str:
    """A plain-text table (one line per domain, busiest first) for the CLI and logs."""
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
    return "\n".join(lines)
