"""Wire the public pages (``subscribers.web``) to one config's store, tokens, templates and
transport; ``newsletter serve`` runs what this builds."""

from __future__ import annotations

import asyncio
import logging

from starlette.applications import Starlette

from mailer.app import App
from mailer.pipeline.confirm import confirmation_sender, confirmation_texts
from mailer.pipeline.send import queue_welcome, welcome
from subscribers.settings import PageSettings
from subscribers.web import make_web_app

__all__ = ["build_public_app", "confirmation_sender", "confirmation_texts"]


log = logging.getLogger("newsletter.web")


def build_public_app(app: App) -> Starlette:
    """Wire the public endpoints to this config's store, tokens, templates and transport."""
    cfg = app.config
    settings = PageSettings(public_url=cfg.newsletter.public_url, names=dict(cfg.newsletter.name),
                            rate_limit=cfg.web.rate_limit, confirm_ttl=cfg.web.confirm_ttl,
                            trusted_proxies=cfg.web.trusted_proxies,
                            proxy_header=cfg.web.proxy_header,
                            contact=cfg.newsletter.contact,
                            mail_address=cfg.newsletter.unsubscribe_mailto,
                            mirrors=cfg.web.mirrors)
    sender = confirmation_sender(app)

    async def follow_keys() -> None:
        """``keys rotate`` on a running ``serve``: new rows are sealed with the new key."""
        every = cfg.storage.key_reload_every.total_seconds()
        while True:
            await asyncio.sleep(every)
            await asyncio.to_thread(app.refresh_keys)

    async def welcome_reader(subscriber_id: int) -> object:
        """A reader who confirmed on the page gets the latest edition now, as by mail."""
        try:
            return await welcome(app, [subscriber_id])
        except Exception:  # a relay outage must not reach the reader's page
            log.exception("welcome of a newly confirmed reader failed; they get the next edition")
            return 0

    return make_web_app(app.subscribers, app.tokens, app.jinja, settings, signup=app.signup,
                        confirmations=sender, background=(follow_keys,),
                        on_confirmed=welcome_reader, in_confirmation=queue_welcome(app))
