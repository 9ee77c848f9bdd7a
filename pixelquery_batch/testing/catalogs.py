"""Synthetic scene-catalog tables (test and benchmark support; library code never imports it)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import shapely
from shapely.geometry import box

from ..catalog.models import SCENE_SCHEMA

__all__ = ["synthetic_scene_table"]


def synthetic_scene_table(n: int, *, seed: int = 0, densify_deg: float | None = None) -> pa.Table:
    """``n`` seeded scenes with 1.4 x 1.0 degree footprints over Europe, 2020-2024.

    ``densify_deg`` adds vertices like real densified footprints (None: plain boxes).
    """
    rng = np.random.default_rng(seed)
    lon = rng.uniform(-10, 30, n)
    lat = rng.uniform(35, 60, n)
    polys = [box(x, y, x + 1.4, y + 1.0) for x, y in zip(lon, lat, strict=True)]
    if densify_deg:
        polys = [shapely.segmentize(p, densify_deg) for p in polys]
    wkb = [shapely.to_wkb(p) for p in polys]
    base = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    return pa.Table.from_pydict({
        "scene_id": [f"S{i:05d}" for i in range(n)],
        "datetime": [base + dt.timedelta(hours=int(h)) for h in rng.integers(0, 5 * 8760, n)],
        "product": ["sentinel2-l2a"] * n,
        "group": [f"scenes/S{i:05d}" for i in range(n)],
        "crs_epsg": [32633] * n,
        "transform": [[10.0, 0.0, 500000.0, 0.0, -10.0, 5300000.0]] * n,
        "height": [10980] * n, "width": [10980] * n,
        "bands": [["blue", "green", "red", "nir", "scl"]] * n,
        "bands_json": ["[]"] * n,
        "footprint_wkb": wkb, "footprint_lonlat_wkb": wkb,
        "minlon": lon, "minlat": lat, "maxlon": lon + 1.4, "maxlat": lat + 1.0,
        "cloud_cover": rng.uniform(0, 100, n),
        "properties_json": ["{}"] * n, "sources": [["file:///x.tif"]] * n,
        "ingested_at": [base] * n,
        "crs_wkt": [None] * n,
    }, schema=SCENE_SCHEMA)
