"""``[mirrors]`` validation: errors name the key and line; warnings are collected, not fatal."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from mailer.config import load_config
from mailer.errors import ConfigError
from tests.mirrors.helpers import config_text, write_config


def _load(tmp_path: Path, sites: list[dict[str, str]], **kw: object) -> object:
    return write_config(tmp_path / "n.toml", sites, **kw).mirrors


@pytest.mark.parametrize(("sites", "key", "message"), [
    ([{"url": "not a url"}], "mirrors.sites[0].url", "is not an absolute"),
    ([{"url": "ftp://m.example"}], "mirrors.sites[0].url", "is not an absolute"),
    ([{"url": "https://a.example"}, {"url": "https://A.example/"}], "mirrors.sites[1].url",
     "duplicate of mirrors.sites[0]"),
    ([{"url": "https://citizens-rights.blogspot.com"}], "mirrors.sites[0].url", "origin"),
    ([{"url": "https://Citizens-Rights.blogspot.com/mirror"}], "mirrors.sites[0].url", "origin"),
    ([{"url": "https://a.example", "status": "paused"}], "mirrors.sites[0].status", "reserve"),
    ([{"url": "https://a.example", "kind": "onion"}], "mirrors.sites[0].kind", ".onion"),
    ([{"url": "https://a.example", "status": "retired", "added": "2026-11-02",
       "retired": "2026-11-01"}], "mirrors.sites[0].retired", "before added"),
    ([{"url": "https://a.example", "retired": "2026-11-01"}], "mirrors.sites[0].retired",
     "status = 'retired'"),
])
def test_errors(tmp_path: Path, sites: list[dict[str, str]], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, sites)
    assert info.value.key == key
    assert message in str(info.value)
    assert info.value.line is not None


def test_other_errors(tmp_path: Path) -> None:
    for extra, key in (('countries = ["china"]', "mirrors.countries[0]"),
                       ('canary_path = "p.html"', "mirrors.canary_path"),
                       ('period = "0s"', "mirrors.period"),
                       ("down_after = 0", "mirrors.down_after"),
                       ('proxy = "tor:9050"', "mirrors.proxy")):
        with pytest.raises(ConfigError) as info:
            _load(tmp_path, [{"url": "https://a.example"}], extra=extra)
        assert info.value.key == key


def test_warnings_plain_http_and_too_few_active(tmp_path: Path) -> None:
    onion = "http://abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz2345.onion"
    m = write_config(tmp_path / "n.toml", [{"url": "http://a.example"}, {"url": onion}],
                     per_recipient=2).mirrors
    assert len(m.warnings) == 2
    assert "http://a.example is plain http" in m.warnings[0]
    assert "only 1 active web mirrors, fewer than per_recipient = 2" in m.warnings[1]
    assert m.sites[1].kind == "onion"  # guessed from the host; plain http is fine for onions


def test_dates_kinds_ipfs_gateway_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    path.write_text(config_text(
        [{"url": "https://a.example/prefix/", "added": "2026-10-01"},
         {"url": "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
          "status": "reserve"},
         {"url": "https://b.example", "status": "retired", "added": "2026-09-01",
          "retired": "2026-11-01", "note": "blocked in CN"}],
        extra='ipfs_gateway = "https://gw.example/"\nperiod = "1d"'))
    m = load_config(path, {}).mirrors
    assert m.sites[0].url == "https://a.example/prefix"
    assert m.sites[0].added == date(2026, 10, 1)
    assert m.sites[1].url == ("https://gw.example/ipfs/"
                              "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi")
    assert m.sites[1].kind == "ipfs"
    assert m.sites[2].retired == date(2026, 11, 1)
    assert [s.url for s in m.active] == ["https://a.example/prefix"]
    assert m.period == timedelta(days=1)
    assert m.countries == ("CN",)
    assert m.warnings == ("only 1 active web mirrors, fewer than per_recipient = 2: some "
                          "recipients get the same mirror twice",)
