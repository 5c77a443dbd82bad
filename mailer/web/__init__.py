"""The web front doors, each its own Starlette app wired from an ``App``.

``public``: the subscribe, confirm and unsubscribe pages (``newsletter serve``). The endpoints
live in ``subscribers.web``, which knows nothing of the config; this package does the wiring.
The editors' admin (issue 18) will sit beside it, on its own listener.
"""

from __future__ import annotations

__all__: list[str] = []
