"""``keys rotate`` while ``newsletter serve`` runs (issue 16): the server reads no key file when
it seals, yet follows the rotation on its own timer, and the rotation waits for that timer
before it retires the old key, so nothing is left sealed under a key that no longer exists."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.subscribers.support import run, serve, write_config

pytestmark = pytest.mark.slow


def _key_ids(folder: Path) -> set[str]:
    db = sqlite3.connect(folder / "data" / "newsletter.db", timeout=30)
    try:
        return {str(k) for (k,) in db.execute(
            "select key_id from subscribers union select key_id from signup_requests")}
    finally:
        db.close()


def _rows(folder: Path) -> int:
    db = sqlite3.connect(folder / "data" / "newsletter.db", timeout=30)
    try:
        return int(db.execute("select count(*) from subscribers").fetchone()[0])
    finally:
        db.close()


def _subscribe(base: str, address: str) -> int:
    # The form needs no cookie or CSRF token (it may be embedded on the blog, issue 19).
    return httpx.post(f"{base}/subscribe", data={"email": address, "language": "en"},
                      timeout=30).status_code


def test_a_running_server_seals_with_the_new_key_after_a_rotation(tmp_path: Path) -> None:
    config = write_config(tmp_path)  # [storage] key_reload_every = "1s"
    assert run(config, "keys", "init").code == 0
    (tmp_path / "in.csv").write_text("email,language\nfirst@qq.com,en\n", encoding="utf-8")
    assert run(config, "subscribers", "import", "in.csv", "--confirmed").code == 0
    [old] = _key_ids(tmp_path)
    with serve(config) as server:
        started = time.monotonic()
        rotated = run(config, "-v", "keys", "rotate")
        assert rotated.code == 0, rotated.err
        assert time.monotonic() - started >= 6  # it waited one reload (1 s) and the margin
        assert "waiting 6s for running processes" in rotated.err
        assert f"retired {old}" in rotated.out
        keys = json.loads((tmp_path / "secrets" / "keys.json").read_text(encoding="utf-8"))
        assert old not in json.dumps(keys)
        assert _subscribe(server.base, "late@qq.com") == 200
        deadline = time.monotonic() + 30
        while _rows(tmp_path) < 2:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
    [new] = _key_ids(tmp_path)  # the late reader's request and row too: no straggler
    assert new != old
    assert new in (tmp_path / "secrets" / "keys.json").read_text(encoding="utf-8")
    exported = run(config, "subscribers", "export", "--plaintext", "out.csv")
    assert exported.code == 0, exported.err
    assert "first@qq.com" in (tmp_path / "out.csv").read_text(encoding="utf-8")
