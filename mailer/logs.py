"""How the commands log: plain lines or JSON, and APScheduler's routine chatter at DEBUG.

APScheduler 3 logs every job run at INFO ("Running job ...", "Job ... executed successfully")
and every job it adds or removes; the daemon's tick alone makes four such lines a minute, and
an operator reading ``newsletter run`` lost the lines that matter among them (issue 22). Those
records are demoted to DEBUG (they show with ``-v``); its warnings and errors (a job missed,
a job that raised) keep their level. Our own INFO lines say what happened.

``--log-format json`` writes one JSON object a line for log shippers, with the ``extra``
fields the code passes (counts, edition ids, never an address).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

__all__ = ["LOG_FORMATS", "DemoteRoutine", "JsonFormatter", "LogFormat", "configure_logging",
           "quiet_private_loggers"]

LOG_FORMATS = ("text", "json")
LogFormat = Literal["text", "json"]

_HANDLER = "newsletter"

# Loggers whose INFO records are routine bookkeeping, not events an operator acts on.
ROUTINE_LOGGERS = ("apscheduler",)
# Loggers that write addresses below WARNING: aiosmtpd's ("sender: …", "recip: …" for every
# LMTP envelope). Their INFO and DEBUG lines are dropped even with ``-v``: no address in a log.
PRIVATE_LOGGERS = ("mail.log",)

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime",
                                                                             "taskName"}


class DemoteRoutine(logging.Filter):
    """On a handler: INFO (and below) from ``ROUTINE_LOGGERS`` becomes DEBUG, and is dropped
    unless ``verbose``. Warnings and errors pass untouched."""

    def __init__(self, verbose: bool, loggers: tuple[str, ...] = ROUTINE_LOGGERS) -> None:
        super().__init__()
        self.verbose = verbose
        self.loggers = loggers

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        if not any(record.name == n or record.name.startswith(n + ".") for n in self.loggers):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.verbose


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, and extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def quiet_private_loggers() -> None:
    """``PRIVATE_LOGGERS`` keep only warnings and errors, whoever configured logging."""
    for name in PRIVATE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(*, verbose: bool, fmt: LogFormat = "text",
                      stream: TextIO | None = None) -> None:
    """Set up the root logger once per command (replacing our earlier handler). Like
    ``logging.basicConfig``, it leaves logging alone when someone else (a test harness, an
    embedding program) already put a handler on the root logger."""
    quiet_private_loggers()
    if not verbose:
        # Schema checks run on every command; alembic's "Context impl SQLiteImpl" lines are noise.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    root = logging.getLogger()
    if any(h.get_name() != _HANDLER for h in root.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(DemoteRoutine(verbose))
    handler.set_name(_HANDLER)
    for old in list(root.handlers):
        if old.get_name() == _HANDLER:  # ours from an earlier command in this process
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
