"""`dns check`'s judgement (pure) and its lookups against a real DNS server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailer.delivery.dkim import DKIMKey, create_key_file, dns_record, load_keys
from mailer.delivery.dnscheck import assess, lookup, names
from tests.support.dns import DNSServer


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[DKIMKey, ...]:
    d = tmp_path_factory.mktemp("dkim")
    create_key_file(d / "rsa.pem", "rsa-sha256")
    return load_keys([d / "rsa.pem"], "news", "example.org")


def good(keys: tuple[DKIMKey, ...]) -> dict[str, list[str]]:
    return {"example.org": ["v=spf1 ip4:192.0.2.1 -all", "google-site-verification=x"],
            "_dmarc.example.org": ["v=DMARC1; p=quarantine; rua=mailto:d@example.org"],
            keys[0].record_name: [dns_record(keys[0])]}


def problems(findings: list) -> list[str]:  # type: ignore[type-arg]
    return [f.text for f in findings if f.level == "problem"]


def test_all_in_place_is_clean(keys: tuple[DKIMKey, ...]) -> None:
    records = {k: tuple(v) for k, v in good(keys).items()}
    assert problems(assess("example.org", keys, records)) == []


@pytest.mark.parametrize(("change", "says"), [
    (lambda r, k: r.pop("example.org"), "has no SPF record"),
    (lambda r, k: r.__setitem__("example.org", ("v=spf1 a -all", "v=spf1 mx -all")), "2 SPF records"),
    (lambda r, k: r.__setitem__("example.org", ("v=spf1 +all",)), "anyone send as you"),
    (lambda r, k: r.pop(k[0].record_name), "nothing published at news._domainkey.example.org"),
    (lambda r, k: r.__setitem__(k[0].record_name, ("v=DKIM1; k=rsa; p=AAAA",)), "not the one in key_file"),
    (lambda r, k: r.pop("_dmarc.example.org"), "no record at _dmarc.example.org"),
    (lambda r, k: r.__setitem__("_dmarc.example.org", ("v=DMARC1; p=reject; adkim=s",)), None),
])
def test_each_gap_is_named(keys: tuple[DKIMKey, ...], change, says: str | None) -> None:  # type: ignore[no-untyped-def]
    records = {k: tuple(v) for k, v in good(keys).items()}
    change(records, keys)
    found = problems(assess("example.org", keys, records))
    if says is None:
        assert found == []  # strict alignment is fine when we sign as the From domain itself
    else:
        assert len(found) == 1
        assert says in found[0]


def test_misaligned_signing_domain_and_strict_dmarc(keys: tuple[DKIMKey, ...]) -> None:
    records = {k: tuple(v) for k, v in good(keys).items()}
    records["news.example.net"] = records.pop("example.org")
    records["_dmarc.news.example.net"] = ("v=DMARC1; p=reject; adkim=s",)
    found = problems(assess("news.example.net", keys, records))
    assert any("we sign as example.org but mail is from news.example.net" in f for f in found)
    assert any("adkim=s" in f for f in found)


def test_no_dkim_section_is_a_problem_in_plain_words() -> None:
    found = problems(assess("example.org", (), {"example.org": ("v=spf1 -all",),
                                                 "_dmarc.example.org": ("v=DMARC1; p=reject",)}))
    assert found == [f for f in found if "newsletter dkim init" in f]
    assert len(found) == 1


def test_lookup_against_a_loopback_server_joins_split_strings(keys: tuple[DKIMKey, ...]) -> None:
    with DNSServer(good(keys)) as server:
        records = lookup(names("example.org", keys), server.address)
    assert records[keys[0].record_name] == (dns_record(keys[0]),)  # > 255 octets: split, joined again
    assert records["_dmarc.example.org"][0].startswith("v=DMARC1")
    assert problems(assess("example.org", keys, records)) == []


def test_lookup_timeout_is_a_reason_not_a_crash(keys: tuple[DKIMKey, ...], tmp_path: Path) -> None:
    import socket

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        records = lookup(["example.org"], f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)
    finally:
        silent.close()
    assert records["example.org"] == "no answer from DNS in time"
    assert "could not look up example.org" in problems(assess("example.org", keys, records))[0]
