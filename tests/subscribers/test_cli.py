"""The subscriber commands in-process: exit codes and one clear line on bad input or keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from mailer.cli.base import run_cli
from subscribers.keys import KeyRing
from subscribers.schema import subscribers as t
from tests.subscribers.support import run, write_config
from tests.support.fs import fill, tiny_filesystem


def cli(config: Path, *args: str) -> int:
    return run_cli(["--config", str(config), *args])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def rows(config: Path) -> list[tuple[object, ...]]:
    engine = create_engine(f"sqlite:///{config.parent / 'data' / 'newsletter.db'}")
    with engine.connect() as conn:
        out = [tuple(r) for r in conn.execute(select(t).order_by(t.c.id))]
    engine.dispose()
    return out


def test_keys_init_refuses_to_overwrite(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(config, "keys", "init") == 0
    key = config.parent / "secrets" / "keys.json"
    before = key.read_bytes()
    assert cli(config, "keys", "init") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "refusing to overwrite" in err
    assert key.read_bytes() == before


def test_import_count_export(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(config, "keys", "init") == 0
    csv = config.parent / "in.csv"
    csv.write_text("email,language\na@qq.com,en\nbad,en\nb@163.com,\n", encoding="utf-8")
    assert cli(config, "subscribers", "import", str(csv), "--confirmed") == 2
    err = capsys.readouterr().err
    assert f"{csv}:3: bad address" in err
    assert "bad," not in err  # the line number, never the content
    assert cli(config, "subscribers", "count") == 0
    assert capsys.readouterr().out.strip() == "2"
    out = config.parent / "out.csv"
    assert cli(config, "subscribers", "export", str(out)) == 2  # neither flag: refuse
    assert not out.exists()
    assert cli(config, "subscribers", "export", str(out), "--plaintext") == 0
    assert "WARNING" in capsys.readouterr().err
    lines = out.read_text().splitlines()
    assert lines[0] == "email,language"
    assert sorted(lines[1:]) == ["a@qq.com,en", "b@163.com,zh-Hans"]  # id order is random
    assert out.stat().st_mode & 0o077 == 0


def test_bad_header_is_one_line_naming_file_and_line(config: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(config, "keys", "init") == 0
    csv = config.parent / "in.csv"
    csv.write_text("name,lang\nx,y\n", encoding="utf-8")
    assert cli(config, "subscribers", "import", str(csv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"newsletter: error: {csv}:1:")


def test_wrong_key_exits_2_and_touches_nothing(config: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(config, "keys", "init") == 0
    csv = config.parent / "in.csv"
    csv.write_text("email\na@qq.com\nb@qq.com\n", encoding="utf-8")
    assert cli(config, "subscribers", "import", str(csv), "--confirmed") == 0
    before = rows(config)
    key = config.parent / "secrets" / "keys.json"
    key.unlink()
    KeyRing.create(key)  # somebody else's key file
    wrong = key.read_bytes()
    capsys.readouterr()
    for args in (["subscribers", "count"], ["keys", "rotate"],
                 ["subscribers", "import", str(csv), "--confirmed", "--reactivate"]):
        assert cli(config, *args) == 2
        err = capsys.readouterr().err
        assert "does not" in err
        assert "a@qq.com" not in err
    assert rows(config) == before
    assert key.read_bytes() == wrong


def test_missing_or_truncated_key_file(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(config, "keys", "init") == 0
    csv = config.parent / "in.csv"
    csv.write_text("email\na@qq.com\n", encoding="utf-8")
    assert cli(config, "subscribers", "import", str(csv)) == 0
    key = config.parent / "secrets" / "keys.json"
    data = key.read_bytes()
    key.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert cli(config, "subscribers", "count") == 2
    assert "truncated" in capsys.readouterr().err
    key.unlink()
    assert cli(config, "subscribers", "count") == 2
    assert "restore the key file" in capsys.readouterr().err
    assert not key.exists()  # never silently replaced while rows need the old one


def test_rotate_reports_progress_and_retires(config: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(config, "keys", "init") == 0
    csv = config.parent / "in.csv"
    csv.write_text("email\n" + "".join(f"u{i}@qq.com\n" for i in range(12)), encoding="utf-8")
    assert cli(config, "subscribers", "import", str(csv), "--confirmed") == 0
    key = config.parent / "secrets" / "keys.json"
    old = json.loads(key.read_text())["current"]
    capsys.readouterr()
    assert cli(config, "keys", "rotate", "--batch-size", "5") == 0
    captured = capsys.readouterr()
    assert "re-encrypted 5/12" in captured.err
    assert "re-encrypted 12/12" in captured.err
    assert f"retired {old}" in captured.out
    doc = json.loads(key.read_text())
    assert [k["id"] for k in doc["aead"]] == [doc["current"]]
    assert {r[3] for r in rows(config)} == {doc["current"]}
    assert cli(config, "subscribers", "count") == 0
    assert capsys.readouterr().out.strip() == "12"


def test_import_on_a_full_disk_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The real command on a real full filesystem (a 4 MB tmpfs holding the database)."""
    csv = tmp_path / "in.csv"
    csv.write_text("email,language\n" + "".join(f"reader{i}@qq.com,en\n" for i in range(3000)),
                   encoding="utf-8")
    with tiny_filesystem(tmp_path / "fs", "4m") as fs:
        config = write_config(fs / "site")
        assert run(config, "keys", "init").code == 0
        assert run(config, "subscribers", "count").out.strip() == "0"  # schema in place
        filler = fill(fs, leave=64 * 1024)  # room to start, not to finish
        full = run(config, "subscribers", "import", str(csv), "--confirmed")
        assert (full.code, full.out) == (2, "")
        assert full.err.count("\n") == 1, full.err
        assert full.err.startswith("newsletter: error: database write failed: ")
        assert "disk is full" in full.err
        assert "reader" not in full.err
        assert "Traceback" not in full.err
        filler.unlink()  # space again: the same command finishes the job
        again = run(config, "subscribers", "import", str(csv), "--confirmed")
        assert again.code == 0, again.err
        assert run(config, "subscribers", "count").out.strip() == "3000"


