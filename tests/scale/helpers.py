"""Shared pieces of the scale-out tests: a config, a counting SMTP sink, a seeded list, workers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailer.app import App
from subscribers.lifecycle import Event
from tests.editions.helpers import add_posts
from tests.support.smtp import SMTPServer

__all__ = ["REPO", "CountingHandler", "make_edition", "seed_subscribers", "spawn_cli",
           "write_config"]

REPO = Path(__file__).resolve().parents[2]


class CountingHandler:
    """Counts deliveries per recipient, keeping no bodies: 20,000 messages stay small."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay  # seconds per message: keeps messages in flight for stop tests
        self.lock = threading.Lock()
        self.per_rcpt: Counter[str] = Counter()
        self.message_ids: Counter[str] = Counter()
        self.port = 0  # set by whoever starts the server

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.per_rcpt.values())

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        content = envelope.original_content or envelope.content
        assert isinstance(content, bytes)
        head = content.split(b"\r\n\r\n", 1)[0]
        mid = next((line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                    if line.lower().startswith(b"message-id:")), "")
        with self.lock:
            self.per_rcpt.update(str(r) for r in envelope.rcpt_tos)
            self.message_ids[mid] += 1
        return "250 2.0.0 Ok: queued"


@contextmanager
def counting_sink(delay: float = 0.0) -> Iterator[CountingHandler]:
    """An aiosmtpd relay on an ephemeral port that only counts; ``handler.port`` is its port."""
    handler = CountingHandler(delay)
    server = SMTPServer(handler)  # type: ignore[arg-type]
    server.start()
    handler.port = server.port
    try:
        yield handler
    finally:
        server.stop()


def write_config(tmp: Path, db_url: str, smtp_port: int, *, connections: int = 2,
                 editors: tuple[str, ...] = ()) -> Path:
    text = f"""
[newsletter]
from = "Digest <digest@example.org>"
public_url = "https://news.example.org"
languages = ["en", "zh-Hans"]
editors = [{", ".join(f'"{e}"' for e in editors)}]

[storage]
database = "{db_url}"
key_file = "{tmp / "keys.json"}"

[delivery]
transport = "smtp"
commit_every = 64

[[delivery.relays]]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
connections = {connections}
rate = 0
timeout = 30

[mirrors]
origins = ["https://example.blogspot.com"]

[images]
fetch = false
"""
    path = tmp / "newsletter.toml"
    path.write_text(text, encoding="utf-8")
    return path


def seed_subscribers(app: App, n: int, *, batch: int = 2000) -> list[str]:
    """``n`` active subscribers, half English, half zh-Hans, through the encrypted store."""
    addresses = [f"reader{i}@example{i % 7}.org" for i in range(n)]
    for start in range(0, n, batch):
        rows = [(a, "en" if i % 2 else "zh-Hans")
                for i, a in enumerate(addresses[start:start + batch], start)]
        app.subscribers.add_batch(rows, Event.IMPORT_CONFIRMED)
    return addresses


def make_edition(app: App) -> int:
    post_ids = add_posts(app.engine, 2)
    edition_id = app.editions.create(post_ids)
    assert edition_id is not None
    app.editions.approve(edition_id)
    return edition_id


def spawn_cli(config: Path, *args: str, log: Path | None = None,
              **kwargs: Any) -> subprocess.Popen[bytes]:
    """``newsletter --config CONFIG ARGS`` as a real process; stderr to ``log`` if given."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-c", "from mailer.cli import main; main()", "--config", str(config),
            *args]
    if log is None:
        return subprocess.Popen(argv, cwd=REPO, env=env, **kwargs)
    with log.open("wb") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, cwd=REPO, env=env, stderr=err,
                                stdout=subprocess.DEVNULL, **kwargs)
