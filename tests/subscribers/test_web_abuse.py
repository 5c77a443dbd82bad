"""The public pages tried as an attacker would (issue 15): over real HTTP, against
``newsletter serve`` started as a subprocess."""

from __future__ import annotations

import email
import os
import random
import re
import sqlite3
import statistics
import time
from email import policy
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
    assert first == [200, 200, 429]
    assert second == [200, 200]
    assert spoof == [429, 429]


def test_without_trusted_proxies_the_header_is_ignored(tmp_path: Path) -> None:
    config = write_config(tmp_path, rate_limit=2)
    assert run(config, "keys", "init").code == 0
    with serve(config) as server:
        codes = _codes(server.base, ["198.51.100.1", "198.51.100.2", "198.51.100.3"])
    assert codes == [200, 200, 429]  # one bucket: the peer's


def test_a_bad_trusted_proxy_is_one_line_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    _with_web(config, 'trusted_proxies = ["nginx"]')
    result = run(config, "serve", "--port", "0")
    assert result.code == 2
    assert "web.trusted_proxies" in result.err
    assert result.err.strip().count("\n") == 0, result.err


# --------------------------------------------------------------------------- the form


def _subscribe(base: str, address: str, language: str = "en") -> int:
    with httpx.Client(base_url=base, timeout=30) as client:  # a fresh visitor
        return client.post("/subscribe", data={"email": address,
                                               "language": language}).status_code


def _count(folder: Path, table: str) -> int:
    db = sqlite3.connect(folder / "data" / "newsletter.db", timeout=30)
    try:
        return int(db.execute(f"select count(*) from {table}").fetchone()[0])
    except sqlite3.OperationalError:  # no such table (a version without the request queue)
        return 0
    finally:
        db.close()


def _settled(folder: Path, limit: float = 60.0) -> None:
    """Until every request is decided and every confirmation sent."""
    end = time.monotonic() + limit
    while _count(folder, "signup_requests") or _count(folder, "confirmations"):
        assert time.monotonic() < end, "the worker did not finish"
        time.sleep(0.1)


