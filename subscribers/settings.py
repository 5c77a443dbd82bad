"""Typed settings that ``mailer.app`` builds from the config and hands to ``subscribers``.

``subscribers`` never imports ``mailer``: these small objects are the whole interface.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import IPv4Network, IPv6Network

from subscribers.languages import KNOWN_LANGUAGES, choices

__all__ = ["ListSettings", "PageSettings", "SignupSettings"]


@dataclass(frozen=True)
class ListSettings:
    """What a subscriber may choose and how addresses are folded for the blind index."""

    languages: tuple[str, ...] = KNOWN_LANGUAGES
    bilingual: tuple[str, ...] = ()
    normalise_gmail_dots: bool = False
    case_insensitive_domains: frozenset[str] = frozenset()  # ASCII, lower-case

    @property
    def index_rules(self) -> str:
        """The folding rules as one canonical string, recorded with the list: a blind index is
        only comparable with indexes made under the same rules."""
        return json.dumps({"gmail_dots": self.normalise_gmail_dots,
                           "case_insensitive_domains": sorted(self.case_insensitive_domains)},
                          separators=(",", ":"), sort_keys=True)

    def changed_rule(self, recorded: str) -> str:
        """The setting (its config name) by which ``recorded`` rules differ from these."""
        try:
            before = json.loads(recorded)
        except ValueError:
            before = {}
        if not isinstance(before, dict) or before.get("gmail_dots") != self.normalise_gmail_dots:
            return "normalise_gmail_dots"
        return "case_insensitive_domains"

    @property
    def default_language(self) -> str:
        return self.languages[0]

    @property
    def choices(self) -> tuple[str, ...]:
        return choices(self.languages, self.bilingual)


@dataclass(frozen=True)
class PageSettings:
    """The public web endpoints: where they live, how they are named, their limits."""

    public_url: str = "http://127.0.0.1:8080"
    names: Mapping[str, str] = field(default_factory=dict)
    rate_limit: int = 20  # requests per minute per client address, on each form endpoint
    confirm_ttl: timedelta = timedelta(days=7)
    # Behind a reverse proxy: the proxies whose ``proxy_header`` names the client
    # (subscribers/forwarded.py); empty, no header is believed.
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    proxy_header: str = "x-forwarded-for"
    # Where a person answers (the bad-link page, the home page); None: not shown.
    contact: str | None = None
    # The list's own mail address, where readers subscribe and leave by mail (the home page).
    mail_address: str | None = None
    # Other addresses that serve these same pages (the home page lists them).
    mirrors: tuple[str, ...] = ()


@dataclass(frozen=True)
class SignupSettings:
    """The limits on confirmation mails (subscribers/signup.py), whichever door the request came
    through: the form today, mail tomorrow. Anyone can type anyone's address, so these are what
    stops the list from being used to mail-bomb a stranger or a whole company."""

    confirm_every: timedelta = timedelta(days=1)  # at most one confirmation per address per ...
    confirm_max: int = 3  # ... and this many in all, until the pending row expires
    domain_per_hour: int = 50  # confirmation mails per recipient domain per hour
    pending_ttl: timedelta = timedelta(days=30)  # unconfirmed rows are erased after this
