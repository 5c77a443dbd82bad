"""Which recipient domains the outbox may keep by name.

The outbox keeps a domain per row for rate-limit lanes and per-provider reports. The name of a
mail provider with millions of users says nothing about who a reader is; the domain of a
university, an NGO or a company can single one out of a copied database. So only public
providers, and domains the config rate-limits by name, are kept; every other domain is stored
as ``OTHER``. The address itself is never in the outbox.
"""

from __future__ import annotations

from collections.abc import Collection

from mailer.delivery.ratelimit import match_domain

__all__ = ["OTHER", "PUBLIC_PROVIDERS", "metric_domain", "outbox_domain"]

OTHER = "other"  # no dot: never a real domain

PUBLIC_PROVIDERS = frozenset({
    # mainland China
    "qq.com", "vip.qq.com", "foxmail.com", "163.com", "vip.163.com", "126.com", "vip.126.com",
    "yeah.net", "188.com", "sina.com", "sina.cn", "vip.sina.com", "sohu.com", "139.com",
    "189.cn", "wo.cn", "aliyun.com", "tom.com",
    # Hong Kong and Taiwan
    "yahoo.com.hk", "yahoo.com.tw", "netvigator.com", "msa.hinet.net", "ms1.hinet.net",
    # worldwide
    "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "live.com", "msn.com",
    "yahoo.com", "icloud.com", "me.com", "mac.com", "proton.me", "protonmail.com", "pm.me",
    "aol.com", "gmx.com", "gmx.net", "yandex.com", "mail.ru", "zoho.com", "tutanota.com",
})


def outbox_domain(domain: str, rate_limited: Collection[str] = ()) -> str:
    """``domain`` if it may be stored by name (see the module docstring), else ``OTHER``."""
    d = domain.lower().rstrip(".")
    if d in PUBLIC_PROVIDERS or match_domain(d, rate_limited) is not None:
        return d[:255]
    return OTHER


def metric_domain(stored: str) -> str:
    """The label for metrics and webhooks: a public provider by name, everything else
    ``OTHER``. Coarser than the outbox, never finer: a domain the config rate-limits by pattern
    (``*.edu.cn``) is kept in the outbox for its lane but may single out a university."""
    d = stored.lower().rstrip(".")
    return d if d in PUBLIC_PROVIDERS else OTHER
