"""Editions in the database: which posts go out together, in what order, when, and in what state.

The state machine is the editors' safety net: every change is a compare-and-set on the row's
current state, so the CLI and the daemon (separate processes) can never both act on one edition,
and an edition that was sent can never be sent, scheduled or edited again.

    draft ─► scheduled ─► approved ─► sending ─► sent
      │          │  ▲         │         │  ▲
      │          ▼  │         ▼         ▼  │
      └────────► held ◄───────┘        paused
    cancelled and missed can happen along the way; missed can be rescheduled.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, update

from mailer.clock import Clock, as_utc, system_clock
from mailer.errors import EditionError
from mailer.models import Edition, EditionState, Post, PostImage
from mailer.schema import edition_posts, editions, feeds, posts

__all__ = [
    "EDITABLE",
    "MAX_NOTE",
    "MAX_SUBJECT",
    "TRANSITIONS",
    "WELCOME_STATES",
    "Decision",
    "EditionInfo",
    "EditionStore",
    "PostLoader",
    "PostUse",
    "decide",
    "describe_uses",
    "over_cap",
    "reuse_problem",
]

S = EditionState

# Which state may follow which. Anything else is an editor's mistake or a race, and is refused.
TRANSITIONS: Mapping[EditionState, frozenset[EditionState]] = {
    S.DRAFT: frozenset({S.SCHEDULED, S.APPROVED, S.HELD, S.SENDING, S.CANCELLED}),
    S.SCHEDULED: frozenset({S.SCHEDULED, S.APPROVED, S.HELD, S.SENDING, S.CANCELLED, S.MISSED,
                            S.DRAFT}),
    S.APPROVED: frozenset({S.SCHEDULED, S.APPROVED, S.HELD, S.SENDING, S.CANCELLED, S.MISSED}),
    S.HELD: frozenset({S.SCHEDULED, S.APPROVED, S.CANCELLED, S.DRAFT}),
    S.SENDING: frozenset({S.SENT, S.PAUSED, S.CANCELLED}),  # the engine stops at its next batch
    S.PAUSED: frozenset({S.SENDING, S.CANCELLED}),
    S.MISSED: frozenset({S.SCHEDULED, S.APPROVED, S.CANCELLED}),
    S.SENT: frozenset(),
    S.CANCELLED: frozenset(),
}
# A new reader's welcome is the newest edition in one of these: going out (sending, or paused
# mid-send: the send claims their row when it goes on) or gone out (sent). Never a cancelled
# one: it did not reach readers. ``EditionStore.welcome_edition`` is the one place this is read.
WELCOME_STATES = (S.SENDING, S.PAUSED, S.SENT)
# The states that can move straight to sending without being a welcome yet.
_STARTABLE = tuple(sorted(s.value for s, nxt in TRANSITIONS.items()
                          if S.SENDING in nxt and s not in WELCOME_STATES))

# States in which editors may still change the posts, order, notes and subjects.
EDITABLE = frozenset({S.DRAFT, S.SCHEDULED, S.APPROVED, S.HELD, S.MISSED})

# An editor's subject and note: long enough for any real one, short enough that a paste of a
# whole post (or a script) is refused with a clear error instead of mailed.
MAX_SUBJECT = 200
MAX_NOTE = 5000

PostLoader = Callable[[Sequence[int]], Sequence[Post]]


@dataclass(frozen=True)
class EditionInfo:
    """One edition's row and post list, without loading post bodies (for lists and decisions)."""

    id: int
    kind: str
    state: EditionState
    scheduled_at: datetime | None
    approved_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    reason: str | None
    total: int | None
    post_ids: tuple[int, ...]
    excluded_ids: tuple[int, ...]
    notes: Mapping[str, str]
    subjects: Mapping[str, str] = field(default_factory=dict)


class Decision(enum.StrEnum):
    """What the daemon does with an edition at a given moment."""

    WAIT = "wait"
    SEND = "send"
    HOLD = "hold"
    MISS = "miss"


