"""The subscribe use case against real databases (SQLite and PostgreSQL): the decision, the
limits on confirmation mails across two processes, and the expiry of pending rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from subscribers.confirmations import ConfirmationQueue
from subscribers.errors import InputError
from subscribers.lifecycle import SubscriberState
from subscribers.schema import signup_requests
from subscribers.settings import SignupSettings
from subscribers.signup import Action, SignupDesk, choose
from subscribers.store import SubscriberStore
from tests.subscribers.conftest import Clock

S = SubscriberState


@pytest.mark.parametrize(("state", "language", "asked", "action"), [
    (None, None, "en", Action.CONFIRM_SUBSCRIPTION),
    (S.PENDING, "en", "zh-Hans", Action.CONFIRM_SUBSCRIPTION),
    (S.UNSUBSCRIBED, "en", "en", Action.CONFIRM_SUBSCRIPTION),
    (S.COMPLAINED, "en", "en", Action.CONFIRM_SUBSCRIPTION),
    (S.ACTIVE, "en", "en", Action.NOTHING),
    (S.ACTIVE, "en", "zh-Hant", Action.CONFIRM_LANGUAGE),
])
def test_choose(state: S | None, language: str | None, asked: str, action: Action) -> None:
    assert choose(state, language, asked) is action


def desk(store: SubscriberStore, clock: Clock, **limits: object) -> SignupDesk:
    settings = SignupSettings(**limits)  # type: ignore[arg-type]
    return SignupDesk(store, ConfirmationQueue(store.engine, clock), settings, clock)


def queued(d: SignupDesk) -> int:
    return d.queue.pending()


def test_one_confirmation_per_window_a_few_in_all_across_processes(
        store: SubscriberStore, clock: Clock) -> None:
    one, two = desk(store, clock), desk(store, clock)  # two serve processes, one database
    for _ in range(5):
        one.request("victim@corp.example", "en")
        two.request("victim@Corp.Example", "en")
    assert one.intake() + two.intake() == 10
    record = store.lookup("victim@corp.example")
    assert record is not None
    assert record.state is S.PENDING
    assert queued(one) == 1
    sid, since = record.id, record.state_changed_at
    one.queue.done(sid)  # sent
    for day in range(1, 6):
        clock.advance(days=1, seconds=1)
        two.request("victim@corp.example", "zh-Hant")
        two.intake()
        sent = queued(two)
        two.queue.done(sid)
        assert sent == (1 if day < 3 else 0), day  # three in all, then silence
    after = store.get(sid)
    assert after is not None
    assert after.state_changed_at == since  # a link sent on the first day still confirms


def test_a_cap_per_recipient_domain_per_hour(store: SubscriberStore, clock: Clock) -> None:
    d = desk(store, clock, domain_per_hour=3)
    for i in range(6):
        d.request(f"staff{i}@corp.example", "en")
    d.request("someone@other.example", "en")
    d.intake()
    assert queued(d) == 4  # three at corp.example, one elsewhere
    assert store.count(S.PENDING) == 4  # a request over the cap changes nothing
    clock.advance(hours=1)
    d.request("staff5@corp.example", "en")
    d.intake()
    assert queued(d) == 5


def test_a_request_is_the_same_work_and_decided_later(store: SubscriberStore,
                                                      clock: Clock) -> None:
    d = desk(store, clock)
    sid = store.add("reader@qq.com", "zh-Hant", confirmed=True)
    d.request("reader@qq.com", "en")
    d.request("new@qq.com", "en")
    with store.engine.connect() as conn:
        rows = conn.execute(select(signup_requests)).all()
        assert len(rows) == 2
        assert not any(b"qq.com" in bytes(r.email_ct) for r in rows)  # sealed
    assert store.lookup("new@qq.com") is None  # nothing decided yet
    assert d.intake() == 2
    reader = store.get(sid)
    assert reader is not None
    assert reader.language == "zh-Hant"  # unchanged until the reader confirms
    assert sorted(str(language) for _, _, language in d.queue.claim()) == ["None", "en"]
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(signup_requests)).scalar() == 0
    with pytest.raises(InputError):
        d.request("not an address", "en")
    with pytest.raises(InputError):
        d.request("x@qq.com", "klingon")


def test_pending_rows_expire_and_only_a_suppression_is_remembered(
        store: SubscriberStore, clock: Clock) -> None:
    d = desk(store, clock, pending_ttl=timedelta(days=30))
    stranger, _ = store.subscribe("stranger@qq.com", "en")
    left = store.add("left@qq.com", "en", confirmed=True)
    store.unsubscribe(left)
    store.subscribe("left@qq.com", "en")  # someone typed it in again, never confirmed
    reader = store.add("reader@qq.com", "en", confirmed=True)
    clock.advance(days=29)
    fresh, _ = store.subscribe("fresh@qq.com", "en")
    assert d.expire() == 0
    clock.advance(days=1, seconds=1)
    assert d.expire() == 2
    assert store.get(stranger) is None
    assert store.get(left) is None
    assert store.get(fresh) is not None
    assert store.get(reader) is not None
    assert store.forgotten_state("left@qq.com") == "unsubscribed"  # still suppressed
    assert store.forgotten_state("stranger@qq.com") is None  # a stranger is not remembered


def test_a_request_the_config_no_longer_allows_is_dropped_not_stuck(
        store: SubscriberStore, clock: Clock) -> None:
    from dataclasses import replace

    d = desk(store, clock)
    d.request("early@qq.com", "zh-Hans+en")
    d.request("later@qq.com", "en")
    store.settings = replace(store.settings, bilingual=())  # the operator dropped the pair
    assert d.intake() == 2
    assert store.lookup("early@qq.com") is None
    assert store.lookup("later@qq.com") is not None  # not held up behind it
    assert d.intake() == 0
