"""The ``poll``, ``feeds`` and ``posts`` commands, run in-process on a real SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mailer.cli  # noqa: F401  (registers every command)
from mailer.cli.base import run_cli
from tests.feeds.conftest import FIXTURES


def _config(tmp_path: Path, *feed_urls: str) -> Path:
    feeds = "".join(f'\n[[feeds]]\nurl = "{u}"\nbacklog_days = 0\n' for u in feed_urls)
    path = tmp_path / "newsletter.toml"
    path.write_text(f"""
[newsletter]
from = "Digest <digest@example.org>"
public_url = "https://news.example.org"

[storage]
database = "sqlite:///{tmp_path / 'db.sqlite'}"
key_file = "keys.json"
{feeds}
""", encoding="utf-8")
    return path


def test_poll_then_posts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, str(FIXTURES / "blogger.atom.xml"))
    assert run_cli(["--config", str(cfg), "poll"]) == 0
    assert capsys.readouterr().out.startswith("3 new posts from 1 feed")
    assert run_cli(["--config", str(cfg), "poll"]) == 0
    assert capsys.readouterr().out.startswith("0 new posts from 1 feed")

    assert run_cli(["--config", str(cfg), "posts", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["language"] for r in rows] == ["zh-Hans", "zh-Hant", "en"]
    assert set(rows[0]) == {"id", "feed", "language", "published", "title", "link"}
    assert rows[2]["link"] == "https://citizens-rights.blogspot.com/2026/11/weekly-digest.html"
    assert rows[0]["published"].startswith("2026-11-20T01:30:00")

    assert run_cli(["--config", str(cfg), "posts"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split("\t")[2:] == ["zh-Hant", "2026-11-19T12:00:00+00:00", "臺灣記者會聲明全文"]


def test_poll_exits_1_when_a_feed_fails_but_stores_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing.xml")
    cfg = _config(tmp_path, str(FIXTURES / "wordpress.rss2.xml"), missing)
    assert run_cli(["--config", str(cfg), "poll"]) == 1
    out = capsys.readouterr()
    assert out.out.startswith("2 new posts from 2 feeds")
    assert missing in out.err

    assert run_cli(["--config", str(cfg), "poll"]) == 1
    assert capsys.readouterr().err.startswith("still failing since ")

    assert run_cli(["--config", str(cfg), "feeds"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[1] == "ok"
    assert lines[1].split("\t")[1] == "failing"
    assert "no such file" in lines[1]
