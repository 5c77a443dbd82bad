"""Load and validate the TOML config once, into frozen typed objects.

Nothing reads the TOML file or the environment after ``load_config`` returns: secrets named by
``*_env`` keys are resolved here. Every error names the file, the dotted key and its line.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from email.utils import parseaddr
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from mailer.delivery.providers import (
    DEFAULT_BLOCK_HOLD,
    SHIPPED_RULES,
    Family,
    ProviderRules,
    Rule,
    Verdict,
)
from mailer.errors import ConfigError
from mailer.mirrors.sites import is_origin_host, same_place
from mailer.render.convert import has_han
from mailer.render.phrases import SHIPPED_PHRASES, Phrases
from subscribers.languages import KNOWN_LANGUAGES, choices, is_pair_of

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "WEBHOOK_EVENTS",
    "AdminSettings",
    "ArchiveSettings",
    "ArchiveTarget",
    "Config",
    "DKIMSettings",
    "DeliverySettings",
    "DomainCap",
    "FeedSettings",
    "FetchSettings",
    "ImageSettings",
    "InboundSettings",
    "MailKind",
    "MetricsSettings",
    "MirrorSettings",
    "MirrorSite",
    "NewsletterSettings",
    "RelaySettings",
    "ScheduleSettings",
    "StorageSettings",
    "WebSettings",
    "WebhookSettings",
    "config_error",
    "load_config",
    "parse_duration",
    "parse_listen",
    "parse_size",
]

DEFAULT_CONFIG_NAME = "newsletter.toml"

# The kinds of mail that go to Maildir folders of their own (``DeliverySettings.maildir_for``).
MailKind = Literal["readers", "tests", "editors"]

# Provider answers that mean "we refused the content", not "the address is bad" (issue 7).
DEFAULT_CONTENT_REJECTIONS = (
    r"(?i)content.*(rejected|refused|blocked)",
)  # not a bare "spam": Spamhaus-style IP blocks mention it and are not about the content.
# Each provider's own wording (QQ's "mail content denied", NetEase's DT:SPM) is in
# mailer/delivery/providers.toml, with the provider's other rules (issue 21).


# --------------------------------------------------------------------------- settings objects


@dataclass(frozen=True)
class NewsletterSettings:
    """``[newsletter]``: who sends, in which languages, and how editions are shaped."""

    from_addr: str
    public_url: str
    languages: tuple[str, ...]
    name: Mapping[str, str]
    mode: Literal["digest", "per-post"] = "digest"
    reply_to: str | None = None
    bilingual: tuple[str, ...] = ()
    list_id: str = ""
    feedback_id: str | None = None
    unsubscribe_mailto: str | None = None
    editors: tuple[str, ...] = ()
    require_approval: bool = False
    taiwan_phrases: bool = True
    # Traditional -> Simplified with mainland wording (軟體 -> 软件), OpenCC's tw2sp; false: t2s.
    mainland_phrases: bool = True
    # The words OpenCC's phrase conversion misses (覆议 -> 复议): mailer/render/phrases.toml,
    # with the operator's `phrases_file` on top.
    phrases: Phrases = field(default_factory=lambda: _default_phrases())
    # Where readers can write to a person (footer, the bad-link page); None: not shown.
    contact: str | None = None
    templates_dir: Path | None = None
    content_rejection_alert: float = 0.05
    sample_subscribers: bool = False  # embedded default: seed one example.org reader per language

    @property
    def default_language(self) -> str:
        return self.languages[0]

    @property
    def choices(self) -> tuple[str, ...]:
        """Every language a subscriber may choose (``subscribers.languages`` owns the rule)."""
        return choices(self.languages, self.bilingual)


@dataclass(frozen=True)
class StorageSettings:
    """``[storage]``: where state lives. The key file may sit outside the data folder."""

    database: str
    key_file: Path
    passphrase: str | None = field(default=None, repr=False)
    normalise_gmail_dots: bool = False
    # Domains whose mailboxes ignore the case of the local part (QQ, 163, 126 do): one blind
    # index for ``Li.Wei@`` and ``li.wei@``. ASCII, lower-case. Changing it needs a reindex.
    case_insensitive_domains: frozenset[str] = frozenset()
    # Erase unsubscribed, bounced and complained readers this long after their last change
    # (the daemon does it daily; ``subscribers forget`` by hand). None: keep them.
    forget_suppressed_after: timedelta | None = None
    # Erase pending (never confirmed) rows this long after they became pending (daily).
    forget_pending_after: timedelta = timedelta(days=30)
    # How often a long-running process (the daemon, ``serve``, ``worker``) re-reads the key
    # file, so that after ``keys rotate`` it seals with the new key. ``keys rotate`` waits this
    # long (and a little more) before it retires the old key.
    key_reload_every: timedelta = timedelta(seconds=30)

    @property
    def rotation_settle(self) -> timedelta:
        """How long ``keys rotate`` waits before retiring the old key: one reload of every
        running process, and a margin for a reload that was busy (a batch in flight)."""
        return self.key_reload_every + timedelta(seconds=5)


@dataclass(frozen=True)
class FetchSettings:
    """``[fetch]``: limits every feed fetch obeys."""

    user_agent: str = "newsletter-pipeline/0.1 (+https://github.com/; feed reader for an email digest)"
    concurrency: int = 16
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_redirects: int = 5
    max_body: int = 20 * 1024 * 1024
    proxy: str | None = None
    # Whole-fetch limit: a server that dribbles a byte every few seconds never trips read_timeout.
    deadline: float = 120.0
    # Entries one feed may bring in one poll (the newest win): a hostile or broken feed of
    # 150,000 entries once took 53 s and 527 MB to store, and the next edition 2 GB.
    max_new_posts: int = 50
    # TEST ONLY: networks the address guard (mailer/net.py) treats as public, so that tests can
    # serve images and redirects from loopback. Empty in every deployment: anything here is a
    # network that hostile post content can make the server fetch from.
    unsafe_allow_networks_for_tests: tuple[IPv4Network | IPv6Network, ...] = ()


@dataclass(frozen=True)
class FeedSettings:
    """One ``[[feeds]]`` table. ``url`` is an http(s) URL or a resolved local path."""

    url: str
    language: str = "auto"
    backlog_days: int = 7
    proxy: str | None = None
    name: str | None = None
    max_new_posts: int | None = None  # None: ``[fetch] max_new_posts``

    @property
    def is_local(self) -> bool:
        return not self.url.startswith(("http://", "https://"))


@dataclass(frozen=True)
class ScheduleSettings:
    """``[schedule]``: the timetable; cron is read in ``timezone``."""

    timezone: str = "UTC"
    poll_every: timedelta = timedelta(minutes=15)
    digest: str = "0 8 * * mon,thu"
    hold: timedelta = timedelta(0)
    misfire_grace: timedelta = timedelta(hours=1)
    retry_every: timedelta = timedelta(minutes=5)
    mirror_check_every: timedelta = timedelta(hours=6)
    # An automatic edition (send, run --once, the digest) with more posts than this is held for
    # an editor instead of sent: a flooded or compromised feed must not mail readers 5,000 posts.
    max_posts: int = 50


@dataclass(frozen=True)
class RelaySettings:
    """One ``[[delivery.relays]]`` table; ``password`` was read from ``password_env`` at load."""

    host: str
    port: int = 587
    security: Literal["none", "starttls", "tls"] = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    connections: int = 8
    rate: float = 50.0
    weight: int = 1
    ca_file: Path | None = None
    timeout: float = 60.0
    name: str = ""
    # ``username`` is set but the environment lacks the password: raised (naming file, key and
    # line) only when a transport is opened, so read-only commands run without the secret.
    missing_password: ConfigError | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        return self.name or f"{self.host}:{self.port}"


@dataclass(frozen=True)
class DeliverySettings:
    """``[delivery]``: the transport, retries and how replies are classified."""

    transport: Literal["smtp", "maildir"] = "maildir"
    maildir: Path = Path("data/outbox")
    relays: tuple[RelaySettings, ...] = ()
    max_attempts: int = 8
    max_age: timedelta = timedelta(days=3)
    backoff_base: timedelta = timedelta(minutes=1)
    commit_every: int = 64
    content_rejections: tuple[str, ...] = DEFAULT_CONTENT_REJECTIONS
    domain_rates: Mapping[str, float] = field(default_factory=dict)
    envelope_from: str | None = None
    # Where ``editions test-send`` writes with the Maildir transport: never the subscribers'
    # outbox, so a test is never picked up with their mail (default: ``<maildir>-tests``).
    test_maildir: Path = Path("data/outbox-tests")
    # Where the editors' reports (sent, held, missed, blocklisted) go with the Maildir
    # transport: apart from readers' mail, so a count or pickup of it is readers' mail only
    # (default: ``<maildir>-editors``).
    editors_maildir: Path = Path("data/outbox-editors")

    def maildir_for(self, kind: MailKind) -> Path:
        """The Maildir folder for one kind of mail: readers' (editions, confirmations,
        answers), an editor's test copy, or the editors' reports. Each has its own, so nothing
        picked up for readers is a test or a report (``App`` opens each transport here)."""
        return {"readers": self.maildir, "tests": self.test_maildir,
                "editors": self.editors_maildir}[kind]

    def require_secrets(self) -> None:
        """Raise the ``ConfigError`` of a relay whose password is missing from the environment.

        Called when an SMTP transport is opened (and when the daemon or a worker starts), not at
        load: ``editions list`` or ``show`` must not need the relay password."""
        if self.transport != "smtp":
            return
        for relay in self.relays:
            if relay.missing_password is not None:
                raise relay.missing_password

    # Issue 21: hourly and daily caps per destination (``domain_rates."163.com" = {rate = 5,
    # per_hour = 3000, per_day = 100000}``), and each provider's reply rules.
    domain_caps: Mapping[str, DomainCap] = field(default_factory=dict)
    providers: ProviderRules = field(default_factory=lambda: _default_rules())

    @property
    def limited_domains(self) -> frozenset[str]:
        """Every domain ``domain_rates`` names, with a rate or a cap (kept by name in the outbox)."""
        return frozenset(self.domain_rates) | frozenset(self.domain_caps)


def _default_phrases() -> Phrases:
    return shipped_phrases()


def _default_rules() -> ProviderRules:
    return shipped_provider_rules()


@dataclass(frozen=True)
class DomainCap:
    """A destination's hourly and daily caps for the whole deployment (None: no cap)."""

    per_hour: int | None = None
    per_day: int | None = None


