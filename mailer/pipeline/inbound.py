"""Mail that comes back, acted on: bounces, complaints and readers' commands.

``mailer.inbound.classify`` says what a message is (pure); this module does what that calls
for, through the doors that own each effect:

* subscriber state: ``SubscriberStore.apply(Event.BOUNCE | COMPLAINT | UNSUBSCRIBE)`` and
  ``confirm`` (the lifecycle: a complaint outranks everything);
* the outbox row of the returned message: ``Outbox.mark_returned`` (the edition report counts
  ``bounced`` and ``content_rejected`` per domain). Two doors lead to it, and one
  ``Inbound._record``: a reference that proves the message (VERP token, our Message-ID), or a
  bounce's failed recipient found by blind index, with their latest sent message: unproven,
  so it scores one soft bounce at most (``Inbound._by_recipient`` says why);
* subscribing and changing language by mail: ``SignupDesk.request``, the web form's use case,
  with its limits; the confirmation goes out through the same ``ConfirmationSender``;
* answers (help, mirrors, "reply to leave"): at most ``[inbound] replies_per_day`` per address
  and ``domain_replies_per_day`` per domain, then one warning, then silence; counted in the
  database by blind index, so the limits hold across processes. Every answer carries
  ``Auto-Submitted: auto-replied`` and goes out with a null envelope sender (RFC 3834), so
  two robots cannot talk to each other for ever.

Nothing lost, nothing twice: a message's digest is recorded in the transaction of its
non-repeatable effects (a soft-bounce score, a reply's count); the Maildir file is removed only
afterwards. A crash in between re-reads the file, finds the digest, repeats only what is
idempotent, and removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from mailer.app import App
from mailer.delivery.classify import Classifier, scrub_reply
from mailer.errors import InputError
from mailer.inbound.addresses import InboundAddresses, Reference, tagged, verp_base
from mailer.inbound.classify import Kind, Verdict, classify
from mailer.inbound.maildir import Handled, InboundReport, process_maildir
from mailer.inbound.replies import (
    Answering,
    help_message,
    leave_message,
    limit_message,
    mirrors_message,
)
from mailer.inbound.score import add_soft_bounce, decayed
from mailer.models import EditionState, OutboxState
from mailer.schema import inbound_replies, inbound_seen, soft_bounces
from subscribers.lifecycle import SUPPRESSED, Event, SubscriberState
from subscribers.normalise import InvalidAddress, validate
from subscribers.tokens import BadToken

__all__ = ["Inbound", "accept", "inbound_addresses", "process_inbound", "spool"]

log = logging.getLogger("newsletter.inbound")

_SEEN_FOR = timedelta(days=30)
_OUTBOX_STATE = {Kind.HARD_BOUNCE: OutboxState.BOUNCED,
                 Kind.CONTENT_REJECTED: OutboxState.CONTENT_REJECTED,
                 Kind.SOFT_BOUNCE: OutboxState.FAILED}


def inbound_addresses(app: App) -> InboundAddresses:
    cfg = app.config
    domains = {cfg.from_domain}
    mailboxes = tuple(a for a in (cfg.newsletter.unsubscribe_mailto, *cfg.inbound.mailboxes) if a)
    for address in (verp_base(cfg), cfg.inbound.address, *mailboxes):
        if address:
            domains.add(address.rpartition("@")[2].lower())
    return InboundAddresses(verp_base(cfg), cfg.inbound.address, frozenset(domains), mailboxes)


def _day(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass
class Inbound:
    """One config's inbound processing; built per run (cheap), the app's parts passed in."""

    app: App

    def __post_init__(self) -> None:
        d = self.app.config.delivery
        self.rules = Classifier(d.content_rejections, max_attempts=d.max_attempts,
                                max_age=d.max_age, backoff_base=d.backoff_base,
                                providers=d.providers)
        self.addresses = inbound_addresses(self.app)
        self.outgoing: list[tuple[str, bytes]] = []
        self.confirmations = False
        self.confirmed: list[int] = []  # welcomed with the latest edition after the batch

    # ------------------------------------------------------------------ one message

    def handle(self, raw: bytes, envelope: Sequence[str] = ()) -> Handled:
        """Classify ``raw`` and commit its effect; the caller removes it afterwards."""
        verdict = classify(raw, addresses=self.addresses, rules=self.rules, envelope=envelope)
        digest = hashlib.sha256(raw).digest()
        if verdict.kind in (Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE, Kind.CONTENT_REJECTED,
                            Kind.COMPLAINT):
            return self._returned(verdict, digest)
        if verdict.kind is Kind.COMMAND:
            return self._command(verdict, digest, raw)
        if verdict.kind is Kind.IGNORED:
            log.info("inbound: ignored (%s)", verdict.reason)
            return Handled("ignored")
        return Handled("unmatched", keep=True)

    def _first_time(self, conn: Connection, digest: bytes) -> bool:
        """Record ``digest`` in the caller's transaction; False if an earlier run did (it
        crashed before removing the file), so the effect is not repeated."""
        now = self.app.clock()
        conn.execute(delete(inbound_seen).where(inbound_seen.c.seen_at < now - _SEEN_FOR))
        try:
            with conn.begin_nested():
                conn.execute(insert(inbound_seen).values(digest=digest, seen_at=now))
        except IntegrityError:
            return False
        return True

    def _message(self, ref: Reference) -> tuple[int, int] | None:
        """(edition, subscriber) a reference names, or None if it names nothing of ours."""
        if ref.kind in ("verp", "reply"):
            try:
                return self.app.tokens.verify_bounce(ref.value)
            except BadToken:
                return None
        if ref.kind == "message-id":
            edition, _, hexid = ref.value.partition(".")
            sid = int(hexid, 16)
            sid = sid - (1 << 64) if sid >= 1 << 63 else sid
            pair = (int(edition), sid)
            # Not signed: believed only for a message that we did send.
            return pair if self.app.outbox.exists(*pair) else None
        return None

    def _returned(self, verdict: Verdict, digest: bytes) -> Handled:
        pairs = [p for ref in verdict.references if (p := self._message(ref)) is not None]
        if pairs:
            return self._record(verdict, *pairs[0], digest)
        if verdict.recipients and verdict.kind is not Kind.COMPLAINT:
            return self._by_recipient(verdict, digest)
        log.warning("inbound: a %s names none of our messages; kept for a person",
                    verdict.kind.value)
        return Handled("unmatched", keep=True)

    def _by_recipient(self, verdict: Verdict, digest: bytes) -> Handled:
        """The second door: a bounce that names none of our messages (a relay rewrote the
        envelope sender, so no VERP token came back, and no Message-ID of ours is returned)
        but names its failed recipients. Each is looked up by blind index; the first that is a
        subscriber's is taken with their latest message the relay took, and recorded by
        :meth:`_record` like a VERP bounce, unproven. One that is nobody's is dropped.

        Spoofing: anyone who knows a reader's address can write such a DSN, and a hard bounce
        would suppress the reader at once. So an unproven bounce is classified and marked on
        the outbox row as usual, but it moves the reader only through the decaying soft-bounce
        score, by one, and once per outbox row however many copies come: suppressing takes
        ``soft_bounce_threshold`` editions bouncing close together, as for a mailbox that keeps
        failing, and a forger gains one point per edition we send. A bounce that proves itself
        (a VERP token: a MAC; or our Message-ID, which holds the reader's random id, for a
        message we sent) takes the first door and acts at once. List-Id and Feedback-ID prove
        nothing, every reader sees them, so they are not asked for."""
        store = self.app.subscribers
        for address in verdict.recipients:
            record = store.lookup(address)
            if record is None:
                continue
            edition_id = self.app.outbox.latest_sent(record.id)
            if edition_id is not None:
                return self._record(verdict, edition_id, record.id, digest, proven=False)
        log.info("inbound: a %s names no subscriber of ours; dropped", verdict.kind.value)
        return Handled("bounce_unknown")

    def _record(self, verdict: Verdict, edition_id: int, sid: int, digest: bytes, *,
                proven: bool = True) -> Handled:
        """One bounce or complaint about (edition, subscriber), whichever door named it; an
        unproven one (see :meth:`_by_recipient`) scores one soft bounce per outbox row."""
        # Providers echo the recipient in every spelling: scrub it like a relay's reply.
        reply = scrub_reply(verdict.reply, recipient=self.app.subscribers.address_of(sid) or "")
        smtp = re.search(r"\b([245]\d\d)\b", verdict.reply)
        code = int(smtp.group(1)) if smtp else None
        if verdict.kind is Kind.COMPLAINT:
            self.app.subscribers.apply(sid, Event.COMPLAINT)
            log.info("inbound: complaint about edition %d from subscriber %d", edition_id, sid)
            return Handled("complaint")
        if verdict.kind in _OUTBOX_STATE:
            self.app.outbox.mark_returned(edition_id, sid, _OUTBOX_STATE[verdict.kind], code, reply)
        if not proven:
            if verdict.kind in (Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE):
                # Keyed by the row, not the bytes: a second copy about this message adds nothing.
                self._soft(sid, hashlib.sha256(b"unproven %d %d" % (edition_id, sid)).digest())
        elif verdict.kind is Kind.HARD_BOUNCE:
            self.app.subscribers.apply(sid, Event.BOUNCE)
        elif verdict.kind is Kind.SOFT_BOUNCE:
            self._soft(sid, digest)
        log.info("inbound: %s %s for edition %d, subscriber %d%s: %s", verdict.kind.value,
                 verdict.status, edition_id, sid,
                 "" if proven else " (named by its recipient only: one soft bounce at most)",
                 reply[:120])
        return Handled(verdict.kind.value)

    def _soft(self, sid: int, digest: bytes) -> None:
        """Add to the subscriber's decaying score once per message; suppress at the threshold
        (checked again on a repeat, so a crash before ``apply`` still suppresses)."""
        cfg = self.app.config.inbound
        now = self.app.clock()
        with self.app.engine.begin() as conn:
            first = self._first_time(conn, digest)
            row = conn.execute(select(soft_bounces).where(
                soft_bounces.c.subscriber_id == sid)).first()
            last = row.last_at if row is not None else None
            if last is not None and last.tzinfo is None:
                last = last.replace(tzinfo=now.tzinfo)  # SQLite hands them back naive
            score = decayed(row.score, last, now, cfg.soft_bounce_half_life) if row and last else 0.0
            if first:
                score = add_soft_bounce(row.score if row else 0.0, last, now, cfg.soft_bounce_half_life)
                if row is None:
                    conn.execute(insert(soft_bounces).values(subscriber_id=sid, score=score,
                                                             last_at=now))
                else:
                    conn.execute(update(soft_bounces).where(soft_bounces.c.subscriber_id == sid)
                                 .values(score=score, last_at=now))
        if score >= cfg.soft_bounce_threshold:
            self.app.subscribers.apply(sid, Event.BOUNCE)
            log.info("inbound: subscriber %d suppressed: soft-bounce score %.2f", sid, score)

    # ------------------------------------------------------------------ readers

    def _command(self, verdict: Verdict, digest: bytes, raw: bytes) -> Handled:
        tag, command = verdict.tag, verdict.command
        tokens, store = self.app.tokens, self.app.subscribers
        if tag is not None and tag.kind in ("confirm", "language-token", "leave"):
            for spelling in verdict.tags or (tag,):
                with contextlib.suppress(BadToken):
                    return self._reply(spelling)
            log.info("inbound: a reply with a bad or expired token; nothing changed")
            return Handled("refused")
        if command is None:
            return Handled("unmatched", keep=True)
        if command.name == "unsubscribe":
            if command.argument:  # the List-Unsubscribe mailto: the token names the reader
                try:
                    sid = tokens.verify_unsubscribe(command.argument)
                except BadToken:
                    return Handled("unmatched", keep=True)
                store.apply(sid, Event.UNSUBSCRIBE)
                log.info("inbound: subscriber %d unsubscribed by mail", sid)
                return Handled("unsubscribed")
            if tag is not None and tag.kind == "reply":  # a reply to an edition: its token
                pair = self._message(tag)
                if pair is not None:
                    store.apply(pair[1], Event.UNSUBSCRIBE)
                    log.info("inbound: subscriber %d unsubscribed by replying", pair[1])
                    return Handled("unsubscribed")
        sender = self._sender(verdict.sender)
        if sender is None:
            return Handled("unmatched", keep=True)
        if command.name in ("subscribe", "language"):
            language = command.argument or (tag.value if tag and tag.kind == "language" else "")
            return self._subscribe(sender, language)
        if command.name == "unsubscribe":
            record = store.lookup(sender)
            if record is None or record.state in SUPPRESSED:
                return Handled("unsubscribe_unknown")  # nothing to leave; nobody is told
            token = tokens.unsubscribe_token(record.id)
            return self._answer(sender, digest, raw, "leave", record.language,
                                reply_to=self._reply_to("u-" + token))
        record = store.lookup(sender)
        language = record.language if record is not None else self._language_of(tag)
        return self._answer(sender, digest, raw, command.name, language,
                            subscriber_id=record.id if record is not None else None)

    def _reply(self, tag: Reference) -> Handled:
        """A reply to one of our confirmations: its token confirms, like the link."""
        tokens, store = self.app.tokens, self.app.subscribers
        if tag.kind == "confirm":
            from mailer.pipeline.send import queue_welcome

            tok = tokens.verify_confirm(tag.value)
            # The welcome's row commits with the confirmation; send_answers delivers it.
            state = store.confirm(tok.subscriber_id, tok.issued_at, then=queue_welcome(self.app))
            if state is SubscriberState.ACTIVE:
                self.confirmed.append(tok.subscriber_id)
            return Handled("confirmed" if state is SubscriberState.ACTIVE else "refused")
        if tag.kind == "language-token":
            ltok = tokens.verify_language(tag.value)
            record = store.get(ltok.subscriber_id)
            if (record is None or record.state is not SubscriberState.ACTIVE or
                    ltok.language not in store.settings.choices or
                    ltok.issued_at.replace(microsecond=0) <
                    record.state_changed_at.replace(microsecond=0)):
                return Handled("refused")
            store.set_language(ltok.subscriber_id, ltok.language)
            return Handled("language")
        store.apply(tokens.verify_unsubscribe(tag.value), Event.UNSUBSCRIBE)
        return Handled("unsubscribed")

    def _sender(self, address: str) -> str | None:
        try:
            return validate(address)
        except InvalidAddress:
            return None

    def _language_of(self, tag: Reference | None) -> str:
        store = self.app.subscribers
        if tag is not None and tag.kind == "language":
            try:
                return store.check_language(tag.value)
            except InputError:
                pass
        return self.app.config.newsletter.default_language

    def _reply_to(self, tag: str) -> str | None:
        address = self.app.config.inbound.address
        return tagged(address, tag) if address else None

    def _subscribe(self, sender: str, language: str) -> Handled:
        from mailer.inbound.commands import language_code

        desk = self.app.signup
        try:
            desk.request(sender, language_code(language) if language else None)
        except InputError:
            try:  # a language we do not offer: the default, as the form would offer
                desk.request(sender, None)
            except InputError:
                return Handled("refused")
        self.confirmations = True
        return Handled("subscribe")

    def _answer(self, to: str, digest: bytes, raw: bytes, kind: str, language: str, *,
                reply_to: str | None = None, subscriber_id: int | None = None) -> Handled:
        """Queue one answer if the limits allow it (one warning past them, then silence)."""
        verdict = self._allow(to, digest)
        if verdict == "silent":
            return Handled("limited")
        cfg = self.app.config
        original = email.message_from_bytes(raw)
        answering = Answering(from_addr=cfg.inbound.address or cfg.newsletter.from_addr, to=to,
                              language=language, now=self.app.clock(),
                              in_reply_to=str(original.get("Message-ID", "")),
                              domain=cfg.from_domain, override_dir=cfg.newsletter.templates_dir)
        if verdict == "warn":
            data = limit_message(answering)
        elif kind == "leave":
            data = leave_message(answering, reply_to or "")
        elif kind == "mirrors":
            data = mirrors_message(answering, *self._mirrors(to, subscriber_id))
        else:
            data = help_message(answering, cfg.inbound.address or "")
        self.outgoing.append((to, data))
        return Handled(kind if verdict == "send" else "limited")

    def _mirrors(self, to: str, subscriber_id: int | None) -> tuple[tuple[str, ...],
                                                                  tuple[str, ...], str]:
        """The requester's own partition of mirrors (a stranger's: by the keyed hash of their
        address, so asking again gives the same set), the onions and the latest subject."""
        registry = self.app.mirrors
        if subscriber_id is None:
            index = self.app.subscribers.index_of(to)
            subscriber_id = int.from_bytes(index[:8], "big") & ((1 << 63) - 1)
        links = registry.for_subscriber(subscriber_id)
        onions = [site.url for site in registry.static_links() if site.kind == "onion"]
        latest = ""
        sent = self.app.editions.find([EditionState.SENT], limit=1)
        if sent:
            posts = self.app.editions.load(sent[0].id).posts
            latest = posts[0].title if posts else ""
        return tuple(links), tuple(onions), latest

    def _allow(self, to: str, digest: bytes) -> str:
        """``send``, ``warn`` (the one warning past a limit) or ``silent``; counted with the
        message's digest in one transaction, so a crash cannot count twice."""
        cfg = self.app.config.inbound
        store = self.app.subscribers
        now = self.app.clock()
        day = _day(now)
        keys = [(store.index_of(to), cfg.replies_per_day),
                (store.codec.blind_index("@" + to.rpartition("@")[2].lower()),
                 cfg.domain_replies_per_day)]
        r = inbound_replies.c
        with self.app.engine.begin() as conn:
            conn.execute(delete(inbound_replies).where(r.day < day - timedelta(days=1)))
            if not self._first_time(conn, digest):
                return "silent"  # answered (or refused) before a crash: never twice
            outcome = "send"
            for key, limit in keys:
                for _ in range(2):
                    if conn.execute(update(inbound_replies).where(and_(
                            r.key_index == key, r.day == day, r.sent < limit))
                            .values(sent=r.sent + 1)).rowcount:
                        break
                    if conn.execute(select(r.sent).where(and_(r.key_index == key,
                                                              r.day == day))).first() is None:
                        try:
                            with conn.begin_nested():
                                conn.execute(insert(inbound_replies).values(
                                    key_index=key, day=day, sent=1, warned=False))
                            break
                        except IntegrityError:
                            continue  # another process inserted it: count again
                    # At the limit: the first time, one warning; after that, silence.
                    warned = conn.execute(update(inbound_replies).where(and_(
                        r.key_index == key, r.day == day, r.warned.is_(False)))
                        .values(warned=True)).rowcount
                    outcome = "warn" if warned and outcome == "send" else "silent"
                    break
                if outcome == "silent":
                    break
        return outcome

    # ------------------------------------------------------------------ after the batch

    async def send_answers(self) -> int:
        """Send the answers this run queued (null envelope sender, RFC 3834 §3.3)."""
        sent = 0
        transport = self.app.transport
        for to, data in self.outgoing:
            result = await transport.send("", to, data)
            sent += result.accepted
            if not result.accepted:
                log.warning("inbound: an answer was refused by the relay (%s)", result.code)
        self.outgoing.clear()
        if self.confirmations:
            from mailer.pipeline.confirm import confirmation_sender

            sender = confirmation_sender(self.app)
            await sender.round()
            self.confirmations = False
        if self.confirmed:  # the welcome: the latest edition at once, through the outbox
            from mailer.pipeline.send import welcome

            await welcome(self.app, self.confirmed)
            self.confirmed = []
        return sent


