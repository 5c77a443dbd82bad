"""Sender workers on PostgreSQL: throughput with 1, 2 and 4 ``newsletter worker`` processes.

    .venv/bin/python -m bench.workers [--subscribers 10000] [--workers 1,2,4] [--connections 8]

Against Postfix's ``smtp-sink`` on 127.0.0.1 (install the ``postfix`` package for its tools; the
service is not started). The reference, in the same run against the same sink: ``smtp-source
-s 4 -l SIZE -m N`` with SIZE = our message size. Each worker count sends its own edition of the
same list (encrypted store -> outbox -> render once per variant -> personalise -> SMTP), from
real worker processes started with ``--once``.

Two rates per worker count: *wall* (process start to last exit, including interpreter start-up
and rendering) and *send window* (first to last ``sent_at`` in the outbox). The ratio uses the
send window. No address is printed: only counts, rates and sizes.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, func, select, text

from bench import postfix, posts

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("NEWSLETTER_TEST_POSTGRES_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def seed(app: object, n: int) -> None:
    from subscribers.lifecycle import Event

    langs = ("zh-Hans", "zh-Hant", "en")
    domains = ("qq.com", "163.com", "126.com", "gmail.com", "example.org")
    for start in range(0, n, 2000):
        rows = [(f"r{i}@{domains[i % len(domains)]}", langs[i % 3])
                for i in range(start, min(n, start + 2000))]
        app.subscribers.add_batch(rows, Event.IMPORT_CONFIRMED)  # type: ignore[attr-defined]


def message_size(app: object, edition_id: int) -> int:
    """One personalised message's size, to give smtp-source the same -l."""
    from mailer.delivery.outbox import OutboxRow
    from mailer.pipeline import personaliser, prepare_edition

    prepared = prepare_edition(app, edition_id)  # type: ignore[arg-type]
    rid = next(iter(app.subscribers.stream_active_ids()))  # type: ignore[attr-defined]
    rcpt = app.subscribers.get_recipients([rid])[rid]  # type: ignore[attr-defined]
    row = OutboxRow(edition_id, rid, rcpt.language, "example.org", 1, None)
    return len(personaliser(app, prepared)(row, rcpt))  # type: ignore[arg-type]


def run_workers(config: Path, workers: int, log_dir: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-c", "from mailer.cli import main; main()", "--config", str(config),
            "worker", "--once", "--poll", "0.2s", "--lease", "1m"]
    t0 = time.perf_counter()
    procs = []
    for i in range(workers):
        with (log_dir / f"w{workers}-{i}.log").open("wb") as err:
            procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                          stderr=err))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a worker failed (exit {codes}); logs in {log_dir}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, default=10_000)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--connections", type=int, default=8, help="per worker")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.workers.split(",")]
    if not postfix.available():
        raise SystemExit("smtp-sink/smtp-source not found: apt-get install postfix (tools only)")

    from mailer.app import App
    from mailer.pipeline.send import start_edition
    from mailer.schema import outbox

    schema = f"bench_{secrets.token_hex(4)}"
    admin = create_engine(ADMIN_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{ADMIN_URL}?options=-csearch_path%3D{schema}"
    port = postfix.free_port()
    sink = postfix.start_sink(port)
    tmp = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    try:
        app = App.from_path(postfix.write_config(tmp, port, args.connections, database=url), environ={})
        t0 = time.perf_counter()
        seed(app, args.subscribers)
        print(f"seeded {args.subscribers} subscribers in {time.perf_counter() - t0:.1f}s")
        post_ids = posts.add_posts(app.engine, 3, paragraphs=12)
        results = []
        for w in counts:
            eid = app.editions.create(post_ids, include_sent=True)  # each run resends the same posts
            assert eid is not None
            app.editions.approve(eid)
            start_edition(app, eid)
            size = message_size(app, eid)
            wall = run_workers(app.config.path, w, tmp)
            with app.engine.connect() as conn:
                first, last, sent = conn.execute(
                    select(func.min(outbox.c.sent_at), func.max(outbox.c.sent_at),
                           func.count(outbox.c.sent_at)).where(outbox.c.edition_id == eid)).one()
            window = (last - first).total_seconds() if sent > 1 else float("nan")
            ref = postfix.reference(port, size, min(args.subscribers, 20_000))
            results.append((w, sent, wall, window, size, ref))
            print(f"{w} worker(s): {sent} sent; wall {wall:.1f}s ({sent / wall:.0f} msg/s); "
                  f"send window {window:.1f}s ({sent / window:.0f} msg/s); "
                  f"smtp-source {ref:.0f} msg/s at {size} B; ratio {sent / window / ref:.3f}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        load = os.getloadavg()[0]
        print(f"\nlargest worker peak RSS {peak:.0f} MB; load average {load:.1f}")
        print("| workers | sent | wall msg/s | send-window msg/s | smtp-source msg/s | ratio |")
        print("| --- | --- | --- | --- | --- | --- |")
        for w, sent, wall, window, _size, ref in results:
            print(f"| {w} | {sent} | {sent / wall:.0f} | {sent / window:.0f} | {ref:.0f} | "
                  f"{sent / window / ref:.3f} |")
        app.engine.dispose()
    finally:
        sink.kill()
        sink.wait()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