@dataclass(frozen=True)
class MirrorSite:
    """One ``[[mirrors.sites]]`` entry.

    ``url`` is always the http(s) base a reader opens, without a trailing slash: an
    ``ipfs://CID`` entry is stored as ``{gateway}/ipfs/CID`` at load time.
    """

    url: str
    status: Literal["active", "reserve", "retired"] = "active"
    # "archive": an ``[[archive.targets]]`` url, added at load time; checked like a mirror,
    # never handed out as one (it serves the archive, not the blog's pages).
    kind: Literal["https", "onion", "ipfs", "archive"] = "https"
    added: date | None = None
    retired: date | None = None
    note: str = ""


@dataclass(frozen=True)
class MirrorSettings:
    """``[mirrors]``: origins to match, sites to hand out, and the partition secret.

    ``countries``: a mirror OONI shows blocked in one of these is no longer handed out.
    """

    origins: tuple[str, ...] = ()
    per_recipient: int = 3
    secret: bytes | None = field(default=None, repr=False)
    period: timedelta = timedelta(days=7)
    canary_path: str = "/"
    proxy: str | None = None
    onion_proxy: str | None = None
    down_after: int = 3
    sites: tuple[MirrorSite, ...] = ()
    warnings: tuple[str, ...] = ()
    ipfs_gateway: str = "https://ipfs.io"
    countries: tuple[str, ...] = ("CN",)
    check_timeout: float = 20.0

    @property
    def active(self) -> tuple[MirrorSite, ...]:
        return tuple(s for s in self.sites if s.status == "active")


@dataclass(frozen=True)
class ImageSettings:
    """``[images]``: inline images fetched at build time, within a per-message budget."""

    fetch: bool = True
    budget: int = 1_500_000
    max_dimension: int = 1200
    # These four default to [fetch]'s at load time: one proxy hides the server for all fetches.
    proxy: str | None = None
    user_agent: str = FetchSettings.user_agent
    connect_timeout: float = FetchSettings.connect_timeout
    unsafe_allow_networks_for_tests: tuple[IPv4Network | IPv6Network, ...] = ()
    # Wall-clock limits: per image (a server that sends a byte every 5 s never trips a read
    # timeout) and for all of an edition's images together. A late image shows its alt text.
    timeout: float = 20.0
    deadline: float = 60.0
    max_redirects: int = 5


@dataclass(frozen=True)
class WebSettings:
    """``[web]``: the public subscribe / confirm / unsubscribe endpoints."""

    host: str = "127.0.0.1"
    port: int = 8080
    rate_limit: int = 20
    confirm_ttl: timedelta = timedelta(days=7)
    # Reverse proxies whose X-Forwarded-For (or Forwarded) is believed (subscribers/forwarded.py).
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    proxy_header: str = "x-forwarded-for"
    # Confirmation mails (subscribers/signup.py): one per address per ``confirm_every``, at
    # most ``confirm_max`` in all, ``confirm_domain_per_hour`` per recipient domain.
    confirm_every: timedelta = timedelta(days=1)
    confirm_max: int = 3
    confirm_domain_per_hour: int = 50
    # Where the mail server delivers what arrives at ``unsubscribe_mailto``. Kept for old
    # configs: it is read like ``[inbound] maildir`` (``Config.inbound_maildir``), which wins.
    unsubscribe_maildir: Path | None = None
    # Other addresses that serve these same pages (a CDN front, a mirror): the home page lists
    # them for a visitor whose way to ``public_url`` is blocked.
    mirrors: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdminSettings:
    """``[admin]``: the editors' web admin (``newsletter admin serve``), its own listener."""

    host: str = "127.0.0.1"
    port: int = 8081
    # A session unused this long is over; every session ends after ``session_max``.
    session_idle: timedelta = timedelta(minutes=30)
    session_max: timedelta = timedelta(hours=12)
    require_totp: bool = False  # every account must add a second factor before anything else
    four_eyes: bool = False  # an edition is approved by an editor who did not write it
    # Failed logins within ``login_window``: per account name (existing or not) and per client.
    login_window: timedelta = timedelta(minutes=15)
    account_attempts: int = 5
    client_attempts: int = 20
    # uvicorn believes X-Forwarded-For/-Proto (client address, https) only from these.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class InboundSettings:
    """``[inbound]``: mail that comes back (bounces, complaints, readers' commands), read by
    ``newsletter inbound`` and the daemon (mailer/inbound, docs/deployment.md "Inbound mail").

    ``address`` is where readers write (a plus-address such as ``digest+zh-hant@…`` carries a
    language); our mail's Reply-To and the confirmations' Reply-To are plus-addresses of it, so
    a reply reaches this Maildir. A soft bounce adds 1 to a score that halves every
    ``soft_bounce_half_life``; at ``soft_bounce_threshold`` the reader is suppressed as
    bounced (Mailman's bounce score). Replies to readers are capped per address and per
    recipient domain per day (BridgeDB, Psiphon): one warning past the cap, then silence.
    """

    maildir: Path | None = None
    address: str | None = None
    # Other mailboxes the MTA delivers here (a feedback loop's, postmaster): ``--lmtp`` takes
    # mail for these, ``address``, the VERP base and ``unsubscribe_mailto``, and refuses the rest.
    mailboxes: tuple[str, ...] = ()
    soft_bounce_threshold: float = 3.0
    soft_bounce_half_life: timedelta = timedelta(days=7)
    replies_per_day: int = 3
    domain_replies_per_day: int = 200


