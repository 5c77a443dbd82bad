"""``newsletter archive build``: the site of every sent edition, deterministic, relative, complete."""

from __future__ import annotations

import re
from pathlib import Path

import feedparser
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.archive.publish import write_site
from mailer.archive.site import edition_page, page_links
from tests.archive.helpers import archive_config, send_editions, site_files
from tests.support.cli import newsletter
from tests.support.http import HTTPServer, Reply

HOSTS = """
[archive]
subscribe_mailto = "subscribe@example.org"

[[archive.targets]]
remote = "public"
url = "https://cr-archive.pages.dev"

[[archive.targets]]
remote = "r2:bucket/news"
url = "https://storage.googleapis.com/cr-archive"
"""


def test_build_twice_gives_the_same_bytes_and_rewrites_nothing(tmp_path: Path, sqlite_url: str) -> None:
    config = archive_config(tmp_path, sqlite_url, archive=HOSTS)
    send_editions(config, 2)
    first = newsletter(config, "archive", "build", "--out", str(tmp_path / "one"))
    assert first.returncode == 0, first.stderr
    assert "2 edition(s) in en, zh-Hans" in first.stdout
    second = newsletter(config, "archive", "build", "--out", str(tmp_path / "two"))
    assert second.returncode == 0, second.stderr
    one, two = site_files(tmp_path / "one"), site_files(tmp_path / "two")
    assert one == two
    assert {"index.html", "en/index.html", "zh-Hans/index.html", "en/feed.atom", "zh-Hans/feed.atom",
            "en/1.html", "en/2.html", "zh-Hans/1.html", "zh-Hans/2.html"} <= set(one)
    images = [p for p in one if p.startswith("images/")]
    assert len(images) == 2  # one per edition's picture, shared by both languages
    again = newsletter(config, "archive", "build", "--out", str(tmp_path / "one"))
    assert "(0 written, " in again.stdout, again.stdout
    # The default folder is [archive] folder (data/archive beside the config).
    default = newsletter(config, "archive", "build")
    assert default.returncode == 0, default.stderr
    assert site_files(tmp_path / "data" / "archive") == one


def test_pages_are_relative_self_contained_and_translated(tmp_path: Path, sqlite_url: str) -> None:
    config = archive_config(tmp_path, sqlite_url, archive=HOSTS)
    send_editions(config, 2)
    out = tmp_path / "site"
    assert newsletter(config, "archive", "build", "--out", str(out)).returncode == 0
    files = site_files(out)
    for path, data in files.items():
        if not path.endswith((".html", ".atom")):
            continue
        text = data.decode("utf-8")
        assert "<script" not in text.lower()
        assert "@@SLOT" not in text
        for ref in re.findall(r'(?:src|href)="([^"]+)"', text):
            if ref.startswith(("https://", "http://", "mailto:", "#")) or ref == "data:,":
                continue  # a link to elsewhere (the blog, another archive host), or the empty icon
            target = (out / path).parent / ref.split("#")[0]
            assert target.resolve().is_file(), f"{path}: {ref} does not resolve"
        for src in re.findall(r'src="([^"]+)"', text):
            assert not re.match(r"[a-z]+:|//", src), f"{path} loads {src}"
        assert path.endswith(".atom") or re.findall(r"<link\b[^>]*>", text) in ([], ['<link rel="icon" href="data:,">'])
    zh = files["zh-Hans/1.html"].decode()
    assert 'lang="zh-Hans"' in zh
    assert "维权律师的软件与信息安全 第1期" in zh
    assert "全部往期" in zh
    assert "本存档的其他地址" in zh
    assert 'src="../images/' in zh
    assert "mailto:subscribe@example.org" in zh
    assert "https://cr-archive.pages.dev/index.html" in zh
    index = files["en/index.html"].decode()
    assert index.index('href="2.html"') < index.index('href="1.html"')  # newest first
    root = files["index.html"].decode()
    assert 'href="en/index.html"' in root
    assert 'href="zh-Hans/index.html"' in root
    assert '<meta name="generator" content="newsletter-archive">' in root


def test_atom_feed_per_language_lists_the_editions_newest_first(tmp_path: Path, sqlite_url: str) -> None:
    config = archive_config(tmp_path, sqlite_url, archive=HOSTS)
    send_editions(config, 3)
    out = tmp_path / "site"
    assert newsletter(config, "archive", "build", "--out", str(out)).returncode == 0
    base = "https://cr-archive.pages.dev/zh-Hans/feed.atom"
    feed = feedparser.parse((out / "zh-Hans" / "feed.atom").read_bytes(),
                            response_headers={"content-location": base, "content-type": "application/atom+xml"})
    assert not feed.bozo, feed.get("bozo_exception")
    assert feed.feed.language == "zh-Hans"
    links = [e.link for e in feed.entries]
    assert links == [f"https://cr-archive.pages.dev/zh-Hans/{i}.html" for i in (3, 2, 1)]
    assert feed.entries[0].title.startswith("Newsletter · ")  # the mail's subject
    assert "维权律师的软件与信息安全 第3期" in feed.entries[0].content[0].value
    assert len({e.id for e in feed.entries}) == 3
    assert "正文" in feed.entries[-1].content[0].value
    # Our own [[feeds]] read it too (a second newsletter, or ours re-reading the archive).
    from mailer.feeds.parse import parse_feed

    ours = parse_feed((out / "zh-Hans" / "feed.atom").read_bytes(), feed_url=base)
    assert ours.warning is None
    assert [p.link for p in ours.posts] == links
    assert "维权律师的软件与信息安全 第3期" in ours.posts[0].content_html
    en = feedparser.parse((out / "en" / "feed.atom").read_bytes())
    assert [e.link for e in en.entries] == ["3.html", "2.html", "1.html"]


