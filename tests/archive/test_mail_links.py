"""The mail links each edition to its archive page on each healthy archive host; the archive
hosts are in the mirror registry as kind ``archive``, checked like mirrors, never handed out."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailer.app import App
from mailer.cli.base import run_cli
from mailer.config import load_config
from mailer.errors import ConfigError
from mailer.mirrors.health import Answer, MirrorChecker, compare_archive
from mailer.pipeline.archive import build_archive
from tests.archive.helpers import archive_config, send_editions
from tests.support.cli import newsletter
from tests.support.http import HTTPServer, Reply


def _targets(*urls: str) -> str:
    return "\n[archive]\n" + "".join(f'\n[[archive.targets]]\nremote = "out-{i}"\nurl = "{u}"\n'
                                     for i, u in enumerate(urls))


def _html(raw: bytes) -> str:
    from email import message_from_bytes, policy
    from email.message import EmailMessage

    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    html = msg.get_body(("html",))
    text = msg.get_body(("plain",))
    assert html is not None
    assert text is not None
    return str(html.get_content()) + "\n" + str(text.get_content())


def test_each_mail_links_its_page_on_each_healthy_archive_host(tmp_path: Path, sqlite_url: str) -> None:
    up, down = "https://cr-archive.pages.dev", "https://storage.googleapis.com/cr-archive"
    config = archive_config(tmp_path, sqlite_url, archive=_targets(up, down))
    app = App.from_path(config, environ={})
    # The second host failed its checks: its link would lead nowhere, so the mail leaves it out.
    checker = MirrorChecker(app.config.mirrors, app.engine, app.clock)
    for _ in range(app.config.mirrors.down_after):
        checker.record(None, {down: Answer(error="ConnectError")}, datetime.now(UTC))
    send_editions(config, 1)
    [raw] = [p.read_bytes() for p in (tmp_path / "outbox" / "new").iterdir()][:1]
    body = _html(raw)
    assert f"{up}/zh-Hans/1.html" in body or f"{up}/en/1.html" in body
    assert "cr-archive.pages.dev" in body
    assert down not in body
    # The archive hosts are never a reader's mirror.
    for sid in range(1, 50):
        assert not set(app.mirrors.for_subscriber(sid)) & {up, down}
    listed = newsletter(config, "mirrors", "list")
    assert listed.returncode == 0, listed.stderr
    assert f"{up}\n    active archive;" in listed.stdout
    app.engine.dispose()


def test_no_archive_target_means_no_archive_block_in_the_mail(tmp_path: Path, sqlite_url: str) -> None:
    config = archive_config(tmp_path, sqlite_url)
    send_editions(config, 1)
    raw = next((tmp_path / "outbox" / "new").iterdir()).read_bytes()
    assert "Read this issue on the web" not in _html(raw)


def test_an_archive_host_is_checked_against_the_archive_root(tmp_path: Path, sqlite_url: str,
                                                            http_server: HTTPServer) -> None:
    good, parked = http_server.url("/good"), http_server.url("/parked")
    config = archive_config(tmp_path, sqlite_url, archive=_targets(good, parked))
    app = send_editions(config, 1)
    build_archive(app)
    root = (tmp_path / "data" / "archive" / "index.html").read_bytes()
    http_server.routes["/good/index.html"] = Reply(body=root)
    http_server.routes["/parked/index.html"] = Reply(body=b"<html><title>Domain for sale</title></html>")
    # Only the archive hosts (both on loopback): nothing leaves this machine.
    hosts = tuple(s for s in app.config.mirrors.sites if s.kind == "archive")
    only = dataclasses.replace(app.config.mirrors, origins=(), sites=hosts)
    results = {r.url: r for r in asyncio.run(MirrorChecker(only, app.engine, app.clock).check())}
    assert results[good].ok, results[good].detail
    assert not results[parked].ok
    assert "not the archive" in results[parked].detail
    assert compare_archive(Answer(status=404, body=b"x")) == (False, "HTTP 404")
    assert run_cli(["--config", str(config), "mirrors", "list"]) == 0
    app.engine.dispose()


@pytest.mark.parametrize(("archive", "key", "words"), [
    ('[[archive.targets]]\nremote = "-x"\n', "archive.targets[0].remote", "option"),
    ('[[archive.targets]]\nremote = "a"\nurl = "https://mirror-1.example.net"\n', "archive.targets[0].url",
     "is also a mirror"),
    ('[[archive.targets]]\nremote = "a"\nurl = "ftp://x"\n', "archive.targets[0].url", "not an absolute"),
    ('[[archive.targets]]\nremote = "a"\nbucket = "x"\n', "archive.targets[0].bucket", "not a known key"),
    ('timeout = 0\n', "archive.timeout", "positive"),
])
def test_bad_archive_config_names_file_key_and_line(tmp_path: Path, sqlite_url: str, archive: str,
                                                   key: str, words: str) -> None:
    config = archive_config(tmp_path, sqlite_url, archive="\n[archive]\n" + archive)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert info.value.key == key
    assert words in str(info.value)
    assert info.value.line is not None
    assert info.value.line > 1
    result = newsletter(config, "archive", "build")
    assert result.returncode == 2
    assert key in result.stderr
    assert str(config) in result.stderr


def test_ooni_marks_an_archive_host_blocked_and_the_mail_leaves_it_out(tmp_path: Path, sqlite_url: str) -> None:
    import json

    blocked, free = "https://cr-archive.pages.dev", "https://cr-archive.gitlab.io"
    config = archive_config(tmp_path, sqlite_url, archive=_targets(blocked, free))
    measurement = {"input": f"{blocked}/index.html", "probe_cc": "CN", "test_name": "web_connectivity",
                   "measurement_start_time": "2026-11-30 03:00:00",
                   "test_keys": {"accessible": False, "blocking": "dns"}}
    sample = tmp_path / "ooni.jsonl"
    sample.write_text(json.dumps(measurement) + "\n", encoding="utf-8")
    result = newsletter(config, "mirrors", "ooni", str(sample))
    assert result.returncode == 0, result.stderr
    assert f"BLOCKED  {blocked} (active)" in result.stdout
    send_editions(config, 1)
    body = _html(next((tmp_path / "outbox" / "new").iterdir()).read_bytes())
    assert free + "/" in body
    assert blocked not in body
