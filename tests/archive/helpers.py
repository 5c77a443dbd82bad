"""A deployment with sent editions, for archive tests: real posts, readers and sends."""

from __future__ import annotations

import base64
import io
import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image
from sqlalchemy import insert, select

from mailer.app import App
from mailer.cli.base import run_cli
from mailer.schema import feeds, posts
from tests.scheduler.helpers import write_config

__all__ = ["READERS", "SITES", "add_post", "archive_config", "free_port", "png_data_url", "send_editions", "site_files"]

READERS = (("li.wei@example.com", "zh-Hans"), ("anna@example.net", "en"), ("chen@example.org", "zh-Hans"))
SITES = "".join(f'\n[[mirrors.sites]]\nurl = "https://mirror-{i}.example.net"\nstatus = "active"\n'
                for i in range(4))
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def png_data_url(color: tuple[int, int, int]) -> str:
    """A small real PNG as a data: URL: an image the renderer embeds with no network."""
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def archive_config(tmp: Path, db_url: str, *, archive: str = "", sites: str = SITES, images: str = "") -> Path:
    """The scheduler tests' config, images on (data: URLs only), mirrors and ``archive``."""
    path = write_config(tmp, db_url, editors=(), extra=sites + archive)
    text = path.read_text(encoding="utf-8").replace("[images]\nfetch = false", f"[images]\nfetch = true\n{images}")
    path.write_text(text, encoding="utf-8")
    return path


def add_post(app: App, k: int, language: str, title: str, body: str, images: str = "[]") -> None:
    url = "https://example.blogspot.com/feeds/posts/default"
    with app.engine.begin() as conn:
        feed_id = conn.execute(select(feeds.c.id).where(feeds.c.url == url)).scalar()
        if feed_id is None:
            feed_id = conn.execute(insert(feeds).values(url=url, status="ok").returning(feeds.c.id)).scalar_one()
        conn.execute(insert(posts).values(
            feed_id=feed_id, guid=f"tag:archive-{k}", link=f"https://example.blogspot.com/2026/11/{k}.html",
            title=title, content_html=body, language=language, published=T0 + timedelta(hours=k),
            content_hash=f"{k:064d}", images_json=images, is_new=True, revision=1, created_at=T0, updated_at=T0))


def send_editions(config: Path, editions: int = 2) -> App:
    """Readers, then ``editions`` editions sent through ``newsletter send`` (two posts each,
    one Chinese with an image, one English)."""
    app = App.from_path(config, environ={})
    for address, language in READERS:
        app.subscribers.add(address, language, confirmed=True)
    for n in range(editions):
        image = png_data_url((200, 30 * n, 40))
        add_post(app, 2 * n, "zh-Hans", f"维权律师的软件与信息安全 第{n + 1}期",
                  f'<p>正文 {n}。</p><p><img src="{image}" alt="图 {n}"></p>',
                  json.dumps([{"url": image, "alt": f"图 {n}"}]))
        add_post(app, 2 * n + 1, "en", f"Digital security for lawyers, part {n + 1}",
                  f'<p>Body {n} with <a href="https://example.blogspot.com/2026/11/{n}.html">a link</a>.</p>')
        assert run_cli(["--config", str(config), "send"]) == 0
    return app


def site_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
