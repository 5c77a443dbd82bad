"""Provider families and what their refusals mean: data (``providers.toml``), matched purely.

The wording of a refusal is each provider's own (NetEase's ``HL:ICC``, QQ's "mail content
denied"), so the rules are data that operators extend, not code: the shipped
``mailer/delivery/providers.toml`` and, optionally, the file named by ``[delivery]
providers_file``. ``mailer.config`` reads and validates both once (errors name the file, the
key and its line); :class:`ProviderRules` only matches, so ``classify`` stays pure.

A rule marked ``notice = true`` is also searched in the human-readable notice of a bounce that
came back by mail (QQ, NetEase and Sina often write their verdict only there, in Chinese:
"用户不存在", "被判定为垃圾邮件"). The others see only the one-line SMTP reply: a pattern such
as Sina's ``(spam|content)`` would match half the words of a whole notice.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

__all__ = [
    "DEFAULT_BLOCK_HOLD",
    "SHIPPED_RULES",
    "Family",
    "ProviderRules",
    "Rule",
    "Verdict",
    "family_key",
]

SHIPPED_RULES = Path(__file__).with_name("providers.toml")
DEFAULT_BLOCK_HOLD = timedelta(hours=24)


class Verdict(enum.StrEnum):
    """What a rule says a reply means (the ``outcome`` key of a rule)."""

    DEFER = "defer"
    SLOW_DOWN = "slow_down"
    CONTENT = "content"
    BOUNCE = "bounce"
    BLOCKLISTED = "blocklisted"


@dataclass(frozen=True)
class Rule:
    """One reply pattern; ``codes`` empty means any 4xx or 5xx."""

    pattern: re.Pattern[str]
    verdict: Verdict
    codes: frozenset[int] = frozenset()
    retry_after: timedelta | None = None
    hold: timedelta | None = None
    notice: bool = False  # also searched in a bounce notice's text, not only in the reply

    def matches(self, code: int, reply: str) -> bool:
        if self.codes and code not in self.codes:
            return False
        return self.pattern.search(reply) is not None


@dataclass(frozen=True)
class Family:
    """A provider and the domains it hosts (``qq``: qq.com, foxmail.com, vip.qq.com)."""

    name: str
    label: str
    domains: frozenset[str]
    rules: tuple[Rule, ...]


def family_key(domain: str, domains: Iterable[str]) -> str | None:
    """The member of ``domains`` that is ``domain`` or a parent of it (``x.vip.163.com`` →
    ``vip.163.com``)."""
    members = set(domains)
    d = domain.lower().rstrip(".")
    while d:
        if d in members:
            return d
        _, _, d = d.partition(".")
    return None


@dataclass(frozen=True)
class ProviderRules:
    """Every family, in file order (operator families first). Matching is pure."""

    families: tuple[Family, ...] = ()

    def family_of(self, domain: str) -> Family | None:
        for fam in self.families:
            if family_key(domain, fam.domains) is not None:
                return fam
        return None

    def get(self, name: str) -> Family | None:
        return next((f for f in self.families if f.name == name), None)

    def match(self, code: int, reply: str, domain: str = "", *,
              notice: bool = False) -> tuple[Family, Rule] | None:
        """The first rule that matches: the recipient's own family first, then every family
        in order (a relay, or a domain hosted at NetEase, passes the provider's wording on).
        With ``notice``, ``reply`` is a bounce notice's text and only ``notice`` rules count."""
        own = self.family_of(domain) if domain else None
        order = ([own] if own is not None else []) + [f for f in self.families if f is not own]
        for fam in order:
            for rule in fam.rules:
                if notice and not rule.notice:
                    continue
                if rule.matches(code, reply):
                    return fam, rule
        return None
