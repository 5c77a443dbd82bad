"""Wire the public pages (``subscribers.web``) to one config's store, tokens, templates and
transport; ``newsletter serve`` runs what this builds."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette

from mailer.app import App
from mailer.render.catalog import catalog_for
from subscribers.confirmations import ConfirmationSender, Delivered
from subscribers.languages import KNOWN_LANGUAGES
from subscribers.mail import MSGIDS, ConfirmTexts
from subscribers.settings import PageSettings
from subscribers.web import make_web_app

__all__ = ["build_public_app", "confirmation_texts"]


def confirmation_texts(app: App) -> ConfirmTexts:
    """The confirmation mail in every known language, from the one message catalog (a
    deployment's own ``locale/`` wins, as for the emails)."""
    catalogs = {lang: catalog_for(lang, override_dir=app.config.newsletter.templates_dir)
                for lang in KNOWN_LANGUAGES}
    return {kind: {lang: (c.gettext(subject), c.gettext(body)) for lang, c in catalogs.items()}
            for kind, (subject, body) in MSGIDS.items()}


def build_public_app(app: App) -> Starlette:
    """Wire the public endpoints to this config's store, tokens, templates and transport."""
    cfg = app.config
    envelope_from = cfg.envelope_sender

    async def deliver(recipient: str, data: bytes) -> Delivered:
        """One attempt; the confirmation queue decides when to try again."""
        result = await app.transport.send(envelope_from, recipient, data)
        if result.accepted:
            return "sent"
        return "refused" if 500 <= result.code < 600 else "deferred"

    settings = PageSettings(public_url=cfg.newsletter.public_url, names=dict(cfg.newsletter.name),
                            rate_limit=cfg.web.rate_limit, confirm_ttl=cfg.web.confirm_ttl,
                            trusted_proxies=cfg.web.trusted_proxies,
                            proxy_header=cfg.web.proxy_header)
    sender = ConfirmationSender(
        app.signup.queue, app.subscribers, app.tokens, deliver,
        from_addr=cfg.newsletter.from_addr, public_url=cfg.newsletter.public_url,
        names=dict(cfg.newsletter.name), clock=app.clock, intake=app.signup.intake,
        texts=confirmation_texts(app))
    async def follow_keys() -> None:
        """``keys rotate`` on a running ``serve``: new rows are sealed with the new key."""
        every = cfg.storage.key_reload_every.total_seconds()
        while True:
            await asyncio.sleep(every)
            await asyncio.to_thread(app.refresh_keys)

    return make_web_app(app.subscribers, app.tokens, app.jinja, settings, signup=app.signup,
                        confirmations=sender, background=(follow_keys,))