@dataclass(frozen=True)
class DKIMSettings:
    """``[dkim]``: sign every message we send (docs/deployment.md, "DKIM")."""

    domain: str
    selector: str
    key_files: tuple[Path, ...]  # one or two PEM files: RSA-2048 and/or Ed25519
    workers: int | None = None  # signing processes (0: none); default: dkim.default_workers


@dataclass(frozen=True)
class ArchiveTarget:
    """One ``[[archive.targets]]``: where rclone syncs the archive, and where readers find it."""

    remote: str  # an rclone remote path ("r2:bucket/news") or a local folder
    url: str | None = None  # the public base readers open, without a trailing slash


@dataclass(frozen=True)
class ArchiveSettings:
    """``[archive]``: the static web archive of sent editions (mailer/archive/)."""

    folder: Path = Path("data/archive")
    targets: tuple[ArchiveTarget, ...] = ()
    rclone_config: Path | None = None  # rclone's own config file: the credentials stay there
    rclone: str = "rclone"  # the binary
    subscribe_mailto: str | None = None  # shown in the archive's footer
    timeout: float = 600.0  # seconds one target's sync may take

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(t.url for t in self.targets if t.url)


@dataclass(frozen=True)
class MetricsSettings:
    """``[metrics]``: where ``run``, each ``worker`` and ``serve`` expose Prometheus metrics
    (docs/monitoring.md). ``listen`` None: no endpoint."""

    listen: tuple[str, int] | None = None


# What a ``[[webhooks]]`` entry may subscribe to (docs/monitoring.md, "Webhooks").
WEBHOOK_EVENTS = (
    "edition.scheduled", "edition.held", "edition.sent", "edition.missed",
    "edition.content_rejected", "feed.failing", "feed.recovered", "mirror.down",
    "mirror.blocked", "subscriber.counts",
)


@dataclass(frozen=True)
class WebhookSettings:
    """One ``[[webhooks]]`` receiver: a JSON POST per event, signed with ``secret``."""

    url: str
    events: tuple[str, ...]
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Config:
    """The whole validated config. ``path`` is the file it came from."""

    path: Path
    newsletter: NewsletterSettings
    storage: StorageSettings
    feeds: tuple[FeedSettings, ...]
    schedule: ScheduleSettings
    delivery: DeliverySettings
    mirrors: MirrorSettings
    fetch: FetchSettings = FetchSettings()
    images: ImageSettings = ImageSettings()
    web: WebSettings = WebSettings()
    dkim: DKIMSettings | None = None
    inbound: InboundSettings = InboundSettings()
    archive: ArchiveSettings = ArchiveSettings()
    metrics: MetricsSettings = MetricsSettings()
    webhooks: tuple[WebhookSettings, ...] = ()
    admin: AdminSettings = AdminSettings()
    # The SMTP envelope sender (MAIL FROM, where bounces go): ``[delivery] envelope_from``, else
    # the address in ``[newsletter] from``. Resolved here, once, for every sender of mail.
    envelope_sender: str = field(init=False, repr=False, compare=False)
    # The domain of ``[newsletter] from``, lower-cased: Message-IDs, DKIM alignment and DNS
    # checks all name it (RFC 7489 §3.1 aligns on the RFC5322.From domain).
    from_domain: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sender = self.delivery.envelope_from or parseaddr(self.newsletter.from_addr)[1]
        object.__setattr__(self, "envelope_sender", sender)
        domain = parseaddr(self.newsletter.from_addr)[1].rpartition("@")[2].lower() or "localhost"
        object.__setattr__(self, "from_domain", domain)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def inbound_maildir(self) -> Path | None:
        """The Maildir ``newsletter inbound`` reads: ``[inbound] maildir``, else the older
        ``[web] unsubscribe_maildir`` (same processing; the unsubscribe-by-mail moved there)."""
        return self.inbound.maildir or self.web.unsubscribe_maildir


# --------------------------------------------------------------------------- parsing helpers

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}


def parse_duration(text: str | int | float) -> timedelta:
    """``"15m"``, ``"1h"``, ``"7d"``; a bare number means seconds."""
    if isinstance(text, bool):
        raise ValueError("expected a duration such as '15m'")
    if isinstance(text, int | float):
        return timedelta(seconds=text)
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"expected a duration such as '30s', '15m', '1h' or '7d', not {text!r}")
    return timedelta(seconds=float(m.group(1)) * _DURATION_UNITS[m.group(2)])


def parse_size(text: str | int) -> int:
    """``"20MB"``, ``"1.5 MB"``, ``"512KiB"``; a bare integer means bytes."""
    if isinstance(text, bool):
        raise ValueError("expected a size such as '20MB'")
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"expected a size such as '1.5MB', not {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])


def _locate(text: str, dotted: str) -> int | None:
    """Find the line of a dotted key (``feeds[1].url``) by scanning the TOML text.

    tomllib keeps no positions, so we follow table headers and array-of-table counts ourselves.
    """
    parts = re.findall(r"([^.\[\]]+)(?:\[(\d+)\])?", dotted)
    want = [(name, int(idx) if idx else None) for name, idx in parts]
    counts: dict[str, int] = {}
    table: list[tuple[str, int | None]] = []
    header_line: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^\[\[\s*([^\]]+?)\s*\]\]", line)
        if m:
            name = m.group(1).replace('"', "")
            counts[name] = counts.get(name, -1) + 1
            table = _expand(name, counts)
            header_line[_fmt(table)] = lineno
            continue
        m = re.match(r"^\[\s*([^\]]+?)\s*\]", line)
        if m:
            name = m.group(1).replace('"', "")
            table = _expand(name, counts)
            header_line[_fmt(table)] = lineno
            continue
        m = re.match(r"^(?:\"([^\"]+)\"|([A-Za-z0-9_\-]+))\s*=", line)
        # The key itself, or an element inside it (``languages[1]``): report the key's line.
        key = m and (m.group(1) or m.group(2))
        if key and len(want) > len(table) and want[: len(table)] == table and want[len(table)][0] == key:
            return lineno
    return header_line.get(_fmt(want))


def _expand(name: str, counts: dict[str, int]) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = []
    prefix = ""
    for part in name.split("."):
        prefix = f"{prefix}.{part}" if prefix else part
        out.append((part, counts.get(prefix)))
    return out


def _fmt(path: list[tuple[str, int | None]]) -> str:
    return ".".join(f"{n}[{i}]" if i is not None else n for n, i in path)


T = TypeVar("T")


