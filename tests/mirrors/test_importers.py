"""Import of public mirror lists: both formats, planning, and writing to the config."""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path

import pytest

from mailer.config import MirrorSite, load_config
from mailer.errors import InputError
from mailer.mirrors.importers import append_sites, parse_mirror_list, plan_import, sites_toml
from tests.mirrors.helpers import write_config

DATA = Path(__file__).parent / "data"
TODAY = date(2026, 11, 23)
SITES = [{"url": "https://d1a2b3c4.cloudfront.net"},
         {"url": "https://storage.googleapis.com/cr-mirror-7f3a", "status": "reserve"}]
ONION = "https://citizensrightsqwertyuiopasdfghjklzxcvbnm234567qwertyuiopasdfgh.onion"


def test_bypass_censorship_v2(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "n.toml", SITES)
    found = parse_mirror_list((DATA / "bypass-censorship-v2.json").read_bytes())
    assert len(found) == 6
    plan = plan_import(cfg.mirrors, found, "reserve", TODAY, note="bc")
    assert [(s.url, s.kind, s.status, s.added) for s in plan.added] == [
        ("https://d9z8y7x6.cloudfront.net", "https", "reserve", TODAY),
        (ONION, "onion", "reserve", TODAY),
    ]
    assert [s.url for s in plan.existing] == ["https://d1a2b3c4.cloudfront.net"]
    assert [reason for _, reason in plan.skipped] == ["is on an origin's host",
                                                      "not an http(s) URL"]
    assert plan.other_sites == 1


def test_rsf_sites_json(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "n.toml", SITES)
    found = parse_mirror_list((DATA / "rsf-sites.json").read_bytes())
    assert len(found) == 4
    plan = plan_import(cfg.mirrors, found, "active", TODAY)
    assert [(s.url, s.status) for s in plan.added] == [("https://cr-new.pages.dev", "active")]
    assert [s.url for s in plan.existing] == ["https://storage.googleapis.com/cr-mirror-7f3a"]
    assert plan.other_sites == 1


def test_bad_files_say_why() -> None:
    with pytest.raises(InputError, match="not JSON"):
        parse_mirror_list(b"{", source="x.json")
    with pytest.raises(InputError, match=r"only 2\.x"):
        parse_mirror_list(b'{"version": "1.0", "sites": []}')
    with pytest.raises(InputError, match="not a list of mirrors"):
        parse_mirror_list(b'{"https://a.example/": "b"}')
    with pytest.raises(InputError, match="JSON object"):
        parse_mirror_list(b"[]")


def test_write_appends_valid_tables_and_nothing_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    cfg = write_config(path, SITES)
    before = path.read_text()
    found = parse_mirror_list((DATA / "bypass-censorship-v2.json").read_bytes())
    plan = plan_import(cfg.mirrors, found, "reserve", TODAY, note='from "bc" list')
    assert path.read_text() == before  # planning writes nothing
    settings = append_sites(path, plan.added, {})
    assert path.read_text().startswith(before.rstrip("\n"))
    reloaded = load_config(path, {}).mirrors
    assert reloaded == settings
    assert [s.url for s in reloaded.sites] == [s["url"] for s in SITES] + [s.url for s in plan.added]
    assert reloaded.sites[-1].kind == "onion"
    assert reloaded.sites[-1].added == TODAY
    assert reloaded.sites[-1].note == 'from "bc" list'
    # Importing the same list again finds nothing new.
    assert plan_import(reloaded, found, "reserve", TODAY).added == ()


def test_write_refuses_an_invalid_result(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    cfg = write_config(path, SITES)
    before = path.read_text()
    dup = plan_import(cfg.mirrors, parse_mirror_list((DATA / "rsf-sites.json").read_bytes()),
                      "reserve", TODAY).added
    with pytest.raises(InputError, match="left unchanged"):
        append_sites(path, dup + dup, {})  # a duplicate is a validation error
    assert path.read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".newsletter-")]


def test_sites_toml_round_trip() -> None:
    site = MirrorSite(url="https://m.example/p", status="reserve", kind="ipfs", added=TODAY,
                      note='镜像 "quoted"\nline\\')
    parsed = tomllib.loads(sites_toml([site, MirrorSite(url="https://n.example")]))
    assert parsed["mirrors"]["sites"] == [
        {"url": site.url, "status": "reserve", "kind": "ipfs", "added": TODAY, "note": site.note},
        {"url": "https://n.example", "status": "active"},
    ]
    assert sites_toml(()) == ""
