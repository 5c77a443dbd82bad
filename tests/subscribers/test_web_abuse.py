"""The public pages tried as an attacker would (issue 15): over real HTTP, against
``newsletter serve`` started as a subprocess."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.subscribers.support import run, serve, write_config

pytestmark = pytest.mark.slow


def _with_web(config: Path, lines: str) -> None:
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[web]\n", f"[web]\n{lines}\n"), encoding="utf-8")


def _codes(base: str, forwarded: list[str | None]) -> list[int]:
    out = []
    for value in forwarded:
        headers = {"X-Forwarded-For": value} if value else {}
        out.append(httpx.post(f"{base}/subscribe", data={"email": "x@qq.com"}, headers=headers,
                              timeout=30).status_code)
    return out


def test_behind_a_trusted_proxy_each_client_has_its_own_limit(tmp_path: Path) -> None:
    config = write_config(tmp_path, rate_limit=2)
    _with_web(config, 'trusted_proxies = ["127.0.0.1/32", "::1"]')
    assert run(config, "keys", "init").code == 0
    with serve(config) as server:
        # Two clients behind the proxy (loopback here), each at the limit, then a third.
        first = _codes(server.base, ["198.51.100.1"] * 3)
        second = _codes(server.base, ["6.6.6.6, 198.51.100.2"] * 2)
        # A client that varies what it writes left of the proxy's hop gains nothing.
        spoof = _codes(server.base, [f"10.9.9.{i}, 198.51.100.2" for i in range(2)])
    assert first == [403, 403, 429]  # no CSRF token, but counted
    assert second == [403, 403]
    assert spoof == [429, 429]


def test_without_trusted_proxies_the_header_is_ignored(tmp_path: Path) -> None:
    config = write_config(tmp_path, rate_limit=2)
    assert run(config, "keys", "init").code == 0
    with serve(config) as server:
        codes = _codes(server.base, ["198.51.100.1", "198.51.100.2", "198.51.100.3"])
    assert codes == [403, 403, 429]  # one bucket: the peer's


def test_a_bad_trusted_proxy_is_one_line_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    _with_web(config, 'trusted_proxies = ["nginx"]')
    result = run(config, "serve", "--port", "0")
    assert result.code == 2
    assert "web.trusted_proxies" in result.err
    assert result.err.strip().count("\n") == 0, result.err
