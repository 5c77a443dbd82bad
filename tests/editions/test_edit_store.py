"""``EditionStore.edit``, ``post_uses`` and ``create``'s confirmation, on SQLite and PostgreSQL
(the admin calls these as the CLI does)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from mailer.db import open_engine
from mailer.editions.store import EditionStore, PostUse
from mailer.errors import EditionError
from mailer.models import EditionState as S
from tests.editions.helpers import T0, Clock, add_posts


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> EditionStore:
    return EditionStore(engine, Clock(), languages=("en", "zh-Hans"))


def test_edit_changes_only_the_languages_named(engine: Engine, store: EditionStore) -> None:
    add_posts(engine, 1)
    eid = store.create(notes={"en": "Hi", "zh-Hans": "你好"}, subjects={"en": "Week"})
    assert eid is not None
    info = store.edit(eid, notes={"en": " Hello \n"}, subjects={"zh-Hans": "本周"})
    assert dict(info.notes) == {"en": "Hello", "zh-Hans": "你好"}
    assert dict(info.subjects) == {"en": "Week", "zh-Hans": "本周"}
    info = store.edit(eid, notes={"zh-Hans": None}, subjects={"en": ""})
    assert dict(info.notes) == {"en": "Hello"}
    assert dict(info.subjects) == {"zh-Hans": "本周"}
    edition = store.load(eid)
    assert edition.subjects == {"zh-Hans": "本周"}
    assert edition.notes == {"en": "Hello"}


def test_edit_is_refused_once_sending_and_checks_its_input(engine: Engine,
                                                           store: EditionStore) -> None:
    add_posts(engine, 1)
    eid = store.create()
    assert eid is not None
    for bad, said in (({"fr": "x"}, "configured languages"), ({"en": "a\nb"}, "one line"),
                      ({"en": "x" * 201}, "at most 200")):
        with pytest.raises(EditionError, match=said):
            store.edit(eid, subjects=bad)
    with pytest.raises(EditionError, match="nothing to change"):
        store.edit(eid)
    store.schedule(eid, T0 + timedelta(days=1))
    store.approve(eid)
    info = store.edit(eid, subjects={"en": "Fixed"})
    assert info.state is S.SCHEDULED  # a change withdraws the approval
    assert info.approved_at is None
    store.set_state(eid, S.SENDING)
    with pytest.raises(EditionError, match="is sending; its subject and intro note"):
        store.edit(eid, notes={"en": "late"})
    assert store.info(eid).notes == {}


def test_create_refuses_posts_in_use_unless_confirmed(engine: Engine,
                                                      store: EditionStore) -> None:
    a, b, c = add_posts(engine, 3)
    first = store.create([a])
    second = store.create([b])
    assert first is not None
    assert second is not None
    store.set_state(first, S.SENDING)
    store.set_state(first, S.SENT)
    assert store.post_uses([a, b, c]) == [PostUse(a, first, S.SENT), PostUse(b, second, S.DRAFT)]
    with pytest.raises(EditionError, match=f"already sent: post {a} "):
        store.create([a, c])
    assert len(store.find()) == 2
    third = store.create([a, c], include_sent=True)
    assert third is not None
    store.cancel(second)
    assert store.post_uses([b]) == []  # a cancelled edition holds nothing
    assert store.create([b]) is not None
