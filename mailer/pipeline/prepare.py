"""The one render → serialise → personalise path: ``send``, the workers, ``preview`` and
``editions test-send`` all build their bytes here, so what an editor sees is what a reader gets.

Mirrors always come from the registry (healthy, unblocked, this reader's partition), never from
the config, and the footer's onion addresses likewise.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import httpx

from mailer.app import App
from mailer.delivery.outbox import OutboxRow
from mailer.errors import EditionError, InputError
from mailer.message import HeaderSettings, MessageTemplate, PersonalSlots, feedback_id
from mailer.models import Edition
from mailer.pipeline.archive import archive_links
from mailer.render.images import fetch_images
from mailer.render.variant import RenderContext, inline_css, render_variant
from subscribers.lifecycle import Recipient

__all__ = [
    "PreparedEdition",
    "Reader",
    "header_settings",
    "personalise",
    "personaliser",
    "prepare",
    "prepare_edition",
    "preview_messages",
]

# The stand-in reader of a preview: id 0 (no subscriber has it), an address nobody reads, and
# an unsubscribe link that says what it is.
PREVIEW_ADDRESS = "reader@example.org"
PREVIEW_UNSUBSCRIBE = "/u/PREVIEW-NOT-A-REAL-TOKEN"


def header_settings(app: App) -> HeaderSettings:
    """The headers every message shares, from ``[newsletter]``."""
    nl = app.config.newsletter
    domain = app.config.from_domain
    return HeaderSettings(
        from_addr=nl.from_addr,
        list_id=nl.list_id,
        message_id_domain=domain,
        reply_to=nl.reply_to,
        feedback_id=nl.feedback_id,
        unsubscribe_mailto=nl.unsubscribe_mailto,
        reply_tagged=app.config.inbound.address,
    )


@dataclass(frozen=True)
class Reader:
    """Whom one message is for: a subscriber, or a stand-in (id 0) for a preview or a test."""

    subscriber_id: int
    address: str
    language: str
    # None: the subscriber's real, signed unsubscribe link.
    unsubscribe_url: str | None = None


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


def prepare(app: App, edition: Edition, *, date: datetime | None = None, strict: bool = False,
            languages: Iterable[str] | None = None,
            images_client: httpx.AsyncClient | None = None) -> PreparedEdition:
    """Render and serialise ``edition`` for ``languages`` (default: every choice); premailer
    runs once per variant. ``strict``: a missing translation fails (preview), not the send."""
    if not edition.posts:
        raise EditionError("has no posts to send", edition_id=edition.id)
    choices = app.config.newsletter.choices
    wanted = tuple(languages) if languages is not None else choices
    for language in wanted:
        if language not in choices:
            raise InputError(f"--language {language!r} is not offered; "
                             f"choose one of {', '.join(choices)}")
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
                                    strict=strict, inliner=counted_inline, onions=onions)
    # "Read this issue on …": the edition's page on each healthy archive host.
    ctx = dataclasses.replace(ctx, archive_links=archive_links(app, edition.id, wanted))
    headers = dataclasses.replace(header_settings(app), feedback_id=feedback_id(
        edition.id, edition.kind, app.config.newsletter.feedback_id or app.config.from_domain))
    templates = {
        choice: MessageTemplate.build(render_variant(edition, choice, ctx), edition_id=edition.id,
                                      headers=headers, date=date, clock=app.clock)
        for choice in wanted
    }
    default = app.config.newsletter.default_language
    return PreparedEdition(edition.id, templates, default if default in templates else wanted[0],
                           calls)


def prepare_edition(app: App, edition_id: int, *, date: datetime | None = None,
                    images_client: httpx.AsyncClient | None = None) -> PreparedEdition:
    """:func:`prepare` for a stored edition, every language choice."""
    return prepare(app, app.editions.load(edition_id), date=date, images_client=images_client)


def personalise(app: App, prepared: PreparedEdition, reader: Reader) -> bytes:
    """One reader's bytes: their language's template, their mirrors, their unsubscribe link."""
    template = prepared.template_for(reader.language)
    # The template fixes how many mirror slots it has; a reload mid-send cannot change that.
    chosen = app.mirrors.for_subscriber(reader.subscriber_id, slots=template.mirror_slots)
    prepared.exposure.update(set(chosen))
    unsubscribe = reader.unsubscribe_url or (
        f"{app.config.newsletter.public_url}/u/{app.tokens.unsubscribe_token(reader.subscriber_id)}")
    return template.personalise(PersonalSlots(
        subscriber_id=reader.subscriber_id,
        address=reader.address,
        unsubscribe_url=unsubscribe,
        mirrors=chosen,
        reply_token=app.tokens.bounce_token(prepared.edition_id, reader.subscriber_id)
        if template.headers.reply_tagged and not template.headers.reply_to else "",
    ))


def personaliser(app: App, prepared: PreparedEdition) -> Callable[[OutboxRow, Recipient], bytes]:
    """The delivery engine's ``message_for``: :func:`personalise` per outbox row.

    The row's language, fixed when the edition was enqueued, picks the variant (not the
    reader's language now): a retry sends the bytes the first attempt sent, and the report's
    counts per language are what went out.
    """

    def message_for(row: OutboxRow, recipient: Recipient) -> bytes:
        return personalise(app, prepared, Reader(recipient.id, recipient.address, row.language))

    return message_for


def preview_messages(app: App, edition: Edition, languages: Iterable[str] | None = None, *,
                     date: datetime | None = None) -> dict[str, bytes]:
    """The bytes a sample reader of each language gets (default: every choice), rendered once:
    ``preview`` writes them to files, the admin shows them side by side. Strict catalogs: a
    missing translation fails here, not in the send."""
    prepared = prepare(app, edition, date=date or app.clock(), strict=True, languages=languages)
    unsubscribe = f"{app.config.newsletter.public_url}{PREVIEW_UNSUBSCRIBE}"
    return {language: personalise(app, prepared, Reader(0, PREVIEW_ADDRESS, language,
                                                        unsubscribe_url=unsubscribe))
            for language in prepared.templates}
