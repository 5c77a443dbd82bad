"""The roots of the project's exception tree (drawn in ``mailer.errors``).

They live here, at the bottom of the import graph, because ``subscribers`` may not import
``mailer`` yet its errors must share one root with everything else.
"""

from __future__ import annotations

__all__ = [
    "IndexRulesError",
    "InputError",
    "KeyStoreError",
    "NewsletterError",
    "StorageError",
    "WrongKeyError",
]


class NewsletterError(Exception):
    """Root of every error the project raises on purpose. ``exit_code`` is what the CLI returns."""

    exit_code: int = 1


class InputError(NewsletterError, ValueError):
    """Bad input from a user: a CSV row, an argument, an unknown id."""

    exit_code = 2

    def __init__(self, message: str, *, line: int | None = None, source: str | None = None) -> None:
        self.line = line
        self.source = source
        where = f"{source}:{line}: " if source and line else (f"{source}: " if source else "")
        super().__init__(f"{where}{message}")


class KeyStoreError(NewsletterError):
    """The key file is missing, unreadable, truncated or needs a passphrase that was not given."""

    exit_code = 2


class WrongKeyError(KeyStoreError):
    """Stored data was sealed with a key this key file does not hold (or a different one)."""


class StorageError(NewsletterError):
    """The database cannot be reached or its schema is not the one this code expects."""

    exit_code = 2


class IndexRulesError(NewsletterError):
    """The config folds addresses differently from the rules the list's blind indexes were made
    under: lookups would miss and imports would split one reader into two rows."""

    exit_code = 2

    def __init__(self, recorded: str, configured: str, setting: str) -> None:
        self.recorded = recorded
        self.configured = configured
        self.setting = setting  # the config name of the setting that changed
        super().__init__(
            f"the subscriber list's blind indexes were made under the folding rules {recorded}, "
            f"but the config asks for {configured}. Put the setting back, or run "
            "'newsletter subscribers reindex' to rebuild the indexes under the new rules")
