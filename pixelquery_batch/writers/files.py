"""Atomic file writes: write a temporary file in the destination directory, fsync, rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..config import redact
from ..errors import OutputError

__all__ = ["atomic_write_bytes", "atomic_write_json", "json_bytes"]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one."""
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OutputError(f"cannot write {dest}: {exc}", path=str(dest)) from exc
    return dest


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented JSON, with secrets redacted."""
    return json.dumps(redact(obj), indent=2, sort_keys=False, default=str).encode() + b"\n"


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON, with secrets redacted."""
    return atomic_write_bytes(path, json_bytes(obj))
