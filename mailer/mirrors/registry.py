"""The mirror registry: which bases each recipient gets, from config plus health, hot-reloadable.

Operators rotate mirrors by editing ``[mirrors]`` in the config file; the daemon re-reads the
file (SIGHUP, or a changed file on its 30 s tick) and hands the new settings to ``apply``, with
no restart. A file that fails validation is logged and ignored by the daemon: the last good set
stays in force, because a typo must not stop a send or hand out a reserve mirror.

What is handed out (``candidates``): active, non-onion mirrors that the health check has not
marked down and that OONI has not shown blocked in one of ``settings.countries``. Onion
addresses are not partitioned: an onion address is reached through Tor, which the censor blocks
as a whole rather than per address, so disclosing it burns nothing. Every footer shows them
(``static_links``).

Fewer candidates than slots: the recipient's chosen mirrors repeat in order, so every slot holds
a working base (an email with an empty link is worse than one with a repeated link). No
candidates at all (everything marked down, which more often means our checker lost its network
than that every mirror died): active mirrors not known to be blocked are used regardless of
health, and with none of those either, the first origin, so links still work over a VPN.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from mailer.clock import Clock
from mailer.config import MirrorSettings, MirrorSite
from mailer.mirrors.health import CheckResult, MirrorChecker
from mailer.mirrors.partition import Partitioner, period_index
from mailer.mirrors.state import MirrorHealth, load_health

__all__ = [
    "NOT_HANDED_OUT",
    "MirrorRegistry",
    "handed_out",
    "spread_over_slots",
]

log = logging.getLogger("newsletter.mirrors")

DEFAULT_REFRESH = timedelta(minutes=1)

# Kinds never put in a reader's mirror slots: onions go to every footer, and an archive host
# ([[archive.targets]]) serves the archive's pages, not the blog's paths.
NOT_HANDED_OUT = frozenset({"onion", "archive"})


def handed_out(settings: MirrorSettings, health: Mapping[str, MirrorHealth]) -> tuple[str, ...]:
    """The partition's candidates: active web mirrors, healthy and not blocked (pure)."""
    out = []
    for site in settings.active:
        if site.kind in NOT_HANDED_OUT:
            continue
        h = health.get(site.url)
        if h is not None and (not h.healthy or h.blocked_in(settings.countries)):
            continue
        out.append(site.url)
    return tuple(out)


def _fallback(settings: MirrorSettings, health: Mapping[str, MirrorHealth]) -> tuple[str, ...]:
    unblocked = tuple(
        s.url for s in settings.active
        if s.kind not in NOT_HANDED_OUT
        and not (health.get(s.url) and health[s.url].blocked_in(settings.countries))
    )
    if unblocked:
        return unblocked
    return settings.origins[:1]


def spread_over_slots(chosen: Sequence[str], slots: int) -> tuple[str, ...]:
    """Exactly ``slots`` bases: the chosen ones in order, repeated when there are too few (pure)."""
    if slots <= 0:
        return ()
    if not chosen:
        return ("",) * slots
    return tuple(chosen[i % len(chosen)] for i in range(slots))


@dataclass(frozen=True)
class _Snapshot:
    """Everything ``for_subscriber`` reads, swapped as one reference so readers never see half."""

    settings: MirrorSettings
    health: Mapping[str, MirrorHealth]
    partitioner: Partitioner
    fallback: Partitioner | None
    built_at: datetime


