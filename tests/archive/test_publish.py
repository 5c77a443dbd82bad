"""``newsletter archive publish``: rclone to a local folder and to a real WebDAV server on
loopback (``rclone serve webdav``, started here); one failing target does not stop the others,
is reported on its own line and is synced on the next run."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailer.app import App
from mailer.archive.state import load_states
from mailer.pipeline import policy
from tests.archive.helpers import archive_config, free_port, send_editions, site_files
from tests.support.cli import newsletter

pytestmark = pytest.mark.slow


def _rclone() -> str:
    path = shutil.which("rclone")
    if path is None:
        pytest.skip("no rclone on PATH: install Debian's 'rclone' (as .ci/run does)")
    return path


class WebDAV:
    """``rclone serve webdav`` of a folder on a loopback port."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, tmp: Path) -> WebDAV:
        self.folder.mkdir(parents=True, exist_ok=True)
        (tmp / "serve.conf").write_text("", encoding="utf-8")
        self.proc = subprocess.Popen(
            [_rclone(), "--config", str(tmp / "serve.conf"), "serve", "webdav", str(self.folder),
             "--addr", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("rclone serve webdav did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def webdav(tmp_path: Path) -> Iterator[WebDAV]:
    server = WebDAV(tmp_path / "dav-root", free_port()).start(tmp_path)
    yield server
    server.stop()


def _config(tmp_path: Path, sqlite_url: str, dav_port: int, late_port: int) -> Path:
    (tmp_path / "rclone.conf").write_text(
        f"[dav]\ntype = webdav\nurl = http://127.0.0.1:{dav_port}/\nvendor = rclone\n\n"
        f"[late]\ntype = webdav\nurl = http://127.0.0.1:{late_port}/\nvendor = rclone\n",
        encoding="utf-8")
    archive = f"""
[archive]
rclone = "{_rclone()}"
rclone_config = "rclone.conf"
timeout = 60

[[archive.targets]]
remote = "public/archive"
url = "https://cr-archive.pages.dev"

[[archive.targets]]
remote = "late:news"

[[archive.targets]]
remote = "dav:news"
url = "https://storage.googleapis.com/cr-archive"
"""
    return archive_config(tmp_path, sqlite_url, archive=archive)


def test_publish_to_a_folder_and_webdav_a_failed_target_is_retried(
        tmp_path: Path, sqlite_url: str, webdav: WebDAV) -> None:
    late_port = free_port()
    config = _config(tmp_path, sqlite_url, webdav.port, late_port)
    send_editions(config, 2)
    unbuilt = newsletter(config, "archive", "publish")
    assert unbuilt.returncode == 2
    assert "archive build" in unbuilt.stderr
    assert newsletter(config, "archive", "build").returncode == 0
    built = site_files(tmp_path / "data" / "archive")

    first = newsletter(config, "archive", "publish")
    assert first.returncode == 1, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert any(line.startswith("ok") and "public/archive" in line for line in lines), first.stdout
    assert any(line.startswith("ok") and "dav:news" in line for line in lines), first.stdout
    assert any(line.startswith("FAILED") and "late:news" in line for line in lines), first.stdout
    assert "1 of 3 target(s) failed" in first.stderr
    # The target after the failing one got the archive all the same, byte for byte.
    assert site_files(tmp_path / "public" / "archive") == built
    assert site_files(webdav.folder / "news") == built
    app = App.from_path(config, environ={})
    states = load_states(app.engine)
    assert not states["late:news"].ok
    assert states["late:news"].consecutive_failures == 1
    assert states["dav:news"].ok

    # The failed host comes back: the next run syncs it and says it was a retry.
    late = WebDAV(tmp_path / "late-root", late_port).start(tmp_path)
    try:
        second = newsletter(config, "archive", "publish")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "late:news" in second.stdout
        assert "retried after a failure" in second.stdout
        assert site_files(late.folder / "news") == built
    finally:
        late.stop()
    assert load_states(app.engine)["late:news"].ok
    app.engine.dispose()


def test_the_daemon_builds_and_publishes_after_each_sent_edition(
        tmp_path: Path, sqlite_url: str, webdav: WebDAV) -> None:
    config = _config(tmp_path, sqlite_url, webdav.port, free_port())
    app = send_editions(config, 1)
    app = App.from_path(config, environ={})
    from tests.editions.helpers import add_posts

    add_posts(app.engine, 1)
    edition = app.editions.create(app.editions.unsent_post_ids(), kind="per-post")
    assert edition is not None
    app.editions.approve(edition)
    asyncio.run(policy.send_with_stop(app, edition, asyncio.Event()))  # the daemon's send job
    published = site_files(webdav.folder / "news")
    assert f"en/{edition}.html" in published
    assert "en/1.html" in published
    assert published == site_files(tmp_path / "data" / "archive")
    assert not load_states(app.engine)["late:news"].ok  # reported, and left for the next run
    app.engine.dispose()


def test_newsletter_run_publishes_the_archive_after_it_sends(tmp_path: Path, sqlite_url: str) -> None:
    """The real daemon: an approved edition is due, it is sent, and the archive of it appears on
    the target without anyone running ``archive`` by hand."""
    import signal
    import sys

    from tests.editions.helpers import add_posts
    from tests.support.cli import ENV

    config = archive_config(tmp_path, sqlite_url, archive=f"""
[archive]
rclone = "{_rclone()}"

[[archive.targets]]
remote = "public"
url = "https://cr-archive.pages.dev"
""")
    app = App.from_path(config, environ={})
    app.subscribers.add("reader@example.com", "en", confirmed=True)
    add_posts(app.engine, 2)
    edition = app.editions.create()
    assert edition is not None
    app.editions.approve(edition)  # approved with no time: due now
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(config), "run"],
                              stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=tmp_path)
    page = tmp_path / "public" / "en" / f"{edition}.html"
    try:
        deadline = time.monotonic() + 90
        while not page.is_file():
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        log.close()
    assert "Post 0" in page.read_text(encoding="utf-8")
    assert "public synced" in (tmp_path / "daemon.log").read_text()
    assert load_states(app.engine)[str(tmp_path / "public")].ok
    app.engine.dispose()
