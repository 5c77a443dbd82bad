"""Health checks against a real loopback HTTP server standing in for the origin and mirrors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine

from mailer.config import MirrorSettings, MirrorSite
from mailer.db import open_engine
from mailer.mirrors.health import Answer, MirrorChecker, compare, fingerprint, next_state
from mailer.mirrors.registry import MirrorHealth, MirrorRegistry, load_health
from tests.mirrors.helpers import NOW, SECRET, Clock
from tests.support.http import HTTPServer, Reply

PAGE = (b"<html><head><title>\xe5\x85\xac\xe6\xb0\x91 Rights | Post</title></head>"
        b"<body><a href='https://citizens-rights.blogspot.com/x'>x</a></body></html>")
MIRRORED = PAGE.replace(b"https://citizens-rights.blogspot.com", b"https://good.example")
PARKED = b"<html><head><title>This domain is for sale</title></head><body>buy</body></html>"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = open_engine(db_url)
    yield eng
    eng.dispose()


def _settings(server: HTTPServer, **kw: object) -> MirrorSettings:
    base = server.url("")
    sites = (
        MirrorSite(url=base + "/good"),
        MirrorSite(url=base + "/down"),
        MirrorSite(url=base + "/parked"),
        MirrorSite(url=base + "/spare", status="reserve"),
        MirrorSite(url=base + "/old", status="retired"),
    )
    return MirrorSettings(origins=(base + "/origin",), per_recipient=2, canary_path="/canary.html",
                          sites=sites, down_after=2, check_timeout=5.0, **kw)  # type: ignore[arg-type]


async def test_answers_failures_and_wrong_content(http_server: HTTPServer, engine: Engine) -> None:
    http_server.routes["/origin/canary.html"] = Reply(body=PAGE)
    http_server.routes["/good/canary.html"] = Reply(body=MIRRORED)
    http_server.routes["/down/canary.html"] = Reply(status=503, body=b"busy")
    http_server.routes["/parked/canary.html"] = Reply(body=PARKED)
    http_server.routes["/spare/canary.html"] = Reply(body=PAGE)
    settings = _settings(http_server)
    clock = Clock()
    checker = MirrorChecker(settings, engine, clock)

    first = {r.url: r for r in await checker.check()}
    base = http_server.url("")
    assert set(first) == {base + p for p in ("/good", "/down", "/parked", "/spare")}  # not retired
    assert first[base + "/good"].ok
    assert not first[base + "/down"].ok
    assert first[base + "/down"].detail == "HTTP 503"
    assert "wrong content" in first[base + "/parked"].detail
    # One failure is not enough to stop handing a mirror out.
    assert first[base + "/down"].healthy

    clock.now = NOW + timedelta(hours=6)
    second = {r.url: r for r in await checker.check()}
    assert not second[base + "/down"].healthy
    assert not second[base + "/parked"].healthy
    assert second[base + "/down"].consecutive_failures == 2
    health = load_health(engine)
    assert health[base + "/good"].last_ok_at == clock.now
    assert health[base + "/down"].last_error == "HTTP 503"
    assert health[base + "/down"].last_check_at == clock.now

    registry = MirrorRegistry(settings, engine, clock, SECRET)
    assert registry.candidates() == (base + "/good",)  # only healthy active mirrors go out

    # One success brings a mirror back; the registry's own check (the daemon's job) hands it
    # out again at once.
    http_server.routes["/down/canary.html"] = Reply(body=MIRRORED)
    clock.now = NOW + timedelta(hours=12)
    third = {r.url: r for r in await registry.check()}
    assert third[base + "/down"].healthy
    assert third[base + "/down"].consecutive_failures == 0
    assert set(registry.candidates()) == {base + "/good", base + "/down"}


async def test_origin_unreachable_judges_mirrors_alone(http_server: HTTPServer,
                                                       engine: Engine) -> None:
    http_server.routes["/good/canary.html"] = Reply(body=MIRRORED)
    http_server.routes["/parked/canary.html"] = Reply(body=PARKED)
    results = {r.url: r for r in await MirrorChecker(_settings(http_server), engine, Clock()).check()}
    base = http_server.url("")
    assert results[base + "/good"].ok
    assert results[base + "/parked"].ok  # cannot tell without the origin; not punished
    assert not results[base + "/down"].ok  # 404 from the server


async def test_through_proxies_onion_via_its_own(http_server: HTTPServer, engine: Engine) -> None:
    # The loopback server acts as a forward HTTP proxy: it sees absolute-form request targets,
    # so these made-up hosts are reachable only through it.
    onion = "http://abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz2345.onion"
    http_server.routes["http://origin.example/canary.html"] = Reply(body=PAGE)
    http_server.routes["http://mirror.example/canary.html"] = Reply(body=MIRRORED)
    http_server.routes[onion + "/canary.html"] = Reply(body=MIRRORED)
    proxy = http_server.url("")
    settings = MirrorSettings(
        origins=("http://origin.example",), canary_path="/canary.html", check_timeout=5.0,
        sites=(MirrorSite(url="http://mirror.example"), MirrorSite(url=onion, kind="onion")),
        proxy=proxy, onion_proxy=proxy,
    )
    results = {r.url: r for r in await MirrorChecker(settings, engine, Clock()).check()}
    assert results["http://mirror.example"].detail == "same page as the origin"
    assert results[onion].ok
    # Without the onion proxy the onion is not reachable at all: it is not checked (and so not
    # reported down for want of Tor), issue 22.
    no_tor = MirrorSettings(origins=settings.origins, canary_path="/canary.html", proxy=proxy,
                            check_timeout=5.0, sites=settings.sites)
    again = {r.url: r for r in await MirrorChecker(no_tor, engine, Clock()).check()}
    assert onion not in again
    assert again["http://mirror.example"].ok
    assert load_health(engine)[onion].healthy  # the state from the proxied check stays


def test_fingerprint_prefers_title() -> None:
    assert fingerprint(PAGE) == fingerprint(MIRRORED) == "title:公民 Rights | Post"
    assert fingerprint(b"no title") != fingerprint(b"no title!")
    assert fingerprint(b"<title> a \n b </title>") == "title:a b"


def test_compare_cases() -> None:
    ok = Answer(200, PAGE)
    assert compare(ok, Answer(error="ConnectTimeout: x")) == (False, "ConnectTimeout: x")
    assert compare(ok, Answer(200, b"  ")) == (False, "empty body")
    assert compare(ok, Answer(200, MIRRORED))[0]
    assert not compare(ok, Answer(200, PARKED))[0]


@given(results=st.lists(st.booleans(), max_size=12), down_after=st.integers(1, 4))
def test_next_state_down_after_n_up_after_one(results: list[bool], down_after: int) -> None:
    prev: MirrorHealth | None = None
    run = 0
    for ok in results:
        healthy, failures = next_state(prev, ok, down_after)
        run = 0 if ok else run + 1
        assert failures == run
        assert healthy == (ok or (run < down_after and (prev is None or prev.healthy)))
        assert healthy == (run < down_after)
        prev = MirrorHealth(url="u", healthy=healthy, consecutive_failures=failures)
