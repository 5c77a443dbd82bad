"""SIGKILL ``subscribers import``, ``keys rotate`` and ``subscribers reindex`` part-way through the
real commands, run them again, and prove that nothing is lost or doubled: count the rows, decrypt
them all (``subscribers export --plaintext``) and compare with the input."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import DBAPIError

from subscribers.schema import subscribers as t
from tests.support.cli import ENV, newsletter, newsletter_cmd, write_config

N = 6000

pytestmark = pytest.mark.slow


def addresses() -> list[str]:
    # Upper-case local parts at qq.example fold together once the domain is case-insensitive.
    return [f"Reader{i:05d}@qq.example" if i % 2 else f"reader{i:05d}@d{i % 5}.example"
            for i in range(N)]


def key_ids(db_url: str) -> dict[str, int]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return {str(k): int(n) for k, n in
                    conn.execute(select(t.c.key_id, func.count()).group_by(t.c.key_id))}
    finally:
        engine.dispose()


def listed(config: Path) -> list[str]:
    """Every row decrypted, through the real export."""
    out = config.parent / "export.csv"
    out.unlink(missing_ok=True)
    done = newsletter(config, "subscribers", "export", "--plaintext", str(out))
    assert done.returncode == 0, done.stderr
    lines = out.read_text(encoding="utf-8").splitlines()[1:]
    return sorted(line.split(",")[0] for line in lines)


def start(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(newsletter_cmd(config, *args), env=ENV, cwd=config.parent, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_after_line(proc: subprocess.Popen[str], prefix: str) -> str:
    """SIGKILL as soon as the command reports a step (a committed batch, a page read)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith(prefix):
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            return line
    raise AssertionError(f"no {prefix!r} line: {proc.communicate()}")


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    path = write_config(tmp_path, db_url, 9, extra_storage='key_reload_every = "1s"')
    init = newsletter(path, "keys", "init")
    assert init.returncode == 0, init.stderr
    return path


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "list.csv"
    path.write_text("email,language\n" + "".join(f"{a},en\n" for a in addresses()),
                    encoding="utf-8")
    return path


def count(db_url: str) -> int:
    try:
        return sum(key_ids(db_url).values())
    except DBAPIError:  # the command has not created the table yet
        return 0


def test_a_killed_import_run_again_imports_each_address_once(
        config: Path, csv: Path, db_url: str) -> None:
    proc = start(config, "subscribers", "import", str(csv), "--confirmed", "--batch-size", "100")
    deadline = time.monotonic() + 120
    while count(db_url) < 100:  # the first batch is committed
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert count(db_url) < N  # it really died part-way

    again = newsletter(config, "subscribers", "import", str(csv), "--confirmed")
    assert again.returncode == 0, again.stderr
    assert "resumed after line" in again.stdout
    assert count(db_url) == N
    assert listed(config) == sorted(addresses())


def test_a_killed_rotation_run_again_reseals_every_row_once(
        config: Path, csv: Path, db_url: str) -> None:
    assert newsletter(config, "subscribers", "import", str(csv), "--confirmed").returncode == 0
    [old] = key_ids(db_url)
    line = kill_after_line(start(config, "keys", "rotate", "--batch-size", "500"), "re-encrypted")
    assert line.startswith("re-encrypted 500/")
    mixed = key_ids(db_url)
    assert old in mixed
    assert len(mixed) == 2  # part re-sealed, part not: killed mid-way
    assert sum(mixed.values()) == N

    again = newsletter(config, "keys", "rotate", "--batch-size", "500")
    assert again.returncode == 0, again.stderr
    assert "rotation resumed" in again.stdout
    assert f"retired {old}" in again.stdout
    [new] = key_ids(db_url)
    assert new != old
    assert key_ids(db_url)[new] == N
    assert listed(config) == sorted(addresses())


def test_a_killed_reindex_run_again_merges_each_pair_once(
        config: Path, csv: Path, db_url: str, tmp_path: Path) -> None:
    assert newsletter(config, "subscribers", "import", str(csv), "--confirmed").returncode == 0
    twins = [f"reader{i:05d}@qq.example" for i in range(1, 200, 2)]  # differ from Reader… by case
    extra = tmp_path / "twins.csv"
    extra.write_text("email,language\n" + "".join(f"{a},en\n" for a in twins), encoding="utf-8")
    assert newsletter(config, "subscribers", "import", str(extra), "--confirmed").returncode == 0
    assert count(db_url) == N + len(twins)
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("# case_insensitive_domains = [\"qq.com\", \"163.com\", \"126.com\"]",
                                   'case_insensitive_domains = ["qq.example"]'), encoding="utf-8")
    assert "case_insensitive_domains = [\"qq.example\"]" in config.read_text(encoding="utf-8")

    kill_after_line(start(config, "subscribers", "reindex"), "read ")
    assert count(db_url) == N + len(twins)  # one transaction: the kill changed nothing

    again = newsletter(config, "subscribers", "reindex")
    assert again.returncode == 0, again.stderr
    assert count(db_url) == N  # each pair merged into one row, nobody lost
    found = newsletter(config, "subscribers", "find", stdin="".join(a + "\n" for a in twins))
    assert found.returncode == 0, found.stderr
    assert found.stdout.count("subscriber ") == len(twins)
    kept = listed(config)
    assert len(kept) == len(set(kept)) == N
    folded = {a.lower() if a.endswith("@qq.example") else a for a in kept}
    assert folded == {a.lower() if a.endswith("@qq.example") else a for a in addresses()}
