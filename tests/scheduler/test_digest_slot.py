"""An editors' edition at the digest's time takes its place: readers get one mail, not two.

The daemon in-process under a moved wall clock (as in ``test_daemon.py``), a real SQLite
database and an aiosmtpd relay; and the pure rule on its own.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import time_machine

from mailer.editions.store import EditionInfo
from mailer.models import EditionState as S
from mailer.pipeline.policy import DIGEST_SLOT, digest_slot_taken
from tests.editions.helpers import add_posts
from tests.scheduler.helpers import make_app, write_config
from tests.scheduler.test_daemon import EDITOR, READER, daemon, to, until
from tests.scheduler.test_processes import Proc
from tests.support.cli import newsletter
from tests.support.smtp import SMTPServer

EIGHT = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def info(eid: int, state: S, at: datetime | None) -> EditionInfo:
    return EditionInfo(id=eid, kind="digest", state=state, scheduled_at=at, approved_at=None,
                       created_at=EIGHT, updated_at=EIGHT, started_at=None, finished_at=None,
                       reason=None, total=None, post_ids=(1,), excluded_ids=(), notes={})


def test_the_rule_counts_editions_that_reach_readers_near_the_digest_time() -> None:
    assert digest_slot_taken([], EIGHT) is None
    for state in (S.SCHEDULED, S.APPROVED, S.SENDING, S.PAUSED, S.SENT):
        found = digest_slot_taken([info(3, state, EIGHT)], EIGHT)
        assert found is not None, state
        assert found.id == 3
    for state in (S.DRAFT, S.HELD, S.MISSED, S.CANCELLED):
        assert digest_slot_taken([info(3, state, EIGHT)], EIGHT) is None, state
    assert digest_slot_taken([info(3, S.SCHEDULED, None)], EIGHT) is None
    near = [info(4, S.SCHEDULED, EIGHT - DIGEST_SLOT), info(5, S.SCHEDULED, EIGHT + DIGEST_SLOT)]
    assert [digest_slot_taken([e], EIGHT) for e in near] == near
    far = info(6, S.SCHEDULED, EIGHT + DIGEST_SLOT + timedelta(minutes=1))
    assert digest_slot_taken([far], EIGHT) is None


async def test_an_editors_edition_at_digest_time_is_the_only_mail(
        tmp_path: Path, sqlite_url: str, smtp_server: SMTPServer) -> None:
    config = write_config(tmp_path, sqlite_url, smtp_port=smtp_server.port, editors=(EDITOR,),
                          digest="0 8 * * *")
    app = make_app(config)
    app.subscribers.add(READER, "en", confirmed=True)
    a, b = add_posts(app.engine, 2)
    with time_machine.travel(EIGHT - timedelta(seconds=4), tick=True):
        eid = app.editions.create([a])
        assert eid is not None
        app.editions.schedule(eid, EIGHT)  # Thursday 08:00 by hand, the digest's own time
        async with daemon(config) as d:
            await until(lambda: app.editions.info(eid).state is S.SENT, "the editors' edition")
            await until(lambda: d.next_runs().get("digest", EIGHT) > EIGHT, "the digest's turn")
            await until(lambda: len(to(smtp_server, EDITOR)) == 1, "the editors' report")
    assert len(to(smtp_server, READER)) == 1  # one mail, not two
    assert [i.id for i in app.editions.find()] == [eid]  # the digest made no edition
    assert app.editions.unsent_post_ids() == [b]  # its post waits for the next digest
    app.engine.dispose()


def test_the_daemon_announces_one_mail_not_two(tmp_path: Path, sqlite_url: str) -> None:
    """``newsletter run`` as a process: its "next digest" line says the editors' edition goes
    out instead, where it used to announce both."""
    # The digest's hour two to three hours from now, whatever the time of day the suite runs
    # (a fixed 08:00 failed between 07:00 and 08:00: the next digest was still today).
    slot = (datetime.now(UTC) + timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    day, hour = slot.date(), f"{slot.hour:02d}:00"
    config = write_config(tmp_path, sqlite_url, digest=f"0 {slot.hour} * * *")
    app = make_app(config)
    a, _b = add_posts(app.engine, 2)
    assert newsletter(config, "editions", "create", "--posts", str(a)).returncode == 0
    scheduled = newsletter(config, "editions", "schedule", "1", "--at", f"{day} {hour}",
                           "--tz", "UTC")
    assert scheduled.returncode == 0, scheduled.stderr
    proc = Proc(config, tmp_path / "daemon.log")
    try:
        proc.wait_for("next digest:")
        line = next(x for x in proc.text().splitlines() if "next digest:" in x)
        assert f"{day} {hour} UTC: none then, edition 1 goes out instead" in line, line
        assert f"next send: edition 1 at {day} {hour}" in proc.text()
    finally:
        assert proc.stop() == 0
    app.engine.dispose()
