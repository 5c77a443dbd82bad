"""The daemon's INFO log over a three-minute run says what happened, not that jobs ran.

Two real daemons side by side for the same three minutes, one as an operator runs it and one
with ``-v --log-format json``: the verbose one shows that APScheduler's job lines were there
(at DEBUG, several a minute), the plain one that none of them reached its INFO log.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.scheduler.helpers import write_config

pytestmark = pytest.mark.slow

NEWSLETTER = str(Path(sys.executable).parent / "newsletter")
RUN_FOR = 180.0  # the three minutes, in full
ROUTINE = ("Running job", "executed successfully", "Added job", "Adding job", "Removed job",
           "Scheduler started", "apscheduler")


@pytest.mark.timeout(400)
def test_three_minutes_of_info_log_have_no_routine_job_lines(tmp_path: Path) -> None:
    runs = {}
    for name, args in (("plain", ()), ("verbose", ("-v", "--log-format", "json"))):
        folder = tmp_path / name
        folder.mkdir()
        # Short intervals: the tick (30 s) and poll/retry every 30 s make ~18 job runs.
        config = write_config(folder, f"sqlite:///{folder / 'n.db'}", digest="0 8 1 1 *",
                              extra="")
        text = config.read_text().replace('poll_every = "15m"',
                                          'poll_every = "30s"\nretry_every = "30s"')
        config.write_text(text)
        log = (folder / "daemon.log").open("wb")
        proc = subprocess.Popen([NEWSLETTER, *args, "--config", str(config), "run"],
                                stdout=log, stderr=subprocess.STDOUT)
        runs[name] = (proc, log, folder / "daemon.log")
    try:
        time.sleep(RUN_FOR)
    finally:
        for proc, log, _ in runs.values():
            proc.terminate()
            proc.wait(60)
            log.close()
    for proc, _, _ in runs.values():
        assert proc.returncode == 0

    plain = runs["plain"][2].read_text(encoding="utf-8")
    lines = plain.splitlines()
    assert not [line for line in lines if any(r in line for r in ROUTINE)], plain
    assert sum("polled: 0 new post(s)" in line for line in lines) >= 5, plain  # it worked
    assert len(lines) < 60, plain  # a story, not a stream

    records = [json.loads(line) for line in
               runs["verbose"][2].read_text(encoding="utf-8").splitlines() if line.startswith("{")]
    routine = [r for r in records if r["logger"].startswith("apscheduler")]
    assert sum("executed successfully" in r["message"] for r in routine) >= 12  # ~4 a minute
    assert {r["level"] for r in routine} == {"DEBUG"}  # demoted, not lost
    assert any(r["level"] == "INFO" and r["message"].startswith("polled:") for r in records)
