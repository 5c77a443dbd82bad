"""Fixtures for the mirror tests: engines made here are disposed, so no connection outlives a test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from mailer.mirrors.registry import MirrorRegistry
from tests.mirrors.helpers import make_registry

Factory = Callable[..., tuple[MirrorRegistry, Engine]]


@pytest.fixture
def registry_factory() -> Iterator[Factory]:
    engines: list[Engine] = []

    def build(*args: Any, **kw: Any) -> tuple[MirrorRegistry, Engine]:
        reg, engine = make_registry(*args, **kw)
        engines.append(engine)
        return reg, engine

    yield build
    for engine in engines:
        engine.dispose()


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return tmp_path / "newsletter.toml"
