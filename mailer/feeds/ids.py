"""Stable post ids: the entry's guid, else its normalised link, else a hash of title and content.

A post must be recognised on every later poll, even when the publisher changes the link's
tracking parameters or switches http to https, or it would be sent twice (rss2email's lesson).
"""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["content_hash", "normalise_link", "post_guid"]

# Query parameters that feed proxies and analytics add; they do not name a different page.
_TRACKING_PARAMS = frozenset({
    "fbclid", "gclid", "mc_cid", "mc_eid", "ref", "spm", "from", "isappinstalled",
})


def normalise_link(link: str) -> str:
    """Lower-case scheme and host, https for http, no default port, fragment or tracking params."""
    parts = urlsplit(link.strip())
    scheme = parts.scheme.lower()
    if scheme == "http":
        scheme = "https"
    host = (parts.hostname or "").lower()
    port = parts.port if parts.port not in (None, 80, 443) else None
    netloc = f"{host}:{port}" if port else host
    query = urlencode([
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith("utm_") and k.lower() not in _TRACKING_PARAMS
    ])
    path = parts.path or "/"
    return urlunsplit((scheme, netloc, path, query, ""))


def content_hash(title: str, content_html: str) -> str:
    """SHA-256 of title and content: detects edits, and names a post with neither guid nor link."""
    h = hashlib.sha256()
    h.update(title.encode("utf-8"))
    h.update(b"\x00")
    h.update(content_html.encode("utf-8"))
    return h.hexdigest()


def post_guid(entry_id: str | None, link: str | None, title: str, content_html: str) -> str:
    """The id a post keeps for ever, in the order guid, link, content hash."""
    if entry_id and entry_id.strip():
        return entry_id.strip()
    if link and link.strip() and urlsplit(link.strip()).netloc:
        return "link:" + normalise_link(link)
    return "sha256:" + content_hash(title, content_html)
