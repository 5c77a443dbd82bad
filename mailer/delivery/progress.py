"""Operator feedback during a send: a rich progress bar on a terminal, log lines otherwise.

Neither ever shows an address: only counts, rates and the edition id.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Protocol, TextIO

from mailer.models import OutboxState
from mailer.progress import format_left

__all__ = ["LogProgress", "NullProgress", "Progress", "RichProgress", "Summarised", "progress_for"]

log = logging.getLogger("newsletter.delivery.progress")


class Summarised(Protocol):
    """What a progress display needs of a finished run (the engine's ``DeliveryReport``);
    a protocol, so this module does not import the engine that imports it."""

    def summary(self) -> str: ...


class Progress(Protocol):
    def start(self, edition_id: int, total: int) -> None: ...

    def update(self, counts: Mapping[OutboxState, int]) -> None: ...

    def finish(self, report: Summarised) -> None: ...


class NullProgress:
    """For tests and workers that report elsewhere."""

    def start(self, edition_id: int, total: int) -> None:
        return None

    def update(self, counts: Mapping[OutboxState, int]) -> None:
        return None

    def finish(self, report: Summarised) -> None:
        return None


def _done(counts: Mapping[OutboxState, int]) -> int:
    return sum(counts.values())


class LogProgress:
    """A plain line every ``every`` seconds: for cron, systemd and piped output.

    ``edition 7: 1,200 of 30,000 sent, 5 deferred, 0 failed (1,205 done); 310/s, 1m 32s left``
    """

    def __init__(self, every: float = 5.0, monotonic: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log) -> None:
        self.every = every
        self._monotonic = monotonic
        self._log = logger
        self._start = 0.0
        self._last = 0.0
        self._total = 0
        self._edition = 0

    def start(self, edition_id: int, total: int) -> None:
        self._start = self._last = self._monotonic()
        self._total = total
        self._edition = edition_id
        self._log.info("edition %d: sending to %d recipients", edition_id, total)

    def update(self, counts: Mapping[OutboxState, int]) -> None:
        now = self._monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        done = _done(counts)
        rate = done / (now - self._start) if now > self._start else 0.0
        eta = (self._total - done) / rate if rate > 0 else float("nan")
        failed = (counts[OutboxState.FAILED] + counts[OutboxState.BOUNCED]
                  + counts[OutboxState.CONTENT_REJECTED])
        self._log.info(
            "edition %d: %s of %s sent, %s deferred, %s failed (%s done); %s/s, %s left",
            self._edition, f"{counts[OutboxState.SENT]:,}", f"{self._total:,}",
            f"{counts[OutboxState.DEFERRED]:,}", f"{failed:,}", f"{done:,}", f"{rate:,.0f}",
            format_left(eta), extra={"edition_id": self._edition, "done": done,
                                     "total": self._total, "rate": round(rate, 1)})

    def finish(self, report: Summarised) -> None:
        return None  # the engine logs the run's summary line itself


class RichProgress:
    """sent/total, rate, ETA, and the deferred and failed counts, on one live line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self._console = Console(file=stream or sys.stderr)
        self._bar = Bar(
            TextColumn("edition {task.fields[edition]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.0f}/s"), TimeRemainingColumn(),
            TextColumn("deferred {task.fields[deferred]} failed {task.fields[failed]}"),
            console=self._console, transient=False,
        )
        self._task: int | None = None
        self._start = 0.0

    def start(self, edition_id: int, total: int) -> None:
        self._start = time.monotonic()
        self._bar.start()
        self._task = self._bar.add_task("send", total=total, edition=edition_id, rate=0.0,
                                        deferred=0, failed=0)

    def update(self, counts: Mapping[OutboxState, int]) -> None:
        if self._task is None:
            return
        done = _done(counts)
        elapsed = time.monotonic() - self._start
        self._bar.update(
            self._task, completed=done, rate=done / elapsed if elapsed > 0 else 0.0,  # type: ignore[arg-type]
            deferred=counts[OutboxState.DEFERRED],
            failed=counts[OutboxState.FAILED] + counts[OutboxState.BOUNCED]
            + counts[OutboxState.CONTENT_REJECTED],
        )

    def finish(self, report: Summarised) -> None:
        self._bar.stop()
        self._console.print(report.summary())


def progress_for(stream: TextIO | None = None) -> Progress:
    """A bar when ``stream`` (stderr by default) is a terminal, plain log lines otherwise."""
    stream = stream or sys.stderr
    if stream.isatty():
        return RichProgress(stream)
    return LogProgress()
