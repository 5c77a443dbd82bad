"""DKIM as an operator meets it: `dkim init` makes the keys and prints the records, and every
message a real `newsletter send` hands to the relay verifies against those records."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import dkim
import dns.resolver

from mailer.delivery.dkim import POOL_AFTER, dns_record, load_keys
from tests.conftest import REPO
from tests.e2e.test_end_to_end import EDITORS, FEED, NEWSLETTER, newsletter, parse, smtp_config
from tests.support.dns import DNSServer
from tests.support.http import HTTPServer, Reply
from tests.support.smtp import SMTPServer

DKIM = ('\n[dkim]\ndomain = "example.org"\nselector = "news2026"\n'
        'key_file = ["keys/dkim-rsa.pem", "keys/dkim-ed25519.pem"]\n')


def published(zone: str) -> dict[bytes, bytes]:
    """The TXT records `dkim init` printed, as a resolver would return them (strings joined)."""
    out = {}
    for m in re.finditer(r"^(\S+) IN TXT \( (.*) \)$", zone, re.MULTILINE):
        out[m.group(1).encode()] = "".join(re.findall(r'"([^"]*)"', m.group(2))).encode()
    return out


def import_poll_send(config: Path, readers_csv: str) -> str:
    """Keys, these confirmed readers, one poll and ``newsletter send``, as an operator runs
    them; what ``send`` printed."""
    csv = config.parent / "list.csv"
    csv.write_text("email,language\n" + readers_csv, encoding="utf-8")
    assert newsletter(config, "keys", "init").returncode == 0
    assert newsletter(config, "subscribers", "import", str(csv), "--confirmed").returncode == 0
    assert newsletter(config, "poll").returncode == 0
    sent = newsletter(config, "send")
    assert sent.returncode == 0, sent.stderr
    return sent.stdout


def test_dkim_init_then_every_sent_message_verifies(tmp_path: Path, http_server: HTTPServer,
                                                    smtp_server: SMTPServer) -> None:
    http_server.routes["/feed"] = Reply(body=FEED, headers={"Content-Type": "application/atom+xml"})
    config = smtp_config(tmp_path, http_server.url("/feed"), smtp_server.port)
    config.write_text(config.read_text(encoding="utf-8") + DKIM, encoding="utf-8")

    init = newsletter(config, "dkim", "init")
    assert init.returncode == 0, init.stderr
    for name in ("dkim-rsa.pem", "dkim-ed25519.pem"):
        assert (tmp_path / "keys" / name).stat().st_mode & 0o777 == 0o600
    records = published(init.stdout)
    assert sorted(records) == [b"news2026-ed25519._domainkey.example.org.", b"news2026._domainkey.example.org."]
    assert records[b"news2026._domainkey.example.org."].startswith(b"v=DKIM1; k=rsa; p=")
    key_before = (tmp_path / "keys" / "dkim-rsa.pem").read_bytes()
    again = newsletter(config, "dkim", "init")  # idempotent: prints the same, replaces nothing
    assert again.returncode == 0
    assert published(again.stdout) == records
    assert (tmp_path / "keys" / "dkim-rsa.pem").read_bytes() == key_before

    sent = import_poll_send(config, "li.hua@qq.example,zh-Hans\nchen.wei@163.example,zh-Hant\n"
                                    "sam@mail.example,en\n")
    assert "3 sent" in sent

    zone = {name.decode().rstrip("."): [value.decode()] for name, value in records.items()}
    with DNSServer(zone) as dns_server:
        # `dns check` against the published zone: DKIM is there, SPF and DMARC are not yet.
        check = newsletter(config, "dns", "check", "--nameserver", dns_server.address)
        assert check.returncode == 1, check.stderr
        assert "2 problem(s) for example.org" in check.stdout
        assert "no SPF record" in check.stdout
        assert "no record at _dmarc.example.org" in check.stdout
        dns_server.records["example.org"] = ["v=spf1 ip4:127.0.0.1 -all"]
        dns_server.records["_dmarc.example.org"] = ["v=DMARC1; p=reject"]
        check = newsletter(config, "dns", "check", "--nameserver", dns_server.address)
        assert check.returncode == 0, check.stdout
        assert "example.org: all records in place" in check.stdout

        # A receiver's view: every message verifies, both signatures, with keys fetched by DNS.
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port = ["127.0.0.1"], dns_server.port

        def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
            answer = resolver.resolve(name.decode(), "TXT")
            return b"".join(answer[0].strings)  # type: ignore[attr-defined, no-any-return]

        # Three readers and the editors' report: every mail we send is signed.
        assert sorted(r.rcpt_tos[0] for r in smtp_server.received).count("editors@example.org") == 1
        assert len(smtp_server.received) == 3 + 1
        for r in smtp_server.received:
            sigs = re.findall(rb"^DKIM-Signature:", r.data, re.MULTILINE)
            assert len(sigs) == 2
            for i in range(2):
                assert dkim.DKIM(r.data).verify(idx=i, dnsfunc=dnsfunc)
        assert "news2026-ed25519._domainkey.example.org" in dns_server.queries


def test_on_maildir_readers_mail_and_the_editors_report_sit_apart_and_both_are_signed(
        tmp_path: Path) -> None:
    """The embedded default (Maildir) with ``[dkim]``: a real ``newsletter send`` writes the
    readers' mail to ``data/outbox`` and the editors' report to ``data/outbox-editors``, each
    folder holding its own kind only, and every file verifies (the signer wraps both)."""
    shutil.copy(REPO / "newsletter.toml", tmp_path / "newsletter.toml")
    (tmp_path / "examples").mkdir()
    shutil.copy(REPO / "examples" / "sample-feed.atom.xml", tmp_path / "examples")
    config = tmp_path / "newsletter.toml"
    config.write_text(config.read_text(encoding="utf-8") + DKIM, encoding="utf-8")
    assert newsletter(config, "dkim", "init").returncode == 0
    sent = import_poll_send(config, "li.hua@qq.example,zh-Hans\nsam@mail.example,en\n")
    assert "2 sent" in sent

    readers = [f.read_bytes() for f in sorted((tmp_path / "data/outbox/new").iterdir())]
    editors = [f.read_bytes() for f in sorted((tmp_path / "data/outbox-editors/new").iterdir())]
    assert sorted(parse(d)["To"] for d in readers) == ["li.hua@qq.example", "sam@mail.example"]
    assert [parse(d)["To"] for d in editors] == [EDITORS]
    assert "sent 2" in parse(editors[0]).get_body(("plain",)).get_content()
    keys = load_keys([tmp_path / "keys" / "dkim-rsa.pem", tmp_path / "keys" / "dkim-ed25519.pem"],
                     "news2026", "example.org")
    zone = {f"{k.record_name}.".encode(): dns_record(k).encode() for k in keys}
    for data in readers + editors:
        assert len(re.findall(rb"^DKIM-Signature:", data, re.MULTILINE)) == 2
        for i in range(2):
            assert dkim.DKIM(data).verify(idx=i, dnsfunc=lambda name, timeout=5: zone.get(name, b""))


def test_dkim_init_without_a_section_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text((Path(__file__).parents[2] / "newsletter.toml").read_text(encoding="utf-8"), encoding="utf-8")
    result = newsletter(config, "dkim", "init")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("newsletter: error:")
    assert "[dkim]" in result.stderr


def test_a_send_past_the_inline_threshold_signs_in_the_workers_and_every_message_verifies(
        tmp_path: Path, http_server: HTTPServer, smtp_server: SMTPServer) -> None:
    """Past ``POOL_AFTER`` messages the real `newsletter send` signs in its worker processes:
    each message carries its own signatures (matched to its own body), and no worker is left
    running once the command has exited."""
    http_server.routes["/feed"] = Reply(body=FEED, headers={"Content-Type": "application/atom+xml"})
    config = smtp_config(tmp_path, http_server.url("/feed"), smtp_server.port)
    config.write_text(config.read_text(encoding="utf-8") + DKIM, encoding="utf-8")
    assert newsletter(config, "dkim", "init").returncode == 0
    readers = POOL_AFTER + 28
    csv = tmp_path / "list.csv"
    csv.write_text("email,language\n" + "".join(
        f"reader{i}@{('qq.example', '163.example', 'mail.example')[i % 3]},"
        f"{('zh-Hans', 'zh-Hant', 'en')[i % 3]}\n" for i in range(readers)), encoding="utf-8")
    assert newsletter(config, "keys", "init").returncode == 0
    assert newsletter(config, "subscribers", "import", str(csv), "--confirmed").returncode == 0
    assert newsletter(config, "poll").returncode == 0
    # Output to files, not pipes: a pipe would make us wait for any worker still holding it.
    tag = f"TEST_SIGNING_RUN={tmp_path}"  # inherited by the workers: finds ours only
    out, err = tmp_path / "send.out", tmp_path / "send.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        code = subprocess.run([*NEWSLETTER, "--config", str(config), "send"], stdout=stdout, stderr=stderr,
                              env={**os.environ, "NEWSLETTER_MIRROR_SECRET": "e2e-secret", "TEST_SIGNING_RUN":
                                   str(tmp_path)}, timeout=120, check=False).returncode
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and tag.encode() in _environ(p)]
    assert code == 0, err.read_text()
    assert f"{readers} sent" in out.read_text()
    assert "signing pool broke" not in err.read_text()
    assert left == []  # no signer outlives the command

    keys = load_keys([tmp_path / "keys" / "dkim-rsa.pem", tmp_path / "keys" / "dkim-ed25519.pem"],
                     "news2026", "example.org")
    zone = {f"{k.record_name}.".encode(): dns_record(k).encode() for k in keys}
    assert len(smtp_server.received) == readers + 1  # and the editors' report
    for r in smtp_server.received:
        assert r.rcpt_tos[0].encode() in r.data  # the To: is this recipient's
        for i in range(2):
            assert dkim.DKIM(r.data).verify(idx=i, dnsfunc=lambda name, timeout=5: zone.get(name, b""))


def _environ(proc: Path) -> list[bytes]:
    try:
        return (proc / "environ").read_bytes().split(b"\0")
    except OSError:
        return []
