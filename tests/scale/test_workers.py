"""``newsletter worker``: several senders share an edition without overlap; a dead one's rows are
reclaimed after the lease, with duplicates within the delivery bound (issue 9)."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, func, select

from mailer.app import App
from mailer.delivery.outbox import Outbox
from mailer.errors import KeyStoreError
from mailer.models import EditionState, OutboxState
from mailer.pipeline.send import start_edition
from mailer.pipeline.worker import SenderWorker
from mailer.schema import outbox
from tests.scale.helpers import (
    CountingHandler,
    counting_sink,
    make_edition,
    seed_subscribers,
    spawn_cli,
    write_config,
)
from tests.support.smtp import SMTPServer


@pytest.fixture
def sink() -> Iterator[CountingHandler]:
    with counting_sink() as handler:
        yield handler


def _app(tmp_path: Path, db_url: str, sink: CountingHandler, connections: int = 2,
         editors: tuple[str, ...] = ()) -> App:
    cfg = write_config(tmp_path, db_url, sink.port, connections=connections, editors=editors)
    return App.from_path(cfg, environ={})


def assert_no_plaintext_address(engine: Engine, addresses: list[str]) -> None:
    """Every column of every table, on this backend: no address, not even its local part."""
    assert all(a.startswith("reader") for a in addresses)  # so one needle finds any of them
    reflected = MetaData()
    reflected.reflect(engine)
    with engine.connect() as conn:
        for table in reflected.sorted_tables:
            for row in conn.execute(select(table)):
                for value in row:
                    if isinstance(value, str):
                        value = value.encode()
                    if isinstance(value, bytes | memoryview):
                        assert b"reader" not in bytes(value), f"{table.name} holds an address"


def _states(app: App, edition_id: int) -> dict[OutboxState, int]:
    return {k: v for k, v in app.outbox.counts(edition_id).items() if v}


async def test_two_workers_share_an_edition_without_overlap(
        tmp_path: Path, db_url: str, sink: CountingHandler) -> None:
    first = _app(tmp_path, db_url, sink, editors=("eds@example.net",))
    addresses = seed_subscribers(first, 160)
    edition_id = make_edition(first)
    assert start_edition(first, edition_id) == 160
    assert start_edition(first, edition_id) == 0  # enqueueing again adds nobody
    assert first.outbox.editions_with_work() == [edition_id]
    second = App.from_path(first.config.path, environ={})
    workers = [SenderWorker(app, batch_size=8, once=True, poll=0.1) for app in (first, second)]
    reports = await asyncio.gather(*(w.run() for w in workers))
    assert all(r.sent > 0 for r in reports), [r.summary() for r in reports]
    assert sum(r.sent for r in reports) == 160
    assert sink.per_rcpt.pop("eds@example.net") == 1  # one "sent" report, from the CAS winner
    assert sink.per_rcpt == dict.fromkeys(addresses, 1)
    assert _states(first, edition_id) == {OutboxState.SENT: 160}
    assert first.editions.info(edition_id).state is EditionState.SENT
    assert sum(len(r.finished) for r in reports) == 1  # exactly one worker marked it sent
    assert first.outbox.editions_unfinished() == []
    assert_no_plaintext_address(first.engine, addresses)
    for app in (first, second):
        app.engine.dispose()


async def test_a_dead_workers_rows_are_reclaimed_after_the_lease(
        tmp_path: Path, db_url: str, sink: CountingHandler) -> None:
    app = _app(tmp_path, db_url, sink)
    addresses = seed_subscribers(app, 40)
    edition_id = make_edition(app)
    start_edition(app, edition_id)
    # A worker that claimed 10 rows and died before sending any: its lease is all that is left.
    dead = Outbox(app.engine, app.clock).claim(edition_id, 10, "worker:dead:1:0",
                                                        timedelta(seconds=1))
    assert len(dead) == 10
    worker = SenderWorker(app, once=True, poll=0.1, batch_size=16)
    report = await worker.run()
    assert report.sent == 40
    assert sink.per_rcpt == dict.fromkeys(addresses, 1)
    with app.engine.connect() as conn:
        retried = conn.execute(select(func.count()).select_from(outbox).where(
            outbox.c.edition_id == edition_id, outbox.c.attempts == 2)).scalar_one()
    assert retried == 10
    assert app.editions.info(edition_id).state is EditionState.SENT
    app.engine.dispose()


def test_a_claim_takes_at_most_its_limit(tmp_path: Path, db_url: str,
                                         sink: CountingHandler) -> None:
    # On PostgreSQL a LIMIT … FOR UPDATE SKIP LOCKED subquery under IN can be rescanned per row
    # and take every row; a fresh, unanalysed table is exactly when that plan is chosen.
    app = _app(tmp_path, db_url, sink)
    seed_subscribers(app, 50)
    edition_id = make_edition(app)
    start_edition(app, edition_id)
    box = Outbox(app.engine, app.clock)
    first = box.claim(edition_id, 10, "a", timedelta(minutes=1))
    second = box.claim(edition_id, 10, "b", timedelta(minutes=1))
    assert len(first) == 10
    assert len(second) == 10
    assert not {r.subscriber_id for r in first} & {r.subscriber_id for r in second}
    assert _states(app, edition_id) == {OutboxState.SENDING: 20, OutboxState.QUEUED: 30}
    app.engine.dispose()


@pytest.mark.postgres
def test_renew_skips_rows_locked_by_a_commit_in_progress(
        tmp_path: Path, postgres_url: str, sink: CountingHandler) -> None:
    # The group commit updates rows one by one while the renewer runs in another thread; a renew
    # that waited for those row locks could deadlock with it (PostgreSQL aborts one of them).
    app = _app(tmp_path, postgres_url, sink)
    seed_subscribers(app, 12)
    edition_id = make_edition(app)
    start_edition(app, edition_id)
    box = Outbox(app.engine, app.clock)
    rows = box.claim(edition_id, 10, "w", timedelta(minutes=1))
    busy = rows[0].subscriber_id
    with app.engine.connect() as other:
        txn = other.begin()
        other.execute(select(outbox.c.subscriber_id).where(
            outbox.c.edition_id == edition_id, outbox.c.subscriber_id == busy).with_for_update())
        assert box.renew(edition_id, "w", timedelta(minutes=5)) == 9  # did not wait for `busy`
        txn.rollback()
    assert box.renew(edition_id, "w", timedelta(minutes=5)) == 10
    app.engine.dispose()


async def test_a_worker_without_the_key_file_refuses_to_start(
        tmp_path: Path, db_url: str, sink: CountingHandler) -> None:
    app = _app(tmp_path, db_url, sink)
    seed_subscribers(app, 5)
    other = tmp_path / "elsewhere"
    other.mkdir()
    text = app.config.path.read_text(encoding="utf-8")
    (other / "newsletter.toml").write_text(
        text.replace(str(tmp_path / "keys.json"), str(other / "keys.json")), encoding="utf-8")
    stray = App.from_path(other / "newsletter.toml", environ={})
    with pytest.raises(KeyStoreError):
        await SenderWorker(stray, once=True).run()
    assert not (other / "keys.json").exists()  # no new key made up for a list that has one
    for a in (app, stray):
        a.engine.dispose()


async def test_worker_leaves_paused_editions_alone(
        tmp_path: Path, db_url: str, sink: CountingHandler) -> None:
    app = _app(tmp_path, db_url, sink)
    seed_subscribers(app, 20)
    edition_id = make_edition(app)
    start_edition(app, edition_id)
    app.editions.pause(edition_id)
    assert app.outbox.editions_with_work() == []
    report = await SenderWorker(app, once=True, poll=0.1).run()
    assert report.sent == 0
    assert sink.total == 0
    assert _states(app, edition_id) == {OutboxState.QUEUED: 20}
    app.engine.dispose()


async def test_a_broken_edition_does_not_stop_the_others(
        tmp_path: Path, db_url: str, sink: CountingHandler) -> None:
    app = _app(tmp_path, db_url, sink)
    seed_subscribers(app, 30)
    broken = make_edition(app)
    for post in app.editions.load(broken).posts:
        assert post.id is not None
        app.editions.exclude(broken, post.id)  # nothing left to render: prepare_edition refuses
    start_edition(app, broken)
    good = make_edition(app)
    start_edition(app, good)
    worker = SenderWorker(app, poll=0.05)
    task = asyncio.create_task(worker.run())
    while app.editions.info(good).state is not EditionState.SENT:
        assert not task.done(), "the worker ended on the broken edition"
        await asyncio.sleep(0.05)
    worker.stop("test")
    await task
    assert _states(app, good) == {OutboxState.SENT: 30}
    assert _states(app, broken) == {OutboxState.QUEUED: 30}
    assert sink.total == 30
    app.engine.dispose()


async def test_stop_finishes_in_flight_records_them_and_gives_the_rest_back(
        tmp_path: Path, db_url: str) -> None:
    handler = CountingHandler(delay=0.02)
    server = SMTPServer(handler)  # type: ignore[arg-type]
    server.start()
    handler.port = server.port
    try:
        app = _app(tmp_path, db_url, handler)
        seed_subscribers(app, 150)
        edition_id = make_edition(app)
        start_edition(app, edition_id)
        worker = SenderWorker(app, once=True, poll=0.1, batch_size=16)
        task = asyncio.create_task(worker.run())
        while handler.total < 20:
            assert not task.done(), "the worker ended before it was stopped"
            await asyncio.sleep(0.01)
        worker.stop("test")  # what SIGTERM does
        report = await task
        states = _states(app, edition_id)
        assert OutboxState.SENDING not in states  # nothing left leased
        # Every message the server accepted is recorded sent; the rest are queued again.
        assert states[OutboxState.SENT] == handler.total == report.sent
        assert states[OutboxState.QUEUED] == 150 - handler.total
        assert app.editions.info(edition_id).state is EditionState.SENDING
        app.engine.dispose()
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_three_worker_processes_one_sigkilled_everyone_gets_the_edition(
        tmp_path: Path, postgres_url: str, sink: CountingHandler) -> None:
    n, connections = 20_000, 8
    app = _app(tmp_path, postgres_url, sink, connections=connections)
    addresses = seed_subscribers(app, n)
    edition_id = make_edition(app)
    assert start_edition(app, edition_id) == n
    cfg = app.config.path
    args = ("worker", "--once", "--lease", "4s", "--poll", "0.5s", "--batch", "32")
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    procs = [spawn_cli(cfg, *args, log=log) for log in logs]
    victim = procs[0]
    try:
        deadline = time.monotonic() + 300
        while sink.total < n // 4:
            assert time.monotonic() < deadline, "workers made no progress"
            assert victim.poll() is None, "the first worker ended before the kill"
            time.sleep(0.05)
        with app.engine.connect() as conn:
            held = conn.execute(select(func.count()).select_from(outbox).where(
                outbox.c.lease_owner.like(f"worker:%:{victim.pid}:%"),
                outbox.c.state == OutboxState.SENDING.value)).scalar_one()
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        assert 0 < sink.total < n, "the kill must land mid-send"
        for proc, log in zip(procs[1:], logs[1:], strict=True):
            assert proc.wait(400) == 0, log.read_text()[-2000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    # Every recipient got the edition; duplicates stay within the dead worker's connections.
    assert set(sink.per_rcpt) == set(addresses)
    duplicates = sum(c - 1 for c in sink.per_rcpt.values())
    assert duplicates <= connections, duplicates
    for log in logs:
        assert not re.search(r"reader\d+@", log.read_text(errors="replace")), f"address in {log}"
    assert _states(app, edition_id) == {OutboxState.SENT: n}
    assert app.editions.info(edition_id).state is EditionState.SENT
    with app.engine.connect() as conn:
        retried = conn.execute(select(func.count()).select_from(outbox).where(
            outbox.c.edition_id == edition_id, outbox.c.attempts >= 2)).scalar_one()
    # The victim held claimed rows when it died, and they were sent by the others afterwards.
    assert held > 0
    assert retried > 0
    app.engine.dispose()


async def test_a_worker_delivers_a_welcome_left_waiting_in_a_sent_edition(
        tmp_path: Path, db_url: str, sink: CountingHandler) -> None:
    """Issue 17: a reader who confirmed after the edition went out has a row in that ``sent``
    edition (the welcome), left queued by a crash right after ``welcome`` enqueued it. A worker
    delivers it once; the edition stays sent and is not marked or reported again."""
    app = _app(tmp_path, db_url, sink)
    addresses = seed_subscribers(app, 6)
    edition_id = make_edition(app)
    start_edition(app, edition_id)
    assert (await SenderWorker(app, once=True, poll=0.1).run()).finished == [edition_id]
    late = app.subscribers.add("late@example9.org", "en", confirmed=True)
    assert app.outbox.enqueue(edition_id, app.subscribers.get_recipients([late]).values()) == 1
    assert app.outbox.editions_with_work() == [edition_id]
    again = App.from_path(app.config.path, environ={})
    report = await SenderWorker(again, once=True, poll=0.1).run()
    assert report.sent == 1
    assert report.finished == []
    assert sink.per_rcpt == {**dict.fromkeys(addresses, 1), "late@example9.org": 1}
    assert again.editions.info(edition_id).state is EditionState.SENT
    assert _states(again, edition_id) == {OutboxState.SENT: 7}
    assert again.outbox.editions_unfinished() == []
    for a in (app, again):
        a.engine.dispose()
