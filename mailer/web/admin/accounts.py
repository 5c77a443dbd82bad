"""The admin's accounts, sessions, login limits and audit log, in the one database.

* Passwords: argon2id (argon2-cffi's defaults, RFC 9106's second recommended set). A name that
  does not exist is checked against a dummy hash, so the answer takes as long as a wrong
  password and says the same thing.
* Second factor: TOTP (RFC 6238, pyotp), 30 s steps, one step of drift either way, each step
  accepted once (a code seen over a shoulder cannot be replayed). The secret is sealed with
  AES-GCM under a key derived from the key file, so a copy of the database alone cannot mint
  codes.
* Sessions: a random cookie value; the database keeps only its SHA-256, with the CSRF token
  and the last time it was used. Idle or too old is over; "log out everywhere" deletes all of
  an account's rows.
* Login limits: failures are counted per account name (hashed, existing or not) and per client
  address within a window; past either limit every attempt is refused without checking the
  password, with the same words for a name that exists and one that does not.

Time is the injected clock; nothing here logs a password, a code or a cookie.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
import segno
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, RowMapping, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from mailer.clock import as_utc
from mailer.errors import InputError
from mailer.schema import admin_audit, admin_login_failures, admin_sessions, admin_users

__all__ = [
    "ROLES",
    "AccountStore",
    "AuditEntry",
    "LoginLimits",
    "LoginResult",
    "Role",
    "Session",
    "User",
    "generate_password",
    "qr_svg",
    "totp_uri",
]

MIN_PASSWORD = 12
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "._-")


class Role(enum.StrEnum):
    """An editor runs editions; an operator also runs the mirrors."""

    EDITOR = "editor"
    OPERATOR = "operator"


ROLES = tuple(r.value for r in Role)


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: Role
    has_totp: bool
    created_at: datetime


@dataclass(frozen=True)
class Session:
    """A live session: who, its CSRF token, and whether the second factor is still owed."""

    user: User
    csrf: str
    created_at: datetime


class LoginResult(enum.Enum):
    OK = "ok"
    REFUSED = "refused"  # wrong name, password or code: one answer for all three
    LIMITED = "limited"  # too many failures for this name or this client


@dataclass(frozen=True)
class LoginLimits:
    window: timedelta
    per_account: int
    per_client: int


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: str | None


def generate_password() -> str:
    """20 characters from an alphabet without look-alikes (~115 bits): printed once."""
    alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(20))


def totp_uri(secret: str, name: str, issuer: str) -> str:
    """The ``otpauth://`` URI an authenticator app reads from the QR code."""
    return pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=issuer)


def qr_svg(data: str) -> str:
    """The QR code as an inline ``<svg>`` element (no image file, nothing fetched)."""
    return str(segno.make(data, error="m").svg_inline(scale=5, dark="#000", light="#fff"))


