"""Editions, previews, test sends and mirrors through the admin, over real HTTP against
``newsletter admin serve``; the results checked with the CLI and on disk."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.cli import newsletter
from tests.web.support import add_user, admin_config, admin_serve, csrf_of, login

pytestmark = pytest.mark.slow


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str) -> Path:
    path = admin_config(tmp_path, sqlite_url, admin="four_eyes = true")
    polled = newsletter(path, "poll")
    assert polled.returncode == 0, polled.stderr
    add_user(path, "alice", "editor")
    add_user(path, "bob", "editor")
    add_user(path, "olga", "operator")
    return path


def _create(c: object) -> int:
    page = c.get("/editions/new")  # type: ignore[attr-defined]
    posts = re.findall(r'name="post" value="(\d+)" checked', page.text)
    assert posts
    resp = c.post("/editions/new", data={"csrf": csrf_of(page.text), "post": posts,  # type: ignore[attr-defined]
                                         "kind": "digest", "note_en": "Hello"})
    assert resp.status_code == 303, resp.text
    return int(resp.headers["location"].rsplit("/", 1)[1])


def test_preview_is_the_readers_message_in_a_sandbox(config: Path) -> None:
    with admin_serve(config) as server, server.client() as c:
        login(c, "alice")
        eid = _create(c)
        page = c.get(f"/editions/{eid}")
        assert page.status_code == 200
        frames = re.findall(r'<iframe sandbox src="([^"]+)"', page.text)
        assert len(frames) == 5
        for src in frames:
            resp = c.get(src)
            assert resp.status_code == 200
            csp = resp.headers["content-security-policy"]
            assert csp.startswith("sandbox;")
            assert "script-src" not in csp
            assert "default-src 'none'" in csp
            assert resp.headers["x-frame-options"] == "SAMEORIGIN"
            assert "<html" in resp.text.lower()
            assert "@@SLOT" not in resp.text  # personalised like a real message
        eml = c.get(f"/editions/{eid}/preview/en.eml")
        assert eml.headers["content-type"].startswith("message/rfc822")
        assert b"\r\nSubject: " in eml.content
        assert b"To: reader@example.org" in eml.content


def test_four_eyes_and_cancel_confirmation(config: Path) -> None:
    with admin_serve(config) as server, server.client() as a, server.client() as b:
        login(a, "alice")
        eid = _create(a)
        page = a.get(f"/editions/{eid}")
        refused = a.post(f"/editions/{eid}/action", data={"csrf": csrf_of(page.text),
                                                          "action": "approve"})
        assert refused.status_code == 409
        assert "Four eyes" in refused.text
        assert "draft" in newsletter(config, "editions", "show", str(eid)).stdout
        login(b, "bob")
        page = b.get(f"/editions/{eid}")
        assert 'value="approve"' in page.text
        ok = b.post(f"/editions/{eid}/action", data={"csrf": csrf_of(page.text), "action": "approve"})
        assert ok.status_code == 303
        assert "approved" in newsletter(config, "editions", "show", str(eid)).stdout
        ask = b.post(f"/editions/{eid}/action", data={"csrf": csrf_of(page.text), "action": "cancel"})
        assert ask.status_code == 200
        assert "Yes, cancel it" in ask.text
        assert "approved" in newsletter(config, "editions", "show", str(eid)).stdout
        done = b.post(f"/editions/{eid}/action", data={"csrf": csrf_of(page.text),
                                                       "action": "cancel", "confirm": "yes"})
        assert done.status_code == 303
        assert "cancelled" in newsletter(config, "editions", "show", str(eid)).stdout
        audit = b.get("/audit").text
        assert "approve" in audit
        assert "cancel" in audit
        assert "bob" in audit


def test_schedule_in_the_configured_zone_and_bad_times_refused(config: Path) -> None:
    with admin_serve(config) as server, server.client() as c:
        login(c, "alice")
        eid = _create(c)
        page = c.get(f"/editions/{eid}")
        resp = c.post(f"/editions/{eid}/schedule", data={"csrf": csrf_of(page.text),
                                                         "at": "2099-03-05T08:00"})
        assert resp.status_code == 303
        shown = c.get(f"/editions/{eid}").text
        assert "Thursday 2099-03-05 08:00 Asia/Shanghai (2099-03-05 00:00 UTC)" in shown
        past = c.post(f"/editions/{eid}/schedule", data={"csrf": csrf_of(page.text),
                                                         "at": "2001-01-01T08:00"})
        assert past.status_code == 409
        assert "past" in past.text
        junk = c.post(f"/editions/{eid}/schedule", data={"csrf": csrf_of(page.text), "at": "soon"})
        assert junk.status_code == 409


def test_test_send_names_each_address_and_never_records_it(config: Path, tmp_path: Path) -> None:
    with admin_serve(config) as server, server.client() as c:
        login(c, "alice")
        eid = _create(c)
        page = c.get(f"/editions/{eid}")
        resp = c.post(f"/editions/{eid}/test", data={
            "csrf": csrf_of(page.text), "language": "zh-Hant",
            "to": "first.editor@example.org\nsecond.editor@example.net"})
        assert resp.status_code == 200, resp.text
        assert "first.editor@example.org" in resp.text
        assert "second.editor@example.net" in resp.text
        log = server.log()
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in (".db", ".log", ".db-wal"):
            data = path.read_bytes()
            assert b"first.editor@example.org" not in data, path
    assert "first.editor" not in log


def test_operator_retires_a_mirror_and_the_file_keeps_its_comments(config: Path) -> None:
    before = config.read_text(encoding="utf-8")
    with admin_serve(config) as server, server.client() as c:
        login(c, "olga")
        page = c.get("/mirrors")
        forms = re.findall(r'action="/mirrors/(\d+)" class="inline"><input [^>]+>'
                           r'<input type="hidden" name="url" value="([^"]+)">'
                           r'<input type="hidden" name="status" value="([a-z]+)">', page.text)
        found = [(i, url) for i, url, status in forms
                 if url == "https://cr-reserve.pages.dev" and status == "retired"]
        assert found, forms
        m = re.match(r"(\d+) (\S+)", f"{found[0][0]} {found[0][1]}")
        assert m
        resp = c.post(f"/mirrors/{m.group(1)}", data={"csrf": csrf_of(page.text), "url": m.group(2),
                                                      "status": "retired"})
        assert resp.status_code == 303, resp.text
        after = config.read_text(encoding="utf-8")
        assert after.count("#") == before.count("#")
        assert 'url = "https://cr-reserve.pages.dev"\nstatus = "retired"\nretired = ' in after
        # A page older than the file is refused, and the file is left alone.
        stale = c.post(f"/mirrors/{m.group(1)}", data={"csrf": csrf_of(page.text),
                                                       "url": "https://elsewhere.example",
                                                       "status": "active"})
        assert stale.status_code == 409
        assert config.read_text(encoding="utf-8") == after
        assert "mirror-retired" in c.get("/audit").text
    listed = newsletter(config, "mirrors", "list")
    assert "retired" in listed.stdout
