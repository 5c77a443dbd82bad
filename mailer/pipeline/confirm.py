"""The confirmation mails' sender, wired to one config: ``serve`` runs it for the web form, and
``newsletter inbound`` runs one round of it after a reader subscribed by mail (one use case,
two doors)."""

from __future__ import annotations

from mailer.app import App
from mailer.inbound.addresses import tagged
from mailer.render.catalog import catalog_for
from subscribers.confirmations import ConfirmationSender, Delivered
from subscribers.languages import KNOWN_LANGUAGES
from subscribers.mail import MSGIDS, ConfirmTexts

__all__ = ["confirmation_sender", "confirmation_texts"]


def confirmation_texts(app: App) -> ConfirmTexts:
    """The confirmation mail in every known language, from the one message catalog (a
    deployment's own ``locale/`` wins, as for the emails)."""
    catalogs = {lang: catalog_for(lang, override_dir=app.config.newsletter.templates_dir)
                for lang in KNOWN_LANGUAGES}
    return {kind: {lang: (c.gettext(subject), c.gettext(body)) for lang, c in catalogs.items()}
            for kind, (subject, body) in MSGIDS.items()}


def confirmation_sender(app: App) -> ConfirmationSender:
    """The one sender of confirmation mails (``serve``, and ``inbound`` after a request by
    mail); with ``[inbound] address`` their Reply-To carries the token, so a reply confirms."""
    cfg = app.config
    envelope_from = cfg.envelope_sender

    async def deliver(recipient: str, data: bytes) -> Delivered:
        """One attempt; the confirmation queue decides when to try again."""
        result = await app.transport.send(envelope_from, recipient, data)
        if result.accepted:
            return "sent"
        return "refused" if 500 <= result.code < 600 else "deferred"

    inbound = cfg.inbound.address
    return ConfirmationSender(
        app.signup.queue, app.subscribers, app.tokens, deliver,
        from_addr=cfg.newsletter.from_addr, public_url=cfg.newsletter.public_url,
        names=dict(cfg.newsletter.name), clock=app.clock, intake=app.signup.intake,
        texts=confirmation_texts(app),
        reply_to=(lambda tag: tagged(inbound, tag)) if inbound else None)
