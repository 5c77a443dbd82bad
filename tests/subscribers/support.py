"""Helpers for the subscriber tests that run the real ``newsletter`` command as a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NEWSLETTER = [sys.executable, "-c", "from mailer.cli import main; main()"]

CONFIG = """\
[newsletter]
from = "Digest <digest@example.org>"
public_url = "{public_url}"
languages = ["zh-Hans", "zh-Hant", "en"]
bilingual = ["zh-Hans+en"]
unsubscribe_mailto = "unsubscribe@example.org"

[newsletter.name]
en = "Citizens' Rights Digest"
zh-Hans = "公民权利通讯"
zh-Hant = "公民權利通訊"

[storage]
database = "{database}"
key_file = "secrets/keys.json"
key_reload_every = "1s"

[[feeds]]
url = "{feed}"
language = "auto"
backlog_days = 0

[delivery]
transport = "maildir"
maildir = "data/outbox"

[mirrors]
origins = ["https://citizens-rights.blogspot.com"]
per_recipient = 1

[[mirrors.sites]]
url = "https://d1a2b3c4.cloudfront.net"

[images]
fetch = false

[web]
rate_limit = {rate_limit}
"""


def write_config(folder: Path, *, database: str | None = None, rate_limit: int = 1000,
                 public_url: str = "http://127.0.0.1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "newsletter.toml"
    path.write_text(CONFIG.format(
        public_url=public_url, database=database or "sqlite:///data/newsletter.db",
        feed=REPO / "examples" / "sample-feed.atom.xml", rate_limit=rate_limit,
    ), encoding="utf-8")
    return path


def add_storage_setting(config: Path, setting: str) -> int:
    """Add a line to the config's ``[storage]`` table; return its line number."""
    text = config.read_text(encoding="utf-8")
    anchor = 'key_file = "secrets/keys.json"\n'
    config.write_text(text.replace(anchor, f"{anchor}{setting}\n"), encoding="utf-8")
    return text[:text.index(anchor)].count("\n") + 2


def in_process(config: Path, *args: str) -> int:
    """``newsletter --config CONFIG ARGS`` in this process (pytest captures its output)."""
    from mailer.cli.base import run_cli

    return run_cli(["--config", str(config), *args])


def listed_ids(config: Path, csv_text: str) -> list[int]:
    """A key file and these CSV rows imported as confirmed; the new ids, ascending."""
    from sqlalchemy import create_engine, select

    from subscribers.schema import subscribers

    assert in_process(config, "keys", "init") == 0
    csv = config.parent / "in.csv"
    csv.write_text(f"email,language\n{csv_text}", encoding="utf-8")
    assert in_process(config, "subscribers", "import", str(csv), "--confirmed") == 0
    engine = create_engine(f"sqlite:///{config.parent / 'data' / 'newsletter.db'}")
    with engine.connect() as conn:
        ids = list(conn.execute(select(subscribers.c.id).order_by(subscribers.c.id)).scalars())
    engine.dispose()
    return ids


@dataclass
class Result:
    code: int
    out: str
    err: str


def run(config: Path, *args: str, env: dict[str, str] | None = None,
        input: str | None = None) -> Result:
    """Run ``newsletter --config CONFIG ARGS`` in the config's folder (``input`` on stdin)."""
    proc = subprocess.run(
        [*NEWSLETTER, "--config", str(config), *args], cwd=config.parent, capture_output=True,
        input=input,
        text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Server:
    base: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextmanager
def serve(config: Path, *extra: str) -> Iterator[Server]:
    """Start ``newsletter serve --port 0`` and wait for the port it reports."""
    log_path = config.parent / f"serve-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*NEWSLETTER, "--config", str(config), "-v", "serve", "--host", "127.0.0.1",
             "--port", "0", *extra],
            cwd=config.parent, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                m = re.search(r"serving on (http://127\.0\.0\.1:\d+)", log_path.read_text())
                if m:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not start:\n{log_path.read_text()}")
                time.sleep(0.05)
            yield Server(m.group(1), proc, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
