"""Properties of the rendezvous partition: stable, minimal moves, full use, no reserves."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.mirrors.partition import EPOCH, Partitioner, choose_mirrors, period_index

SECRET = b"test-secret-0123456789"
MIRRORS = [f"https://m{i}.example.net" for i in range(10)]

ids = st.integers(min_value=-(2**63), max_value=2**63 - 1)
mirror_sets = st.lists(st.from_regex(r"https://[a-z]{1,10}\.example\.net", fullmatch=True),
                       min_size=1, max_size=12, unique=True)


@given(sub=ids, period=st.integers(0, 10_000), cands=mirror_sets, k=st.integers(1, 5))
def test_same_subscriber_same_period_same_set(sub: int, period: int, cands: list[str], k: int) -> None:
    first = choose_mirrors(SECRET, period, sub, cands, k)
    assert first == choose_mirrors(SECRET, period, sub, list(reversed(cands)), k)
    assert first == Partitioner(SECRET, cands, k).choose(period, sub)
    assert len(first) == min(k, len(cands))
    assert len(set(first)) == len(first)
    assert set(first) <= set(cands)


@given(sub=ids, period=st.integers(0, 10_000), cands=mirror_sets, k=st.integers(1, 4),
       data=st.data())
def test_retiring_one_moves_only_its_holders(sub: int, period: int, cands: list[str], k: int,
                                             data: st.DataObject) -> None:
    gone = data.draw(st.sampled_from(cands))
    before = choose_mirrors(SECRET, period, sub, cands, k)
    after = choose_mirrors(SECRET, period, sub, [c for c in cands if c != gone], k)
    if gone not in before:
        assert after == before
    else:
        # Everyone else it held stays, in the same order; one newcomer fills the gap.
        assert [c for c in before if c != gone] == [c for c in after if c in before]
        assert gone not in after


def test_one_retirement_moves_about_one_in_n() -> None:
    k, n, subs = 2, len(MIRRORS), range(8_000)
    part = Partitioner(SECRET, MIRRORS, k)
    smaller = Partitioner(SECRET, MIRRORS[1:], k)
    moved = sum(part.choose(7, s) != smaller.choose(7, s) for s in subs)
    expected = len(subs) * k / n  # the share of subscribers who held the retired mirror
    assert 0.8 * expected < moved < 1.2 * expected


def test_every_active_mirror_is_used_evenly() -> None:
    k = 3
    part = Partitioner(SECRET, MIRRORS, k)
    counts = Counter(m for s in range(10_000) for m in part.choose(3, s))
    assert set(counts) == set(MIRRORS)
    mean = 10_000 * k / len(MIRRORS)
    assert all(0.85 * mean < c < 1.15 * mean for c in counts.values())


@settings(max_examples=50)
@given(sub=ids, period=st.integers(0, 10_000))
def test_reserve_never_appears(sub: int, period: int) -> None:
    # The registry passes only active mirrors; reserve ones are not candidates and never come out.
    active, reserve = MIRRORS[:4], MIRRORS[4:]
    chosen = choose_mirrors(SECRET, period, sub, active, 3)
    assert not set(chosen) & set(reserve)


def test_sets_change_between_periods_and_secrets() -> None:
    part = Partitioner(SECRET, MIRRORS, 2)
    other = Partitioner(b"another secret", MIRRORS, 2)
    subs = range(500)
    assert sum(part.choose(1, s) != part.choose(2, s) for s in subs) > 300
    assert sum(part.choose(1, s) != other.choose(1, s) for s in subs) > 300


def test_period_index_turns_over_on_period_boundaries() -> None:
    week = timedelta(days=7)
    assert period_index(EPOCH, week) == 0
    assert period_index(EPOCH + week - timedelta(microseconds=1), week) == 0
    assert period_index(EPOCH + week, week) == 1
    wednesday_noon = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert wednesday_noon.weekday() == 2
    p = period_index(wednesday_noon, week)
    assert period_index(wednesday_noon + timedelta(days=6, hours=23), week) == p
    assert period_index(wednesday_noon - timedelta(seconds=1), week) == p - 1
    # The default digest (Mon and Thu 08:00 in Beijing = 00:00 UTC) is never on a boundary.
    for day in (23, 26):
        send = datetime(2026, 11, day, 0, 0, tzinfo=UTC)
        assert period_index(send - timedelta(hours=2), week) == period_index(
            send + timedelta(hours=2), week)
    daily = timedelta(days=1)
    assert period_index(wednesday_noon, daily) - period_index(wednesday_noon - daily, daily) == 1


def test_no_candidates_or_zero_k() -> None:
    assert choose_mirrors(SECRET, 1, 1, [], 3) == ()
    assert choose_mirrors(SECRET, 1, 1, MIRRORS, 0) == ()
    assert Partitioner(SECRET, [], 2).choose(1, 1) == ()
