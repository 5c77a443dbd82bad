"""``newsletter dkim init`` creates the signing keys and prints the DNS records to publish;
``newsletter dns check`` says whether SPF, DKIM and DMARC are published and aligned."""

from __future__ import annotations

import click

from mailer.app import App
from mailer.cli.base import cli, pass_app
from mailer.config import Config, DKIMSettings
from mailer.delivery.dkim import Algorithm, create_key_file, dns_record, load_keys
from mailer.errors import ConfigError

__all__ = ["dkim_group", "dns_group", "need_dkim", "zone_line"]


def need_dkim(config: Config) -> DKIMSettings:
    if config.dkim is None:
        raise ConfigError("no [dkim] section: set domain, selector and key_file first",
                          path=config.path, key="dkim")
    return config.dkim


def zone_line(name: str, value: str) -> str:
    """A zone-file TXT line; one TXT string holds at most 255 octets (RFC 1035 §3.3.14), and
    an RSA-2048 record is longer, so it is split into several strings that DNS joins."""
    parts = " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
    return f"{name}. IN TXT ( {parts} )"


@cli.group("dkim")
def dkim_group() -> None:
    """DKIM signing keys (docs/deployment.md, "DKIM")."""


@dkim_group.command("init")
@pass_app
def init_cmd(app: App) -> None:
    """Create the missing key files (mode 0600; never overwritten) and print the TXT records.

    With one key_file it holds an RSA-2048 key; with two, the second holds an Ed25519 key and
    every message is signed with both (RFC 8463).
    """
    d = need_dkim(app.config)
    existing = [p for p in d.key_files if p.exists()]
    have = {k.algorithm for k in load_keys(existing, d.selector, d.domain)}
    for path in d.key_files:
        if path.exists():
            continue
        algorithm: Algorithm = "rsa-sha256" if "rsa-sha256" not in have else "ed25519-sha256"
        create_key_file(path, algorithm)
        have.add(algorithm)
        click.echo(f"created {path} ({'RSA-2048' if algorithm == 'rsa-sha256' else 'Ed25519'})", err=True)
    click.echo("; publish in the DNS zone of " + d.domain)
    for key in load_keys(d.key_files, d.selector, d.domain):
        click.echo(zone_line(key.record_name, dns_record(key)))


@cli.group("dns")
def dns_group() -> None:
    """The From domain's DNS records that receivers check."""


@dns_group.command("check")
@click.option("--nameserver", metavar="HOST[:PORT]", default=None,
              help="Ask this server instead of the system resolver (e.g. your zone's primary).")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds per query.")
@pass_app
@click.pass_context
def dns_check_cmd(ctx: click.Context, app: App, nameserver: str | None, timeout: float) -> None:
    """Look up SPF, DKIM (our selector) and DMARC for the From domain; exit 1 if anything is
    missing or misaligned."""

    from mailer.delivery import dnscheck

    from_domain = app.config.from_domain
    d = app.config.dkim
    keys = load_keys(d.key_files, d.selector, d.domain) if d else ()
    records = dnscheck.lookup(dnscheck.names(from_domain, keys), nameserver, timeout)
    findings = dnscheck.assess(from_domain, keys, records)
    marks = {"ok": "ok  ", "note": "note", "problem": "FIX "}
    for f in findings:
        click.echo(f"{marks[f.level]} {f.text}")
    problems = sum(f.level == "problem" for f in findings)
    click.echo(f"{problems} problem(s) for {from_domain}" if problems else f"{from_domain}: all records in place")
    ctx.exit(1 if problems else 0)