def test_build_with_no_sent_edition_writes_an_empty_archive(tmp_path: Path, sqlite_url: str) -> None:
    config = archive_config(tmp_path, sqlite_url, archive=HOSTS)
    result = newsletter(config, "archive", "build")
    assert result.returncode == 0, result.stderr
    assert "0 edition(s)" in result.stdout
    assert "No edition has been sent yet." in (tmp_path / "data/archive/en/index.html").read_text()


def test_page_links_name_each_host_and_the_first_language_of_a_pair() -> None:
    assert edition_page("zh-Hant", 12) == "zh-Hant/12.html"
    assert page_links(("https://a.example.net", "https://b.example.org/sub"), "zh-Hans+en", 7) == (
        ("a.example.net", "https://a.example.net/zh-Hans/7.html"),
        ("b.example.org", "https://b.example.org/sub/zh-Hans/7.html"),
    )


@given(hosts=st.lists(st.from_regex(r"https://[a-z]{1,8}\.example\.(net|org)(/[a-z]{1,5})?", fullmatch=True),
                      max_size=4),
       language=st.sampled_from(["en", "zh-Hans", "zh-Hant", "zh-Hans+en", "zh-Hant+en"]),
       edition=st.integers(min_value=1, max_value=10**6))
def test_page_links_point_at_the_one_page_path_on_each_host(hosts: list[str], language: str,
                                                            edition: int) -> None:
    links = page_links(hosts, language, edition)
    assert [url for _, url in links] == [f"{h}/{edition_page(language.split('+')[0], edition)}" for h in hosts]
    assert all(url.startswith(f"https://{host}") for host, url in links)


_FILES = st.dictionaries(st.from_regex(r"[a-z]{1,4}(/[a-z]{1,4})?\.html", fullmatch=True),
                         st.binary(max_size=20), max_size=5)


@settings(max_examples=40, deadline=None)
@given(first=_FILES, second=_FILES)
def test_write_site_leaves_exactly_the_files_and_rewrites_only_changes(
        first: dict[str, bytes], second: dict[str, bytes]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "site"
        write_site(first, folder)
        assert site_files(folder) == first
        report = write_site(second, folder)
        assert site_files(folder) == second
        assert set(report.written) == {p for p, d in second.items() if first.get(p) != d}
        assert set(report.removed) == set(first) - set(second)
        assert write_site(second, folder).written == ()


def test_build_refuses_a_folder_that_holds_something_else(tmp_path: Path, sqlite_url: str) -> None:
    config = archive_config(tmp_path, sqlite_url, archive=HOSTS)
    www = tmp_path / "www"
    www.mkdir()
    (www / "keep.txt").write_text("the operator's own file", encoding="utf-8")
    result = newsletter(config, "archive", "build", "--out", str(www))
    assert result.returncode == 2
    assert "is not empty and holds no archive" in result.stderr
    assert (www / "keep.txt").read_text(encoding="utf-8") == "the operator's own file"


def test_an_editions_images_are_fetched_once_not_on_every_build(
        tmp_path: Path, sqlite_url: str, http_server: HTTPServer) -> None:
    import io
    import json

    from PIL import Image

    from mailer.app import App
    from mailer.cli.base import run_cli
    from tests.archive.helpers import add_post

    buf = io.BytesIO()
    Image.new("RGB", (60, 40), (10, 120, 200)).save(buf, "PNG")
    http_server.routes["/photo.png"] = Reply(body=buf.getvalue(), headers={"Content-Type": "image/png"})
    url = http_server.url("/photo.png")
    config = archive_config(tmp_path, sqlite_url, archive=HOSTS,
                            images='unsafe_allow_networks_for_tests = ["127.0.0.0/8"]')
    app = App.from_path(config, environ={})
    app.subscribers.add("reader@example.com", "en", confirmed=True)
    add_post(app, 0, "en", "With a photo", f'<p>Look:</p><p><img src="{url}" alt="photo"></p>',
             json.dumps([{"url": url, "alt": "photo"}]))
    assert run_cli(["--config", str(config), "send"]) == 0
    fetched = len([p for p, _ in http_server.requests if p == "/photo.png"])
    assert fetched >= 1  # the mail embedded it
    for _ in range(2):
        assert newsletter(config, "archive", "build").returncode == 0
    assert len([p for p, _ in http_server.requests if p == "/photo.png"]) == fetched + 1
    [image] = [p for p in site_files(tmp_path / "data" / "archive") if p.startswith("images/")]
    assert f'src="../{image}"' in (tmp_path / "data" / "archive" / "en" / "1.html").read_text(encoding="utf-8")
    app.engine.dispose()
