"""OONI web_connectivity JSONL: every line is read, and blocked mirrors are marked per country."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mailer.config import MirrorSettings, MirrorSite
from mailer.db import open_engine
from mailer.mirrors.ooni import blocked_mirrors, mark_blocked, read_measurements
from mailer.mirrors.registry import MirrorRegistry, load_health
from tests.mirrors.helpers import SECRET, Clock

SAMPLE = Path(__file__).parent / "data" / "ooni-web_connectivity.jsonl"
CF = "https://d1a2b3c4.cloudfront.net"
NETLIFY = "https://citizens-rights-mirror.netlify.app"
BUCKET = "https://storage.googleapis.com/cr-mirror-7f3a"
RESERVE = "https://cr-reserve.pages.dev"
SITES = (MirrorSite(url=CF), MirrorSite(url=NETLIFY), MirrorSite(url=BUCKET),
         MirrorSite(url=RESERVE, status="reserve"))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = open_engine(db_url)
    yield eng
    eng.dispose()


def test_every_line_is_read() -> None:
    measurements, skipped = read_measurements(SAMPLE.read_bytes())
    assert len(measurements) == 9
    assert [n for n, _ in skipped] == [6, 12]
    assert "not JSON" in skipped[0][1]
    assert "dnscheck" in skipped[1][1]
    gz, _ = read_measurements(gzip.compress(SAMPLE.read_bytes()))
    assert gz == measurements


def test_blocked_in_cn_latest_wins_and_host_wide_blocking() -> None:
    measurements, skipped = read_measurements(SAMPLE.read_bytes())
    report = blocked_mirrors(measurements, SITES, "cn", skipped)
    # cloudfront: DNS; netlify: the later http-failure beats an earlier success; the bucket
    # shares a host with a blocked *other* bucket (http-diff, path-specific) and is fine; the
    # reserve was blocked by TCP and then measured accessible later.
    assert set(report.blocked) == {CF, NETLIFY}
    assert report.blocked[NETLIFY].blocking == "http-failure"
    assert report.measured == {CF: 1, NETLIFY: 2, BUCKET: 1, RESERVE: 2}
    assert report.measurements == 9
    assert blocked_mirrors(measurements, SITES, "IR").blocked == {}


def test_host_wide_blocking_reaches_every_path_on_the_host() -> None:
    line = json.dumps({"input": "https://storage.googleapis.com/", "probe_cc": "CN",
                       "test_name": "web_connectivity",
                       "measurement_start_time": "2026-11-22 00:00:00",
                       "test_keys": {"blocking": "dns", "accessible": False}})
    measurements, _ = read_measurements(line.encode())
    assert set(blocked_mirrors(measurements, SITES, "CN").blocked) == {BUCKET}


def test_marks_are_stored_and_stop_hand_out(engine: Engine) -> None:
    measurements, _ = read_measurements(SAMPLE.read_bytes())
    report = blocked_mirrors(measurements, SITES, "CN")
    assert mark_blocked(engine, report.blocked, "CN") == sorted([CF, NETLIFY])
    assert mark_blocked(engine, report.blocked, "CN") == []  # already marked
    health = load_health(engine)
    assert health[CF].blocked == {"CN": "2026-11-18T03:00:00+00:00"}
    assert health[CF].healthy
    settings = MirrorSettings(origins=("https://citizens-rights.blogspot.com",), sites=SITES)
    registry = MirrorRegistry(settings, engine, Clock(), SECRET)
    assert registry.candidates() == (BUCKET,)
    other = MirrorSettings(origins=settings.origins, sites=SITES, countries=("IR",))
    assert set(MirrorRegistry(other, engine, Clock(), SECRET).candidates()) == {
        CF, NETLIFY, BUCKET}
