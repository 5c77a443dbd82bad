"""The ``newsletter`` CLI. Each stage registers its commands from its own module below."""

from __future__ import annotations

import sys

from mailer.cli import (
    admin,  # noqa: F401  (registers commands)
    archive,  # noqa: F401  (registers commands)
    db,  # noqa: F401  (registers commands)
    dkim,  # noqa: F401  (registers commands)
    editions,  # noqa: F401  (registers commands)
    feeds,  # noqa: F401  (registers commands)
    inbound,  # noqa: F401  (registers commands)
    mirrors,  # noqa: F401  (registers commands)
    pipeline,  # noqa: F401  (registers commands)
    preview,  # noqa: F401  (registers commands)
    relay,  # noqa: F401  (registers commands)
    run,  # noqa: F401  (registers commands)
    subscribers,  # noqa: F401  (registers commands)
    worker,  # noqa: F401  (registers commands)
)
from mailer.cli.base import cli, run_cli
from mailer.delivery import use_uvloop

__all__ = ["cli", "main"]


def main() -> None:
    """The console script. Most of what sending costs per message is event-loop work, which
    uvloop does in C; in-process callers (tests) keep the stdlib loop."""
    use_uvloop()
    sys.exit(run_cli())
