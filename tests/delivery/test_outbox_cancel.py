"""A cancelled edition's unsent rows become ``cancelled``, whoever gives them back, and when."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from mailer.delivery.outbox import Outbox, Outcome
from mailer.delivery.report import edition_report, format_report
from mailer.models import OutboxState
from tests.delivery.helpers import FakeClock, make_edition, recipients, set_edition_state

LEASE = timedelta(minutes=1)


def test_cancel_marks_every_row_that_will_never_be_sent(db: Engine) -> None:
    clock = FakeClock()
    box = Outbox(db, clock)
    ed = make_edition(db)
    box.enqueue(ed, recipients(10))
    first = box.claim(ed, 3, "a", LEASE)
    box.record(ed, "a", [Outcome(first[0].subscriber_id, OutboxState.SENT, 250, "ok")])
    in_flight = box.claim(ed, 2, "b", LEASE)  # a live sender's rows: their outcome will come
    assert len(in_flight) == 2
    set_edition_state(db, ed, "cancelled")
    # The five queued rows are cancelled; leased ones wait for their sender (or its lease).
    clock.advance(LEASE / 2)
    assert box.cancel_unsent(ed) == 5
    clock.advance(LEASE)
    assert box.cancel_unsent(ed) == 4  # a's two and b's two: their leases are gone now
    counts = box.counts(ed)
    assert counts[OutboxState.CANCELLED] == 9
    assert counts[OutboxState.QUEUED] == counts[OutboxState.SENDING] == 0
    assert box.unfinished(ed) == 0
    table = format_report(edition_report(db, ed))
    assert "cancelled" in table.splitlines()[1]


def test_rows_a_sender_gives_back_after_the_cancel_stay_cancelled(db: Engine) -> None:
    box = Outbox(db, FakeClock())
    ed = make_edition(db)
    box.enqueue(ed, recipients(6))
    claimed = box.claim(ed, 4, "engine", LEASE)
    set_edition_state(db, ed, "cancelled")
    box.cancel_unsent(ed)  # the editor's cancel: two queued rows
    # The engine notices at its next batch and releases what it never handed to the relay.
    box.release_rows(ed, "engine", [claimed[0].subscriber_id])
    box.release(ed, "engine")
    assert box.counts(ed)[OutboxState.CANCELLED] == 6
    assert box.counts(ed)[OutboxState.QUEUED] == 0
