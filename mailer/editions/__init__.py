"""Editions: choosing posts, states, schedule, approval, and the editors' reports."""

from __future__ import annotations

from mailer.editions.store import Decision, EditionInfo, EditionStore, decide

__all__ = ["Decision", "EditionInfo", "EditionStore", "decide"]
