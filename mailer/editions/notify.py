"""Short report emails to the editors: an edition was sent, missed, held, or content-rejected.

Editors learn what the daemon did without reading its log. The reports name editions, posts
and per-state counts; they never name a subscriber (counts and domains only). Composing a
report is pure; sending goes through the configured transport, passed in.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any
from zoneinfo import ZoneInfo

from mailer.config import Config
from mailer.editions.store import EditionInfo

__all__ = [
    "Notifier",
    "ReportKind",
    "compose_report",
    "rejection_rate",
]

log = logging.getLogger("newsletter.editions.notify")

SendFn = Callable[[str, str, bytes], Awaitable[Any]]


class ReportKind(enum.StrEnum):
    SENT = "sent"
    MISSED = "missed"
    HELD = "held"
    REJECTIONS = "content rejections"
    BLOCKLISTED = "blocklisted"


_SUBJECTS = {
    ReportKind.SENT: "Edition {id} sent",
    ReportKind.MISSED: "Edition {id} MISSED its send time: not sent",
    ReportKind.HELD: "Edition {id} held: it needs an editor's approval",
    ReportKind.REJECTIONS: "Edition {id}: providers rejected the content of {rate:.1%} of messages",
    ReportKind.BLOCKLISTED: "Edition {id}: a mail provider blocklists us; sending to it stopped",
}

_ADVICE = {
    ReportKind.SENT: "",
    ReportKind.MISSED: ("The daemon was not running at its time, and sending it now would be "
                        "too late to be useful. To send it anyway:\n"
                        "  newsletter editions schedule {id} --at 'YYYY-MM-DD HH:MM'\n"
                        "or cancel it: newsletter editions cancel {id}"),
    ReportKind.HELD: ("Nothing is sent without approval. Check it with\n"
                      "  newsletter editions show {id}\n"
                      "then send it now with: newsletter editions approve {id}"),
    ReportKind.REJECTIONS: ("Mainland providers refused the message body. Look at the per-domain "
                            "report: newsletter editions report {id}"),
    ReportKind.BLOCKLISTED: ("Nothing more goes to that provider, from any edition, until the "
                             "time above; its readers' messages wait (nothing is lost) and "
                             "every other provider carries on. Ask the provider to delist the "
                             "sending IP or domain (docs/deployment.md), then let the rest go "
                             "at once with: newsletter relay unblock FAMILY\n"
                             "When each domain will be finished: newsletter editions report {id}"),
}


def rejection_rate(counts: Mapping[str, int]) -> float:
    """Share of answered messages refused for their content."""
    answered = sum(n for state, n in counts.items() if state not in ("queued", "sending"))
    return counts.get("content_rejected", 0) / answered if answered else 0.0


def compose_report(kind: ReportKind, info: EditionInfo, *, config: Config, now: datetime,
                   counts: Mapping[str, int] | None = None,
                   post_titles: Sequence[str] = ()) -> EmailMessage:
    """The report as a plain-text email from the newsletter's own address to the editors."""
    tz = config.schedule.timezone
    rate = rejection_rate(counts or {})
    msg = EmailMessage()
    name = config.newsletter.name.get("en") or next(iter(config.newsletter.name.values()), "")
    msg["Subject"] = f"[{name}] " + _SUBJECTS[kind].format(id=info.id, rate=rate)
    msg["From"] = config.newsletter.from_addr
    msg["To"] = ", ".join(config.newsletter.editors)
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid("editors", domain=config.from_domain)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no autoreplies to this
    lines = [f"Edition {info.id} ({info.kind}) is now {info.state}."]
    if info.reason:
        lines.append(f"Why: {info.reason}")
    if info.scheduled_at is not None:
        local = info.scheduled_at.astimezone(ZoneInfo(tz))
        lines.append(f"Its time: {local:%Y-%m-%d %H:%M} {tz} "
                     f"({info.scheduled_at.astimezone(ZoneInfo('UTC')):%Y-%m-%d %H:%M} UTC)")
    included = [p for p in info.post_ids if p not in info.excluded_ids]
    lines.append(f"Posts: {len(included)}" + (f" ({len(info.excluded_ids)} excluded)"
                                               if info.excluded_ids else ""))
    lines.extend(f"  - {t}" for t in post_titles)
    if counts:
        lines.append("Deliveries: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v))
        if counts.get("content_rejected"):
            lines.append(f"Content rejected: {rate:.1%} of answered messages "
                         f"(alert threshold {config.newsletter.content_rejection_alert:.1%})")
    advice = _ADVICE[kind].format(id=info.id)
    if advice:
        lines += ["", advice]
    msg.set_content("\n".join(lines) + "\n", cte="quoted-printable")
    return msg


@dataclass
class Notifier:
    """Sends reports to ``newsletter.editors`` through ``send`` (the configured transport)."""

    config: Config
    send: SendFn | None
    clock: Callable[[], datetime]
    counts: Callable[[int], Mapping[str, int]] | None = None
    titles: Callable[[int], Sequence[str]] | None = None
    # Across processes, only the caller this returns True for reports an edition sent.
    claim_sent: Callable[[int], bool] | None = None
    # ``events(name, data)``: these moments as webhook events (``App.emit``).
    events: Callable[[str, Mapping[str, Any]], object] | None = None

    @classmethod
    def for_app(cls, app: Any) -> Notifier:
        """Wire to the app's editors' transport (``App.editors_transport``: with Maildir a
        folder apart from readers' mail) and its outbox; a missing piece only costs the
        report."""

        async def send(envelope_from: str, recipient: str, data: bytes) -> Any:
            return await app.editors_transport.send(envelope_from, recipient, data)

        def counts(edition_id: int) -> Mapping[str, int]:
            from mailer.delivery.outbox import Outbox

            raw = Outbox(app.engine, app.clock).counts(edition_id)
            return {str(k): int(v) for k, v in raw.items()}

        def titles(edition_id: int) -> Sequence[str]:
            return [p.title for p in app.editions.load(edition_id).posts]

        return cls(app.config, send, app.clock, counts, titles, app.editions.claim_sent_report,
                   app.emit)

    async def sent(self, info: EditionInfo) -> None:
        if self.claim_sent is not None and not self.claim_sent(info.id):
            log.info("edition %d: the sent report went out already (another process)", info.id)
            return
        counts = self._counts(info.id)
        self._event("edition.sent", info, counts=dict(counts), total=sum(counts.values()))
        await self._report(ReportKind.SENT, info, counts)
        rate = rejection_rate(counts)
        if rate > self.config.newsletter.content_rejection_alert:
            self._event("edition.content_rejected", info, rate=round(rate, 4),
                        threshold=self.config.newsletter.content_rejection_alert,
                        content_rejected=counts.get("content_rejected", 0))
            await self._report(ReportKind.REJECTIONS, info, counts)

    async def missed(self, info: EditionInfo) -> None:
        self._event("edition.missed", info, reason=info.reason or "")
        await self._report(ReportKind.MISSED, info, None)

    async def held(self, info: EditionInfo) -> None:
        self._event("edition.held", info, reason=info.reason or "")
        await self._report(ReportKind.HELD, info, None)

    async def blocklisted(self, info: EditionInfo, family: str, until: datetime,
                          reason: str) -> None:
        """A provider answered that it blocklists us (163's DT:RBL): the engine stopped it."""
        tz = self.config.schedule.timezone
        why = (f"{reason}. Provider family {family!r} is held until "
               f"{until.astimezone(ZoneInfo(tz)):%Y-%m-%d %H:%M} {tz}.")
        await self._report(ReportKind.BLOCKLISTED, dataclasses.replace(info, reason=why),
                           self._counts(info.id))

    def _event(self, name: str, info: EditionInfo, **data: Any) -> None:
        if self.events is not None:
            self.events(name, {"edition": info.id, "kind": info.kind, **data})

    def _counts(self, edition_id: int) -> Mapping[str, int]:
        try:
            return self.counts(edition_id) if self.counts else {}
        except Exception as exc:  # a report without counts beats no report
            log.warning("edition %d: no delivery counts for the report (%s)", edition_id,
                        type(exc).__name__)
            return {}

    async def _report(self, kind: ReportKind, info: EditionInfo,
                      counts: Mapping[str, int] | None) -> bool:
        """Send one report to each editor; failures are logged (by edition, never by address)."""
        editors = self.config.newsletter.editors
        if not editors or self.send is None:
            log.info("edition %d %s (no editors to tell)", info.id, kind)
            return False
        titles: Sequence[str] = ()
        try:
            titles = self.titles(info.id) if self.titles else ()
        except Exception as exc:
            log.warning("edition %d: no post titles for the report (%s)", info.id,
                        type(exc).__name__)
        msg = compose_report(kind, info, config=self.config, now=self.clock(), counts=counts,
                             post_titles=titles)
        # CRLF for SMTP; no folding below 998 octets (RFC 5322 2.1.1), because the stdlib folds a
        # long Subject right after the colon and parsers then keep the leading space.
        data = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n", max_line_length=998))
        sender = self.config.envelope_sender
        ok = True
        for i, editor in enumerate(editors):
            try:
                result = await self.send(sender, editor, data)
            except Exception as exc:
                log.error("edition %d: %s report to editor #%d failed (%s)", info.id, kind, i + 1,
                          type(exc).__name__)
                ok = False
                continue
            code = getattr(result, "code", 250)
            if not 200 <= int(code) < 300:
                log.error("edition %d: %s report to editor #%d refused (%s)", info.id, kind, i + 1,
                          code)
                ok = False
        log.info("edition %d: told %d editor(s): %s", info.id, len(editors), kind)
        return ok
