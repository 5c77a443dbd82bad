"""Run ``newsletter`` as an operator does: a subprocess with a config file beside its data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

__all__ = ["ENV", "newsletter", "newsletter_cmd", "write_config"]

ENV = {**os.environ, "NEWSLETTER_MIRROR_SECRET": "crash-secret", "PYTHONPATH": str(REPO)}


def newsletter_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "mailer", "--config", str(config), *args]


def newsletter(config: Path, *args: str, stdin: str | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(newsletter_cmd(config, *args), capture_output=True, text=True, input=stdin,
                          env=env or ENV, timeout=300, check=False, cwd=config.parent)


def write_config(tmp_path: Path, db_url: str, smtp_port: int, *, connections: int = 4,
                 extra_storage: str = "") -> Path:
    """The shipped newsletter.toml on ``db_url``, sending to ``smtp_port``, no sample readers."""
    text = (REPO / "newsletter.toml").read_text(encoding="utf-8")
    (tmp_path / "examples").mkdir(exist_ok=True)
    shutil.copy(REPO / "examples" / "sample-feed.atom.xml", tmp_path / "examples")
    (tmp_path / "data").mkdir(exist_ok=True)
    text = text.replace('database = "sqlite:///data/newsletter.db"',
                        f'database = "{db_url}"\n{extra_storage}')
    text = text.replace("sample_subscribers = true", "sample_subscribers = false")
    text = text.replace('transport = "maildir"', 'transport = "smtp"')
    text += f"""
[[delivery.relays]]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
connections = {connections}
rate = 0
"""
    path = tmp_path / "newsletter.toml"
    path.write_text(text, encoding="utf-8")
    return path
