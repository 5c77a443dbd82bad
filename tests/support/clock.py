"""A clock tests move by hand, passed through the ``Clock`` seam (``Callable[[], datetime]``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["DEFAULT_START", "ManualClock"]

DEFAULT_START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class ManualClock:
    """Time stands still until a test assigns ``now`` or calls ``advance``."""

    def __init__(self, now: datetime = DEFAULT_START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta | None = None, **kw: float) -> None:
        """``advance(timedelta(minutes=5))`` or ``advance(minutes=5)``."""
        self.now += (delta or timedelta()) + timedelta(**kw)
