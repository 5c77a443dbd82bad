"""The archive's I/O: write the built files into the folder, then ``rclone sync`` it to targets.

rclone (Debian's ``rclone``) speaks S3, R2, GCS, Azure, WebDAV, SFTP, Dropbox and 60 more; we
never write an uploader. Credentials stay in rclone's own config file, which ``--config`` names
(``[archive] rclone_config``); nothing secret is in our config or on rclone's command line.
One target failing does not stop the others: each gets its own :class:`TargetResult`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailer.config import ArchiveSettings, ArchiveTarget
from mailer.errors import InputError

__all__ = [
    "Runner",
    "TargetResult",
    "WriteReport",
    "publish",
    "rclone_command",
    "sync_target",
    "write_site",
]

# Runs one command: (argv, timeout in seconds) -> (exit status, what it said on stderr).
Runner = Callable[[Sequence[str], float], tuple[int, str]]


@dataclass(frozen=True)
class WriteReport:
    """What writing the site changed: only these files get a new mtime, so a sync sends only them."""

    written: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: int


def write_site(files: Mapping[str, bytes], folder: Path) -> WriteReport:
    """Make ``folder`` hold exactly ``files``: write what changed (atomically), delete the rest.

    An unchanged file is not touched, so its mtime stays and rclone (size + mtime) skips it."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for rel, data in files.items():
        path = folder / rel
        try:
            if path.read_bytes() == data:
                continue
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(tmp, 0o644)  # a public web page: readable by the web server that serves it
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(rel)
    removed = []
    for path in sorted(folder.rglob("*"), reverse=True):
        rel = path.relative_to(folder).as_posix()
        if path.name.startswith(".tmp-"):
            continue  # another writer's file on its way in
        if path.is_file() and rel not in files:
            path.unlink()
            removed.append(rel)
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return WriteReport(tuple(written), tuple(sorted(removed)), len(files) - len(written))


@dataclass(frozen=True)
class TargetResult:
    """One target's sync: it worked, or why not (rclone's last words, never a credential)."""

    remote: str
    url: str | None
    ok: bool
    detail: str


def rclone_command(settings: ArchiveSettings, folder: Path, target: ArchiveTarget) -> list[str]:
    """The rclone argv for one target (pure). ``sync`` makes the target equal to the folder."""
    argv = [settings.rclone]
    if settings.rclone_config is not None:
        argv += ["--config", str(settings.rclone_config)]
    # Few retries: the next run (the next send, or the mirrors job) retries a failed target,
    # and one dead host must not hold the others for minutes.
    argv += ["sync", "--retries", "2", "--low-level-retries", "3", "--contimeout", "20s",
             "--timeout", "60s", "--stats", "0", "--", f"{folder}{os.sep}", target.remote]
    return argv


def _run(argv: Sequence[str], timeout: float) -> tuple[int, str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found (install Debian's 'rclone', or set [archive] rclone)"
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s ([archive] timeout)"
    return done.returncode, done.stderr


def _last_words(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "Failed" in line or "error" in line]
    return (errors or lines or ["no output"])[-1][:400]


def sync_target(settings: ArchiveSettings, folder: Path, target: ArchiveTarget,
                run: Runner = _run) -> TargetResult:
    """``rclone sync`` the folder to one target; a failure is a result, never an exception."""
    status, stderr = run(rclone_command(settings, folder, target), settings.timeout)
    if status == 0:
        return TargetResult(target.remote, target.url, True, "synced")
    return TargetResult(target.remote, target.url, False, f"rclone exit {status}: {_last_words(stderr)}")


def publish(settings: ArchiveSettings, folder: Path, targets: Sequence[ArchiveTarget] | None = None,
            run: Runner = _run) -> list[TargetResult]:
    """Sync ``folder`` to every target (default: all of ``settings.targets``), one after another.

    Refuses a folder without the archive's root page: ``sync`` deletes what the source lacks, and
    an empty or wrong folder would wipe a good archive on every host."""
    if not (folder / "index.html").is_file():
        raise InputError(f"{folder} holds no built archive (no index.html): "
                         "run 'newsletter archive build' first")
    return [sync_target(settings, folder, t, run) for t in (settings.targets if targets is None else targets)]
