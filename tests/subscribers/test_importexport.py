"""CSV import (encodings, problems by line, batches, resume, suppression) and backups."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from mailer.db import open_engine
from subscribers.codec import Codec
from subscribers.errors import InputError, WrongKeyError
from subscribers.importexport import (
    ImportReport,
    RowProblem,
    detect_encoding,
    export_csv,
    export_encrypted,
    import_file,
)
from subscribers.keys import KeyRing
from subscribers.lifecycle import SubscriberState
from subscribers.schema import subscribers as t
from subscribers.store import SubscriberStore
from tests.subscribers.conftest import LANGS, Clock


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_utf8_with_bom_and_optional_language(store: SubscriberStore, tmp_path: Path) -> None:
    f = write(tmp_path / "in.csv", "email,language\r\na@qq.com,en\r\nb@163.com,\r\n", "utf-8-sig")
    assert detect_encoding(f)[0] == "utf-8-sig"
    report = import_file(store, f, confirmed=True)
    assert (report.inserted, report.problem_count, report.encoding) == (2, 0, "utf-8-sig")
    langs = {r.address: r.language for r in store.stream_active()}
    assert langs == {"a@qq.com": "en", "b@163.com": "zh-Hans"}


def test_header_without_language_column(store: SubscriberStore, tmp_path: Path) -> None:
    f = write(tmp_path / "in.csv", "Email\nc@126.com\n")
    assert import_file(store, f).inserted == 1
    assert store.count(SubscriberState.PENDING) == 1  # not --confirmed: double opt-in pending


def test_gb18030_is_detected(store: SubscriberStore, tmp_path: Path) -> None:
    text = "email,language,姓名\n张三@qq.com,zh-Hans,张三\nli@163.com,ZH-HANT,李四\n"
    f = write(tmp_path / "gbk.csv", text, "gb18030")
    report = import_file(store, f, confirmed=True)
    assert report.encoding == "gb18030"
    assert report.inserted == 2
    got = {r.address: r.language for r in store.stream_active()}
    assert got == {"张三@qq.com": "zh-Hans", "li@163.com": "zh-Hant"}


def test_forced_wrong_encoding_is_a_clear_error(store: SubscriberStore, tmp_path: Path) -> None:
    f = write(tmp_path / "gbk.csv", "email,language,名\nx@qq.com,en,张\n", "gb18030")
    with pytest.raises(InputError, match=r"not valid utf-8.*--encoding"):
        import_file(store, f, encoding="utf-8")


def test_problems_are_reported_by_line_and_good_rows_go_in(store: SubscriberStore,
                                                           tmp_path: Path) -> None:
    f = write(tmp_path / "in.csv", "email,language\n"
              "ok1@qq.com,en\n"          # 2
              "not-an-address,en\n"      # 3
              "ok2@qq.com,fr\n"          # 4
              "\n"                       # 5 blank: ignored
              "ok1@QQ.COM,en\n"          # 6 same address as line 2 (domain case)
              "ok3@qq.com,zh-Hans+en\n")  # 7
    seen: list[RowProblem] = []
    report = import_file(store, f, confirmed=True, on_problem=seen.append)
    assert [(p.line, p.reason.split(" ")[0]) for p in seen] == [
        (3, "bad"), (4, "unknown"), (6, "duplicate")]
    assert report.inserted == 2
    assert report.problem_count == 3
    assert all("@" not in p.reason for p in seen)


def test_bad_header_names_file_and_line(store: SubscriberStore, tmp_path: Path) -> None:
    f = write(tmp_path / "in.csv", "mail,lang\na@qq.com,en\n")
    with pytest.raises(InputError) as exc:
        import_file(store, f)
    assert str(exc.value).startswith(f"{f}:1:")


class Interrupt(Exception):
    pass


def test_interrupted_import_resumes(store: SubscriberStore, tmp_path: Path) -> None:
    rows = "".join(f"user{i}@example.org,en\n" for i in range(23))
    f = write(tmp_path / "big.csv", "email,language\n" + rows + "bad,en\n")
    batches = 0

    def crash(_: ImportReport) -> None:
        nonlocal batches
        batches += 1
        if batches == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        import_file(store, f, confirmed=True, batch_size=5, on_batch=crash)
    assert store.count() == 10  # two batches committed, atomically each
    report = import_file(store, f, confirmed=True, batch_size=5)
    assert report.resumed_from == 11  # line 11 held the 10th address
    assert store.count() == 23
    assert report.inserted == 23
    assert report.existing == 0
    assert [p.line for p in report.problems] == [25]
    # Done: a later run of the same file starts over and finds everything listed.
    again = import_file(store, f, confirmed=True, batch_size=5)
    assert again.resumed_from == 0
    assert again.existing == 23
    assert again.inserted == 0


def test_imports_respect_suppression(store: SubscriberStore, tmp_path: Path) -> None:
    sid = store.add("gone@qq.com", "en", confirmed=True)
    store.unsubscribe(sid)
    f = write(tmp_path / "in.csv", "email\ngone@qq.com\n")
    report = import_file(store, f, confirmed=True)
    assert report.suppressed == 1
    state = store.get(sid)
    assert state is not None
    assert state.state is SubscriberState.UNSUBSCRIBED
    import_file(store, f, confirmed=True, reactivate=True)
    state = store.get(sid)
    assert state is not None
    assert state.state is SubscriberState.ACTIVE


def _dump(store: SubscriberStore) -> list[tuple[object, ...]]:
    cols = [c for c in t.c if c.name not in ("email_ct", "key_id")]
    with store.engine.connect() as conn:
        rows = conn.execute(select(*cols).order_by(t.c.id)).all()
    # SQLite hands back naive datetimes (written as UTC), PostgreSQL aware ones.
    return [tuple(v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None
                  else v for v in r) for r in rows]


def test_encrypted_backup_restores_losslessly(store: SubscriberStore, ring: KeyRing,
                                             clock: Clock, tmp_path: Path) -> None:
    ids = [store.add(f"p{i}@qq.com", "zh-Hant" if i % 2 else "en", confirmed=i != 3)
           for i in range(7)]
    clock.advance(hours=2)
    store.unsubscribe(ids[1])
    store.set_state(ids[2], SubscriberState.BOUNCED)
    buf = io.BytesIO()
    assert export_encrypted(store, buf) == 7
    blob = buf.getvalue()
    assert b"qq.com" not in blob
    assert b"p1@" not in blob
    path = tmp_path / "backup.bin"
    path.write_bytes(blob)

    fresh_engine = open_engine(f"sqlite:///{tmp_path / 'restored.db'}")
    fresh = SubscriberStore(fresh_engine, Codec(ring), clock, LANGS)
    report = import_file(fresh, path)
    assert report.restored == 7
    assert _dump(fresh) == _dump(store)
    assert {r.address for r in fresh.stream_active()} == {r.address for r in store.stream_active()}
    assert import_file(fresh, path).skipped == 7  # twice is harmless

    other = SubscriberStore(open_engine(f"sqlite:///{tmp_path / 'other.db'}"),
                            Codec(KeyRing.generate(ring.path)), clock, LANGS)
    with pytest.raises(WrongKeyError):
        import_file(other, path)
    assert other.count(None) == 0
    path.write_bytes(blob[:-20])
    with pytest.raises((InputError, WrongKeyError)):
        import_file(other, path)


def test_plaintext_export_has_the_contract_header(store: SubscriberStore) -> None:
    store.add("x@qq.com", "en", confirmed=True)
    store.add("pending@qq.com", "en")
    out = io.StringIO()
    assert export_csv(store, out) == 1
    assert out.getvalue() == "email,language\nx@qq.com,en\n"


@given(st.text(max_size=30))
def test_a_cell_never_starts_a_formula_and_reads_back(value: str) -> None:
    from subscribers.importexport import cell, uncell

    assert not cell(value).startswith(("=", "+", "-", "@", "\t", "\r"))
    assert uncell(cell(value)) == value
