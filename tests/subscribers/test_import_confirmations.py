"""``subscribers import`` without ``--confirmed``: it says the rows stay pending and nothing is
sent; ``--send-confirmations`` queues their mails in the durable queue, which ``serve`` sends."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import create_engine, func, select

from subscribers.schema import confirmations
from tests.subscribers.support import run, serve, write_config


def _queued(folder: Path) -> int:
    engine = create_engine(f"sqlite:///{folder / 'data' / 'newsletter.db'}")
    with engine.connect() as conn:
        count = int(conn.execute(select(func.count()).select_from(confirmations)).scalar_one())
    engine.dispose()
    return count


def _outbox(folder: Path) -> list[Path]:
    box = folder / "data" / "outbox" / "new"
    return sorted(box.glob("*")) if box.is_dir() else []


def test_import_says_pending_then_queues_confirmations(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert run(config, "keys", "init").code == 0
    (tmp_path / "list.csv").write_text("email,language\nnew.one@qq.com,zh-Hans\n"
                                       "new.two@163.com,en\n", encoding="utf-8")
    plain = run(config, "subscribers", "import", "list.csv")
    assert plain.code == 0, plain.err
    assert "the 2 new rows are pending: nothing was sent" in plain.out
    assert "--send-confirmations" in plain.out
    assert _queued(tmp_path) == 0
    assert _outbox(tmp_path) == []

    # Run again with the flag: the rows are pending from the first run, and get their mails.
    sent = run(config, "subscribers", "import", "list.csv", "--send-confirmations")
    assert sent.code == 0, sent.err
    assert "queued 2 confirmation mails" in sent.out
    assert "new.one" not in sent.out + sent.err  # counts only, never addresses
    assert _queued(tmp_path) == 2
    assert _outbox(tmp_path) == []  # queued, not sent: the queue's worker sends

    with serve(config):
        deadline = time.monotonic() + 30
        while len(_outbox(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    mails = [m.read_bytes() for m in _outbox(tmp_path)]
    assert len(mails) == 2
    assert any(b"new.one@qq.com" in m for m in mails)
    assert any(b"new.two@163.com" in m for m in mails)
    assert _queued(tmp_path) == 0


def test_send_confirmations_with_confirmed_is_a_usage_error(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert run(config, "keys", "init").code == 0
    (tmp_path / "list.csv").write_text("email,language\nx@qq.com,en\n", encoding="utf-8")
    result = run(config, "subscribers", "import", "list.csv", "--confirmed",
                 "--send-confirmations")
    assert result.code == 2
    assert "--send-confirmations" in result.err
