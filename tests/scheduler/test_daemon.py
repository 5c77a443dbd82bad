"""The daemon in-process under a controlled clock: restarts, misfires, approval, DST, job store.

Real parts throughout: the database (SQLite and PostgreSQL), APScheduler's SQLAlchemy job store,
the real send pipeline, and an aiosmtpd server that receives both the edition and the editors'
reports. Only the wall clock is moved (time-machine); asyncio's monotonic timers run for real.
"""

from __future__ import annotations

import asyncio
import mailbox
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from sqlalchemy import create_engine, text

from mailer.app import App
from mailer.models import EditionState as S
from scheduler import JOBS_TABLE, Daemon
from tests.editions.helpers import add_posts
from tests.scheduler.helpers import make_app, write_config
from tests.support.http import HTTPServer, Reply
from tests.support.smtp import RecordingHandler, SMTPServer

READER = "reader-one@example.com"
SAMPLE_FEED = Path(__file__).resolve().parents[2] / "examples" / "sample-feed.atom.xml"
EDITOR = "eds@example.net"


async def until(pred: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Wait for a condition the daemon brings about (a bound on waiting, not a timing check)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def daemon(config: Path) -> AsyncIterator[Daemon]:
    """A daemon started on ``config`` with a fresh App (as a restarted process would have)."""
    app = make_app(config)
    d = Daemon(app, install_signals=False, lock_lease=timedelta(seconds=3))
    task = asyncio.ensure_future(d.run())
    try:
        await asyncio.wait_for(d.started.wait(), 30)
        yield d
    finally:
        d.request_stop()
        await asyncio.wait_for(task, 60)
        app.engine.dispose()


def to(server: SMTPServer, address: str) -> list[str]:
    return [str(r.message()["Subject"]) for r in server.received if address in r.rcpt_tos]


@pytest.fixture
def setup(tmp_path: Path, db_url: str, smtp_server: SMTPServer) -> Callable[..., tuple[Path, App]]:
    apps: list[App] = []

    def make(**kw: object) -> tuple[Path, App]:
        config = write_config(tmp_path, db_url, smtp_port=smtp_server.port,
                              editors=(EDITOR,), **kw)  # type: ignore[arg-type]
        app = make_app(config)
        app.subscribers.add(READER, "en", confirmed=True)
        apps.append(app)
        return config, app

    yield make  # type: ignore[misc]
    for app in apps:
        app.engine.dispose()


async def test_restart_keeps_the_digest_and_sends_it_late_within_grace(
        setup: Callable[..., tuple[Path, App]], smtp_server: SMTPServer) -> None:
    config, app = setup(digest="0 8 * * *", grace="1h")
    with time_machine.travel(datetime(2026, 11, 23, 7, 0, tzinfo=UTC), tick=True):
        async with daemon(config) as d:
            assert d.next_runs()["digest"] == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    add_posts(app.engine, 2)  # posts arrive while no daemon runs
    # The daemon was down at 08:00 and comes back at 08:30: late, but within the hour of grace.
    with time_machine.travel(datetime(2026, 11, 23, 8, 30, tzinfo=UTC), tick=True):
        async with daemon(config) as d:
            await until(lambda: [i.state for i in app.editions.find()] == [S.SENT],
                        "the late digest sent")
            await until(lambda: len(to(smtp_server, EDITOR)) == 1, "the editors' report")
            assert d.next_runs()["digest"] == datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    assert len(to(smtp_server, READER)) == 1
    assert "Edition 1 sent" in to(smtp_server, EDITOR)[0]


async def test_digest_missed_beyond_grace_is_marked_and_reported_not_sent(
        setup: Callable[..., tuple[Path, App]], smtp_server: SMTPServer) -> None:
    config, app = setup(digest="0 8 * * *", grace="1h")
    with time_machine.travel(datetime(2026, 11, 23, 7, 0, tzinfo=UTC), tick=True):
        async with daemon(config):
            pass
    add_posts(app.engine, 2)
    with time_machine.travel(datetime(2026, 11, 23, 10, 0, tzinfo=UTC), tick=True):
        async with daemon(config) as d:
            await until(lambda: [i.state for i in app.editions.find()] == [S.MISSED],
                        "the digest marked missed")
            await until(lambda: len(to(smtp_server, EDITOR)) == 1, "the editors' report")
            assert d.next_runs()["digest"] == datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    info = app.editions.find()[0]
    assert info.scheduled_at == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    assert info.reason is not None
    assert "2h" in info.reason
    assert to(smtp_server, READER) == []
    assert "MISSED" in to(smtp_server, EDITOR)[0]


async def test_scheduled_edition_survives_restart_and_misfire_policy_applies(
        setup: Callable[..., tuple[Path, App]], smtp_server: SMTPServer) -> None:
    config, app = setup(digest="0 8 1 1 *", grace="30m")
    a, b = add_posts(app.engine, 2)
    with time_machine.travel(datetime(2026, 11, 23, 7, 0, tzinfo=UTC), tick=True):
        soon = app.editions.create([a])
        late = app.editions.create([b])
        assert soon is not None
        assert late is not None
        app.editions.schedule(soon, datetime(2026, 11, 23, 7, 30, tzinfo=UTC))
        app.editions.schedule(late, datetime(2026, 11, 23, 9, 30, tzinfo=UTC))
        async with daemon(config) as d:
            runs = d.next_runs()
            assert runs[f"edition:{soon}"] == datetime(2026, 11, 23, 7, 30, tzinfo=UTC)
            assert runs[f"edition:{late}"] == datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    with time_machine.travel(datetime(2026, 11, 23, 7, 50, tzinfo=UTC), tick=True):
        async with daemon(config) as d:  # 20 min late: within 30 min of grace
            await until(lambda: app.editions.info(soon).state is S.SENT, "edition sent")
            assert f"edition:{late}" in d.next_runs()  # still in the job store
    with time_machine.travel(datetime(2026, 11, 23, 11, 0, tzinfo=UTC), tick=True):
        async with daemon(config):  # 90 min late: missed
            await until(lambda: app.editions.info(late).state is S.MISSED, "edition missed")
    assert len(to(smtp_server, READER)) == 1


async def test_approval_gate_holds_then_sends_after_approval(
        setup: Callable[..., tuple[Path, App]], smtp_server: SMTPServer) -> None:
    config, app = setup(digest="0 8 1 1 *", require_approval=True)
    add_posts(app.engine, 1)
    with time_machine.travel(datetime(2026, 11, 23, 7, 0, tzinfo=UTC), tick=True):
        eid = app.editions.create()
        assert eid is not None
        app.editions.schedule(eid, datetime(2026, 11, 23, 7, 0, 1, tzinfo=UTC))
        async with daemon(config) as d:
            await until(lambda: app.editions.info(eid).state is S.HELD, "edition held")
            await until(lambda: len(to(smtp_server, EDITOR)) == 1, "the editors told")
            assert to(smtp_server, READER) == []
            assert "held" in to(smtp_server, EDITOR)[0]
            app.editions.approve(eid)  # as `newsletter editions approve` would, from another process
            await d.process_due()
            await until(lambda: app.editions.info(eid).state is S.SENT, "sent once approved")
    assert len(to(smtp_server, READER)) == 1


async def test_digest_follows_local_time_across_dst(
        setup: Callable[..., tuple[Path, App]], smtp_server: SMTPServer) -> None:
    """08:00 in New York is 13:00 UTC before the spring change and 12:00 UTC after it."""
    config, app = setup(digest="0 8 * * *", timezone="America/New_York")
    add_posts(app.engine, 1)
    with time_machine.travel(datetime(2026, 3, 7, 12, 59, 59, tzinfo=UTC), tick=True):
        async with daemon(config) as d:
            assert d.next_runs()["digest"] == datetime(2026, 3, 7, 13, 0, tzinfo=UTC)
            await until(lambda: len(app.editions.find([S.SENT])) == 1, "the digest sent")
            await until(lambda: d.next_runs()["digest"] > datetime(2026, 3, 7, 13, 0, tzinfo=UTC),
                        "the next digest planned")
            assert d.next_runs()["digest"] == datetime(2026, 3, 8, 12, 0, tzinfo=UTC)
    assert len(to(smtp_server, READER)) == 1


async def test_job_store_holds_no_address(
        setup: Callable[..., tuple[Path, App]], db_url: str) -> None:
    config, app = setup(mode="per-post")
    add_posts(app.engine, 1)
    with time_machine.travel(datetime(2026, 11, 23, 7, 0, tzinfo=UTC), tick=True):
        async with daemon(config) as d:
            await until(lambda: bool(app.editions.find()), "a per-post edition")
            assert "digest" not in d.next_runs()
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(text(f"select id, job_state from {JOBS_TABLE}")).all()
    engine.dispose()
    assert {r[0] for r in rows} >= {"poll", "tick", "retry", "mirrors"}
    for _, state in rows:
        # Pickled datetimes may contain an "@" byte by chance; look for the address itself.
        assert READER.encode() not in bytes(state)
        assert READER.split("@")[0].encode() not in bytes(state)


async def test_per_post_mode_holds_each_new_post(
        setup: Callable[..., tuple[Path, App]], smtp_server: SMTPServer) -> None:
    config, app = setup(mode="per-post", hold="1h", grace="1h")
    a, b = add_posts(app.engine, 2)
    start = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=True):
        async with daemon(config) as d:
            await until(lambda: len(app.editions.find()) == 2, "one edition per post")
            infos = sorted(app.editions.find(), key=lambda i: i.id)
            assert [i.post_ids for i in infos] == [(a,), (b,)]  # oldest post first
            assert all(i.kind == "per-post" and i.state is S.SCHEDULED for i in infos)
            for i in infos:
                assert i.scheduled_at is not None
                assert timedelta(minutes=59) < i.scheduled_at - start <= timedelta(hours=1, minutes=1)
                assert d.next_runs()[f"edition:{i.id}"] == i.scheduled_at
    with time_machine.travel(start + timedelta(hours=1, minutes=5), tick=True):
        async with daemon(config):
            await until(lambda: len(app.editions.find([S.SENT])) == 2, "both sent after the hold")
    assert len(to(smtp_server, READER)) == 2


