"""Config files and registries for the mirror tests."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from mailer.config import Config, load_config
from mailer.db import open_engine
from mailer.mirrors.registry import MirrorRegistry
from tests.support.clock import DEFAULT_START, ManualClock

__all__ = ["NOW", "SECRET", "Clock", "config_text", "make_registry", "write_config"]

SECRET = b"mirror-test-secret"
NOW = DEFAULT_START


Clock = ManualClock  # starts at NOW


def config_text(sites: list[dict[str, str]], *, db_url: str = "sqlite:///data/n.db",
                per_recipient: int = 2, extra: str = "") -> str:
    blocks = []
    for site in sites:
        # added / retired are TOML dates, written bare; everything else is a string.
        body = "\n".join(f"{k} = {v}" if k in ("added", "retired") else f'{k} = "{v}"'
                         for k, v in site.items())
        blocks.append(f"[[mirrors.sites]]\n{body}\n")
    return f"""
[newsletter]
from = "Digest <digest@example.org>"
public_url = "https://news.example.org"

[storage]
database = "{db_url}"

[mirrors]
origins = ["https://citizens-rights.blogspot.com"]
per_recipient = {per_recipient}
{extra}

""" + "\n".join(blocks)


def write_config(path: Path, sites: list[dict[str, str]], **kw: object) -> Config:
    path.write_text(config_text(sites, **kw), encoding="utf-8")  # type: ignore[arg-type]
    return load_config(path, {})


def make_registry(path: Path, db_url: str, sites: list[dict[str, str]], clock: Clock | None = None,
                  **kw: object) -> tuple[MirrorRegistry, Engine]:
    cfg = write_config(path, sites, db_url=db_url, **kw)
    engine = open_engine(db_url)
    reg = MirrorRegistry(cfg.mirrors, engine, clock or Clock(), SECRET)
    return reg, engine