def decide(info: EditionInfo, now: datetime, *, grace: timedelta,
           require_approval: bool) -> Decision:
    """The misfire and approval policy, pure so it can be tested on its own.

    An unapproved edition is never sent when approval is required: at its time it is held and
    the editors are told. An edition whose time passed more than ``grace`` ago is missed rather
    than sent days late (listmonk #1801). An approved edition without a time goes out now.
    """
    if info.state not in (S.SCHEDULED, S.APPROVED):
        return Decision.WAIT
    at = info.scheduled_at
    if at is not None and at > now:
        return Decision.WAIT
    if require_approval and (info.state is not S.APPROVED or info.approved_at is None):
        return Decision.HOLD
    if at is not None and now - at > grace:
        return Decision.MISS
    return Decision.SEND


@dataclass(frozen=True)
class PostUse:
    """A post already in an edition that is not cancelled: sent (or going out), or waiting."""

    post_id: int
    edition_id: int
    state: EditionState

    @property
    def sent(self) -> bool:
        """Readers have it (or are getting it now)."""
        return self.state in (S.SENT, S.SENDING, S.PAUSED)


def reuse_problem(uses: Iterable[PostUse]) -> str | None:
    """Pure: why putting these posts in a new edition needs the editor's confirmation, or None.

    A post already sent would reach every reader a second time; one waiting in another edition
    would go out twice. Neither is forbidden (a correction may be worth resending), but an
    editor must say so: ``editions create --include-sent``, or the admin's confirmation.
    """
    described = describe_uses(uses)
    if described is None:
        return None
    return (f"{described}. Readers would get these posts twice; to send them again anyway, "
            f"confirm (editions create --include-sent)")


def describe_uses(uses: Iterable[PostUse]) -> str | None:
    """Pure: ``already sent: post 3 (edition 1, sent)``, or None when there are none."""
    uses = sorted(uses, key=lambda u: (u.post_id, u.edition_id))
    if not uses:
        return None
    sent = [u for u in uses if u.sent]
    waiting = [u for u in uses if not u.sent]
    parts = []
    if sent:
        parts.append("already sent: " + ", ".join(
            f"post {u.post_id} (edition {u.edition_id}, {u.state.value})" for u in sent))
    if waiting:
        parts.append("already in another edition: " + ", ".join(
            f"post {u.post_id} (edition {u.edition_id}, {u.state.value})" for u in waiting))
    return "; ".join(parts)


def over_cap(posts: int, max_posts: int) -> str | None:
    """Pure: why an automatic edition of ``posts`` posts must wait for an editor, or None.

    A feed that floods (or a compromised blog) must not become one mail of thousands of posts;
    an editor chooses what goes out (``editions create --posts``) or approves it whole.
    """
    if posts <= max_posts:
        return None
    return (f"{posts} posts, more than [schedule] max_posts = {max_posts}: an editor must choose "
            f"the posts (editions create --posts) or approve this edition as it is")


