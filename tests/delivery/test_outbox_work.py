"""Which editions a sender picks up (``Outbox.editions_with_work``, ``has_work``,
``editions_unfinished``), on SQLite and PostgreSQL: one rule for the daemon, ``send``,
``run --once`` and the workers. An edition already sent counts while rows added to it since
(a welcome, issue 17) wait; a paused or cancelled one never does."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from mailer.delivery.outbox import Outbox, Outcome
from mailer.models import OutboxState
from tests.delivery.helpers import FakeClock, make_edition, recipients

LEASE = timedelta(minutes=5)
LATER = timedelta(minutes=10)


def settle(box: Outbox, edition_id: int, *outcomes: OutboxState, later: timedelta = LATER) -> None:
    """Claim every row of the edition and record ``outcomes`` in id order (deferred ones wait
    ``later``)."""
    rows = box.claim(edition_id, 100, "me", LEASE)
    assert len(rows) == len(outcomes)
    box.record(edition_id, "me", [
        Outcome(r.subscriber_id, s, 451 if s is OutboxState.DEFERRED else 250,
                next_attempt_at=box.clock() + later if s is OutboxState.DEFERRED else None)
        for r, s in zip(sorted(rows, key=lambda r: r.subscriber_id), outcomes, strict=True)])


def test_a_sent_edition_is_picked_up_only_while_rows_added_since_wait(db: Engine) -> None:
    clock = FakeClock()
    box = Outbox(db, clock)
    sending = make_edition(db, "sending")
    box.enqueue(sending, recipients(2))
    # Edition sent to everyone, then a welcome the relay deferred.
    welcome = make_edition(db, "sent")
    box.enqueue(welcome, recipients(3))
    settle(box, welcome, OutboxState.SENT, OutboxState.SENT, OutboxState.DEFERRED)
    # Edition sent, then a welcome a crash left queued (enqueued, never delivered).
    queued = make_edition(db, "sent")
    box.enqueue(queued, recipients(1))
    # Edition sent, then a welcome a crashed sender left leased.
    leased = make_edition(db, "sent")
    box.enqueue(leased, recipients(1))
    assert len(box.claim(leased, 10, "dead", LEASE)) == 1
    done = make_edition(db, "sent")
    box.enqueue(done, recipients(2))
    settle(box, done, OutboxState.SENT, OutboxState.FAILED)
    empty_sent = make_edition(db, "sent")  # sent to a list of nobody: nothing to do, ever
    unstarted = make_edition(db, "sending")  # interrupted before its rows were enqueued
    paused = make_edition(db, "paused")
    box.enqueue(paused, recipients(2))
    cancelled = make_edition(db, "cancelled")
    box.enqueue(cancelled, recipients(2))
    draft = make_edition(db, "draft")

    assert box.editions_with_work() == [sending, queued]
    assert box.editions_with_work(unstarted=True) == [sending, queued, unstarted]
    waiting = [sending, welcome, queued, leased]
    assert box.editions_unfinished() == waiting  # the deferred and the leased row wait
    clock.advance(LATER)  # the deferral is due and the dead sender's lease ran out
    assert box.editions_with_work() == waiting
    has = {e: box.has_work(e) for e in (sending, welcome, queued, leased, done, empty_sent,
                                       unstarted, paused, cancelled, draft)}
    assert [e for e, yes in has.items() if yes] == [*waiting, unstarted]

    # The welcome is delivered: its edition drops out, nothing else changes.
    rows = box.claim(welcome, 10, "me", LEASE)
    assert [r.attempts for r in rows] == [2]
    box.record(welcome, "me", [Outcome(rows[0].subscriber_id, OutboxState.SENT, 250)])
    assert box.editions_with_work() == [sending, queued, leased]
    assert not box.has_work(welcome)
    assert box.counts(welcome)[OutboxState.SENT] == 3


def test_a_welcome_that_keeps_being_deferred_ends_failed_and_is_not_picked_up_again(
        db: Engine) -> None:
    """The normal bounds: the engine's classifier turns the last deferral into ``failed``;
    from then on the sent edition is finished for good."""
    clock = FakeClock()
    box = Outbox(db, clock)
    ed = make_edition(db, "sent")
    box.enqueue(ed, recipients(1))
    settle(box, ed, OutboxState.DEFERRED)
    clock.advance(LATER)
    assert box.editions_with_work() == [ed]
    settle(box, ed, OutboxState.FAILED)
    clock.advance(LATER)
    assert box.editions_with_work(unstarted=True) == []
    assert box.editions_unfinished() == []
