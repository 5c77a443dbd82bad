"""The admin as an operator runs it: ``newsletter admin serve`` in a subprocess, accounts made
with ``newsletter admin users add``, and an HTTP client that logs in through the form."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import REPO
from tests.support.cli import ENV, newsletter, newsletter_cmd

__all__ = ["AdminServer", "add_user", "admin_config", "admin_serve", "csrf_of", "login"]

PASSWORD = "correct horse battery staple"


def admin_config(tmp_path: Path, db_url: str, *, admin: str = "", smtp_port: int | None = None,
                 extra: str = "") -> Path:
    """The shipped newsletter.toml on ``db_url`` with an ``[admin]`` table; Maildir unless
    ``smtp_port`` names a relay."""
    text = (REPO / "newsletter.toml").read_text(encoding="utf-8")
    (tmp_path / "examples").mkdir(exist_ok=True)
    shutil.copy(REPO / "examples" / "sample-feed.atom.xml", tmp_path / "examples")
    (tmp_path / "data").mkdir(exist_ok=True)
    text = text.replace('database = "sqlite:///data/newsletter.db"', f'database = "{db_url}"')
    text = text.replace("sample_subscribers = true", "sample_subscribers = false")
    if smtp_port is not None:
        text = text.replace('transport = "maildir"', 'transport = "smtp"')
        text += (f'\n[[delivery.relays]]\nhost = "127.0.0.1"\nport = {smtp_port}\n'
                 f'security = "none"\nrate = 0\n')
    text += f"\n[admin]\n{admin}\n{extra}"
    path = tmp_path / "newsletter.toml"
    path.write_text(text, encoding="utf-8")
    return path


def add_user(config: Path, name: str, role: str = "editor", password: str = PASSWORD) -> None:
    result = newsletter(config, "admin", "users", "add", name, "--role", role, stdin=password + "\n")
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout  # a password given is never echoed


@dataclass
class AdminServer:
    base: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, follow_redirects=False, timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextmanager
def admin_serve(config: Path) -> Iterator[AdminServer]:
    """``newsletter admin serve --port 0``, until the test ends."""
    log_path = config.parent / f"admin-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(newsletter_cmd(config, "admin", "serve", "--port", "0"),
                                cwd=config.parent, stdout=log, stderr=subprocess.STDOUT, env=ENV)
        try:
            deadline = time.monotonic() + 60
            while True:
                m = re.search(r"admin serving on (http://127\.0\.0\.1:\d+)", log_path.read_text())
                if m:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"admin serve did not start:\n{log_path.read_text()}")
                time.sleep(0.05)
            yield AdminServer(m.group(1), proc, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:2000]
    return m.group(1)


def login(client: httpx.Client, name: str, password: str = PASSWORD,
          code: str = "") -> httpx.Response:
    page = client.get("/login")
    assert page.status_code == 200
    return client.post("/login", data={"csrf": csrf_of(page.text), "name": name,
                                       "password": password, "code": code})
