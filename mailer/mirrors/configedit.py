"""Edits of ``newsletter.toml`` by the programs themselves: validated, then written atomically.

``mirrors import`` appends sites; the admin's mirrors page retires or promotes one. Either way
the new text is checked with the one config loader first (a broken edit is refused and the file
is left as it was), then replaces the file in one rename, so a running daemon's file watch
(``App.reload_mirrors_if_changed``) sees a whole, valid file or the old one. Status changes go
through tomlkit, which keeps the comments and layout an operator wrote.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Literal

import tomlkit
from tomlkit.items import AoT, Table

from mailer.config import Config, load_config
from mailer.errors import InputError, NewsletterError

__all__ = ["Status", "set_site_status", "site_status_text", "write_validated"]

Status = Literal["active", "reserve", "retired"]


def write_validated(config_path: Path, text: str, environ: Mapping[str, str]) -> Config:
    """Replace the config file with ``text`` if it loads; ``InputError`` (file unchanged) if not."""
    fd, tmp = tempfile.mkstemp(prefix=".newsletter-", suffix=".toml", dir=config_path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        try:
            config = load_config(tmp, environ)
        except NewsletterError as exc:
            raise InputError(f"the config would not be valid after this change, left unchanged: "
                             f"{exc}", source=str(config_path)) from None
        os.chmod(tmp, config_path.stat().st_mode & 0o777)
        os.replace(tmp, config_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    # Loaded from the temporary name, in the same folder (relative paths resolve alike).
    return dataclasses.replace(config, path=config_path.resolve())


def site_status_text(text: str, index: int, status: Status, today: date) -> str:
    """Pure: ``text`` with ``[[mirrors.sites]]`` number ``index`` set to ``status``.

    Retiring records ``retired = today``; making a site active or reserve again removes it
    (the loader refuses a ``retired`` date on a site that is not retired).
    """
    doc = tomlkit.parse(text)
    mirrors = doc.get("mirrors")
    sites = mirrors.get("sites") if isinstance(mirrors, Table) else None
    if not isinstance(sites, AoT) or not 0 <= index < len(sites):
        raise InputError(f"there is no mirrors.sites[{index}] in the config")
    site = sites[index]
    site["status"] = status
    if status == "retired":
        site["retired"] = today
    elif "retired" in site:
        del site["retired"]
    return tomlkit.dumps(doc)


def set_site_status(config_path: Path, index: int, expected_url: str, status: Status,
                    today: date, environ: Mapping[str, str]) -> Config:
    """Retire or promote one mirror in the file, if the file still lists ``expected_url`` there
    (the page may be older than the file); validated before it is written."""
    text = config_path.read_text(encoding="utf-8")
    current = load_config(config_path, environ).mirrors.sites
    if not 0 <= index < len(current) or current[index].url != expected_url:
        raise InputError("the config's mirrors changed since the page was shown; reload it")
    return write_validated(config_path, site_status_text(text, index, status, today), environ)
