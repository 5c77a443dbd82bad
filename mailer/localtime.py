"""Send times as editors write and read them: a wall time in the configured zone, and back.

Pure; the CLI's ``editions schedule`` and the admin's date-time field both read times here, so
a DST gap or overlap is refused the same way through either door.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailer.errors import InputError

__all__ = ["format_when", "parse_local_time"]

_TIME = re.compile(r"^\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{1,2}):(\d{2})\s*$")


def parse_local_time(text: str, timezone: str) -> datetime:
    """``"2026-11-24 08:00"`` read in ``timezone`` → aware UTC.

    A wall time the DST change skips (02:30 on a spring-forward night) or repeats (01:30 on a
    fall-back night) is refused: guessing would send an hour early or late.
    """
    m = _TIME.match(text)
    if not m:
        raise InputError(f"--at {text!r}: write the time as 'YYYY-MM-DD HH:MM'")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(f"--tz {timezone!r}: unknown time zone") from None
    try:
        y, mo, d, h, mi = (int(g) for g in m.groups())
        naive = datetime(y, mo, d, h, mi)
    except ValueError as exc:
        raise InputError(f"--at {text!r}: {exc}") from None
    first, second = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() != second.utcoffset():
        back = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
        if back != naive:
            raise InputError(f"--at {text!r} does not exist in {timezone}: the clocks skip it "
                             f"(daylight saving time begins)")
        raise InputError(f"--at {text!r} happens twice in {timezone} (daylight saving time "
                         f"ends); give the time in UTC with --tz UTC")
    return first.astimezone(UTC)


def format_when(at: datetime | None, timezone: str) -> str:
    """``2026-11-24 08:00 Asia/Shanghai (00:00 UTC)``, or ``-``."""
    if at is None:
        return "-"
    local = at.astimezone(ZoneInfo(timezone))
    utc = at.astimezone(UTC)
    same_day = local.date() == utc.date()
    return (f"{local:%Y-%m-%d %H:%M} {timezone} "
            f"({utc:%H:%M} UTC)" if same_day else
            f"{local:%Y-%m-%d %H:%M} {timezone} ({utc:%Y-%m-%d %H:%M} UTC)")
