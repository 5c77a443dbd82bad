"""The whole pipeline as a user runs it: config → poll → send → mail at a real server.

The CLI runs as a subprocess, the feed comes from a loopback HTTP server, mail goes to an
aiosmtpd server, and state lives in a real SQLite file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.http import HTTPServer, Reply
from tests.support.smtp import SMTPServer

NEWSLETTER = [sys.executable, "-m", "mailer"]
FEED = (REPO / "examples" / "sample-feed.atom.xml").read_bytes()


EDITORS = "editors@example.org"  # the shipped newsletter.toml's

def newsletter(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "NEWSLETTER_MIRROR_SECRET": "e2e-secret", **(env or {})}
    return subprocess.run([*NEWSLETTER, "--config", str(config), *args], capture_output=True, text=True,
                          env=full_env, timeout=120, check=False)


def smtp_config(tmp_path: Path, feed_url: str, smtp_port: int) -> Path:
    text = (REPO / "newsletter.toml").read_text(encoding="utf-8")
    text = text.replace('url = "examples/sample-feed.atom.xml"', f'url = "{feed_url}"')
    text = text.replace('sample_subscribers = true', 'sample_subscribers = false')
    text = text.replace('transport = "maildir"', 'transport = "smtp"')
    text += f"""
[[delivery.relays]]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
connections = 2
rate = 0
"""
    path = tmp_path / "newsletter.toml"
    path.write_text(text, encoding="utf-8")
    return path


def parse(data: bytes) -> EmailMessage:
    msg = message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_poll_send_deliver_to_a_real_smtp_server(tmp_path: Path, http_server: HTTPServer,
                                                 smtp_server: SMTPServer) -> None:
    http_server.routes["/feeds/posts/default"] = Reply(body=FEED, headers={
        "Content-Type": "application/atom+xml; charset=UTF-8", "ETag": '"v1"'})
    config = smtp_config(tmp_path, http_server.url("/feeds/posts/default"), smtp_server.port)
    csv = tmp_path / "list.csv"
    csv.write_text("email,language\nli.hua@qq.example,zh-Hans\nchen.wei@163.example,zh-Hant\n"
                   "sam@mail.example,en\n", encoding="utf-8")

    assert newsletter(config, "keys", "init").returncode == 0
    imported = newsletter(config, "subscribers", "import", str(csv), "--confirmed")
    assert imported.returncode == 0, imported.stderr
    polled = newsletter(config, "poll")
    assert polled.returncode == 0, polled.stderr
    assert polled.stdout.startswith("4 new posts")
    sent = newsletter(config, "send")
    assert sent.returncode == 0, sent.stderr
    assert "3 sent" in sent.stdout

    got = {r.rcpt_tos[0]: parse(r.data) for r in smtp_server.received}
    report = got.pop(EDITORS)  # the editors hear that it went out, with the counts
    assert "sent 3" in report.get_body(("plain",)).get_content()
    assert sorted(got) == ["chen.wei@163.example", "li.hua@qq.example", "sam@mail.example"]
    expectations = {
        "li.hua@qq.example": ("zh-Hans", "公民权利通讯", "维权律师"),  # Traditional post shown Simplified
        "chen.wei@163.example": ("zh-Hant", "公民權利通訊", "家庭教會"),  # Simplified post shown Traditional
        "sam@mail.example": ("en", "Citizens' Rights Digest", "Open letter"),
    }
    for address, msg in got.items():
        language, subject_start, body_text = expectations[address]
        assert not msg.defects
        assert msg["To"] == address
        assert msg["Subject"].startswith(subject_start)
        assert msg["Content-Language"] == language
        assert msg["Message-ID"].endswith("@example.org>")
        assert msg["Date"] is not None
        assert msg["List-Unsubscribe"].startswith("<https://news.example.org/u/")
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg.get_content_type() == "multipart/alternative"
        plain = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        assert plain is not None
        assert html is not None
        text_part, html_part = plain.get_content(), html.get_content()
        assert body_text in text_part
        assert body_text in html_part
        # every link to the blog comes with mirrors, in both parts
        assert "citizens-rights.blogspot.com/2026/11/" in text_part
        assert any(m in text_part for m in ("cloudfront.net/2026/11/", "netlify.app/2026/11/",
                                            "googleapis.com/cr-mirror-7f3a/2026/11/"))
        assert "<script" not in html_part.lower()

    # Sending again sends nothing twice; a second poll answers 304-or-same and adds nothing.
    again = newsletter(config, "send")
    assert again.returncode == 0
    assert "nothing to send" in again.stdout
    repoll = newsletter(config, "poll")
    assert repoll.returncode == 0
    assert repoll.stdout.startswith("0 new posts")
    # the second poll sent the stored validator, so the feed server could answer 304
    assert http_server.requests[-1][1].get("if-none-match") == '"v1"'
    assert len(smtp_server.received) == 3 + 1


def test_embedded_default_writes_eml_files_and_second_run_sends_nothing(tmp_path: Path) -> None:
    shutil.copy(REPO / "newsletter.toml", tmp_path / "newsletter.toml")
    (tmp_path / "examples").mkdir()
    shutil.copy(REPO / "examples" / "sample-feed.atom.xml", tmp_path / "examples")
    config = tmp_path / "newsletter.toml"

    first = newsletter(config, "run", "--once", env={"NEWSLETTER_MIRROR_SECRET": ""})
    assert first.returncode == 0, first.stderr
    assert "new posts: 4" in first.stdout
    assert "key file" in first.stderr  # the notice that a key was generated
    key = tmp_path / "data" / "keys.json"
    assert key.stat().st_mode & 0o777 == 0o600
    files = sorted((tmp_path / "data" / "outbox" / "new").iterdir())
    mails = [parse(f.read_bytes()) for f in files]
    assert len(mails) == 5  # one sample reader per language choice, and readers' mail only
    assert all(m["To"] != EDITORS for m in mails)
    # The editors' "sent" report sits in a folder of its own ([delivery] editors_maildir).
    reports = [parse(f.read_bytes())
               for f in sorted((tmp_path / "data" / "outbox-editors" / "new").iterdir())]
    assert [m["To"] for m in reports] == [EDITORS]
    assert "sent 5" in reports[0].get_body(("plain",)).get_content()
    languages = set()
    for msg in mails:
        assert not msg.defects
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        languages.add(msg["Content-Language"])
        if msg["Content-Language"] == "en":
            assert msg["Subject"].startswith("Citizens' Rights Digest")
        elif msg["Content-Language"].startswith("zh-Hant"):
            assert msg["Subject"].startswith("公民權利通訊")
        else:
            assert msg["Subject"].startswith("公民权利通讯")
    assert languages == {"zh-Hans", "zh-Hant", "en", "zh-Hans, en", "zh-Hant, en"}

    second = newsletter(config, "run", "--once")
    assert second.returncode == 0, second.stderr
    assert "new posts: 0" in second.stdout
    assert len(list((tmp_path / "data" / "outbox" / "new").iterdir())) == 5
    assert len(list((tmp_path / "data" / "outbox-editors" / "new").iterdir())) == 1


def test_bad_config_exits_2_naming_file_key_and_line(tmp_path: Path) -> None:
    text = (REPO / "newsletter.toml").read_text(encoding="utf-8").replace('mode = "digest"', 'mode = "weekly"')
    config = tmp_path / "newsletter.toml"
    config.write_text(text, encoding="utf-8")
    result = newsletter(config, "poll")
    assert result.returncode == 2
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("mode ="))
    assert result.stderr.strip().splitlines()[-1] == (
        f"newsletter: error: {config}:{line}, key 'newsletter.mode': must be 'digest' or 'per-post'")


@pytest.mark.parametrize("broken", ["", "not valid = = toml"])
def test_unreadable_config_is_exit_2(tmp_path: Path, broken: str) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text(broken, encoding="utf-8")
    result = newsletter(config, "send")
    assert result.returncode == 2
    assert str(config) in result.stderr