async def test_sighup_reload_changes_the_timetable_and_refuses_a_broken_config(
        setup: Callable[..., tuple[Path, App]], tmp_path: Path, db_url: str) -> None:
    config, _ = setup(digest="0 8 * * *")
    with time_machine.travel(datetime(2026, 11, 23, 7, 0, tzinfo=UTC), tick=True):
        async with daemon(config) as d:
            assert d.next_runs()["digest"] == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
            text_before = config.read_text(encoding="utf-8")
            config.write_text(text_before.replace('digest = "0 8 * * *"',
                                                  'digest = "30 9 * * *"'), encoding="utf-8")
            d.reload()
            assert d.next_runs()["digest"] == datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
            config.write_text(text_before.replace('digest = "0 8 * * *"', 'digest = "nope"'),
                              encoding="utf-8")
            d.reload()  # logged and refused: the running timetable stays
            assert d.next_runs()["digest"] == datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
            assert d.config.schedule.digest == "30 9 * * *"


async def test_deferred_deliveries_are_retried_when_due(
        tmp_path: Path, db_url: str) -> None:
    """451 on the first try: the row is deferred, the edition stays sending, the retry job
    sends it once its time comes, and only then is the edition sent."""
    tries: list[str] = []

    def fault(step: str, envelope: object, n: int) -> str | None:
        if step == "rcpt":
            tries.append(step)
            return "451 4.7.1 try again later" if len(tries) == 1 else None
        return None

    server = SMTPServer(RecordingHandler(fault=fault)).start()
    try:
        config = write_config(tmp_path, db_url, smtp_port=server.port, editors=(),
                              digest="0 8 1 1 *")
        app = make_app(config)
        app.subscribers.add(READER, "en", confirmed=True)
        add_posts(app.engine, 1)
        eid = app.editions.create()
        assert eid is not None
        app.editions.approve(eid)
        with time_machine.travel(datetime(2026, 11, 23, 7, 0, tzinfo=UTC), tick=True) as tm:
            async with daemon(config) as d:
                await until(lambda: bool(tries) and app.editions.info(eid).started_at is not None
                            and not d._sending, "the first attempt")
                assert app.editions.info(eid).state is S.SENDING
                assert server.received == []
                await d.retry()  # not due yet: nothing happens
                assert server.received == []
                tm.shift(timedelta(hours=1))
                await d.retry()
                await until(lambda: app.editions.info(eid).state is S.SENT, "sent on retry")
        assert [r.rcpt_tos for r in server.received] == [[READER]]
        app.engine.dispose()
    finally:
        server.stop()


