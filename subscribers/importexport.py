"""Streaming CSV import, plaintext export (on request), and encrypted backup / restore.

Import reads the file twice: a first pass hashes its bytes (the resume key, so the file's
content is never stored) and checks whether it is UTF-8; the second parses and inserts in
batches. Each batch commits together with the progress row, so an interrupted import resumes
at the first line not yet committed. Problems are reported by line number only.

An encrypted backup is a stream of AES-256-GCM frames under a key derived from the key file's
master secret, bound to their position and to the header, with a final frame marking the end:
reordering, truncation or another key file all fail loudly.
"""

from __future__ import annotations

import base64
import codecs
import csv
import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select, update

from subscribers.confirmations import ConfirmationQueue
from subscribers.errors import InputError, WrongKeyError
from subscribers.lifecycle import TIMESTAMP_COLUMN, Event, SubscriberState
from subscribers.normalise import InvalidAddress, validate
from subscribers.schema import import_progress
from subscribers.store import SubscriberStore, bulk_connection

__all__ = [
    "BACKUP_MAGIC",
    "IMPORT_BATCH",
    "ImportReport",
    "RowProblem",
    "cell",
    "detect_encoding",
    "export_csv",
    "export_encrypted",
    "import_file",
    "is_backup",
    "parse_csv",
    "restore_backup",
    "uncell",
    "write_binary",
    "write_text",
]

log = logging.getLogger("newsletter.subscribers.import")

BACKUP_MAGIC = b"NEWSLETTER-SUBSCRIBERS-BACKUP 1\n"
_FRAME_ROWS = 2000
_LEN = struct.Struct(">I")
_DONE = -1

# Rows per import transaction. Random ids and blind indexes put each row at a random page of
# their B-trees, and on SQLite every commit writes each page it touched to the WAL: for a list
# of a million, a commit of 20,000 rows rewrote most of the index pages, 50 times over. At
# 100,000 the storage cost halves (bench/README.md); an interrupted import redoes at most one
# batch, and the batch in memory stays under 60 MB.
IMPORT_BATCH = 100_000


@dataclass(frozen=True)
class RowProblem:
    line: int
    reason: str


