"""Mirror links: rewriting, per-recipient partitioning, the registry, health, OONI and imports.

Censors subscribe too. If every email carried every mirror, one subscription would burn them
all, so each recipient gets a small, stable, secret-keyed subset (see ``partition``).
"""

from __future__ import annotations

__all__: list[str] = []
