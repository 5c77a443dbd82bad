"""Alembic migrations: ``upgrade head`` builds exactly the code's schema on both backends, a
database from an earlier release upgrades with its rows intact, and a stale one is refused."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    func,
    select,
    text,
)
from sqlalchemy.types import TypeEngine

from mailer import migrate
from mailer.cli.base import run_cli
from mailer.db import open_engine
from mailer.errors import StorageError
from mailer.schema import metadata

# Revisions that were shipped in a release. The upgrade test starts from each one, so adding a
# revision for the next release is tested against the schema the field actually has.
RELEASED = ["0001", "0002"]


def _fresh(url: str) -> Engine:
    return open_engine(url, create=False)


def test_upgrade_head_on_an_empty_database_is_the_code_schema(db_url: str) -> None:
    engine = _fresh(db_url)
    before, after = migrate.upgrade(engine)
    assert before is None
    assert after == migrate.head_revision()
    assert migrate.schema_diff(engine) == []
    assert set(metadata.tables) <= _table_names(engine)
    engine.dispose()


def test_open_engine_builds_a_fresh_database_stamped_at_head(db_url: str) -> None:
    engine = open_engine(db_url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert migrate.schema_diff(engine) == []
    migrate.check_current(engine)
    engine.dispose()
    open_engine(db_url).dispose()  # reopening a current database is a no-op


def test_schema_diff_sees_a_missing_table(db_url: str) -> None:
    engine = open_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE mirror_exposure"))
    diff = migrate.schema_diff(engine)
    assert any(item[0] == "add_table" and item[1].name == "mirror_exposure" for item in diff)
    engine.dispose()


def test_foreign_tables_are_left_out_of_the_comparison(db_url: str) -> None:
    # APScheduler's job store lives in the same database; a migration must never drop it.
    engine = open_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE apscheduler_jobs (id VARCHAR(191) PRIMARY KEY)"))
    assert migrate.schema_diff(engine) == []
    engine.dispose()


def _value(type_: TypeEngine[object], n: int) -> object:
    if isinstance(type_, Boolean):
        return False
    if isinstance(type_, Integer):
        return n
    if isinstance(type_, DateTime):
        return datetime(2026, 11, 1, tzinfo=UTC)
    if isinstance(type_, LargeBinary):
        return b"\x00" * 8
    if isinstance(type_, String | Text):
        return "x"
    raise AssertionError(f"add a sample value for {type_!r}")


def _seed_every_table(engine: Engine) -> dict[str, int]:
    """Insert one row into every table as it exists at this revision (reflected, not ours)."""
    reflected = MetaData()
    reflected.reflect(engine)
    counts = {}
    with engine.begin() as conn:
        for table in reflected.sorted_tables:
            if table.name == "alembic_version":
                continue
            # Every id is 1, so foreign keys (posts.feed_id, outbox.edition_id, ...) resolve.
            row = {c.name: _value(c.type, 1) for c in table.columns}
            conn.execute(table.insert().values(**row))
            counts[table.name] = 1
    return counts


@pytest.mark.parametrize("release", RELEASED)
def test_upgrade_from_a_released_schema_keeps_its_rows(db_url: str, release: str) -> None:
    engine = _fresh(db_url)
    migrate.upgrade(engine, release)
    assert migrate.current_revision(engine) == release
    seeded = _seed_every_table(engine)
    assert "subscribers" in seeded
    assert "outbox" in seeded
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert migrate.schema_diff(engine) == []
    with engine.connect() as conn:
        for name, count in seeded.items():
            if name in metadata.tables:
                assert conn.execute(select(func.count()).select_from(
                    metadata.tables[name])).scalar_one() == count, name
    engine.dispose()


def test_every_revision_downgrades_and_upgrades_again(db_url: str) -> None:
    engine = _fresh(db_url)
    migrate.upgrade(engine)
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), "base")
    assert _table_names(engine) <= {"alembic_version"}
    migrate.upgrade(engine)
    assert migrate.schema_diff(engine) == []
    engine.dispose()


def test_a_database_at_an_unknown_revision_is_refused(db_url: str) -> None:
    engine = open_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    with pytest.raises(StorageError, match="does not know"):
        open_engine(db_url)
    with pytest.raises(StorageError):
        migrate.check_current(engine)
    engine.dispose()


def test_a_database_behind_head_is_refused_until_upgraded(db_url: str) -> None:
    revs = migrate.revisions()
    if len(revs) < 2:
        pytest.skip("only the baseline revision exists; 'behind' needs a second one")
    engine = _fresh(db_url)
    migrate.upgrade(engine, revs[-2])
    with pytest.raises(StorageError, match="newsletter db upgrade"):
        open_engine(db_url)
    migrate.upgrade(engine)
    open_engine(db_url).dispose()
    engine.dispose()


def _table_names(engine: Engine) -> set[str]:
    reflected = MetaData()
    reflected.reflect(engine)
    return set(reflected.tables)


CONFIG = """\
[newsletter]
from = "Digest <digest@example.org>"
public_url = "https://news.example.org"
languages = ["en"]

[storage]
database = "{url}"
key_file = "keys.json"

[mirrors]
origins = ["https://example.blogspot.com"]
"""


def test_cli_db_upgrade_current_and_check(db_url: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "newsletter.toml"
    cfg.write_text(CONFIG.format(url=db_url), encoding="utf-8")
    base = ["--config", str(cfg), "db"]
    assert run_cli([*base, "current"]) == 0
    assert "database: none" in capsys.readouterr().out
    assert run_cli([*base, "upgrade"]) == 0
    out = capsys.readouterr().out
    assert f"-> {migrate.head_revision()}" in out
    assert run_cli([*base, "upgrade"]) == 0
    assert "already at" in capsys.readouterr().out
    assert run_cli([*base, "current"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert run_cli([*base, "check"]) == 0
    engine = _fresh(db_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE mirror_exposure"))
    engine.dispose()
    assert run_cli([*base, "check"]) == 2
    assert "differs" in capsys.readouterr().err


def _open_at_once(url: str, barrier: Any, errors: Any) -> None:
    try:
        barrier.wait(timeout=60)
        open_engine(url).dispose()
    except BaseException as exc:  # reported to the parent, which fails the test
        errors.put(f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from None


@pytest.mark.parametrize("round_", range(3))
def test_processes_opening_a_new_sqlite_file_at_once_all_succeed(tmp_path: Path,
                                                                 round_: int) -> None:
    # Workers, the daemon and `serve` started together on a fresh machine: every one must find
    # a usable, stamped database, not "table already exists" or "database is locked".
    url = f"sqlite:///{tmp_path / f'new{round_}.db'}"
    ctx = multiprocessing.get_context("fork")
    n = 6
    barrier, errors = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_at_once, args=(url, barrier, errors)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    failures = [errors.get(timeout=5) for p in procs if p.exitcode != 0]
    assert failures == []
    engine = open_engine(url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    engine.dispose()
