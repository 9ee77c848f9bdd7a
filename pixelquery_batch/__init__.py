"""pixelquery_batch: batch analytics over Cloud-Optimized GeoTIFFs.

COGs are ingested as virtual references into an Icechunk repository with a scene
catalog; YAML job specs are planned into Dask task graphs that compute per-field
statistics, time series and regional rollups.

Importing the package starts nothing and imports no heavy dependency: the public API
below is loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CatalogError,
    ConfigError,
    ExpressionError,
    InputDataError,
    OutputError,
    PixelQueryError,
    PixelQueryWarning,
    PlanError,
    RepositoryError,
    SceneNotFoundError,
    SpecError,
    StorageError,
    TaskError,
)

__version__ = "0.1.0"

_LAZY = {
    "ingest": ("pixelquery_batch.catalog.ingest", "ingest"),
    "IngestReport": ("pixelquery_batch.catalog.ingest", "IngestReport"),
    "open_scene": ("pixelquery_batch.catalog.reader", "open_scene"),
    "open_catalog": ("pixelquery_batch.api", "open_catalog"),
    "timeseries": ("pixelquery_batch.api", "timeseries"),
    "read_table": ("pixelquery_batch.api", "read_table"),
    "read_runs": ("pixelquery_batch.api", "read_runs"),
    "run_job": ("pixelquery_batch.pipeline", "run_job"),
    "Catalog": ("pixelquery_batch.catalog.models", "Catalog"),
    "Scene": ("pixelquery_batch.catalog.models", "Scene"),
    "RepoRef": ("pixelquery_batch.catalog.store", "RepoRef"),
    "resolve_snapshot": ("pixelquery_batch.catalog.store", "resolve_snapshot"),
    "generate_sample": ("pixelquery_batch.sample", "generate_sample"),
    "load_product": ("pixelquery_batch.products", "load_product"),
}

if TYPE_CHECKING:
    from .api import open_catalog, read_runs, read_table, timeseries
    from .catalog.ingest import IngestReport, ingest
    from .catalog.models import Catalog, Scene
    from .catalog.reader import open_scene
    from .catalog.store import RepoRef, resolve_snapshot
    from .pipeline import run_job
    from .products import load_product
    from .sample import generate_sample


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'pixelquery_batch' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


__all__ = [
    "Catalog",
    "CatalogError",
    "ConfigError",
    "ExpressionError",
    "IngestReport",
    "InputDataError",
    "OutputError",
    "PixelQueryError",
    "PixelQueryWarning",
    "PlanError",
    "RepoRef",
    "RepositoryError",
    "Scene",
    "SceneNotFoundError",
    "SpecError",
    "StorageError",
    "TaskError",
    "__version__",
    "generate_sample",
    "ingest",
    "load_product",
    "open_catalog",
    "open_scene",
    "read_runs",
    "read_table",
    "resolve_snapshot",
    "run_job",
    "timeseries",
]
