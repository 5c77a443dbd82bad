"""Config: a bad file names the file, the key and the line; a good one becomes typed settings."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.config import load_config, parse_duration, parse_size
from mailer.errors import ConfigError
from tests.conftest import REPO

GOOD = """\
[newsletter]
from = "Digest <digest@example.org>"
public_url = "https://news.example.org"
languages = ["zh-Hans", "en"]

[storage]
database = "sqlite:///data/x.db"
key_file = "keys/k.json"

[[feeds]]
url = "https://a.example.org/feed"

[[feeds]]
url = "feeds/local.xml"
language = "zh-Hant"

[delivery]
transport = "smtp"

[[delivery.relays]]
host = "127.0.0.1"
port = 2525
security = "none"
username = "digest"
password_env = "SMTP_PASSWORD"

[mirrors]
origins = ["https://example.blogspot.com"]
secret_env = "MIRROR_SECRET"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "newsletter.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_default_loads() -> None:
    cfg = load_config(REPO / "newsletter.toml", {})
    assert cfg.delivery.transport == "maildir"
    assert cfg.newsletter.languages == ("zh-Hans", "zh-Hant", "en")
    assert cfg.storage.key_file == REPO / "data" / "keys.json"


def test_relative_paths_resolve_against_the_config_folder_and_secrets_come_from_env(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), {"SMTP_PASSWORD": "s3cret", "MIRROR_SECRET": "m"})
    assert cfg.storage.database == f"sqlite:///{tmp_path / 'data/x.db'}"
    assert cfg.storage.key_file == tmp_path / "keys/k.json"
    assert cfg.feeds[1].url == str(tmp_path / "feeds/local.xml")
    assert cfg.delivery.relays[0].password == "s3cret"
    assert "s3cret" not in repr(cfg)
    assert cfg.mirrors.secret == b"m"


@pytest.mark.parametrize(
    ("edit", "key", "line"),
    [
        (("language = \"zh-Hant\"", "langauge = \"zh-Hant\""), "feeds[1].langauge", 15),
        (("language = \"zh-Hant\"", "language = \"fr\""), "feeds[1].language", 15),
        (("port = 2525", "port = \"2525\""), "delivery.relays[0].port", 22),
        (("languages = [\"zh-Hans\", \"en\"]", "languages = [\"zh-Hans\", 3]"), "newsletter.languages[1]", 4),
        (("url = \"https://a.example.org/feed\"", "url = \"ftp://a.example.org/feed\""), "feeds[0].url", 11),
        (("key_file = \"keys/k.json\"", "key_file = \"keys/k.json\"\nforget_suppressed_after = \"2h\""),
         "storage.forget_suppressed_after", 9),
        (("key_file = \"keys/k.json\"", "key_file = \"keys/k.json\"\ncase_insensitive_domains = [\"qq com\"]"),
         "storage.case_insensitive_domains[0]", 9),
        (("languages = [\"zh-Hans\", \"en\"]", "languages = [\"zh-Hans\", \"en\"]\ncontact = \"Editors <e@x.org>\""),
         "newsletter.contact", 5),
        (("languages = [\"zh-Hans\", \"en\"]", "languages = [\"zh-Hans\", \"en\"]\nmainland_phrases = \"yes\""),
         "newsletter.mainland_phrases", 5),
        (("secret_env = \"MIRROR_SECRET\"\n", "secret_env = \"MIRROR_SECRET\"\n\n[web]\nmirrors = [\"ftp://x.org\"]\n"),
         "web.mirrors[0]", 32),
        (("key_file = \"keys/k.json\"", "key_file = \"keys/k.json\"\nkey_reload_every = \"1h\""),
         "storage.key_reload_every", 9),
    ],
)
def test_errors_name_file_key_and_line(tmp_path: Path, edit: tuple[str, str], key: str, line: int) -> None:
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ConfigError) as info:
        load_config(path, {"SMTP_PASSWORD": "x"})
    err = info.value
    assert (err.key, err.line, err.path) == (key, line, path)
    assert str(path) in str(err)
    assert key in str(err)


def test_missing_password_env_is_named_when_the_relay_is_needed(tmp_path: Path) -> None:
    # Read-only commands load the config without the secret; opening a transport needs it.
    config = load_config(write(tmp_path, GOOD), {})
    with pytest.raises(ConfigError, match="SMTP_PASSWORD") as info:
        config.delivery.require_secrets()
    assert info.value.key == "delivery.relays[0].password_env"
    assert info.value.line == 25
    assert str(config.path) in str(info.value)
    load_config(write(tmp_path, GOOD), {"SMTP_PASSWORD": "x"}).delivery.require_secrets()


def test_toml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD.replace('port = 2525', 'port = = 2525')), {})
    assert info.value.line == 22


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", {})


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["s", "m", "h", "d"]))
def test_durations_round_trip(n: int, unit: str) -> None:
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assert parse_duration(f"{n}{unit}") == timedelta(seconds=n * scale)


@given(st.integers(min_value=0, max_value=10**9))
def test_sizes(n: int) -> None:
    assert parse_size(n) == n
    assert parse_size(f"{n}KiB") == n * 1024
    with pytest.raises(ValueError, match="size"):
        parse_size(f"{n} furlongs")


