"""JSON documents (manifests) as bytes, with secrets redacted; written through the output
layer (:class:`~pixelquery_batch.storage.Location`) like every other output."""

from __future__ import annotations

import json
from typing import Any

from ..config import redact

__all__ = ["json_bytes"]


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented JSON, with secrets redacted."""
    return json.dumps(redact(obj), indent=2, sort_keys=False, default=str).encode() + b"\n"
