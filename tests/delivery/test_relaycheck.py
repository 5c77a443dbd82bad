"""`newsletter relay check` run as an operator runs it, against aiosmtpd relays that lack
STARTTLS, lack AUTH, refuse the password, or work."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.e2e.test_end_to_end import newsletter
from tests.support.smtp import SMTPServer

BASE = """\
[newsletter]
from = "Digest <digest@example.org>"
public_url = "https://news.example.org"
languages = ["en"]

[storage]
database = "sqlite:///data/x.db"
key_file = "keys.json"

[delivery]
transport = "smtp"
"""


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def servers() -> Iterator[list[SMTPServer]]:
    started: list[SMTPServer] = []
    yield started
    for s in started:
        s.stop()


def authenticator(server: object, session: object, envelope: object, mechanism: str,
                  auth_data: object) -> AuthResult:
    return AuthResult(success=isinstance(auth_data, LoginPassword) and auth_data.password == b"s3cret")


def tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


def config(tmp_path: Path, ca: trustme.CA, port: int, extra: str = "", more: str = "") -> Path:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    path = tmp_path / "newsletter.toml"
    path.write_text(BASE + f"""
[[delivery.relays]]
host = "127.0.0.1"
port = {port}
ca_file = "ca.pem"
timeout = 5
{extra}
""" + more, encoding="utf-8")
    return path


def start(servers: list[SMTPServer], **kw: object) -> SMTPServer:
    s = SMTPServer(**kw).start()
    servers.append(s)
    return s


def test_relay_without_starttls_is_named(tmp_path: Path, ca: trustme.CA, servers: list[SMTPServer]) -> None:
    s = start(servers)
    r = newsletter(config(tmp_path, ca, s.port, 'security = "starttls"'), "relay", "check")
    assert r.returncode == 1
    assert "does not offer STARTTLS" in r.stdout
    assert "1 of 1 relay(s) failed" in r.stdout


def test_relay_without_auth_when_a_username_is_set(tmp_path: Path, ca: trustme.CA,
                                                   servers: list[SMTPServer]) -> None:
    s = start(servers, tls_context=tls(ca), auth_exclude_mechanism=["LOGIN", "PLAIN"])
    r = newsletter(config(tmp_path, ca, s.port, 'security = "starttls"\nusername = "digest"\npassword_env = "PW"'),
                   "relay", "check", env={"PW": "s3cret"})
    assert r.returncode == 1
    assert "TLS TLSv1.3, certificate verified" in r.stdout
    assert "offers no AUTH after STARTTLS" in r.stdout


def test_wrong_password_and_untrusted_certificate(tmp_path: Path, ca: trustme.CA,
                                                  servers: list[SMTPServer]) -> None:
    s = start(servers, tls_context=tls(ca), require_starttls=True)  # no authenticator: every login is 535
    r = newsletter(config(tmp_path, ca, s.port, 'security = "starttls"\nusername = "digest"\npassword_env = "PW"'),
                   "relay", "check", env={"PW": "wrong"})
    assert r.returncode == 1
    assert "refused the username or password: it answered 535" in r.stdout
    assert "wrong" not in r.stdout
    other = trustme.CA()
    s2 = start(servers, tls_context=tls(other))
    r = newsletter(config(tmp_path, ca, s2.port, 'security = "starttls"'), "relay", "check")
    assert r.returncode == 1
    assert "STARTTLS failed: its certificate is not trusted" in r.stdout


def test_nothing_listening(tmp_path: Path, ca: trustme.CA) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = newsletter(config(tmp_path, ca, port, 'security = "none"'), "relay", "check")
    assert r.returncode == 1
    assert "cannot connect to 127.0.0.1:" in r.stdout
    assert "connection refused" in r.stdout


def test_working_relay_sends_one_signed_test_message(tmp_path: Path, ca: trustme.CA,
                                                     servers: list[SMTPServer]) -> None:
    s = start(servers, tls_context=tls(ca), require_starttls=True, authenticator=authenticator,
              auth_required=True)
    dkim_section = '\n[dkim]\ndomain = "example.org"\nselector = "s1"\nkey_file = "dkim.pem"\n'
    path = config(tmp_path, ca, s.port, 'security = "starttls"\nusername = "digest"\npassword_env = "PW"',
                  dkim_section)
    init = newsletter(path, "dkim", "init", env={"PW": "s3cret"})
    assert init.returncode == 0, init.stderr
    record = "".join(re.findall(r'"([^"]*)"', init.stdout)).encode()
    r = newsletter(path, "relay", "check", "--to", "me@example.net", env={"PW": "s3cret"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "logged in" in r.stdout
    assert "test message accepted (" in r.stdout
    assert "1 relay(s) usable" in r.stdout
    assert "me@example.net" not in r.stdout + r.stderr  # no address in output
    [got] = s.received
    assert got.rcpt_tos == ["me@example.net"]
    assert dkim.verify(got.data, dnsfunc=lambda name, timeout=5: record)
