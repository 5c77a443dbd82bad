"""MirrorRegistry: per-recipient bases from config plus health, hot reload, App.mirrors."""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import insert, update

from mailer.app import App
from mailer.config import MirrorSettings, MirrorSite, load_config
from mailer.mirrors.partition import Partitioner
from mailer.mirrors.registry import handed_out, spread_over_slots
from mailer.mirrors.state import MirrorHealth
from mailer.schema import mirror_state
from tests.mirrors.conftest import Factory
from tests.mirrors.helpers import NOW, Clock, write_config

A, B, C, D = (f"https://m{i}.example.net" for i in "abcd")
R = "https://reserve.example.net"
ONION = "http://abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz2345.onion"
SITES = [{"url": A}, {"url": B}, {"url": C}, {"url": R, "status": "reserve"},
         {"url": D, "status": "retired", "retired": "2026-11-01"}, {"url": ONION}]


def test_for_subscriber_gives_slots_active_only(
    registry_factory: Factory, tmp_path: Path, db_url: str,
) -> None:
    reg, _ = registry_factory(tmp_path / "n.toml", db_url, SITES)
    assert reg.slots == 2
    assert set(reg.candidates()) == {A, B, C}
    seen: Counter[str] = Counter()
    for sub in range(300):
        bases = reg.for_subscriber(sub)
        assert len(set(bases)) == len(bases) == 2
        assert bases == reg.for_subscriber(sub)
        seen.update(bases)
    assert set(seen) == {A, B, C}  # every active one is used; reserve, retired, onion never
    assert [s.url for s in reg.static_links()] == [ONION]


def test_period_rotation_changes_sets(registry_factory: Factory, tmp_path: Path) -> None:
    clock = Clock()
    reg, _ = registry_factory(tmp_path / "n.toml", f"sqlite:///{tmp_path / 'db'}", SITES, clock)
    before = [reg.for_subscriber(s) for s in range(200)]
    clock.now = NOW + timedelta(hours=1)
    assert [reg.for_subscriber(s) for s in range(200)] == before
    clock.now = NOW + timedelta(days=7)
    after = [reg.for_subscriber(s) for s in range(200)]
    assert sum(a != b for a, b in zip(before, after, strict=True)) > 50


def test_unhealthy_and_blocked_are_not_handed_out(
    registry_factory: Factory, tmp_path: Path, db_url: str,
) -> None:
    clock = Clock()
    reg, engine = registry_factory(tmp_path / "n.toml", db_url, SITES, clock)
    with engine.begin() as conn:
        conn.execute(insert(mirror_state).values(url=A, healthy=False, consecutive_failures=3))
        conn.execute(insert(mirror_state).values(url=B, healthy=True,
                                                 blocked_json=json.dumps({"CN": "2026-11-20"})))
        conn.execute(insert(mirror_state).values(url=C, healthy=True,
                                                 blocked_json=json.dumps({"IR": "2026-11-20"})))
    reg.refresh()
    assert reg.candidates() == (C,)
    # One candidate, two slots: it repeats rather than leaving a slot empty.
    assert all(reg.for_subscriber(s) == (C, C) for s in range(50))


def test_health_is_reread_after_refresh_interval(registry_factory: Factory, tmp_path: Path) -> None:
    clock = Clock()
    reg, engine = registry_factory(tmp_path / "n.toml", f"sqlite:///{tmp_path / 'db'}", SITES, clock)
    assert set(reg.candidates()) == {A, B, C}
    with engine.begin() as conn:
        conn.execute(insert(mirror_state).values(url=A, healthy=False))
    assert set(reg.candidates()) == {A, B, C}  # cached: the hot loop does not query per recipient
    clock.now = NOW + timedelta(minutes=2)
    assert set(reg.candidates()) == {B, C}
    with engine.begin() as conn:
        conn.execute(update(mirror_state).values(healthy=True))
    reg.refresh()
    assert set(reg.candidates()) == {A, B, C}


def test_all_down_falls_back_to_unblocked_active(registry_factory: Factory, tmp_path: Path) -> None:
    reg, engine = registry_factory(tmp_path / "n.toml", f"sqlite:///{tmp_path / 'db'}", SITES)
    with engine.begin() as conn:
        for url in (A, B, C):
            conn.execute(insert(mirror_state).values(url=url, healthy=False))
    reg.refresh()
    assert reg.candidates() == ()
    assert set(reg.for_subscriber(1)) <= {A, B, C}
    assert len(set(reg.for_subscriber(1))) == 2
    with engine.begin() as conn:
        conn.execute(update(mirror_state).values(blocked_json='{"CN": "x"}'))
    reg.refresh()
    assert reg.for_subscriber(1) == ("https://citizens-rights.blogspot.com",) * 2


def test_explicit_slots_override(registry_factory: Factory, tmp_path: Path) -> None:
    reg, _ = registry_factory(tmp_path / "n.toml", f"sqlite:///{tmp_path / 'db'}", SITES)
    three = reg.for_subscriber(9, slots=3)
    assert len(set(three)) == 3
    assert three[:2] == reg.for_subscriber(9)  # rendezvous order: more slots extend the list
    assert reg.for_subscriber(9, slots=1) == three[:1]


