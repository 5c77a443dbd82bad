"""The soft-bounce score: pure, after Mailman's ``bounce_score_threshold``.

Each soft bounce adds 1; the score halves every ``half_life`` since the last one, counted in
whole days (three bounces on one day make exactly 3), so a mailbox that was full for a day is
forgiven and one that fails every edition is not. One soft bounce
never suppresses: the threshold must be above 1 to be reached by more than one (config allows
any positive value; the default is 3, like Mailchimp's "several soft bounces").
"""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = ["add_soft_bounce", "decayed"]


def decayed(score: float, since: datetime, now: datetime, half_life: timedelta) -> float:
    """``score`` as it stands at ``now``, last raised at ``since`` (never grows with time)."""
    days = max((now - since) // timedelta(days=1), 0)
    factor: float = 0.5 ** (days * 86400 / max(half_life.total_seconds(), 1.0))
    return score * factor


def add_soft_bounce(score: float, since: datetime | None, now: datetime,
                    half_life: timedelta) -> float:
    """The score after one more soft bounce at ``now``."""
    return 1.0 + (decayed(score, since, now, half_life) if since is not None else 0.0)
