"""Log setup for the CLI (the library itself adds no handlers).

Logs go to stderr, results to stdout. ``--log-format json`` emits one JSON object per
line with the record's context keys (``scene_id``, ``snapshot_id``, ``duration_s`` ...).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from .config import redact

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the ``extra`` keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        out.update(redact(extra))
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message key=value ...`` (context keys appended)."""

    def format(self, record: logging.LogRecord) -> str:
        base = f"{record.levelname.lower()} {record.name}: {record.getMessage()}"
        extra = redact({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if extra:
            base += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


def setup_logging(level: str = "WARNING", fmt: str = "text") -> None:
    """Configure the ``pixelquery_batch`` logger to write to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("pixelquery_batch")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    quiet_own_task_errors()


class _OwnTaskErrors(logging.Filter):
    """Drops Dask's "Compute Failed" worker record for our own errors (the failure policy
    reports them once, on the client, naming the unit, scene and file); a worker's record
    for anything else (a bug) stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Compute Failed"):
            return True
        exc_text = str(record.args[3]) if isinstance(record.args, tuple) and len(record.args) > 3 else ""
        return not any(name in exc_text for name in _OWN_ERRORS)


_OWN_ERRORS = ("TaskError(", "StorageError(", "InputDataError(", "OutputError(")
_FILTER = _OwnTaskErrors()


def quiet_own_task_errors() -> None:
    """Install :class:`_OwnTaskErrors` on ``distributed.worker`` in this process (the
    client's, and every worker's at connect)."""
    log = logging.getLogger("distributed.worker")
    if _FILTER not in log.filters:
        log.addFilter(_FILTER)

