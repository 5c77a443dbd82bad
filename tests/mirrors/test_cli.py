"""The ``newsletter mirrors`` commands end to end: real config file, database and HTTP server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import mailer.cli  # noqa: F401  (registers every command)
from mailer.cli.base import run_cli
from mailer.config import load_config
from mailer.db import open_engine
from mailer.mirrors.exposure import record_exposure
from mailer.schema import editions
from tests.mirrors.helpers import NOW, write_config
from tests.support.http import HTTPServer, Reply

DATA = Path(__file__).parent / "data"
CF = "https://d1a2b3c4.cloudfront.net"
NETLIFY = "https://citizens-rights-mirror.netlify.app"


def _setup(tmp_path: Path) -> Path:
    path = tmp_path / "newsletter.toml"
    write_config(path, [{"url": CF, "added": "2026-10-01"}, {"url": NETLIFY},
                        {"url": "https://cr-reserve.pages.dev", "status": "reserve"}],
                 db_url=f"sqlite:///{tmp_path / 'n.db'}")
    return path


def test_ooni_then_list_shows_blocked_and_exposure(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = _setup(tmp_path)
    engine = open_engine(load_config(path, {}).storage.database)
    with engine.begin() as conn:
        conn.execute(editions.insert().values(id=1, kind="digest", state="sent",
                                              created_at=NOW, updated_at=NOW))
    record_exposure(engine, 1, {CF: 40, NETLIFY: 38}, NOW)
    engine.dispose()
    sample = tmp_path / "ooni.jsonl"
    shutil.copy(DATA / "ooni-web_connectivity.jsonl", sample)

    assert run_cli(["--config", str(path), "mirrors", "ooni", str(sample)]) == 0
    out = capsys.readouterr().out
    assert "9 measurements read, 2 lines skipped" in out
    assert f"BLOCKED  {CF} (active): dns at 2026-11-18 03:00 UTC; sent to 40 recipients in 1 " \
           "editions since 2026-11-23 12:00 UTC" in out
    assert "2 mirror(s) newly marked blocked in CN" in out
    assert "ok       https://cr-reserve.pages.dev: 2 measurements" in out

    assert run_cli(["--config", str(path), "mirrors", "list"]) == 0
    out = capsys.readouterr().out
    assert "active https; unchecked; BLOCKED in CN" in out  # OONI's word, never checked here
    assert "added 2026-10-01" in out
    assert ("first sent 2026-11-23 12:00 UTC, last sent 2026-11-23 12:00 UTC, 40 recipients "
            "over 1") in out
    assert "reserve https; unchecked" in out

    assert run_cli(["--config", str(path), "mirrors", "unblock", CF + "/"]) == 0
    assert "block mark for CN cleared" in capsys.readouterr().out
    assert run_cli(["--config", str(path), "mirrors", "unblock", CF]) == 2
    assert "is not marked blocked in CN" in capsys.readouterr().err
    assert run_cli(["--config", str(path), "mirrors", "list"]) == 0
    out = capsys.readouterr().out
    assert out.count("BLOCKED in CN") == 1  # netlify still is


def test_import_prints_and_writes_only_when_asked(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = _setup(tmp_path)
    before = path.read_text()
    lst = str(DATA / "bypass-censorship-v2.json")
    assert run_cli(["--config", str(path), "mirrors", "import", lst]) == 0
    out = capsys.readouterr().out
    assert "+ https://d9z8y7x6.cloudfront.net (https, reserve)" in out
    assert f"= {CF} (already listed, active)" in out
    assert "nothing written" in out
    assert path.read_text() == before
    assert run_cli(["--config", str(path), "mirrors", "import", lst, "--as", "active",
                    "--write"]) == 0
    sites = {s.url: s for s in load_config(path, {}).mirrors.sites}
    assert sites["https://d9z8y7x6.cloudfront.net"].status == "active"
    assert sites["https://d9z8y7x6.cloudfront.net"].note == "imported from bypass-censorship-v2.json"


def test_check_exit_code_and_output(tmp_path: Path, http_server: HTTPServer,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    base = http_server.url("")
    path = tmp_path / "newsletter.toml"
    write_config(path, [{"url": "http://good.example"}, {"url": "http://bad.example"}],
                 db_url=f"sqlite:///{tmp_path / 'n.db'}",
                 extra=f'canary_path = "/c.html"\nproxy = "{base}"')
    # Origin from the helper config: https://citizens-rights.blogspot.com, which the test proxy
    # cannot serve (CONNECT), so content is judged by status alone; "bad" answers 500.
    http_server.routes["http://good.example/c.html"] = Reply(body=b"<title>t</title>")
    http_server.routes["http://bad.example/c.html"] = Reply(status=500)
    assert run_cli(["--config", str(path), "mirrors", "check"]) == 1
    out = capsys.readouterr().out
    assert "ok   http://good.example [up]" in out
    assert "FAIL http://bad.example [up] HTTP 500" in out


def test_list_shows_a_failed_check_a_proxyless_onion_and_zones(tmp_path: Path) -> None:
    """A failed last check is not "up"; an onion without onion_proxy is not checked at all."""
    from mailer.schema import mirror_state
    from tests.support.cli import newsletter

    onion = "http://citizensrightsxyzabc2345abcdefghijklmnopqrstuvwxyzabcdef.onion"
    path = tmp_path / "newsletter.toml"
    write_config(path, [{"url": CF}, {"url": NETLIFY}, {"url": onion, "kind": "onion"}],
                 db_url=f"sqlite:///{tmp_path / 'n.db'}")
    engine = open_engine(load_config(path, {}).storage.database)
    with engine.begin() as conn:
        conn.execute(mirror_state.insert().values(
            url=CF, healthy=True, consecutive_failures=1, last_check_at=NOW,
            last_error="ConnectError", blocked_json="{}"))
        conn.execute(mirror_state.insert().values(
            url=NETLIFY, healthy=True, consecutive_failures=0, last_check_at=NOW,
            last_ok_at=NOW, blocked_json="{}"))
    engine.dispose()
    done = newsletter(path, "mirrors", "list")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    cf = out.split(CF, 1)[1].split("https://", 1)[0]
    assert "FAILING (1 of 3 failures before down)" in cf
    assert "; up" not in cf
    assert "error: ConnectError" in cf
    assert "last check 2026-11-23 12:00 UTC" in cf
    assert f"{NETLIFY}\n    active https; up\n" in out
    assert f"{onion}\n    active onion; not checked: no onion_proxy" in out


def test_an_onion_is_checked_only_through_onion_proxy(tmp_path: Path) -> None:
    from mailer.mirrors.health import MirrorChecker, unchecked_reason
    from tests.mirrors.helpers import Clock

    onion = "http://citizensrightsxyzabc2345abcdefghijklmnopqrstuvwxyzabcdef.onion"
    sites = [{"url": CF}, {"url": onion, "kind": "onion"}]
    cfg = write_config(tmp_path / "a.toml", sites, db_url=f"sqlite:///{tmp_path / 'n.db'}")
    site = next(s for s in cfg.mirrors.sites if s.kind == "onion")
    assert unchecked_reason(cfg.mirrors, site) == "not checked: no onion_proxy"
    checker = MirrorChecker(cfg.mirrors, open_engine(cfg.storage.database), Clock())
    assert [s.url for s in checker._targets()] == [CF]
    proxied = write_config(tmp_path / "b.toml", sites, db_url=f"sqlite:///{tmp_path / 'n.db'}",
                           extra='onion_proxy = "socks5://127.0.0.1:9050"')
    site = next(s for s in proxied.mirrors.sites if s.kind == "onion")
    assert unchecked_reason(proxied.mirrors, site) is None