async def test_edition_scheduled_while_running_gets_its_own_job_and_logs_next(
        setup: Callable[..., tuple[Path, App]], smtp_server: SMTPServer,
        caplog: pytest.LogCaptureFixture) -> None:
    config, app = setup(digest="0 8 * * *", timezone="Asia/Shanghai")
    add_posts(app.engine, 1)
    caplog.set_level("INFO", logger="newsletter.scheduler")
    with time_machine.travel(datetime(2026, 11, 23, 7, 0, tzinfo=UTC), tick=True):
        async with daemon(config) as d:
            assert "next digest: 2026-11-24 08:00 CST (Asia/Shanghai) = 2026-11-24 00:00 UTC" \
                in caplog.text
            assert "next poll: 2026-11-23 15:" in caplog.text
            eid = app.editions.create()  # as the CLI would, from another process
            assert eid is not None
            at = datetime.now(UTC) + timedelta(seconds=2)
            app.editions.schedule(eid, at)
            await d.process_due()  # the tick: it finds the new schedule
            assert d.next_runs()[f"edition:{eid}"] == at
            d.log_next()
            assert f"next send: edition {eid} at" in caplog.text
            await until(lambda: app.editions.info(eid).state is S.SENT, "sent at its time")
    assert len(to(smtp_server, READER)) == 1


