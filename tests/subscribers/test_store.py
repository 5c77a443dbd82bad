"""SubscriberStore against real SQLite and PostgreSQL: nothing plaintext, states, streaming."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from mailer.db import open_engine
from subscribers.codec import Codec
from subscribers.errors import InputError, WrongKeyError
from subscribers.keys import KeyRing
from subscribers.lifecycle import Event, SubscriberState
from subscribers.schema import subscribers as t
from subscribers.settings import ListSettings
from subscribers.store import _IN_CHUNK, SubscriberStore
from tests.subscribers.conftest import LANGS, Clock


def test_add_then_stream_and_lookup(store: SubscriberStore) -> None:
    a = store.add("alice@qq.com", "zh-Hans", confirmed=True)
    b = store.add("bob@163.com", "en", confirmed=True)
    c = store.add("carol@126.com", None)  # pending: not streamed
    got = {r.id: r for r in store.stream_active(batch_size=1)}
    assert set(got) == {a, b}
    assert got[a].address == "alice@qq.com"
    assert got[a].language == "zh-Hans"
    assert got[b].domain == "163.com"
    assert store.count() == 2
    assert store.count(None) == 3
    found = store.lookup("alice@QQ.COM")
    assert found is not None
    assert found.id == a
    pending = store.get(c)
    assert pending is not None
    assert pending.state is SubscriberState.PENDING
    assert pending.language == "zh-Hans"  # the first configured language is the default


def test_rows_hold_no_plaintext(store: SubscriberStore) -> None:
    store.add("secret.person@qq.com", "en", confirmed=True)
    with store.engine.connect() as conn:
        row = conn.execute(select(t)).one()
    blob = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row)
    assert b"secret.person" not in blob
    assert b"qq.com" not in blob


def test_same_address_is_one_subscriber(store: SubscriberStore) -> None:
    a = store.add("dora@example.org", "en")
    assert store.add("dora@EXAMPLE.org", "en", confirmed=True) == a
    assert store.count() == 1  # the confirmed import promoted the pending row


def test_bad_input_is_rejected_without_echoing_it(store: SubscriberStore) -> None:
    with pytest.raises(InputError) as exc:
        store.add("not-an-address", "en")
    assert "not-an-address" not in str(exc.value)
    with pytest.raises(InputError, match="unknown language"):
        store.add("eve@example.org", "fr")


def test_unsubscribe_is_seen_by_the_next_lookup(store: SubscriberStore) -> None:
    ids = [store.add(f"user{i}@example.org", "en", confirmed=True) for i in range(5)]
    first = store.get_recipients(ids)
    assert set(first) == set(ids)
    # A concurrent unsubscribe (the web endpoint, another connection) lands mid-send...
    other = SubscriberStore(store.engine, store.codec, store.clock, LANGS)
    assert other.unsubscribe(ids[2]) is SubscriberState.UNSUBSCRIBED
    # ...and the sender's next pre-batch lookup no longer returns that recipient.
    assert set(store.get_recipients(ids)) == set(ids) - {ids[2]}
    assert ids[2] not in {r.id for r in store.stream_active()}


def test_state_timestamps(store: SubscriberStore, clock: Clock) -> None:
    sid = store.add("frank@example.org", "en")
    clock.advance(hours=1)
    assert store.confirm(sid) is SubscriberState.ACTIVE
    clock.advance(hours=1)
    assert store.set_state(sid, SubscriberState.BOUNCED)
    rec = store.get(sid)
    assert rec is not None
    assert rec.state is SubscriberState.BOUNCED
    assert rec.confirmed_at is not None
    assert rec.bounced_at == clock.now
    assert rec.created_at < rec.confirmed_at < rec.bounced_at


def test_wrong_key_is_refused_before_any_write(store: SubscriberStore, tmp_path: object,
                                               clock: Clock) -> None:
    store.add("gina@example.org", "en", confirmed=True)
    with store.engine.connect() as conn:
        before = conn.execute(select(t)).all()
    other = KeyRing.generate(store.codec.ring.path)
    wrong = SubscriberStore(store.engine, Codec(other), clock, LANGS)
    with pytest.raises(WrongKeyError) as exc:
        wrong.verify_key()
    assert exc.value.exit_code == 2
    with store.engine.connect() as conn:
        assert conn.execute(select(t)).all() == before


def test_gmail_folding_only_when_configured(store: SubscriberStore) -> None:
    a = store.add("first.last+news@gmail.com", "en", confirmed=True)
    assert store.add("firstlast@googlemail.com", "en") != a  # default: nothing provider-specific
    folding = SubscriberStore(store.engine, store.codec, store.clock,
                              ListSettings(languages=LANGS.languages, normalise_gmail_dots=True))
    b = folding.add("other.person@gmail.com", "en", confirmed=True)
    assert folding.add("OtherPerson+x@googlemail.com", "en") == b
    # The address we deliver to is the one the subscriber gave, not the folded form.
    assert folding.get_recipients([b])[b].address == "other.person@gmail.com"


def test_stream_sees_an_unsubscribe_made_while_it_runs(store: SubscriberStore) -> None:
    for i in range(6):
        store.add(f"s{i}@example.org", "en", confirmed=True)
    order = [r.id for r in store.stream_active(batch_size=2)]  # the walk's own order
    assert len(order) == 6
    other = SubscriberStore(store.engine, store.codec, store.clock, LANGS)
    seen = []
    for recipient in store.stream_active(batch_size=2):
        seen.append(recipient.id)
        if len(seen) == 1:
            other.unsubscribe(order[4])  # a later batch: must not be yielded
    assert seen == order[:4] + order[5:]


def test_a_failed_batch_leaves_none_of_its_rows(store: SubscriberStore) -> None:
    # The bulk path (binary COPY on PostgreSQL, executemany on SQLite) must write inside the
    # caller's transaction: an import batch that fails after its insert leaves nothing behind.
    rows = [(f"reader{i}@qq.com", "en") for i in range(50)]

    def batch_that_fails_after_its_insert() -> None:
        with store.engine.begin() as conn:
            result = store.add_batch(rows, Event.IMPORT_CONFIRMED, conn=conn)
            assert result.inserted == 50
            assert len(conn.execute(select(t.c.id)).all()) == 50  # seen inside the transaction
            raise RuntimeError("the batch fails after its insert")

    with pytest.raises(RuntimeError, match="after its insert"):
        batch_that_fails_after_its_insert()
    assert store.count(None) == 0
    again = store.add_batch(rows, Event.IMPORT_CONFIRMED)
    assert again.inserted == 50
    assert {r.address for r in store.stream_active()} == {a for a, _ in rows}


def test_a_batch_goes_in_blind_index_order_with_ids_in_the_same_order(
        store: SubscriberStore) -> None:
    # Both unique B-trees are filled in one ascending sweep: the new rows' ids are handed out
    # in the order of their blind indexes and the rows are written in that order. Existing
    # rows and duplicates inside the batch keep their own id.
    old = store.add("old@qq.com", "en", confirmed=True)
    rows = [(f"sweep{i}@qq.com", "en") for i in range(300)]
    rows[7:7] = [("old@qq.com", "en")]
    rows.append(rows[3])
    result = store.add_batch(rows, Event.IMPORT_CONFIRMED)
    assert (result.inserted, result.existing) == (300, 2)
    for (address, _), sid in zip(rows, result.ids, strict=True):
        found = store.lookup(address)
        assert found is not None
        assert found.id == sid
    assert result.ids[7] == old
    assert result.ids[-1] == result.ids[3]
    with store.engine.connect() as conn:
        new = conn.execute(select(t.c.id, t.c.email_index).where(t.c.id != old)).all()
        assert sorted(new, key=lambda r: r.id) == sorted(new, key=lambda r: bytes(r.email_index))
        if conn.dialect.name == "sqlite":
            written = [r[0] for r in conn.exec_driver_sql(
                "SELECT id FROM subscribers WHERE id != ? ORDER BY rowid", (old,))]
            assert written == sorted(written)


def test_existing_rows_are_found_in_chunks(store: SubscriberStore) -> None:
    # More blind indexes than one IN list takes: the existence check must see every one.
    rows = [(f"r{i}@163.com", "zh-Hans") for i in range(_IN_CHUNK + 7)]
    first = store.add_batch(rows, Event.IMPORT)
    second = store.add_batch(rows, Event.IMPORT_CONFIRMED)
    assert (first.inserted, second.inserted, second.existing) == (len(rows), 0, len(rows))
    assert second.ids == first.ids
    assert store.count(SubscriberState.ACTIVE) == len(rows)


def test_fetching_a_batch_of_recipients_reads_only_those_rows(tmp_path: Path,
                                                              ring: KeyRing) -> None:
    # The sender fetches each batch by id. If SQLite answered through the state index it would
    # read every active row per batch (N² for a send): count its VM steps while it answers.
    engine = open_engine(f"sqlite:///{tmp_path / 'plan.db'}")
    store = SubscriberStore(engine, Codec(ring), Clock(), LANGS)
    rows = [(f"p{i}@qq.com", "en") for i in range(5000)]
    ids = store.add_batch(rows, Event.IMPORT_CONFIRMED).ids
    steps = [0]

    @event.listens_for(engine, "connect")
    def count_steps(dbapi_conn: Any, _record: object) -> None:
        def tick() -> int:
            steps[0] += 1
            return 0
        dbapi_conn.set_progress_handler(tick, 100)

    got = store.get_recipients(ids[:10])
    assert sorted(got) == sorted(ids[:10])
    assert steps[0] * 100 < 5000, f"{steps[0] * 100} VM steps for 10 rows of 5,000"
    store.set_state(ids[0], "unsubscribed")
    assert ids[0] not in store.get_recipients(ids[:10])
    engine.dispose()
