"""The ``poll``, ``feeds`` and ``posts`` commands, run in-process on a real SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import mailer.cli  # noqa: F401  (registers every command)
from mailer.cli.base import run_cli
from tests.feeds.conftest import FIXTURES
from tests.support.http import HTTPServer, Reply

REPO = Path(__file__).resolve().parents[2]


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


def _flood(n: int) -> bytes:
    entries = "".join(
        f"<entry><id>tag:flood,2026:{i}</id><title>Flood {i}</title>"
        f'<link rel="alternate" href="https://flood.example.org/{i}.html"/>'
        f"<published>{datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i):%Y-%m-%dT%H:%M:%SZ}"
        f"</published><content type=\"html\">&lt;p&gt;entry {i}&lt;/p&gt;</content></entry>"
        for i in range(n))
    return ('<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            "<id>tag:flood,2026:feed</id><title>Flood</title>"
            f"<updated>2026-11-20T00:00:00Z</updated>{entries}</feed>").encode()


@pytest.mark.parametrize(("setting", "cap"), [("", 50), ("max_new_posts = 7\n", 7)],
                         ids=["default", "per-feed"])
def test_a_flooding_feed_stores_only_the_newest_posts_and_says_so(
        tmp_path: Path, http_server: HTTPServer, setting: str, cap: int) -> None:
    http_server.routes["/flood.xml"] = Reply(body=_flood(3000),
                                             headers={"Content-Type": "application/atom+xml"})
    cfg = _config(tmp_path, http_server.url("/flood.xml"))
    cfg.write_text(cfg.read_text(encoding="utf-8").replace(
        "backlog_days = 0\n", "backlog_days = 36500\n" + setting), encoding="utf-8")
    polled = _newsletter(cfg, "poll")
    assert polled.returncode == 0, polled.stderr
    assert polled.stdout.startswith(f"{cap} new posts from 1 feed")
    assert (f"3000 entries, more than max_new_posts = {cap}: stored the newest {cap}, "
            f"left {3000 - cap} out") in polled.stdout
    listed = _newsletter(cfg, "posts", "--json")
    titles = {json.loads(line)["title"] for line in listed.stdout.splitlines()}
    assert titles == {f"Flood {i}" for i in range(3000 - cap, 3000)}


def test_max_new_posts_below_one_names_file_key_and_line(tmp_path: Path) -> None:
    cfg = _config(tmp_path, str(FIXTURES / "blogger.atom.xml"))
    cfg.write_text(cfg.read_text(encoding="utf-8") + "\n[fetch]\nmax_new_posts = 0\n",
                   encoding="utf-8")
    line = cfg.read_text(encoding="utf-8").splitlines().index("max_new_posts = 0") + 1
    out = _newsletter(cfg, "poll")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert f"{cfg}:{line}" in out.stderr
    assert "max_new_posts" in out.stderr


def _polled_with_max_posts_5(tmp_path: Path, http_server: HTTPServer, *, posts: int) -> Path:
    """A feed of ``posts`` posts, all stored, under ``[schedule] max_posts = 5``."""
    http_server.routes["/flood.xml"] = Reply(body=_flood(posts),
                                             headers={"Content-Type": "application/atom+xml"})
    cfg = _config(tmp_path, http_server.url("/flood.xml"))
    cfg.write_text(cfg.read_text(encoding="utf-8").replace("backlog_days = 0\n", "backlog_days = 36500\n")
                   + "\n[schedule]\nmax_posts = 5\n", encoding="utf-8")
    assert _newsletter(cfg, "poll").returncode == 0
    return cfg


@pytest.mark.parametrize("command", [("send",), ("run", "--once")], ids=["send", "run-once"])
def test_an_automatic_edition_over_max_posts_is_held_for_an_editor(
        tmp_path: Path, http_server: HTTPServer, command: tuple[str, ...]) -> None:
    cfg = _polled_with_max_posts_5(tmp_path, http_server, posts=8)
    out = _newsletter(cfg, *command)
    assert out.returncode == 0, out.stderr
    assert ("edition 1 created and held: 8 posts, more than [schedule] max_posts = 5: an editor must "
            "choose the posts") in out.stdout
    assert " sent," not in out.stdout
    rows = [r.split()[:4] for r in _newsletter(cfg, "editions", "list").stdout.splitlines()[1:]]
    assert rows == [["1", "held", "digest", "8"]]
    again = _newsletter(cfg, *command)  # the posts wait in the held edition: no second edition
    assert again.returncode == 0, again.stderr
    assert [r.split()[:4] for r in _newsletter(cfg, "editions", "list").stdout.splitlines()[1:]] == rows


def test_an_edition_within_max_posts_goes_out(tmp_path: Path, http_server: HTTPServer) -> None:
    cfg = _polled_with_max_posts_5(tmp_path, http_server, posts=5)
    out = _newsletter(cfg, "send")
    assert out.returncode == 0, out.stderr
    assert "held" not in out.stdout
    assert out.stdout.startswith("edition 1: 0 sent")


def test_max_posts_below_one_names_file_key_and_line(tmp_path: Path) -> None:
    cfg = _config(tmp_path, str(FIXTURES / "blogger.atom.xml"))
    cfg.write_text(cfg.read_text(encoding="utf-8") + "\n[schedule]\nmax_posts = 0\n", encoding="utf-8")
    line = cfg.read_text(encoding="utf-8").splitlines().index("max_posts = 0") + 1
    out = _newsletter(cfg, "send")
    assert out.returncode == 2
    assert f"{cfg}:{line}" in out.stderr
    assert out.stderr.count("\n") == 1
    assert "schedule.max_posts" in out.stderr


def _newsletter(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailer", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=300, cwd=cfg.parent,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
