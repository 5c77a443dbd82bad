"""``newsletter admin serve`` and ``newsletter admin users add|list|remove|passwd|totp-reset``.

The admin is its own process on its own listener (loopback by default, behind a reverse proxy
with TLS in production: docs/deployment.md), never on the public pages' port.
"""

from __future__ import annotations

import socket
import sys

import click

from mailer.app import App
from mailer.cli.base import cli, pass_app
from mailer.errors import InputError

__all__ = ["admin_group"]


@cli.group("admin")
def admin_group() -> None:
    """The editors' web admin: serve it, manage its accounts."""


@admin_group.command("serve")
@click.option("--host", default=None, help="Address to bind (default: [admin] host, 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default: [admin] port, 8081; 0 picks one).")
@pass_app
def serve(app: App, host: str | None, port: int | None) -> None:
    """Serve the admin (Starlette + uvicorn) on its own listener."""
    import uvicorn

    from mailer.web.admin.app import build_admin_app

    host = host or app.config.admin.host
    port = app.config.admin.port if port is None else port
    app.config.delivery.require_secrets()  # it sends test copies: a missing password fails now
    web = build_admin_app(app)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    click.echo(f"admin serving on http://{host}:{sock.getsockname()[1]}", err=True)
    sys.stderr.flush()
    # No access log (the audit log says who did what); the proxy's X-Forwarded-For and
    # X-Forwarded-Proto are believed only from [admin] trusted_proxies.
    config = uvicorn.Config(web, access_log=False, log_level="warning", lifespan="off",
                            server_header=False, proxy_headers=True,
                            forwarded_allow_ips=list(app.config.admin.trusted_proxies))
    uvicorn.Server(config).run(sockets=[sock])


@admin_group.group("users")
def users() -> None:
    """Admin accounts: editors run editions, operators also the mirrors."""


def _read_password(generate: bool) -> tuple[str, bool]:
    """The password from standard input (one line), or a generated one when asked or when
    standard input is a terminal with nothing typed."""
    from mailer.web.admin.accounts import generate_password

    if generate:
        return generate_password(), True
    if sys.stdin.isatty():
        password = click.prompt("password (empty: generate one)", hide_input=True,
                                default="", show_default=False)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    return (password, False) if password else (generate_password(), True)


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["editor", "operator"]), required=True)
@click.option("--generate", is_flag=True, help="Generate the password and print it once.")
@pass_app
def users_add(app: App, name: str, role: str, generate: bool) -> None:
    """Add an account; the password comes from standard input, or is generated and printed."""
    from mailer.web.admin import accounts_for

    password, made = _read_password(generate)
    user = accounts_for(app).add(name, role, password)
    accounts_for(app).audit("cli", "user-add", f"user {user.name}", role)
    click.echo(f"account {user.name} added ({user.role.value})")
    if made:
        click.echo(f"password (shown once): {password}")


@users.command("list")
@pass_app
def users_list(app: App) -> None:
    """Accounts: name, role, second factor."""
    from mailer.web.admin import accounts_for

    found = accounts_for(app).list_users()
    if not found:
        click.echo("no accounts")
    for u in found:
        click.echo(f"{u.name:<24} {u.role.value:<9} {'totp' if u.has_totp else 'no second factor'}")


@users.command("remove")
@click.argument("name")
@pass_app
def users_remove(app: App, name: str) -> None:
    """Remove an account and end its sessions."""
    from mailer.web.admin import accounts_for

    store = accounts_for(app)
    store.remove(name)
    store.audit("cli", "user-remove", f"user {name}")
    click.echo(f"account {name} removed")


@users.command("passwd")
@click.argument("name")
@click.option("--generate", is_flag=True, help="Generate the password and print it once.")
@pass_app
def users_passwd(app: App, name: str, generate: bool) -> None:
    """Set a new password (standard input, or generated); ends the account's sessions."""
    from mailer.web.admin import accounts_for

    password, made = _read_password(generate)
    store = accounts_for(app)
    store.set_password(name, password)
    store.audit("cli", "user-passwd", f"user {name}")
    click.echo(f"password of {name} changed; its sessions ended")
    if made:
        click.echo(f"password (shown once): {password}")


@users.command("totp-reset")
@click.argument("name")
@pass_app
def users_totp_reset(app: App, name: str) -> None:
    """Turn an account's second factor off (a lost phone); it enrols again at next login."""
    from mailer.web.admin import accounts_for

    store = accounts_for(app)
    store.totp_disable(name)
    store.audit("cli", "totp-reset", f"user {name}")
    click.echo(f"second factor of {name} removed")
