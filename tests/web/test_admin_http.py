"""The admin over real HTTP: ``newsletter admin serve`` in a subprocess, accounts made with the
real ``newsletter admin users`` command, a client that knows nothing but the pages."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pyotp
import pytest

from tests.support.cli import newsletter
from tests.web.support import PASSWORD, add_user, admin_config, admin_serve, csrf_of, login

pytestmark = pytest.mark.slow


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str) -> Path:
    path = admin_config(tmp_path, sqlite_url, admin='session_idle = "3s"\naccount_attempts = 3\n'
                                                     'client_attempts = 8')
    add_user(path, "alice", "editor")
    add_user(path, "olga", "operator")
    return path


def test_login_sets_a_strict_session_cookie_and_the_pages_a_strict_csp(config: Path) -> None:
    with admin_serve(config) as server, server.client() as c:
        assert c.get("/").headers["location"] == "/login"
        resp = login(c, "alice")
        assert resp.status_code == 303, resp.text
        cookie = resp.headers["set-cookie"]
        assert "nl_admin=" in cookie
        assert "httponly" in cookie.lower()
        assert "samesite=strict" in cookie.lower()
        assert "secure" not in cookie.lower()  # plain http on loopback; https sets it
        page = c.get("/")
        assert page.status_code == 200
        assert "alice" in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src" not in csp  # no script at all: default-src 'none' covers it
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert "<script" not in page.text.lower()
        assert re.search(r'(src|href)="https?://', page.text) is None  # nothing remote


def test_secure_cookie_behind_a_trusted_https_proxy(config: Path) -> None:
    with admin_serve(config) as server, server.client() as c:
        page = c.get("/login", headers={"x-forwarded-proto": "https"})
        assert "secure" in page.headers["set-cookie"].lower()
        assert page.headers["strict-transport-security"].startswith("max-age=")
        # The client talks plain http to the proxy's port here, so it holds the Secure cookie
        # back; hand it over as the browser behind TLS would.
        nonce = re.search(r"nl_admin_login=([^;]+)", page.headers["set-cookie"])
        assert nonce
        resp = c.post("/login", headers={"x-forwarded-proto": "https",
                                         "cookie": f"nl_admin_login={nonce.group(1)}"},
                      data={"csrf": csrf_of(page.text), "name": "alice", "password": PASSWORD})
        assert resp.status_code == 303
        assert "secure" in resp.headers["set-cookie"].lower()


def test_a_wrong_password_and_an_unknown_name_get_the_same_answer(config: Path) -> None:
    with admin_serve(config) as server, server.client() as c:
        wrong = login(c, "alice", "not the password at all")
        unknown = login(c, "nobody-here", "not the password at all")
        assert wrong.status_code == unknown.status_code == 401
        assert "Wrong name, password or code." in wrong.text
        strip = re.compile(r'name="csrf" value="[^"]+"')
        assert strip.sub("", wrong.text) == strip.sub("", unknown.text)
        assert "nl_admin=" not in wrong.headers.get("set-cookie", "").replace("nl_admin_login", "")
        assert c.get("/").status_code == 303


def test_the_rate_limit_per_account_refuses_even_the_right_password(config: Path) -> None:
    with admin_serve(config) as server, server.client() as c:
        for _ in range(3):
            assert login(c, "alice", "wrong password again").status_code == 401
        limited = login(c, "alice")  # the right password, after three failures
        assert limited.status_code == 429
        assert "Too many failed logins" in limited.text
        # The same answer for a name that does not exist: limits do not reveal accounts.
        for _ in range(3):
            login(c, "ghost", "wrong password again")
        ghost = login(c, "ghost")
        assert ghost.status_code == 429
        # Another account from the same client still works (per account, not per client yet).
        assert login(c, "olga").status_code == 303


def test_the_rate_limit_per_client(config: Path) -> None:
    with admin_serve(config) as server, server.client() as c:
        for i in range(8):
            assert login(c, f"user{i}", "wrong password").status_code == 401
        assert login(c, "olga").status_code == 429  # this client is over its limit


def test_an_idle_session_expires(config: Path) -> None:
    with admin_serve(config) as server, server.client() as c:
        assert login(c, "alice").status_code == 303
        assert c.get("/").status_code == 200
        time.sleep(4)  # session_idle = 3s
        resp = c.get("/")
        assert resp.status_code == 303
        assert resp.headers["location"] == "/login?expired=1"
        assert "Your session ended" in c.get("/login?expired=1").text


def test_a_form_without_its_csrf_token_is_refused(config: Path) -> None:
    with admin_serve(config) as server, server.client() as c:
        assert login(c, "alice").status_code == 303
        resp = c.post("/logout-everywhere", data={})
        assert resp.status_code == 403
        resp = c.post("/logout-everywhere", data={"csrf": "forged"})
        assert resp.status_code == 403
        assert c.get("/").status_code == 200  # still logged in: nothing happened
        # The login form has its own token too.
        assert c.post("/login", data={"name": "alice", "password": PASSWORD}).status_code == 403


def test_an_editor_is_refused_the_operators_page(config: Path) -> None:
    with admin_serve(config) as server:
        with server.client() as c:
            login(c, "alice")
            page = c.get("/mirrors")
            assert page.status_code == 403
            assert "operators" in page.text
            assert 'href="/mirrors"' not in c.get("/").text
        with server.client() as c:
            login(c, "olga")
            page = c.get("/mirrors")
            assert page.status_code == 200
            assert "cr-reserve.pages.dev" in page.text


def test_logout_everywhere_ends_every_session(config: Path) -> None:
    with admin_serve(config) as server, server.client() as a, server.client() as b:
        login(a, "alice")
        login(b, "alice")
        home = a.get("/account")
        assert a.post("/logout-everywhere", data={"csrf": csrf_of(home.text)}).status_code == 303
        assert b.get("/").status_code == 303


def test_totp_enrolment_then_login_needs_the_code(tmp_path: Path, sqlite_url: str) -> None:
    config = admin_config(tmp_path, sqlite_url, admin="require_totp = true")
    add_user(config, "alice", "editor")
    with admin_serve(config) as server, server.client() as c:
        assert login(c, "alice").status_code == 303
        # Without a second factor, only the enrolment page is reachable.
        assert c.get("/").headers["location"] == "/account"
        assert c.get("/editions").headers["location"] == "/account"
        page = c.get("/account")
        assert page.status_code == 200
        assert "<svg" in page.text  # the QR code, inline
        secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page.text)
        assert secret
        totp = pyotp.TOTP(secret.group(1))
        bad = c.post("/account/totp", data={"csrf": csrf_of(page.text), "code": "000000"})
        assert "does not match" in bad.text
        ok = c.post("/account/totp", data={"csrf": csrf_of(page.text), "code": totp.now()})
        assert ok.status_code == 303
        assert c.get("/").status_code == 200
    listed = newsletter(config, "admin", "users", "list")
    assert "alice" in listed.stdout
    assert "totp" in listed.stdout
    with admin_serve(config) as server, server.client() as c:
        assert login(c, "alice").status_code == 401  # the password alone is not enough
        assert login(c, "alice", code="123456").status_code == 401
        # The code already used at enrolment cannot be replayed; wait for the next step.
        time.sleep(30 - time.time() % 30 + 0.5)
        assert login(c, "alice", code=totp.now()).status_code == 303
        assert c.get("/").status_code == 200


def test_users_cli_generates_a_password_once_lists_removes(config: Path) -> None:
    made = newsletter(config, "admin", "users", "add", "carol", "--role", "editor", "--generate")
    assert made.returncode == 0, made.stderr
    password = re.search(r"password \(shown once\): (\S+)", made.stdout)
    assert password
    listed = newsletter(config, "admin", "users", "list")
    assert "carol" in listed.stdout
    assert password.group(1) not in listed.stdout
    with admin_serve(config) as server, server.client() as c:
        assert login(c, "carol", password.group(1)).status_code == 303
        changed = newsletter(config, "admin", "users", "passwd", "carol",
                             stdin="another long password\n")
        assert changed.returncode == 0, changed.stderr
        assert c.get("/").status_code == 303  # a new password ends the sessions
    assert newsletter(config, "admin", "users", "remove", "carol").returncode == 0
    assert "carol" not in newsletter(config, "admin", "users", "list").stdout
    short = newsletter(config, "admin", "users", "add", "dave", "--role", "editor", stdin="short\n")
    assert short.returncode == 2
    assert "at least 12" in short.stderr
    dup = newsletter(config, "admin", "users", "add", "alice", "--role", "editor",
                     stdin=PASSWORD + "\n")
    assert dup.returncode == 2
    assert "exists" in dup.stderr
