"""The admin's pure helpers and its account store, on real SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
import tomllib
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyotp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.db import open_engine
from mailer.errors import InputError
from mailer.migrate import prepare_schema
from mailer.mirrors.configedit import site_status_text
from mailer.web.admin.accounts import AccountStore, LoginLimits, LoginResult, qr_svg
from mailer.web.admin.chart import stacked_bars
from tests.conftest import REPO


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(db_url: str) -> Iterator[AccountStore]:
    engine = open_engine(db_url)
    prepare_schema(engine)
    yield AccountStore(engine, Clock(), secrets.token_bytes(32), idle=timedelta(minutes=30),
                       max_age=timedelta(hours=12),
                       limits=LoginLimits(timedelta(minutes=15), 3, 10))
    engine.dispose()


def test_login_session_idle_and_logout_everywhere(store: AccountStore) -> None:
    clock = store.clock
    assert isinstance(clock, Clock)
    store.add("alice", "editor", "a long enough password")
    result, token = store.login("alice", "a long enough password", "", "10.0.0.1")
    assert result is LoginResult.OK
    assert token
    session = store.session(token)
    assert session is not None
    assert session.user.name == "alice"
    clock.now += timedelta(minutes=29)
    assert store.session(token) is not None  # used: the idle clock starts again
    clock.now += timedelta(minutes=31)
    assert store.session(token) is None
    _, t1 = store.login("alice", "a long enough password", "", "10.0.0.1")
    _, t2 = store.login("alice", "a long enough password", "", "10.0.0.2")
    assert t1
    assert t2
    assert store.end_all_sessions(store.get("alice")) == 2  # type: ignore[arg-type]
    assert store.session(t1) is None
    assert store.session(t2) is None


def test_limits_count_unknown_names_and_reset_after_the_window(store: AccountStore) -> None:
    clock = store.clock
    assert isinstance(clock, Clock)
    store.add("alice", "editor", "a long enough password")
    for name in ("alice", "ghost"):
        for _ in range(3):
            assert store.login(name, "wrong", "", "c")[0] is LoginResult.REFUSED
        assert store.login(name, "a long enough password", "", "c")[0] is LoginResult.LIMITED
    clock.now += timedelta(minutes=16)
    assert store.login("alice", "a long enough password", "", "c")[0] is LoginResult.OK


def test_totp_code_is_needed_and_used_once(store: AccountStore) -> None:
    clock = store.clock
    assert isinstance(clock, Clock)
    user = store.add("alice", "editor", "a long enough password")
    secret = store.totp_pending(user)
    assert store.totp_pending(user) == secret  # the same QR code until confirmed
    totp = pyotp.TOTP(secret)
    assert not store.totp_enable(user, "12345")
    assert store.totp_enable(user, totp.at(clock.now))
    password = "a long enough password"
    assert store.login("alice", password, "", "c")[0] is LoginResult.REFUSED
    assert store.login("alice", password, totp.at(clock.now), "c")[0] is LoginResult.REFUSED
    clock.now += timedelta(seconds=30)
    assert store.login("alice", password, totp.at(clock.now), "c")[0] is LoginResult.OK
    assert store.login("alice", password, totp.at(clock.now), "c")[0] is LoginResult.REFUSED


def test_the_database_holds_no_secret_in_clear(store: AccountStore, tmp_path: Path) -> None:
    user = store.add("alice", "editor", "a long enough password")
    secret = store.totp_pending(user)
    _, token = store.login("alice", "a long enough password", "", "c")
    assert token
    from sqlalchemy import select

    from mailer.schema import admin_sessions, admin_users
    with store.engine.connect() as conn:
        rows = [*conn.execute(select(admin_users)).all(), *conn.execute(select(admin_sessions)).all()]
    dump = repr(rows)
    for value in ("a long enough password", secret, token):
        assert value not in dump


def test_account_input_is_checked(store: AccountStore) -> None:
    with pytest.raises(InputError, match="at least 12"):
        store.add("alice", "editor", "short")
    with pytest.raises(InputError, match="role"):
        store.add("alice", "admin", "a long enough password")
    with pytest.raises(InputError, match="account name"):
        store.add("al ice", "editor", "a long enough password")


def test_qr_code_is_inline_svg() -> None:
    svg = qr_svg("otpauth://totp/x:alice?secret=JBSWY3DPEHPK3PXP&issuer=x")
    assert svg.startswith("<svg")
    assert "<script" not in svg
    assert "href" not in svg


@given(st.text(min_size=1, max_size=40))
def test_chart_escapes_labels(name: str) -> None:
    svg = stacked_bars([(name, {"sent": 3, "content_rejected": 1})], {"sent": "<b>sent"},
                       title="t<")
    assert "<b>" not in svg
    assert "<script" not in svg
    assert svg.count("<svg") == 1


def test_site_status_edit_keeps_comments_and_is_valid_toml() -> None:
    text = (REPO / "newsletter.toml").read_text(encoding="utf-8")
    out = site_status_text(text, 0, "retired", date(2026, 12, 2))
    assert out.count("#") == text.count("#")  # every comment survives
    sites = tomllib.loads(out)["mirrors"]["sites"]
    assert sites[0]["status"] == "retired"
    assert sites[0]["retired"] == date(2026, 12, 2)
    back = site_status_text(out, 0, "active", date(2026, 12, 3))
    assert "retired" not in tomllib.loads(back)["mirrors"]["sites"][0]
    with pytest.raises(InputError):
        site_status_text(text, 99, "retired", date(2026, 12, 2))
