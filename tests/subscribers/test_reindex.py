"""Folding rules: recorded with the list, a changed config refused, ``reindex`` rebuilds and
merges. Against real SQLite and PostgreSQL, and through the command line."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import OperationalError

from mailer.db import open_engine
from subscribers.codec import Codec
from subscribers.errors import IndexRulesError
from subscribers.keys import KeyRing
from subscribers.lifecycle import SUPPRESSED, Event, SubscriberState
from subscribers.reindex import Candidate, reindex, survivor
from subscribers.schema import subscribers as t
from subscribers.settings import ListSettings
from subscribers.store import SubscriberStore
from tests.subscribers.conftest import LANGS, Clock
from tests.subscribers.support import add_storage_setting, in_process, listed_ids, write_config

FOLDING = ListSettings(languages=LANGS.languages, bilingual=LANGS.bilingual,
                       case_insensitive_domains=frozenset({"qq.com", "163.com"}))
T0 = datetime(2026, 1, 1, tzinfo=UTC)

candidate = st.builds(
    Candidate,
    id=st.integers(1, 2**63 - 1),
    state=st.sampled_from(list(SubscriberState)),
    state_changed_at=st.integers(0, 10**6).map(lambda s: T0 + timedelta(seconds=s)),
    created_at=st.integers(0, 10**6).map(lambda s: T0 + timedelta(seconds=s)),
)


@given(st.lists(candidate, min_size=1, max_size=6, unique_by=lambda c: c.id), st.randoms())
def test_the_survivor_keeps_any_suppression_and_does_not_depend_on_order(
        group: list[Candidate], rnd: Any) -> None:
    kept = survivor(group)
    shuffled = list(group)
    rnd.shuffle(shuffled)
    assert survivor(shuffled) == kept
    if any(c.state in SUPPRESSED for c in group):
        assert kept.state in SUPPRESSED
        latest = max(c.state_changed_at for c in group if c.state in SUPPRESSED)
        assert kept.state_changed_at == latest
    elif any(c.state is SubscriberState.ACTIVE for c in group):
        assert kept.state is SubscriberState.ACTIVE


def dump(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(t).order_by(t.c.id))]


@pytest.fixture
def folding(engine: Engine, ring: KeyRing, clock: Clock) -> SubscriberStore:
    return SubscriberStore(engine, Codec(ring), clock, FOLDING)


def test_rules_are_recorded_on_first_use_and_a_change_is_refused(
        store: SubscriberStore, folding: SubscriberStore) -> None:
    store.verify_index_rules()
    store.verify_index_rules()  # the same rules again: fine
    with pytest.raises(IndexRulesError) as exc:
        folding.verify_index_rules()
    assert exc.value.exit_code == 2
    assert "qq.com" in str(exc.value)
    assert "reindex" in str(exc.value)


def test_reindex_merges_spellings_of_one_mailbox_and_keeps_the_unsubscribe(
        store: SubscriberStore, folding: SubscriberStore, clock: Clock) -> None:
    store.verify_index_rules()
    loud = store.add("Li.Wei@qq.com", "zh-Hans", confirmed=True)
    clock.advance(seconds=60)
    quiet = store.add("li.wei@qq.com", "en", confirmed=True)
    store.unsubscribe(quiet)
    zhang = store.add("Zhang.San@163.com", "zh-Hant", confirmed=True)
    gmail = store.add("Chen.Mei@gmail.com", "en", confirmed=True)  # not a folding domain
    before = dump(store.engine)

    dry = reindex(folding, apply=False)
    assert dump(store.engine) == before  # a dry run writes nothing
    assert [(m.kept, m.dropped) for m in dry.merges] == [(quiet, (loud,))]
    with pytest.raises(IndexRulesError):
        folding.verify_index_rules()

    seen: list[tuple[int, int]] = []
    report = reindex(folding, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (4, 4)
    assert report.applied
    assert [(m.kept, m.state, m.dropped) for m in report.merges] == [
        (quiet, SubscriberState.UNSUBSCRIBED, (loud,))]
    assert report.changed == 1  # Zhang's index; li.wei@ was lower-case already
    folding.verify_index_rules()  # the new rules are the list's now
    with pytest.raises(IndexRulesError):
        store.verify_index_rules()  # and the old ones are refused

    assert folding.count(None) == 3
    for spelling in ("LI.WEI@qq.com", "li.wei@QQ.com", "Li.Wei@qq.com"):
        found = folding.lookup(spelling)
        assert found is not None
        assert (found.id, found.state) == (quiet, SubscriberState.UNSUBSCRIBED)
    found = folding.lookup("zhang.san@163.com")
    assert found is not None
    assert found.id == zhang
    found = folding.lookup("Chen.Mei@gmail.com")
    assert found is not None
    assert found.id == gmail
    assert folding.lookup("chen.mei@gmail.com") is None
    assert {r.id for r in folding.stream_active()} == {zhang, gmail}
    # An import of another spelling lands on the one row and leaves it unsubscribed.
    result = folding.add_batch([("LI.WEI@qq.com", "en")], Event.IMPORT_CONFIRMED)
    assert (result.inserted, result.ids, result.suppressed) == (0, [quiet], 1)


def test_a_failed_reindex_changes_nothing(store: SubscriberStore,
                                         folding: SubscriberStore) -> None:
    store.verify_index_rules()
    for i in range(12):
        store.add(f"Reader{i}@qq.com", "en", confirmed=True)
    before = dump(store.engine)

    def fail(done: int, total: int) -> None:
        raise KeyboardInterrupt  # the operator's Ctrl-C halfway

    with pytest.raises(KeyboardInterrupt):
        reindex(folding, progress=fail)
    assert dump(store.engine) == before
    with pytest.raises(IndexRulesError):
        folding.verify_index_rules()
    assert reindex(folding).changed == 12


cli = in_process


def test_the_cli_names_the_setting_and_its_line_then_reindexes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    assert len(listed_ids(config, "Wang.Fang@126.com,en\nwang.fang@126.com,en\n")) == 2
    capsys.readouterr()

    line = add_storage_setting(config, 'case_insensitive_domains = ["126.com", "QQ.com"]')
    assert cli(config, "subscribers", "count") == 2
    err = capsys.readouterr().err
    assert f"{config}:{line}" in err
    assert "storage.case_insensitive_domains" in err
    assert "reindex" in err
    assert "wang" not in err.lower()

    assert cli(config, "subscribers", "reindex", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "1 merges (dry run: nothing written)" in out
    assert cli(config, "subscribers", "count") == 2

    assert cli(config, "subscribers", "reindex") == 0
    out = capsys.readouterr().out
    assert re.search(r"merged: kept subscriber \d+ \(active\), removed \d+", out)
    assert "wang" not in out.lower()
    assert cli(config, "subscribers", "count") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1"


def test_a_bad_folding_domain_is_a_config_error_with_its_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    line = add_storage_setting(config, 'case_insensitive_domains = ["qq.com", "me@qq.com"]')
    assert cli(config, "subscribers", "count") == 2
    err = capsys.readouterr().err
    assert f"{config}:{line}" in err
    assert "storage.case_insensitive_domains[1]" in err


def test_reindex_locks_out_other_writers_from_the_start(
        db_url: str, engine: Engine, ring: KeyRing, clock: Clock) -> None:
    # No other write may land between the reindex reading a row and rewriting or merging it:
    # writers are locked out before the first read, so one meanwhile is refused (here after
    # 200 ms; the real processes wait out their busy or lock timeout).
    old = SubscriberStore(engine, Codec(ring), clock, LANGS)
    old.verify_index_rules()
    ids = [old.add(f"Reader{i}@qq.com", "en", confirmed=True) for i in range(3)]
    other = open_engine(db_url, create=False)
    outcome: list[str] = []

    def write_meanwhile(done: int, total: int) -> None:
        with other.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA busy_timeout=200")
            else:
                conn.exec_driver_sql("SET lock_timeout = '200ms'")
            try:
                conn.execute(update(t).where(t.c.id == ids[0]).values(language="zh-Hant"))
                conn.commit()
                outcome.append("committed")
            except OperationalError as exc:
                outcome.append(type(exc.orig).__name__)

    new = SubscriberStore(engine, Codec(ring), clock, FOLDING)
    assert reindex(new, progress=write_meanwhile).changed == 3
    assert outcome in (["OperationalError"], ["LockNotAvailable"])
    other.dispose()
