"""The one SQLAlchemy MetaData, and the subscriber tables.

MetaData lives here, at the bottom of the import graph, so that ``mailer.schema`` can add its
tables to it while ``subscribers`` never imports ``mailer``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = ["confirmations", "forgotten", "import_progress", "key_rotation", "list_meta", "metadata",
           "signup_domains", "signup_limits", "signup_requests", "subscribers"]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# No column holds a plaintext address. ``id`` is chosen by us before the insert (random 63-bit)
# so the AEAD ciphertext can be bound to it as associated data in the same statement.
subscribers = Table(
    "subscribers",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("email_index", LargeBinary(32), nullable=False, unique=True),  # blind index (keyed hash)
    Column("email_ct", LargeBinary, nullable=False),  # nonce || AES-256-GCM(address), AD = id
    Column("key_id", String(32), nullable=False, index=True),
    Column("extra_ct", LargeBinary, nullable=True),  # other personal fields, sealed the same way
    Column("language", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("domain_class", String(32), nullable=True),  # coarse provider bucket for rate limits
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("state_changed_at", DateTime(timezone=True), nullable=False),
    Column("confirmed_at", DateTime(timezone=True), nullable=True),
    Column("unsubscribed_at", DateTime(timezone=True), nullable=True),
    Column("bounced_at", DateTime(timezone=True), nullable=True),
    Column("complained_at", DateTime(timezone=True), nullable=True),
    # Counting by state. Not (state, id): ids are random, and that index put every imported row
    # at a random place in one more B-tree. Streaming walks the primary key or rowid instead
    # (see ``SubscriberStore.stream_active``). Migration 0003: keep in step.
    Index("ix_subscribers_state", "state"),
)

# Resumable re-encryption: one row per rotation, with the highest subscriber id done so far.
key_rotation = Table(
    "key_rotation",
    metadata,
    Column("new_key_id", String(32), primary_key=True),
    Column("last_id", BigInteger, nullable=False, default=-(2**63)),
    Column("done", Integer, nullable=False, default=0),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
)

# Resumable imports: the input is identified by a hash of its bytes, never by its content.
import_progress = Table(
    "import_progress",
    metadata,
    Column("source_hash", String(64), primary_key=True),
    Column("line", BigInteger, nullable=False),
    Column("report", Text, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Facts about the list as a whole, by name. ``index_rules``: the folding rules its blind indexes
# were made under (``ListSettings.index_rules``), so a changed config cannot silently split it.
list_meta = Table(
    "list_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Forgotten subscribers: the row, and the sealed address with it, is gone; only the blind index
# (a keyed hash) stays, so the address remains suppressed against imports. The subscribe form
# clears it: whoever asks again gets a new row through double opt-in.
forgotten = Table(
    "forgotten",
    metadata,
    Column("email_index", LargeBinary(32), primary_key=True),
    Column("state", String(16), nullable=False),  # the suppression it stands for
    Column("forgotten_at", DateTime(timezone=True), nullable=False),
)

# Confirmation mails still to send: one row per pending subscriber who asked through the form,
# so that a relay that defers them, or a restart of ``serve``, loses none (confirmations.py).
confirmations = Table(
    "confirmations",
    metadata,
    Column("subscriber_id", BigInteger, primary_key=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, index=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    # Set for an active reader's language change (the language asked for); NULL for a
    # subscription (migration 0009).
    Column("language", String(16), nullable=True),
)

# Requests from the subscribe form not yet decided (subscribers/signup.py). The form only adds a
# row, the same work whatever the address, so its timing says nothing about the list; the worker
# in ``serve`` decides. The address is sealed like a subscriber's, bound to the row's random id.
signup_requests = Table(
    "signup_requests",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("email_ct", LargeBinary, nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("language", String(16), nullable=True),
    Column("requested_at", DateTime(timezone=True), nullable=False),
)

# Confirmation mails sent per address, by blind index, so that the limits hold across processes
# and restarts: at most one per window, a few in total (subscribers/signup.py).
signup_limits = Table(
    "signup_limits",
    metadata,
    Column("email_index", LargeBinary(32), primary_key=True),
    Column("sent", Integer, nullable=False),
    Column("last_sent_at", DateTime(timezone=True), nullable=False),
)

# Confirmation mails sent per recipient domain (a keyed hash of it) per hour.
signup_domains = Table(
    "signup_domains",
    metadata,
    Column("domain_index", LargeBinary(32), primary_key=True),
    Column("hour", DateTime(timezone=True), primary_key=True),
    Column("sent", Integer, nullable=False),
)
