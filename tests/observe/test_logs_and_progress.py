"""Logging (routine lines demoted, JSON for shippers) and the progress display of long work."""

from __future__ import annotations

import io
import json
import logging
import subprocess
from pathlib import Path

from mailer.logs import DemoteRoutine, JsonFormatter
from mailer.progress import TaskProgress, format_left
from tests.scheduler.helpers import write_config
from tests.support.cli import ENV, newsletter_cmd


def _record(name: str, level: int, msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, msg, (), None)
    for k, v in extra.items():
        setattr(record, k, v)
    return record


def test_apscheduler_info_becomes_debug_and_its_warnings_stay() -> None:
    quiet, verbose = DemoteRoutine(verbose=False), DemoteRoutine(verbose=True)
    job = _record("apscheduler.executors.default", logging.INFO, 'Job "tick" executed successfully')
    assert not quiet.filter(job)
    assert verbose.filter(job)
    assert job.levelname == "DEBUG"
    missed = _record("apscheduler.executors.default", logging.WARNING, "Run time of job was missed")
    assert quiet.filter(missed)
    assert missed.levelname == "WARNING"
    ours = _record("newsletter.scheduler", logging.INFO, "polled: 3 new post(s)")
    assert quiet.filter(ours)
    assert ours.levelname == "INFO"


def test_json_lines_carry_the_extras() -> None:
    line = JsonFormatter().format(_record("newsletter.delivery", logging.INFO, "edition 7 done",
                                          edition_id=7, sent=1200))
    doc = json.loads(line)
    assert doc["message"] == "edition 7 done"
    assert doc["level"] == "INFO"
    assert doc["edition_id"] == 7
    assert doc["sent"] == 1200
    assert doc["time"].endswith("+00:00")


def test_log_format_json_from_the_real_command(tmp_path: Path) -> None:
    from tests.observe.receiver import free_port

    feed = f"http://127.0.0.1:{free_port()}/feed.xml"  # refused: the poll logs it
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'n.db'}", feeds=(feed,))
    done = subprocess.run(newsletter_cmd(config, "--log-format", "json", "run", "--once"),
                          capture_output=True, text=True, env=ENV, timeout=120, check=False,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    logged = [line for line in done.stderr.splitlines() if line.startswith("{")]
    assert logged, done.stderr
    docs = [json.loads(line) for line in logged]
    assert all({"time", "level", "logger", "message"} <= set(d) for d in docs)
    assert any(d["logger"] == "newsletter.feeds" and "127.0.0.1" in d["message"] for d in docs)


def test_task_progress_prints_at_once_then_every_few_seconds_and_the_end() -> None:
    out = io.StringIO()
    clock = [0.0]
    p = TaskProgress("re-encrypted", stream=out, every=5.0, monotonic=lambda: clock[0],
                     terminal=False)
    p(500, 2000)
    clock[0] = 1.0
    p(1000, 2000)  # too soon
    clock[0] = 6.0
    p(1500, 2000)
    clock[0] = 6.5
    p(2000, 2000)  # the last one always
    lines = out.getvalue().splitlines()
    assert lines[0] == "re-encrypted 500/2000 (25%)"
    assert lines[1] == "re-encrypted 1500/2000 (75%), 250/s, 2s left"
    assert lines[2].startswith("re-encrypted 2000/2000 (100%)")
    assert len(lines) == 3


def test_format_left() -> None:
    assert format_left(3.2) == "3s"
    assert format_left(250) == "4m 10s"
    assert format_left(7500) == "2h 05m"
    assert format_left(float("nan")) == "?"
