"""The ``newsletter`` CLI. Each stage registers its commands from its own module below."""

from __future__ import annotations

import sys

from mailer.cli import db  # noqa: F401  (registers commands)
from mailer.cli import editions  # noqa: F401  (registers commands)
from mailer.cli import feeds  # noqa: F401  (registers commands)
from mailer.cli import mirrors  # noqa: F401  (registers commands)
from mailer.cli import pipeline  # noqa: F401  (registers commands)
from mailer.cli import preview  # noqa: F401  (registers commands)
from mailer.cli import run  # noqa: F401  (registers commands)
from mailer.cli import subscribers  # noqa: F401  (registers commands)
from mailer.cli import worker  # noqa: F401  (registers commands)
from mailer.cli.base import cli, run_cli

__all__ = ["cli", "main"]


def main() -> None:
    sys.exit(run_cli())
