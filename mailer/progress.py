"""Progress of long work (import, key rotation, reindex, archive publish) for the operator.

On a terminal, a rich bar with the count, the rate and the time left; otherwise (cron,
systemd, a pipe) a plain line at once, then at most one every few seconds, and the last one:
enough to see that it moves without drowning a log. A ``TaskProgress`` is the
``progress(done, total)`` callback the stages already take, so a command only makes one:

    with task_progress("re-encrypted") as progress:
        rotate(store, progress=progress)

The send has its own display (``mailer.delivery.progress``), which knows about deferrals.
Neither ever shows an address: counts, rates and times only.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

__all__ = ["TaskProgress", "format_left", "task_progress"]


def format_left(seconds: float) -> str:
    """``3s``, ``4m 10s``, ``2h 5m``: time left for people (``?`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


class TaskProgress:
    """``progress(done, total)``: a bar on a terminal, throttled lines elsewhere."""

    def __init__(self, label: str, *, stream: TextIO | None = None, every: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 terminal: bool | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.every = every
        self._monotonic = monotonic
        self._terminal = self.stream.isatty() if terminal is None else terminal
        self._start: float | None = None
        self._last: float | None = None
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        now = self._monotonic()
        if self._start is None:
            self._start = now
        if self._terminal:
            self._draw(done, total)
            return
        final = total > 0 and done >= total
        if self._last is not None and not final and now - self._last < self.every:
            return
        self._last = now
        self.stream.write(self.line(done, total, now - self._start) + "\n")
        self.stream.flush()

    def line(self, done: int, total: int, elapsed: float) -> str:
        """``re-encrypted 500/2000 (25%), 812/s, 2s left``"""
        text = f"{self.label} {done}/{total}"
        if total > 0:
            text += f" ({100 * done // total}%)"
        if elapsed > 0 and done > 0:
            rate = done / elapsed
            text += f", {rate:,.0f}/s"
            if total > done:
                text += f", {format_left((total - done) / rate)} left"
        return text

    def _draw(self, done: int, total: int) -> None:
        if self._bar is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(),
                                 TaskProgressColumn(), TimeRemainingColumn(),
                                 console=Console(file=self.stream), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total or None)
        self._bar.update(self._task, completed=done, total=total or None)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> TaskProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def task_progress(label: str, *, stream: TextIO | None = None, every: float = 5.0) -> TaskProgress:
    """The display for ``label`` on ``stream`` (stderr by default)."""
    return TaskProgress(label, stream=stream, every=every)