class EditionStore:
    """Create, read and move editions through their states. I/O: the engine; time: the clock."""

    def __init__(self, engine: Engine, clock: Clock = system_clock, *,
                 require_approval: bool = False, load_posts: PostLoader | None = None,
                 languages: Sequence[str] | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.require_approval = require_approval
        self._load_posts = load_posts
        # The configured languages a note or subject may be written in (None: any).
        self.languages = tuple(languages) if languages is not None else None

    # ------------------------------------------------------------------ reading

    def unsent_post_ids(self) -> list[int]:
        """New posts in no edition except cancelled ones, newest first (a digest's order)."""
        used = (
            select(edition_posts.c.post_id)
            .join(editions, editions.c.id == edition_posts.c.edition_id)
            .where(editions.c.state != S.CANCELLED.value)
        )
        q = (
            select(posts.c.id)
            .where(posts.c.is_new.is_(True), posts.c.id.not_in(used))
            .order_by(func.coalesce(posts.c.published, posts.c.created_at).desc(),
                      posts.c.id.desc())
        )
        with self.engine.connect() as conn:
            return [int(r) for r in conn.execute(q).scalars()]

    def post_uses(self, post_ids: Iterable[int]) -> list[PostUse]:
        """Where each of ``post_ids`` already is: editions not cancelled, oldest first. The
        admin marks these in its list; :meth:`create` refuses them unless confirmed."""
        with self.engine.connect() as conn:
            return self._post_uses(conn, list(post_ids))

    @staticmethod
    def _post_uses(conn: Connection, ids: Sequence[int]) -> list[PostUse]:
        if not ids:
            return []
        q = (
            select(edition_posts.c.post_id, editions.c.id, editions.c.state)
            .join(editions, editions.c.id == edition_posts.c.edition_id)
            .where(edition_posts.c.post_id.in_(list(ids)), editions.c.state != S.CANCELLED.value)
            .order_by(editions.c.id, edition_posts.c.post_id)
        )
        return [PostUse(int(p), int(e), EditionState(st)) for p, e, st in conn.execute(q)]

    def info(self, edition_id: int) -> EditionInfo:
        """The edition's row and post ids; ``EditionError`` if there is no such edition."""
        with self.engine.connect() as conn:
            return self._info(conn, edition_id)

    def find(self, states: Iterable[EditionState] | None = None, *,
             limit: int | None = None) -> list[EditionInfo]:
        """Editions, newest first, optionally only those in ``states``."""
        q = select(editions.c.id).order_by(editions.c.id.desc())
        if states is not None:
            q = q.where(editions.c.state.in_([s.value for s in states]))
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            ids = [int(i) for i in conn.execute(q).scalars()]
            return self._infos(conn, ids)

    def welcome_edition(self, conn: Connection | None = None) -> EditionInfo | None:
        """The edition a reader who confirms now gets at once: the newest in ``WELCOME_STATES``
        (the one going out, else the last sent); None before the first send.

        ``conn``: the confirming transaction, which has already made the reader active. On
        PostgreSQL it also locks (FOR SHARE) the editions that could start sending, so none
        starts between this choice and the commit: ``start_edition`` enumerates the readers
        after the state change, and a start that slipped in between would see this reader
        still pending while the welcome went to the edition before it, and the reader would
        get neither. SQLite needs no lock: the confirming transaction holds the write lock."""
        if conn is None:
            with self.engine.connect() as own:
                return self._newest_welcome(own)
        conn.execute(select(editions.c.id).where(editions.c.state.in_(_STARTABLE))
                     .with_for_update(read=True)).all()
        return self._newest_welcome(conn)

    def _newest_welcome(self, conn: Connection) -> EditionInfo | None:
        newest = conn.execute(select(editions.c.id)
                              .where(editions.c.state.in_([s.value for s in WELCOME_STATES]))
                              .order_by(editions.c.id.desc()).limit(1)).scalar()
        return None if newest is None else self._info(conn, int(newest))

    def load(self, edition_id: int) -> Edition:
        """The edition with its posts in order, excluded ones left out."""
        info = self.info(edition_id)
        wanted = [p for p in info.post_ids if p not in set(info.excluded_ids)]
        loaded = self._load_posts(wanted) if self._load_posts else self._read_posts(wanted)
        by_id = {p.id: p for p in loaded}
        return Edition(
            id=info.id,
            kind=info.kind,
            state=info.state,
            posts=tuple(by_id[i] for i in wanted if i in by_id),
            notes=dict(info.notes),
            scheduled_at=info.scheduled_at,
            created_at=info.created_at,
            subjects=dict(info.subjects),
        )

    def due(self, now: datetime) -> list[int]:
        """Scheduled or approved editions whose time has come (or approved with no time)."""
        q = (
            select(editions.c.id)
            .where(
                editions.c.state.in_([S.SCHEDULED.value, S.APPROVED.value]),
                or_(editions.c.scheduled_at.is_(None), editions.c.scheduled_at <= now),
            )
            .order_by(editions.c.scheduled_at, editions.c.id)
        )
        with self.engine.connect() as conn:
            return [int(i) for i in conn.execute(q).scalars()]

    def upcoming(self, now: datetime) -> list[EditionInfo]:
        """Scheduled or approved editions still in the future, soonest first (for the daemon)."""
        q = (
            select(editions.c.id)
            .where(
                editions.c.state.in_([S.SCHEDULED.value, S.APPROVED.value]),
                editions.c.scheduled_at > now,
            )
            .order_by(editions.c.scheduled_at, editions.c.id)
        )
        with self.engine.connect() as conn:
            return self._infos(conn, [int(i) for i in conn.execute(q).scalars()])

    # ------------------------------------------------------------------ writing

    def create(self, post_ids: Sequence[int] | None = None, *, kind: str = "digest",
               notes: Mapping[str, str] | None = None,
               subjects: Mapping[str, str] | None = None,
               include_sent: bool = False) -> int | None:
        """A draft edition of ``post_ids`` (default: every unsent post); None if there are none.

        Posts already sent, or waiting in another edition, are refused (:func:`reuse_problem`)
        unless ``include_sent``: the editor confirmed that readers may get them again."""
        ids = list(self.unsent_post_ids() if post_ids is None else post_ids)
        if not ids:
            return None
        if len(set(ids)) != len(ids):
            raise EditionError("a post is named twice")
        if kind not in ("digest", "per-post"):
            raise EditionError(f"unknown kind {kind!r}; use 'digest' or 'per-post'")
        clean_notes = self._texts(notes or {}, "note", MAX_NOTE)
        clean_subjects = self._texts(subjects or {}, "subject", MAX_SUBJECT)
        now = self.clock()
        with self.engine.begin() as conn:
            self._check_posts(conn, ids)
            if not include_sent and post_ids is not None:
                problem = reuse_problem(self._post_uses(conn, ids))
                if problem is not None:
                    raise EditionError(problem)
            edition_id = conn.execute(
                insert(editions).values(
                    kind=kind, state=S.DRAFT.value, notes_json=_dump_notes(clean_notes),
                    subjects_json=_dump_notes(clean_subjects),
                    created_at=now, updated_at=now,
                ).returning(editions.c.id)
            ).scalar_one()
            conn.execute(insert(edition_posts), [
                {"edition_id": edition_id, "post_id": p, "position": i, "excluded": False}
                for i, p in enumerate(ids)
            ])
        return int(edition_id)

    def set_state(self, edition_id: int, state: EditionState, reason: str | None = None) -> None:
        """Move the edition to ``state`` if the transition is allowed; ``EditionError`` if not.

        Moving to sending checks the approval gate, so no path can send an unapproved edition.
        """
        state = EditionState(state)
        with self.engine.begin() as conn:
            info = self._info(conn, edition_id)
            if info.state is S.PAUSED and state is S.SENDING:
                # Only an explicit resume restarts a paused send: a sender that was already
                # on its way must not undo an editor's (or a stopping daemon's) pause.
                raise EditionError("is paused; resume it with: newsletter editions resume "
                                   f"{edition_id}", edition_id=edition_id)
            self._check(info, state)
            values: dict[str, Any] = {}
            if state is S.SENDING and info.started_at is None:
                values["started_at"] = self.clock()
            if state in (S.SENT, S.CANCELLED, S.MISSED):
                values["finished_at"] = self.clock()
            self._cas(conn, info, state, reason, **values)

    def schedule(self, edition_id: int, at: datetime, *, allow_past: bool = False) -> None:
        """Give the edition a send time in the future. Approval is kept: the content is the same.

        ``allow_past`` is for the daemon, which schedules digests at the moment they fire.
        """
        at = _aware(at)
        now = self.clock()
        if at <= now and not allow_past:
            raise EditionError(f"the time {at.isoformat()} is in the past (now {now.isoformat()})",
                               edition_id=edition_id)
        with self.engine.begin() as conn:
            info = self._info(conn, edition_id)
            target = S.APPROVED if info.approved_at is not None and info.state in (
                S.APPROVED, S.HELD) else S.SCHEDULED
            self._check(info, target)
            self._cas(conn, info, target, None, scheduled_at=at)

    def approve(self, edition_id: int) -> None:
        """Approve for sending at its time; a held or missed edition whose time passed goes now."""
        now = self.clock()
        with self.engine.begin() as conn:
            info = self._info(conn, edition_id)
            self._check(info, S.APPROVED)
            values: dict[str, Any] = {"approved_at": now}
            if info.state in (S.HELD, S.MISSED) and (
                    info.scheduled_at is None or info.scheduled_at <= now):
                values["scheduled_at"] = now  # the editor's approval is the new send time
            self._cas(conn, info, S.APPROVED, None, **values)

    def hold_if_over(self, edition_id: int, max_posts: int) -> str | None:
        """Hold an automatic edition with more than ``max_posts`` posts; the reason, or None."""
        reason = over_cap(len(self.info(edition_id).post_ids), max_posts)
        if reason is not None:
            self.hold(edition_id, reason)
        return reason

    def hold(self, edition_id: int, reason: str | None = None) -> None:
        self.set_state(edition_id, S.HELD, reason or "held by an editor")

    def cancel(self, edition_id: int, reason: str | None = None) -> None:
        self.set_state(edition_id, S.CANCELLED, reason or "cancelled by an editor")

    def pause(self, edition_id: int, reason: str | None = None) -> None:
        self.set_state(edition_id, S.PAUSED, reason or "paused by an editor")

    def resume(self, edition_id: int) -> EditionState:
        """Paused goes back to sending; held goes back to its schedule (or now, if it passed)."""
        now = self.clock()
        with self.engine.begin() as conn:
            info = self._info(conn, edition_id)
            if info.state is S.PAUSED:
                target, values = S.SENDING, {}
            elif info.state is S.HELD:
                target = S.APPROVED if info.approved_at is not None else S.SCHEDULED
                at = info.scheduled_at
                values = {"scheduled_at": now if at is None or at <= now else at}
            else:
                raise EditionError(f"is {info.state}; only paused or held editions resume",
                                   edition_id=edition_id)
            self._check(info, target)
            self._cas(conn, info, target, None, **values)
            return target

    def exclude(self, edition_id: int, post_id: int) -> None:
        """Leave a post out of the edition (it stays listed, marked excluded)."""
        with self.engine.begin() as conn:
            info = self._editable(conn, edition_id)
            if post_id not in info.post_ids:
                raise EditionError(f"post {post_id} is not in this edition", edition_id=edition_id)
            conn.execute(update(edition_posts).where(
                edition_posts.c.edition_id == edition_id, edition_posts.c.post_id == post_id,
            ).values(excluded=True))
            self._content_changed(conn, info)

    def reorder(self, edition_id: int, post_ids: Sequence[int]) -> None:
        """Put the named posts first, in the order given; the others keep their order after them."""
        with self.engine.begin() as conn:
            info = self._editable(conn, edition_id)
            unknown = [p for p in post_ids if p not in info.post_ids]
            if unknown:
                raise EditionError(f"post {unknown[0]} is not in this edition",
                                   edition_id=edition_id)
            if len(set(post_ids)) != len(post_ids):
                raise EditionError("a post is named twice", edition_id=edition_id)
            order = list(post_ids) + [p for p in info.post_ids if p not in post_ids]
            for pos, pid in enumerate(order):
                conn.execute(update(edition_posts).where(
                    edition_posts.c.edition_id == edition_id, edition_posts.c.post_id == pid,
                ).values(position=pos))
            self._content_changed(conn, info)

    def set_notes(self, edition_id: int, notes: Mapping[str, str]) -> None:
        with self.engine.begin() as conn:
            info = self._editable(conn, edition_id)
            conn.execute(update(editions).where(editions.c.id == edition_id)
                         .values(notes_json=_dump_notes(notes)))
            self._content_changed(conn, info)

    def edit(self, edition_id: int, *, subjects: Mapping[str, str | None] | None = None,
             notes: Mapping[str, str | None] | None = None) -> EditionInfo:
        """Change the subject and the intro note of some languages; an empty text or None
        goes back to none (the derived subject, no note). Other languages keep theirs.

        Only while the content may change (:data:`EDITABLE`): once sending, what readers get is
        fixed. Like any change of content it withdraws an approval, so an editor approves what
        readers will read. Returns the edition as it now is (the CLI and the admin show it).
        """
        subjects = dict(subjects or {})
        notes = dict(notes or {})
        if not subjects and not notes:
            raise EditionError("nothing to change: give a subject or a note for a language",
                               edition_id=edition_id)
        self._texts({k: v or "" for k, v in subjects.items()}, "subject", MAX_SUBJECT)
        self._texts({k: v or "" for k, v in notes.items()}, "note", MAX_NOTE)
        with self.engine.begin() as conn:
            info = self._info(conn, edition_id)
            if info.state not in EDITABLE:
                raise EditionError(
                    f"is {info.state}; its subject and intro note can change only before it is "
                    f"sent (draft, scheduled, approved, held or missed)", edition_id=edition_id)
            new_subjects = _merge(info.subjects, subjects)
            new_notes = _merge(info.notes, notes)
            if new_subjects == dict(info.subjects) and new_notes == dict(info.notes):
                return info
            result = conn.execute(
                update(editions)
                .where(editions.c.id == edition_id, editions.c.state == info.state.value)
                .values(subjects_json=_dump_notes(new_subjects), notes_json=_dump_notes(new_notes)))
            if result.rowcount != 1:
                raise EditionError(f"changed state while we looked (was {info.state}); try again",
                                   edition_id=edition_id)
            self._content_changed(conn, info)
            return self._info(conn, edition_id)

    def claim_sent_report(self, edition_id: int) -> bool:
        """True for exactly one caller per edition: the one that sends the editors' report."""
        with self.engine.begin() as conn:
            result = conn.execute(update(editions)
                                  .where(editions.c.id == edition_id,
                                         editions.c.sent_reported_at.is_(None))
                                  .values(sent_reported_at=self.clock()))
        return result.rowcount == 1

    # ------------------------------------------------------------------ helpers

    def _texts(self, texts: Mapping[str, str], what: str, limit: int) -> dict[str, str]:
        """Editors' texts by language, checked: a configured language, not too long, and a
        subject on one line (it becomes a header). Empty ones are dropped."""
        out = {}
        for lang, text in texts.items():
            if self.languages is not None and lang not in self.languages:
                raise EditionError(f"a {what} in {lang!r}: write it in one of the configured "
                                   f"languages ({', '.join(self.languages)})")
            text = text.strip()
            if len(text) > limit:
                raise EditionError(f"the {lang} {what} is {len(text)} characters long; at most "
                                   f"{limit} are allowed")
            if what == "subject" and any(c in text for c in "\r\n"):
                raise EditionError(f"the {lang} subject must be one line")
            if text:
                out[lang] = text
        return out

    def _check(self, info: EditionInfo, target: EditionState) -> None:
        if target not in TRANSITIONS[info.state]:
            if info.state in (S.SENT, S.CANCELLED):
                raise EditionError(f"was already {info.state}; it cannot become {target} "
                                   f"(create a new edition instead)", edition_id=info.id)
            raise EditionError(f"cannot go from {info.state} to {target}", edition_id=info.id)
        if (target is S.SENDING and info.state is not S.PAUSED and self.require_approval
                and info.approved_at is None):
            raise EditionError("approval is required and this edition is not approved "
                               "(newsletter editions approve ID)", edition_id=info.id)

    def _cas(self, conn: Connection, info: EditionInfo, state: EditionState,
             reason: str | None, **values: Any) -> None:
        """Write only if the row is still in the state we checked (the daemon and CLI race)."""
        result = conn.execute(
            update(editions)
            .where(editions.c.id == info.id, editions.c.state == info.state.value)
            .values(state=state.value, state_reason=reason, updated_at=self.clock(), **values)
        )
        if result.rowcount != 1:
            raise EditionError(f"changed state while we looked (was {info.state}); try again",
                               edition_id=info.id)

    def _editable(self, conn: Connection, edition_id: int) -> EditionInfo:
        info = self._info(conn, edition_id)
        if info.state not in EDITABLE:
            raise EditionError(f"is {info.state}; its posts can no longer change",
                               edition_id=edition_id)
        return info

    def _content_changed(self, conn: Connection, info: EditionInfo) -> None:
        """An approval covers the content the editor saw: a change withdraws it."""
        values: dict[str, Any] = {"updated_at": self.clock()}
        if info.approved_at is not None:
            values["approved_at"] = None
            if info.state is S.APPROVED:
                values["state"] = S.SCHEDULED.value if info.scheduled_at else S.DRAFT.value
                values["state_reason"] = "content changed after approval; approve again"
        conn.execute(update(editions).where(editions.c.id == info.id).values(**values))

    def _check_posts(self, conn: Connection, ids: Sequence[int]) -> None:
        found = set(conn.execute(select(posts.c.id).where(posts.c.id.in_(ids))).scalars())
        for p in ids:
            if p not in found:
                raise EditionError(f"unknown post {p}")

    def _info(self, conn: Connection, edition_id: int) -> EditionInfo:
        found = self._infos(conn, [edition_id])
        if not found:
            raise EditionError(f"no edition {edition_id}")
        return found[0]

    def _infos(self, conn: Connection, ids: Sequence[int]) -> list[EditionInfo]:
        """Rows and post lists of ``ids`` in two queries (not two per edition), in ``ids`` order."""
        if not ids:
            return []
        rows = {int(r["id"]): r for r in conn.execute(
            select(editions).where(editions.c.id.in_(ids))).mappings()}
        eps: dict[int, list[tuple[int, bool]]] = {i: [] for i in rows}
        for eid, pid, excluded in conn.execute(
            select(edition_posts.c.edition_id, edition_posts.c.post_id, edition_posts.c.excluded)
            .where(edition_posts.c.edition_id.in_(list(rows)))
            .order_by(edition_posts.c.edition_id, edition_posts.c.position)
        ):
            eps[int(eid)].append((int(pid), bool(excluded)))
        return [self._make_info(rows[i], eps[i]) for i in ids if i in rows]

    @staticmethod
    def _make_info(row: Any, eps: Sequence[tuple[int, bool]]) -> EditionInfo:
        return EditionInfo(
            id=int(row["id"]),
            kind=str(row["kind"]),
            state=EditionState(row["state"]),
            scheduled_at=as_utc(row["scheduled_at"]),
            approved_at=as_utc(row["approved_at"]),
            created_at=_req(as_utc(row["created_at"])),
            updated_at=_req(as_utc(row["updated_at"])),
            started_at=as_utc(row["started_at"]),
            finished_at=as_utc(row["finished_at"]),
            reason=row["state_reason"],
            total=row["total"],
            post_ids=tuple(int(p) for p, _ in eps),
            excluded_ids=tuple(int(p) for p, ex in eps if ex),
            notes=json.loads(row["notes_json"] or "{}"),
            subjects=json.loads(row["subjects_json"] or "{}"),
        )

    def _read_posts(self, ids: Sequence[int]) -> list[Post]:
        """Fallback reader used when no PostStore loader is injected (keeps this stage testable)."""
        if not ids:
            return []
        q = (
            select(posts, feeds.c.url.label("feed_url"))
            .select_from(posts.join(feeds, feeds.c.id == posts.c.feed_id))
            .where(and_(posts.c.id.in_(ids)))
        )
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        out = []
        for r in rows:
            images = tuple(PostImage(url=i.get("url", ""), alt=i.get("alt", ""))
                           for i in json.loads(r["images_json"] or "[]") if isinstance(i, dict))
            out.append(Post(
                guid=r["guid"], title=r["title"], content_html=r["content_html"],
                language=r["language"], link=r["link"], published=as_utc(r["published"]),
                updated=as_utc(r["updated"]), images=images, feed_url=r["feed_url"],
                id=int(r["id"]),
            ))
        return out


def _dump_notes(notes: Mapping[str, str]) -> str:
    return json.dumps(dict(notes), ensure_ascii=False, sort_keys=True)


def _merge(old: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    """``old`` with ``changes`` applied: a text replaces, an empty one or None removes."""
    out = dict(old)
    for lang, text in changes.items():
        if text is None or not text.strip():
            out.pop(lang, None)
        else:
            out[lang] = text.strip()
    return dict(sorted(out.items()))


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise EditionError("a send time needs a timezone")
    return at


def _req(value: datetime | None) -> datetime:
    assert value is not None
    return value
