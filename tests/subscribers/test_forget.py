"""Forgetting subscribers: the sealed address is erased, a keyed hash keeps it suppressed.
Against real SQLite and PostgreSQL, through the backup, reindex and the command line."""

from __future__ import annotations

import io
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from mailer.db import open_engine
from subscribers.codec import Codec
from subscribers.importexport import export_encrypted, import_file
from subscribers.keys import KeyRing
from subscribers.lifecycle import Event, SubscriberState
from subscribers.reindex import reindex
from subscribers.schema import forgotten
from subscribers.schema import subscribers as t
from subscribers.settings import ListSettings
from subscribers.store import SubscriberStore
from tests.subscribers.conftest import LANGS, Clock
from tests.subscribers.support import in_process, listed_ids, write_config


def every_byte(engine: Engine) -> bytes:
    with engine.connect() as conn:
        rows = [*conn.execute(select(t)), *conn.execute(select(forgotten))]
    return b"".join(v if isinstance(v, bytes) else str(v).encode() for r in rows for v in r)


def test_a_forgotten_reader_leaves_only_a_keyed_hash_and_stays_suppressed(
        store: SubscriberStore) -> None:
    gone = store.add("zhou.min@163.com", "zh-Hans", confirmed=True)
    stays = store.add("he.ping@qq.com", "en", confirmed=True)
    with store.engine.connect() as conn:
        sealed = conn.execute(select(t.c.email_ct).where(t.c.id == gone)).scalar_one()
    assert store.forget([gone, 12345]) == 1  # an unknown id is simply not there
    assert store.get(gone) is None
    assert store.lookup("zhou.min@163.com") is None
    assert store.count_forgotten() == 1
    assert sealed not in every_byte(store.engine)  # the ciphertext is gone, not just hidden
    assert {r.id for r in store.stream_active()} == {stays}

    # An import does not bring the address back: counted as listed and suppressed.
    result = store.add_batch([("zhou.min@163.com", "en"), ("new.reader@qq.com", "en")],
                             Event.IMPORT_CONFIRMED)
    assert (result.inserted, result.existing, result.suppressed) == (1, 1, 1)
    assert result.ids[0] == 0
    assert store.lookup("zhou.min@163.com") is None
    # --reactivate does, as a new row.
    again = store.add("zhou.min@163.com", "en", confirmed=True, reactivate=True)
    assert again not in (0, gone)
    assert store.count_forgotten() == 0
    found = store.get(again)
    assert found is not None
    assert found.state is SubscriberState.ACTIVE


def test_the_subscribe_form_starts_a_forgotten_reader_afresh(store: SubscriberStore) -> None:
    gone = store.add("wu.lan@126.com", "zh-Hant", confirmed=True)
    store.forget([gone])
    sid, state = store.subscribe("wu.lan@126.com", "zh-Hant")
    assert state is SubscriberState.PENDING
    assert sid != gone
    assert store.count_forgotten() == 0
    assert store.address_of(sid) == "wu.lan@126.com"  # sealed again, for the confirmation


def test_forget_suppressed_keeps_recent_ones_and_active_readers(
        store: SubscriberStore, clock: Clock) -> None:
    old = store.add("old@qq.com", "en", confirmed=True)
    store.unsubscribe(old)
    clock.advance(days=100)
    recent = store.add("recent@qq.com", "en", confirmed=True)
    store.unsubscribe(recent)
    active = store.add("active@qq.com", "en", confirmed=True)
    assert store.forget_suppressed(timedelta(days=90)) == 1
    assert store.get(old) is None
    assert store.get(recent) is not None
    assert store.get(active) is not None
    with store.engine.connect() as conn:
        assert conn.execute(select(forgotten.c.state)).scalars().all() == ["unsubscribed"]


def test_the_encrypted_backup_carries_the_forgotten_and_a_restore_never_undoes_them(
        store: SubscriberStore, tmp_path: Path, ring: KeyRing, clock: Clock) -> None:
    keep = store.add("keep@qq.com", "en", confirmed=True)
    later = store.add("later@qq.com", "en", confirmed=True)
    before = io.BytesIO()
    export_encrypted(store, before)  # ``later`` is still listed in this one
    store.forget([store.add("gone@qq.com", "en", confirmed=True), later])
    after = tmp_path / "after.backup"
    with after.open("wb") as fh:
        assert export_encrypted(store, fh) == 1

    fresh = SubscriberStore(open_engine(f"sqlite:///{tmp_path / 'fresh.db'}"), Codec(ring),
                            clock, LANGS)
    report = import_file(fresh, after)
    assert (report.restored, report.forgotten) == (1, 2)
    stale = tmp_path / "before.backup"
    stale.write_bytes(before.getvalue())
    again = import_file(fresh, stale)  # taken before the erasure: it must not undo it
    assert (again.restored, again.skipped) == (0, 2)
    assert fresh.get(later) is None
    assert fresh.get(keep) is not None
    assert fresh.add("gone@qq.com", "en", confirmed=True) == 0
    fresh.engine.dispose()


