"""The path every send takes: poll → edition → render once per variant → outbox → transport.

``send``, ``run --once``, the daemon's jobs and ``newsletter worker`` all call these functions, so
there is one way an edition goes out. Each step is a stage's own function; this module only
connects them and decides nothing a stage already decides.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr
from pathlib import Path

import httpx

from mailer.app import App
from mailer.delivery.engine import DeliveryEngine, DeliveryReport
from mailer.delivery.outbox import OutboxRow
from mailer.editions.notify import Notifier
from mailer.editions.runner import process_due, resume_after_stop
from mailer.editions.store import Decision
from mailer.errors import EditionError, InputError
from mailer.feeds.poll import PollReport, poll_feeds
from mailer.lock import process_is_gone
from mailer.message import HeaderSettings, MessageTemplate, PersonalSlots
from mailer.mirrors.exposure import record_exposure
from mailer.models import EditionState
from mailer.render.images import fetch_images
from mailer.render.variant import RenderContext, inline_css, render_variant
from subscribers.lifecycle import Recipient
from subscribers.mailin import MailinReport

__all__ = [
    "PreparedEdition",
    "Resumed",
    "RunSummary",
    "SendSummary",
    "ensure_sample_subscribers",
    "header_settings",
    "poll",
    "prepare_edition",
    "resume_interrupted",
    "run_once",
    "send_edition",
    "send_new_posts",
    "unsubscribe_by_mail",
]

log = logging.getLogger("newsletter.pipeline")

SAMPLE_DOMAIN = "example.org"


def header_settings(app: App) -> HeaderSettings:
    """The headers every message shares, from ``[newsletter]``."""
    nl = app.config.newsletter
    domain = parseaddr(nl.from_addr)[1].rpartition("@")[2] or "localhost"
    return HeaderSettings(
        from_addr=nl.from_addr,
        list_id=nl.list_id,
        message_id_domain=domain,
        reply_to=nl.reply_to,
        feedback_id=nl.feedback_id,
        unsubscribe_mailto=nl.unsubscribe_mailto,
    )


def ensure_sample_subscribers(app: App, notice: Callable[[str], None]) -> int:
    """On an empty list with ``sample_subscribers`` on, add one example.org reader per choice."""
    if not app.config.newsletter.sample_subscribers or app.subscribers.count(None) > 0:
        return 0
    added = 0
    for choice in app.config.newsletter.choices:
        local = "reader-" + choice.lower().replace("+", "-and-")
        app.subscribers.add(f"{local}@{SAMPLE_DOMAIN}", choice, confirmed=True)
        added += 1
    notice(f"added {added} sample subscribers at {SAMPLE_DOMAIN} (one per language choice)")
    return added


def unsubscribe_by_mail(app: App, maildir: Path | None = None) -> MailinReport:
    """Unsubscribe the readers named by the mail waiting in ``maildir`` (default: the config's
    ``[web] unsubscribe_maildir``); see ``subscribers.mailin``."""
    from subscribers.mailin import process_maildir

    folder = maildir or app.config.web.unsubscribe_maildir
    if folder is None:
        raise InputError("no Maildir: set [web] unsubscribe_maildir or pass --maildir")
    if not (folder / "new").is_dir():
        raise InputError("not a Maildir (no new/ folder)", source=str(folder))
    return process_maildir(folder, app.subscribers, app.tokens.verify_unsubscribe)


async def poll(app: App, client: httpx.AsyncClient | None = None) -> PollReport:
    """Fetch every configured feed; a broken feed is reported and the others go on."""
    return await poll_feeds(app.config.feeds, store=app.post_store, fetch=app.config.fetch,
                            clock=app.clock, client=client)


@dataclass
class PreparedEdition:
    """An edition rendered once per language choice, ready to personalise per recipient."""

    edition_id: int
    templates: Mapping[str, MessageTemplate]
    default_language: str
    premailer_calls: int = 0
    exposure: Counter[str] = field(default_factory=Counter)

    def template_for(self, language: str) -> MessageTemplate:
        return self.templates.get(language) or self.templates[self.default_language]


def prepare_edition(app: App, edition_id: int, *, date: datetime | None = None,
                    images_client: httpx.AsyncClient | None = None) -> PreparedEdition:
    """Render and serialise every variant of ``edition_id``: premailer runs once per variant."""
    edition = app.editions.load(edition_id)
    if not edition.posts:
        raise EditionError("has no posts to send", edition_id=edition_id)
    now = date or app.clock()
    images = {}
    if app.config.images.fetch:
        images = fetch_images(edition.posts, app.config.images, client=images_client)
    calls = 0

    def counted_inline(html: str) -> str:
        nonlocal calls
        calls += 1
        return inline_css(html)

    # Onion addresses go to everyone; the registry leaves out any that is down or blocked.
    onions = [site.url for site in app.mirrors.static_links()]
    ctx = RenderContext.from_config(app.config, date=now, images=images, env=app.jinja,
                                    inliner=counted_inline, onions=onions)
    headers = header_settings(app)
    templates = {
        choice: MessageTemplate.build(render_variant(edition, choice, ctx), edition_id=edition_id,
                                      headers=headers)
        for choice in app.config.newsletter.choices
    }
    return PreparedEdition(edition_id, templates, app.config.newsletter.default_language, calls)


def personaliser(app: App, prepared: PreparedEdition) -> Callable[[OutboxRow, Recipient], bytes]:
    """Per recipient: the unsubscribe URL, this reader's mirrors, and the prepared bytes."""
    base = app.config.newsletter.public_url
    tokens = app.tokens
    mirrors = app.mirrors

    def message_for(row: OutboxRow, recipient: Recipient) -> bytes:
        template = prepared.template_for(recipient.language)
        # The template fixes how many mirror slots it has; a reload mid-send cannot change that.
        chosen = mirrors.for_subscriber(recipient.id, slots=template.mirror_slots)
        prepared.exposure.update(set(chosen))
        return template.personalise(PersonalSlots(
            subscriber_id=recipient.id,
            address=recipient.address,
            unsubscribe_url=f"{base}/u/{tokens.unsubscribe_token(recipient.id)}",
            mirrors=chosen,
        ))

    return message_for


