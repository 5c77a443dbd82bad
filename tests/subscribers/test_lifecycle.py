"""The lifecycle rules, pure: double opt-in, suppression, re-subscription."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subscribers.lifecycle import SUPPRESSED, Event, Recipient, SubscriberState, next_state

S = SubscriberState


def test_new_addresses() -> None:
    assert next_state(None, Event.FORM) is S.PENDING
    assert next_state(None, Event.IMPORT) is S.PENDING
    assert next_state(None, Event.IMPORT_CONFIRMED) is S.ACTIVE


@pytest.mark.parametrize("state", sorted(SUPPRESSED))
def test_imports_never_reactivate_without_the_flag(state: SubscriberState) -> None:
    assert next_state(state, Event.IMPORT_CONFIRMED) is state
    assert next_state(state, Event.IMPORT) is state
    assert next_state(state, Event.IMPORT_CONFIRMED, reactivate=True) is S.ACTIVE
    assert next_state(state, Event.IMPORT, reactivate=True) is S.PENDING


@pytest.mark.parametrize("state", sorted(SUPPRESSED))
def test_the_form_reactivates_only_through_double_opt_in(state: SubscriberState) -> None:
    assert next_state(state, Event.FORM) is S.PENDING
    assert next_state(S.PENDING, Event.CONFIRM) is S.ACTIVE


@given(st.sampled_from(list(S)), st.sampled_from([Event.IMPORT, Event.IMPORT_CONFIRMED]))
def test_a_form_resubscription_is_not_confirmed_by_an_import(state: SubscriberState,
                                                             event: Event) -> None:
    # Anyone can type a suppressed reader's address into the form: the row is pending again,
    # but only the reader's confirmation (or the operator's --reactivate) makes it active.
    pending = next_state(state, Event.FORM)
    if state is S.ACTIVE:
        return
    assert pending is S.PENDING
    assert next_state(pending, event, was_suppressed=state in SUPPRESSED) is (
        S.PENDING if state in SUPPRESSED or event is Event.IMPORT else S.ACTIVE)
    assert next_state(pending, Event.CONFIRM, was_suppressed=True) is S.ACTIVE
    assert next_state(pending, Event.IMPORT_CONFIRMED, reactivate=True,
                      was_suppressed=True) is S.ACTIVE


def test_confirm_is_idempotent_and_never_undoes_an_unsubscribe() -> None:
    assert next_state(S.ACTIVE, Event.CONFIRM) is S.ACTIVE
    assert next_state(S.UNSUBSCRIBED, Event.CONFIRM) is S.UNSUBSCRIBED


def test_terminal_events() -> None:
    assert next_state(S.ACTIVE, Event.UNSUBSCRIBE) is S.UNSUBSCRIBED
    assert next_state(S.UNSUBSCRIBED, Event.UNSUBSCRIBE) is S.UNSUBSCRIBED
    assert next_state(S.ACTIVE, Event.BOUNCE) is S.BOUNCED
    assert next_state(S.BOUNCED, Event.COMPLAINT) is S.COMPLAINED
    assert next_state(S.COMPLAINED, Event.UNSUBSCRIBE) is S.COMPLAINED
    assert next_state(S.ACTIVE, Event.FORM) is S.ACTIVE


def test_recipient_never_shows_its_address() -> None:
    r = Recipient(5, "hidden@QQ.com", "zh-Hans")
    assert r.domain == "qq.com"
    assert "hidden" not in repr(r)
    assert "hidden" not in str(r)
