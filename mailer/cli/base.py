"""The ``newsletter`` command group and the shared plumbing every command module uses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from functools import update_wrapper
from typing import Any, TypeVar

import click
import sqlalchemy.exc

from mailer.app import App, config_path_from
from mailer.config import parse_listen
from mailer.errors import NewsletterError, StorageError
from mailer.logs import LOG_FORMATS, LogFormat, configure_logging

__all__ = ["cli", "metrics_listen_for", "metrics_listen_option", "on_signals", "pass_app", "run_cli",
           "stop_event_on_signals"]

F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", default=None,
              help="Config file (default: $NEWSLETTER_CONFIG or ./newsletter.toml).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail (never addresses).")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
              help="Log lines as text, or one JSON object a line for log shippers.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool, log_format: LogFormat) -> None:
    """Censorship-resistant bilingual newsletter: feeds in, encrypted list, mirrored mail out."""
    configure_logging(verbose=verbose, fmt=log_format)
    ctx.obj = {"config_path": config_path_from(config_path, os.environ), "verbose": verbose}


metrics_listen_option = click.option(
    "--metrics-listen", metavar="HOST:PORT", default=None,
    help="Serve /metrics here instead of [metrics] listen (one port per process on a host; "
         "0 picks a free port).")


def metrics_listen_for(app: App, option: str | None) -> tuple[str, int] | None:
    """``--metrics-listen`` if given, else ``[metrics] listen``, else no endpoint."""
    if option is None:
        return app.config.metrics.listen
    try:
        return parse_listen(option)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--metrics-listen") from None


def pass_app(fn: F) -> F:
    """Load and validate the config once, then hand the command an ``App``."""

    @click.pass_context
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        obj = ctx.find_object(dict)
        assert obj is not None
        if "app" not in obj:
            app = obj["app"] = App.from_path(obj["config_path"])
            # Give pooled connections back when the command ends (PostgreSQL warns otherwise).
            ctx.find_root().call_on_close(
                lambda: app.engine.dispose() if "engine" in app.__dict__ else None)
        return ctx.invoke(fn, obj["app"], *args, **kwargs)

    return update_wrapper(wrapper, fn)  # type: ignore[return-value]


@contextlib.contextmanager
def on_signals(stop: Callable[[str], object]) -> Iterator[None]:
    """SIGTERM/SIGINT call ``stop(name)`` on the running loop: the command finishes what is in
    flight instead of dying mid-message. The CLI owns signals; the pipeline installs none."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop, sig.name)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def stop_event_on_signals() -> contextlib.AbstractContextManager[asyncio.Event]:
    """An event that SIGTERM/SIGINT set, for ``send_edition(..., stop=...)``."""

    @contextlib.contextmanager
    def scope() -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        with on_signals(lambda _name: event.set()):
            yield event

    return scope()


def storage_error(exc: OSError | sqlalchemy.exc.OperationalError) -> StorageError:
    """A full disk or an I/O error, from the OS or from the database driver, as one line.

    SQLAlchemy's own text carries the statement and its parameters (an address's ciphertext, a
    blind index); only the driver's first line is kept: SQLite says "database or disk is full"
    (SQLITE_FULL) or "disk I/O error", PostgreSQL "could not extend file ...".
    """
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else "failed"
        return StorageError(f"database write failed: {reason}")
    where = f": {exc.filename}" if exc.filename else ""
    return StorageError(f"{exc.strerror or type(exc).__name__}{where}")


def run_cli(argv: list[str] | None = None) -> int:
    """Run the CLI; a ``NewsletterError`` becomes one line on stderr and its exit code, and so
    does a disk or database I/O error (ENOSPC, EIO, SQLITE_FULL), which no command can go on
    from: exit 2 like any other storage fault, never a traceback.
    """
    try:
        # Without standalone mode click returns a command's ctx.exit(n) code instead of exiting.
        rv = cli.main(args=argv, prog_name="newsletter", standalone_mode=False)
        if isinstance(rv, int) and not isinstance(rv, bool):
            return rv
    except NewsletterError as exc:
        click.echo(f"newsletter: error: {exc}", err=True)
        return exc.exit_code
    except (OSError, sqlalchemy.exc.OperationalError) as exc:
        error = storage_error(exc)
        click.echo(f"newsletter: error: {error}", err=True)
        return error.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort:
        click.echo("newsletter: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2
    return 0