def spool(app: App, maildir: Path | None = None) -> Path:
    """The Maildir inbound mail waits in: ``maildir``, else ``[inbound] maildir``, else the
    older ``[web] unsubscribe_maildir``; ``InputError`` if there is none."""
    folder = maildir or app.config.inbound_maildir
    if folder is None:
        raise InputError("no Maildir: set [inbound] maildir or pass --maildir")
    if not (folder / "new").is_dir():
        raise InputError("not a Maildir (no new/ folder)", source=str(folder))
    return folder


async def accept(app: App, folder: Path, raw: bytes, envelope: Sequence[str] = ()) -> InboundReport:
    """One message an MTA hands in (LMTP): stored in ``folder`` first (what the MTA's 250
    promises), then handled like the rest of the Maildir, with its envelope recipients."""
    from mailer.inbound.maildir import deliver

    key = await asyncio.to_thread(deliver, folder, raw)
    inbound = Inbound(app)
    report = await asyncio.to_thread(
        process_maildir, folder, lambda data, _: inbound.handle(data, envelope), [key])
    report.answered = await inbound.send_answers()
    return report


async def process_inbound(app: App, maildir: Path | None = None) -> InboundReport:
    """Handle every message waiting in the Maildir (:func:`spool`); the daemon runs this
    every 30 s, ``newsletter inbound`` once."""
    folder = spool(app, maildir)
    inbound = Inbound(app)
    report = await asyncio.to_thread(process_maildir, folder, inbound.handle)
    report.answered = await inbound.send_answers()
    return report