class MirrorRegistry:
    """Hands each recipient ``slots`` mirror bases for the current rotation period.

    Thread-safe for readers: the delivery loop calls ``for_subscriber`` while the scheduler
    thread reloads; each call sees one consistent snapshot. Health is re-read from
    ``mirror_state`` at most every ``refresh_every`` (and at once after ``refresh()``).
    """

    def __init__(
        self, settings: MirrorSettings, engine: Engine, clock: Clock, secret: bytes, *,
        refresh_every: timedelta = DEFAULT_REFRESH,
    ) -> None:
        if not secret:
            raise ValueError("the mirror partition needs a non-empty secret")
        self._engine = engine
        self._clock = clock
        self._secret = secret
        self._refresh_every = refresh_every
        self._lock = threading.Lock()
        self._settings = settings
        self._snap: _Snapshot | None = None
        self._stale = False
        for warning in settings.warnings:
            log.warning("mirrors: %s", warning)

    # ------------------------------------------------------------------ reading

    @property
    def settings(self) -> MirrorSettings:
        return self._settings

    @property
    def slots(self) -> int:
        """How many ``M0..Mn`` slots a rendering should carry: ``per_recipient``."""
        return self._settings.per_recipient

    @property
    def origins(self) -> tuple[str, ...]:
        return self._settings.origins

    def _build(self, settings: MirrorSettings, now: datetime) -> _Snapshot:
        try:
            health = load_health(self._engine)
        except SQLAlchemyError as exc:
            # A send must not stop because a health read failed: keep what we knew, retry later.
            log.warning("mirrors: cannot read mirror_state (%s); using the last known health",
                        type(exc).__name__)
            health = dict(self._snap.health) if self._snap is not None else {}
        candidates = handed_out(settings, health)
        fallback = None
        if not candidates:
            spare = _fallback(settings, health)
            log.warning("mirrors: no healthy active mirror to hand out; using %s",
                        ", ".join(spare) or "nothing")
            fallback = Partitioner(self._secret, spare, settings.per_recipient)
        return _Snapshot(settings, health, Partitioner(self._secret, candidates,
                                                       settings.per_recipient),
                         fallback, now)

    def _due(self, snap: _Snapshot | None, now: datetime) -> bool:
        return (snap is None or self._stale or snap.settings is not self._settings
                or not snap.built_at <= now < snap.built_at + self._refresh_every)

    def _snapshot(self, now: datetime) -> _Snapshot:
        snap = self._snap
        if self._due(snap, now):
            with self._lock:
                snap = self._snap
                if self._due(snap, now):
                    self._stale = False
                    snap = self._snap = self._build(self._settings, now)
        assert snap is not None
        return snap

    def refresh(self) -> None:
        """Re-read health on the next call (after a check or an OONI import)."""
        self._stale = True

    def candidates(self) -> tuple[str, ...]:
        """The bases currently handed out (active, healthy, not blocked)."""
        return self._snapshot(self._clock()).partitioner.candidates

    def health(self) -> Mapping[str, MirrorHealth]:
        return self._snapshot(self._clock()).health

    def period(self, now: datetime | None = None) -> int:
        return period_index(now or self._clock(), self._settings.period)

    def for_subscriber(self, subscriber_id: int, slots: int | None = None) -> tuple[str, ...]:
        """This recipient's mirror bases for this period: exactly ``slots`` (default ``self.slots``).

        Pass ``slots`` = the variant's ``mirror_slots`` so that a reload changing
        ``per_recipient`` mid-send cannot leave a rendered slot unfilled.
        """
        now = self._clock()
        snap = self._snapshot(now)
        want = snap.settings.per_recipient if slots is None else slots
        period = period_index(now, snap.settings.period)
        part = snap.fallback or snap.partitioner
        chosen = part.choose(period, subscriber_id)
        if want > len(chosen) and len(part.candidates) > len(chosen):
            # More slots than per_recipient (a reload lowered it mid-send): choose afresh.
            chosen = Partitioner(self._secret, part.candidates, want).choose(period, subscriber_id)
        return spread_over_slots(chosen[:want], want)

    def static_links(self, kind: str = "onion") -> tuple[MirrorSite, ...]:
        """Onion mirrors every footer shows (see the module docstring for why they are not split);
        ``kind="archive"``: the healthy, unblocked archive hosts every mail links its page on."""
        snap = self._snapshot(self._clock())
        out = []
        for site in snap.settings.active:
            if site.kind != kind:
                continue
            h = snap.health.get(site.url)
            if h is not None and (not h.healthy or h.blocked_in(snap.settings.countries)):
                continue
            out.append(site)
        return tuple(out)

    async def check(self) -> Sequence[CheckResult]:
        """Run the health check on the current settings, then hand out from the new state.

        The daemon's ``mirrors`` job calls this every ``schedule.mirror_check_every``.
        """
        results = await MirrorChecker(self._settings, self._engine, self._clock).check()
        self.refresh()
        return results

    # ------------------------------------------------------------------ rotation

    def apply(self, settings: MirrorSettings) -> None:
        """Swap in already-validated settings: the daemon hands them over after it re-read the
        config (SIGHUP, or a changed file on its tick); the registry reads no file itself."""
        for warning in settings.warnings:
            log.warning("mirrors: %s", warning)
        old = {s.url: s.status for s in self._settings.sites}
        new = {s.url: s.status for s in settings.sites}
        changes = [f"{u}: {old.get(u, 'new')} -> {st}" for u, st in new.items() if old.get(u) != st]
        changes += [f"{u}: removed" for u in old if u not in new]
        with self._lock:
            self._settings = settings
            self._stale = True
        log.info("mirrors: new settings (%s)", "; ".join(changes) or "no status changes")
