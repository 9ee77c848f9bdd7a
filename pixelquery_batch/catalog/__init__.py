"""Scene catalog layer: ingest COGs as virtual references, search scenes, open them.

Only the pure data model is imported eagerly; storage-backed names load on first use, so
the planner can use :class:`Catalog` without importing Icechunk.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .models import BandInfo, Catalog, Scene

if TYPE_CHECKING:
    from .store import RepoRef, resolve_snapshot

_LAZY = {"RepoRef": ".store", "resolve_snapshot": ".store"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(name)


__all__ = ["BandInfo", "Catalog", "RepoRef", "Scene", "resolve_snapshot"]
