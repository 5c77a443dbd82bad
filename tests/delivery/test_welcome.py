"""The welcome, on SQLite and PostgreSQL: which edition a reader who confirms gets at once
(``EditionStore.welcome_edition``, used by ``queue_welcome`` and ``welcome`` alike), that a
reader confirming mid-send gets the edition going out (once, and not the one before), and that
the edition's enqueued total counts the row in the transaction that adds it."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mailer.app import App
from mailer.delivery.engine import DeliveryReport
from mailer.models import EditionState, OutboxState
from mailer.pipeline.send import queue_welcome, send_edition, start_edition, welcome
from mailer.schema import outbox
from subscribers.lifecycle import Recipient, SubscriberState
from tests.delivery.helpers import recipients
from tests.scale.helpers import CountingHandler, counting_sink, make_edition, seed_subscribers, write_config

NEW = "new.reader@example9.org"


@pytest.fixture
def sink() -> Iterator[CountingHandler]:
    with counting_sink() as handler:
        yield handler


@pytest.fixture
async def app(tmp_path: Path, db_url: str, sink: CountingHandler) -> AsyncIterator[App]:
    built = App.from_path(write_config(tmp_path, db_url, sink.port), environ={})
    yield built
    if built.built("transport"):
        await built.transport.aclose()
    built.engine.dispose()


def rows_of(app: App, subscriber_id: int) -> dict[int, str]:
    """The reader's outbox rows: edition → state."""
    with app.engine.connect() as conn:
        return {int(e): str(s) for e, s in conn.execute(
            select(outbox.c.edition_id, outbox.c.state)
            .where(outbox.c.subscriber_id == subscriber_id))}


def welcomed_in(sink: CountingHandler, edition_id: int) -> int:
    return sum(n for mid, n in sink.message_ids.items() if mid.startswith(f"<e{edition_id}."))


def confirm(app: App, address: str = NEW) -> int:
    sid = app.subscribers.add(address, "en")
    assert app.subscribers.confirm(sid, then=queue_welcome(app)) is SubscriberState.ACTIVE
    return sid


def test_the_welcome_is_the_newest_edition_going_out_or_gone_out(app: App) -> None:
    assert app.editions.welcome_edition() is None  # nothing sent yet: no welcome
    first = make_edition(app)
    assert app.editions.welcome_edition() is None  # approved is not going out
    app.editions.set_state(first, EditionState.SENDING)
    assert app.editions.welcome_edition().id == first  # type: ignore[union-attr]
    app.editions.set_state(first, EditionState.SENT)
    second = make_edition(app)
    app.editions.set_state(second, EditionState.SENDING)
    app.editions.pause(second)
    paused = app.editions.welcome_edition()
    assert paused is not None
    assert (paused.id, paused.state) == (second, EditionState.PAUSED)
    app.editions.cancel(second)  # never reached readers: the one before is the welcome again
    assert app.editions.welcome_edition().id == first  # type: ignore[union-attr]


@pytest.mark.parametrize("paused", [False, True], ids=["sending", "paused"])
async def test_a_reader_who_confirms_mid_send_gets_that_edition_once_not_the_one_before(
        app: App, sink: CountingHandler, paused: bool) -> None:
    """Before, the welcome was the last *sent* edition, and the edition going out had already
    enumerated its list: the reader got the old edition and never the new one."""
    addresses = seed_subscribers(app, 4)
    old = make_edition(app)
    await send_edition(app, old)
    new = make_edition(app)
    assert start_edition(app, new) == 4  # the send is under way: its list is enqueued
    if paused:
        app.editions.pause(new)
    sid = confirm(app)
    assert rows_of(app, sid) == {new: "queued"}
    assert app.editions.info(new).total == 5  # counted with the confirmation
    assert await welcome(app, [sid]) == 0  # the edition's own send delivers it
    assert sink.per_rcpt[NEW] == 0
    if paused:
        assert app.editions.resume(new) is EditionState.SENDING
    summary = await send_edition(app, new)
    assert summary.enqueued == 0  # the reader was already in its outbox: one row, not two
    assert summary.report.sent == 5
    assert sink.per_rcpt == {**dict.fromkeys(addresses, 2), NEW: 1}
    assert welcomed_in(sink, new) == 5
    assert welcomed_in(sink, old) == 4  # the old edition went to the list only
    assert rows_of(app, sid) == {new: "sent"}
    assert app.editions.info(new).state is EditionState.SENT


async def test_a_reader_who_confirms_after_the_send_gets_the_sent_edition_at_once(
        app: App, sink: CountingHandler) -> None:
    seed_subscribers(app, 2)
    edition_id = make_edition(app)
    await send_edition(app, edition_id)
    sid = confirm(app)
    assert rows_of(app, sid) == {edition_id: "queued"}
    assert app.editions.info(edition_id).total == 3
    assert await welcome(app, [sid]) == 1
    assert sink.per_rcpt[NEW] == 1
    assert await welcome(app, [sid]) == 0  # a second call sends nothing more
    assert sink.per_rcpt[NEW] == 1
    assert rows_of(app, sid) == {edition_id: "sent"}


