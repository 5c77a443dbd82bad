"""Wire the public pages (``subscribers.web``) to one config's store, tokens, templates and
transport; ``newsletter serve`` runs what this builds."""

from __future__ import annotations

from email.utils import parseaddr

from starlette.applications import Starlette

from mailer.app import App
from mailer.render.catalog import catalog_for
from subscribers.confirmations import ConfirmationQueue, ConfirmationSender, Delivered
from subscribers.languages import KNOWN_LANGUAGES
from subscribers.mail import CONFIRM_BODY, CONFIRM_SUBJECT, ConfirmTexts
from subscribers.settings import PageSettings
from subscribers.web import make_web_app

__all__ = ["build_public_app", "confirmation_texts"]


def confirmation_texts(app: App) -> ConfirmTexts:
    """The confirmation mail in every known language, from the one message catalog (a
    deployment's own ``locale/`` wins, as for the emails)."""
    out = {}
    for lang in KNOWN_LANGUAGES:
        catalog = catalog_for(lang, override_dir=app.config.newsletter.templates_dir)
        out[lang] = (catalog.gettext(CONFIRM_SUBJECT), catalog.gettext(CONFIRM_BODY))
    return out


def build_public_app(app: App) -> Starlette:
    """Wire the public endpoints to this config's store, tokens, templates and transport."""
    cfg = app.config
    envelope_from = cfg.delivery.envelope_from or parseaddr(cfg.newsletter.from_addr)[1]

    async def deliver(recipient: str, data: bytes) -> Delivered:
        """One attempt; the confirmation queue decides when to try again."""
        result = await app.transport.send(envelope_from, recipient, data)
        if result.accepted:
            return "sent"
        return "refused" if 500 <= result.code < 600 else "deferred"

    settings = PageSettings(public_url=cfg.newsletter.public_url, names=dict(cfg.newsletter.name),
                            rate_limit=cfg.web.rate_limit, confirm_ttl=cfg.web.confirm_ttl)
    sender = ConfirmationSender(
        ConfirmationQueue(app.engine, app.clock), app.subscribers, app.tokens, deliver,
        from_addr=cfg.newsletter.from_addr, public_url=cfg.newsletter.public_url,
        names=dict(cfg.newsletter.name), clock=app.clock, texts=confirmation_texts(app))
    return make_web_app(app.subscribers, app.tokens, app.jinja, settings, confirmations=sender)