@pytest.mark.slow
async def test_editor_pause_stops_the_send_and_resume_finishes_it(
        tmp_path: Path, db_url: str) -> None:
    # More readers than the engine claims ahead (two batches of 64): a pause takes effect
    # between batches.
    server = SMTPServer(RecordingHandler(delay=0.02)).start()
    readers = [f"r{i}@example.com" for i in range(160)]
    try:
        config = write_config(tmp_path, db_url, smtp_port=server.port, editors=(),
                              digest="0 8 1 1 *")
        app = make_app(config)
        for r in readers:
            app.subscribers.add(r, "en", confirmed=True)
        add_posts(app.engine, 1)
        eid = app.editions.create()
        assert eid is not None
        app.editions.approve(eid)
        async with daemon(config) as d:
            await until(lambda: len(server.received) >= 2, "the send under way")
            app.editions.pause(eid)  # `newsletter editions pause`, from another process
            await until(lambda: not d._sending, "the engine stopped after its in-flight messages")
            assert app.editions.info(eid).state is S.PAUSED
            stopped_at = len(server.received)
            assert stopped_at < len(readers)
            await d.process_due()  # a tick while paused sends nothing more
            assert len(server.received) == stopped_at
            app.editions.resume(eid)
            await d.process_due()  # the next tick carries on
            await until(lambda: app.editions.info(eid).state is S.SENT, "finished after resume")
        assert sorted(r for m in server.received for r in m.rcpt_tos) == sorted(readers)
        app.engine.dispose()
    finally:
        server.stop()