@dataclass(frozen=True)
class SendSummary:
    edition_id: int
    enqueued: int
    report: DeliveryReport


async def send_edition(app: App, edition_id: int, *, progress: bool = False,
                       stop: asyncio.Event | None = None) -> SendSummary:
    """Enqueue every active subscriber once, then deliver until nothing is due.

    Safe to call again after a crash: enqueueing is idempotent and the outbox only hands out
    rows whose reply is not yet known. With ``stop`` (the daemon's), the caller owns SIGTERM:
    when it is set, messages in flight finish and nothing more is claimed. Without it, the
    engine handles SIGTERM/SIGINT itself (``newsletter send``).
    """
    prepared = await asyncio.to_thread(prepare_edition, app, edition_id)
    info = app.editions.info(edition_id)
    if info.state is not EditionState.SENDING:
        app.editions.set_state(edition_id, EditionState.SENDING)
    enqueued = await asyncio.to_thread(app.outbox.enqueue, edition_id, app.subscribers.stream_active())
    app.editions.set_total(edition_id, app.outbox.total(edition_id))
    engine = DeliveryEngine(
        app.outbox,
        app.transport,
        recipients=app.subscribers.get_recipients,
        message_for=personaliser(app, prepared),
        envelope_from=app.config.delivery.envelope_from or parseaddr(app.config.newsletter.from_addr)[1],
        settings=app.config.delivery,
        clock=app.clock,
        on_bounce=lambda sid: app.subscribers.set_state(sid, "bounced"),
        progress=progress,
        peers=app.senders,
    )
    if stop is None:
        report = await engine.run(edition_id)
    else:
        watcher = asyncio.create_task(_stop_when_set(stop, engine))
        try:
            report = await engine.run(edition_id, handle_signals=False)
        finally:
            watcher.cancel()
    record_exposure(app.engine, edition_id, prepared.exposure, app.clock())
    if app.outbox.unfinished(edition_id) == 0 and app.editions.info(edition_id).state is EditionState.SENDING:
        try:
            app.editions.set_state(edition_id, EditionState.SENT)
        except EditionError:  # a worker marked it sent between our look and our write
            if app.editions.info(edition_id).state is not EditionState.SENT:
                raise
    return SendSummary(edition_id, enqueued, report)


