"""Hostile image URLs in a post, through ``newsletter poll`` + ``newsletter preview`` subprocesses.

A loopback server on 127.0.0.1 stands for an internal service (a database admin page, cloud
metadata): it must get no request, whichever way a post spells its address. A second server on
127.0.0.2 stands for the public web: it is named in the test-only allowance
(``unsafe_allow_networks_for_tests``), the way a deployment never does, and shows that images
still arrive.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from PIL import Image

from tests.support.http import HTTPServer, Reply

REPO = Path(__file__).resolve().parents[2]


def _png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), colour).save(buf, "PNG")
    return buf.getvalue()


SECRET = _png("red")
PUBLIC = _png("blue")


@pytest.fixture
def internal() -> Iterator[HTTPServer]:
    server = HTTPServer("127.0.0.1").start()
    server.routes["/secret.png"] = Reply(body=SECRET, headers={"Content-Type": "image/png"})
    yield server
    server.stop()


@pytest.fixture
def public() -> Iterator[HTTPServer]:
    server = HTTPServer("127.0.0.2").start()
    server.routes["/ok.png"] = Reply(body=PUBLIC, headers={"Content-Type": "image/png"})
    yield server
    server.stop()


def _feed(path: Path, images: list[str]) -> None:
    imgs = "".join(f'&lt;p&gt;&lt;img src="{u}" alt="pic{i}"&gt;&lt;/p&gt;' for i, u in enumerate(images))
    path.write_text(f"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <id>tag:hostile.example,2026:feed</id><title>Hostile</title>
  <updated>2026-11-20T09:30:00Z</updated>
  <link rel="alternate" href="https://hostile.example/"/>
  <entry>
    <id>tag:hostile.example,2026:1</id><title>A post with images</title>
    <updated>2026-11-20T09:30:00Z</updated><published>2026-11-20T09:30:00Z</published>
    <link rel="alternate" href="https://hostile.example/2026/11/post.html"/>
    <content type="html">&lt;p&gt;Some text for the reader, long enough to be a post.&lt;/p&gt;{imgs}</content>
  </entry>
</feed>
""", encoding="utf-8")


def _config(tmp_path: Path, feed: Path, images: str, fetch: str = "") -> Path:
    text = (REPO / "newsletter.toml").read_text(encoding="utf-8")
    text = (
        text.replace("examples/sample-feed.atom.xml", str(feed))
        .replace("sqlite:///data/newsletter.db", f"sqlite:///{tmp_path / 'n.db'}")
        .replace("data/keys.json", str(tmp_path / "keys.json"))
        .replace('"data/outbox"', f'"{tmp_path / "outbox"}"')
        .replace('fetch = false   # the sample', f'fetch = true\n{images}\n# the sample')
    )
    if fetch:
        assert "\n[fetch]" not in text
        text += f"\n[fetch]\n{fetch}\n"
    path = tmp_path / "newsletter.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _newsletter(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    return subprocess.run([sys.executable, "-m", "mailer", "--config", str(config), *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def _preview(tmp_path: Path, config: Path) -> tuple[subprocess.CompletedProcess[str], list[bytes], str]:
    polled = _newsletter(config, "poll")
    assert polled.returncode == 0, polled.stderr
    out = tmp_path / "preview"
    shown = _newsletter(config, "preview", "--language", "en", "--out", str(out))
    assert shown.returncode == 0, shown.stderr
    msg = message_from_bytes((out / "en.eml").read_bytes(), policy=policy.default)
    parts = [p.get_payload(decode=True) for p in msg.walk() if p.get_content_maintype() == "image"]
    return shown, parts, (out / "en.html").read_text(encoding="utf-8")


ALLOW_PUBLIC = 'unsafe_allow_networks_for_tests = ["127.0.0.2/32"]'


def test_no_spelling_of_an_internal_address_is_fetched(
    tmp_path: Path, internal: HTTPServer, public: HTTPServer
) -> None:
    port = internal.port
    public.routes["/redirect.png"] = Reply(302, headers={"Location": internal.url("/secret.png")})
    public.routes["/to-localhost.png"] = Reply(
        301, headers={"Location": f"http://localhost:{port}/secret.png"})
    hostile = [
        f"http://127.0.0.1:{port}/secret.png",
        f"http://localhost:{port}/secret.png",
        f"http://2130706433:{port}/secret.png",  # 127.0.0.1 in decimal
        f"http://0x7f.1:{port}/secret.png",  # and in hex, short form
        f"http://0177.0.0.1:{port}/secret.png",  # and in octal (httpx calls it invalid)
        f"http://[::ffff:127.0.0.1]:{port}/secret.png",  # IPv4-mapped IPv6
        public.url("/redirect.png"),  # a "public" URL that 302s to the internal one
        public.url("/to-localhost.png"),
    ]
    _feed(tmp_path / "feed.xml", [*hostile, public.url("/ok.png")])
    config = _config(tmp_path, tmp_path / "feed.xml", "", fetch=ALLOW_PUBLIC)
    shown, parts, html = _preview(tmp_path, config)
    assert internal.requests == []
    assert parts == [PUBLIC]  # the public image is embedded; no secret bytes anywhere
    assert sorted(p for p, _ in public.requests) == ["/ok.png", "/redirect.png", "/to-localhost.png"]
    for url in hostile:
        # Degrades like a failed fetch: one warning per URL, the alt text in the mail.
        said = "InvalidURL" if "0177" in url else "refused"
        assert shown.stderr.count(f"image {url}: {said}") == 1, shown.stderr
    for i in range(len(hostile)):
        assert f"pic{i}" in html