def _mails(folder: Path) -> list[email.message.EmailMessage]:
    out = []
    for f in sorted((folder / "data" / "outbox" / "new").glob("*")):
        msg = email.message_from_bytes(f.read_bytes(), policy=policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        out.append(msg)
    return out


def _link(msg: email.message.EmailMessage, kind: str) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    found = re.search(rf"/{kind}/([A-Za-z0-9_-]+)", body.get_content())
    assert found is not None
    return f"/{kind}/{found.group(1)}"


def _site(folder: Path, web: str = "", listed: str = "") -> Path:
    config = write_config(folder)
    if web:
        _with_web(config, web)
    assert run(config, "keys", "init").code == 0
    if listed:
        (folder / "list.csv").write_text(f"email,language\n{listed}", encoding="utf-8")
        assert run(config, "subscribers", "import", "list.csv", "--confirmed").code == 0
    return config


def test_one_confirmation_per_address_and_a_cap_per_domain_across_two_servers(
        tmp_path: Path) -> None:
    config = _site(tmp_path, "confirm_domain_per_hour = 3")
    with serve(config) as one, serve(config) as two:
        codes = [_subscribe(server.base, "victim@corp-mail.example")
                 for _ in range(10) for server in (one, two)]
        codes += [_subscribe(two.base, f"staff{i}@big-company.example") for i in range(6)]
        _settled(tmp_path)
    assert set(codes) == {200}  # the same answer every time
    to = [str(m["To"]) for m in _mails(tmp_path)]
    assert to.count("victim@corp-mail.example") == 1  # twenty requests, two processes: one
    assert sum(a.endswith("@big-company.example") for a in to) == 3  # the domain's cap
    assert _count(tmp_path, "subscribers") == 4  # a request over a limit changes nothing


def test_a_confirmation_link_stays_valid_whatever_later_requests_do(tmp_path: Path) -> None:
    config = _site(tmp_path, 'confirm_every = "1s"')
    with serve(config) as server:
        assert _subscribe(server.base, "slow.reader@qq.com", "zh-Hant") == 200
        _settled(tmp_path)
        [first] = _mails(tmp_path)
        time.sleep(1.5)  # past the window: a second confirmation may go
        assert _subscribe(server.base, "slow.reader@qq.com", "en") == 200
        _settled(tmp_path)
        assert len(_mails(tmp_path)) == 2
        # The reader opens the first mail: its link still confirms.
        answer = httpx.post(f"{server.base}{_link(first, 'confirm')}", timeout=30)
    assert answer.status_code == 200
    assert "訂閱已確認" in answer.text or "Subscription confirmed" in answer.text


def test_an_active_readers_language_changes_only_through_their_confirmation(
        tmp_path: Path) -> None:
    config = _site(tmp_path, listed="reader.hk@qq.com,zh-Hant\n")
    with serve(config) as server:
        assert _subscribe(server.base, "reader.hk@qq.com", "en") == 200
        _settled(tmp_path)
        found = run(config, "subscribers", "find", input="reader.hk@qq.com\n")
        assert ", active, zh-Hant," in found.out  # the form alone changed nothing
        [mail] = _mails(tmp_path)
        assert mail["To"] == "reader.hk@qq.com"
        assert "更改語言" in str(mail["Subject"])  # in the reader's own language
        link = _link(mail, "language")
        page = httpx.get(f"{server.base}{link}", timeout=30)  # a link scanner: nothing
        assert page.status_code == 200
        assert "<button" in page.text
        assert ", zh-Hant," in run(config, "subscribers", "find", input="reader.hk@qq.com\n").out
        assert httpx.post(f"{server.base}{link[:-1]}A", timeout=30).status_code == 400
        done = httpx.post(f"{server.base}{link}", timeout=30)
        assert done.status_code == 200
        assert "Language changed" in done.text
    assert ", active, en," in run(config, "subscribers", "find", input="reader.hk@qq.com\n").out


@pytest.mark.skipif(os.cpu_count() == 1, reason="timing needs a second core for the server")
def test_the_form_takes_as_long_for_a_reader_as_for_a_stranger(tmp_path: Path) -> None:
    """Issue 15: the medians for active, pending and new addresses differ by less than the
    noise between two groups of the same kind (two active readers)."""
    rounds = 200
    config = _site(tmp_path, "confirm_domain_per_hour = 100000",
                   listed="active.a@qq.com,en\nactive.b@163.com,en\n")
    with serve(config) as server:
        assert _subscribe(server.base, "pending.c@126.com") == 200
        _settled(tmp_path)
        kinds = ["active.a@qq.com", "active.b@163.com", "pending.c@126.com", "new"]
        order = [k for k in kinds for _ in range(rounds)]
        random.Random(15).shuffle(order)
        times: dict[str, list[float]] = {k: [] for k in kinds}
        with httpx.Client(base_url=server.base, timeout=30) as client:
            for _ in range(20):  # warm up
                client.post("/subscribe", data={"email": "active.a@qq.com", "language": "en"})
            for n, kind in enumerate(order):
                address = f"new.{n}@sina.com" if kind == "new" else kind
                start = time.perf_counter()
                resp = client.post("/subscribe", data={"email": address, "language": "en"})
                times[kind].append(time.perf_counter() - start)
                assert resp.status_code == 200
        _settled(tmp_path, 120)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    # The noise: how far apart the medians of the same kind fall, between the two readers
    # and between the two halves (alternate requests) of every group.
    halves = [abs(statistics.median(v[0::2]) - statistics.median(v[1::2])) * 1000
              for v in times.values()]
    noise = max(abs(med["active.a@qq.com"] - med["active.b@163.com"]), *halves)
    # Never below 2.5 ms (a loaded 2-core machine), never above 4: before the fix a new
    # address took 5.3 ms longer than an active one (8.7 ms on this machine under load).
    tolerance = min(max(2 * noise, 2.5), 4.0)
    reader = (med["active.a@qq.com"] + med["active.b@163.com"]) / 2
    print(f"medians (ms): {med}; noise {noise:.2f}, tolerance {tolerance:.2f}")
    assert abs(med["new"] - reader) < tolerance, med
    assert abs(med["pending.c@126.com"] - reader) < tolerance, med
    assert len(_mails(tmp_path)) == rounds + 1  # the new ones really were new