FORMULAS = ["=cmd|'/Ccalc'!A0@example.net", "=1+1@example.net", "+1+1@example.net",
            "-2+3@example.net", "'quoted@example.net"]


def test_plaintext_export_defuses_formulas_and_reads_back(tmp_path: Path) -> None:
    """Issue 15: an address a spreadsheet would run is exported as text (OWASP: a leading
    ``'``), the notice says so, and importing the export gives the same addresses back."""
    from tests.subscribers.support import run

    config = write_config(tmp_path)
    assert run(config, "keys", "init").code == 0
    (tmp_path / "in.csv").write_text("email\n" + "".join(f"{a}\n" for a in FORMULAS),
                                     encoding="utf-8")
    imported = run(config, "subscribers", "import", "in.csv", "--confirmed")
    assert imported.code == 0, imported.err
    exported = run(config, "subscribers", "export", "out.csv", "--plaintext")
    assert exported.code == 0, exported.err
    assert "leading '" in exported.err
    cells = [line.split(",")[0] for line in
             (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines()[1:]]
    assert len(cells) == len(FORMULAS)
    for c in cells:
        assert c.lstrip('"')[0] not in "=+-@\t\r", c
    again = write_config(tmp_path / "again")
    (tmp_path / "again" / "secrets").mkdir()
    (tmp_path / "again" / "secrets" / "keys.json").write_bytes(
        (tmp_path / "secrets" / "keys.json").read_bytes())
    assert run(again, "subscribers", "import", str(tmp_path / "out.csv"), "--confirmed").code == 0
    for address in FORMULAS:
        found = run(again, "subscribers", "find", input=address)
        assert found.out.startswith("line 1: subscriber "), (address, found.out)