async def _stop_when_set(stop: asyncio.Event, engine: DeliveryEngine[Recipient]) -> None:
    await stop.wait()
    engine.stop("signal")


@dataclass(frozen=True)
class Resumed:
    """An edition a crash or a stopping daemon left unfinished, and how its resumption went."""

    edition_id: int
    left: int
    reclaimed: int
    summary: SendSummary


async def resume_interrupted(app: App, *, progress: bool = False) -> list[Resumed]:
    """Finish every edition left ``sending`` (a crash) or paused by a stopping daemon.

    ``send`` and ``run --once`` call this before their own work, so an interrupted edition
    never waits for the daemon. Rows leased by a dead process on this host are handed out at
    once; a live sender's rows (a daemon, a worker) stay its own, and an edition with nothing
    claimable is left to that sender. The outbox keeps every row exactly-once.
    """
    resume_after_stop(app)
    resumed = []
    for info in app.editions.find([EditionState.SENDING]):
        reclaimed = sum(app.outbox.expire_lease(info.id, owner)
                        for owner in app.outbox.lease_holders(info.id) if process_is_gone(owner))
        if not app.outbox.has_work(info.id, app.clock()):
            continue
        left = app.outbox.unfinished(info.id)
        log.info("resuming edition %d: %d left, %d reclaimed from a dead sender",
                 info.id, left, reclaimed)
        summary = await send_edition(app, info.id, progress=progress)
        resumed.append(Resumed(info.id, left, reclaimed, summary))
    return resumed


async def send_new_posts(app: App, *, progress: bool = False) -> SendSummary | None:
    """``newsletter send``: one edition of every stored post not yet sent, delivered now."""
    post_ids = app.editions.unsent_post_ids()
    if not post_ids:
        return None
    edition_id = app.editions.create(post_ids, kind="per-post" if len(post_ids) == 1 else "digest")
    if edition_id is None:
        return None
    app.editions.approve(edition_id)
    return await send_edition(app, edition_id, progress=progress)


@dataclass(frozen=True)
class RunSummary:
    """What one pass did: the poll, the sends, editors' editions decided, a held edition."""

    poll: PollReport
    sends: tuple[SendSummary, ...]
    decisions: tuple[tuple[int, Decision], ...] = ()
    held: int | None = None
    sample_subscribers: int = 0
    resumed: tuple[Resumed, ...] = ()


async def run_once(app: App, notice: Callable[[str], None], *, progress: bool = False) -> RunSummary:
    """``run --once``: one pass of what the daemon does, under the same send policy.

    Editions a crash or a stopping daemon left unfinished are finished first
    (``resume_interrupted``). Editors' scheduled editions then go through the policy (approval gate, misfire grace);
    then the feeds are polled and new posts go out as an edition now — or, when approval is
    required, become an edition held for the editors.
    """
    seeded = ensure_sample_subscribers(app, notice)
    resumed = await resume_interrupted(app, progress=progress)
    sends: list[SendSummary] = []

    async def send(edition_id: int) -> None:
        sends.append(await send_edition(app, edition_id, progress=progress))

    decisions = await process_due(app, send)
    report = await poll(app)
    held = None
    if app.config.newsletter.require_approval:
        held = app.editions.create()
        if held is not None:
            app.editions.hold(held, "new posts awaiting an editor's approval")
            await Notifier.for_app(app).held(app.editions.info(held))
    else:
        fresh = await send_new_posts(app, progress=progress)
        if fresh is not None:
            sends.append(fresh)
    return RunSummary(report, tuple(sends), tuple(decisions), held, seeded, tuple(resumed))
