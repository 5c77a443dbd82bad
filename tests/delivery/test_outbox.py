"""The outbox state machine on SQLite and PostgreSQL (the ``db`` fixture runs both)."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import Engine, select

from mailer.delivery.outbox import Outbox, Outcome
from mailer.delivery.report import edition_report, format_report
from mailer.models import OutboxState
from mailer.schema import outbox as outbox_table
from tests.delivery.helpers import FakeClock, make_edition, recipients

LEASE = timedelta(minutes=1)


def test_enqueue_is_idempotent(db: Engine) -> None:
    box = Outbox(db, FakeClock())
    ed = make_edition(db)
    people = recipients(30, ("qq.com", "163.com"))
    assert box.enqueue(ed, people) == 30
    assert box.enqueue(ed, people) == 0
    assert box.enqueue(ed, recipients(35, ("qq.com", "163.com"))) == 5
    assert box.counts(ed)[OutboxState.QUEUED] == 35
    with db.connect() as conn:
        domains = {r.domain for r in conn.execute(select(outbox_table.c.domain))}
    assert domains == {"qq.com", "163.com"}  # the domain only, never the address


def test_claim_leases_rows_once(db: Engine) -> None:
    box = Outbox(db, FakeClock())
    ed = make_edition(db)
    box.enqueue(ed, recipients(10))
    a = box.claim(ed, 4, "a", LEASE)
    b = box.claim(ed, 10, "b", LEASE)
    assert len(a) == 4
    assert len(b) == 6
    assert not {r.subscriber_id for r in a} & {r.subscriber_id for r in b}
    assert box.claim(ed, 10, "c", LEASE) == []
    assert all(r.attempts == 1 for r in a + b)


def test_concurrent_claims_never_overlap(db: Engine) -> None:
    box = Outbox(db, FakeClock())
    ed = make_edition(db)
    box.enqueue(ed, recipients(200))
    got: dict[str, list[int]] = {}

    def worker(name: str) -> None:
        mine: list[int] = []
        while rows := box.claim(ed, 7, name, LEASE):
            mine.extend(r.subscriber_id for r in rows)
        got[name] = mine

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for ids in got.values() for i in ids]
    assert sorted(every) == list(range(1, 201))


def test_expired_lease_is_reclaimed_by_another_owner(db: Engine) -> None:
    clock = FakeClock()
    box = Outbox(db, clock)
    ed = make_edition(db)
    box.enqueue(ed, recipients(3))
    assert len(box.claim(ed, 10, "dead", LEASE)) == 3
    clock.advance(LEASE / 2)
    assert box.claim(ed, 10, "other", LEASE) == []
    clock.advance(LEASE)
    again = box.claim(ed, 10, "other", LEASE)
    assert len(again) == 3
    assert all(r.attempts == 2 for r in again)
    # The dead owner's late record is ignored: the row belongs to "other" now.
    assert box.record(ed, "dead", [Outcome(again[0].subscriber_id, OutboxState.SENT, 250)]) == 0


def test_record_moves_rows_to_final_states(db: Engine) -> None:
    clock = FakeClock()
    box = Outbox(db, clock)
    ed = make_edition(db)
    box.enqueue(ed, recipients(6, ("qq.com",)))
    rows = box.claim(ed, 10, "me", LEASE)
    states = [OutboxState.SENT, OutboxState.SENT, OutboxState.BOUNCED,
              OutboxState.CONTENT_REJECTED, OutboxState.FAILED, OutboxState.DEFERRED]
    outcomes = [
        Outcome(r.subscriber_id, s, 250 if s is OutboxState.SENT else 550, "reply", "relay1",
                clock() + timedelta(minutes=5) if s is OutboxState.DEFERRED else None)
        for r, s in zip(rows, states, strict=True)
    ]
    assert box.record(ed, "me", outcomes) == 6
    counts = box.counts(ed)
    assert counts[OutboxState.SENT] == 2
    assert counts[OutboxState.DEFERRED] == 1
    assert box.unfinished(ed) == 1
    # The deferred row comes back only when due.
    assert box.claim(ed, 10, "me", LEASE) == []
    assert box.next_due(ed) == clock() + timedelta(minutes=5)
    clock.advance(timedelta(minutes=5))
    assert [r.subscriber_id for r in box.claim(ed, 10, "me", LEASE)] == [outcomes[5].subscriber_id]
    # A final row is never claimed or changed again.
    assert box.record(ed, "me", [Outcome(outcomes[0].subscriber_id, OutboxState.FAILED)]) == 0


def test_release_returns_unsent_rows_without_counting_an_attempt(db: Engine) -> None:
    box = Outbox(db, FakeClock())
    ed = make_edition(db)
    box.enqueue(ed, recipients(5))
    box.claim(ed, 5, "me", LEASE)
    assert box.release(ed, "me") == 5
    rows = box.claim(ed, 5, "me", LEASE)
    assert len(rows) == 5
    assert all(r.attempts == 1 for r in rows)


def test_report_counts_each_outcome_per_domain(db: Engine) -> None:
    box = Outbox(db, FakeClock())
    ed = make_edition(db)
    box.enqueue(ed, recipients(4, ("qq.com", "163.com")))
    rows = box.claim(ed, 10, "me", LEASE)
    box.record(ed, "me", [
        Outcome(r.subscriber_id,
                OutboxState.CONTENT_REJECTED if r.domain == "qq.com" else OutboxState.SENT)
        for r in rows
    ])
    report = edition_report(db, ed)
    assert report.by_domain["qq.com"][OutboxState.CONTENT_REJECTED] == 2
    assert report.by_domain["163.com"][OutboxState.SENT] == 2
    assert report.rate("qq.com", OutboxState.CONTENT_REJECTED) == 1.0
    assert report.total == 4
    text = format_report(report)
    assert "qq.com" in text
    assert "content_rejected" in text
    assert "@" not in text


def test_renew_keeps_a_long_batch_from_being_taken_over(db: Engine) -> None:
    clock = FakeClock()
    box = Outbox(db, clock)
    ed = make_edition(db)
    box.enqueue(ed, recipients(3))
    box.claim(ed, 10, "slow", LEASE)
    clock.advance(LEASE * 0.9)
    assert box.renew(ed, "slow", LEASE) == 3
    clock.advance(LEASE * 0.9)
    assert box.claim(ed, 10, "other", LEASE) == []  # without the renewal these would go
    clock.advance(LEASE * 0.2)
    assert len(box.claim(ed, 10, "other", LEASE)) == 3


def test_latest_sent_is_the_readers_latest_message_the_relay_took(db: Engine) -> None:
    """What a bounce that names only its recipient is about (mailer/pipeline/inbound.py)."""
    clock = FakeClock()
    box = Outbox(db, clock)
    people = recipients(3)
    first, second, queued = make_edition(db), make_edition(db), make_edition(db)
    for ed in (first, second, queued):
        box.enqueue(ed, people)
    reader, never = people[0].id, people[2].id
    for ed in (second, first):  # the older edition is sent last, an hour later
        rows = box.claim(ed, 10, "me", LEASE)
        box.record(ed, "me", [Outcome(r.subscriber_id, OutboxState.FAILED if
                                      r.subscriber_id == never else OutboxState.SENT, 250)
                              for r in rows])
        clock.advance(timedelta(hours=1))
    assert box.latest_sent(reader) == first
    # A bounce already marked on it does not hide it: another copy may come.
    assert box.mark_returned(first, reader, OutboxState.BOUNCED, 550, "gone")
    assert box.latest_sent(reader) == first
    assert box.latest_sent(never) is None  # queued or left failed: never taken by the relay
    assert box.latest_sent(424242) is None
