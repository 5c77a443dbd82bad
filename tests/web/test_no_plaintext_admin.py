"""The byte search for the admin: after a send, no reader's address is in any page the admin
shows (dashboard, editions, report, audit), in its log, or in its tables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.cli import newsletter
from tests.web.support import add_user, admin_config, admin_serve, login

pytestmark = pytest.mark.slow

ADDRESSES = ["zhang.wei.q7x3@qq.com", "lam.k4r8@rights-watch-hk.org", "reader.h8v4@example.org"]


def test_no_address_in_the_admins_pages_logs_or_tables(tmp_path: Path, sqlite_url: str) -> None:
    config = admin_config(tmp_path, sqlite_url)
    (tmp_path / "list.csv").write_text(
        "email,language\n" + "".join(f"{a},en\n" for a in ADDRESSES), encoding="utf-8")
    assert newsletter(config, "subscribers", "import", "--confirmed", "list.csv").returncode == 0
    assert newsletter(config, "poll").returncode == 0
    sent = newsletter(config, "send")
    assert sent.returncode == 0, sent.stderr
    add_user(config, "alice", "operator")
    pages = []
    with admin_serve(config) as server, server.client() as c:
        login(c, "alice")
        for path in ("/", "/editions", "/editions/1", "/editions/1/report", "/audit", "/mirrors",
                     "/editions/new"):
            resp = c.get(path)
            assert resp.status_code == 200, (path, re.findall(r"role=\"alert\">([^<]*)", resp.text))
            pages.append(resp.content)
        log = server.log().encode()
    blobs = [*pages, log, (tmp_path / "newsletter.db").read_bytes()]
    for address in ADDRESSES:
        for needle in (address.encode(), address.rpartition("@")[0].encode()):
            assert not any(needle in b for b in blobs), address
    assert b"rights-watch-hk" not in b"".join(pages)  # a rare domain singles a reader out
