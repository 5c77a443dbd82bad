"""Several senders start the same edition at once on PostgreSQL: every reader gets it once, the
stored total is the outbox's count, and no one marks it sent before it is fully enqueued.

The race these guard against (found here): ``Outbox.enqueue`` used to commit every 2,000 rows,
so a worker could claim the first rows of an edition still being enqueued, deliver them, find
nothing unfinished and mark the edition ``sent`` (the editors' report with no total) while the
enqueuer went on adding readers to a sent edition.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

import mailer.delivery.outbox as outbox_module
from mailer.app import App
from mailer.models import EditionState, OutboxState
from mailer.pipeline.send import cancel_edition, start_edition
from mailer.schema import outbox
from subscribers.lifecycle import Recipient
from tests.scale.helpers import (
    CountingHandler,
    counting_sink,
    make_edition,
    seed_subscribers,
    spawn_cli,
    write_config,
)

EDITOR = "eds@example.net"


@pytest.fixture
def sink() -> Iterator[CountingHandler]:
    with counting_sink() as handler:
        yield handler


def _app(tmp_path: Path, db_url: str, sink: CountingHandler) -> App:
    cfg = write_config(tmp_path, db_url, sink.port, connections=2, editors=(EDITOR,))
    return App.from_path(cfg, environ={})


def _rows(app: App, edition_id: int) -> list[int]:
    with app.engine.connect() as conn:
        return [int(s) for s in conn.execute(
            select(outbox.c.subscriber_id).where(outbox.c.edition_id == edition_id)).scalars()]


def _hold_midway(app: App, monkeypatch: pytest.MonkeyPatch,
                 at: int) -> tuple[threading.Event, threading.Event]:
    """Make this app's enqueue stop after ``at`` readers: the first event is set when it does,
    and it goes on when the test sets the second."""
    halfway, go_on = threading.Event(), threading.Event()
    active = app.subscribers.stream_active

    def held_midway() -> Iterator[Recipient]:
        for i, reader in enumerate(active()):
            if i == at:
                halfway.set()
                assert go_on.wait(120)
            yield reader

    monkeypatch.setattr(app.subscribers, "stream_active", held_midway)
    return halfway, go_on


def _readers_got_it_once(app: App, sink: CountingHandler, addresses: list[str],
                         edition_id: int) -> None:
    """The promise: one row per active reader, the total is the count, one mail each, and the
    editors' report once."""
    rows = _rows(app, edition_id)
    assert len(rows) == len(set(rows)) == len(addresses)
    assert app.editions.info(edition_id).total == len(rows)
    assert app.editions.info(edition_id).state is EditionState.SENT
    assert {k: v for k, v in app.outbox.counts(edition_id).items() if v} == {
        OutboxState.SENT: len(addresses)}
    readers = {r: c for r, c in sink.per_rcpt.items() if r != EDITOR}
    assert set(readers) == set(addresses)
    assert set(readers.values()) == {1}
    assert sink.per_rcpt[EDITOR] == 1  # the sent report, from the one sender whose mark won


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_a_worker_never_finishes_an_edition_that_is_still_being_enqueued(
        tmp_path: Path, postgres_url: str, sink: CountingHandler,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The enqueuer is held mid-list (after several insert batches); a real ``newsletter
    worker --once`` runs meanwhile. It must find nothing to send: the rows appear with their
    total, all at once, when the enqueuer commits."""
    n = 40
    app = _app(tmp_path, postgres_url, sink)
    addresses = seed_subscribers(app, n)
    edition_id = make_edition(app)
    monkeypatch.setattr(outbox_module, "_ENQUEUE_BATCH", 8)  # several inserts before the hold
    halfway, go_on = _hold_midway(app, monkeypatch, n // 2)
    added: list[int] = []
    enqueuer = threading.Thread(target=lambda: added.append(start_edition(app, edition_id)))
    enqueuer.start()
    try:
        assert halfway.wait(60)
        worker = spawn_cli(app.config.path, "worker", "--once", "--poll", "0.2s",
                           log=tmp_path / "worker1.log")
        assert worker.wait(120) == 0, (tmp_path / "worker1.log").read_text()[-2000:]
        assert sink.total == 0, "a worker sent rows of an edition still being enqueued"
        assert app.editions.info(edition_id).state is EditionState.SENDING
        assert _rows(app, edition_id) == []
    finally:
        go_on.set()
        enqueuer.join(60)
    assert added == [n]
    assert app.editions.info(edition_id).total == n
    worker = spawn_cli(app.config.path, "worker", "--once", "--poll", "0.2s",
                       log=tmp_path / "worker2.log")
    assert worker.wait(120) == 0, (tmp_path / "worker2.log").read_text()[-2000:]
    _readers_got_it_once(app, sink, addresses, edition_id)
    app.engine.dispose()


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_an_edition_cancelled_while_it_is_enqueued_keeps_no_queued_row(
        tmp_path: Path, postgres_url: str, sink: CountingHandler,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The editor's cancel is not locked out by an enqueue in progress, and the rows that
    commit after it (which its ``cancel_unsent`` could not see) become ``cancelled`` too."""
    n = 30
    app = _app(tmp_path, postgres_url, sink)
    seed_subscribers(app, n)
    edition_id = make_edition(app)
    halfway, go_on = _hold_midway(app, monkeypatch, n // 2)
    enqueuer = threading.Thread(target=start_edition, args=(app, edition_id))
    enqueuer.start()
    try:
        assert halfway.wait(60)
        assert cancel_edition(app, edition_id, "changed our mind") == 0  # nothing visible yet
        assert app.editions.info(edition_id).state is EditionState.CANCELLED
    finally:
        go_on.set()
        enqueuer.join(60)
    assert {k: v for k, v in app.outbox.counts(edition_id).items() if v} == {
        OutboxState.CANCELLED: n}
    assert sink.total == 0
    app.engine.dispose()


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_sends_and_workers_that_start_one_edition_at_once_mail_each_reader_once(
        tmp_path: Path, postgres_url: str, sink: CountingHandler) -> None:
    """Three ``newsletter send`` resume the same edition (left ``sending`` with no rows, as a
    scheduler that died before enqueueing leaves it) while two ``newsletter worker`` poll: the
    sends enqueue the same readers at once over more than one insert batch."""
    n = 2100  # more than one enqueue batch (2,000)
    app = _app(tmp_path, postgres_url, sink)
    addresses = seed_subscribers(app, n)
    edition_id = make_edition(app)
    app.editions.set_state(edition_id, EditionState.SENDING)
    cfg = app.config.path
    logs = {name: tmp_path / f"{name}.log" for name in
            ("send0", "send1", "send2", "worker0", "worker1")}
    procs = {name: spawn_cli(cfg, *(("send",) if name.startswith("send") else
                                    ("worker", "--poll", "0.2s", "--batch", "32")), log=log)
             for name, log in logs.items()}
    try:
        for name in ("send0", "send1", "send2"):
            assert procs[name].wait(400) == 0, logs[name].read_text()[-3000:]
        deadline = time.monotonic() + 120
        while app.outbox.unfinished(edition_id) or sink.total < n + 1:
            assert time.monotonic() < deadline, app.outbox.counts(edition_id)
            time.sleep(0.1)
        for name in ("worker0", "worker1"):
            procs[name].send_signal(signal.SIGTERM)
            assert procs[name].wait(60) == 0, logs[name].read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    _readers_got_it_once(app, sink, addresses, edition_id)
    for log in logs.values():
        text = log.read_text(errors="replace")
        assert not re.search(r"deadlock|Traceback|ERROR", text), f"{log.name}: {text[-3000:]}"
        assert not re.search(r"reader\d+@", text), f"an address in {log.name}"
    with app.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox)).scalar_one() == n
    app.engine.dispose()
