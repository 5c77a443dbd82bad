"""``newsletter relay check``: is each configured relay usable, and if not, which step fails."""

from __future__ import annotations

import asyncio
from email.utils import formatdate, make_msgid

import click

from mailer.app import App, dkim_signer
from mailer.cli.base import cli, pass_app
from mailer.errors import InputError

__all__ = ["relay_group"]


@cli.group("relay")
def relay_group() -> None:
    """The SMTP relays in [[delivery.relays]]."""


def test_message(from_addr: str, to: str, domain: str) -> bytes:
    return (f"From: {from_addr}\r\nTo: {to}\r\nSubject: newsletter relay check\r\n"
            f"Date: {formatdate()}\r\nMessage-ID: {make_msgid(domain=domain)}\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
            f"A test from `newsletter relay check`: this relay accepts our mail.\r\n").encode()


@relay_group.command("check")
@click.option("--to", "to", metavar="ADDRESS", default=None, help="Also send one test message here.")
@pass_app
@click.pass_context
def check_cmd(ctx: click.Context, app: App, to: str | None) -> None:
    """Connect to each relay and report TLS, AUTH and the first error in plain words; exit 1
    if any relay fails."""
    from mailer.delivery.relaycheck import check_relay

    relays = app.config.delivery.relays
    if not relays:
        raise InputError("no [[delivery.relays]] configured (transport is maildir)")
    app.config.delivery.require_secrets()
    if to is not None and ("@" not in to or any(c in to for c in "\r\n <>")):
        raise InputError("--to must be one email address")
    nl = app.config.newsletter
    envelope_from = app.config.envelope_sender
    message = test_message(nl.from_addr, to, envelope_from.rpartition("@")[2]) if to else None
    signer = dkim_signer(app.config)  # the test message is signed as every send is
    sign = signer.sign if signer else None
    problems = 0
    for relay in relays:
        findings = asyncio.run(check_relay(relay, to=to, envelope_from=envelope_from,
                                           message=message, sign=sign))
        for f in findings:
            click.echo(f"{ {'ok': 'ok  ', 'note': 'note', 'problem': 'FIX '}[f.level]} {f.text}")
        problems += any(f.level == "problem" for f in findings)
    click.echo(f"{problems} of {len(relays)} relay(s) failed" if problems else f"{len(relays)} relay(s) usable")
    ctx.exit(1 if problems else 0)


@relay_group.command("unblock")
@click.argument("family")
@pass_app
def unblock_cmd(app: App, family: str) -> None:
    """Send to a provider FAMILY (netease, qq…) again after it blocklisted us and we were
    delisted: its waiting messages are due at once."""
    from mailer.pipeline.send import unblock_provider

    n = unblock_provider(app, family)
    if n is None:
        names = ", ".join(f.name for f in app.config.delivery.providers.families)
        raise InputError(f"no provider family {family!r} (known: {names})")
    click.echo(f"{family}: unblocked; {n:,} waiting messages are due now")
