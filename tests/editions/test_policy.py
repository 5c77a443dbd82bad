"""Pure helpers: the send policy, local-time parsing, crontab weekdays and DST-correct digests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.cli.editions import format_when, parse_local_time, parse_post_list
from mailer.config import load_config
from mailer.editions.notify import ReportKind, compose_report, rejection_rate
from mailer.editions.store import Decision, EditionInfo, decide
from mailer.editions.testsend import TEST_HEADER, mark_as_test
from mailer.errors import ConfigError, InputError
from mailer.models import EditionState as S
from mailer.pipeline.policy import describe_time, short_delta
from mailer.timetable import _crontab_dow, crontab_trigger, next_fire_times
from tests.scheduler.helpers import write_config

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
GRACE = timedelta(hours=1)


def info(state: S, at: datetime | None, approved: bool = False) -> EditionInfo:
    return EditionInfo(id=1, kind="digest", state=state, scheduled_at=at,
                       approved_at=T0 - timedelta(days=1) if approved else None,
                       created_at=T0, updated_at=T0, started_at=None, finished_at=None,
                       reason=None, total=None, post_ids=(1, 2), excluded_ids=(), notes={})


# ----------------------------------------------------------------------------- decide


@given(late=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
       approval=st.booleans(), approved=st.booleans())
def test_policy_never_sends_late_or_unapproved(late: timedelta, approval: bool,
                                               approved: bool) -> None:
    state = S.APPROVED if approved else S.SCHEDULED
    d = decide(info(state, T0, approved), T0 + late, grace=GRACE, require_approval=approval)
    if approval and not approved:
        assert d is Decision.HOLD
    elif late > GRACE:
        assert d is Decision.MISS
    else:
        assert d is Decision.SEND


@given(early=st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=30)))
def test_policy_waits_until_its_time(early: timedelta) -> None:
    assert decide(info(S.APPROVED, T0, True), T0 - early, grace=GRACE,
                  require_approval=True) is Decision.WAIT


@pytest.mark.parametrize("state", [S.DRAFT, S.HELD, S.SENDING, S.PAUSED, S.SENT, S.CANCELLED,
                                   S.MISSED])
def test_policy_leaves_other_states_alone(state: S) -> None:
    assert decide(info(state, T0, True), T0 + timedelta(minutes=1), grace=GRACE,
                  require_approval=False) is Decision.WAIT


def test_policy_grace_boundary_is_inclusive() -> None:
    edition = info(S.SCHEDULED, T0)
    assert decide(edition, T0 + GRACE, grace=GRACE, require_approval=False) is Decision.SEND
    assert decide(edition, T0 + GRACE + timedelta(seconds=1), grace=GRACE,
                  require_approval=False) is Decision.MISS


def test_approved_without_a_time_goes_now() -> None:
    assert decide(info(S.APPROVED, None, True), T0, grace=GRACE,
                  require_approval=True) is Decision.SEND


# ----------------------------------------------------------------------------- times


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)),
       st.sampled_from(["Asia/Shanghai", "America/New_York", "Europe/Berlin", "UTC"]))
def test_parse_local_time_round_trips_or_refuses(naive: datetime, tz: str) -> None:
    naive = naive.replace(second=0, microsecond=0)
    text = naive.strftime("%Y-%m-%d %H:%M")
    zone = ZoneInfo(tz)
    if naive.replace(tzinfo=zone, fold=0).utcoffset() != naive.replace(tzinfo=zone,
                                                                       fold=1).utcoffset():
        with pytest.raises(InputError, match="daylight saving"):  # gap or repeat: refused
            parse_local_time(text, tz)
        return
    at = parse_local_time(text, tz)
    assert at.tzinfo is UTC
    assert at.astimezone(ZoneInfo(tz)).replace(tzinfo=None) == naive


def test_parse_local_time_dst_gap_and_repeat() -> None:
    with pytest.raises(InputError, match="does not exist in America/New_York"):
        parse_local_time("2026-03-08 02:30", "America/New_York")
    with pytest.raises(InputError, match="happens twice"):
        parse_local_time("2026-11-01 01:30", "America/New_York")
    assert parse_local_time("2026-11-24 08:00", "Asia/Shanghai") == datetime(
        2026, 11, 24, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["tomorrow", "2026-11-24", "2026-13-01 08:00",
                                  "2026-11-24 25:00"])
def test_parse_local_time_refuses_nonsense(text: str) -> None:
    with pytest.raises(InputError, match="--at"):
        parse_local_time(text, "UTC")


def test_parse_local_time_unknown_zone() -> None:
    with pytest.raises(InputError, match="unknown time zone"):
        parse_local_time("2026-11-24 08:00", "Mars/Olympus")


def test_format_when_shows_both_zones() -> None:
    at = datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
    assert format_when(at, "Asia/Shanghai") == "2026-11-24 08:00 Asia/Shanghai (00:00 UTC)"
    assert format_when(at, "America/New_York") == (
        "2026-11-23 19:00 America/New_York (2026-11-24 00:00 UTC)")
    assert describe_time(at, "Asia/Shanghai").endswith("= 2026-11-24 00:00 UTC")


def test_post_list() -> None:
    assert parse_post_list("1, 2,5") == [1, 2, 5]
    with pytest.raises(InputError, match="--posts"):
        parse_post_list("1,x")


def test_short_delta() -> None:
    assert short_delta(timedelta(days=2, hours=3, minutes=5)) == "2d 3h"
    assert short_delta(timedelta(minutes=45)) == "45m"
    assert short_delta(timedelta(seconds=20)) == "20s"


# ----------------------------------------------------------------------------- cron and DST


@pytest.mark.parametrize(("crontab", "names"), [
    ("1-5", "mon-fri"), ("0,6", "sun,sat"), ("7", "sun"), ("mon,thu", "mon,thu"),
    ("*/2", "*/2"), ("1-5/2", "mon-fri/2"),
])
def test_crontab_weekdays_count_from_sunday(crontab: str, names: str) -> None:
    assert _crontab_dow(crontab) == names


def test_crontab_1_5_is_monday_to_friday() -> None:
    # 2026-11-23 is a Monday; APScheduler would read a bare "1-5" as Tuesday to Saturday.
    times = next_fire_times("0 8 * * 1-5", "UTC", datetime(2026, 11, 22, 9, tzinfo=UTC), 6)
    assert [t.strftime("%a") for t in times] == ["Mon", "Tue", "Wed", "Thu", "Fri", "Mon"]


@pytest.mark.parametrize(("tz", "before", "after"), [
    # Spring forward: 08:00 local is 13:00 UTC in EST and 12:00 UTC in EDT.
    ("America/New_York", datetime(2026, 3, 7, 13, tzinfo=UTC), datetime(2026, 3, 8, 12, tzinfo=UTC)),
    # Autumn back in Berlin: 08:00 local is 06:00 UTC in CEST and 07:00 UTC in CET.
    ("Europe/Berlin", datetime(2026, 10, 24, 6, tzinfo=UTC), datetime(2026, 10, 25, 7, tzinfo=UTC)),
])
def test_digest_stays_at_local_time_across_dst(tz: str, before: datetime,
                                               after: datetime) -> None:
    times = next_fire_times("0 8 * * *", tz, before - timedelta(hours=1), 2)
    assert times == [before, after]
    assert all(t.astimezone(ZoneInfo(tz)).hour == 8 for t in times)


def test_digest_in_a_skipped_hour_fires_once_that_day() -> None:
    """02:30 does not exist on 2026-03-08 in New York: the digest still goes that day, once."""
    times = next_fire_times("30 2 * * *", "America/New_York",
                            datetime(2026, 3, 7, 12, tzinfo=UTC), 3)
    days = [t.astimezone(ZoneInfo("America/New_York")).date().isoformat() for t in times]
    assert len(set(days)) == 3
    assert days[0] == "2026-03-08"


def test_bad_cron_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"schedule\.digest"):
        crontab_trigger("61 8 * * *", "UTC")


# ----------------------------------------------------------------------------- reports


def test_rejection_rate_counts_only_answered() -> None:
    assert rejection_rate({"sent": 90, "content_rejected": 10, "queued": 100}) == 0.1
    assert rejection_rate({}) == 0.0


def test_mark_as_test_keeps_the_encoded_subject() -> None:
    msg = (b"From: a@example.org\r\nSubject: =?utf-8?b?5YWs?=\r\n\r\nSubject: body line\r\n")
    out = mark_as_test(msg)
    assert out.startswith(TEST_HEADER + b"\r\n")
    assert b"Subject: [TEST] =?utf-8?b?5YWs?=\r\n" in out
    assert out.endswith(b"\r\n\r\nSubject: body line\r\n")  # the body is not touched


def test_report_for_missed_edition_tells_how_to_act(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path}/x.db",
                                   timezone="Asia/Shanghai"))
    edition = info(S.MISSED, datetime(2026, 11, 24, 0, 0, tzinfo=UTC))
    msg = compose_report(ReportKind.MISSED, edition, config=cfg, now=T0,
                         post_titles=["公民权利"])
    assert "MISSED" in str(msg["Subject"])
    body = msg.get_content()
    assert "2026-11-24 08:00 Asia/Shanghai" in body
    assert "newsletter editions schedule 1" in body
    assert "公民权利" in body
    assert msg["To"] == "eds@example.net"
