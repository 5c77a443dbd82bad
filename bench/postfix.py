"""The SMTP throughput reference: Postfix's smtp-sink as the server, smtp-source as the client.

Debian's ``postfix`` package ships both; install it for the tools only and leave the service
stopped. ``bench.smtp`` and ``bench.workers`` send to the same sink and report their rate as a
ratio to ``reference()`` measured in the same run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["SINK", "SOURCE", "available", "free_port", "reference", "start_sink", "write_config"]

SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"


def available() -> bool:
    return os.access(SINK, os.X_OK) and os.access(SOURCE, os.X_OK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink(port: int, backlog: int = 512) -> subprocess.Popen[bytes]:
    """smtp-sink on loopback; as root it must be told which user to run as."""
    args = [SINK, "-u", "nobody"] if os.geteuid() == 0 else [SINK]
    proc = subprocess.Popen([*args, "-m", str(backlog), f"127.0.0.1:{port}", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("smtp-sink did not start")


def reference(port: int, size: int, count: int) -> float:
    """smtp-source's rate (msg/s): 4 sessions, messages of ``size`` bytes."""
    t0 = time.perf_counter()
    subprocess.run([SOURCE, "-s", "4", "-l", str(size), "-m", str(count),
                    "-f", "bench@example.org", "-t", "sink@example.org", f"127.0.0.1:{port}"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return count / (time.perf_counter() - t0)


def write_config(tmp: Path, port: int, connections: int, database: str | None = None) -> Path:
    """A config that sends to the sink: the same for every SMTP benchmark, so they compare."""
    database = database or f"sqlite:///{tmp / 'bench.db'}"
    path = tmp / "newsletter.toml"
    path.write_text(f"""
[newsletter]
from = "Digest <digest@example.org>"
public_url = "https://news.example.org"
languages = ["zh-Hans", "zh-Hant", "en"]

[storage]
database = "{database}"
key_file = "{tmp / "keys.json"}"

[delivery]
transport = "smtp"
commit_every = 256

[[delivery.relays]]
host = "127.0.0.1"
port = {port}
security = "none"
connections = {connections}
rate = 0

[mirrors]
origins = ["https://example.blogspot.com"]
per_recipient = 3

[[mirrors.sites]]
url = "https://m1.example.net"

[[mirrors.sites]]
url = "https://m2.example.net"

[[mirrors.sites]]
url = "https://m3.example.net"

[[mirrors.sites]]
url = "https://m4.example.net"

[images]
fetch = false
""", encoding="utf-8")
    return path
