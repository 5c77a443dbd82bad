"""The composition root: builds the I/O pieces (engine, key ring, stores, transports) from config.

The CLI, the daemon and the tests assemble the same pieces through this object; nothing else
reads the environment or constructs an engine on its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from mailer.clock import Clock, system_clock
from mailer.config import DEFAULT_CONFIG_NAME, Config, load_config
from mailer.db import open_engine

if TYPE_CHECKING:
    from jinja2 import Environment

    from mailer.delivery.dkim import DKIMSigner
    from mailer.delivery.outbox import Outbox
    from mailer.delivery.peers import SenderRegistry
    from mailer.delivery.transport import Transport
    from mailer.editions.store import EditionStore
    from mailer.feeds.store import PostStore
    from mailer.metrics import Metrics
    from mailer.mirrors.registry import MirrorRegistry
    from mailer.webhooks import WebhookQueue
    from subscribers.keys import KeyRing
    from subscribers.signup import SignupDesk
    from subscribers.store import SubscriberStore
    from subscribers.tokens import TokenSigner

__all__ = ["App", "config_fingerprint", "config_path_from", "dkim_signer", "signing"]

log = logging.getLogger("newsletter")


def config_path_from(option: str | None, environ: Mapping[str, str]) -> Path:
    """``--config`` wins, then ``$NEWSLETTER_CONFIG``, then ``./newsletter.toml``."""
    if option:
        return Path(option)
    return Path(environ.get("NEWSLETTER_CONFIG") or DEFAULT_CONFIG_NAME)


def config_fingerprint(path: Path) -> str | None:
    """The config file's content hash (None: unreadable), so a watcher reloads only on change."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


