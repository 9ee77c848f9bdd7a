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
    "read_ledger",
    "read_runs",
    "read_table",
    "run_job",
    "search_scenes",
    "timeseries",
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


def timeseries(
    repo: str | os.PathLike[str] | RepoRef,
    lon: float,
    lat: float,
    *,
    variables: dict[str, str] | None = None,
    start: dt.date | dt.datetime | str | None = None,
    end: dt.date | dt.datetime | str | None = None,
    product: str | None = None,
    snapshot: str | None = None,
    cloud: bool = True,
    storage: StorageProfile | None = None,
) -> Any:
    """The pixel value series at one lon/lat point, computed in-process.

    Parameters
    ----------
    variables
        ``name -> "builtin"`` or band math (default: ``{"ndvi": "builtin"}``).
    cloud
        Mask clouds with the product's cloud mask.

    Returns
    -------
    pandas.DataFrame
        ``scene_id, datetime, variable, value, valid, cloud`` sorted by time.
    """
    import geopandas as gpd
    import pandas as pd
    from shapely.geometry import Point

    from .executor import execute
    from .expr import resolve_index
    from .pipeline import cloud_rule
    from .planner import plan_job
    from .tasks import JobContext

    ref = as_repo_ref(repo, snapshot, storage=storage)
    found = ref.catalog().search(start=start, end=end, product=product,
                                 intersects=Point(lon, lat))
    exprs = {n: resolve_index(n, t) for n, t in (variables or {"ndvi": "builtin"}).items()}
    columns = ["scene_id", "datetime", "variable", "value", "valid", "cloud"]
    if len(found) == 0:
        return pd.DataFrame(columns=columns)
    rule = cloud_rule("auto" if cloud else None, found)
    bands = tuple(dict.fromkeys([n for e in exprs.values() for n in sorted(e.names)]))
    points = gpd.GeoDataFrame({"field_id": ["point"]}, geometry=[Point(lon, lat)], crs="EPSG:4326")
    plan = plan_job(found, points, bands=bands, rule="point",
                    optional_bands=(rule["band"],) if rule else ())
    ctx = JobContext(repo=ref, job_hash="", variables=tuple((n, e.text) for n, e in exprs.items()),
                     stats=("mean",), rule="point", cloud_band=rule["band"] if rule else None,
                     cloud_classes=tuple(rule["classes"]) if rule and rule["classes"] else None,
                     cloud_bits=tuple(rule["bits"]) if rule and rule["bits"] else None,
                     on_error="fail")
    tables = []
    execute(plan, ctx, on_result=lambda r: tables.append(r.table.to_pandas()))
    df = pd.concat(tables, ignore_index=True)
    out = pd.DataFrame({"scene_id": df["scene_id"], "datetime": df["datetime"],
                        "variable": df["variable"], "value": df["mean"],
                        "valid": df["count"] > 0, "cloud": df["cloud_count"] > 0})
    return out.sort_values(["datetime", "scene_id", "variable"]).reset_index(drop=True)


def _output_location(out_dir: str | os.PathLike[str], storage: str | StorageProfile | None) -> Any:
    from .config import load_storage_profile
    from .storage import Location

    profile = storage if isinstance(storage, StorageProfile) else load_storage_profile(storage)
    return Location.of(out_dir, profile.resolved())


def read_table(out_dir: str | os.PathLike[str], name: str | None = "stats", *,
               version: int | None = None, storage: str | StorageProfile | None = None) -> Any:
    """A job output table as pandas: the current rows of a versioned table (``stats``,
    ``runs``, ``ledger``), or any version of it (time travel); Parquet tables as written.

    ``name=None``: ``out_dir`` is the table's own location (``RunResult.outputs[...]``)."""
    import io

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .writers import delta

    if name is None:
        text = os.fspath(out_dir).rstrip("/")
        out_dir, _, name = text.rpartition("/")
    loc = _output_location(out_dir, storage)
    table = delta.read(loc, name, version=version)
    if table is None:
        keys = [k for k in loc.list(name) if k.endswith(".parquet")]
        if not keys:
            return pd.DataFrame()
        table = pa.concat_tables([pq.read_table(io.BytesIO(loc.get(k))) for k in keys])
    return table.to_pandas()


def read_runs(out_dir: str | os.PathLike[str], *,
              storage: str | StorageProfile | None = None) -> Any:
    """The job's run history (``runs`` table), newest first."""
    df = read_table(out_dir, "runs", storage=storage)
    return df.sort_values("started_at", ascending=False).reset_index(drop=True) if len(df) else df


def read_ledger(out_dir: str | os.PathLike[str], *, open_only: bool = True,
                storage: str | StorageProfile | None = None) -> Any:
    """The failure ledger (pairs that kept failing); ``open_only``: not resolved since."""
    df = read_table(out_dir, "ledger", storage=storage)
    if len(df) and open_only:
        df = df[~df["resolved"]].reset_index(drop=True)
    return df