def test_spread_over_slots() -> None:
    assert spread_over_slots(["a", "b"], 5) == ("a", "b", "a", "b", "a")
    assert spread_over_slots(["a", "b", "c"], 2) == ("a", "b")
    assert spread_over_slots([], 2) == ("", "")
    assert spread_over_slots(["a"], 0) == ()


def test_hot_reload_promotes_and_retires(registry_factory: Factory, tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    db = f"sqlite:///{tmp_path / 'db'}"
    reg, _ = registry_factory(path, db, SITES)
    before = {s: reg.for_subscriber(s) for s in range(400)}
    sites = [{"url": A}, {"url": B}, {"url": C, "status": "retired", "retired": "2026-11-23"},
             {"url": R}, {"url": ONION}]
    # The daemon re-reads the file and hands the registry the new settings.
    reg.apply(write_config(path, sites, db_url=db).mirrors)
    assert set(reg.candidates()) == {A, B, R}
    after = {s: reg.for_subscriber(s) for s in range(400)}
    for s in before:
        if C not in before[s] and R not in after[s]:
            assert after[s] == before[s]  # not holding the retired one, not taking the new one
        assert C not in after[s]


def test_bad_reload_keeps_last_good_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "n.toml"
    write_config(path, SITES, db_url=f"sqlite:///{tmp_path / 'db'}")
    app = App.from_path(path, environ={}, clock=Clock())
    good = app.mirrors.candidates()
    path.write_text(path.read_text() + '\n[[mirrors.sites]]\nurl = "not a url"\n')
    with caplog.at_level(logging.ERROR):
        assert app.read_config() is None
    assert app.mirrors.candidates() == good
    assert any("keeping the running config and the last good set" in r.getMessage()
               and "mirrors.sites[6].url" in r.getMessage() for r in caplog.records)
    path.write_text("this is = = not toml")
    assert app.read_config() is None
    assert app.mirrors.candidates() == good
    app.engine.dispose()


def test_app_mirrors_uses_config_secret(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    write_config(path, SITES, db_url=f"sqlite:///{tmp_path / 'db'}",
                 extra='secret_env = "MIRROR_SECRET"')
    app1 = App.from_path(path, environ={"MIRROR_SECRET": "one"}, clock=Clock())
    app2 = App.from_path(path, environ={"MIRROR_SECRET": "two"}, clock=Clock())
    assert app1.config.mirrors.secret == b"one"
    a = [app1.mirrors.for_subscriber(s) for s in range(100)]
    b = [app2.mirrors.for_subscriber(s) for s in range(100)]
    assert a != b
    assert a == [App.from_path(path, environ={"MIRROR_SECRET": "one"},
                               clock=Clock()).mirrors.for_subscriber(s) for s in range(100)]
    assert load_config(path, {}).mirrors.secret is None


def test_app_mirrors_secret_from_key_file(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    write_config(path, SITES, db_url=f"sqlite:///{tmp_path / 'db'}")

    def sets() -> list[tuple[str, ...]]:
        app = App.from_path(path, environ={}, clock=Clock())
        return [app.mirrors.for_subscriber(s) for s in range(100)]

    first = sets()  # creates the key file
    assert (tmp_path / "data" / "keys.json").exists()
    assert sets() == first  # stable across processes
    (tmp_path / "data" / "keys.json").unlink()
    assert sets() != first  # a new key file, a new partition


_status = st.sampled_from(["active", "reserve", "retired"])
_kind = st.sampled_from(["https", "onion", "ipfs"])


@given(sites=st.lists(st.tuples(_status, _kind, st.booleans(), st.sampled_from(["", "CN", "IR"])),
                      max_size=10), sub=st.integers(0, 2**40))
def test_handed_out_is_exactly_the_active_healthy_unblocked_web_mirrors(
    sites: list[tuple[str, str, bool, str]], sub: int,
) -> None:
    objs = tuple(MirrorSite(url=f"https://m{i}.example", status=status, kind=kind)  # type: ignore[arg-type]
                 for i, (status, kind, _, _) in enumerate(sites))
    health = {f"https://m{i}.example": MirrorHealth(url=f"https://m{i}.example", healthy=healthy,
                                                   blocked={cc: "t"} if cc else {})
              for i, (_, _, healthy, cc) in enumerate(sites)}
    settings = MirrorSettings(origins=("https://o.example",), sites=objs, per_recipient=2)
    got = handed_out(settings, health)
    want = tuple(f"https://m{i}.example" for i, (status, kind, healthy, cc) in enumerate(sites)
                 if status == "active" and kind != "onion" and healthy and cc != "CN")
    assert got == want
    chosen = Partitioner(b"s", got, 2).choose(5, sub)
    assert set(chosen) <= set(want)  # reserve, retired, onion, down or blocked: never handed out


def test_unreadable_health_keeps_the_last_known(registry_factory: Factory, tmp_path: Path) -> None:
    clock = Clock()
    reg, engine = registry_factory(tmp_path / "n.toml", f"sqlite:///{tmp_path / 'db'}", SITES, clock)
    with engine.begin() as conn:
        conn.execute(insert(mirror_state).values(url=A, healthy=False))
    before = reg.for_subscriber(3)
    assert A not in reg.candidates()
    mirror_state.drop(engine)  # the health read now fails
    clock.now = NOW + timedelta(minutes=5)
    reg.refresh()
    assert reg.for_subscriber(3) == before
    assert A not in reg.candidates()
