"""Subscriber list speed: import and stream N subscribers against the raw crypto floor.

    .venv/bin/python -m bench.subscribers [--rows 1000000] [--db sqlite|postgres]

* import: ``import_file`` of an N-row CSV (validate, normalise, blind index, AES-256-GCM,
  batched inserts, progress rows) into a fresh database, against the floor: the raw AES-GCM
  seal + keyed-hash cost of the same rows, measured in this run on this machine.
* stream: ``stream_active`` decrypting all N rows (in a child process so its peak RSS is its
  own), against the floor of raw AES-GCM opens of the same ciphertexts.

Targets (issue 3): import <= 60 s and <= 3x floor; stream <= 10 s with peak RSS < 300 MB.
No address is printed: only counts and times.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["main"]

DOMAINS = ["qq.com", "163.com", "126.com", "gmail.com", "outlook.com", "yahoo.com.tw",
           "sina.com", "foxmail.com", "example.org", "proton.me"]
LANGS = ["zh-Hans", "zh-Hant", "en", "zh-Hans+en", ""]


def make_csv(path: Path, rows: int, seed: int = 7) -> None:
    rnd = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        fh.write("email,language\n")
        for i in range(rows):
            local = f"{rnd.choice(['li', 'wang', 'zhang', 'chen', 'reader'])}.{i:x}{rnd.randrange(1000)}"
            fh.write(f"{local}@{rnd.choice(DOMAINS)},{rnd.choice(LANGS)}\n")


def floor_seal(path: Path) -> tuple[float, float]:
    """Raw AES-GCM seal + keyed BLAKE2b of every address in the file, read into memory first."""
    with path.open(encoding="utf-8") as fh:
        next(fh)
        addrs = [line.split(",", 1)[0].encode() for line in fh]
    aead = AESGCM(os.urandom(32))
    key = os.urandom(32)
    blake = hashlib.blake2b
    urandom = os.urandom
    t0, c0 = time.perf_counter(), time.process_time()
    for i, a in enumerate(addrs):
        nonce = urandom(12)
        aead.encrypt(nonce, a, b"email:" + i.to_bytes(8, "big"))
        blake(a, key=key, digest_size=32).digest()
    return time.perf_counter() - t0, time.process_time() - c0


def parse_reference(path: Path) -> float:
    """CPU time of the least any import must do before the crypto: read the CSV with the
    stdlib reader and validate each address (the import's own ``validate``)."""
    from subscribers.normalise import validate

    c0 = time.process_time()
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        for row in reader:
            validate(row[0])
    return time.process_time() - c0


def floor_open(rows: int) -> tuple[float, float]:
    aead = AESGCM(os.urandom(32))
    items = []
    for i in range(rows):
        nonce = os.urandom(12)
        ad = b"email:" + i.to_bytes(8, "big")
        items.append((nonce, aead.encrypt(nonce, b"reader.%d@qq.com" % i, ad), ad))
    t0, c0 = time.perf_counter(), time.process_time()
    for nonce, ct, ad in items:
        aead.decrypt(nonce, ct, ad).decode()
    return time.perf_counter() - t0, time.process_time() - c0


def storage_reference(url: str, rows: int, *, indexed: bool = True) -> tuple[float, float]:
    """Insert ``rows`` pre-built rows (random ids, indexes and ciphertexts of realistic size)
    into a fresh copy of the same schema, a transaction per import batch, by the import's own
    bulk path (``insert_rows``) and in its order (ids and indexes ascending within a batch):
    what the database alone costs, with no parsing, validation or crypto.

    With ``indexed=False`` the table has the same columns and no index or key at all: no
    import that stores rows can cost less than that."""
    from sqlalchemy import Column, MetaData, Table

    from mailer.db import open_engine
    from subscribers.importexport import IMPORT_BATCH
    from subscribers.schema import subscribers as t
    from subscribers.store import bulk_connection, insert_rows

    engine = open_engine(url, create=indexed)
    if not indexed:
        Table(t.name, MetaData(), *(Column(c.name, c.type, nullable=c.nullable)
                                    for c in t.columns)).create(engine)
    now = datetime.now(UTC)
    wall = cpu = 0.0
    with bulk_connection(engine) as conn:  # as the import: one connection, a transaction per batch
        proc = t.c.created_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        stamp = proc(now) if proc else now
        for start in range(0, rows, IMPORT_BATCH):
            n = min(IMPORT_BATCH, rows - start)
            ids = sorted(int.from_bytes(os.urandom(8), "big") >> 1 for _ in range(n))
            indexes = sorted(os.urandom(32) for _ in range(n))
            batch = [(sid, index, os.urandom(48), "k0123abcd", "en", "active", stamp, stamp, stamp)
                     for sid, index in zip(ids, indexes, strict=True)]
            t0, c0 = time.perf_counter(), time.process_time()
            with conn.begin():
                insert_rows(conn, batch)
            wall += time.perf_counter() - t0  # includes the commit
            cpu += time.process_time() - c0
    engine.dispose()
    return wall, cpu


def _store(url: str, key_path: Path) -> object:
    from mailer.db import open_engine
    from subscribers.codec import Codec
    from subscribers.keys import KeyRing
    from subscribers.settings import ListSettings
    from subscribers.store import SubscriberStore

    ring = KeyRing.load(key_path) if key_path.exists() else KeyRing.create(key_path)
    return SubscriberStore(open_engine(url), Codec(ring), lambda: datetime.now(UTC),
                           ListSettings(bilingual=("zh-Hans+en",)))


def peak_rss_mb() -> float:
    """This process's own peak RSS. Not ``ru_maxrss``: Linux carries that across exec, so a
    child would report its parent's peak (the import's) as its own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stream_child(url: str, key_path: str) -> None:
    """Run in a child: stream every active subscriber and print time, count, peak RSS."""
    store = _store(url, Path(key_path))
    before = peak_rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for r in store.stream_active(batch_size=2000):  # type: ignore[attr-defined]
        n += len(r.address) > 0
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = peak_rss_mb()
    print(f"{elapsed:.3f} {cpu:.3f} {n} {rss:.1f} {before:.1f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench.subscribers")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--stream-child", nargs=2, metavar=("URL", "KEY"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stream_child:
        stream_child(*args.stream_child)
        return

    from subscribers.importexport import import_file

    with tempfile.TemporaryDirectory(prefix="bench-subscribers-") as tmp:
        folder = Path(tmp)
        csv_path = folder / "list.csv"
        make_csv(csv_path, args.rows)
        if args.db == "sqlite":
            url = f"sqlite:///{folder / 'bench.db'}"
            schema = None
        else:
            from sqlalchemy import create_engine, text

            admin_url = os.environ.get("NEWSLETTER_TEST_POSTGRES_URL",
                                       "postgresql+psycopg://postgres@127.0.0.1:5432/test")
            schema = f"bench_{os.getpid()}"
            admin = create_engine(admin_url)
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            url = f"{admin_url}?options=-csearch_path%3D{schema}"
        key_path = folder / "keys.json"
        try:
            store = _store(url, key_path)
            floor_in, floor_in_cpu = floor_seal(csv_path)
            t0, c0 = time.perf_counter(), time.process_time()
            report = import_file(store, csv_path, confirmed=True)  # type: ignore[arg-type]
            took_in, took_in_cpu = time.perf_counter() - t0, time.process_time() - c0
            import_rss = peak_rss_mb()
            floor_out, floor_out_cpu = floor_open(report.inserted)

            def fresh_database(name: str) -> str:
                """An empty database beside the import's, for a reference."""
                if schema is None:
                    return f"sqlite:///{folder / f'{name}.db'}"
                with admin.begin() as conn:
                    conn.execute(text(f'CREATE SCHEMA "{schema}_{name}"'))
                return url.replace(f"search_path%3D{schema}", f"search_path%3D{schema}_{name}")

            store_wall, store_cpu = storage_reference(fresh_database("ref"), report.inserted)
            bare_wall, _ = storage_reference(fresh_database("bare"), report.inserted,
                                             indexed=False)
            parse_cpu = parse_reference(csv_path)
            child = subprocess.run(
                [sys.executable, "-m", "bench.subscribers", "--stream-child", url, str(key_path)],
                capture_output=True, text=True)
            if child.returncode:
                sys.exit(f"the streaming child failed:\n{child.stderr}")
            took_out, out_cpu, streamed, rss, base_rss = map(float, child.stdout.split())
        finally:
            if schema is not None:
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}_ref" CASCADE'))
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}_bare" CASCADE'))
                admin.dispose()
    print(f"subscribers benchmark: {args.rows:,} rows on {args.db}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(wall times suffer from load; CPU times less so)")
    print(f"  import : wall {took_in:7.2f} s, cpu {took_in_cpu:7.2f} s "
          f"({report.inserted:,} inserted, {report.problem_count} problems; "
          f"peak RSS of the importing process {import_rss:.0f} MB)")
    print(f"           floor wall {floor_in:.2f} s, cpu {floor_in_cpu:.2f} s; ratio wall "
          f"{took_in / floor_in:.1f}, cpu {took_in_cpu / floor_in_cpu:.1f}  "
          "(targets: <= 60 s, <= 3x)")
    print(f"           storage reference (same rows pre-built, same schema, bulk insert only): "
          f"wall {store_wall:.2f} s, cpu {store_cpu:.2f} s; import / (floor + storage) "
          f"cpu {took_in_cpu / (floor_in_cpu + store_cpu):.1f}")
    bound = floor_in + parse_cpu + bare_wall
    print(f"           lower bound of any import: floor + csv.reader and validate "
          f"({parse_cpu:.2f} s cpu) + storage with no index at all (wall {bare_wall:.2f} s) "
          f"= {bound:.2f} s, {bound / floor_in:.1f}x the floor")
    print(f"  stream : wall {took_out:7.2f} s, cpu {out_cpu:7.2f} s ({int(streamed):,} "
          f"decrypted); peak RSS {rss:.0f} MB ({base_rss:.0f} MB before streaming)")
    print(f"           floor wall {floor_out:.2f} s, cpu {floor_out_cpu:.2f} s; ratio wall "
          f"{took_out / floor_out:.1f}, cpu {out_cpu / floor_out_cpu:.1f}  "
          "(targets: <= 10 s, < 300 MB)")

if __name__ == "__main__":
    main()
