"""Import public mirror lists: Bypass Censorship v2 and RSF Collateral Freedom ``sites.json``.

Groups that run mirrors for many sites publish them in these formats. We take only the entries
for our own origins, add them as reserve (the default: a list published on the web is known to
the censor too, so an operator should look before handing them out) or active, print what
changed, and touch the config file only when asked. Parsing and planning are pure; writing
appends ``[[mirrors.sites]]`` tables and validates the result before replacing the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from mailer.config import MirrorSettings, MirrorSite
from mailer.errors import InputError
from mailer.mirrors.configedit import write_validated
from mailer.mirrors.sites import host_of, is_origin_host, names_an_origin, same_place

__all__ = [
    "Found",
    "ImportPlan",
    "append_sites",
    "parse_mirror_list",
    "plan_import",
    "sites_toml",
]

Status = Literal["active", "reserve"]


@dataclass(frozen=True)
class Found:
    """One alternative a list offers: which site it mirrors (a domain or URL), and where."""

    site: str
    url: str
    kind: Literal["https", "onion", "ipfs"] = "https"


@dataclass(frozen=True)
class ImportPlan:
    """What an import would do: mirrors to add, ones we already list, and ones refused (why)."""

    added: tuple[MirrorSite, ...]
    existing: tuple[MirrorSite, ...]
    skipped: tuple[tuple[str, str], ...]
    other_sites: int  # entries for sites that are not ours


def _kind(url: str, hint: str = "") -> Literal["https", "onion", "ipfs"]:
    host = (urlsplit(url).hostname or "").lower()
    if host.endswith(".onion"):
        return "onion"
    if "/ipfs/" in url or hint == "ipfs":
        return "ipfs"
    return "https"


def _bypass_censorship(data: Mapping[str, Any], source: str) -> list[Found]:
    sites = data.get("sites")
    if not isinstance(sites, list):
        raise InputError("a Bypass Censorship v2 list needs a 'sites' array", source=source)
    out = []
    for site in sites:
        if not isinstance(site, dict) or not isinstance(site.get("main_domain"), str):
            continue
        for alt in site.get("available_alternatives") or []:
            if isinstance(alt, dict) and isinstance(alt.get("url"), str):
                hint = str(alt.get("type") or alt.get("proto") or "")
                out.append(Found(site["main_domain"], alt["url"], _kind(alt["url"], hint)))
    return out


def _rsf(data: Mapping[str, Any], source: str) -> list[Found]:
    out = []
    for origin, mirrors in data.items():
        if not isinstance(mirrors, list):
            raise InputError(f"entry {origin!r} is not a list of mirrors; is this RSF sites.json?",
                             source=source)
        for m in mirrors:
            if isinstance(m, str):
                out.append(Found(origin, m, _kind(m)))
    return out


def parse_mirror_list(raw: bytes, source: str = "mirror list") -> list[Found]:
    """Every alternative in a Bypass Censorship v2 or RSF ``sites.json`` file (pure)."""
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"not JSON: {exc}", source=source) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object (Bypass Censorship v2 or RSF sites.json)",
                         source=source)
    if "sites" in data and "version" in data:
        if not str(data["version"]).startswith("2"):
            raise InputError(f"Bypass Censorship format version {data['version']!r}; "
                             "only 2.x is understood", source=source)
        return _bypass_censorship(data, source)
    return _rsf(data, source)


_BARE_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?\.[A-Za-z]{2,}(?:/\S*)?$")


def _clean(url: str) -> str | None:
    url = url.strip()
    if "://" not in url:
        if not _BARE_DOMAIN.match(url):  # "javascript:..." and friends are not domains
            return None
        url = "https://" + url
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname \
            or any(c in url for c in " \t\r\n\"\\"):
        return None
    return url.rstrip("/")


def plan_import(settings: MirrorSettings, found: Sequence[Found], status: Status,
                today: date, note: str = "") -> ImportPlan:
    """Which of ``found`` to add for our origins, with ``status`` and ``added = today`` (pure)."""
    added: list[MirrorSite] = []
    existing: list[MirrorSite] = []
    skipped: list[tuple[str, str]] = []
    other = 0
    for f in found:
        if not names_an_origin(f.site, settings.origins):
            other += 1
            continue
        url = _clean(f.url)
        if url is None:
            skipped.append((f.url, "not an http(s) URL"))
            continue
        if is_origin_host(host_of(url), settings.origins):
            skipped.append((url, "is on an origin's host"))
            continue
        known = next((s for s in settings.sites if same_place(s.url, url)), None)
        if known is not None:
            if known not in existing:
                existing.append(known)
            continue
        if any(same_place(s.url, url) for s in added):
            continue
        added.append(MirrorSite(url=url, status=status, kind=_kind(url, f.kind),
                                added=today, note=note))
    return ImportPlan(tuple(added), tuple(existing), tuple(skipped), other)


def sites_toml(sites: Sequence[MirrorSite]) -> str:
    """``[[mirrors.sites]]`` tables for ``sites`` (pure). JSON strings are valid TOML strings."""
    blocks = []
    for s in sites:
        lines = ["[[mirrors.sites]]", f"url = {json.dumps(s.url)}", f"status = {json.dumps(s.status)}"]
        if s.kind != "https":
            lines.append(f"kind = {json.dumps(s.kind)}")
        if s.added:
            lines.append(f"added = {s.added.isoformat()}")
        if s.note:
            lines.append(f"note = {json.dumps(s.note, ensure_ascii=False)}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def append_sites(config_path: Path, sites: Sequence[MirrorSite],
                 environ: Mapping[str, str]) -> MirrorSettings:
    """Append ``sites`` to the config file, validating first; the file is replaced atomically.

    A running daemon sees the change (file watch) and reloads ``[mirrors]``.
    """
    text = config_path.read_text(encoding="utf-8")
    new = text.rstrip("\n") + "\n\n" + sites_toml(sites)
    return write_validated(config_path, new, environ).mirrors
