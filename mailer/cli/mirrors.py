"""Mirror commands: ``mirrors list | check | ooni | import`` (registered on import).

None of them needs the partition secret or the key file: they read config and ``mirror_state``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import click

from mailer.app import App
from mailer.cli.base import cli, pass_app
from mailer.config import MirrorSettings, MirrorSite
from mailer.errors import InputError, NewsletterError
from mailer.mirrors.exposure import exposure_for
from mailer.mirrors.health import CheckResult, unchecked_reason
from mailer.mirrors.importers import append_sites, parse_mirror_list, plan_import
from mailer.mirrors.ooni import blocked_mirrors, clear_blocked, mark_blocked, read_measurements
from mailer.mirrors.state import MirrorHealth, load_health
from mailer.pipeline.observe import flush_webhooks, mirrors_blocked
from mailer.pipeline.policy import check_mirrors

__all__ = ["mirrors_group"]


def _when(value: datetime | None) -> str:
    """Every time with its zone: stored times are UTC, and an operator may be anywhere."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def _state(settings: MirrorSettings, site: MirrorSite, h: MirrorHealth | None) -> str:
    if (why := unchecked_reason(settings, site)) is not None:
        return why
    if h is None:
        return "unchecked"
    if h.last_check_at is None:  # only OONI or the sends have written about it
        health = "unchecked"
    elif not h.healthy:
        health = f"DOWN ({h.consecutive_failures} failures)"
    elif h.last_error:  # failing, not yet down_after times: not "up"
        health = (f"FAILING ({h.consecutive_failures} of {settings.down_after} failures "
                  "before down)")
    else:
        health = "up"
    settings_countries = settings.countries
    parts = [health]
    blocked = sorted(h.blocked or {})
    if blocked:
        hit = [cc for cc in blocked if cc in settings_countries]
        parts.append("BLOCKED in " + ",".join(blocked) + ("" if hit else " (not a target country)"))
    return "; ".join(parts)


@cli.group("mirrors")
def mirrors_group() -> None:
    """Mirror domains: status, health checks, OONI reports, imports of public lists."""


@mirrors_group.command("list")
@pass_app
def list_command(app: App) -> None:
    """Each mirror's status, health, last check, first/last sent and how widely."""
    settings = app.config.mirrors
    health = load_health(app.engine)
    exposure = exposure_for(app.engine)
    if not settings.sites:
        click.echo("no [[mirrors.sites]] configured")
    for site in settings.sites:
        h = health.get(site.url)
        e = exposure.get(site.url)
        click.echo(f"{site.url}")
        click.echo(f"    {site.status} {site.kind}; {_state(settings, site, h)}")
        dates = []
        if site.added:
            dates.append(f"added {site.added}")
        if site.retired:
            dates.append(f"retired {site.retired}")
        if dates:
            click.echo(f"    {', '.join(dates)}")
        click.echo(f"    last check {_when(h.last_check_at if h else None)}, "
                   f"last ok {_when(h.last_ok_at if h else None)}"
                   + (f", error: {h.last_error}" if h and h.last_error else ""))
        click.echo(f"    first sent {_when(h.first_sent_at if h else None)}, "
                   f"last sent {_when(h.last_sent_at if h else None)}"
                   + (f", {e.recipients} recipients over {e.editions} editions" if e else ""))
    for warning in settings.warnings:
        click.echo(f"warning: {warning}", err=True)


@mirrors_group.command("check")
@pass_app
def check_command(app: App) -> None:
    """Fetch the canary path on every active and reserve mirror; exit 1 if any failed."""
    async def check() -> Sequence[CheckResult]:
        results = await check_mirrors(app, hand_out=False)
        await flush_webhooks(app)
        return results

    results = asyncio.run(check())
    for r in results:
        state = "up" if r.healthy else "DOWN"
        click.echo(f"{'ok  ' if r.ok else 'FAIL'} {r.url} [{state}] {r.detail}")
    for site in app.config.mirrors.sites:
        if site.status != "retired" and (why := unchecked_reason(app.config.mirrors, site)):
            click.echo(f"skip {site.url}: {why}")
    if not results:
        click.echo("no active or reserve mirrors to check")
    failed = sum(not r.ok for r in results)
    if failed:
        # NewsletterError's exit code is 1; run_cli prints it as the one error line.
        raise NewsletterError(f"{failed} of {len(results)} mirror checks failed")


