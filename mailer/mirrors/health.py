"""Mirror health: fetch a canary page on each mirror and on the origin, compare, record up/down.

A mirror that answers is not necessarily a mirror that works: an expired CDN shows a parking
page, a cloud bucket a 403 error document, a hijacked domain anything at all. So the checker
compares the mirror's answer with the origin's (the page title, or the whole body when there is
no title) rather than trusting a 200. One failure is not enough to stop handing a mirror out
(networks blink); ``down_after`` consecutive failures are, and one success brings it back.

Fetches go through ``[mirrors] proxy`` (so the check can run from a vantage point like the
readers'), and onions through ``onion_proxy`` (Tor's SOCKS port, ``socks5h://`` so that the
.onion name is resolved by Tor, not by our resolver).
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import httpx
from sqlalchemy import Engine, insert, update

from mailer.clock import Clock
from mailer.config import MirrorSettings, MirrorSite
from mailer.mirrors.state import MirrorHealth, load_health
from mailer.schema import mirror_state

__all__ = [
    "ARCHIVE_CANARY",
    "ARCHIVE_MARKER",
    "Answer",
    "CheckResult",
    "ClientFactory",
    "MirrorChecker",
    "compare",
    "compare_archive",
    "fingerprint",
    "next_state",
    "unchecked_reason",
]

MAX_BODY = 2 * 1024 * 1024
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)

ClientFactory = Callable[[str | None], httpx.AsyncClient]

# An archive host ([[archive.targets]] url) is not a copy of the blog, so there is no origin to
# compare with: its root page must answer and carry the mark every archive page carries
# (mailer/archive/ writes it). A bucket's error page or a parking page does not.
ARCHIVE_CANARY = "/index.html"
ARCHIVE_MARKER = b'<meta name="generator" content="newsletter-archive">'


@dataclass(frozen=True)
class Answer:
    """What one fetch returned: a status and (capped) body, or the error that stopped it."""

    status: int | None = None
    body: bytes = b""
    error: str | None = None


@dataclass(frozen=True)
class CheckResult:
    """One mirror's check: passed or not, why, and its state afterwards."""

    url: str
    ok: bool
    detail: str
    healthy: bool
    consecutive_failures: int


def fingerprint(body: bytes) -> str:
    """The page's title, whitespace collapsed; without a title, a hash of the whole body (pure).

    Mirrors often rewrite absolute links inside the page, so comparing bodies would fail good
    mirrors; the title survives that, and a parking or error page has a different one.
    """
    m = _TITLE.search(body)
    if m:
        title = html.unescape(m.group(1).decode("utf-8", "replace"))
        title = " ".join(title.split())
        if title:
            return "title:" + title
    return "sha256:" + hashlib.sha256(body).hexdigest()


def compare(origin: Answer | None, mirror: Answer) -> tuple[bool, str]:
    """Does the mirror serve the origin's page? ``(ok, reason)`` (pure)."""
    if mirror.error is not None:
        return False, mirror.error
    if mirror.status != 200:
        return False, f"HTTP {mirror.status}"
    if not mirror.body.strip():
        return False, "empty body"
    if origin is None or origin.error is not None or origin.status != 200:
        # We cannot see the origin (blocked from the checker too?): do not punish mirrors for
        # that, judge them by their own answer alone.
        return True, "answered 200 (origin unavailable, content not compared)"
    want, got = fingerprint(origin.body), fingerprint(mirror.body)
    if want != got:
        return False, f"wrong content: {got[:80]!r}, expected {want[:80]!r}"
    return True, "same page as the origin"


def compare_archive(answer: Answer) -> tuple[bool, str]:
    """Does an archive host serve our archive's root page? ``(ok, reason)`` (pure)."""
    ok, detail = compare(None, answer)
    if not ok:
        return ok, detail
    if ARCHIVE_MARKER not in answer.body:
        return False, f"wrong content: not the archive's root page ({fingerprint(answer.body)[:80]!r})"
    return True, "the archive's root page"


def next_state(prev: MirrorHealth | None, ok: bool, down_after: int) -> tuple[bool, int]:
    """``(healthy, consecutive_failures)`` after one check (pure): down after N, up after one."""
    if ok:
        return True, 0
    failures = (prev.consecutive_failures if prev else 0) + 1
    was_healthy = prev.healthy if prev else True
    return (was_healthy and failures < down_after), failures