class _Section:
    """A view of one TOML table that records which keys were read, to reject unknown ones."""

    def __init__(self, loader: _Loader, data: Mapping[str, Any], prefix: str) -> None:
        self._loader = loader
        self._data = data
        self._prefix = prefix
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return self._loader.error(self.key(name), message)

    def has(self, name: str) -> bool:
        return name in self._data

    def names(self) -> list[str]:
        """The keys of a table whose keys are data (words), not settings."""
        return list(self._data)

    def get(self, name: str, kind: type[T] | tuple[type, ...], default: Any = ...) -> Any:
        self._seen.add(name)
        if name not in self._data:
            if default is ...:
                raise self._loader.error(self.key(name), "is required", at=self._prefix)
            return default
        value = self._data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise self.error(name, f"must be {_article(names)}, not {type(value).__name__}")
        return value

    def convert(self, name: str, kind: type | tuple[type, ...], fn: Callable[[Any], T], default: Any = ...) -> T:
        raw = self.get(name, kind, default)
        if raw is default and default is not ...:
            return raw  # type: ignore[no-any-return]
        try:
            return fn(raw)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def strings(self, name: str, default: Any = ...) -> tuple[str, ...]:
        value = self.get(name, list, default)
        if value is default and default is not ...:
            return tuple(value)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{name}[{i}]", "must be a string")
        return tuple(value)

    def table(self, name: str) -> _Section:
        value = self.get(name, dict, {})
        return _Section(self._loader, value, self.key(name))

    def tables(self, name: str) -> list[_Section]:
        value = self.get(name, list, [])
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(f"{name}[{i}]", "must be a table")
            out.append(_Section(self._loader, item, self.key(f"{name}[{i}]")))
        return out

    def done(self) -> None:
        """Reject keys nobody read: a typo must not be silently ignored."""
        for name in self._data:
            if name not in self._seen:
                raise self.error(name, "is not a known key")


def _article(names: str) -> str:
    return ("an " if names[:1] in "aeiou" else "a ") + names


class _Loader:
    def __init__(self, path: Path, text: str, environ: Mapping[str, str]) -> None:
        self.path = path
        self.text = text
        self.environ = environ
        self.warnings: list[str] = []

    def error(self, key: str, message: str, at: str | None = None) -> ConfigError:
        line = _locate(self.text, key)
        if line is None and at:
            line = _locate(self.text, at)
        return ConfigError(message, path=self.path, key=key, line=line)

    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.path.parent / p)

    def secret(self, section: _Section, name: str) -> str | None:
        env_name = section.get(name, str, None)
        if env_name is None:
            return None
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env_name):
            raise section.error(name, "must name an environment variable")
        return self.environ.get(env_name)


# --------------------------------------------------------------------------- sections


def _language(value: str) -> str:
    if value not in KNOWN_LANGUAGES:
        raise ValueError(f"unknown language {value!r}; choose from {', '.join(KNOWN_LANGUAGES)}")
    return value


def _url(value: str, *, schemes: tuple[str, ...] = ("http", "https")) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"{value!r} is not an absolute {'/'.join(schemes)} URL")
    if any(c in value for c in "\r\n \t"):
        raise ValueError(f"{value!r} contains white space")
    return value.rstrip("/")