def test_reindex_erases_a_row_that_turns_out_to_be_a_forgotten_reader(
        engine: Engine, ring: KeyRing, clock: Clock) -> None:
    plain = SubscriberStore(engine, Codec(ring), clock, LANGS)
    plain.verify_index_rules()
    gone = plain.add("ma.lin@qq.com", "en", confirmed=True)
    plain.forget([gone])
    loud = plain.add("Ma.Lin@qq.com", "en", confirmed=True)  # a second spelling, still listed
    folding = SubscriberStore(engine, Codec(ring), clock, ListSettings(
        languages=LANGS.languages, bilingual=LANGS.bilingual,
        case_insensitive_domains=frozenset({"qq.com"})))
    report = reindex(folding)
    assert report.erased == (loud,)
    assert report.forgotten == 1
    assert folding.count(None) == 0


cli = in_process


def test_forget_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    ids = listed_ids(config, "yang.fan@qq.com,en\nxu.li@163.com,en\n")
    csv = tmp_path / "in.csv"
    capsys.readouterr()

    assert cli(config, "subscribers", "forget") == 2  # nothing named: refuse
    assert cli(config, "subscribers", "forget", "--suppressed-for", "soon") == 2
    assert cli(config, "subscribers", "forget", str(ids[0]), "7") == 0
    out = capsys.readouterr().out
    assert "forgot 1 subscribers" in out
    assert "1 of the ids were not listed" in out
    assert cli(config, "subscribers", "count", "--all-states") == 0
    lines: Any = capsys.readouterr().out.splitlines()
    assert "active: 1" in lines
    assert "forgotten: 1" in lines
    assert cli(config, "subscribers", "import", str(csv), "--confirmed") == 0
    assert "1 left suppressed" in capsys.readouterr().out


def test_find_and_forget_by_address_read_from_stdin(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A reader writes in asking to be erased: the operator has their address, not their id.
    # Addresses come on standard input, never as arguments, and are never printed back.
    config = write_config(tmp_path)
    listed_ids(config, "tang.yu@qq.com,en\nsong.jia@163.com,zh-Hant\n")
    capsys.readouterr()

    monkeypatch.setattr("sys.stdin", io.StringIO("tang.yu@QQ.com\n\nnobody@qq.com\nnot an address\n"))
    assert cli(config, "subscribers", "find") == 0
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"line 1: subscriber \d+, active, en, since .* UTC", out[0])
    assert out[1:] == ["line 3: not listed", "line 4: not listed"]

    monkeypatch.setattr("sys.stdin", io.StringIO("song.jia@163.com\nnobody@qq.com\n"))
    assert cli(config, "subscribers", "forget", "--stdin") == 0
    captured = capsys.readouterr()
    assert "forgot 1 subscribers" in captured.out
    assert "line 2: not listed" in captured.err
    monkeypatch.setattr("sys.stdin", io.StringIO("song.jia@163.com\n"))
    assert cli(config, "subscribers", "find") == 0
    captured = capsys.readouterr()
    assert captured.out == "line 1: forgotten (kept suppressed: unsubscribed)\n"
    for text in (captured.out, captured.err):
        assert "song" not in text
        assert "tang" not in text.lower()


def test_suppress_by_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    [sid] = listed_ids(config, "guo.ying@qq.com,en\n")
    csv = tmp_path / "in.csv"
    engine = open_engine(f"sqlite:///{tmp_path / 'data' / 'newsletter.db'}")
    capsys.readouterr()
    assert cli(config, "subscribers", "suppress", str(sid), "99", "--as", "complained") == 0
    assert capsys.readouterr().out.strip() == "1 subscribers now complained; 1 of the ids were not listed"
    with engine.connect() as conn:
        assert conn.execute(select(t.c.state)).scalar_one() == "complained"
    engine.dispose()
    assert cli(config, "subscribers", "suppress", str(sid), "--as", "active") == 2  # not a choice
    assert cli(config, "subscribers", "import", str(csv), "--confirmed") == 0
    assert "1 left suppressed" in capsys.readouterr().out


@pytest.mark.parametrize("forget_first", [False, True])
def test_an_import_does_not_confirm_a_form_resubscription_of_a_suppressed_reader(
        store: SubscriberStore, forget_first: bool) -> None:
    # Someone types the address of a reader who left into the public form: the row is pending
    # again (a confirmation goes out). An operator's later import of an old spreadsheet with
    # --confirmed must not turn that into mail the reader refused; their own click does.
    sid = store.add("luo.bin@qq.com", "en", confirmed=True)
    store.unsubscribe(sid)
    if forget_first:
        store.forget([sid])
    sid, state = store.subscribe("luo.bin@qq.com", "en")
    assert state is SubscriberState.PENDING
    result = store.add_batch([("luo.bin@qq.com", "en")], Event.IMPORT_CONFIRMED)
    assert (result.ids, result.changed, result.suppressed) == ([sid], 0, 1)
    found = store.get(sid)
    assert found is not None
    assert found.state is SubscriberState.PENDING
    assert store.confirm(sid) is SubscriberState.ACTIVE
    # Without that history, a pending row is confirmed by a confirmed import as before.
    fresh, _ = store.subscribe("new.reader@qq.com", "en")
    store.add_batch([("new.reader@qq.com", "en")], Event.IMPORT_CONFIRMED)
    found = store.get(fresh)
    assert found is not None
    assert found.state is SubscriberState.ACTIVE
