"""Read OONI web_connectivity measurements and mark the mirrors they show blocked.

The operator downloads measurements (OONI Explorer or the API, JSON Lines: one measurement per
line, possibly gzipped) and runs ``newsletter mirrors ooni FILE``. Every line is read: a
measurement file holds many URLs and many probes, and an early reader that looked only at the
first line missed most of them.

A mirror counts as blocked in a country when its most recent measurement there reports a
``blocking`` type (dns, tcp_ip, http-failure, http-diff). DNS and TCP blocking hit a whole host,
so they match any path on the mirror's host; http-level blocking must match the mirror's own
path prefix (one bucket on a shared cloud host may be blocked while another is not). Marks are
never removed by a measurement: a burned mirror stays out of circulation until an operator
decides (``newsletter mirrors unblock``).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from sqlalchemy import Engine, insert, update

from mailer.config import MirrorSite
from mailer.mirrors.state import load_health
from mailer.schema import mirror_state

__all__ = [
    "Measurement",
    "OONIReport",
    "blocked_mirrors",
    "clear_blocked",
    "mark_blocked",
    "parse_measurements",
    "read_measurements",
]

HOST_WIDE = frozenset({"dns", "tcp_ip"})


@dataclass(frozen=True)
class Measurement:
    """One web_connectivity measurement, reduced to what the mirror decision needs."""

    url: str
    country: str
    start_time: datetime
    blocking: str | None  # None: accessible or undetermined

    @property
    def blocked(self) -> bool:
        return self.blocking is not None


@dataclass(frozen=True)
class OONIReport:
    """What a file said: measurements read, lines skipped (with why), and per mirror the verdict."""

    measurements: int
    skipped: tuple[tuple[int, str], ...]
    measured: Mapping[str, int]  # mirror -> measurements in the country
    blocked: Mapping[str, Measurement]  # mirror -> the latest, blocking, measurement


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def parse_measurements(lines: Iterable[str]) -> tuple[list[Measurement], list[tuple[int, str]]]:
    """Every web_connectivity measurement in ``lines``, and (line number, reason) for the rest."""
    out: list[Measurement] = []
    skipped: list[tuple[int, str]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            skipped.append((n, "not JSON"))
            continue
        if not isinstance(data, dict):
            skipped.append((n, "not a measurement object"))
            continue
        if data.get("test_name", "web_connectivity") != "web_connectivity":
            skipped.append((n, f"test {data.get('test_name')!r}, not web_connectivity"))
            continue
        keys = data.get("test_keys")
        url, cc, when = data.get("input"), data.get("probe_cc"), _time(
            data.get("measurement_start_time"))
        if not isinstance(url, str) or not isinstance(cc, str) or when is None \
                or not isinstance(keys, dict):
            skipped.append((n, "missing input, probe_cc, measurement_start_time or test_keys"))
            continue
        blocking = keys.get("blocking")
        out.append(Measurement(url=url, country=cc.upper(), start_time=when,
                               blocking=blocking if isinstance(blocking, str) and blocking
                               else None))
    return out, skipped


def read_measurements(data: bytes) -> tuple[list[Measurement], list[tuple[int, str]]]:
    """``parse_measurements`` on a file's bytes, gunzipped if needed."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return parse_measurements(data.decode("utf-8", "replace").splitlines())


def _matches(site: MirrorSite, m: Measurement) -> bool:
    try:
        mp, sp = urlsplit(m.url), urlsplit(site.url)
        if (mp.hostname or "").lower() != (sp.hostname or "").lower():
            return False
    except ValueError:
        return False
    if m.blocking in HOST_WIDE:
        return True
    prefix = sp.path.rstrip("/")
    return not prefix or mp.path == prefix or mp.path.startswith(prefix + "/")


def blocked_mirrors(measurements: Sequence[Measurement], sites: Sequence[MirrorSite],
                    country: str, skipped: Sequence[tuple[int, str]] = ()) -> OONIReport:
    """Which ``sites`` the measurements show blocked in ``country`` (pure; latest one wins)."""
    country = country.upper()
    measured: dict[str, int] = {}
    latest: dict[str, Measurement] = {}
    for m in measurements:
        if m.country != country:
            continue
        for site in sites:
            if not _matches(site, m):
                continue
            measured[site.url] = measured.get(site.url, 0) + 1
            if site.url not in latest or m.start_time >= latest[site.url].start_time:
                latest[site.url] = m
    blocked = {url: m for url, m in latest.items() if m.blocked}
    return OONIReport(measurements=len(measurements), skipped=tuple(skipped), measured=measured, blocked=blocked)


def mark_blocked(engine: Engine, blocked: Mapping[str, Measurement], country: str) -> list[str]:
    """Record ``{country: measurement time}`` in ``mirror_state``; return the newly marked URLs."""
    country = country.upper()
    health = load_health(engine)
    newly: list[str] = []
    with engine.begin() as conn:
        for url, m in sorted(blocked.items()):
            prev = health.get(url)
            marks = dict(prev.blocked or {}) if prev else {}
            if country not in marks:
                newly.append(url)
            marks[country] = m.start_time.isoformat()
            if prev is None:
                conn.execute(insert(mirror_state).values(
                    url=url, healthy=True, consecutive_failures=0, blocked_json=json.dumps(marks)))
            else:
                conn.execute(update(mirror_state).where(mirror_state.c.url == url)
                             .values(blocked_json=json.dumps(marks, sort_keys=True)))
    return newly


def clear_blocked(engine: Engine, url: str, country: str) -> bool:
    """The operator's decision that a mirror works again in ``country``; True if it was marked."""
    country = country.upper()
    prev = load_health(engine).get(url)
    if prev is None or country not in (prev.blocked or {}):
        return False
    marks = {cc: t for cc, t in (prev.blocked or {}).items() if cc != country}
    with engine.begin() as conn:
        conn.execute(update(mirror_state).where(mirror_state.c.url == url)
                     .values(blocked_json=json.dumps(marks, sort_keys=True)))
    return True