def unchecked_reason(settings: MirrorSettings, site: MirrorSite) -> str | None:
    """Why a mirror is not checked at all, or None. An onion without ``onion_proxy`` would
    otherwise be fetched directly, fail, and be reported down for want of a Tor proxy."""
    if site.kind == "onion" and not settings.onion_proxy:
        return "not checked: no onion_proxy"
    return None


def _default_client(settings: MirrorSettings) -> ClientFactory:
    def make(proxy: str | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            proxy=proxy, timeout=settings.check_timeout, follow_redirects=True,
            headers={"User-Agent": "newsletter-mirror-check/0.1"},
        )

    return make


async def _fetch(client: httpx.AsyncClient, url: str) -> Answer:
    try:
        async with client.stream("GET", url) as resp:
            body = b""
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY:
                    break
            return Answer(status=resp.status_code, body=body[:MAX_BODY])
    except httpx.HTTPError as exc:
        return Answer(error=f"{type(exc).__name__}: {exc}"[:300])


class MirrorChecker:
    """Checks every active and reserve mirror (reserves too, so a promotion is a known quantity)."""

    def __init__(self, settings: MirrorSettings, engine: Engine, clock: Clock,
                 client_factory: ClientFactory | None = None, concurrency: int = 8) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._client_factory = client_factory or _default_client(settings)
        self._concurrency = concurrency

    def _targets(self) -> list[MirrorSite]:
        return [s for s in self._settings.sites
                if s.status != "retired" and unchecked_reason(self._settings, s) is None]

    async def fetch_all(self) -> tuple[Answer | None, dict[str, Answer]]:
        """The origin's canary answer (None without origins) and every target mirror's."""
        s = self._settings
        clients: dict[str | None, httpx.AsyncClient] = {}

        def client_for(proxy: str | None) -> httpx.AsyncClient:
            if proxy not in clients:
                clients[proxy] = self._client_factory(proxy)
            return clients[proxy]

        gate = asyncio.Semaphore(self._concurrency)

        async def one(url: str, proxy: str | None) -> Answer:
            async with gate:
                return await _fetch(client_for(proxy), url)

        try:
            origin_task = (asyncio.ensure_future(one(s.origins[0] + s.canary_path, s.proxy))
                           if s.origins else None)
            targets = self._targets()
            answers = await asyncio.gather(*(
                one(site.url + (ARCHIVE_CANARY if site.kind == "archive" else s.canary_path),
                    s.onion_proxy if site.kind == "onion" else s.proxy)
                for site in targets
            ))
            origin = await origin_task if origin_task is not None else None
        finally:
            for client in clients.values():
                await client.aclose()
        return origin, {site.url: a for site, a in zip(targets, answers, strict=True)}

    async def check(self) -> list[CheckResult]:
        """Fetch, compare and record. Returns one result per active or reserve mirror."""
        origin, answers = await self.fetch_all()
        return self.record(origin, answers, self._clock())

    def record(self, origin: Answer | None, answers: dict[str, Answer],
               now: datetime) -> list[CheckResult]:
        """Write each mirror's new state to ``mirror_state`` (one transaction)."""
        previous = load_health(self._engine)
        archives = {site.url for site in self._settings.sites if site.kind == "archive"}
        results = []
        with self._engine.begin() as conn:
            for url, answer in answers.items():
                ok, detail = compare_archive(answer) if url in archives else compare(origin, answer)
                prev = previous.get(url)
                healthy, failures = next_state(prev, ok, self._settings.down_after)
                values: dict[str, object] = {
                    "healthy": healthy, "consecutive_failures": failures,
                    "last_check_at": now, "last_error": None if ok else detail,
                }
                if ok:
                    values["last_ok_at"] = now
                if prev is None:
                    conn.execute(insert(mirror_state).values(url=url, blocked_json="{}", **values))
                else:
                    conn.execute(update(mirror_state).where(mirror_state.c.url == url)
                                 .values(**values))
                results.append(CheckResult(url, ok, detail, healthy, failures))
        return results
