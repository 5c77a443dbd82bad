"""The Maildir transport on a real full filesystem, and the sweep of what crashed writers left."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mailer.delivery.classify import NO_REPLY
from mailer.delivery.maildir import STALE_SECONDS, MaildirTransport
from tests.support.fs import fill, tiny_filesystem

BODY = b"From: a@example.org\r\nTo: reader@qq.com\r\nSubject: t\r\n\r\n" + b"x" * 200_000


async def test_a_write_on_a_full_disk_is_deferred_and_leaves_no_partial_file(
        tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "fs", "1m") as fs:
        box = MaildirTransport(fs / "outbox", delivered_to=True)
        fill(fs, leave=64 * 1024)  # the message is 200 KB: part of it gets written
        results = [await box.send("b@example.org", f"reader{i}@qq.com", BODY) for i in range(5)]
        assert {r.code for r in results} == {NO_REPLY}  # deferred, to be retried
        assert all("No space left on device" in r.reply for r in results)
        assert list((fs / "outbox" / "tmp").iterdir()) == []  # no address left in clear
        assert list((fs / "outbox" / "new").iterdir()) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_opening_sweeps_dead_writers_files_and_stale_ones_only(tmp_path: Path) -> None:
    tmp = tmp_path / "outbox" / "tmp"
    tmp.mkdir(parents=True)
    box = MaildirTransport(tmp_path / "outbox")
    host = box._host
    dead = tmp / f"{time.time_ns()}.P{_dead_pid()}Q3.{host}.eml"
    live = tmp / f"{time.time_ns()}.P{os.getpid()}Q4.{host}.eml"  # another transport, writing
    other_host = tmp / f"{time.time_ns()}.P{_dead_pid()}Q5.elsewhere.eml"
    foreign_new = tmp / "1700000000.M1P2.mta"
    foreign_stale = tmp / "1600000000.M1P2.mta"
    for f in (dead, live, other_host, foreign_new, foreign_stale):
        f.write_bytes(b"To: reader@qq.com\r\n")
    old = time.time() - STALE_SECONDS - 60
    os.utime(foreign_stale, (old, old))
    MaildirTransport(tmp_path / "outbox")
    assert sorted(p.name for p in tmp.iterdir()) == sorted(
        p.name for p in (live, other_host, foreign_new))