def test_an_edition_cannot_start_between_the_choice_of_welcome_and_the_commit(app: App) -> None:
    """The confirming transaction chose the last sent edition; an edition that starts before
    it commits must still enumerate the reader, or they would get neither. On PostgreSQL the
    choice locks the editions that could start (FOR SHARE), on SQLite the confirmation holds
    the write lock: either way the start waits for the commit."""
    seed_subscribers(app, 2)
    old = make_edition(app)
    start_edition(app, old)
    app.editions.set_state(old, EditionState.SENT)
    new = make_edition(app)
    sid = app.subscribers.add(NEW, "en")
    queue = queue_welcome(app)
    starter = threading.Thread(target=start_edition, args=(app, new))
    waited: list[bool] = []

    def then(conn: object, reader: object) -> None:
        queue(conn, reader)  # type: ignore[arg-type]
        starter.start()  # an edition starts while the confirmation is not yet committed
        time.sleep(1.0)
        waited.append(starter.is_alive())

    assert app.subscribers.confirm(sid, then=then) is SubscriberState.ACTIVE
    starter.join(timeout=30)
    assert waited == [True]  # the start waited for the confirmation
    assert rows_of(app, sid) == {old: "queued", new: "queued"}  # the welcome, and the new one
    assert app.editions.info(new).total == 3


def test_a_welcome_into_an_edition_still_being_enqueued_waits_for_its_list(
        app: App, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL a welcome row committed while the edition's list is still being enqueued
    (one long transaction) would be a worker's only claimable row: delivered, nothing
    unfinished, the edition marked sent before its list exists. ``enqueue_in`` takes the
    edition's enqueue lock, so the confirmation waits for the list. (SQLite deployments have
    one sending process, and the list's transaction is that process's.)"""
    if db_url.startswith("sqlite"):
        pytest.skip("the enqueue lock is PostgreSQL's")
    seed_subscribers(app, 4)
    edition_id = make_edition(app)
    halfway, go_on = threading.Event(), threading.Event()
    active = app.subscribers.stream_active

    def held_midway() -> Iterator[Recipient]:
        for i, reader in enumerate(active()):
            if i == 2:
                halfway.set()
                assert go_on.wait(60)
            yield reader

    monkeypatch.setattr(app.subscribers, "stream_active", held_midway)
    starter = threading.Thread(target=start_edition, args=(app, edition_id))
    starter.start()
    confirmer = threading.Thread(target=confirm, args=(app,))
    try:
        assert halfway.wait(30)
        assert app.editions.info(edition_id).state is EditionState.SENDING
        confirmer.start()
        time.sleep(1.0)
        assert confirmer.is_alive()  # waiting for the list
        assert app.outbox.total(edition_id) == 0
        assert app.outbox.editions_with_work() == []  # nothing a worker could take yet
    finally:
        go_on.set()
        starter.join(timeout=30)
        if confirmer.ident is not None:  # started
            confirmer.join(timeout=30)
    sid = app.subscribers.lookup(NEW)
    assert sid is not None
    assert rows_of(app, sid.id) == {edition_id: "queued"}
    assert app.outbox.total(edition_id) == 5 == app.editions.info(edition_id).total


def test_the_enqueued_total_is_kept_by_the_outbox_in_the_inserting_transaction(
        app: App) -> None:
    edition_id = make_edition(app)
    app.editions.set_state(edition_id, EditionState.SENDING)
    assert app.editions.info(edition_id).total is None  # not enqueued yet
    assert app.outbox.enqueue(edition_id, []) == 0
    assert app.editions.info(edition_id).total == 0  # enqueued, to nobody
    # Two batches (2,000 rows each), the second half already there: only new rows count.
    assert app.outbox.enqueue(edition_id, recipients(1500)) == 1500
    assert app.outbox.enqueue(edition_id, recipients(3000)) == 1500
    assert app.editions.info(edition_id).total == 3000 == app.outbox.total(edition_id)
    with app.engine.begin() as conn:
        [late] = recipients(1, start=3001)
        assert app.outbox.enqueue_in(conn, edition_id, late)
        assert not app.outbox.enqueue_in(conn, edition_id, late)  # ON CONFLICT: no second row
    assert app.editions.info(edition_id).total == 3001 == app.outbox.total(edition_id)
    assert app.outbox.counts(edition_id)[OutboxState.QUEUED] == 3001


def test_a_second_pass_adds_to_the_first_report() -> None:
    first = DeliveryReport(7, sent=9, deferred=1, elapsed=2.0, by_relay={"a": 9, "b": 1},
                           stopped="deferred", remaining=1)
    later = DeliveryReport(7, sent=1, elapsed=0.5, by_relay={"b": 1}, stopped="deferred",
                           remaining=1)
    both = first.then(later)
    assert (both.sent, both.deferred, both.attempted, both.elapsed) == (10, 1, 11, 2.5)
    assert both.by_relay == {"a": 9, "b": 2}
    assert (both.stopped, both.remaining) == ("deferred", 1)
