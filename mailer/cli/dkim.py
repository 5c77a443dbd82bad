"""``newsletter dkim init``: create the signing keys and print the DNS records to publish."""

from __future__ import annotations

import click

from mailer.app import App
from mailer.cli.base import cli, pass_app
from mailer.config import Config, DKIMSettings
from mailer.delivery.dkim import Algorithm, create_key_file, dns_record, load_keys
from mailer.errors import ConfigError

__all__ = ["dkim_group", "need_dkim", "zone_line"]


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
