"""``newsletter send``, ``editions report`` and ``relay unblock`` as an operator runs them: an
hourly cap spreads a send over the hours, a blocklisting provider is stopped and reported."""

from __future__ import annotations

import collections
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope

from tests.support.cli import newsletter, write_config
from tests.support.smtp import RecordingHandler, SMTPServer

pytestmark = pytest.mark.slow

AT_163 = [f"reader{i}@163.com" for i in range(8)]
ELSEWHERE = [f"reader{i}@example.org" for i in range(3)]


def setup(tmp_path: Path, db_url: str, port: int, extra: str = "") -> Path:
    path = write_config(tmp_path, db_url, port, connections=2)
    path.write_text(path.read_text(encoding="utf-8") + extra, encoding="utf-8")
    csv = tmp_path / "list.csv"
    csv.write_text("email,language\n" + "".join(f"{a},en\n" for a in AT_163 + ELSEWHERE),
                   encoding="utf-8")
    for step in (["keys", "init"], ["subscribers", "import", str(csv), "--confirmed"], ["poll"]):
        done = newsletter(path, *step)
        assert done.returncode == 0, done.stderr
    return path


def not_at_the_end_of_an_hour() -> None:
    """The cap counts whole UTC hours of the real clock here: do not straddle one."""
    now = datetime.now(UTC)
    if now.minute == 59 and now.second > 30:
        time.sleep(62 - now.second)


def test_an_hourly_cap_holds_the_rest_and_the_report_says_when_it_ends(
        tmp_path: Path, db_url: str) -> None:
    server = SMTPServer().start()
    try:
        config = setup(tmp_path, db_url, server.port,
                       '\n[delivery.domain_rates]\n"163.com" = { rate = 20, per_hour = 5 }\n')
        not_at_the_end_of_an_hour()
        sent = newsletter(config, "send")
        assert sent.returncode == 0, sent.stderr
        readers = [r for r in server.received if not r.rcpt_tos[0].startswith("editors@")]
        got = collections.Counter(r.rcpt_tos[0].rpartition("@")[2] for r in readers)
        assert got == {"163.com": 5, "example.org": 3}
        assert "163.com: the rest waits until " in sent.stdout
        report = newsletter(config, "editions", "report", "1")
        assert report.returncode == 0, report.stderr
        line = next(x for x in report.stdout.splitlines() if "left" in x)
        assert line.startswith("163.com")
        assert " 3 left  finished by " in line
        assert "5 per hour" in line
        assert "Asia/Shanghai" in line
        again = newsletter(config, "send")  # within the hour: nothing more to 163.com
        assert again.returncode == 0, again.stderr
        assert len([r for r in server.received if "@163.com" in r.rcpt_tos[0]]) == 5
    finally:
        server.stop()


def test_a_blocklisting_provider_is_stopped_reported_and_unblocked(
        tmp_path: Path, db_url: str) -> None:
    lock = threading.Lock()
    tries = collections.Counter[str]()
    blocking = {"on": True}

    def fault(step: str, envelope: Envelope, _n: int) -> str | None:
        to = str(envelope.rcpt_tos[0]) if envelope.rcpt_tos else ""
        if step == "data" and to.endswith("@163.com") and blocking["on"]:
            with lock:
                tries["163"] += 1
            return "450 DT:RBL 163 mx1, 192.0.2.1 is in the blocklist"
        return None

    server = SMTPServer(RecordingHandler(fault=fault)).start()
    try:
        config = setup(tmp_path, db_url, server.port)
        sent = newsletter(config, "send")
        assert sent.returncode == 0, sent.stderr
        assert "netease: the rest waits until " in sent.stdout
        assert tries["163"] <= 2  # the messages in flight, then nothing more
        readers = [r for r in server.received if "@example.org" in r.rcpt_tos[0]
                   and not r.rcpt_tos[0].startswith("editors@")]
        assert len(readers) == 3  # the other provider carried on
        told = [r for r in server.received if r.rcpt_tos[0] == "editors@example.org"]
        subjects = [str(r.message()["Subject"]) for r in told]
        assert any("a mail provider blocklists us; sending to it stopped" in s for s in subjects)
        body = next(r.message() for r in told if "blocklists" in str(r.message()["Subject"]))
        text = body.get_content()
        assert "DT:RBL" in text
        assert "newsletter relay unblock" in text
        assert not any(a in text for a in AT_163)  # never a reader's address
        report = newsletter(config, "editions", "report", "1")
        assert "blocklists us" in report.stdout
        unknown = newsletter(config, "relay", "unblock", "nosuch")
        assert unknown.returncode != 0
        assert "netease" in unknown.stderr
        blocking["on"] = False
        lifted = newsletter(config, "relay", "unblock", "netease")
        assert lifted.returncode == 0, lifted.stderr
        assert "netease: unblocked; 8 waiting messages are due now" in lifted.stdout
        done = newsletter(config, "run", "--once")
        assert done.returncode == 0, done.stderr
        delivered = {r.rcpt_tos[0] for r in server.received}
        assert set(AT_163) <= delivered
    finally:
        server.stop()