def check_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise InputError(f"account name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InputError(f"the password must have at least {MIN_PASSWORD} characters")
    return password


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class AccountStore:
    """Accounts, sessions, login failures and the audit log. I/O: the engine; time: ``clock``;
    ``seal_key``: 32 bytes that seal TOTP secrets (derived from the key file)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime], seal_key: bytes,
                 *, idle: timedelta, max_age: timedelta, limits: LoginLimits) -> None:
        self.engine = engine
        self.clock = clock
        self._aead = AESGCM(seal_key)
        self.idle = idle
        self.max_age = max_age
        self.limits = limits
        self._hasher = PasswordHasher()
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    # ------------------------------------------------------------------ accounts

    def add(self, name: str, role: str, password: str) -> User:
        check_name(name)
        check_password(password)
        if role not in ROLES:
            raise InputError(f"role {role!r}: choose {' or '.join(ROLES)}")
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(admin_users).values(
                    name=name, role=role, password_hash=self._hasher.hash(password),
                    created_at=now, password_changed_at=now))
        except IntegrityError:
            raise InputError(f"account {name!r} exists already") from None
        user = self.get(name)
        assert user is not None
        return user

    def get(self, name: str) -> User | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(admin_users).where(admin_users.c.name == name)).mappings().first()
        return _user(row) if row else None

    def list_users(self) -> list[User]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(admin_users).order_by(admin_users.c.name)).mappings().all()
        return [_user(r) for r in rows]

    def remove(self, name: str) -> None:
        user = self._must(name)
        with self.engine.begin() as conn:
            conn.execute(delete(admin_sessions).where(admin_sessions.c.user_id == user.id))
            conn.execute(delete(admin_users).where(admin_users.c.id == user.id))

    def set_password(self, name: str, password: str) -> None:
        """A new password ends every session of the account."""
        check_password(password)
        user = self._must(name)
        with self.engine.begin() as conn:
            conn.execute(update(admin_users).where(admin_users.c.id == user.id).values(
                password_hash=self._hasher.hash(password), password_changed_at=self.clock()))
            conn.execute(delete(admin_sessions).where(admin_sessions.c.user_id == user.id))

    def _must(self, name: str) -> User:
        user = self.get(name)
        if user is None:
            raise InputError(f"no account named {name!r}")
        return user

    # ------------------------------------------------------------------ TOTP

    def _seal(self, secret: str) -> str:
        nonce = secrets.token_bytes(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, secret.encode(), b"totp")).decode()

    def _open(self, sealed: str) -> str:
        raw = base64.b64decode(sealed)
        return self._aead.decrypt(raw[:12], raw[12:], b"totp").decode()

    def totp_pending(self, user: User) -> str:
        """The secret being enrolled (made on first ask, kept until confirmed)."""
        with self.engine.begin() as conn:
            sealed = conn.execute(select(admin_users.c.totp_pending)
                                  .where(admin_users.c.id == user.id)).scalar()
            if sealed:
                return self._open(str(sealed))
            secret = pyotp.random_base32()
            conn.execute(update(admin_users).where(admin_users.c.id == user.id)
                         .values(totp_pending=self._seal(secret)))
            return secret

    def totp_enable(self, user: User, code: str) -> bool:
        """Turn the second factor on if ``code`` matches the pending secret."""
        secret = self.totp_pending(user)
        step = _matching_step(secret, code, self.clock())
        if step is None:
            return False
        with self.engine.begin() as conn:
            conn.execute(update(admin_users).where(admin_users.c.id == user.id).values(
                totp_sealed=self._seal(secret), totp_pending=None, totp_last_step=step))
        return True

    def totp_disable(self, name: str) -> None:
        """For ``admin users totp-reset`` (a lost phone); the account enrols again."""
        user = self._must(name)
        with self.engine.begin() as conn:
            conn.execute(update(admin_users).where(admin_users.c.id == user.id).values(
                totp_sealed=None, totp_pending=None, totp_last_step=None))

    # ------------------------------------------------------------------ login

    def login(self, name: str, password: str, code: str, client: str) -> tuple[LoginResult, str | None]:
        """Check a login; on success, a new session's cookie value.

        The limits are checked first and count the name whether or not it exists, so neither
        the answer nor its timing tells an attacker which names are real.
        """
        now = self.clock()
        keys = (f"account:{_digest(name.casefold())}", f"client:{client[:80]}")
        if self._limited(keys, now):
            return LoginResult.LIMITED, None
        with self.engine.connect() as conn:
            row = conn.execute(select(admin_users).where(admin_users.c.name == name)).mappings().first()
        ok = self._verify(row["password_hash"] if row else self._dummy, password) and row is not None
        if ok and row is not None and row["totp_sealed"]:
            step = _matching_step(self._open(str(row["totp_sealed"])), code, now)
            ok = step is not None and step > int(row["totp_last_step"] or -1)
            if ok:
                with self.engine.begin() as conn:
                    conn.execute(update(admin_users).where(admin_users.c.id == row["id"])
                                 .values(totp_last_step=step))
        if not ok or row is None:
            self._fail(keys, now)
            return LoginResult.REFUSED, None
        if self._hasher.check_needs_rehash(str(row["password_hash"])):
            with self.engine.begin() as conn:
                conn.execute(update(admin_users).where(admin_users.c.id == row["id"])
                             .values(password_hash=self._hasher.hash(password)))
        with self.engine.begin() as conn:
            conn.execute(delete(admin_login_failures).where(admin_login_failures.c.key == keys[0]))
        return LoginResult.OK, self.open_session(int(row["id"]))

    def _verify(self, hashed: str, password: str) -> bool:
        try:
            return self._hasher.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def _limited(self, keys: Sequence[str], now: datetime) -> bool:
        caps = (self.limits.per_account, self.limits.per_client)
        with self.engine.connect() as conn:
            rows = {r.key: r for r in conn.execute(
                select(admin_login_failures).where(admin_login_failures.c.key.in_(keys)))}
        for key, cap in zip(keys, caps, strict=True):
            r = rows.get(key)
            if r is not None and now - _utc(r.window_start) < self.limits.window and r.failures >= cap:
                return True
        return False

    def _fail(self, keys: Sequence[str], now: datetime) -> None:
        for key in keys:
            for _attempt in range(3):
                try:
                    with self.engine.begin() as conn:
                        row = conn.execute(select(admin_login_failures)
                                           .where(admin_login_failures.c.key == key)).first()
                        if row is None:
                            conn.execute(insert(admin_login_failures).values(
                                key=key, window_start=now, failures=1))
                        elif now - _utc(row.window_start) >= self.limits.window:
                            conn.execute(update(admin_login_failures)
                                         .where(admin_login_failures.c.key == key)
                                         .values(window_start=now, failures=1))
                        else:
                            conn.execute(update(admin_login_failures)
                                         .where(admin_login_failures.c.key == key)
                                         .values(failures=admin_login_failures.c.failures + 1))
                    break
                except IntegrityError:  # two failures created the row at once: count again
                    continue

    # ------------------------------------------------------------------ sessions

    def open_session(self, user_id: int) -> str:
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(insert(admin_sessions).values(
                id=_digest(token), user_id=user_id, csrf=secrets.token_urlsafe(32),
                created_at=now, last_seen_at=now))
        return token

    def session(self, token: str) -> Session | None:
        """The live session for a cookie value (its use noted), or None if it is over."""
        if not token:
            return None
        sid = _digest(token)
        now = self.clock()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(admin_sessions.c.csrf, admin_sessions.c.last_seen_at,
                       admin_sessions.c.created_at.label("session_created"), admin_users)
                .join(admin_users, admin_users.c.id == admin_sessions.c.user_id)
                .where(admin_sessions.c.id == sid)).mappings().first()
            if row is None:
                return None
            if (now - _utc(row["last_seen_at"]) > self.idle
                    or now - _utc(row["session_created"]) > self.max_age):
                conn.execute(delete(admin_sessions).where(admin_sessions.c.id == sid))
                return None
            conn.execute(update(admin_sessions).where(admin_sessions.c.id == sid)
                         .values(last_seen_at=now))
        return Session(user=_user(row), csrf=str(row["csrf"]),
                       created_at=_utc(row["session_created"]))

    def end_session(self, token: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(admin_sessions).where(admin_sessions.c.id == _digest(token)))

    def end_all_sessions(self, user: User) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(delete(admin_sessions)
                                    .where(admin_sessions.c.user_id == user.id)).rowcount)

    # ------------------------------------------------------------------ audit

    def audit(self, actor: str, action: str, target: str | None = None,
              detail: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(admin_audit).values(at=self.clock(), actor=actor, action=action,
                                                    target=target, detail=detail))

    def audit_log(self, *, limit: int = 200, target: str | None = None) -> list[AuditEntry]:
        q = select(admin_audit).order_by(admin_audit.c.id.desc()).limit(limit)
        if target is not None:
            q = q.where(admin_audit.c.target == target)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [AuditEntry(_utc(r["at"]), r["actor"], r["action"], r["target"], r["detail"])
                for r in rows]

    def authors(self, target: str, actions: Sequence[str]) -> set[str]:
        """Who did any of ``actions`` to ``target`` (the four-eyes rule asks this)."""
        with self.engine.connect() as conn:
            return {str(a) for a in conn.execute(
                select(func.distinct(admin_audit.c.actor)).where(
                    admin_audit.c.target == target, admin_audit.c.action.in_(actions))).scalars()}


def _matching_step(secret: str, code: str, now: datetime) -> int | None:
    """The 30 s step (now, one before or one after) whose code is ``code``, or None."""
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    step = int(now.timestamp()) // totp.interval
    for s in (step, step - 1, step + 1):
        if hmac.compare_digest(totp.generate_otp(s), code):
            return s
    return None


def _utc(value: datetime) -> datetime:
    out = as_utc(value)
    assert out is not None
    return out


def _user(r: RowMapping) -> User:
    return User(id=int(r["id"]), name=str(r["name"]), role=Role(r["role"]),
                has_totp=bool(r["totp_sealed"]), created_at=_utc(r["created_at"]))
