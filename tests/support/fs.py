"""A real, tiny filesystem for disk-full tests: a tmpfs of a few hundred KB, mounted for one
test and unmounted after. Needs root (CI runs as root); skips otherwise."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["fill", "tiny_filesystem"]


@contextmanager
def tiny_filesystem(where: Path, size: str = "1m") -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(fs: Path, *, leave: int = 0) -> Path:
    """Take all but ``leave`` bytes of ``fs`` with one file; return it (delete it to free)."""
    st = os.statvfs(fs)
    filler = fs / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler
