"""The pipeline's tables, added to the one MetaData from ``subscribers.schema``.

Every table and query here must work on SQLite (the embedded default) and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from subscribers.schema import metadata, subscribers

__all__ = [
    "admin_audit",
    "admin_login_failures",
    "admin_sessions",
    "admin_users",
    "archive_targets",
    "daemon_lock",
    "domain_sends",
    "edition_posts",
    "editions",
    "feeds",
    "inbound_replies",
    "inbound_seen",
    "metadata",
    "mirror_exposure",
    "mirror_state",
    "outbox",
    "posts",
    "provider_blocks",
    "soft_bounces",
    "subscribers",
    "webhook_deliveries",
]

# Feed validators (conditional GET) and health, one row per configured feed URL.
feeds = Table(
    "feeds",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("url", Text, nullable=False, unique=True),
    Column("name", Text, nullable=True),
    Column("etag", Text, nullable=True),
    Column("last_modified", Text, nullable=True),
    Column("status", String(16), nullable=False, default="new"),  # new | ok | failing
    Column("first_polled_at", DateTime(timezone=True), nullable=True),
    Column("last_polled_at", DateTime(timezone=True), nullable=True),
    Column("last_success_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", DateTime(timezone=True), nullable=True),
    Column("failing_since", DateTime(timezone=True), nullable=True),
)

# A post is stored once per (feed, guid). ``is_new`` is false for backlog recorded as seen.
posts = Table(
    "posts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("feed_id", Integer, ForeignKey("feeds.id"), nullable=False),
    Column("guid", Text, nullable=False),
    Column("link", Text, nullable=True),
    Column("title", Text, nullable=False),
    Column("content_html", Text, nullable=False),
    Column("language", String(16), nullable=False),
    Column("published", DateTime(timezone=True), nullable=True),
    Column("updated", DateTime(timezone=True), nullable=True),
    Column("content_hash", String(64), nullable=False),
    Column("images_json", Text, nullable=False, default="[]"),
    Column("is_new", Boolean, nullable=False, default=True),
    Column("revision", Integer, nullable=False, default=1),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("feed_id", "guid"),
    # The same post reached through two feeds (a label feed and the main one, or a feed whose
    # URL changed) is found by guid alone, so that it is sent once.
    Index("ix_posts_guid", "guid"),
)

# Editions: draft -> scheduled -> approved -> sending -> sent (cancelled / missed / held aside).
editions = Table(
    "editions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),  # digest | per-post
    Column("state", String(16), nullable=False, index=True),
    Column("notes_json", Text, nullable=False, default="{}"),  # intro note per language
    # The editors' subject line per language; none: derived (migration 0012).
    Column("subjects_json", Text, nullable=False, default="{}", server_default="{}"),
    Column("scheduled_at", DateTime(timezone=True), nullable=True),
    Column("approved_at", DateTime(timezone=True), nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("state_reason", Text, nullable=True),
    Column("total", Integer, nullable=True),  # recipients enqueued
    # Set by the one process that tells the editors it was sent: the daemon and several workers
    # can each see the edition finish, and the report must go out once (migration 0004).
    Column("sent_reported_at", DateTime(timezone=True), nullable=True),
)

edition_posts = Table(
    "edition_posts",
    metadata,
    Column("edition_id", Integer, ForeignKey("editions.id"), primary_key=True),
    Column("post_id", Integer, ForeignKey("posts.id"), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("excluded", Boolean, nullable=False, default=False),
)

# The outbox: one row per (edition, subscriber). Its state changes only when an SMTP reply
# (or a Maildir write) is known, never when a batch is fetched (listmonk #3022).
outbox = Table(
    "outbox",
    metadata,
    Column("edition_id", Integer, ForeignKey("editions.id"), primary_key=True),
    Column("subscriber_id", BigInteger, primary_key=True),
    Column("language", String(16), nullable=False),
    # A public provider's domain or one the config rate-limits, else "other" (delivery/domains.py)
    Column("domain", String(255), nullable=False),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    Column("relay", String(255), nullable=True),
    Column("last_code", Integer, nullable=True),
    Column("last_reply", Text, nullable=True),  # the relay's words, with any address scrubbed
    Column("created_at", DateTime(timezone=True), nullable=True),  # enqueue time: bounds retry age
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Index("ix_outbox_claim", "edition_id", "state", "next_attempt_at"),
    Index("ix_outbox_lease", "lease_owner"),
)

# Mirror health and exposure: counts only, never who received which mirror.
mirror_state = Table(
    "mirror_state",
    metadata,
    Column("url", Text, primary_key=True),
    Column("healthy", Boolean, nullable=False, default=True),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("last_check_at", DateTime(timezone=True), nullable=True),
    Column("last_ok_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("blocked_json", Text, nullable=False, default="{}"),  # {"CN": "2026-11-20T..."}
    Column("first_sent_at", DateTime(timezone=True), nullable=True),
    Column("last_sent_at", DateTime(timezone=True), nullable=True),
)

mirror_exposure = Table(
    "mirror_exposure",
    metadata,
    Column("edition_id", Integer, ForeignKey("editions.id"), primary_key=True),
    Column("mirror_url", Text, primary_key=True),
    Column("recipients", Integer, nullable=False, default=0),
    Column("first_sent_at", DateTime(timezone=True), nullable=False),
)

# Every process sending right now (a worker, the daemon, ``newsletter send``), renewed while it
# sends: the rate limits are shared among the live ones (``mailer.delivery.peers``).
senders = Table(
    "senders",
    metadata,
    Column("owner", String(128), primary_key=True),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

# Messages handed to the relay per capped destination and UTC hour ('h') or day ('d'), for the
# whole deployment: ``domain_rates`` per_hour / per_day caps (``mailer.delivery.budget``).
domain_sends = Table(
    "domain_sends",
    metadata,
    Column("domain", String(255), primary_key=True),
    Column("span", String(1), primary_key=True),
    Column("starts_at", DateTime(timezone=True), primary_key=True),
    Column("sent", Integer, nullable=False, default=0),
)

# A provider family that answered "blocklisted" (163's DT:RBL): nobody sends to it until
# ``until``; its rows wait, deferred to then.
provider_blocks = Table(
    "provider_blocks",
    metadata,
    Column("family", String(64), primary_key=True),
    Column("since", DateTime(timezone=True), nullable=False),
    Column("until", DateTime(timezone=True), nullable=False),
    Column("reason", String(500), nullable=False),
)

# One daemon per database: a row lease, renewed by heartbeat (PostgreSQL adds an advisory lock).
daemon_lock = Table(
    "daemon_lock",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# Mail that comes back (mailer/inbound, pipeline/inbound.py): keyed by ids and blind indexes,
# never an address. A message's digest marks it handled in the transaction of its effect, so
# a crash before the Maildir file is removed acts once.
inbound_seen = Table(
    "inbound_seen",
    metadata,
    Column("digest", LargeBinary(32), primary_key=True),
    Column("seen_at", DateTime(timezone=True), nullable=False),
)
# The decaying soft-bounce score per subscriber (mailer/inbound/score.py).
soft_bounces = Table(
    "soft_bounces",
    metadata,
    Column("subscriber_id", BigInteger, primary_key=True),
    Column("score", Float, nullable=False),
    Column("last_at", DateTime(timezone=True), nullable=False),
)
# Replies to readers per day, per address and per recipient domain (blind indexes of the
# address and of "@domain"); ``warned``: the one warning past the limit was sent.
inbound_replies = Table(
    "inbound_replies",
    metadata,
    Column("key_index", LargeBinary(32), primary_key=True),
    Column("day", DateTime(timezone=True), primary_key=True),
    Column("sent", Integer, nullable=False),
    Column("warned", Boolean, nullable=False, default=False),
)
# The web archive's publish targets ([[archive.targets]], by their rclone remote): what the last
# sync did, so a failed one is retried and reported on the next run (migration 0013).
archive_targets = Table(
    "archive_targets",
    metadata,
    Column("remote", Text, primary_key=True),
    Column("ok", Boolean, nullable=False, default=False),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("last_attempt_at", DateTime(timezone=True), nullable=True),
    Column("last_ok_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
)


# Webhook events still to POST (mailer/webhooks.py): one row per (receiver, event), retried with
# backoff and given up after a day (``gave_up_at`` kept for the report). Counts and names only:
# never an address. The receiver's secret stays in the config, never here.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("url", Text, nullable=False),
    Column("event", String(64), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, index=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("gave_up_at", DateTime(timezone=True), nullable=True),
)


# The editors' admin (mailer/web/admin, migration 0011). Passwords are argon2 hashes; a TOTP
# secret is sealed with a key derived from the key file; a session is stored as the SHA-256 of
# its cookie, so a copy of the database opens no session.
admin_users = Table(
    "admin_users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),  # editor | operator
    Column("password_hash", Text, nullable=False),
    Column("totp_sealed", Text, nullable=True),  # enabled second factor
    Column("totp_pending", Text, nullable=True),  # shown as a QR code, not yet confirmed
    Column("totp_last_step", BigInteger, nullable=True),  # a code is accepted once
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("password_changed_at", DateTime(timezone=True), nullable=False),
)

admin_sessions = Table(
    "admin_sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # sha256 hex of the cookie value
    Column("user_id", Integer, ForeignKey("admin_users.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("csrf", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
)

# Failed logins per key ("account:<sha256 of the name>" or "client:<address>") in a window.
admin_login_failures = Table(
    "admin_login_failures",
    metadata,
    Column("key", String(96), primary_key=True),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("failures", Integer, nullable=False),
)

# Who did what and when, for the audit page. Never a subscriber's address or a test address.
admin_audit = Table(
    "admin_audit",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("actor", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", String(255), nullable=True),  # "edition 7", a mirror's URL, a user
    Column("detail", Text, nullable=True),
)
