"""The project's one exception tree, so callers catch by meaning and users get one clear line.

    NewsletterError                      root; ``exit_code`` says what the CLI returns
    ├── ConfigError(ValueError)          bad config file: carries path, key, line     (exit 2)
    ├── InputError(ValueError)           bad user input: CSV row, CLI argument, id    (exit 2)
    │   └── BadToken                     malformed, forged or expired link token
    ├── KeyStoreError                    missing / unreadable / wrong key             (exit 2)
    │   └── WrongKeyError                data exists that this key cannot open
    ├── IndexRulesError                  config folds unlike the list's indexes       (exit 2)
    ├── StorageError                     database unreachable or schema mismatch      (exit 2)
    ├── FeedError                        one feed could not be read; others go on     (exit 1)
    │   ├── FetchError(ConnectionError)  network, timeout, HTTP status, body too large
    │   └── NotAFeedError                block page, captive portal, empty body
    ├── BlockedAddressError(ConnectionError)  content named a non-public address (SSRF guard)
    ├── RenderError                      template or catalog problem                  (exit 1)
    ├── DeliveryError                    a send could not complete                    (exit 1)
    │                                    (every relay down is a deferral, not an error:
    │                                    the row waits in the outbox for a retry)
    ├── EditionError(InputError)         edition state forbids the action (sent, past time)
    └── LockError                        another daemon owns this database            (exit 2)

``subscribers`` must not import ``mailer``, so its own errors (in ``subscribers.errors``)
subclass these roots through that module: the tree here is the single source.
No message in this tree may contain a subscriber's address: name subscribers by id.
"""

from __future__ import annotations

from pathlib import Path

from subscribers.errors import (
    InputError,
    KeyStoreError,
    NewsletterError,
    StorageError,
    WrongKeyError,
)

__all__ = [
    "BlockedAddressError",
    "ConfigError",
    "DeliveryError",
    "EditionError",
    "FeedError",
    "FetchError",
    "InputError",
    "KeyStoreError",
    "LockError",
    "NewsletterError",
    "NotAFeedError",
    "RenderError",
    "StorageError",
    "WrongKeyError",
]


class ConfigError(NewsletterError, ValueError):
    """The config file is wrong; the message names the file, the key and the line."""

    exit_code = 2

    def __init__(
        self, message: str, *, path: Path | str | None = None, key: str | None = None,
        line: int | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.key = key
        self.line = line
        where = []
        if self.path is not None:
            where.append(f"{self.path}{f':{line}' if line else ''}")
        if key:
            where.append(f"key '{key}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class FeedError(NewsletterError):
    """One feed failed. The poller records it against that feed and moves on."""

    exit_code = 1

    def __init__(self, message: str, *, feed: str | None = None) -> None:
        self.feed = feed
        super().__init__(f"{feed}: {message}" if feed else message)


class FetchError(FeedError, ConnectionError):
    """The feed could not be fetched: network, timeout, HTTP status or size limit."""

    def __init__(self, message: str, *, feed: str | None = None, status: int | None = None) -> None:
        self.status = status
        super().__init__(message, feed=feed)


class NotAFeedError(FeedError):
    """The body is not a feed: an HTML block page, a captive portal, an empty body."""


class BlockedAddressError(NewsletterError, ConnectionError):
    """A fetch on content's behalf would reach loopback, a private network or another
    non-public address, or use a scheme other than http(s): refused before any byte is sent."""

    exit_code = 1

    def __init__(self, message: str, *, url: str) -> None:
        self.url = url
        super().__init__(message)


class RenderError(NewsletterError):
    """A template, catalog or image step failed in a way that would send broken mail."""

    exit_code = 1


class DeliveryError(NewsletterError):
    """Delivery could not complete; rows stay in the outbox for a retry."""

    exit_code = 1


class EditionError(InputError):
    """The edition's state does not allow this: already sent, cancelled, time in the past."""

    def __init__(self, message: str, *, edition_id: int | None = None) -> None:
        self.edition_id = edition_id
        super().__init__(f"edition {edition_id}: {message}" if edition_id is not None else message)


class LockError(NewsletterError):
    """Another daemon holds this database's lock."""

    exit_code = 2
