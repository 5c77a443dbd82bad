"""The editors' web admin (``newsletter admin serve``): its own process and listener.

``accounts``: users, sessions, login limits, audit log. ``app``: the Starlette pages, which call
the same ``EditionStore`` and ``mailer.pipeline`` functions as the CLI (no second way to send).
``chart``: the report's server-side SVG. ``text``: the admin's words from the one catalog.
"""

from __future__ import annotations

from mailer.app import App
from mailer.web.admin.accounts import AccountStore, LoginLimits

__all__ = ["accounts_for"]


def accounts_for(app: App) -> AccountStore:
    """The account store for this config; TOTP secrets are sealed with a key derived from the
    key file, so they move (and are lost) with it like the subscriber list."""
    a = app.config.admin
    return AccountStore(app.engine, app.clock, app.keyring.derive(b"admin-totp/v1"),
                        idle=a.session_idle, max_age=a.session_max,
                        limits=LoginLimits(a.login_window, a.account_attempts, a.client_attempts))
