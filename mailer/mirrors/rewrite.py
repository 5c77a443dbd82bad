"""Show every link to the blog's origins with its mirror alternatives (pure string work).

Mirrors are path-preserving: ``https://ORIGIN/2014/11/post.html`` is also reachable at
``MIRROR/2014/11/post.html``. The renderer never sees a subscriber, so alternatives are written
with slot placeholders (``@@SLOT_M0@@/2014/11/post.html``) that ``mailer.message`` fills per
recipient. The original link is always kept (some readers use VPNs), links to other sites are
left alone, and nothing is ever shortened (shorteners are blocked and leak click data).
"""

from __future__ import annotations

import html as _html
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from urllib.parse import urljoin, urlsplit

from mailer.mirrors.sites import origin_aliases
from mailer.slots import mirror_slot

__all__ = [
    "MIRROR_LINKS_CLASS",
    "add_mirror_lines",
    "add_mirror_links",
    "mirror_alternatives",
    "origin_path",
]

MIRROR_LINKS_CLASS = "mirror-links"

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_DEFAULT_PORTS = {"http": 80, "https": 443}

# An <a ...> start tag whose attribute values may contain ">", its content, its end tag, and
# (group "done") the span this module adds, so a second pass leaves the link alone.
_ANCHOR = re.compile(
    r"""<a\b(?P<attrs>(?:[^>"']|"[^"]*"|'[^']*')*)>(?P<body>.*?)</a\s*>"""
    rf"""(?P<done><span\s+class=["']{MIRROR_LINKS_CLASS}["'])?""",
    re.IGNORECASE | re.DOTALL,
)
_HREF = re.compile(
    r"""(?:^|\s)href\s*=\s*(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s"'=<>`]+))""",
    re.IGNORECASE,
)
# URLs in a text part: RFC 3986 characters only, so CJK punctuation right after a URL
# ("见https://x/p.html。") is not swallowed.
_TEXT_URL = re.compile(r"(?:https?:)?//[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+", re.IGNORECASE)
_TRAILING = ".,;:!?'"


@lru_cache(maxsize=64)
def _parse_origins(origins: tuple[str, ...]) -> dict[str, tuple[tuple[int | None, str], ...]]:
    """Host -> the (port, path prefix) pairs configured for it, country aliases included."""
    out: dict[str, list[tuple[int | None, str]]] = {}
    for origin in origins:
        parts = urlsplit(origin.strip())
        host = (parts.hostname or "").lower()
        if not host:
            continue
        scheme = parts.scheme.lower() or "https"
        port = parts.port if parts.port not in (None, _DEFAULT_PORTS.get(scheme)) else None
        for name in origin_aliases(host):
            out.setdefault(name, []).append((port, parts.path.rstrip("/")))
    return {host: tuple(pairs) for host, pairs in out.items()}


def origin_path(url: str, origins: Iterable[str], base: str | None = None) -> str | None:
    """Path + query + fragment of ``url`` when it points at one of ``origins``, else None.

    Accepts absolute http(s) URLs, protocol-relative ``//host/...`` and, given ``base``, relative
    ones. Hosts compare case-insensitively, and a blogspot.com origin also matches its country
    domains (``mirrors.sites.origin_aliases``); an origin with a path prefix (``https://h/blog``)
    only matches below that prefix, and the prefix is removed. http and https both match, since
    the blog answers on both and a mirror serves the same path either way.
    """
    url = url.strip()
    if not url:
        return None
    if url.startswith("//"):
        url = "https:" + url
    elif not _SCHEME.match(url):
        if base is None:
            return None
        url = urljoin(base, url)
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:  # a bad port or bracketed host
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    path = parts.path or "/"
    for o_port, prefix in _parse_origins(tuple(origins)).get(host, ()):
        if port != o_port:
            continue
        if prefix:
            if path != prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix):] or "/"
        else:
            rest = path
        if parts.query:
            rest += "?" + parts.query
        if parts.fragment:
            rest += "#" + parts.fragment
        return rest
    return None


def mirror_alternatives(
    url: str, origins: Iterable[str], slots: int, base: str | None = None,
) -> tuple[str, ...]:
    """``("@@SLOT_M0@@/2014/11/post.html", ...)`` for an origin link, ``()`` for other sites."""
    path = origin_path(url, origins, base)
    if path is None:
        return ()
    return tuple(mirror_slot(i) + path for i in range(slots))


def add_mirror_links(
    html: str, origins: Iterable[str], slots: int, label: Callable[[int], str],
    base: str | None = None,
) -> str:
    """After every ``<a href=ORIGIN...>...</a>`` add the recipient's mirror alternatives.

    ``label(i)`` is the plain text (escaped here) of the i-th alternative, in the reader's
    language. Running this twice changes nothing the second time. The input is sanitised HTML
    (nh3), so a regular scan of ``<a>`` elements is enough: anchors cannot nest.
    """
    if slots <= 0:
        return html
    origins = tuple(origins)
    labels = [_html.escape(label(i), quote=True) for i in range(slots)]

    def one(m: re.Match[str]) -> str:
        if m.group("done"):
            return m.group(0)
        href = _HREF.search(m.group("attrs"))
        if href is None:
            return m.group(0)
        raw = href.group("dq") if href.group("dq") is not None else (
            href.group("sq") if href.group("sq") is not None else href.group("bare"))
        alternatives = mirror_alternatives(_html.unescape(raw), origins, slots, base)
        if not alternatives:
            return m.group(0)
        links = " · ".join(
            f'<a href="{_html.escape(alt, quote=True)}">{labels[i]}</a>'
            for i, alt in enumerate(alternatives)
        )
        return f'{m.group(0)}<span class="{MIRROR_LINKS_CLASS}"> ({links})</span>'

    return _ANCHOR.sub(one, html)


def _strip_trailing(url: str) -> str:
    while url and url[-1] in _TRAILING:
        url = url[:-1]
    if url.endswith(")") and url.count("(") < url.count(")"):
        url = url[:-1]
    return url


def add_mirror_lines(
    text: str, origins: Iterable[str], slots: int, label: Callable[[int], str],
    base: str | None = None,
) -> str:
    """The text-part counterpart: under each line with origin URLs, one line per alternative.

    ``    label(i): @@SLOT_Mi@@/path`` lines, indented, so that a reader's client makes each one
    a link of its own. Lines already followed by their alternatives are left as they are.
    """
    if slots <= 0:
        return text
    origins = tuple(origins)
    lines = text.split("\n")
    out: list[str] = []
    for n, line in enumerate(lines):
        out.append(line)
        added: list[str] = []
        for m in _TEXT_URL.finditer(line):
            for i, alt in enumerate(mirror_alternatives(_strip_trailing(m.group(0)), origins,
                                                        slots, base)):
                entry = f"    {label(i)}: {alt}"
                if entry not in added:
                    added.append(entry)
        if added and lines[n + 1:n + 1 + len(added)] != added:
            out.extend(added)
    return "\n".join(out)
