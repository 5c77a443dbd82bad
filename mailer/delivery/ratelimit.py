"""Rate limits: per relay (``rate`` msgs/s) and per destination domain (``domain_rates``).

Mainland providers (qq.com, 163.com, 126.com) throttle and then block bulk senders that burst,
so the limiter paces evenly instead of allowing a bucket's worth at once. The arithmetic is a
pure ``Pacer`` (tested with hypothesis); ``Throttle`` only adds the sleeping, and follows the
adaptive ``Pace`` (``mailer.delivery.pace``): a slow-down reply halves a domain's rate for a while.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping

from mailer.delivery.pace import DEFAULT_POLICY, Pace, PacePolicy

__all__ = ["DomainLimits", "Pacer", "Throttle", "match_domain"]


class Pacer:
    """Hands out send times ``1/rate`` apart; ``burst`` slots may be taken without waiting.

    ``reserve(now)`` books the next slot and returns how long to wait for it. Booking (rather
    than checking a bucket after a sleep) keeps the long-run rate exact even with many waiters.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.interval = 1.0 / rate
        self.burst = burst
        self._next: float | None = None

    def reserve(self, now: float) -> float:
        earliest = now - (self.burst - 1) * self.interval
        slot = earliest if self._next is None else max(self._next, earliest)
        self._next = slot + self.interval
        return max(0.0, slot - now)


class Throttle:
    """An awaitable ``Pacer``; a rate of 0 (or less) means unlimited.

    ``configured`` is the operator's rate for the whole deployment; ``rate`` is this process's
    part of it, ``configured / share`` when ``share`` processes send at once, times the adaptive
    ``factor`` (1 until a slow-down reply, see :meth:`slow_down`).
    """

    def __init__(self, rate: float, *, burst: int = 1,
                 monotonic: Callable[[], float] = time.monotonic,
                 policy: PacePolicy = DEFAULT_POLICY) -> None:
        self.configured = rate
        self.rate = rate
        self.share = 1
        self.factor = 1.0
        self.pace = Pace()
        self.policy = policy
        self._pacer = Pacer(rate, burst) if rate > 0 else None
        self._monotonic = monotonic

    def set_share(self, share: int) -> None:
        """Pace at ``configured / share`` from the next slot on (slots already booked stand)."""
        self.share = max(1, share)
        self._set_rate()

    def _set_rate(self) -> None:
        if self._pacer is not None:
            self.rate = self.configured / self.share * self.factor
            self._pacer.interval = 1.0 / self.rate

    def slow_down(self) -> bool:
        """A slow-down reply: halve the pace (once per burst of replies). True if it halved."""
        if self._pacer is None:
            return False  # no rate to halve: the row is only deferred
        before = self.pace
        self.pace = self.pace.slowed(self._monotonic(), self.policy)
        self._follow(self._monotonic())
        return self.pace is not before

    def _follow(self, now: float) -> None:
        factor = self.pace.factor(now, self.policy)
        if factor != self.factor:
            self.factor = factor
            self._set_rate()

    async def wait(self) -> None:
        if self._pacer is None:
            return
        now = self._monotonic()
        self._follow(now)
        delay = self._pacer.reserve(now)
        if delay > 0:
            await asyncio.sleep(delay)


def match_domain(domain: str, configured: Collection[str]) -> str | None:
    """The configured key that governs ``domain``: itself, or a parent (``vip.qq.com`` → qq.com)."""
    d = domain.lower().rstrip(".")
    while d:
        if d in configured:
            return d
        _, _, d = d.partition(".")
    return None


class DomainLimits:
    """One limiter per configured destination domain; other domains are not limited here."""

    def __init__(self, rates: Mapping[str, float], *,
                 monotonic: Callable[[], float] = time.monotonic,
                 capped: Collection[str] = ()) -> None:
        """``capped``: domains with an hourly or daily cap; each gets a lane (unpaced if it has
        no rate) so that its sends can be counted against the cap."""
        self._limiters = {d.lower(): Throttle(r, monotonic=monotonic)
                          for d, r in rates.items() if r > 0}
        for d in capped:
            self._limiters.setdefault(d.lower(), Throttle(0, monotonic=monotonic))

    def __bool__(self) -> bool:
        return bool(self._limiters)

    def key_for(self, domain: str) -> str | None:
        """The configured domain that limits ``domain``, if any."""
        return match_domain(domain, self._limiters)

    def limiter(self, key: str) -> Throttle:
        return self._limiters[key]

    def set_share(self, share: int) -> None:
        """Destination limits hold for the whole deployment: each of ``share`` senders takes
        its part."""
        for limiter in self._limiters.values():
            limiter.set_share(share)

    async def wait(self, domain: str) -> None:
        key = match_domain(domain, self._limiters)
        if key is not None:
            await self._limiters[key].wait()
