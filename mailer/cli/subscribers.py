"""Subscriber commands: ``keys init|rotate``,
``subscribers import|export|find|suppress|forget|reindex|mailin|count``, ``serve``.

Output names subscribers by count or id only; problems in an import are reported by line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailer.app import App
from mailer.cli.base import cli, metrics_listen_for, metrics_listen_option, pass_app
from mailer.errors import InputError
from mailer.progress import task_progress

__all__ = ["keys", "serve", "subscribers_group"]


@cli.group("keys")
def keys() -> None:
    """The key file that encrypts the subscriber list."""


@keys.command("init")
@pass_app
def keys_init(app: App) -> None:
    """Create the key file named in the config (refuses to overwrite one)."""
    from subscribers.keys import KeyRing

    path = app.config.storage.key_file
    KeyRing.create(path, app.config.storage.passphrase)
    click.echo(f"created key file {path} (mode 0600)"
               f"{', sealed with the passphrase' if app.config.storage.passphrase else ''}.")
    click.echo("Back it up somewhere safe: without it the subscriber list cannot be read.")


@keys.command("rotate")
@click.option("--batch-size", default=2000, show_default=True, help="Rows re-encrypted per commit.")
@pass_app
def keys_rotate(app: App, batch_size: int) -> None:
    """Add a new key, re-encrypt every row in batches (resumable), retire unused old keys."""
    from subscribers.rotation import rotate

    store = app.subscribers
    with task_progress("re-encrypted") as progress:
        result = rotate(store, batch_size=batch_size, progress=progress,
                        settle=app.config.storage.rotation_settle)
    verb = "resumed" if result.resumed else "started"
    click.echo(f"rotation {verb}: new key {result.new_key_id}; {result.reencrypted} rows "
               f"re-encrypted; retired {', '.join(result.retired) or 'no keys'}")


@cli.group("subscribers")
def subscribers_group() -> None:
    """The encrypted subscriber list."""


@subscribers_group.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--confirmed", is_flag=True, help="The addresses already confirmed (opt-in done).")
@click.option("--encoding", default=None, help="Input encoding (default: UTF-8 or GB18030, detected).")
@click.option("--reactivate", is_flag=True,
              help="Also re-activate unsubscribed, bounced and complained addresses.")
@click.option("--batch-size", type=int, default=None, hidden=True,
              help="Rows per transaction (default: subscribers.importexport.IMPORT_BATCH).")
@click.option("--send-confirmations", is_flag=True,
              help="Queue a confirmation mail for each pending row ('serve' sends them).")
@pass_app
def subscribers_import(app: App, file: Path, confirmed: bool, encoding: str | None,
                       reactivate: bool, batch_size: int | None,
                       send_confirmations: bool) -> None:
    """Import FILE: a CSV with header ``email,language`` (language optional), or a backup.

    Without --confirmed the new rows stay pending and nothing is sent; --send-confirmations
    queues their confirmation mails in the durable confirmation queue."""
    from subscribers.importexport import IMPORT_BATCH, RowProblem, import_file

    if confirmed and send_confirmations:
        raise click.UsageError("--send-confirmations is for pending rows; --confirmed rows "
                               "are active already and need no confirmation")

    def problem(p: RowProblem) -> None:
        click.echo(f"{file}:{p.line}: {p.reason}", err=True)

    total = _data_lines(file)
    with task_progress("imported rows") as progress:
        report = import_file(app.subscribers, file, confirmed=confirmed, reactivate=reactivate,
                             encoding=encoding, batch_size=batch_size or IMPORT_BATCH,
                             on_problem=problem,
                             on_batch=lambda r: progress(min(r.rows, total), total),
                             confirmations=app.signup.queue if send_confirmations else None)
    if report.encoding == "backup":
        click.echo(f"restored {report.restored} subscribers from the encrypted backup "
                   f"({report.skipped} already present)")
        return
    resumed = f" (resumed after line {report.resumed_from})" if report.resumed_from else ""
    click.echo(f"imported {report.inserted} new, {report.existing} already listed "
               f"({report.changed} changed, {report.suppressed} left suppressed), "
               f"{report.problem_count} problems{resumed}; encoding {report.encoding}")
    if send_confirmations:
        click.echo(f"queued {report.confirmations} confirmation mails for the pending rows; "
                   "'newsletter serve' sends them (the confirmation queue)")
    elif not confirmed and report.inserted:
        click.echo(f"the {report.inserted} new rows are pending: nothing was sent, and they "
                   "receive no edition until confirmed. Run again with --send-confirmations to "
                   "queue a confirmation mail for each, or with --confirmed if they opted in "
                   "already")
    if report.problem_count:
        raise InputError(f"{report.problem_count} rows were not imported (see the lines above); "
                         "the other rows were", source=str(file))


def _data_lines(file: Path) -> int:
    """Rows after the header, for the progress display (0 when unreadable: it shows counts)."""
    try:
        with file.open("rb") as fh:
            return max(0, sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b"")) - 1)
    except OSError:
        return 0


@subscribers_group.command("export")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--plaintext", is_flag=True, help="Write addresses in clear (CSV). Handle with care.")
@click.option("--encrypted", is_flag=True, help="Write a backup that only this key file opens.")
@pass_app
def subscribers_export(app: App, file: Path, plaintext: bool, encrypted: bool) -> None:
    """Export the list to FILE: --encrypted backup, or --plaintext CSV of active subscribers."""
    from subscribers.importexport import export_csv, export_encrypted, write_binary, write_text

    if plaintext == encrypted:
        raise InputError("choose --encrypted (a backup only the key file opens) or --plaintext "
                         "(addresses in clear)", source=str(file))
    store = app.subscribers
    if encrypted:
        n = write_binary(file, lambda fh: export_encrypted(store, fh))
        click.echo(f"wrote an encrypted backup of {n} subscribers to {file}; "
                   "restore it with 'newsletter subscribers import'")
        return
    click.echo(f"WARNING: {file} will hold subscribers' addresses in clear. Anyone who gets it "
               "can put them at risk; delete it as soon as you are done. A cell that starts "
               "with = + - @, a tab or a CR is written with a leading ' so that a spreadsheet "
               "shows it as text instead of running it.", err=True)
    n = write_text(file, lambda fh: export_csv(store, fh))
    click.echo(f"wrote {n} active subscribers to {file} (mode 0600)")


@subscribers_group.command("reindex")
@click.option("--dry-run", is_flag=True, help="Show what would change, and change nothing.")
@pass_app
def subscribers_reindex(app: App, dry_run: bool) -> None:
    """Rebuild the blind indexes after changing normalise_gmail_dots or case_insensitive_domains.

    Rows that become the same address are merged into one; a reader suppressed under any
    spelling stays suppressed. One transaction: interrupted, nothing changes.
    """
    from subscribers.reindex import reindex

    with task_progress("read") as progress:
        report = reindex(app.open_subscribers(check_rules=False), apply=not dry_run,
                         progress=progress)
    click.echo(f"folding rules: {report.rules_before or '(none recorded)'} -> {report.rules_after}")
    for m in report.merges:
        click.echo(f"merged: kept subscriber {m.kept} ({m.state}), removed "
                   f"{', '.join(map(str, m.dropped))}")
    for sid in report.erased:
        click.echo(f"erased: subscriber {sid} is the address of a forgotten reader")
    if report.forgotten:
        click.echo(f"{report.forgotten} forgotten addresses keep their old blind index "
                   "(their address is gone)")
    verb = "would change" if dry_run else "changed"
    click.echo(f"{report.rows} subscribers: {verb} {report.changed} blind indexes, "
               f"{len(report.merges)} merges{' (dry run: nothing written)' if dry_run else ''}")


def _addresses_from_stdin() -> list[tuple[int, str]]:
    """(line, text) of every non-empty line on standard input: addresses are read there, never
    taken as arguments, so that they stay out of shell history and the process list."""
    return [(n, text.strip()) for n, text in enumerate(sys.stdin, start=1) if text.strip()]


@subscribers_group.command("find")
@pass_app
def subscribers_find(app: App) -> None:
    """Look up the addresses on standard input (one per line) without decrypting the list.

    Prints, per input line, the subscriber's id, state and language, or that the address is
    not listed or was forgotten. The address itself is never printed.
    """
    store = app.subscribers
    for line, text in _addresses_from_stdin():
        found = store.lookup(text)
        if found is not None:
            click.echo(f"line {line}: subscriber {found.id}, {found.state}, {found.language}, "
                       f"since {found.state_changed_at:%Y-%m-%d %H:%M} UTC")
        elif (gone := store.forgotten_state(text)) is not None:
            click.echo(f"line {line}: forgotten (kept suppressed: {gone})")
        else:
            click.echo(f"line {line}: not listed")


@subscribers_group.command("suppress")
@click.argument("ids", nargs=-1, type=int, required=True)
@click.option("--as", "state", type=click.Choice(["unsubscribed", "bounced", "complained"]),
              default="unsubscribed", show_default=True,
              help="The reason: a reader's request by mail, a bounce, a complaint.")
@pass_app
def subscribers_suppress(app: App, ids: tuple[int, ...], state: str) -> None:
    """Stop mailing subscribers by id (find them with 'subscribers find'). Mail already queued
    for them is not sent; imports will not re-activate them."""
    from subscribers.lifecycle import Event

    store = app.subscribers
    event = {"unsubscribed": Event.UNSUBSCRIBE, "bounced": Event.BOUNCE,
             "complained": Event.COMPLAINT}[state]
    # Through the lifecycle: a reader who complained stays complained whatever the operator types.
    changed = 0
    for sid in dict.fromkeys(ids):
        before = store.get(sid)
        changed += before is not None and store.apply(sid, event) is not before.state
    unknown = sum(store.get(sid) is None for sid in dict.fromkeys(ids))
    click.echo(f"{changed} subscribers now {state}"
               + (f"; {unknown} of the ids were not listed" if unknown else ""))


@subscribers_group.command("forget")
@click.argument("ids", nargs=-1, type=int)
@click.option("--stdin", "from_stdin", is_flag=True,
              help="Also forget the addresses on standard input, one per line.")
@click.option("--suppressed-for", metavar="DURATION", default=None,
              help="Also forget every unsubscribed, bounced or complained subscriber whose "
                   "state is older than this (e.g. 90d).")
@pass_app
def subscribers_forget(app: App, ids: tuple[int, ...], from_stdin: bool,
                       suppressed_for: str | None) -> None:
    """Erase subscribers by id (or by address, with --stdin): their rows and sealed addresses
    are deleted; a keyed hash of the address stays, so imports cannot bring them back. The
    subscribe form still can."""
    from mailer.config import parse_duration

    if not ids and not from_stdin and suppressed_for is None:
        raise InputError("name subscriber ids, or give --stdin or --suppressed-for DURATION")
    age = None
    if suppressed_for is not None:
        try:
            age = parse_duration(suppressed_for)
        except ValueError as exc:
            raise InputError(f"--suppressed-for: {exc}") from None
    store = app.subscribers
    wanted = list(ids)
    if from_stdin:
        for line, text in _addresses_from_stdin():
            found = store.lookup(text)
            if found is None:
                click.echo(f"line {line}: not listed", err=True)
            else:
                wanted.append(found.id)
    by_id = store.forget(wanted) if wanted else 0
    by_age = store.forget_suppressed(age) if age is not None else 0
    missing = len(set(wanted)) - by_id
    click.echo(f"forgot {by_id + by_age} subscribers: their addresses are erased, and a keyed "
               "hash keeps each one suppressed"
               + (f"; {missing} of the ids were not listed" if missing else ""))


@subscribers_group.command("mailin")
@click.option("--maildir", type=click.Path(path_type=Path), default=None,
              help="The Maildir to read (default: [inbound] maildir).")
@pass_app
def subscribers_mailin(app: App, maildir: Path | None) -> None:
    """The older name of 'newsletter inbound' (it handles the unsubscribe mail and the rest:
    bounces, complaints, readers' commands)."""
    from mailer.cli.inbound import print_report
    from mailer.pipeline import unsubscribe_by_mail

    print_report(unsubscribe_by_mail(app, maildir))


@subscribers_group.command("count")
@click.option("--all-states", is_flag=True, help="Show every state, not only active.")
@pass_app
def subscribers_count(app: App, all_states: bool) -> None:
    """How many subscribers are active (or in each state)."""
    store = app.subscribers
    if all_states:
        for state, n in store.counts().items():
            click.echo(f"{state.value}: {n}")
        click.echo(f"forgotten: {store.count_forgotten()}")
        return
    click.echo(str(store.count()))


@cli.command("serve")
@click.option("--host", default=None, help="Address to bind (default: [web] host).")
@click.option("--port", default=None, type=int, help="Port (default: [web] port; 0 picks one).")
@metrics_listen_option
@pass_app
def serve(app: App, host: str | None, port: int | None, metrics_listen: str | None) -> None:
    """Serve the subscribe / confirm / unsubscribe pages (Starlette + uvicorn)."""
    import socket

    import uvicorn

    from mailer.pipeline.observe import start_metrics
    from mailer.web.public import build_public_app

    listen = metrics_listen_for(app, metrics_listen)
    host = host or app.config.web.host
    port = app.config.web.port if port is None else port
    app.config.delivery.require_secrets()  # it sends confirmations: a missing password fails now
    web = build_public_app(app)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    # Listening before we say so: a client that connects while uvicorn still starts up (its
    # lifespan starts the confirmation worker) waits in the backlog instead of being refused.
    sock.listen(2048)
    bound = sock.getsockname()[1]
    start_metrics(app, listen)  # in its own thread; the confirmation queue shows there too
    click.echo(f"serving on http://{host}:{bound}", err=True)
    sys.stderr.flush()
    # No access log: request paths carry unsubscribe tokens, and logs outlive their purpose.
    config = uvicorn.Config(web, access_log=False, log_level="warning", lifespan="on",
                            server_header=False, proxy_headers=False)
    uvicorn.Server(config).run(sockets=[sock])
