"""Public entry points that join the layers (catalog, planner, executor, writers)."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from .catalog.models import Catalog
from .catalog.reader import as_repo_ref
from .catalog.store import RepoRef
from .config import StorageProfile
from .types import BBox

__all__ = [
    "PreparedJob",
    "RunResult",
    "history",
    "load_job",
    "open_catalog",
    "plan_prepared",
    "prepare_job",
    "run_job",
    "search_scenes",
    "validate_job",
]




def open_catalog(
    repo: str | os.PathLike[str] | RepoRef,
    *,
    snapshot: str | None = None,
    storage: StorageProfile | None = None,
) -> Catalog:
    """The scene catalog of a repository at a branch, tag or snapshot (default ``main``)."""
    return as_repo_ref(repo, snapshot, storage=storage).catalog()


def search_scenes(
    repo: str | os.PathLike[str] | RepoRef,
    *,
    snapshot: str | None = None,
    start: dt.date | dt.datetime | str | None = None,
    end: dt.date | dt.datetime | str | None = None,
    bbox: BBox | None = None,
    bbox_crs: str = "EPSG:4326",
    product: str | None = None,
    storage: StorageProfile | None = None,
) -> Catalog:
    """Search the catalog (see :meth:`Catalog.search`)."""
    return open_catalog(repo, snapshot=snapshot, storage=storage).search(
        start=start, end=end, bbox=bbox, bbox_crs=bbox_crs, product=product
    )


def history(
    repo: str | os.PathLike[str], *, branch: str = "main", storage: StorageProfile | None = None
) -> list[dict[str, Any]]:
    """Snapshots of a branch, newest first (id, time, message)."""
    from .catalog.store import open_repository

    r = open_repository(repo, profile=storage)
    return [
        {"snapshot_id": s.id, "written_at": s.written_at.isoformat(), "message": s.message}
        for s in r.ancestry(branch=branch)
    ]


# --------------------------------------------------------------------------- jobs
# The job pipeline lives in :mod:`pixelquery_batch.pipeline`; re-exported here.

from .pipeline import (  # noqa: E402
    PreparedJob,
    RunResult,
    load_job,
    plan_prepared,
    prepare_job,
    run_job,
    validate_job,
)