@dataclass(init=False)
class App:
    """Lazily built services for one process. Cheap to create; pieces are built on first use.

    ``transport``: a transport to use instead of the configured one (tests, the admin's test
    sends). The config changes only through :meth:`replace_config`.
    """

    config: Config
    clock: Clock = system_clock
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    transport_override: Transport | None = None

    def __init__(self, config: Config, clock: Clock = system_clock,
                 environ: Mapping[str, str] | None = None, *,
                 transport: Transport | None = None) -> None:
        self.config = config
        self.clock = clock
        self.environ = dict(os.environ) if environ is None else environ
        self.transport_override = transport
        self._seen = config_fingerprint(config.path)

    def built(self, name: str) -> bool:
        """Whether the lazily built piece ``name`` exists yet (close only what was opened)."""
        return name in self.__dict__

    def read_config(self) -> Config | None:
        """The config file read and validated again; None, with the reason logged, when it is
        wrong (the running config, and the last good set of mirrors, stay in force)."""
        from mailer.errors import NewsletterError

        try:
            return load_config(self.config.path, self.environ)
        except NewsletterError as exc:
            log.error("reload of %s refused, keeping the running config and the last good set "
                      "of mirrors: %s", self.config.path, exc)
            return None

    def reload_config(self) -> bool:
        """SIGHUP: read the file once and, if it is valid, :meth:`replace_config` with it."""
        self._seen = config_fingerprint(self.config.path)
        new = self.read_config()
        if new is not None:
            self.replace_config(new)
        return new is not None

    def reload_mirrors_if_changed(self) -> bool:
        """The daemon's tick: when the file changed, its ``[mirrors]`` take effect (the rest
        waits for SIGHUP). True if new mirror settings were handed over."""
        current = config_fingerprint(self.config.path)
        if current is None or current == self._seen:
            return False
        self._seen = current
        new = self.read_config()
        if new is None:
            return False
        self.replace_config(dataclasses.replace(self.config, mirrors=new.mirrors))
        return True

    def replace_config(self, new: Config) -> None:
        """Swap in an already validated config (the daemon's reload): the pieces built from it
        follow, except the database and the open relay pool, which need a restart."""
        if new.storage != self.config.storage:
            log.warning("[storage] changed: restart the daemon for that to take effect")
            new = dataclasses.replace(new, storage=self.config.storage)
        if new.delivery != self.config.delivery and self.built("transport"):
            # The open relay pool keeps its settings; a restart rebuilds it.
            log.warning("[delivery] changed: restart the daemon for relays to change")
        self.config = new
        self.__dict__.pop("editions", None)  # require_approval may have changed
        if self.built("mirrors"):
            self.mirrors.apply(new.mirrors)
        if self.built("webhooks"):
            self.webhooks.hooks = new.webhooks

    def refresh_keys(self) -> bool:
        """Follow a ``keys rotate``: long-running processes call this every ``[storage]
        key_reload_every`` (``Codec.refresh``); True if a new key file was loaded."""
        return self.built("subscribers") and self.subscribers.codec.refresh()

    @classmethod
    def from_path(cls, path: Path | str, environ: Mapping[str, str] | None = None,
                  clock: Clock = system_clock) -> App:
        env = dict(os.environ) if environ is None else dict(environ)
        return cls(config=load_config(path, env), clock=clock, environ=env)

    @cached_property
    def engine(self) -> Engine:
        return open_engine(self.config.storage.database)

    @cached_property
    def jinja(self) -> Environment:
        """The one strict Jinja environment; the deployment's template folder is searched first."""
        from mailer.render.env import make_environment

        return make_environment(self.config.newsletter.templates_dir)

    @cached_property
    def keyring(self) -> KeyRing:
        """The key file; generated (mode 0600, with a notice) on first use of an empty list."""
        from sqlalchemy import func, select

        from subscribers.keys import KeyRing
        from subscribers.schema import subscribers

        def empty_list() -> bool:
            with self.engine.connect() as conn:
                return not conn.execute(select(func.count()).select_from(subscribers)).scalar()

        return KeyRing.load_or_create(self.config.storage.key_file,
                                      self.config.storage.passphrase, log.warning, empty_list)

    @cached_property
    def subscribers(self) -> SubscriberStore:
        """The encrypted subscriber list; refuses a key file that cannot open its rows, and
        folding rules other than those its blind indexes were made under."""
        return self.open_subscribers()

    def open_subscribers(self, *, check_rules: bool = True) -> SubscriberStore:
        """A store for this config. ``check_rules=False`` is for ``subscribers reindex`` only,
        which exists to bring the list to the configured rules."""
        from mailer.config import config_error
        from subscribers.codec import Codec
        from subscribers.errors import IndexRulesError
        from subscribers.settings import ListSettings
        from subscribers.store import SubscriberStore

        nl, st = self.config.newsletter, self.config.storage
        store = SubscriberStore(
            self.engine, Codec(self.keyring), self.clock,
            ListSettings(languages=nl.languages, bilingual=nl.bilingual,
                         normalise_gmail_dots=st.normalise_gmail_dots,
                         case_insensitive_domains=st.case_insensitive_domains),
        )
        store.verify_key()
        if check_rules:
            try:
                store.verify_index_rules()
            except IndexRulesError as exc:
                raise config_error(self.config.path, f"storage.{exc.setting}", str(exc)) from None
        return store

    @cached_property
    def signup(self) -> SignupDesk:
        """The subscribe use case and its limits, for the form and the mail channel alike."""
        from subscribers.confirmations import ConfirmationQueue
        from subscribers.settings import SignupSettings
        from subscribers.signup import SignupDesk

        web = self.config.web
        return SignupDesk(self.subscribers, ConfirmationQueue(self.engine, self.clock),
                          SignupSettings(confirm_every=web.confirm_every,
                                         confirm_max=web.confirm_max,
                                         domain_per_hour=web.confirm_domain_per_hour,
                                         pending_ttl=self.config.storage.forget_pending_after),
                          self.clock)

    @cached_property
    def tokens(self) -> TokenSigner:
        """Unsubscribe and confirmation tokens (the key file's token key survives rotation)."""
        from subscribers.tokens import TokenSigner

        return TokenSigner(self.keyring.token_key, self.clock, self.config.web.confirm_ttl)

    @cached_property
    def post_store(self) -> PostStore:
        """Posts and feed health (validators, failures) in the one database."""
        from mailer.feeds.store import PostStore

        return PostStore(self.engine, self.clock)

    @cached_property
    def editions(self) -> EditionStore:
        """Editions and their states; the approval gate comes from ``require_approval``."""
        from mailer.editions.store import EditionStore

        return EditionStore(
            self.engine, self.clock,
            require_approval=self.config.newsletter.require_approval,
            load_posts=self.post_store.load,
            languages=self.config.newsletter.languages,
        )

    @cached_property
    def mirrors(self) -> MirrorRegistry:
        """Mirror bases per recipient. The partition secret is ``[mirrors] secret_env`` if set,
        else derived from the key file's master secret: stable across restarts and data-key
        rotations, and it moves with the list."""
        from mailer.mirrors.registry import MirrorRegistry

        secret = self.config.mirrors.secret or self.keyring.derive(b"mirror-partition/v1")
        return MirrorRegistry(self.config.mirrors, self.engine, self.clock, secret)

    @cached_property
    def outbox(self) -> Outbox:
        """One row per (edition, subscriber); rows change only when a reply is known."""
        from mailer.delivery.outbox import Outbox

        return Outbox(self.engine, self.clock, self.config.delivery.limited_domains)

    @cached_property
    def senders(self) -> SenderRegistry:
        """The processes sending now: the rate limits are shared among them."""
        from mailer.delivery.peers import SenderRegistry

        return SenderRegistry(self.engine, self.clock)

    @cached_property
    def metrics(self) -> Metrics:
        """This process's Prometheus counters (docs/monitoring.md); served only when asked."""
        from mailer.metrics import Metrics

        return Metrics()

    @cached_property
    def webhooks(self) -> WebhookQueue:
        """Events for the ``[[webhooks]]`` receivers, queued durably (``mailer/webhooks.py``)."""
        from mailer.webhooks import WebhookQueue

        return WebhookQueue(self.engine, self.clock, self.config.webhooks)

    def emit(self, event: str, data: Mapping[str, Any]) -> None:
        """Queue a webhook event; a failure is logged and never stops the work that caused it."""
        if not self.config.webhooks:
            return
        try:
            self.webhooks.emit(event, data)
        except Exception as exc:
            log.warning("webhook %s not queued (%s)", event, type(exc).__name__)

    @cached_property
    def transport(self) -> Transport:
        """The SMTP pool over ``[[delivery.relays]]``, or the Maildir writer (embedded default)."""
        from mailer.delivery.maildir import MaildirTransport
        from mailer.delivery.smtp import SMTPTransport

        if self.transport_override is not None:
            return signing(self.config, self.transport_override)
        delivery = self.config.delivery
        inner: Transport
        if delivery.transport == "smtp":
            delivery.require_secrets()  # the relay password is needed now, and only now
            inner = SMTPTransport(delivery.relays)
        else:
            inner = MaildirTransport(delivery.maildir_for("readers"))
        return signing(self.config, inner)

    @cached_property
    def editors_transport(self) -> Transport:
        """Where the editors' reports go (``Notifier.for_app``): with SMTP (or an injected
        transport) the readers' one, the same relays and connections; with Maildir the
        ``editors_maildir`` folder, so the readers' folder holds readers' mail only."""
        from mailer.delivery.maildir import MaildirTransport

        if self.transport_override is not None or self.config.delivery.transport == "smtp":
            return self.transport
        return signing(self.config, MaildirTransport(self.config.delivery.maildir_for("editors")))

    async def close_transports(self) -> None:
        """Close the transports this process opened (QUIT to the relays, signing workers)."""
        closed: list[Transport] = []
        for name in ("transport", "editors_transport"):
            if self.built(name):
                transport = self.__dict__[name]
                if all(transport is not c for c in closed):
                    await transport.aclose()
                    closed.append(transport)

    def open_test_transport(self) -> Transport:
        """A transport of its own for test sends, which the caller closes: the relays (or the
        injected transport), or with Maildir the ``test_maildir`` folder, never the subscribers'
        outbox, so no pickup mixes a test with their mail."""
        from mailer.delivery.maildir import MaildirTransport
        from mailer.delivery.smtp import SMTPTransport

        delivery = self.config.delivery
        if self.transport_override is not None:
            return signing(self.config, self.transport_override)
        if delivery.transport == "smtp":
            delivery.require_secrets()
            return signing(self.config, SMTPTransport(delivery.relays))
        return signing(self.config, MaildirTransport(delivery.maildir_for("tests")))


def dkim_signer(config: Config) -> DKIMSigner | None:
    """The signer for ``[dkim]``, or None: the one place that decides whether mail is signed."""
    if config.dkim is None:
        return None
    from mailer.delivery.dkim import DKIMSigner, load_keys

    d = config.dkim
    return DKIMSigner(load_keys(d.key_files, d.selector, d.domain))


def signing(config: Config, transport: Transport) -> Transport:
    """Wrap ``transport`` so every message is DKIM-signed when ``[dkim]`` is configured, so
    confirmations, test-sends and editors' reports are signed too."""
    signer = dkim_signer(config)
    if signer is None:
        return transport
    from mailer.delivery.dkim import SigningTransport

    assert config.dkim is not None
    return SigningTransport(transport, signer.keys, workers=config.dkim.workers)
