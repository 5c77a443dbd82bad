"""The editors' commands, in-process through ``run_cli``, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import time_machine

from mailer.app import App
from mailer.cli.base import run_cli
from mailer.models import EditionState as S
from tests.editions.helpers import add_posts
from tests.scheduler.helpers import write_config

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    return write_config(tmp_path, db_url, timezone="Asia/Shanghai")


@pytest.fixture
def app(config: Path) -> Iterator[App]:
    app = App.from_path(config, environ={})
    yield app
    app.engine.dispose()


def cli(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run_cli(["--config", str(config), "editions", *args])
    out, err = capsys.readouterr()
    return code, out, err


@time_machine.travel(NOW, tick=False)
def test_create_schedule_approve_show(config: Path, app: App,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c = add_posts(app.engine, 3)
    note = config.parent / "intro.txt"
    note.write_text("本期导读\n", encoding="utf-8")
    code, out, _ = cli(config, capsys, "create", "--posts", f"{a},{b}", "--note-file",
                       f"zh-Hans={note}")
    assert code == 0
    assert "edition 1 created (draft) with 2 post(s)" in out
    code, out, _ = cli(config, capsys, "schedule", "1", "--at", "2026-11-24 08:00")
    assert code == 0
    assert "2026-11-24 08:00 Asia/Shanghai (00:00 UTC)" in out
    assert app.editions.info(1).scheduled_at == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
    code, out, _ = cli(config, capsys, "schedule", "1", "--at", "2026-11-24 08:00",
                       "--tz", "Europe/Berlin")
    assert code == 0
    assert app.editions.info(1).scheduled_at == datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
    assert cli(config, capsys, "reorder", "1", str(b))[0] == 0
    assert cli(config, capsys, "approve", "1")[0] == 0
    assert app.editions.info(1).state is S.APPROVED
    code, out, _ = cli(config, capsys, "show", "1")
    assert code == 0
    assert out.index(f"{b:>5}  [en] Post") < out.index(f"{a:>5}  [en] Post")
    assert "note (zh-Hans): 本期导读" in out
    assert "recipients per language: en 0, zh-Hans 0" in out
    assert "15:00 Europe/Berlin" not in out  # shown in the configured zone
    assert "2026-11-24 15:00 Asia/Shanghai (07:00 UTC)" in out
    code, out, _ = cli(config, capsys, "list")
    assert code == 0
    assert "approved" in out
    assert app.editions.unsent_post_ids() == [c]


@time_machine.travel(NOW, tick=False)
def test_errors_exit_2_with_one_clear_line(config: Path, app: App,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (a,) = add_posts(app.engine, 1)
    code, _, err = cli(config, capsys, "create", "--posts", "999")
    assert code == 2
    assert err.strip() == "newsletter: error: unknown post 999"
    assert cli(config, capsys, "create")[0] == 0
    code, _, err = cli(config, capsys, "schedule", "1", "--at", "2026-11-23 08:00")
    assert code == 2
    assert "is in the past" in err
    assert "2026-11-23 08:00 Asia/Shanghai" in err
    code, _, err = cli(config, capsys, "schedule", "1", "--at", "2027-03-14 02:30",
                       "--tz", "America/New_York")
    assert code == 2
    assert "does not exist" in err
    code, _, err = cli(config, capsys, "show", "42")
    assert code == 2
    assert "no edition 42" in err
    code, _, err = cli(config, capsys, "exclude", "1", "777")
    assert code == 2
    assert "post 777 is not in this edition" in err
    code, _, err = cli(config, capsys, "create", "--note-file", "fr=x.txt")
    assert code == 2
    assert "'fr' is not one of the configured languages" in err
    app.editions.set_state(1, S.SENDING)
    app.editions.set_state(1, S.SENT)
    for args in (["schedule", "1", "--at", "2026-12-01 08:00"], ["approve", "1"],
                 ["cancel", "1"], ["hold", "1"]):
        code, _, err = cli(config, capsys, *args)
        assert code == 2, args
        assert "edition 1: was already sent" in err
    code, _, err = cli(config, capsys, "exclude", "1", str(a))
    assert code == 2
    assert "can no longer change" in err
    assert len(err.strip().splitlines()) == 1


@time_machine.travel(NOW, tick=False)
def test_hold_pause_resume_cancel(config: Path, app: App,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    add_posts(app.engine, 2)
    assert cli(config, capsys, "create")[0] == 0
    assert cli(config, capsys, "schedule", "1", "--at", "2026-11-24 08:00")[0] == 0
    code, out, _ = cli(config, capsys, "hold", "1")
    assert (code, out.strip()) == (0, "edition 1 held")
    code, out, _ = cli(config, capsys, "resume", "1")
    assert code == 0
    assert out.startswith("edition 1 scheduled, sends 2026-11-24 08:00 Asia/Shanghai")
    code, _, err = cli(config, capsys, "pause", "1")
    assert code == 2
    assert "cannot go from scheduled to paused" in err
    assert cli(config, capsys, "cancel", "1")[0] == 0
    assert app.editions.info(1).state is S.CANCELLED
    assert len(app.editions.unsent_post_ids()) == 2


def test_report_refuses_an_unsent_edition(config: Path, app: App,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    add_posts(app.engine, 1)
    app.editions.create()
    code, _, err = cli(config, capsys, "report", "1")
    assert code == 2
    assert "nothing was sent yet" in err
    app.editions.set_state(1, S.SENDING)
    code, out, _ = cli(config, capsys, "report", "1")
    assert code == 0
    assert "edition 1: sending" in out