def _overlaps(a: Path, b: Path) -> bool:
    """The same folder, or one inside the other: a Maildir reader of one would see the other."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def _address(value: str) -> str:
    if "\r" in value or "\n" in value or "@" not in value:
        raise ValueError(f"{value!r} is not an email address")
    return value


def _bare_address(value: str) -> str:
    """An address written out in mail and pages and used in a ``mailto:`` link: no name part."""
    if not re.fullmatch(r"[^\s<>\"@]+@[^\s<>\"@]+\.[^\s<>\"@]+", value):
        raise ValueError(f"{value!r} is not a plain email address (like 'editors@example.org')")
    return value


def _newsletter(ld: _Loader, s: _Section) -> NewsletterSettings:
    languages = s.strings("languages", list(KNOWN_LANGUAGES))
    if not languages:
        raise s.error("languages", "must name at least one language")
    for i, lang in enumerate(languages):
        try:
            _language(lang)
        except ValueError as exc:
            raise s.error(f"languages[{i}]", str(exc)) from None
    bilingual = s.strings("bilingual", [])
    for i, pair in enumerate(bilingual):
        if not is_pair_of(pair, languages):
            raise s.error(f"bilingual[{i}]", f"{pair!r} must be two configured languages, like 'zh-Hans+en'")
    names_sec = s.table("name")
    names: dict[str, str] = {}
    for lang in languages:
        names[lang] = names_sec.get(lang, str, "Newsletter")
    names_sec.done()
    mode = s.get("mode", str, "digest")
    if mode not in ("digest", "per-post"):
        raise s.error("mode", "must be 'digest' or 'per-post'")
    from_addr = s.convert("from", str, _address)
    public_url = s.convert("public_url", str, _url)
    default_list_id = f"<newsletter.{urlsplit(public_url).hostname}>"
    list_id = s.get("list_id", str, default_list_id)
    templates = s.get("templates", str, None)
    threshold = s.get("content_rejection_alert", float, 0.05)
    out = NewsletterSettings(
        from_addr=from_addr,
        public_url=public_url,
        languages=languages,
        name=names,
        mode=mode,
        reply_to=s.convert("reply_to", str, _address, None),
        bilingual=bilingual,
        list_id=list_id,
        feedback_id=s.get("feedback_id", str, None),
        unsubscribe_mailto=s.convert("unsubscribe_mailto", str, _address, None),
        editors=s.strings("editors", []),
        require_approval=s.get("require_approval", bool, False),
        taiwan_phrases=s.get("taiwan_phrases", bool, True),
        mainland_phrases=s.get("mainland_phrases", bool, True),
        phrases=_phrases(ld, s, "phrases_file"),
        contact=s.convert("contact", str, _bare_address, None),
        templates_dir=ld.resolve(templates) if templates else None,
        content_rejection_alert=float(threshold),
        sample_subscribers=s.get("sample_subscribers", bool, False),
    )
    s.done()
    return out


def _storage(ld: _Loader, s: _Section) -> StorageSettings:
    database = s.get("database", str, "sqlite:///data/newsletter.db")
    m = re.match(r"^sqlite(\+\w+)?:///(.+)$", database)
    if m and m.group(2) != ":memory:" and not m.group(2).startswith("/"):
        database = f"sqlite{m.group(1) or ''}:///{ld.resolve(m.group(2))}"
    elif not database.startswith(("sqlite", "postgresql")):
        raise s.error("database", "must be a sqlite:/// or postgresql+psycopg:// URL")
    out = StorageSettings(
        database=database,
        key_file=ld.resolve(s.get("key_file", str, "data/keys.json")),
        passphrase=ld.secret(s, "passphrase_env"),
        normalise_gmail_dots=s.get("normalise_gmail_dots", bool, False),
        case_insensitive_domains=_domains(s, "case_insensitive_domains"),
        forget_suppressed_after=s.convert("forget_suppressed_after", (str, int, float),
                                          _retention, None),
        forget_pending_after=s.convert("forget_pending_after", (str, int, float), _retention,
                                       StorageSettings.forget_pending_after),
        key_reload_every=s.convert("key_reload_every", (str, int, float), _key_reload,
                                   StorageSettings.key_reload_every),
    )
    s.done()
    return out


def _retention(value: str | int | float) -> timedelta:
    age = parse_duration(value)
    if age < timedelta(days=1):
        raise ValueError("must be at least a day (e.g. '180d'): an unsubscribe needs time to "
                         "reach every sender first")
    return age


def _key_reload(value: str | int | float) -> timedelta:
    every = parse_duration(value)
    if not timedelta(seconds=1) <= every <= timedelta(minutes=10):
        raise ValueError("must be between 1s and 10m: a rotation waits this long before it "
                         "retires the old key")
    return every


def _domains(s: _Section, name: str) -> frozenset[str]:
    """A list of mail domains, each lower-cased and IDNA-encoded as addresses are."""
    from subscribers.normalise import InvalidAddress, ascii_domain

    out = set()
    for i, raw in enumerate(s.strings(name, [])):
        try:
            domain = ascii_domain(raw)
        except InvalidAddress as exc:
            raise s.error(f"{name}[{i}]", str(exc)) from None
        if "@" in domain or "." not in domain or any(c.isspace() for c in domain):
            raise s.error(f"{name}[{i}]", f"{raw!r} is not a mail domain such as 'qq.com'")
        out.add(domain)
    return frozenset(out)


def config_error(path: Path, key: str, message: str) -> ConfigError:
    """A ``ConfigError`` naming ``key`` (dotted) of the config file at ``path``, and its line if
    the file sets it (else its table's): for settings found wrong later, against stored data."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return ConfigError(message, path=path, key=key)
    section = key.rsplit(".", 1)[0] if "." in key else None
    line = _locate(text, key) or (_locate(text, section) if section else None)
    return ConfigError(message, path=path, key=key, line=line)


def _proxy(value: str) -> str:
    return _url(value, schemes=("http", "https", "socks5", "socks5h"))


def _fetch(s: _Section) -> FetchSettings:
    d = FetchSettings()
    out = FetchSettings(
        user_agent=s.get("user_agent", str, d.user_agent),
        concurrency=s.get("concurrency", int, d.concurrency),
        connect_timeout=float(s.get("connect_timeout", float, d.connect_timeout)),
        read_timeout=float(s.get("read_timeout", float, d.read_timeout)),
        max_redirects=s.get("max_redirects", int, d.max_redirects),
        max_body=s.convert("max_body", (str, int), parse_size, d.max_body),
        proxy=s.convert("proxy", str, _proxy, None),
        deadline=float(s.get("deadline", float, d.deadline)),
        unsafe_allow_networks_for_tests=_networks(s, "unsafe_allow_networks_for_tests"),
        max_new_posts=s.get("max_new_posts", int, d.max_new_posts),
    )
    if out.concurrency < 1:
        raise s.error("concurrency", "must be at least 1")
    if out.max_new_posts < 1:
        raise s.error("max_new_posts", "must be at least 1")
    if out.deadline <= 0 or out.connect_timeout <= 0 or out.read_timeout <= 0:
        raise s.error("deadline" if out.deadline <= 0 else
                      "connect_timeout" if out.connect_timeout <= 0 else "read_timeout",
                      "must be positive")
    if out.max_redirects < 0:
        raise s.error("max_redirects", "must not be negative")
    s.done()
    return out


def _feed(ld: _Loader, s: _Section) -> FeedSettings:
    url = s.get("url", str)
    if url.startswith(("http://", "https://")):
        try:
            url = _url(url)
        except ValueError as exc:
            raise s.error("url", str(exc)) from None
    elif "://" in url:
        raise s.error("url", f"{url!r}: only http(s) URLs and local paths are supported")
    else:
        url = str(ld.resolve(url))
    language = s.get("language", str, "auto")
    if language != "auto":
        try:
            _language(language)
        except ValueError as exc:
            raise s.error("language", str(exc)) from None
    backlog = s.get("backlog_days", int, 7)
    if backlog < 0:
        raise s.error("backlog_days", "must not be negative")
    cap = s.get("max_new_posts", int, None)
    if cap is not None and cap < 1:
        raise s.error("max_new_posts", "must be at least 1")
    out = FeedSettings(
        url=url, language=language, backlog_days=backlog,
        proxy=s.convert("proxy", str, _proxy, None), name=s.get("name", str, None),
        max_new_posts=cap,
    )
    s.done()
    return out


_CRON_FIELD = re.compile(r"^[\w*/,\-]+$")


def _cron(value: str) -> str:
    fields = value.split()
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValueError(f"{value!r} is not a 5-field cron expression like '0 8 * * mon,thu'")
    return value


def _schedule(s: _Section) -> ScheduleSettings:
    tz = s.get("timezone", str, "UTC")
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise s.error("timezone", f"unknown time zone {tz!r}") from None
    d = ScheduleSettings()
    dur = (str, int, float)
    out = ScheduleSettings(
        timezone=tz,
        poll_every=s.convert("poll_every", dur, parse_duration, d.poll_every),
        digest=s.convert("digest", str, _cron, d.digest),
        hold=s.convert("hold", dur, parse_duration, d.hold),
        misfire_grace=s.convert("misfire_grace", dur, parse_duration, d.misfire_grace),
        retry_every=s.convert("retry_every", dur, parse_duration, d.retry_every),
        mirror_check_every=s.convert("mirror_check_every", dur, parse_duration, d.mirror_check_every),
        max_posts=s.get("max_posts", int, d.max_posts),
    )
    if out.poll_every <= timedelta(0):
        raise s.error("poll_every", "must be positive")
    if out.max_posts < 1:
        raise s.error("max_posts", "must be at least 1")
    s.done()
    return out


def _relay(ld: _Loader, s: _Section, check_password: bool) -> RelaySettings:
    security = s.get("security", str, "starttls")
    if security not in ("none", "starttls", "tls"):
        raise s.error("security", "must be 'none', 'starttls' or 'tls'")
    host = s.get("host", str)
    if not host or any(c in host for c in "\r\n /"):
        raise s.error("host", f"{host!r} is not a host name")
    username = s.get("username", str, None)
    password = ld.secret(s, "password_env")
    missing = None
    if username and password is None and check_password:
        env = s.get("password_env", str, None)
        missing = s.error(
            "password_env",
            f"username is set, so the environment variable {env!r} must hold the password"
            if env else "username is set, so password_env must name the variable with the password",
        )
    ca = s.get("ca_file", str, None)
    out = RelaySettings(
        host=host,
        port=s.get("port", int, 587 if security == "starttls" else 465 if security == "tls" else 25),
        security=security,
        username=username,
        password=password,
        connections=s.get("connections", int, 8),
        rate=float(s.get("rate", float, 50.0)),
        weight=s.get("weight", int, 1),
        ca_file=ld.resolve(ca) if ca else None,
        timeout=float(s.get("timeout", float, 60.0)),
        name=s.get("name", str, ""),
        missing_password=missing,
    )
    if not 0 < out.port < 65536:
        raise s.error("port", "must be between 1 and 65535")
    if out.connections < 1:
        raise s.error("connections", "must be at least 1")
    if out.rate < 0:
        raise s.error("rate", "must not be negative (0 means unlimited)")
    if out.weight < 1:
        raise s.error("weight", "must be at least 1")
    s.done()
    return out


def _delivery(ld: _Loader, s: _Section) -> DeliverySettings:
    transport = s.get("transport", str, "maildir")
    if transport not in ("smtp", "maildir"):
        raise s.error("transport", "must be 'smtp' or 'maildir'")
    relays = tuple(_relay(ld, r, transport == "smtp") for r in s.tables("relays"))
    if transport == "smtp" and not relays:
        raise s.error("relays", "transport is 'smtp', so at least one [[delivery.relays]] is needed")
    patterns = s.strings("content_rejections", list(DEFAULT_CONTENT_REJECTIONS))
    for i, pat in enumerate(patterns):
        try:
            re.compile(pat)
        except re.error as exc:
            raise s.error(f"content_rejections[{i}]", f"bad regular expression: {exc}") from None
    rates_sec = s.table("domain_rates")
    rates: dict[str, float] = {}
    caps: dict[str, DomainCap] = {}
    for domain in list(rates_sec._data):
        if not isinstance(rates_sec._data[domain], dict):
            rates[domain.lower()] = float(rates_sec.get(domain, float))
            continue
        rate, cap = _domain_rate(rates_sec.table(domain))
        if rate > 0:
            rates[domain.lower()] = rate
        if cap.per_hour is not None or cap.per_day is not None:
            caps[domain.lower()] = cap
    rates_sec.done()
    providers_file = s.get("providers_file", str, None)
    providers = _provider_rules(ld.resolve(providers_file) if providers_file else None,
                                s, "providers_file")
    d = DeliverySettings()
    dur = (str, int, float)
    maildir = ld.resolve(s.get("maildir", str, "data/outbox"))
    test_raw = s.get("test_maildir", str, None)
    test_maildir = ld.resolve(test_raw) if test_raw else maildir.with_name(f"{maildir.name}-tests")
    editors_raw = s.get("editors_maildir", str, None)
    editors_maildir = (ld.resolve(editors_raw) if editors_raw
                       else maildir.with_name(f"{maildir.name}-editors"))
    for key, raw, folder, what in (
            ("test_maildir", test_raw, test_maildir, "test sends"),
            ("editors_maildir", editors_raw, editors_maildir, "editors' reports")):
        if _overlaps(folder, maildir):
            raise s.error(key if raw else "maildir",
                          f"{key} must be a folder of its own, neither maildir nor inside it "
                          f"({what} must never sit among subscribers' mail)")
    if _overlaps(test_maildir, editors_maildir):
        raise s.error("editors_maildir" if editors_raw else "test_maildir",
                      "test_maildir and editors_maildir must be folders of their own, neither "
                      "the other nor inside it")
    out = DeliverySettings(
        transport=transport,
        maildir=maildir,
        test_maildir=test_maildir,
        editors_maildir=editors_maildir,
        relays=relays,
        max_attempts=s.get("max_attempts", int, d.max_attempts),
        max_age=s.convert("max_age", dur, parse_duration, d.max_age),
        backoff_base=s.convert("backoff_base", dur, parse_duration, d.backoff_base),
        commit_every=s.get("commit_every", int, d.commit_every),
        content_rejections=patterns,
        domain_rates=rates,
        envelope_from=s.convert("envelope_from", str, _address, None),
        domain_caps=caps,
        providers=providers,
    )
    s.done()
    return out


def _domain_rate(t: _Section) -> tuple[float, DomainCap]:
    """``{rate = 5, per_hour = 3000, per_day = 100000}``: any of the three."""
    rate = float(t.get("rate", float, 0.0))
    if rate < 0:
        raise t.error("rate", "must not be negative (0 means no per-second limit)")
    limits: dict[str, int | None] = {}
    for name in ("per_hour", "per_day"):
        value = t.get(name, int, None)
        if value is not None and value < 1:
            raise t.error(name, "must be at least 1 (leave it out for no cap)")
        limits[name] = value
    t.done()
    return rate, DomainCap(**limits)


def _data_file(path: Path, what: str) -> tuple[str, dict[str, Any]]:
    """A data file beside the config (phrases, provider rules): its text and its tables.
    Errors name the file, and a TOML error its line; a missing file is left to the caller,
    which names the key that named it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what}: {exc}", path=path) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(f"not valid TOML: {exc}", path=path,
                          line=int(m.group(1)) if m else None) from None


@functools.cache
def shipped_phrases() -> Phrases:
    """``mailer/render/phrases.toml`` alone (what ``NewsletterSettings()`` starts from)."""
    return _phrases_file(SHIPPED_PHRASES)


def _phrases(ld: _Loader, s: _Section, key: str) -> Phrases:
    """The shipped phrase pairs, with the operator's file (``phrases_file``) on top."""
    name = s.get(key, str, None)
    if name is None:
        return shipped_phrases()
    path = ld.resolve(name)
    if not path.is_file():
        raise s.error(key, f"{path} does not exist")
    return shipped_phrases().merged(_phrases_file(path))


def _phrases_file(path: Path) -> Phrases:
    """One phrases file (``mailer/render/phrases.toml`` format); errors name file, key, line."""
    text, data = _data_file(path, "phrases")
    root = _Section(_Loader(path, text, {}), data, "")
    tables = {}
    for region in ("mainland", "taiwan"):
        t = root.table(region)
        pairs = []
        for word in t.names():
            value = t.get(word, str)
            if not has_han(word):
                raise t.error(word, "must hold Chinese characters (it is matched in converted text)")
            if not value:
                raise t.error(word, "must not be empty")
            pairs.append((word, value))
        t.done()
        tables[region] = tuple(sorted(pairs))
    root.done()
    return Phrases(tables["mainland"], tables["taiwan"])


@functools.cache
def shipped_provider_rules() -> ProviderRules:
    """``mailer/delivery/providers.toml`` alone (what ``DeliverySettings()`` starts from)."""
    return ProviderRules(tuple(dataclasses.replace(f, label=f.label or f.name)
                               for f in _rules_file(SHIPPED_RULES)))


def _provider_rules(extra: Path | None, s: _Section, key: str) -> ProviderRules:
    """The shipped provider rules, with the operator's file (``providers_file``) first."""
    if extra is None:
        return shipped_provider_rules()
    shipped = list(shipped_provider_rules().families)
    try:
        own = _rules_file(extra)
    except FileNotFoundError:
        raise s.error(key, f"{extra} does not exist") from None
    merged: list[Family] = []
    for fam in own:
        base = next((f for f in shipped if f.name == fam.name), None)
        if base is not None:
            fam = Family(fam.name, fam.label or base.label, fam.domains or base.domains,
                         fam.rules + base.rules)
        merged.append(dataclasses.replace(fam, label=fam.label or fam.name))
    mine = {f.name for f in own}
    merged += [f for f in shipped if f.name not in mine]
    return ProviderRules(tuple(merged))


def _rules_file(path: Path) -> list[Family]:
    """One rules file (``mailer/delivery/providers.toml`` format); errors name file, key, line."""
    text, data = _data_file(path, "provider rules")
    ld = _Loader(path, text, {})
    root = _Section(ld, data, "")
    families = []
    for name in list(data):
        fam = root.table(name)
        domains = _domains(fam, "domains")
        rules = []
        for r in fam.tables("rules"):
            pattern = r.get("match", str)
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise r.error("match", f"bad regular expression: {exc}") from None
            outcome = r.get("outcome", str)
            try:
                verdict = Verdict(outcome)
            except ValueError:
                raise r.error("outcome", f"{outcome!r} is not one of "
                              + ", ".join(v.value for v in Verdict)) from None
            codes = r.get("codes", list, [])
            for i, c in enumerate(codes):
                if isinstance(c, bool) or not isinstance(c, int) or not 400 <= c < 600:
                    raise r.error(f"codes[{i}]", "must be an SMTP reply code from 400 to 599")
            dur = (str, int, float)
            retry_after = r.convert("retry_after", dur, parse_duration, None)
            hold = r.convert("hold", dur, parse_duration, None)
            if hold is not None and verdict is not Verdict.BLOCKLISTED:
                raise r.error("hold", "only a 'blocklisted' rule holds a provider")
            if verdict is Verdict.BLOCKLISTED and hold is None:
                hold = DEFAULT_BLOCK_HOLD
            notice = r.get("notice", bool, False)
            r.done()
            rules.append(Rule(compiled, verdict, frozenset(codes), retry_after, hold, notice))
        label = fam.get("label", str, "")  # empty: the shipped family's, or the name
        fam.done()
        families.append(Family(name, label, domains, tuple(rules)))
    return families


def _mirror_url(value: str) -> str:
    return _url(value, schemes=("http", "https", "ipfs"))


def _mirror_site(i: int, site: _Section, gateway: str, origins: tuple[str, ...],
                 warnings: list[str]) -> MirrorSite:
    url = site.convert("url", str, _mirror_url)
    if url.startswith("ipfs://"):
        # A reader opens an IPFS mirror through an HTTP gateway; store the base they open.
        url = f"{gateway}/ipfs/{url[len('ipfs://'):]}"
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if is_origin_host(host, origins):
        raise site.error("url", "is on an origin's host (or one of its blogspot country domains); "
                                "a mirror must be another address (the censor blocks the "
                                "origin's host whatever the path)")
    guess = "onion" if host.endswith(".onion") else "ipfs" if "/ipfs/" in url else "https"
    kind = site.get("kind", str, guess)
    if kind not in ("https", "onion", "ipfs"):
        raise site.error("kind", "must be 'https', 'onion' or 'ipfs'")
    if kind == "onion" and not host.endswith(".onion"):
        raise site.error("kind", f"is 'onion' but {host!r} is not a .onion address")
    status = site.get("status", str, "active")
    if status not in ("active", "reserve", "retired"):
        raise site.error("status", "must be 'active', 'reserve' or 'retired'")
    added = site.get("added", date, None)
    retired = site.get("retired", date, None)
    if added and retired and retired < added:
        raise site.error("retired", f"{retired} is before added = {added}")
    if retired and status != "retired":
        raise site.error("retired", f"is set but status is {status!r}; set status = 'retired'")
    if parts.scheme == "http" and kind != "onion":
        # Onion services authenticate themselves; anything else over http can be altered.
        warnings.append(f"mirrors.sites[{i}] {url} is plain http: readers' traffic can be "
                        "read and altered on the way")
    out = MirrorSite(url=url, status=status, kind=kind, added=added, retired=retired,
                     note=site.get("note", str, ""))
    site.done()
    return out


def _mirrors(ld: _Loader, s: _Section) -> MirrorSettings:
    origins = s.strings("origins", [])
    clean_origins = []
    for i, origin in enumerate(origins):
        try:
            clean_origins.append(_url(origin))
        except ValueError as exc:
            raise s.error(f"origins[{i}]", str(exc)) from None
    per_recipient = s.get("per_recipient", int, 3)
    if per_recipient < 1:
        raise s.error("per_recipient", "must be at least 1")
    down_after = s.get("down_after", int, 3)
    if down_after < 1:
        raise s.error("down_after", "must be at least 1")
    secret = ld.secret(s, "secret_env")
    gateway = s.convert("ipfs_gateway", str, lambda v: _url(v, schemes=("https", "http")),
                        "https://ipfs.io")
    countries = s.strings("countries", ["CN"])
    for i, cc in enumerate(countries):
        if not re.fullmatch(r"[A-Z]{2}", cc):
            raise s.error(f"countries[{i}]", f"{cc!r} is not a two-letter country code like 'CN'")
    canary = s.get("canary_path", str, "/")
    if not canary.startswith("/"):
        raise s.error("canary_path", "must start with '/' (it is appended to each mirror's base)")
    sites: list[MirrorSite] = []
    warnings: list[str] = []
    for i, section in enumerate(s.tables("sites")):
        site = _mirror_site(i, section, gateway, tuple(clean_origins), warnings)
        for j, earlier in enumerate(sites):
            if same_place(site.url, earlier.url):
                raise section.error("url", f"duplicate of mirrors.sites[{j}] ({earlier.url})")
        sites.append(site)
    active = sum(1 for x in sites if x.status == "active" and x.kind != "onion")
    if sites and active < per_recipient:
        warnings.append(f"only {active} active web mirrors, fewer than per_recipient = "
                        f"{per_recipient}: some recipients get the same mirror twice")
    dur = (str, int, float)
    period = s.convert("period", dur, parse_duration, timedelta(days=7))
    if period <= timedelta(0):
        raise s.error("period", "must be positive")
    timeout = float(s.get("check_timeout", float, 20.0))
    if timeout <= 0:
        raise s.error("check_timeout", "must be positive")
    out = MirrorSettings(
        origins=tuple(clean_origins),
        per_recipient=per_recipient,
        secret=secret.encode() if secret else None,
        period=period,
        canary_path=canary,
        proxy=s.convert("proxy", str, _proxy, None),
        onion_proxy=s.convert("onion_proxy", str, _proxy, None),
        down_after=down_after,
        sites=tuple(sites),
        warnings=tuple(warnings),
        ipfs_gateway=gateway,
        countries=countries,
        check_timeout=timeout,
    )
    s.done()
    return out


def _networks(s: _Section, name: str) -> tuple[IPv4Network | IPv6Network, ...]:
    out = []
    for i, item in enumerate(s.strings(name, ())):
        try:
            out.append(ip_network(item, strict=False))
        except ValueError as exc:
            raise s.error(f"{name}[{i}]", str(exc)) from None
    return tuple(out)


def _images(s: _Section, fetch: FetchSettings) -> ImageSettings:
    """``[images]``; proxy, User-Agent, connect timeout and the test-only networks come from
    ``[fetch]`` unless given here (``proxy = "none"`` fetches images directly)."""
    d = ImageSettings()
    proxy = s.get("proxy", str, None)
    out = ImageSettings(
        fetch=s.get("fetch", bool, d.fetch),
        budget=s.convert("budget", (str, int), parse_size, d.budget),
        max_dimension=s.get("max_dimension", int, d.max_dimension),
        proxy=fetch.proxy if proxy is None else None if proxy == "none" else s.convert("proxy", str, _proxy),
        user_agent=s.get("user_agent", str, fetch.user_agent),
        connect_timeout=fetch.connect_timeout,
        unsafe_allow_networks_for_tests=(
            _networks(s, "unsafe_allow_networks_for_tests") if s.has("unsafe_allow_networks_for_tests")
            else fetch.unsafe_allow_networks_for_tests),
        timeout=float(s.get("timeout", float, d.timeout)),
        deadline=float(s.get("deadline", float, d.deadline)),
        max_redirects=s.get("max_redirects", int, fetch.max_redirects),
    )
    for key, value in (("timeout", out.timeout), ("deadline", out.deadline)):
        if value <= 0:
            raise s.error(key, "must be positive")
    if out.max_redirects < 0:
        raise s.error("max_redirects", "must not be negative")
    s.done()
    return out


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _proxy_header(value: str) -> str:
    if value.lower() not in ("x-forwarded-for", "forwarded"):
        raise ValueError('must be "X-Forwarded-For" or "Forwarded"')
    return value.lower()


def _web(ld: _Loader, s: _Section) -> WebSettings:
    d = WebSettings()
    maildir = s.get("unsubscribe_maildir", str, None)
    out = WebSettings(
        host=s.get("host", str, d.host),
        port=s.get("port", int, d.port),
        rate_limit=s.get("rate_limit", int, d.rate_limit),
        confirm_ttl=s.convert("confirm_ttl", (str, int, float), parse_duration, d.confirm_ttl),
        trusted_proxies=_networks(s, "trusted_proxies"),
        confirm_every=s.convert("confirm_every", (str, int, float), parse_duration,
                                d.confirm_every),
        confirm_max=s.convert("confirm_max", int, _at_least_one, d.confirm_max),
        confirm_domain_per_hour=s.convert("confirm_domain_per_hour", int, _at_least_one,
                                          d.confirm_domain_per_hour),
        proxy_header=s.convert("proxy_header", str, _proxy_header, d.proxy_header),
        unsubscribe_maildir=ld.resolve(maildir) if maildir else None,
        mirrors=_page_mirrors(s),
    )
    s.done()
    return out


def _inbound(ld: _Loader, s: _Section) -> InboundSettings:
    d = InboundSettings()
    maildir = s.get("maildir", str, None)

    def plain(value: str) -> str:
        value = _address(value)
        if "+" in value.partition("@")[0] or "<" in value or " " in value:
            raise ValueError(f"{value!r}: give the bare address; we add the +tag ourselves")
        return value.lower()

    def positive(value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0")
        return float(value)

    mailboxes = []
    for i, value in enumerate(s.strings("mailboxes", [])):
        try:
            mailboxes.append(plain(value))
        except ValueError as exc:
            raise s.error(f"mailboxes[{i}]", str(exc)) from None

    out = InboundSettings(
        maildir=ld.resolve(maildir) if maildir else None,
        address=s.convert("address", str, plain, None),
        mailboxes=tuple(mailboxes),
        soft_bounce_threshold=s.convert("soft_bounce_threshold", (int, float), positive,
                                        d.soft_bounce_threshold),
        soft_bounce_half_life=s.convert("soft_bounce_half_life", (str, int, float),
                                        parse_duration, d.soft_bounce_half_life),
        replies_per_day=s.convert("replies_per_day", int, _at_least_one, d.replies_per_day),
        domain_replies_per_day=s.convert("domain_replies_per_day", int, _at_least_one,
                                         d.domain_replies_per_day),
    )
    s.done()
    return out


def _page_mirrors(s: _Section) -> tuple[str, ...]:
    urls = s.strings("mirrors", [])
    for i, url in enumerate(urls):
        try:
            _url(url)
        except ValueError as exc:
            raise s.error(f"mirrors[{i}]", str(exc)) from None
    return tuple(u.rstrip("/") for u in urls)


def _admin(s: _Section) -> AdminSettings:
    d = AdminSettings()
    dur = (str, int, float)
    out = AdminSettings(
        host=s.get("host", str, d.host),
        port=s.get("port", int, d.port),
        session_idle=s.convert("session_idle", dur, parse_duration, d.session_idle),
        session_max=s.convert("session_max", dur, parse_duration, d.session_max),
        require_totp=s.get("require_totp", bool, d.require_totp),
        four_eyes=s.get("four_eyes", bool, d.four_eyes),
        login_window=s.convert("login_window", dur, parse_duration, d.login_window),
        account_attempts=s.convert("account_attempts", int, _at_least_one, d.account_attempts),
        client_attempts=s.convert("client_attempts", int, _at_least_one, d.client_attempts),
        trusted_proxies=tuple(str(n) for n in _networks(s, "trusted_proxies"))
        if s.has("trusted_proxies") else d.trusted_proxies,
    )
    for key in ("session_idle", "session_max", "login_window"):
        if getattr(out, key) <= timedelta(0):
            raise s.error(key, "must be positive")
    s.done()
    return out


_DNS_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"


def _dkim(ld: _Loader, s: _Section) -> DKIMSettings | None:
    if not s._data:
        return None
    domain = s.get("domain", str)
    if not re.fullmatch(rf"{_DNS_LABEL}(\.{_DNS_LABEL})+", domain):
        raise s.error("domain", f"{domain!r} is not a domain name")
    selector = s.get("selector", str)
    if not re.fullmatch(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*", selector):
        raise s.error("selector", f"{selector!r} is not a DNS label")
    raw = s.get("key_file", (str, list))
    files = s.strings("key_file") if isinstance(raw, list) else (raw,)
    if not 1 <= len(files) <= 2:
        raise s.error("key_file", "must name one or two key files (RSA-2048 and/or Ed25519)")
    workers = s.get("workers", int, None)
    if workers is not None and workers < 0:
        raise s.error("workers", "must be 0 (sign in the sending process) or more")
    out = DKIMSettings(domain=domain.lower(), selector=selector,
                       key_files=tuple(ld.resolve(f) for f in files), workers=workers)
    s.done()
    return out


def _archive_remote(value: str) -> str:
    if not value.strip() or any(c in value for c in "\r\n\0"):
        raise ValueError("must be an rclone remote path such as 'r2:bucket/news' or a folder")
    if value.startswith("-"):
        raise ValueError(f"{value!r} would be read by rclone as an option")
    return value


def _archive(ld: _Loader, s: _Section, mirrors: MirrorSettings) -> ArchiveSettings:
    d = ArchiveSettings()
    targets: list[ArchiveTarget] = []
    for t in s.tables("targets"):
        remote = t.convert("remote", str, _archive_remote)
        if ":" not in remote.split("/", 1)[0]:
            remote = str(ld.resolve(remote))  # a local folder, relative to the config file
        url = t.convert("url", str, _url, None)
        if url is not None:
            for j, earlier in enumerate(targets):
                if earlier.url and same_place(url, earlier.url):
                    raise t.error("url", f"duplicate of archive.targets[{j}] ({earlier.url})")
            for site in mirrors.sites:
                if same_place(url, site.url):
                    raise t.error("url", f"is also a mirror ({site.url}); an archive host serves "
                                         "the archive, not the blog's pages")
            if is_origin_host((urlsplit(url).hostname or "").lower(), mirrors.origins):
                raise t.error("url", "is on an origin's host: the censor blocks it already")
        targets.append(ArchiveTarget(remote=remote, url=url))
        t.done()
    rclone_config = s.get("rclone_config", str, None)
    timeout = float(s.get("timeout", float, d.timeout))
    if timeout <= 0:
        raise s.error("timeout", "must be positive")
    out = ArchiveSettings(
        folder=ld.resolve(s.get("folder", str, str(d.folder))),
        targets=tuple(targets),
        rclone_config=ld.resolve(rclone_config) if rclone_config else None,
        rclone=s.get("rclone", str, d.rclone),
        subscribe_mailto=s.convert("subscribe_mailto", str, _address, None),
        timeout=timeout,
    )
    s.done()
    return out


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:9464``, ``[::1]:9464`` or ``:9464`` (loopback) as (host, port); port 0 picks one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    if any(c in host for c in " \t\r\n/"):
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def _metrics(s: _Section) -> MetricsSettings:
    out = MetricsSettings(listen=s.convert("listen", str, parse_listen, None))
    s.done()
    return out


def _with_archive_sites(mirrors: MirrorSettings, archive: ArchiveSettings) -> MirrorSettings:
    """The archive hosts join the mirror registry as kind ``archive``: checked, OONI-imported
    and listed like mirrors, but never handed out in a mirror slot."""
    extra = tuple(MirrorSite(url=url, status="active", kind="archive", note="[[archive.targets]]")
                  for url in archive.hosts)
    return dataclasses.replace(mirrors, sites=mirrors.sites + extra) if extra else mirrors


def _webhook(ld: _Loader, s: _Section) -> WebhookSettings:
    url = s.convert("url", str, _url)
    events = s.strings("events")
    if not events:
        raise s.error("events", f"must name at least one of {', '.join(WEBHOOK_EVENTS)}")
    for i, event in enumerate(events):
        if event not in WEBHOOK_EVENTS:
            raise s.error(f"events[{i}]",
                          f"unknown event {event!r}; choose from {', '.join(WEBHOOK_EVENTS)}")
    env_name = s.get("secret_env", str)
    secret = ld.secret(s, "secret_env")
    if not secret:
        raise s.error("secret_env", f"environment variable {env_name} is not set (or empty)")
    out = WebhookSettings(url=url, events=tuple(dict.fromkeys(events)), secret=secret)
    s.done()
    return out


# --------------------------------------------------------------------------- entry point


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate ``path``. Raise ``ConfigError`` naming file, key and line."""
    path = Path(path).resolve()
    environ = {} if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config: {exc}", path=path) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(f"not valid TOML: {exc}", path=path, line=int(m.group(1)) if m else None) from None
    ld = _Loader(path, text, environ)
    root = _Section(ld, data, "")
    cfg = Config(
        path=path,
        newsletter=_newsletter(ld, root.table("newsletter")),
        storage=_storage(ld, root.table("storage")),
        feeds=tuple(_feed(ld, f) for f in root.tables("feeds")),
        schedule=_schedule(root.table("schedule")),
        delivery=_delivery(ld, root.table("delivery")),
        mirrors=_with_archive_sites(mirrors := _mirrors(ld, root.table("mirrors")),
                                    archive := _archive(ld, root.table("archive"), mirrors)),
        fetch=(fetch := _fetch(root.table("fetch"))),
        images=_images(root.table("images"), fetch),
        web=_web(ld, root.table("web")),
        dkim=_dkim(ld, root.table("dkim")),
        inbound=_inbound(ld, root.table("inbound")),
        archive=archive,
        metrics=_metrics(root.table("metrics")),
        webhooks=tuple(_webhook(ld, w) for w in root.tables("webhooks")),
        admin=_admin(root.table("admin")),
    )
    root.done()
    return cfg


def replace(cfg: Config, **changes: Any) -> Config:
    """Return a copy with some sections swapped (tests and hot reload use this)."""
    return dataclasses.replace(cfg, **changes)
