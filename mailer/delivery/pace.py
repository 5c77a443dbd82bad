"""Pure pacing arithmetic: the adaptive slow-down, the hourly and daily cap windows, and when a
domain will be finished. No I/O and no clock of its own: every function takes ``now``.

Why (issue 21): NetEase answers ``421 HL:ICC`` (and Gmail ``4.7.28``) when a sender goes too
fast, and a sender that keeps its pace after that gets its IP listed. So a slow-down reply halves
that domain's rate, the rate stays low for ``quiet`` seconds, then comes back step by step
(additive increase, multiplicative decrease, as TCP does). NetEase also asks bulk senders to
stay under about 3,000 messages an hour and 100,000 a day: ``domain_rates`` caps count whole
UTC hours and days, so a send that would exceed them waits for the next window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = [
    "Pace",
    "PacePolicy",
    "allowance",
    "day_start",
    "finish_estimate",
    "hour_start",
    "reopens_at",
]


@dataclass(frozen=True)
class PacePolicy:
    """How far and how long a slow-down reply slows a domain.

    ``debounce``: replies within this many seconds of a halving are the same signal (the
    messages already in flight on every connection answer at once), so they halve only once.
    """

    floor: float = 1 / 16
    quiet: float = 60.0
    step: float = 30.0
    recover_by: float = 0.125
    debounce: float = 2.0


DEFAULT_POLICY = PacePolicy()


@dataclass(frozen=True)
class Pace:
    """The part of a domain's configured rate it may use: ``low`` from ``halved_at`` on
    (monotonic seconds), rising by ``recover_by`` every ``step`` once ``quiet`` has passed."""

    low: float = 1.0
    halved_at: float | None = None

    def factor(self, now: float, policy: PacePolicy = DEFAULT_POLICY) -> float:
        """The share of the configured rate at ``now``, in [policy.floor, 1]."""
        if self.halved_at is None:
            return 1.0
        since = now - self.halved_at - policy.quiet
        steps = 0 if since < 0 else 1 + math.floor(since / policy.step)
        return min(1.0, self.low + policy.recover_by * steps)

    def slowed(self, now: float, policy: PacePolicy = DEFAULT_POLICY) -> Pace:
        """After a slow-down reply at ``now``: half of the current share (not below the floor),
        unless it halved less than ``debounce`` seconds ago."""
        if self.halved_at is not None and 0 <= now - self.halved_at < policy.debounce:
            return self
        return Pace(max(policy.floor, self.factor(now, policy) / 2), now)


def hour_start(t: datetime) -> datetime:
    """The UTC hour ``t`` falls in: caps count whole clock hours."""
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_start(t: datetime) -> datetime:
    """The UTC day ``t`` falls in."""
    return t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def allowance(want: int, per_hour: int | None, per_day: int | None, used_hour: int,
              used_day: int) -> int:
    """How many of ``want`` messages the caps still allow in this hour and day (>= 0)."""
    n = want
    if per_hour is not None:
        n = min(n, per_hour - used_hour)
    if per_day is not None:
        n = min(n, per_day - used_day)
    return max(0, n)


def reopens_at(now: datetime, per_hour: int | None, per_day: int | None, used_hour: int,
               used_day: int) -> datetime:
    """When a cap that is reached lets messages through again (``now`` if none is reached)."""
    if per_day is not None and used_day >= per_day:
        return day_start(now) + timedelta(days=1)
    if per_hour is not None and used_hour >= per_hour:
        return hour_start(now) + timedelta(hours=1)
    return now


_MAX_WINDOWS = 24 * 400  # past about a year the estimate says "later" (None)


def finish_estimate(remaining: int, now: datetime, *, rate: float = 0.0,
                    per_hour: int | None = None, per_day: int | None = None,
                    used_hour: int = 0, used_day: int = 0,
                    not_before: datetime | None = None) -> datetime | None:
    """When ``remaining`` messages will have gone at ``rate`` per second (0: at once) within
    the caps, given what this hour and day already used; ``not_before``: nothing goes before
    then (a held provider, rows deferred to later). None: more than about a year away."""
    if remaining <= 0:
        return now
    t = now
    if not_before is not None and not_before > t:
        if hour_start(not_before) != hour_start(t):
            used_hour = 0
        if day_start(not_before) != day_start(t):
            used_day = 0
        t = not_before
    for _ in range(_MAX_WINDOWS):
        window_end = hour_start(t) + timedelta(hours=1)
        room = remaining
        if rate > 0:
            room = min(room, math.floor((window_end - t).total_seconds() * rate))
        room = allowance(room, per_hour, per_day, used_hour, used_day)
        if room >= remaining:
            return t + timedelta(seconds=remaining / rate if rate > 0 else 0)
        remaining -= room
        used_hour += room
        used_day += room
        t = reopens_at(t, per_hour, per_day, used_hour, used_day)
        t = max(t, window_end)  # the rate, not a cap, may have filled this hour
        used_hour = 0  # t is the start of an hour now
        if day_start(t) == t:
            used_day = 0
    return None