def test_list_privacy_settings_are_typed(tmp_path: Path) -> None:
    text = GOOD.replace('key_file = "keys/k.json"', 'key_file = "keys/k.json"\n'
                        'forget_suppressed_after = "180d"\n'
                        'case_insensitive_domains = ["QQ.com", "163.com", "例子.中国"]')
    cfg = load_config(write(tmp_path, text), {"SMTP_PASSWORD": "x"})
    assert cfg.storage.forget_suppressed_after == timedelta(days=180)
    assert cfg.storage.case_insensitive_domains == {"qq.com", "163.com", "xn--fsqu00a.xn--fiqs8s"}
    plain = load_config(write(tmp_path, GOOD), {"SMTP_PASSWORD": "x"})
    assert plain.storage.forget_suppressed_after is None
    assert plain.storage.case_insensitive_domains == frozenset()


DKIM = ('\n[dkim]\ndomain = "example.org"\nselector = "news2026"\n'
        'key_file = ["keys/dkim-rsa.pem", "keys/dkim-ed25519.pem"]\n')


def test_dkim_section_is_optional_and_resolves_key_files(tmp_path: Path) -> None:
    env = {"SMTP_PASSWORD": "x"}
    assert load_config(write(tmp_path, GOOD), env).dkim is None
    d = load_config(write(tmp_path, GOOD + DKIM), env).dkim
    assert d is not None
    assert (d.domain, d.selector) == ("example.org", "news2026")
    assert d.key_files == (tmp_path / "keys/dkim-rsa.pem", tmp_path / "keys/dkim-ed25519.pem")
    one = load_config(write(tmp_path, GOOD + DKIM.replace('["keys/dkim-rsa.pem", "keys/dkim-ed25519.pem"]',
                                                          '"k.pem"')), env).dkim
    assert one is not None
    assert one.key_files == (tmp_path / "k.pem",)
    inline = load_config(write(tmp_path, GOOD + DKIM + "workers = 0\n"), env).dkim
    assert inline is not None
    assert inline.workers == 0


@pytest.mark.parametrize(("edit", "key"), [
    (('domain = "example.org"', 'domain = "example org"'), "dkim.domain"),
    (('selector = "news2026"', 'selector = "news_2026"'), "dkim.selector"),
    (('selector = "news2026"\n', ''), "dkim.selector"),
    (('"keys/dkim-ed25519.pem"]', '"b.pem", "c.pem"]'), "dkim.key_file"),
    (('selector = "news2026"', 'selector = "news2026"\nselectr = "x"'), "dkim.selectr"),
    (('selector = "news2026"', 'selector = "news2026"\nworkers = -1'), "dkim.workers"),
])
def test_dkim_errors_name_the_key_and_line(tmp_path: Path, edit: tuple[str, str], key: str) -> None:
    path = write(tmp_path, GOOD + DKIM.replace(*edit))
    with pytest.raises(ConfigError) as info:
        load_config(path, {"SMTP_PASSWORD": "x"})
    assert info.value.key == key
    assert info.value.line is not None


@pytest.mark.parametrize("host", ["example.blogspot.hk", "EXAMPLE.blogspot.com.ar", "example.blogspot.com"])
def test_a_mirror_on_an_origins_country_domain_is_refused_with_file_key_and_line(
        tmp_path: Path, host: str) -> None:
    # The rewriter treats NAME.blogspot.hk as the origin, so it can never be the origin's mirror.
    path = write(tmp_path, GOOD + f'\n[[mirrors.sites]]\nurl = "https://{host}/"\n')
    with pytest.raises(ConfigError, match="origin's host") as info:
        load_config(path, {"SMTP_PASSWORD": "x", "MIRROR_SECRET": "m"})
    line = GOOD.count("\n") + 3
    assert (info.value.path, info.value.key, info.value.line) == (path, "mirrors.sites[0].url", line)


def test_another_blogs_country_domain_is_a_mirror_like_any_other(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + '\n[[mirrors.sites]]\nurl = "https://other.blogspot.hk/"\n')
    cfg = load_config(path, {"SMTP_PASSWORD": "x", "MIRROR_SECRET": "m"})
    assert [s.url for s in cfg.mirrors.sites] == ["https://other.blogspot.hk"]


def test_each_kind_of_mail_has_a_maildir_of_its_own(tmp_path: Path) -> None:
    """Readers' mail, test copies and the editors' reports: three folders beside each other
    (defaults named after ``maildir``), so a pickup of readers' mail takes nothing else."""
    text = GOOD.replace('transport = "smtp"', 'transport = "maildir"\nmaildir = "mail/out"')
    cfg = load_config(write(tmp_path, text), {"SMTP_PASSWORD": "x"}).delivery
    assert cfg.maildir_for("readers") == cfg.maildir == tmp_path / "mail/out"
    assert cfg.maildir_for("tests") == tmp_path / "mail/out-tests"
    assert cfg.maildir_for("editors") == tmp_path / "mail/out-editors"
    own = text.replace('maildir = "mail/out"', 'maildir = "mail/out"\neditors_maildir = "eds"')
    assert load_config(write(tmp_path, own), {}).delivery.maildir_for("editors") == tmp_path / "eds"


@pytest.mark.parametrize(("extra", "key"), [
    ('editors_maildir = "mail/out"', "delivery.editors_maildir"),
    ('editors_maildir = "mail/out/editors"', "delivery.editors_maildir"),
    ('editors_maildir = "mail"', "delivery.editors_maildir"),
    ('test_maildir = "mail/out/tests"', "delivery.test_maildir"),
    ('test_maildir = "eds"\neditors_maildir = "eds"', "delivery.editors_maildir"),
])
def test_an_editors_or_test_maildir_among_readers_mail_is_refused(
        tmp_path: Path, extra: str, key: str) -> None:
    text = GOOD.replace('transport = "smtp"', f'transport = "maildir"\nmaildir = "mail/out"\n{extra}')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), {})
    assert info.value.key == key
    assert "folder" in str(info.value)