async def test_a_daemon_that_loses_its_lock_stops(tmp_path: Path, sqlite_url: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """SQLite: another process took the lease (say, ours stalled past it); we must stop acting."""
    from sqlalchemy import update

    from mailer.schema import daemon_lock

    config = write_config(tmp_path, sqlite_url, digest="0 8 1 1 *")
    app = make_app(config)
    d = Daemon(app, install_signals=False, lock_lease=timedelta(seconds=0.6))
    task = asyncio.ensure_future(d.run())
    await asyncio.wait_for(d.started.wait(), 30)
    with app.engine.begin() as conn:
        conn.execute(update(daemon_lock).values(owner="elsewhere:1"))
    await asyncio.wait_for(task, 30)
    assert d.stopping
    assert "was lost" in caplog.text
    app.engine.dispose()


@pytest.mark.postgres
async def test_a_daemon_on_postgres_that_loses_its_session_stops(
        tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL: the session holding the advisory lock ended (server restart, network loss,
    an operator's pg_terminate_backend); a standby may already lead, so we must stop."""
    from sqlalchemy import text

    config = write_config(tmp_path, postgres_url, digest="0 8 1 1 *")
    app = make_app(config)
    d = Daemon(app, install_signals=False, lock_lease=timedelta(seconds=0.6))
    task = asyncio.ensure_future(d.run())
    await asyncio.wait_for(d.started.wait(), 30)
    key = d.lock._key
    assert key is not None
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    with app.engine.connect() as conn:  # find the holder's session from outside, as a DBA would
        pid = conn.execute(text("select pid from pg_locks where locktype = 'advisory' "
                                "and granted and classid = :hi and objid = :lo"),
                           {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF}).scalar_one()
        assert conn.execute(text("select pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
    await asyncio.wait_for(task, 30)
    assert d.stopping
    assert "was lost" in caplog.text
    assert not d.lock.held
    app.engine.dispose()


async def test_end_to_end_poll_then_digest_at_its_time(
        tmp_path: Path, sqlite_url: str, smtp_server: SMTPServer,
        http_server: HTTPServer) -> None:
    """The daemon alone: it polls a real feed over HTTP at start, and at 08:00 Shanghai time
    the digest goes to the subscriber and the report to the editors."""
    feed = SAMPLE_FEED.read_bytes()
    http_server.routes["/feed.xml"] = Reply(body=feed,
                                            headers={"Content-Type": "application/atom+xml"})
    config = write_config(tmp_path, sqlite_url, smtp_port=smtp_server.port, editors=(EDITOR,),
                          timezone="Asia/Shanghai", digest="0 8 * * *",
                          feeds=(http_server.url("/feed.xml"),))
    app = make_app(config)
    app.subscribers.add(READER, "en", confirmed=True)
    # 07:59:57 in Shanghai is 23:59:57 UTC the day before.
    with time_machine.travel(datetime(2026, 11, 23, 23, 59, 57, tzinfo=UTC), tick=True):
        async with daemon(config):
            await until(lambda: len(app.editions.unsent_post_ids()) > 0, "posts from the poll")
            assert app.editions.find() == []  # nothing goes before the digest time
            await until(lambda: len(app.editions.find([S.SENT])) == 1, "the 08:00 digest sent")
            await until(lambda: len(to(smtp_server, EDITOR)) == 1, "the editors' report")
    [edition] = app.editions.find()
    assert edition.scheduled_at is not None
    assert edition.scheduled_at >= datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
    assert len(edition.post_ids) == 4
    assert app.editions.unsent_post_ids() == []
    [mail] = [r for r in smtp_server.received if READER in r.rcpt_tos]
    assert mail.message().get_body(("html",)) is not None
    assert [path for path, _ in http_server.requests] == ["/feed.xml"]  # polled once
    app.engine.dispose()


async def test_editing_mirrors_in_the_config_takes_effect_without_restart_or_sighup(
        tmp_path: Path, db_url: str) -> None:
    """Operators rotate mirrors by editing the file; the daemon's tick picks the change up."""
    import scheduler

    sites = ('\n[[mirrors.sites]]\nurl = "https://old-mirror.example.net"\nstatus = "active"\n'
             '\n[[mirrors.sites]]\nurl = "https://new-mirror.example.net"\nstatus = "reserve"\n')
    config = write_config(tmp_path, db_url, extra=sites)
    async with daemon(config) as d:
        assert d.app.mirrors.candidates() == ("https://old-mirror.example.net",)
        rotated = config.read_text(encoding="utf-8").replace('status = "active"', 'status = "retired"')
        config.write_text(rotated.replace('status = "reserve"', 'status = "active"'), encoding="utf-8")
        await scheduler.job_tick()
        assert d.app.mirrors.candidates() == ("https://new-mirror.example.net",)
        # A broken edit is refused and the last good set stays in use.
        config.write_text(rotated.replace('url = "https://new-mirror.example.net"', 'url = "not a url"'),
                          encoding="utf-8")
        await scheduler.job_tick()
        assert d.app.mirrors.candidates() == ("https://new-mirror.example.net",)


async def test_retention_forgets_long_suppressed_readers_daily(
        setup: Callable[..., tuple[Path, App]]) -> None:
    config, app = setup(storage_extra='forget_suppressed_after = "30d"')
    with time_machine.travel(datetime(2026, 10, 1, 12, 0, tzinfo=UTC), tick=True):
        old = app.subscribers.add("left-long-ago@example.com", "en", confirmed=True)
        app.subscribers.unsubscribe(old)
    with time_machine.travel(datetime(2026, 11, 23, 12, 0, tzinfo=UTC), tick=True):
        recent = app.subscribers.add("left-last-week@example.com", "en", confirmed=True)
        app.subscribers.unsubscribe(recent)
        async with daemon(config) as d:
            assert "retention" in d.next_runs()
            await until(lambda: app.subscribers.get(old) is None, "the old unsubscribe forgotten")
            assert app.subscribers.get(recent) is not None
            assert app.subscribers.lookup(READER) is not None
            assert app.subscribers.count_forgotten() == 1


async def test_unsubscribe_mail_is_handled_by_the_daemon(
        setup: Callable[..., tuple[Path, App]], tmp_path: Path) -> None:
    inbox = tmp_path / "unsubscribe-mail"
    config, app = setup(extra=f'\n[web]\nunsubscribe_maildir = "{inbox}"\n')
    reader = app.subscribers.lookup(READER)
    assert reader is not None
    box = mailbox.Maildir(inbox, create=True)
    box.add(f"From: {READER}\r\nSubject: unsubscribe "
            f"{app.tokens.unsubscribe_token(reader.id)}\r\n\r\n\r\n".encode())
    async with daemon(config) as d:
        assert "mailin" in d.next_runs()
        await until(lambda: app.subscribers.count() == 0, "the reader unsubscribed by mail")
    assert len(box) == 0
