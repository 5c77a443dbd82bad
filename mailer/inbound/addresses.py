"""Our addresses with a tag after ``+``: what they carry, made and read in one place. Pure.

* ``bounces+TOKEN@domain``: the VERP envelope of one message (``[delivery] envelope_from`` is
  the base; ``Config.envelope_sender`` owns it). TOKEN is ``TokenSigner.bounce_token``: a MAC
  of (edition, subscriber), lower-case base32 because servers may fold a local part's case.
* ``digest+r-TOKEN@domain``: the Reply-To of an edition (same token), so that a reader's
  reply "退订 / unsubscribe" names them without trusting the From.
* ``digest+c-TOKEN`` / ``digest+l-TOKEN`` / ``digest+u-TOKEN``: the Reply-To of a
  confirmation of a subscription, of a change of language, and of "reply to leave": replying
  is confirming, like opening the link (the tokens are ``TokenSigner``'s, as in the links).
* ``digest+zh-hant@domain``: a reader writing to ask in a language.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailer.config import Config
from subscribers.tokens import BOUNCE_TOKEN_LENGTH

__all__ = ["REPLY_TAGS", "InboundAddresses", "Reference", "tagged", "verp_base"]

# Reply-To tag prefixes and what a reply to each means.
REPLY_TAGS = {"r": "reply", "c": "confirm", "l": "language-token", "u": "leave"}
_LANGUAGE_TAG = re.compile(r"(?i)^[a-z]{2,3}(-[a-z0-9]{2,8})*(\+[a-z]{2,3}(-[a-z0-9]{2,8})*)?$")
_TOKEN_IN_TEXT = rf"\+([a-z2-7]{{{BOUNCE_TOKEN_LENGTH}}})@"


@dataclass(frozen=True)
class Reference:
    """What a tag or a returned header points at: ``kind`` and the raw value (a token, a
    language, or ``EDITION.SUBSCRIBER_HEX`` from our Message-ID)."""

    kind: str
    value: str


def tagged(base: str, tag: str) -> str:
    """``local+tag@domain`` of ``base`` (a bare address)."""
    local, _, domain = base.rpartition("@")
    return f"{local}+{tag}@{domain}"


def verp_base(config: Config) -> str | None:
    """The VERP base: ``Config.envelope_sender`` (its one owner) when ``[delivery]
    envelope_from`` names a mailbox for bounces; the From's mailbox is a person's, so without
    it nothing is tagged."""
    return config.envelope_sender if config.delivery.envelope_from else None


def _split(address: str) -> tuple[str, str, str] | None:
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at:
        return None
    base, _, tag = local.partition("+")
    return base, tag, domain.lower()


@dataclass(frozen=True)
class InboundAddresses:
    """The bounce base (``Config.envelope_sender`` when VERP is on) and the readers' address."""

    bounce_base: str | None
    reader: str | None
    domains: frozenset[str] = frozenset()
    # Other mailboxes delivered to the same intake (``[newsletter] unsubscribe_mailto``,
    # ``[inbound] mailboxes``).
    mailboxes: tuple[str, ...] = ()

    def _matches(self, base: str | None, address: str) -> str | None:
        """The tag of ``address`` if it is ``base`` with a tag, else None."""
        if base is None:
            return None
        parts, ours = _split(address), _split(base)
        if parts is None or ours is None:
            return None
        if parts[0].lower() != ours[0].lower() or parts[2] != ours[2]:
            return None
        return parts[1]

    def verp_reference(self, address: str) -> Reference | None:
        tag = self._matches(self.bounce_base, address)
        if tag and len(tag) == BOUNCE_TOKEN_LENGTH:
            return Reference("verp", tag.lower())
        return None

    def references_in(self, text: str) -> list[Reference]:
        """VERP tokens of our bounce base anywhere in ``text`` (returned headers)."""
        if self.bounce_base is None:
            return []
        local, _, domain = self.bounce_base.rpartition("@")
        pattern = re.escape(local) + _TOKEN_IN_TEXT + re.escape(domain)
        return [Reference("verp", m.lower()) for m in re.findall(pattern, text, re.IGNORECASE)]

    def accepts(self, address: str) -> bool:
        """Whether mail to ``address`` is ours to take: one of our mailboxes, with or without a
        tag. An MTA handing in anything else (a typo, a misrouted domain) is told ``550 5.1.1``
        for that recipient rather than having it vanish into ``.unmatched``. Knowing no mailbox
        at all, everything is taken, as the Maildir does."""
        bases = [b for b in (self.bounce_base, self.reader, *self.mailboxes) if b]
        return not bases or any(self._matches(b, address) is not None for b in bases)

    def is_ours(self, domain: str) -> bool:
        return domain.lower() in self.domains

    def is_reader_address(self, address: str) -> bool:
        return self._matches(self.reader, address) is not None

    def reader_tag(self, address: str) -> Reference | None:
        """What the tag of a readers' address says: a reply token, or a language."""
        tag = self._matches(self.reader, address)
        if not tag:
            return None
        prefix, dash, rest = tag.partition("-")
        if dash and prefix.lower() in REPLY_TAGS and len(rest) >= 16:
            kind = REPLY_TAGS[prefix.lower()]
            return Reference(kind, rest.lower() if kind == "reply" else rest)
        if _LANGUAGE_TAG.match(tag):
            return Reference("language", tag)
        return None
