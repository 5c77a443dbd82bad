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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, update

from mailer.clock import Clock, as_utc, system_clock
from mailer.errors import EditionError
from mailer.models import Edition, EditionState, Post, PostImage
from mailer.schema import edition_posts, editions, feeds, posts

__all__ = [
    "EDITABLE",
    "TRANSITIONS",
    "Decision",
    "EditionInfo",
    "EditionStore",
    "PostLoader",
    "decide",
    "over_cap",
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

# States in which editors may still change the posts, order and notes.
EDITABLE = frozenset({S.DRAFT, S.SCHEDULED, S.APPROVED, S.HELD, S.MISSED})

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
                 require_approval: bool = False, load_posts: PostLoader | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.require_approval = require_approval
        self._load_posts = load_posts

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
               notes: Mapping[str, str] | None = None) -> int | None:
        """A draft edition of ``post_ids`` (default: every unsent post); None if there are none."""
        ids = list(self.unsent_post_ids() if post_ids is None else post_ids)
        if not ids:
            return None
        if len(set(ids)) != len(ids):
            raise EditionError("a post is named twice")
        if kind not in ("digest", "per-post"):
            raise EditionError(f"unknown kind {kind!r}; use 'digest' or 'per-post'")
        now = self.clock()
        with self.engine.begin() as conn:
            self._check_posts(conn, ids)
            edition_id = conn.execute(
                insert(editions).values(
                    kind=kind, state=S.DRAFT.value, notes_json=_dump_notes(notes or {}),
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

    def set_total(self, edition_id: int, total: int) -> None:
        """Record how many recipients were enqueued (the delivery stage calls this)."""
        with self.engine.begin() as conn:
            conn.execute(update(editions).where(editions.c.id == edition_id)
                         .values(total=total, updated_at=self.clock()))

    def claim_sent_report(self, edition_id: int) -> bool:
        """True for exactly one caller per edition: the one that sends the editors' report."""
        with self.engine.begin() as conn:
            result = conn.execute(update(editions)
                                  .where(editions.c.id == edition_id,
                                         editions.c.sent_reported_at.is_(None))
                                  .values(sent_reported_at=self.clock()))
        return result.rowcount == 1

    # ------------------------------------------------------------------ helpers

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


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise EditionError("a send time needs a timezone")
    return at


def _req(value: datetime | None) -> datetime:
    assert value is not None
    return value
