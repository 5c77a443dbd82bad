"""The subscribe use case, whichever door a request comes through: the web form today, a mail
to the list's address tomorrow (issue 17). One function takes a request, one decides it, and
the limits on what a request may cause live here, in the database, so they hold across
processes.

Anyone can type anyone's address, so a request proves nothing; only a confirmation mail opened
by the mailbox's owner does. Hence:

- ``request`` does the same work for every address, on the list or not, pending or active:
  validate, seal, one insert. It answers nothing about the list, and its timing tells nothing
  either (it was 6.9 ms for an active address and 12.2 ms for a new one when the form decided
  at once).
- ``intake`` (the worker in ``serve``) decides, with ``choose``: a new, pending or suppressed
  address gets a confirmation of the subscription; an active reader who asked for another
  language gets a confirmation of the change, and nothing changes until they open it; an
  active reader asking for what they have gets nothing.
- A confirmation mail is sent at most once per address per ``confirm_every``, at most
  ``confirm_max`` in all, and at most ``domain_per_hour`` to one recipient domain: past a limit
  the request changes nothing at all, so a repeat cannot bomb a stranger's mailbox, or a
  company's, nor push a reader's pending row or its link around.
- Unconfirmed rows are erased after ``pending_ttl`` (``expire``, daily in the daemon).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, select, update
from sqlalchemy.exc import IntegrityError

from subscribers.confirmations import ConfirmationQueue
from subscribers.errors import InputError
from subscribers.lifecycle import SubscriberState
from subscribers.normalise import InvalidAddress, validate
from subscribers.schema import signup_domains, signup_limits, signup_requests
from subscribers.settings import SignupSettings
from subscribers.store import SubscriberStore, new_id

__all__ = ["Action", "SignupDesk", "choose"]

log = logging.getLogger("newsletter.subscribers")

_FIELD = b"signup:"  # the AEAD field of a sealed request: never a subscriber's ciphertext
_BATCH = 50


class Action(enum.StrEnum):
    CONFIRM_SUBSCRIPTION = "subscription"
    CONFIRM_LANGUAGE = "language"
    NOTHING = "nothing"


def choose(current: SubscriberState | None, current_language: str | None,
           language: str) -> Action:
    """What a request for ``language`` calls for, given the address's row (None: not listed).

    Pure. Only a confirmation mail ever changes an active reader: a request alone must not,
    or anyone could change (or learn, by its effect) a reader's settings.
    """
    if current is SubscriberState.ACTIVE:
        return Action.NOTHING if language == current_language else Action.CONFIRM_LANGUAGE
    return Action.CONFIRM_SUBSCRIPTION


def _hour(now: datetime) -> datetime:
    return now.replace(minute=0, second=0, microsecond=0)


class SignupDesk:
    """Takes requests and decides them; the store, queue, limits and clock are passed in."""

    def __init__(self, store: SubscriberStore, queue: ConfirmationQueue,
                 settings: SignupSettings, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.queue = queue
        self.settings = settings
        self.clock = clock

    # ------------------------------------------------------------------ the door

    def request(self, address: str, language: str | None = None) -> None:
        """Record a request to subscribe ``address`` (or to change its language). The same
        work whatever the list holds; ``InputError`` only for what the visitor typed."""
        try:
            delivery = validate(address)
        except InvalidAddress as exc:
            raise InputError(str(exc)) from None
        lang = self.store.check_language(language)
        codec = self.store.codec
        rid = new_id()
        with self.store.engine.begin() as conn:
            conn.execute(signup_requests.insert().values(
                id=rid, email_ct=codec.seal(rid, delivery.encode(), _FIELD),
                key_id=codec.current_key_id, language=lang, requested_at=self.clock()))

    # ------------------------------------------------------------------ the decision

    def intake(self, limit: int = _BATCH) -> int:
        """Decide up to ``limit`` waiting requests, oldest first; how many were decided.

        Each request is removed in the transaction that acts on it, guarded by its id: of two
        ``serve`` processes, one decides it, and a crash leaves it for the next round."""
        engine = self.store.engine
        with engine.connect() as conn:
            waiting = conn.execute(select(signup_requests)
                                   .order_by(signup_requests.c.requested_at)
                                   .limit(limit)).all()
        for row in waiting:
            with engine.begin() as conn:
                if not conn.execute(delete(signup_requests)
                                    .where(signup_requests.c.id == row.id)).rowcount:
                    continue  # another process took it
                try:
                    address = self.store.codec.open(row.id, row.key_id, row.email_ct,
                                                    _FIELD).decode("utf-8")
                except Exception:  # sealed under a key retired since: the visitor asks again
                    log.warning("a subscribe request could not be opened; dropped")
                    continue
                try:
                    self._decide(conn, address, row.language)
                except InputError:  # a language the config no longer offers: nothing to do
                    log.warning("a subscribe request named a language no longer offered; "
                                "dropped")
        return len(waiting)

    def _decide(self, conn: Connection, address: str, language: str) -> Action:
        language = self.store.check_language(language)  # before anything is counted
        index = self.store.index_of(address)
        row = self.store.by_index(conn, index)
        action = choose(SubscriberState(row.state) if row is not None else None,
                        row.language if row is not None else None, language)
        if action is Action.NOTHING:
            return action
        domain = address.rpartition("@")[2].lower()
        if not self._allow(conn, index, self.store.codec.blind_index("@" + domain)):
            log.info("a subscribe request was over its limit; nothing changed")
            return Action.NOTHING
        if action is Action.CONFIRM_LANGUAGE:
            assert row is not None
            self.queue.request(int(row.id), language, conn=conn)
            log.info("subscriber %d asked for another language; confirmation queued", row.id)
        else:
            sid, _ = self.store.subscribe(address, language, conn=conn)
            self.queue.request(sid, conn=conn)
        return action

    def _allow(self, conn: Connection, index: bytes, domain_index: bytes) -> bool:
        """Count one confirmation mail against the address's and the domain's limits, or
        refuse and count nothing. Each counter is moved by one guarded statement, so two
        processes that decide at once cannot both pass a limit."""
        s = self.settings
        now = self.clock()
        with conn.begin_nested() as savepoint:
            lim = signup_limits.c
            ok = conn.execute(update(signup_limits).where(and_(
                lim.email_index == index, lim.last_sent_at <= now - s.confirm_every,
                lim.sent < s.confirm_max)).values(sent=lim.sent + 1, last_sent_at=now)).rowcount
            if not ok:
                ok = self._first(conn, signup_limits.insert().values(
                    email_index=index, sent=1, last_sent_at=now),
                    select(lim.sent).where(lim.email_index == index))
            if ok:
                dom = signup_domains.c
                hour = _hour(now)
                ok = conn.execute(update(signup_domains).where(and_(
                    dom.domain_index == domain_index, dom.hour == hour,
                    dom.sent < s.domain_per_hour)).values(sent=dom.sent + 1)).rowcount
                if not ok and s.domain_per_hour > 0:
                    ok = self._first(conn, signup_domains.insert().values(
                        domain_index=domain_index, hour=hour, sent=1),
                        select(dom.sent).where(and_(dom.domain_index == domain_index,
                                                    dom.hour == hour)))
            if not ok:
                savepoint.rollback()
        return bool(ok)

    @staticmethod
    def _first(conn: Connection, insert: Any, existing: Any) -> bool:
        """Insert the first count of a counter that does not exist yet; False if it exists
        (it is at its limit), or if another process inserted it a moment ago."""
        if conn.execute(existing).first() is not None:
            return False
        try:
            with conn.begin_nested():
                conn.execute(insert)
        except IntegrityError:
            return False
        return True

    # ------------------------------------------------------------------ retention

    def expire(self) -> int:
        """Erase pending rows older than ``pending_ttl`` and the counters nobody needs any
        more; the number of rows erased. The daemon runs it daily."""
        s = self.settings
        erased = self.store.expire_pending(s.pending_ttl)
        now = self.clock()
        with self.store.engine.begin() as conn:
            conn.execute(delete(signup_limits).where(
                signup_limits.c.last_sent_at < now - max(s.pending_ttl, s.confirm_every)))
            conn.execute(delete(signup_domains).where(
                signup_domains.c.hour < _hour(now) - timedelta(hours=1)))
            # A request nobody decided for that long (no ``serve`` ran): too old to act on.
            conn.execute(delete(signup_requests).where(
                signup_requests.c.requested_at < now - timedelta(days=1)))
        return erased
