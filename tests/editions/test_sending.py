"""``editions test-send`` and ``run --once`` through the real pipeline (SMTP server, Maildir)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from sqlalchemy import func, select

from mailer.app import App
from mailer.cli.base import run_cli
from mailer.models import EditionState as S
from mailer.schema import outbox
from tests.editions.helpers import add_posts
from tests.scheduler.helpers import write_config
from tests.support.smtp import SMTPServer

TESTER = "tester-addr@example.net"
READER = "reader-two@example.com"


@pytest.fixture
def smtp_app(tmp_path: Path, sqlite_url: str, smtp_server: SMTPServer) -> Iterator[App]:
    config = write_config(tmp_path, sqlite_url, smtp_port=smtp_server.port, editors=())
    app = App.from_path(config, environ={})
    yield app
    app.engine.dispose()


def test_test_send_is_the_real_mail_marked_and_outside_the_outbox(
        smtp_app: App, smtp_server: SMTPServer, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    add_posts(smtp_app.engine, 2)
    eid = smtp_app.editions.create()
    caplog.set_level(logging.DEBUG)
    code = run_cli(["--config", str(smtp_app.config.path), "editions", "test-send", str(eid),
                    "--to", TESTER, "--language", "zh-Hans"])
    out = capsys.readouterr().out
    assert code == 0
    # Echoed to the editor who typed it (issue 18), and never logged.
    assert f"test of edition {eid} (zh-Hans) sent to {TESTER}" in out
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith("mail.log")]
    assert ours  # the run logged something, and
    assert not [m for m in ours if TESTER in m]  # never the address (aiosmtpd's own log aside)
    [received] = smtp_server.received
    assert received.rcpt_tos == [TESTER]
    msg = received.message()
    assert str(msg["Subject"]).startswith("[TEST] ")
    assert msg["X-Newsletter-Test"] == "yes"
    assert msg["Content-Language"] == "zh-Hans"
    assert msg.get_body(("plain",)) is not None
    assert msg.get_body(("html",)) is not None
    with smtp_app.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox)).scalar() == 0
    assert smtp_app.editions.info(eid).state is S.DRAFT  # a test changes nothing


def test_test_send_refuses_bad_input(smtp_app: App, capsys: pytest.CaptureFixture[str]) -> None:
    add_posts(smtp_app.engine, 1)
    smtp_app.editions.create()
    base = ["--config", str(smtp_app.config.path), "editions", "test-send", "1"]
    assert run_cli([*base, "--to", "a@b.c, d@e.f"]) == 2
    assert run_cli([*base, "--to", TESTER, "--language", "fr"]) == 2
    err = capsys.readouterr().err
    assert "--language 'fr'" in err
    assert TESTER not in err


def test_run_once_applies_the_misfire_policy(tmp_path: Path, sqlite_url: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, sqlite_url, grace="1h", editors=())
    app = App.from_path(config, environ={})
    app.subscribers.add(READER, "en", confirmed=True)
    old, recent = add_posts(app.engine, 2)
    t0 = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    with time_machine.travel(t0, tick=False):
        missed = app.editions.create([old])
        late_ok = app.editions.create([recent])
        assert missed is not None
        assert late_ok is not None
        app.editions.schedule(missed, t0 + timedelta(minutes=10))
        app.editions.schedule(late_ok, t0 + timedelta(hours=2))
    with time_machine.travel(t0 + timedelta(hours=2, minutes=30), tick=True):
        code = run_cli(["--config", str(config), "run", "--once"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"edition {missed}: missed its time; not sent" in out
    assert f"edition {late_ok}: 1 sent" in out
    assert app.editions.info(missed).state is S.MISSED
    assert app.editions.info(late_ok).state is S.SENT
    assert len(list((tmp_path / "outbox" / "new").iterdir())) == 1
    app.engine.dispose()


def test_run_once_with_approval_required_holds_new_posts(
        tmp_path: Path, sqlite_url: str, smtp_server: SMTPServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, sqlite_url, require_approval=True, editors=("eds@example.net",),
                          smtp_port=smtp_server.port)
    app = App.from_path(config, environ={})
    app.subscribers.add(READER, "en", confirmed=True)
    add_posts(app.engine, 2)
    assert run_cli(["--config", str(config), "run", "--once"]) == 0
    out = capsys.readouterr().out
    assert "edition 1 created and held: approval is required" in out
    assert app.editions.info(1).state is S.HELD
    assert [r.rcpt_tos for r in smtp_server.received] == [["eds@example.net"]]  # told, not sent
    app.editions.approve(1)
    assert run_cli(["--config", str(config), "run", "--once"]) == 0
    assert "edition 1: 1 sent" in capsys.readouterr().out
    assert app.editions.info(1).state is S.SENT
    assert READER in [r.rcpt_tos[0] for r in smtp_server.received]
    app.engine.dispose()