@mirrors_group.command("ooni")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--country", default="CN", show_default=True, help="Two-letter probe country.")
@pass_app
def ooni_command(app: App, file: Path, country: str) -> None:
    """Mark mirrors that OONI web_connectivity measurements (JSONL) show blocked."""
    measurements, skipped = read_measurements(file.read_bytes())
    settings = app.config.mirrors
    report = blocked_mirrors(measurements, settings.sites, country, skipped)
    click.echo(f"{report.measurements} measurements read, {len(report.skipped)} lines skipped")
    for line, why in report.skipped[:10]:
        click.echo(f"    line {line}: {why}")
    newly = mark_blocked(app.engine, report.blocked, country)
    mirrors_blocked(app, newly, country.upper())
    asyncio.run(flush_webhooks(app))
    exposure = exposure_for(app.engine)
    for site in settings.sites:
        n = report.measured.get(site.url, 0)
        if not n:
            continue
        m = report.blocked.get(site.url)
        if m is None:
            click.echo(f"ok       {site.url}: {n} measurements in {country.upper()}, "
                       "latest accessible")
            continue
        e = exposure.get(site.url)
        seen = (f"; sent to {e.recipients} recipients in {e.editions} editions since "
                f"{_when(e.first_sent_at)}" if e else "; never sent")
        mark = "BLOCKED" if site.url in newly else "blocked"
        click.echo(f"{mark:8} {site.url} ({site.status}): {m.blocking} at "
                   f"{_when(m.start_time)}{seen}")
    if newly:
        click.echo(f"{len(newly)} mirror(s) newly marked blocked in {country.upper()}; "
                   "they are no longer handed out")


@mirrors_group.command("unblock")
@click.argument("url")
@click.option("--country", default="CN", show_default=True, help="Two-letter probe country.")
@pass_app
def unblock_command(app: App, url: str, country: str) -> None:
    """Clear a mirror's OONI block mark for a country (it is handed out again if active)."""
    if not clear_blocked(app.engine, url.rstrip("/"), country):
        raise InputError(f"{url} is not marked blocked in {country.upper()}")
    click.echo(f"{url}: block mark for {country.upper()} cleared")


@mirrors_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--as", "status", type=click.Choice(["reserve", "active"]), default="reserve",
              show_default=True, help="Status of the mirrors added.")
@click.option("--write", is_flag=True, help="Append them to the config file (validated first).")
@pass_app
def import_command(app: App, file: Path, status: str, write: bool) -> None:
    """Add our origins' mirrors from a Bypass Censorship v2 or RSF sites.json list."""
    found = parse_mirror_list(file.read_bytes(), source=str(file))
    plan = plan_import(app.config.mirrors, found, "active" if status == "active" else "reserve",
                       app.clock().date(), note=f"imported from {file.name}")
    for site in plan.added:
        click.echo(f"+ {site.url} ({site.kind}, {site.status})")
    for site in plan.existing:
        click.echo(f"= {site.url} (already listed, {site.status})")
    for url, why in plan.skipped:
        click.echo(f"! {url}: {why}")
    click.echo(f"{len(plan.added)} to add, {len(plan.existing)} already listed, "
               f"{plan.other_sites} entries for other sites ignored")
    if not plan.added:
        return
    if not write:
        click.echo("nothing written; run again with --write to append them to "
                   f"{app.config.path}")
        return
    if not app.config.path.exists():
        raise InputError("config file is gone", source=str(app.config.path))
    append_sites(app.config.path, plan.added, app.environ)
    click.echo(f"appended {len(plan.added)} [[mirrors.sites]] to {app.config.path}; "
               "a running daemon reloads them")
