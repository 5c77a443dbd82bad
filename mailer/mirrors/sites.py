"""Which hosts are the blog's origins, and which addresses may be handed out as its mirrors.

One owner for "is this host the origin": the config refuses a mirror on an origin's host, the
importer skips one, and the rewriter adds mirror links after every link to one; all three ask
here, so they cannot disagree (a mirror on ``name.blogspot.hk`` is the blocked origin under
another name, not a mirror). Pure string work; no network, no config loading.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = [
    "BLOGSPOT_COUNTRY_SUFFIXES",
    "host_of",
    "is_origin_host",
    "names_an_origin",
    "origin_aliases",
    "origin_host_set",
    "same_place",
]

# Blogger once redirected readers to a country domain (NAME.blogspot.hk, NAME.blogspot.tw,
# NAME.blogspot.com.ar, ...) and old posts still link there; all are Google's, serve the same
# blog, and are blocked in China like blogspot.com. This is the blogspot part of the Public
# Suffix List.
BLOGSPOT_COUNTRY_SUFFIXES = (
    "ae", "al", "am", "ba", "be", "bg", "bj", "ca", "cf", "ch", "cl", "co.at", "co.id", "co.il",
    "co.ke", "co.nz", "co.uk", "co.za", "com.ar", "com.au", "com.br", "com.by", "com.co",
    "com.cy", "com.ee", "com.eg", "com.es", "com.mt", "com.ng", "com.tr", "com.uy", "cv", "cz",
    "de", "dk", "fi", "fr", "gr", "hk", "hr", "hu", "ie", "in", "is", "it", "jp", "kr", "li",
    "lt", "lu", "md", "mk", "mr", "mx", "my", "nl", "no", "pe", "pt", "qa", "re", "ro", "rs",
    "ru", "se", "sg", "si", "sk", "sn", "td", "tw", "ug", "vn",
)


def origin_aliases(host: str) -> tuple[str, ...]:
    """``host`` and the other names of the same blog: a blogspot.com blog's country domains."""
    name, dot, rest = host.partition(".")
    if dot and rest == "blogspot.com":
        return (host, *(f"{name}.blogspot.{cc}" for cc in BLOGSPOT_COUNTRY_SUFFIXES))
    return (host,)


def host_of(value: str) -> str:
    """The lower-case host of a URL or a bare domain (``example.org/path``); ``""`` if none."""
    if "://" not in value:
        value = "https://" + value.lstrip("/")
    try:
        return (urlsplit(value.strip()).hostname or "").lower()
    except ValueError:  # a bad port or bracketed host
        return ""


def origin_host_set(origins: Iterable[str]) -> frozenset[str]:
    """Every host that serves one of ``origins``, country aliases included."""
    return frozenset(alias for o in origins if (h := host_of(o)) for alias in origin_aliases(h))


def is_origin_host(host: str, origins: Iterable[str]) -> bool:
    """Whether ``host`` is one of the origins' hosts, under any of its names."""
    return host.lower() in origin_host_set(origins)


def names_an_origin(site: str, origins: Iterable[str]) -> bool:
    """Whether a mirror list's entry (a URL or a domain) is about our blog; ``www.`` is ignored,
    since lists name a site either way."""
    bare = host_of(site).removeprefix("www.")
    return bool(bare) and any(bare == h.removeprefix("www.") for h in origin_host_set(origins))


def same_place(a: str, b: str) -> bool:
    """Two bases name the same place: scheme and host compare case-insensitively, paths exactly."""
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.netloc.lower(), pa.path.rstrip("/")) == (pb.netloc.lower(), pb.path.rstrip("/"))
