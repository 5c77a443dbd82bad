"""The adaptive pace, the cap windows and the finish estimate: pure, so hypothesis drives them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import assume, given
from hypothesis import strategies as st

from mailer.delivery.pace import (
    Pace,
    PacePolicy,
    allowance,
    day_start,
    finish_estimate,
    hour_start,
    reopens_at,
)
from mailer.delivery.ratelimit import Throttle

P = PacePolicy()
times = st.floats(0, 1e6, allow_nan=False)
events = st.lists(st.tuples(st.floats(0, 500), st.booleans()), max_size=40)


def play(steps: list[tuple[float, bool]], start: float = 0.0) -> list[tuple[float, Pace]]:
    """Apply (gap, slow-down?) steps; the pace after each."""
    pace, now, out = Pace(), start, []
    for gap, slow in steps:
        now += gap
        if slow:
            pace = pace.slowed(now, P)
        out.append((now, pace))
    return out


@given(events)
def test_the_share_stays_between_the_floor_and_the_whole_rate(steps: list[tuple[float, bool]]) -> None:
    for now, pace in play(steps):
        assert P.floor <= pace.factor(now, P) <= 1.0


@given(st.floats(0.0, 1e5), st.floats(0.0, 1e5))
def test_a_slow_down_halves_the_share_once_per_burst_of_replies(t: float, later: float) -> None:
    first = Pace().slowed(t, P)
    assert first.factor(t, P) == 0.5
    # The messages in flight answer at once: the same signal, halved once.
    same = first.slowed(t + P.debounce / 2, P)
    assert same.factor(t + P.debounce / 2, P) == 0.5
    # A new slow-down later halves what is left then (never raising it).
    now = t + P.debounce + later
    assume(now - t >= P.debounce)  # float rounding of a large t can eat a tiny ``later``
    again = first.slowed(now, P)
    assert again.factor(now, P) == max(P.floor, first.factor(now, P) / 2)
    assert again.factor(now, P) <= first.factor(now, P)


@given(events, st.lists(st.floats(0, 1000), min_size=1, max_size=20))
def test_without_slow_downs_the_pace_only_recovers(steps: list[tuple[float, bool]],
                                                     gaps: list[float]) -> None:
    played = play(steps)
    now, pace = played[-1] if played else (0.0, Pace())
    last = pace.factor(now, P)
    for gap in gaps:
        now += gap
        f = pace.factor(now, P)
        assert f >= last
        last = f


@given(st.integers(0, 10**5).map(float), st.integers(1, 10))  # whole seconds: no float rounding at the step edges
def test_it_stays_low_for_a_while_then_recovers_step_by_step(t: float, halvings: int) -> None:
    pace = Pace()
    now = t
    for _ in range(halvings):
        pace = pace.slowed(now, P)
        now += P.debounce
    low = pace.factor(now, P)
    assert pace.factor(pace.halved_at + P.quiet - 0.001, P) == low  # type: ignore[operator]
    start = pace.halved_at + P.quiet  # type: ignore[operator]
    assert pace.factor(start, P) == min(1.0, low + P.recover_by)  # the first step
    assert pace.factor(start + P.step, P) == min(1.0, low + 2 * P.recover_by)
    steps = int((1 - P.floor) / P.recover_by) + 1
    assert pace.factor(start + steps * P.step, P) == 1.0  # all the way back


def test_a_throttle_halves_its_rate_and_comes_back() -> None:
    clock = [1000.0]
    limiter = Throttle(10.0, monotonic=lambda: clock[0])
    assert limiter.slow_down()
    assert limiter.rate == 5.0
    assert not limiter.slow_down()  # the same burst of replies
    limiter.set_share(2)  # another sender joined: its part of the halved rate
    assert limiter.rate == 2.5
    clock[0] += P.quiet + 100 * P.step
    limiter.set_share(1)
    limiter._follow(clock[0])
    assert limiter.rate == 10.0
    assert not Throttle(0).slow_down()  # no rate to halve


# ------------------------------------------------------------------ caps

instants = st.datetimes(datetime(2026, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC))
caps = st.one_of(st.none(), st.integers(1, 5000))


@given(st.integers(0, 10000), caps, caps, st.integers(0, 6000), st.integers(0, 200000))
def test_a_grant_never_passes_a_cap(want: int, per_hour: int | None, per_day: int | None,
                                    used_h: int, used_d: int) -> None:
    n = allowance(want, per_hour, per_day, used_h, used_d)
    assert 0 <= n <= want
    if per_hour is not None:
        assert used_h + n <= max(per_hour, used_h)
    if per_day is not None:
        assert used_d + n <= max(per_day, used_d)


@given(instants, st.integers(1, 100), st.integers(1, 1000))
def test_a_reached_cap_reopens_at_the_next_hour_or_day(now: datetime, per_hour: int,
                                                       per_day: int) -> None:
    assert reopens_at(now, per_hour, None, per_hour, 0) == hour_start(now) + timedelta(hours=1)
    assert reopens_at(now, None, per_day, 0, per_day) == day_start(now) + timedelta(days=1)
    assert reopens_at(now, per_hour, per_day, 0, 0) == now


@given(instants, st.integers(0, 5000), st.one_of(st.just(0.0), st.floats(0.1, 50)),
       caps, caps, st.integers(0, 100))
def test_the_estimate_is_what_the_caps_and_the_rate_allow(
        now: datetime, remaining: int, rate: float, per_hour: int | None,
        per_day: int | None, used: int) -> None:
    used_h = min(used, per_hour or used)
    used_d = min(max(used, used_h), per_day or max(used, used_h))
    at = finish_estimate(remaining, now, rate=rate, per_hour=per_hour, per_day=per_day,
                         used_hour=used_h, used_day=used_d)
    if at is None:
        return  # more than a year
    assert at >= now
    if rate > 0:
        assert at - now >= timedelta(seconds=remaining / rate) - timedelta(seconds=1)
    hours = (hour_start(at) - hour_start(now)).total_seconds() / 3600 + 1
    if per_hour is not None and remaining:
        # No hour sends more than its cap: it takes at least this many hours.
        assert hours * per_hour >= remaining + used_h
    days = (day_start(at) - day_start(now)).days + 1
    if per_day is not None and remaining:
        assert days * per_day >= remaining + used_d


def test_an_hourly_cap_spreads_over_the_following_hours() -> None:
    now = datetime(2026, 12, 2, 10, 30, tzinfo=UTC)
    # 3,000 an hour, 100,000 a day (NetEase's advice); 1,000 already gone this hour.
    at = finish_estimate(9000, now, rate=5.0, per_hour=3000, used_hour=1000)
    # 2,000 by 11:00 (at 5/s in half an hour: 9,000 possible), 3,000 in 11-12, 3,000 in 12-13,
    # the last 1,000 from 13:00 at 5/s: 200 s.
    assert at == datetime(2026, 12, 2, 13, 3, 20, tzinfo=UTC)
    daily = finish_estimate(250, now, per_day=100, used_day=100)
    # Today's 100 are gone: 100 tomorrow, 100 the day after, the last 50 the day after that.
    assert daily == datetime(2026, 12, 5, 0, 0, tzinfo=UTC)
    blocked = finish_estimate(10, now, not_before=now + timedelta(hours=24))
    assert blocked == now + timedelta(hours=24)