@dataclass
class ImportReport:
    """Counts and problems of one import; never addresses."""

    source: str
    encoding: str = ""
    rows: int = 0
    inserted: int = 0
    existing: int = 0
    changed: int = 0
    suppressed: int = 0
    restored: int = 0
    skipped: int = 0  # backup rows already present (or forgotten since)
    forgotten: int = 0  # forgotten blind indexes restored from a backup
    problems: list[RowProblem] = field(default_factory=list)
    problem_count: int = 0
    resumed_from: int = 0  # the last line committed by an earlier, interrupted run
    confirmations: int = 0  # confirmation mails queued by this run (--send-confirmations)

    def counts(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("problems")
        return d


# --------------------------------------------------------------------------- pure parsing


def detect_encoding(path: Path) -> tuple[str, str]:
    """(encoding, sha256) of a file: UTF-8 (BOM or not) when it decodes, else GB18030.

    GB18030 is a superset of GBK and GB2312, the encodings Excel writes on Chinese Windows.
    """
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    utf8 = True
    first = b""
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            if not first:
                first = chunk[:3]
            digest.update(chunk)
            if utf8:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError:
                    utf8 = False
    if utf8:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            utf8 = False
    if first.startswith(codecs.BOM_UTF8):
        return "utf-8-sig", digest.hexdigest()
    return ("utf-8" if utf8 else "gb18030"), digest.hexdigest()


def parse_csv(lines: Iterable[str], source: str, choices: tuple[str, ...],
              default_language: str) -> Iterator[tuple[int, str, str] | RowProblem]:
    """Yield ``(line, delivery address, language)`` for good rows and ``RowProblem`` for bad.

    The header must name ``email``; ``language`` is optional. A bad header is an
    ``InputError`` naming the file and line 1.
    """
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError("the file is empty; expected a header 'email,language'",
                         source=source, line=1) from None
    except csv.Error as exc:
        raise InputError(f"not a CSV file ({exc})", source=source, line=1) from None
    names = [h.strip().lower().lstrip("\ufeff") for h in header]
    if "email" not in names:
        raise InputError("the header must name an 'email' column (and optionally 'language')",
                         source=source, line=1)
    col_email = names.index("email")
    col_lang = names.index("language") if "language" in names else None
    by_lower = {c.lower(): c for c in choices}
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield RowProblem(reader.line_num, f"unreadable CSV ({exc})")
            continue
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        raw = uncell(row[col_email]) if col_email < len(row) else ""
        try:
            address = validate(raw)
        except InvalidAddress:
            yield RowProblem(line, "bad address")
            continue
        lang = (row[col_lang].strip() if col_lang is not None and col_lang < len(row) else "")
        if not lang:
            lang = default_language
        elif lang.lower() in by_lower:
            lang = by_lower[lang.lower()]
        else:
            yield RowProblem(line, f"unknown language {lang[:20]!r}")
            continue
        yield line, address, lang


# --------------------------------------------------------------------------- import


def is_backup(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(len(BACKUP_MAGIC)) == BACKUP_MAGIC


def _progress(store: SubscriberStore, source_hash: str) -> tuple[int, dict[str, Any]]:
    with store.engine.connect() as conn:
        row = conn.execute(select(import_progress.c.line, import_progress.c.report)
                           .where(import_progress.c.source_hash == source_hash)).first()
    if row is None or row.line == _DONE:
        return 0, {}
    return int(row.line), json.loads(row.report or "{}")


def _save_progress(conn: Any, source_hash: str, line: int, report: ImportReport,
                   now: datetime) -> None:
    values = {"line": line, "report": json.dumps(report.counts()), "updated_at": now}
    res = conn.execute(update(import_progress)
                       .where(import_progress.c.source_hash == source_hash).values(**values))
    if res.rowcount == 0:
        conn.execute(import_progress.insert().values(source_hash=source_hash, **values))


def import_file(store: SubscriberStore, path: Path | str, *, confirmed: bool = False,
                reactivate: bool = False, encoding: str | None = None, batch_size: int = IMPORT_BATCH,
                on_problem: Callable[[RowProblem], None] | None = None,
                on_batch: Callable[[ImportReport], None] | None = None,
                keep_problems: int = 1000,
                confirmations: ConfirmationQueue | None = None) -> ImportReport:
    """Import a CSV (``email,language``) or restore an encrypted backup, resumably.

    ``batch_size`` rows commit together (see ``IMPORT_BATCH``). With ``confirmations`` (and not
    ``confirmed``), the confirmation mail of each row left pending (new, or pending from an
    earlier import) is queued in the transaction that imports it, so an interrupted import
    queues each one once; ``serve`` sends them.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise InputError("file not found", source=source)
    if is_backup(path):
        return restore_backup(store, path)
    detected, source_hash = detect_encoding(path)
    enc = encoding or detected
    try:
        codecs.lookup(enc)
    except LookupError:
        raise InputError(f"unknown encoding {enc!r}", source=source) from None
    if enc.replace("_", "-").lower() in ("utf-8", "utf8") and detected == "utf-8-sig":
        enc = "utf-8-sig"
    resume_line, counts = _progress(store, source_hash)
    report = ImportReport(source=source, encoding=enc, resumed_from=resume_line)
    for key in ("rows", "inserted", "existing", "changed", "suppressed", "problem_count",
                "confirmations"):
        setattr(report, key, int(counts.get(key, 0)))
    event = Event.IMPORT_CONFIRMED if confirmed else Event.IMPORT
    settings = store.settings
    seen: set[bytes] = set()  # 64-bit prefixes of the blind indexes met in this run
    index_of = store.index_of

    def problem(p: RowProblem) -> None:
        report.problem_count += 1
        if len(report.problems) < keep_problems:
            report.problems.append(p)
        if on_problem is not None:
            on_problem(p)

    batch: list[tuple[str, str]] = []
    indexes: list[bytes] = []
    last_line = resume_line

    def flush(upto: int) -> None:
        with conn.begin():
            if batch:
                res = store.add_batch(batch, event, reactivate=reactivate, conn=conn,
                                      indexes=indexes)
                report.inserted += res.inserted
                report.existing += res.existing
                report.changed += res.changed
                report.suppressed += res.suppressed
                if confirmations is not None and not confirmed:
                    for sid in res.pending_ids:
                        confirmations.request(sid, conn=conn)
                    report.confirmations += len(res.pending_ids)
            _save_progress(conn, source_hash, upto, report, store.clock())
        batch.clear()
        indexes.clear()
        if on_batch is not None:
            on_batch(report)

    with bulk_connection(store.engine) as conn, \
            path.open("r", encoding=enc, errors="strict", newline="") as fh:
        rows = parse_csv(fh, source, settings.choices, settings.default_language)
        try:
            for item in rows:
                if isinstance(item, RowProblem):
                    if item.line > resume_line:
                        problem(item)
                    continue
                line, address, lang = item
                if line <= resume_line:
                    continue
                report.rows += 1
                index = index_of(address)
                prefix = index[:8]
                if prefix in seen:
                    problem(RowProblem(line, "duplicate of an earlier line"))
                    continue
                seen.add(prefix)
                batch.append((address, lang))
                indexes.append(index)
                last_line = line
                if len(batch) >= batch_size:
                    flush(last_line)
        except UnicodeDecodeError:
            raise InputError(f"the file is not valid {enc}; pass --encoding (e.g. gb18030)",
                             source=source) from None
        flush(_DONE)
    log.info("import %s: %d rows, %d new, %d already listed, %d problems", path.name,
             report.rows, report.inserted, report.existing, report.problem_count)
    return report


# --------------------------------------------------------------------------- export


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): an address
# such as ``=cmd|'/Ccalc'!A0@example.net`` is valid (RFC 5322 atext), and the form accepts it.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: str) -> str:
    """A CSV cell a spreadsheet shows as text: a leading ``'`` before a formula character
    (OWASP's advice), and before a ``'`` too, so that ``uncell`` restores every value."""
    return f"'{value}" if value.startswith((*_FORMULA_START, "'")) else value


def uncell(value: str) -> str:
    """The value ``cell`` wrote: an export read back imports the same addresses."""
    if value.startswith("'") and value[1:].startswith((*_FORMULA_START, "'")):
        return value[1:]
    return value


def export_csv(store: SubscriberStore, out: IO[str], *,
               states: Iterable[SubscriberState] = (SubscriberState.ACTIVE,)) -> int:
    """Plaintext ``email,language`` for the given states. The caller must have asked for it.
    Cells go through ``cell``, so no address runs as a spreadsheet formula."""
    wanted = {SubscriberState(s).value for s in states}
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["email", "language"])
    n = 0
    for row, address in store.stream_all():
        if row.state in wanted:
            writer.writerow([cell(address), cell(row.language)])
            n += 1
    return n


def _backup_key(store: SubscriberStore, salt: bytes) -> AESGCM:
    secret = store.codec.ring.derive(b"backup")
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                       info=b"newsletter/backup-file").derive(secret))


def _frame_ad(header: bytes, index: int, final: bool) -> bytes:
    return hashlib.sha256(header).digest() + struct.pack(">Q?", index, final)


def _ts(value: Any) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return str(value.isoformat())


def export_encrypted(store: SubscriberStore, out: IO[bytes]) -> int:
    """Write every row (ids, states, timestamps, addresses) sealed for this key file only."""
    salt = os.urandom(16)
    header = json.dumps({"salt": base64.b64encode(salt).decode(),
                         "created": datetime.now(UTC).isoformat(timespec="seconds")}).encode()
    aead = _backup_key(store, salt)
    out.write(BACKUP_MAGIC + header + b"\n")
    n = 0
    frame: list[dict[str, Any]] = []
    index = 0

    def write(final: bool) -> None:
        nonlocal index
        plain = json.dumps(frame, separators=(",", ":")).encode()
        nonce = os.urandom(12)
        ct = aead.encrypt(nonce, plain, _frame_ad(header, index, final))
        out.write(_LEN.pack(len(ct)) + nonce + ct)
        index += 1
        frame.clear()

    for row, address in store.stream_all():
        frame.append({
            "id": row.id, "a": address, "l": row.language, "s": row.state,
            "c": _ts(row.created_at), "sc": _ts(row.state_changed_at),
            "ca": _ts(row.confirmed_at), "ua": _ts(row.unsubscribed_at),
            "ba": _ts(row.bounced_at), "xa": _ts(row.complained_at),
        })
        n += 1
        if len(frame) >= _FRAME_ROWS:
            write(False)
    for gone in store.stream_forgotten():  # no address: the blind index that keeps it away
        frame.append({"f": base64.b64encode(gone.email_index).decode(), "s": gone.state,
                      "fa": _ts(gone.forgotten_at)})
        if len(frame) >= _FRAME_ROWS:
            write(False)
    write(True)
    return n


def _read_frames(fh: IO[bytes], header: bytes, aead: AESGCM, source: str) -> Iterator[bytes]:
    index = 0
    while True:
        head = fh.read(_LEN.size)
        if len(head) < _LEN.size:
            raise InputError("the backup is truncated (no final frame)", source=source)
        (length,) = _LEN.unpack(head)
        nonce = fh.read(12)
        ct = fh.read(length)
        if len(nonce) < 12 or len(ct) < length:
            raise InputError("the backup is truncated", source=source)
        for final in (False, True):
            try:
                plain = aead.decrypt(nonce, ct, _frame_ad(header, index, final))
            except InvalidTag:
                continue
            yield plain
            if final:
                if fh.read(1):
                    raise InputError("data after the backup's final frame", source=source)
                return
            break
        else:
            raise WrongKeyError(f"{source}: this backup was not written with this key file "
                                "(or it is damaged)")
        index += 1


def _parse_ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def restore_backup(store: SubscriberStore, path: Path) -> ImportReport:
    """Restore rows from ``export_encrypted`` losslessly: same ids, states and timestamps.

    Rows already present (same id or same address) are skipped, so restoring twice is harmless
    and a restore cut short can simply be run again. A wrong key file fails on the first frame,
    before anything is written.
    """
    source = str(path)
    report = ImportReport(source=source, encoding="backup")
    with path.open("rb") as fh:
        fh.read(len(BACKUP_MAGIC))
        header = fh.readline().rstrip(b"\n")
        try:
            salt = base64.b64decode(json.loads(header)["salt"])
        except (ValueError, KeyError, TypeError):
            raise InputError("the backup header is damaged", source=source) from None
        aead = _backup_key(store, salt)
        for plain in _read_frames(fh, header, aead, source):
            rows = []
            gone = []
            for item in json.loads(plain):
                if "f" in item:
                    gone.append({"email_index": base64.b64decode(item["f"]), "state": item["s"],
                                 "forgotten_at": _parse_ts(item["fa"])})
                    continue
                sid = int(item["id"])
                state = SubscriberState(item["s"])
                address = str(item["a"])
                rows.append({
                    "id": sid, "email_index": store.index_of(address),
                    "email_ct": store.codec.seal(sid, address.encode()),
                    "key_id": store.codec.current_key_id, "language": item["l"],
                    "state": state.value, "created_at": _parse_ts(item["c"]),
                    "state_changed_at": _parse_ts(item["sc"]),
                    TIMESTAMP_COLUMN[SubscriberState.ACTIVE]: _parse_ts(item["ca"]),
                    "unsubscribed_at": _parse_ts(item["ua"]),
                    "bounced_at": _parse_ts(item["ba"]),
                    "complained_at": _parse_ts(item["xa"]),
                })
            if gone:
                with store.engine.begin() as conn:
                    report.forgotten += store.insert_forgotten(conn, gone)
            if not rows:
                continue
            report.rows += len(rows)
            with store.engine.begin() as conn:
                inserted = store.insert_raw(conn, rows)
            report.restored += inserted
            report.skipped += len(rows) - inserted
    return report


def write_text(path: Path, writer: Callable[[IO[str]], int]) -> int:
    """Write a plaintext export with mode 0600 (it holds addresses)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        return writer(fh)


def write_binary(path: Path, writer: Callable[[IO[bytes]], int]) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        return writer(fh)
