"""EditionStore on SQLite and PostgreSQL: creation, loading, states, the approval gate."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from mailer.db import open_engine
from mailer.editions.store import EditionStore
from mailer.errors import EditionError
from mailer.models import EditionState as S
from tests.editions.helpers import T0, Clock, add_posts


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(engine: Engine, clock: Clock) -> EditionStore:
    return EditionStore(engine, clock)


def test_create_takes_every_unsent_post_newest_first(engine: Engine, store: EditionStore) -> None:
    ids = add_posts(engine, 3)
    add_posts(engine, 1, is_new=False)  # backlog seen on first poll is never sent
    assert store.unsent_post_ids() == ids[::-1]
    eid = store.create(notes={"en": "Hello"})
    assert eid is not None
    edition = store.load(eid)
    assert [p.id for p in edition.posts] == ids[::-1]
    assert edition.state is S.DRAFT
    assert edition.notes == {"en": "Hello"}
    assert edition.posts[0].title == f"Post {2}"
    assert store.unsent_post_ids() == []
    assert store.create() is None  # nothing left to send


def test_cancelled_editions_release_their_posts(engine: Engine, store: EditionStore) -> None:
    ids = add_posts(engine, 2)
    eid = store.create()
    assert eid is not None
    store.cancel(eid)
    assert sorted(store.unsent_post_ids()) == sorted(ids)


def test_unknown_post_is_refused(engine: Engine, store: EditionStore) -> None:
    add_posts(engine, 1)
    with pytest.raises(EditionError, match="unknown post 999"):
        store.create([999])


def test_load_leaves_out_excluded_and_follows_the_new_order(
        engine: Engine, store: EditionStore) -> None:
    a, b, c = add_posts(engine, 3)
    eid = store.create([a, b, c])
    assert eid is not None
    store.reorder(eid, [c, a])
    assert [p.id for p in store.load(eid).posts] == [c, a, b]
    store.exclude(eid, a)
    assert [p.id for p in store.load(eid).posts] == [c, b]
    assert store.info(eid).excluded_ids == (a,)
    with pytest.raises(EditionError, match="not in this edition"):
        store.exclude(eid, 12345)


def test_schedule_in_the_past_is_refused(engine: Engine, store: EditionStore,
                                         clock: Clock) -> None:
    add_posts(engine, 1)
    eid = store.create()
    assert eid is not None
    with pytest.raises(EditionError, match="in the past"):
        store.schedule(eid, T0 - timedelta(minutes=1))
    store.schedule(eid, T0 + timedelta(hours=2))
    info = store.info(eid)
    assert info.state is S.SCHEDULED
    assert info.scheduled_at == T0 + timedelta(hours=2)


def test_due_lists_editions_whose_time_came(engine: Engine, store: EditionStore,
                                            clock: Clock) -> None:
    add_posts(engine, 2)
    first = store.create([store.unsent_post_ids()[0]])
    second = store.create()
    assert first is not None
    assert second is not None
    store.schedule(first, T0 + timedelta(hours=1))
    store.schedule(second, T0 + timedelta(hours=3))
    assert store.due(T0) == []
    assert store.due(T0 + timedelta(hours=1)) == [first]
    assert store.due(T0 + timedelta(hours=4)) == [first, second]
    assert [i.id for i in store.upcoming(T0 + timedelta(hours=2))] == [second]


def test_sent_edition_cannot_be_touched(engine: Engine, store: EditionStore) -> None:
    add_posts(engine, 1)
    eid = store.create()
    assert eid is not None
    store.set_state(eid, S.SENDING)
    store.set_state(eid, S.SENT)
    info = store.info(eid)
    assert info.started_at is not None
    assert info.finished_at is not None
    for action in (lambda: store.schedule(eid, T0 + timedelta(days=1)),
                   lambda: store.approve(eid), lambda: store.cancel(eid),
                   lambda: store.set_state(eid, S.SENDING)):
        with pytest.raises(EditionError, match=f"edition {eid}: was already sent"):
            action()
    with pytest.raises(EditionError, match="can no longer change"):
        store.exclude(eid, info.post_ids[0])


def test_approval_gate_refuses_to_send_unapproved(engine: Engine, clock: Clock) -> None:
    store = EditionStore(engine, clock, require_approval=True)
    add_posts(engine, 1)
    eid = store.create()
    assert eid is not None
    store.schedule(eid, T0 + timedelta(hours=1))
    with pytest.raises(EditionError, match="approval is required"):
        store.set_state(eid, S.SENDING)
    store.approve(eid)
    assert store.info(eid).state is S.APPROVED
    store.set_state(eid, S.SENDING)
    assert store.info(eid).state is S.SENDING


def test_changing_content_withdraws_approval(engine: Engine, store: EditionStore) -> None:
    a, b = add_posts(engine, 2)
    eid = store.create([a, b])
    assert eid is not None
    store.schedule(eid, T0 + timedelta(hours=1))
    store.approve(eid)
    store.exclude(eid, b)
    info = store.info(eid)
    assert info.state is S.SCHEDULED
    assert info.approved_at is None
    assert info.reason is not None
    assert "approve again" in info.reason


def test_held_then_approved_after_its_time_goes_now(engine: Engine, clock: Clock) -> None:
    store = EditionStore(engine, clock, require_approval=True)
    add_posts(engine, 1)
    eid = store.create()
    assert eid is not None
    store.schedule(eid, T0 + timedelta(hours=1))
    clock.advance(timedelta(hours=5))
    store.hold(eid, "not approved at its time")
    store.approve(eid)
    info = store.info(eid)
    assert info.state is S.APPROVED
    assert info.scheduled_at == clock.now
    assert store.due(clock.now) == [eid]


def test_pause_and_resume(engine: Engine, store: EditionStore) -> None:
    add_posts(engine, 1)
    eid = store.create()
    assert eid is not None
    with pytest.raises(EditionError, match="only paused or held"):
        store.resume(eid)
    store.set_state(eid, S.SENDING)
    store.pause(eid)
    assert store.info(eid).state is S.PAUSED
    assert store.resume(eid) is S.SENDING


def test_stale_writer_loses_the_race(engine: Engine, clock: Clock) -> None:
    """Two processes act on one edition: the second sees the first's change and is refused."""
    add_posts(engine, 1)
    a, b = EditionStore(engine, clock), EditionStore(engine, clock)
    eid = a.create()
    assert eid is not None
    a.set_state(eid, S.SENDING)
    with pytest.raises(EditionError, match="cannot go from sending to held"):
        b.hold(eid)


def test_an_edition_can_be_cancelled_while_sending(engine: Engine, store: EditionStore) -> None:
    """Issue 7: pause, resume and cancel while sending; the engine stops at its next batch."""
    add_posts(engine, 1)
    eid = store.create()
    assert eid is not None
    store.set_state(eid, S.SENDING)
    store.cancel(eid, "wrong attachment")
    info = store.info(eid)
    assert info.state is S.CANCELLED
    with pytest.raises(EditionError):
        store.resume(eid)
