"""Config files and apps for scheduler tests: a real database, a real Maildir or SMTP server."""

from __future__ import annotations

from pathlib import Path

from mailer.app import App
from mailer.clock import Clock, system_clock

__all__ = ["make_app", "write_config"]


def write_config(tmp: Path, db_url: str, *, timezone: str = "UTC", digest: str = "0 8 * * *",
                 mode: str = "digest", require_approval: bool = False, grace: str = "1h",
                 hold: str = "0s",
                 smtp_port: int | None = None, editors: tuple[str, ...] = ("eds@example.net",),
                 feeds: tuple[str, ...] = (), extra: str = "", storage_extra: str = "") -> Path:
    """A complete newsletter.toml for ``db_url``; Maildir unless an SMTP port is given."""
    feed_tables = "".join(f'\n[[feeds]]\nurl = "{u}"\nlanguage = "en"\nbacklog_days = 0\n'
                          for u in feeds)
    delivery = (f'transport = "smtp"\n[[delivery.relays]]\nhost = "127.0.0.1"\nport = {smtp_port}\n'
                f'security = "none"\nconnections = 2\nrate = 0\n'
                if smtp_port else f'transport = "maildir"\nmaildir = "{tmp / "outbox"}"\n')
    text = f"""
[newsletter]
from = "Digest <digest@example.org>"
public_url = "https://news.example.org"
languages = ["en", "zh-Hans"]
mode = "{mode}"
editors = [{", ".join(f'"{e}"' for e in editors)}]
require_approval = {"true" if require_approval else "false"}

[storage]
database = "{db_url}"
key_file = "{tmp / "keys.json"}"
{storage_extra}
{feed_tables}
[schedule]
timezone = "{timezone}"
poll_every = "15m"
digest = "{digest}"
misfire_grace = "{grace}"
hold = "{hold}"

[delivery]
{delivery}
[mirrors]
origins = ["https://example.blogspot.com"]

[images]
fetch = false
{extra}
"""
    path = tmp / "newsletter.toml"
    path.write_text(text, encoding="utf-8")
    return path


def make_app(path: Path, clock: Clock = system_clock) -> App:
    return App.from_path(path, environ={}, clock=clock)
