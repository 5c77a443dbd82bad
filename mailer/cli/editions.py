"""``newsletter editions …``: the editors' commands. Times are shown in the zone and in UTC."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import click
from sqlalchemy import func, select

from mailer.app import App
from mailer.cli.base import cli, pass_app
from mailer.editions.store import EditionInfo
from mailer.errors import EditionError, InputError
from mailer.localtime import format_when, parse_local_time
from mailer.models import EditionState
from mailer.pipeline.policy import announce_scheduled

__all__ = ["editions", "format_when", "parse_local_time"]


# --------------------------------------------------------------------------- pure helpers

def parse_post_list(text: str) -> list[int]:
    """``"1,2, 5"`` → ``[1, 2, 5]``; anything else is a clear input error."""
    try:
        ids = [int(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        raise InputError(f"--posts {text!r}: give post ids separated by commas, like 1,2,5") \
            from None
    if not ids:
        raise InputError("--posts: name at least one post")
    return ids


# --------------------------------------------------------------------------- commands

# Said whenever an editor approves while approval is off, so nobody believes it was a gate.
APPROVAL_OFF = ("note: approval is not required ([newsletter] require_approval = false): "
                "scheduled editions go out at their time whether approved or not; set it to "
                "true to make approval a gate")


@cli.group()
def editions() -> None:
    """Editions: list, inspect, create, schedule, approve, hold, cancel, test-send, report."""


def _tz(app: App) -> str:
    return app.config.schedule.timezone


def _row(info: EditionInfo, tz: str) -> str:
    shown = len(info.post_ids) - len(info.excluded_ids)
    return (f"{info.id:>5}  {info.state.value:<9}  {info.kind:<8}  {shown:>3} post(s)  "
            f"{format_when(info.scheduled_at, tz)}")


@editions.command("list")
@click.option("--state", "states", multiple=True,
              type=click.Choice([s.value for s in EditionState]), help="Only these states.")
@click.option("--limit", type=int, default=50, show_default=True)
@pass_app
def list_(app: App, states: Sequence[str], limit: int) -> None:
    """Editions, newest first: id, state, kind, posts, send time."""
    wanted = [EditionState(s) for s in states] if states else None
    infos = app.editions.find(wanted, limit=limit)
    if not infos:
        click.echo("no editions")
        return
    click.echo(f"{'id':>5}  {'state':<9}  {'kind':<8}  {'posts':>12}  send time")
    for info in infos:
        click.echo(_row(info, _tz(app)))


def _recipients_per_language(app: App) -> dict[str, int]:
    from subscribers.schema import subscribers

    with app.engine.connect() as conn:
        rows = conn.execute(select(subscribers.c.language, func.count())
                            .where(subscribers.c.state == "active")
                            .group_by(subscribers.c.language)).all()
    return {str(lang): int(n) for lang, n in rows}


@editions.command()
@click.argument("edition_id", type=int)
@pass_app
def show(app: App, edition_id: int) -> None:
    """Posts, languages, recipients per language, schedule and state of one edition."""
    info = app.editions.info(edition_id)
    tz = _tz(app)
    posts = {p.id: p for p in app.editions.load(edition_id).posts}
    click.echo(f"edition {info.id} ({info.kind}): {info.state.value}"
               f"{f' ({info.reason})' if info.reason else ''}")
    click.echo(f"  send time: {format_when(info.scheduled_at, tz)}")
    click.echo(f"  approved:  {format_when(info.approved_at, tz)}")
    click.echo(f"  created:   {format_when(info.created_at, tz)}")
    if info.started_at or info.finished_at:
        click.echo(f"  started:   {format_when(info.started_at, tz)}; "
                   f"finished: {format_when(info.finished_at, tz)}")
    click.echo("  posts:")
    for pid in info.post_ids:
        if pid in info.excluded_ids:
            click.echo(f"    {pid:>5}  (excluded)")
            continue
        post = posts.get(pid)
        title = post.title if post else "?"
        lang = post.language if post else "?"
        click.echo(f"    {pid:>5}  [{lang}] {title}")
    langs = sorted({p.language for p in posts.values()})
    click.echo(f"  post languages: {', '.join(langs) or '-'}")
    _print_texts(info)
    per = _recipients_per_language(app)
    click.echo("  recipients per language: " + (", ".join(
        f"{choice} {per.get(choice, 0)}" for choice in app.config.newsletter.choices) or "-"))
    if info.total is not None:
        click.echo(f"  enqueued: {info.total}")


def _by_language(app: App, option: str, items: Sequence[str], example: str) -> dict[str, str]:
    """``LANG=VALUE`` options → ``{lang: value}``, each language a configured one."""
    out: dict[str, str] = {}
    for item in items:
        lang, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"{option} {item!r}: write it as LANG=…, like {example}")
        if lang not in app.config.newsletter.languages:
            raise InputError(f"{option} {item!r}: {lang!r} is not one of the configured "
                             f"languages ({', '.join(app.config.newsletter.languages)})")
        if lang in out:
            raise InputError(f"{option}: {lang} is given twice")
        out[lang] = value
    return out


def _read_notes(app: App, note_files: Sequence[str]) -> dict[str, str]:
    """``--note-file LANG=FILE`` → the notes' text (an empty file removes a note)."""
    notes = {}
    for lang, file in _by_language(app, "--note-file", note_files, "en=intro.txt").items():
        if not file:
            raise InputError(f"--note-file {lang}=: name the file, like {lang}=intro.txt")
        try:
            notes[lang] = Path(file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--note-file {lang}={file}: cannot read: {exc}") from None
    return notes


def _print_texts(info: EditionInfo) -> None:
    for lang, subject in sorted(info.subjects.items()):
        click.echo(f"  subject ({lang}): {subject}")
    for lang, note in sorted(info.notes.items()):
        click.echo(f"  note ({lang}): {note[:70]}{'…' if len(note) > 70 else ''}")


@editions.command()
@click.option("--posts", "posts_opt", metavar="1,2,…", help="These posts (default: every unsent).")
@click.option("--note-file", "note_files", multiple=True, metavar="LANG=FILE",
              help="An intro note for one language, from a UTF-8 text file. Repeatable.")
@click.option("--subject", "subject_opts", multiple=True, metavar="LANG=TEXT",
              help="The subject for one language (default: derived). Repeatable.")
@click.option("--kind", type=click.Choice(["digest", "per-post"]), default="digest",
              show_default=True)
@click.option("--include-sent", is_flag=True,
              help="Confirm that --posts may name posts already sent or in another edition: "
                   "readers get them again.")
@pass_app
def create(app: App, posts_opt: str | None, note_files: Sequence[str],
           subject_opts: Sequence[str], kind: str, include_sent: bool) -> None:
    """Create a draft edition (then: schedule, approve)."""
    from mailer.editions.store import describe_uses

    notes = _read_notes(app, note_files)
    subjects = _by_language(app, "--subject", subject_opts, "en='Our week'")
    ids = parse_post_list(posts_opt) if posts_opt is not None else None
    reused = describe_uses(app.editions.post_uses(ids)) if ids and include_sent else None
    eid = app.editions.create(ids, kind=kind, notes=notes, subjects=subjects,
                              include_sent=include_sent)
    if eid is None:
        click.echo("nothing to put in an edition: no stored post is waiting")
        return
    info = app.editions.info(eid)
    if reused is not None:
        click.echo(f"warning: {reused}; readers will get these posts again", err=True)
    click.echo(f"edition {eid} created (draft) with {len(info.post_ids)} post(s): "
               f"{', '.join(map(str, info.post_ids))}")


@editions.command()
@click.argument("edition_id", type=int)
@click.option("--subject", "subject_opts", multiple=True, metavar="LANG=TEXT",
              help="A new subject for one language; LANG= (empty) goes back to the derived "
                   "one. Repeatable.")
@click.option("--note-file", "note_files", multiple=True, metavar="LANG=FILE",
              help="A new intro note for one language from a UTF-8 file; an empty file "
                   "removes it. Repeatable.")
@pass_app
def edit(app: App, edition_id: int, subject_opts: Sequence[str],
         note_files: Sequence[str]) -> None:
    """Change an edition's subject or intro note per language, until it is sent (a change
    withdraws an approval)."""
    subjects = _by_language(app, "--subject", subject_opts, "en='Our week'")
    notes = _read_notes(app, note_files)
    if not subjects and not notes:
        raise InputError("give --subject LANG=TEXT or --note-file LANG=FILE")
    before = app.editions.info(edition_id)
    info = app.editions.edit(edition_id, subjects=subjects, notes=notes)
    click.echo(f"edition {edition_id} edited ({info.state.value})")
    _print_texts(info)
    if before.approved_at is not None and info.approved_at is None:
        click.echo(f"the approval was withdrawn: approve again with "
                   f"newsletter editions approve {edition_id}")


@editions.command()
@click.argument("edition_id", type=int)
@click.option("--at", "at_text", required=True, metavar="'YYYY-MM-DD HH:MM'",
              help="Local send time, in --tz.")
@click.option("--tz", "tz_opt", default=None, help="Time zone of --at (default: schedule.timezone).")
@pass_app
def schedule(app: App, edition_id: int, at_text: str, tz_opt: str | None) -> None:
    """Set (or change) an edition's send time."""
    at = parse_local_time(at_text, tz_opt or _tz(app))
    now = app.clock()
    if at <= now:
        raise EditionError(f"{format_when(at, tz_opt or _tz(app))} is in the past "
                           f"(now {format_when(now, tz_opt or _tz(app))})", edition_id=edition_id)
    app.editions.schedule(edition_id, at)
    announce_scheduled(app, edition_id)
    info = app.editions.info(edition_id)
    click.echo(f"edition {edition_id} {info.state.value}: {format_when(at, _tz(app))}")
    if app.config.newsletter.require_approval and info.approved_at is None:
        click.echo(f"approval is required: newsletter editions approve {edition_id}")
    elif not app.config.newsletter.require_approval:
        click.echo("it goes out at that time without an approval "
                   "([newsletter] require_approval = false)")


def _simple(name: str, action: str, help_text: str) -> None:
    @editions.command(name=name, help=help_text)
    @click.argument("edition_id", type=int)
    @pass_app
    def command(app: App, edition_id: int) -> None:
        getattr(app.editions, action)(edition_id)
        info = app.editions.info(edition_id)
        when = (f", sends {format_when(info.scheduled_at, _tz(app))}"
                if info.state in (EditionState.SCHEDULED, EditionState.APPROVED) else "")
        if info.state is EditionState.APPROVED and info.scheduled_at is None:
            when = ", sends at the daemon's next tick (no time set)"
        click.echo(f"edition {edition_id} {info.state.value}{when}")
        if name == "approve" and not app.config.newsletter.require_approval:
            click.echo(APPROVAL_OFF)


_simple("approve", "approve", "Approve an edition for sending at its time (now if held/missed).")
_simple("hold", "hold", "Hold an edition: it will not be sent until resumed or approved.")
_simple("pause", "pause", "Pause an edition while it is sending (no more messages go out).")
_simple("resume", "resume", "Resume a paused or held edition.")


@editions.command()
@click.argument("edition_id", type=int)
@pass_app
def cancel(app: App, edition_id: int) -> None:
    """Cancel an edition; its posts become unsent again. While sending, no more mail goes out
    (what is in flight finishes) and the rest shows as cancelled in the report."""
    from mailer.pipeline.send import cancel_edition

    rows = cancel_edition(app, edition_id)
    click.echo(f"edition {edition_id} cancelled"
               + (f"; {rows:,} message(s) not sent" if rows else ""))


@editions.command()
@click.argument("edition_id", type=int)
@click.argument("post_id", type=int)
@pass_app
def exclude(app: App, edition_id: int, post_id: int) -> None:
    """Leave one post out of an edition (withdraws an approval)."""
    app.editions.exclude(edition_id, post_id)
    click.echo(f"edition {edition_id}: post {post_id} excluded")


@editions.command()
@click.argument("edition_id", type=int)
@click.argument("post_ids", type=int, nargs=-1, required=True)
@pass_app
def reorder(app: App, edition_id: int, post_ids: Sequence[int]) -> None:
    """Put these posts first, in this order; the rest follow (withdraws an approval)."""
    app.editions.reorder(edition_id, list(post_ids))
    info = app.editions.info(edition_id)
    click.echo(f"edition {edition_id}: order {' '.join(map(str, info.post_ids))}")


@editions.command("test-send")
@click.argument("edition_id", type=int)
@click.option("--to", "to_addrs", required=True, multiple=True, metavar="ADDR",
              help="Where the test goes; repeat for several (never logged or stored).")
@click.option("--language", default=None, help="Language choice (default: the first one).")
@pass_app
def test_send(app: App, edition_id: int, to_addrs: Sequence[str], language: str | None) -> None:
    """Send the real rendered mail, marked as a test, outside the outbox and its totals.

    With the Maildir transport it is written to [delivery] test_maildir, never among the
    subscribers' mail."""
    from mailer.editions.testsend import check_test_addresses
    from mailer.pipeline.send import send_test

    choice = language or app.config.newsletter.default_language
    if choice not in app.config.newsletter.choices:
        raise InputError(f"--language {choice!r}: choose from "
                         f"{', '.join(app.config.newsletter.choices)}")
    addresses = check_test_addresses(to_addrs)
    sent = asyncio.run(send_test(app, edition_id, addresses, choice))
    where = (f" (Maildir {app.config.delivery.maildir_for('tests') / 'new'})"
             if app.config.delivery.transport == "maildir" and app.transport_override is None
             else "")
    refused = 0
    for copy in sent:
        # The editor typed these addresses: echoing them to the same terminal is no leak.
        if copy.accepted:
            click.echo(f"test of edition {edition_id} ({choice}) sent to {copy.address}{where}")
        else:
            refused += 1
            click.echo(f"test of edition {edition_id} ({choice}) to {copy.address} refused: "
                       f"{copy.result.code} {copy.result.reply}".rstrip(), err=True)
    if refused:
        raise SystemExit(1)


@editions.command()
@click.argument("edition_id", type=int)
@click.option("--top", type=int, default=None, help="Only the busiest N domains.")
@pass_app
def report(app: App, edition_id: int, top: int | None) -> None:
    """Per-domain outcomes of an edition: what qq.com or 163.com did with it."""
    from mailer.delivery.report import edition_report, format_report

    info = app.editions.info(edition_id)
    if info.state in (EditionState.DRAFT, EditionState.SCHEDULED, EditionState.APPROVED,
                      EditionState.HELD):
        raise EditionError(f"is {info.state.value}: nothing was sent yet", edition_id=edition_id)
    click.echo(f"edition {edition_id}: {info.state.value}; "
               f"finished {format_when(info.finished_at, _tz(app))}")
    report = edition_report(app.engine, edition_id, app.config.delivery, app.clock)
    click.echo(format_report(report, top=top, tz=_tz(app)))
