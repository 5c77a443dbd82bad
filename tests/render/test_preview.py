"""``newsletter preview``: real config, real sample feed, real SQLite; files a reader would get."""

from __future__ import annotations

import os
import subprocess
import sys
from email import message_from_bytes, policy
from html import escape as html_escape
from pathlib import Path

import pytest

from mailer.app import App
from mailer.cli.base import run_cli
from mailer.render.safe import remote_references
from tests.support.http import HTTPServer, Reply

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    text = (REPO / "newsletter.toml").read_text(encoding="utf-8")
    text = (
        text.replace("examples/sample-feed.atom.xml", str(REPO / "examples" / "sample-feed.atom.xml"))
        .replace("sqlite:///data/newsletter.db", f"sqlite:///{tmp_path / 'n.db'}")
        .replace("data/keys.json", str(tmp_path / "keys.json"))
        .replace('"data/outbox"', f'"{tmp_path / "outbox"}"')
    )
    path = tmp_path / "newsletter.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("language", ["zh-Hans", "zh-Hant", "en", "zh-Hant+en"])
def test_preview_writes_html_text_and_eml(
    tmp_path: Path, config_path: Path, language: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["--config", str(config_path), "poll"]) == 0
    out = tmp_path / "preview"
    assert run_cli(["--config", str(config_path), "preview", "--language", language, "--out", str(out)]) == 0
    assert "not yet sent" in capsys.readouterr().out
    raw = (out / f"{language}.eml").read_bytes()
    msg = message_from_bytes(raw, policy=policy.default)
    assert all(part.defects == [] for part in msg.walk())
    assert msg["To"] == "reader@example.org"
    html = (out / f"{language}.html").read_text(encoding="utf-8")
    text = (out / f"{language}.txt").read_text(encoding="utf-8")
    assert remote_references(html) == []
    assert "@@SLOT_" not in html + text
    assert "https://d1a2b3c4.cloudfront.net/" in text  # the sample reader's first mirror
    name = {
        "zh-Hans": "公民权利通讯",
        "zh-Hant": "公民權利通訊",
        "en": "Citizens' Rights Digest",
        "zh-Hant+en": "公民權利通訊",
    }[language]
    assert text.startswith(name)
    body = msg.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == text


def test_preview_rejects_a_language_not_offered(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(["--config", str(config_path), "preview", "--language", "fr", "--out", str(tmp_path / "p")])
    assert code == 2
    assert "'fr' is not offered" in capsys.readouterr().err


def test_preview_with_no_posts_says_to_poll(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(["--config", str(config_path), "preview", "--language", "en", "--out", str(tmp_path / "p")])
    assert code == 2
    assert "newsletter poll" in capsys.readouterr().err


def test_preview_of_a_chosen_single_post_edition(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["--config", str(config_path), "poll"]) == 0
    app = App.from_path(config_path)
    post_id = app.editions.unsent_post_ids()[0]
    edition_id = app.editions.create([post_id], kind="per-post")
    out = tmp_path / "p"
    assert (
        run_cli(
            [
                "--config",
                str(config_path),
                "preview",
                "--language",
                "en",
                "--out",
                str(out),
                "--edition",
                str(edition_id),
            ]
        )
        == 0
    )
    assert f"edition {edition_id}" in capsys.readouterr().out
    text = (out / "en.txt").read_text(encoding="utf-8")
    assert "In this edition" not in text  # the single-post layout has no table of contents
    msg = message_from_bytes((out / "en.eml").read_bytes(), policy=policy.default)
    assert msg["Subject"] == app.post_store.load([post_id])[0].title


def test_preview_open_hands_the_html_file_to_the_browser(tmp_path: Path, config_path: Path) -> None:
    # A real process with a real $BROWSER (what webbrowser runs): a script that records the URL.
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.py"
    browser.write_text(f"import sys\nopen({str(opened)!r}, 'w').write(sys.argv[1])\n", encoding="utf-8")
    env = {**os.environ, "BROWSER": f"{sys.executable} {browser} %s", "PYTHONPATH": str(REPO)}
    for args in (["poll"], ["preview", "--language", "en", "--out", str(tmp_path / "p"), "--open"]):
        proc = subprocess.run([sys.executable, "-m", "mailer", "--config", str(config_path), *args],
                              capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    url = opened.read_text(encoding="utf-8")
    assert url == (tmp_path / "p" / "en.html").resolve().as_uri()
    assert "Citizens' Rights Digest" in (tmp_path / "p" / "en.html").read_text(encoding="utf-8")


def _hostile_feed(depth: int, posts: int = 12) -> bytes:
    """An Atom feed of ``posts`` posts; the first (newest) is ``depth`` <div>s deep."""
    entries = []
    for i in range(posts):
        body = f"<p>Body of post {i} ends with WORD{i}END.</p>"
        if i == 0:
            body = "<div>" * depth + body + "</div>" * depth
        entries.append(
            f"<entry><id>tag:hostile,2026:post-{i}</id><title>Hostile post {i}</title>"
            f'<link rel="alternate" href="https://citizens-rights.blogspot.com/2026/11/p{i}.html"/>'
            f"<published>2026-11-{20 - i % 10:02d}T0{i % 10}:00:00Z</published>"
            f"<updated>2026-11-20T00:00:00Z</updated>"
            f'<content type="html">{html_escape(body)}</content></entry>')
    return ('<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            "<id>tag:hostile,2026:feed</id><title>Hostile</title>"
            "<updated>2026-11-20T00:00:00Z</updated>" + "".join(entries) + "</feed>").encode()


@pytest.mark.parametrize("depth", [300, 3000])
def test_a_deeply_nested_post_loses_nothing_in_the_real_preview(
        tmp_path: Path, config_path: Path, http_server: HTTPServer, depth: int) -> None:
    http_server.routes["/feed.xml"] = Reply(body=_hostile_feed(depth),
                                            headers={"Content-Type": "application/atom+xml"})
    text = config_path.read_text(encoding="utf-8")
    config_path.write_text(text.replace(str(REPO / "examples" / "sample-feed.atom.xml"),
                                        http_server.url("/feed.xml")), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def newsletter(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mailer", "--config", str(config_path), *args],
                              capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)

    polled = newsletter("poll")
    assert polled.returncode == 0, polled.stderr
    out = tmp_path / "preview"
    shown = newsletter("preview", "--language", "en", "--out", str(out))
    assert shown.returncode == 0, shown.stderr
    html = (out / "en.html").read_text(encoding="utf-8")
    text_part = (out / "en.txt").read_text(encoding="utf-8")
    for i in range(12):
        assert f"WORD{i}END" in text_part
        assert f"WORD{i}END" in html, f"post {i} vanished from the HTML part"