def test_without_the_allowance_loopback_images_are_refused(tmp_path: Path, public: HTTPServer) -> None:
    """The default guards: the same public-standing server is refused when not allowed."""
    _feed(tmp_path / "feed.xml", [public.url("/ok.png")])
    shown, parts, _html = _preview(tmp_path, _config(tmp_path, tmp_path / "feed.xml", ""))
    assert public.requests == []
    assert parts == []
    assert "127.0.0.2 is not a public address" in shown.stderr


def test_a_trickling_image_server_cannot_stall_the_edition(tmp_path: Path, public: HTTPServer) -> None:
    """One byte every half second, for ever: each image has 2 s, all of them 4 s."""
    slow = Reply(body=PUBLIC, headers={"Content-Type": "image/png"}, trickle=0.5)
    for i in range(6):
        public.routes[f"/slow{i}.png"] = slow
    urls = [public.url("/ok.png"), *(public.url(f"/slow{i}.png") for i in range(6))]
    _feed(tmp_path / "feed.xml", urls)
    # Unbounded, one byte every 0.5 s of a ~1 KB PNG would take minutes per image.
    config = _config(tmp_path, tmp_path / "feed.xml", "timeout = 2\ndeadline = 4", fetch=ALLOW_PUBLIC)
    assert _newsletter(config, "poll").returncode == 0
    started = time.monotonic()
    shown = _newsletter(config, "preview", "--language", "en", "--out", str(tmp_path / "p"), timeout=60)
    took = time.monotonic() - started
    assert shown.returncode == 0, shown.stderr
    assert took < 12, took
    assert "not done within 2s" in shown.stderr
    msg = message_from_bytes((tmp_path / "p" / "en.eml").read_bytes(), policy=policy.default)
    parts = [p.get_payload(decode=True) for p in msg.walk() if p.get_content_maintype() == "image"]
    assert parts == [PUBLIC]
    html = (tmp_path / "p" / "en.html").read_text(encoding="utf-8")
    for i in range(1, 7):
        assert f"pic{i}" in html  # the late ones show their alt text


def test_the_phase_deadline_bounds_many_slow_images(tmp_path: Path, public: HTTPServer) -> None:
    slow = Reply(body=PUBLIC, headers={"Content-Type": "image/png"}, trickle=0.5)
    for i in range(12):
        public.routes[f"/slow{i}.png"] = slow
    _feed(tmp_path / "feed.xml", [public.url(f"/slow{i}.png") for i in range(12)])
    config = _config(tmp_path, tmp_path / "feed.xml", "timeout = 30\ndeadline = 3", fetch=ALLOW_PUBLIC)
    assert _newsletter(config, "poll").returncode == 0
    started = time.monotonic()
    shown = _newsletter(config, "preview", "--language", "en", "--out", str(tmp_path / "p"), timeout=60)
    took = time.monotonic() - started
    assert shown.returncode == 0, shown.stderr
    assert took < 15, took  # 12 images x 30 s / 4 workers would be 90 s
    assert "the edition's 3s image deadline passed; 12 image(s)" in shown.stderr


def test_poll_refuses_a_feed_redirect_to_an_internal_address(
    tmp_path: Path, internal: HTTPServer, public: HTTPServer
) -> None:
    """The operator chose the feed's host, not where it redirects."""
    internal.routes["/feed.xml"] = Reply(body=b"<rss version='2.0'><channel><title>x</title></channel></rss>")
    public.routes["/feed.xml"] = Reply(302, headers={"Location": internal.url("/feed.xml")})
    _feed(tmp_path / "unused.xml", [])
    config = _config(tmp_path, tmp_path / "unused.xml", "", fetch=ALLOW_PUBLIC)
    text = config.read_text(encoding="utf-8").replace(f'"{tmp_path / "unused.xml"}"', f'"{public.url("/feed.xml")}"')
    config.write_text(text, encoding="utf-8")
    polled = _newsletter(config, "poll")
    assert "redirect refused: 127.0.0.1 is not a public address" in polled.stdout + polled.stderr
    assert [p for p, _ in public.requests] == ["/feed.xml"]
    assert internal.requests == []


def test_preview_image_files_have_an_extension(tmp_path: Path, public: HTTPServer) -> None:
    """A file browser and an image viewer open the preview's images: they end in .png."""
    _feed(tmp_path / "feed.xml", [public.url("/ok.png")])
    _shown, parts, html = _preview(tmp_path, _config(tmp_path, tmp_path / "feed.xml", "",
                                                     fetch=ALLOW_PUBLIC))
    assert parts == [PUBLIC]
    [image] = [p for p in (tmp_path / "preview").iterdir() if p.name.startswith("en-")]
    assert image.suffix == ".png"
    assert image.read_bytes() == PUBLIC
    assert f'src="{image.name}"' in html
