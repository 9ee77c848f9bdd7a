"""Sample data: seeded generator of synthetic Sentinel-2 L2A-like scenes.

Layer: *sample data (seeded generator)*. Used by the quick-start demo, the
test-suite and the benchmarks; library code never depends on it. It only needs
numpy, rasterio, shapely and pyproj (no geopandas) and nothing from the rest of
the package except :mod:`pixelquery_batch.errors`.

:func:`generate_sample` writes, below ``out_dir``:

* ``cogs/S2_33UXP_{YYYY-MM-DD}_{band}.tif`` -- one Cloud-Optimized GeoTIFF per
  date and band (``blue``, ``green``, ``red``, ``nir``, ``scl``): single band
  ``uint16``, EPSG:32633, 10 m pixels, upper-left corner (600000, 5300000),
  DEFLATE + horizontal predictor, 512 px tiles, internal overviews, nodata 0.
  Reflectance bands hold ``DN = round(reflectance * 10000) + 1000`` (processing
  baseline >= 04.00, ``BOA_ADD_OFFSET = -1000``), i.e.
  ``reflectance = DN * 1e-4 - 0.1``. ``scl`` holds the scene classification
  (3 cloud shadow, 4 vegetation, 5 bare soil, 6 water, 8/9 cloud medium/high
  probability, 10 thin cirrus, 0 nodata).
* ``fields.geojson`` -- agricultural fields (EPSG:4326, properties ``id``,
  ``name``, ``crop``), including a few MultiPolygons, polygons with holes and
  fields that cross the west/south image edge.
* ``regions.geojson`` -- 3-4 large administrative-like regions covering the scene.

The landscape is fixed: the fields, a patchwork of background parcels
(grassland, forest clusters, bare soil) and usually a small lake. Every scene
samples per-crop seasonal NDVI curves (double logistic in day of year, jittered
per field), adds spatially smooth and white noise, derives reflectances from
NDVI, then adds clouds with cirrus rims and displaced shadows and a slanted
nodata strip along the east edge like a Sentinel-2 orbit edge. Everything is
derived from ``seed`` only (one ``numpy.random.default_rng([seed, stream, ...])``
per part), so equal arguments give identical pixels and GeoJSON text.

Memory stays bounded for large scenes (5490 x 5490 px: ~1.7 GB peak): the
generator works scene by scene and band by band in float32, and a writer thread
compresses one COG while the next band is computed.

Examples
--------
>>> from pixelquery_batch.sample import generate_sample
>>> info = generate_sample(tmp_path, scenes=2, size=256, fields=12)  # doctest: +SKIP
>>> info.cog_paths[0].name  # doctest: +SKIP
'S2_33UXP_2025-03-01_blue.tif'
"""

from __future__ import annotations

import collections
import datetime
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import rasterio.shutil
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from shapely.geometry import LineString, MultiPolygon, Polygon, box, mapping

from pixelquery_batch.errors import ConfigError

__all__ = [
    "BANDS",
    "BOA_ADD_OFFSET",
    "CROPS",
    "PATTERN",
    "QUANTIFICATION_VALUE",
    "SCL_VALUES",
    "TILE",
    "SampleInfo",
    "generate_sample",
    "max_fields_for_size",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- constants

#: Sentinel-2 MGRS tile the synthetic scenes pretend to belong to.
TILE = "33UXP"
#: EPSG code of the raster CRS (WGS 84 / UTM zone 33N).
CRS_EPSG = 32633
#: Pixel size in metres.
PIXEL_SIZE = 10.0
#: Upper-left corner of the raster grid (UTM metres).
ORIGIN_XY = (600_000.0, 5_300_000.0)
#: Band names, in writing order.
BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "scl")
#: File-name pattern of the COGs.
PATTERN = "S2_{tile}_{date}_{band}.tif"
#: DN = reflectance * QUANTIFICATION_VALUE - BOA_ADD_OFFSET (baseline >= 04.00).
QUANTIFICATION_VALUE = 10_000
BOA_ADD_OFFSET = -1_000
#: Crop types of the fields.
CROPS: tuple[str, ...] = ("winter_wheat", "maize", "sunflower", "grassland", "fallow")
#: Every value the ``scl`` band may contain.
SCL_VALUES: frozenset[int] = frozenset({0, 3, 4, 5, 6, 8, 9, 10})

_SCL_NODATA, _SCL_SHADOW, _SCL_VEG, _SCL_SOIL, _SCL_WATER = 0, 3, 4, 5, 6
_SCL_CLOUD_MED, _SCL_CLOUD_HIGH, _SCL_CIRRUS = 8, 9, 10

_MIN_SIZE = 128
_MAX_SIZE = 10_980  # a full Sentinel-2 tile at 10 m
_A_MIN = 5_200.0  # m^2: 0.5 ha floor plus a margin for reprojection/rounding
_A_MAX = 195_000.0  # m^2: 20 ha ceiling minus a margin
_GAP = 6.0  # m kept free along each parcel boundary
_CELL_MIN = 130.0  # m: smallest parcel side that still holds a 0.52-0.6 ha field
_CROP_P = (0.30, 0.25, 0.15, 0.15, 0.15)
_ROW_BLOCK = 1024  # rows per block in the smooth-noise interpolation

# Seed streams: each part of the sample draws from its own generator so that, for
# example, changing ``fields`` does not change the regions or the clouds.
_STREAM_ORIENT, _STREAM_FIELDS, _STREAM_REGIONS, _STREAM_LAND, _STREAM_SCENE = 0, 1, 2, 3, 4
_STREAM_BACKGROUND = 5


@dataclass(frozen=True, slots=True)
class _Curve:
    """Seasonal NDVI curve: ``base1`` before ``sos``, ``peak`` between, ``base2`` after ``eos``."""

    base1: float
    peak: float
    base2: float
    sos: float  # day of year of green-up (inflection)
    rs: float  # green-up steepness (days)
    eos: float  # day of year of senescence (inflection)
    re: float  # senescence steepness (days)


_CURVES: dict[str, _Curve] = {
    "winter_wheat": _Curve(0.35, 0.86, 0.18, 85.0, 10.0, 172.0, 8.0),
    "maize": _Curve(0.18, 0.86, 0.25, 165.0, 9.0, 255.0, 9.0),
    "sunflower": _Curve(0.18, 0.81, 0.25, 150.0, 8.0, 226.0, 7.0),
    "grassland": _Curve(0.56, 0.71, 0.56, 95.0, 12.0, 285.0, 15.0),
    "fallow": _Curve(0.15, 0.25, 0.18, 110.0, 15.0, 250.0, 15.0),
    "bg_grassland": _Curve(0.50, 0.68, 0.52, 100.0, 12.0, 280.0, 15.0),
    "forest": _Curve(0.45, 0.86, 0.47, 115.0, 8.0, 292.0, 10.0),
    "bare_soil": _Curve(0.10, 0.13, 0.11, 120.0, 20.0, 260.0, 20.0),
    "water": _Curve(-0.33, -0.29, -0.33, 150.0, 20.0, 240.0, 20.0),
}
# Per-class pixel-noise amplitude and soil/canopy brightness.
_NOISE_AMP = {"water": 0.25, "bare_soil": 0.7, "forest": 0.8}
_BRIGHTNESS = {"water": 1.0, "bare_soil": 1.12, "forest": 0.95}
# Cloud-top reflectance offsets per band (clouds are white, slightly bluish).
_CLOUD_BAND_OFFSET = {"blue": 0.02, "green": 0.01, "red": 0.0, "nir": -0.01}


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True, slots=True)
class SampleInfo:
    """What :func:`generate_sample` wrote.

    Attributes
    ----------
    out_dir
        Root directory of the sample.
    cog_dir
        ``out_dir / "cogs"``.
    cog_paths
        Every COG written, sorted by path.
    fields_path
        ``out_dir / "fields.geojson"`` (EPSG:4326).
    regions_path
        ``out_dir / "regions.geojson"`` (EPSG:4326).
    dates
        Acquisition dates, ascending.
    bands
        Band names, ``("blue", "green", "red", "nir", "scl")``.
    tile
        MGRS tile id used in the file names (``"33UXP"``).
    crs_epsg
        EPSG code of the rasters (32633).
    transform
        Affine geotransform coefficients ``(a, b, c, d, e, f)``.
    shape_yx
        Raster shape ``(rows, columns)``.
    pattern
        File-name pattern, ``"S2_{tile}_{date}_{band}.tif"``.
    n_fields
        Number of features in ``fields.geojson``.
    """

    out_dir: Path
    cog_dir: Path
    cog_paths: tuple[Path, ...]
    fields_path: Path
    regions_path: Path
    dates: tuple[datetime.date, ...]
    bands: tuple[str, ...]
    tile: str
    crs_epsg: int
    transform: tuple[float, float, float, float, float, float]
    shape_yx: tuple[int, int]
    pattern: str
    n_fields: int


def max_fields_for_size(size: int) -> int:
    """Return the largest ``fields`` count that fits into a ``size`` x ``size`` scene.

    Parameters
    ----------
    size
        Raster width/height in pixels (10 m each).

    Returns
    -------
    int
        Maximum number of non-overlapping fields of at least 0.5 ha.
    """
    return int((size * PIXEL_SIZE) // _CELL_MIN) ** 2


def generate_sample(
    out_dir: str | os.PathLike[str],
    *,
    scenes: int = 8,
    size: int = 1024,
    fields: int = 60,
    seed: int = 0,
    start: datetime.date = datetime.date(2025, 3, 1),
    interval_days: int = 15,
    progress: Callable[[str], None] | None = None,
) -> SampleInfo:
    """Write a deterministic synthetic Sentinel-2 L2A-like sample below ``out_dir``.

    Parameters
    ----------
    out_dir
        Target directory (created if missing). Existing sample files are replaced
        atomically; stale COGs of an earlier, larger sample are removed.
    scenes
        Number of acquisition dates (>= 1).
    size
        Raster width and height in pixels (128 ... 10980; 10 m pixels).
    fields
        Number of field polygons (>= 1, at most :func:`max_fields_for_size`).
    seed
        Non-negative seed; equal arguments give identical pixels and GeoJSON text.
    start
        First acquisition date.
    interval_days
        Days between consecutive acquisitions (>= 1).
    progress
        Optional callback receiving one human-readable message per written scene.

    Returns
    -------
    SampleInfo
        Paths and grid description of what was written.

    Raises
    ------
    ValueError
        (:class:`~pixelquery_batch.errors.ConfigError`) if an argument is invalid,
        e.g. when ``fields`` does not fit into the scene.
    """
    start = _validate(scenes, size, fields, seed, start, interval_days, progress)
    t0 = time.perf_counter()
    out = Path(out_dir)
    cog_dir = out / "cogs"
    cog_dir.mkdir(parents=True, exist_ok=True)
    dates = tuple(start + datetime.timedelta(days=k * interval_days) for k in range(scenes))
    extent = size * PIXEL_SIZE
    ox, oy = ORIGIN_XY
    transform = Affine(PIXEL_SIZE, 0.0, ox, 0.0, -PIXEL_SIZE, oy)
    logger.info(
        "generating sample: %d scenes of %dx%d px, %d fields, seed %d -> %s",
        scenes, size, size, fields, seed, out,
    )  # fmt: skip

    # Vector layers (local metres, origin at the south-west corner, y north).
    phi0 = float(np.random.default_rng([seed, _STREAM_ORIENT]).uniform(-0.5, 0.5))
    field_list, lake = _make_fields(
        np.random.default_rng([seed, _STREAM_FIELDS]), extent, fields, phi0
    )
    background = _make_background(np.random.default_rng([seed, _STREAM_BACKGROUND]), extent, phi0)
    regions = _make_regions(np.random.default_rng([seed, _STREAM_REGIONS]), extent)
    to_utm = functools.partial(_local_to_utm, dx=ox, dy=oy - extent)
    fields_path = out / "fields.geojson"
    regions_path = out / "regions.geojson"
    field_features = [
        _feature(
            {"id": _field_id(i, fields), "name": f"Field {i} ({f.crop.replace('_', ' ')})",
             "crop": f.crop},
            to_utm(f.geom),
        )
        for i, f in enumerate(field_list, start=1)
    ]  # fmt: skip
    region_features = [
        _feature({"id": f"R{i}", "name": name}, shapely.segmentize(to_utm(geom), 500.0))
        for i, (name, geom) in enumerate(regions, start=1)
    ]
    _atomic_write_text(fields_path, _collection_text("fields", field_features))
    _atomic_write_text(regions_path, _collection_text("regions", region_features))

    # Rasters.
    land = _make_landscape(
        np.random.default_rng([seed, _STREAM_LAND]),
        size,
        transform,
        [(to_utm(f.geom), f.crop) for f in field_list],
        [(to_utm(g), c) for g, c in background],
        to_utm(lake) if lake is not None else None,
    )
    # COGs are compressed on a writer thread (GDAL releases the GIL) while the next
    # band is computed; at most two arrays wait for the writer.
    written: list[Path] = []
    pending: collections.deque[tuple[Future[None], str | None]] = collections.deque()

    def finish_oldest() -> None:
        future, message = pending.popleft()
        future.result()
        if message is not None:
            logger.info(message)
            if progress is not None:
                progress(message)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pqb-sample-writer") as pool:
        try:
            for k, date in enumerate(dates):
                scene_rng = np.random.default_rng([seed, _STREAM_SCENE, k])
                stats: dict[str, float] = {}
                for band, array in _render_scene(land, scene_rng, date, stats):
                    name = PATTERN.format(tile=TILE, date=date.isoformat(), band=band)
                    path = cog_dir / name
                    future = pool.submit(_write_cog, path, array, transform, nearest=band == "scl")
                    message = None
                    if band == BANDS[-1]:
                        message = (
                            f"scene {k + 1}/{scenes} {date.isoformat()}: "
                            f"{stats['cloud']:.1%} cloud, {stats['shadow']:.1%} shadow, "
                            f"{stats['nodata']:.1%} nodata"
                        )
                    pending.append((future, message))
                    written.append(path)
                    del array
                    while len(pending) > 2:
                        finish_oldest()
            while pending:
                finish_oldest()
        except BaseException:
            for future, _ in pending:
                future.cancel()
            raise
    del land
    _remove_stale(cog_dir, set(written))
    info = SampleInfo(
        out_dir=out,
        cog_dir=cog_dir,
        cog_paths=tuple(sorted(written)),
        fields_path=fields_path,
        regions_path=regions_path,
        dates=dates,
        bands=BANDS,
        tile=TILE,
        crs_epsg=CRS_EPSG,
        transform=(transform.a, transform.b, transform.c, transform.d, transform.e, transform.f),
        shape_yx=(size, size),
        pattern=PATTERN,
        n_fields=fields,
    )
    logger.info("sample written in %.1f s: %d COGs", time.perf_counter() - t0, len(written))
    return info


# --------------------------------------------------------------------------- validation


def _validate(
    scenes: Any,
    size: Any,
    fields: Any,
    seed: Any,
    start: Any,
    interval_days: Any,
    progress: Any,
) -> datetime.date:
    """Check the arguments of :func:`generate_sample`; return ``start`` as a date."""

    def need_int(name: str, value: Any, low: int, high: int | None = None) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ConfigError(
                f"{name} must be an integer, got {value!r} ({type(value).__name__})",
                hint=f"pass {name} as an int",
            )
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"between {low} and {high}"
            raise ConfigError(f"{name} must be {bounds}, got {value}", hint=f"use {name}={low}")

    need_int("scenes", scenes, 1)
    need_int("size", size, _MIN_SIZE, _MAX_SIZE)
    need_int("fields", fields, 1)
    need_int("seed", seed, 0)
    need_int("interval_days", interval_days, 1)
    limit = max_fields_for_size(int(size))
    if fields > limit:
        raise ConfigError(
            f"fields={fields} do not fit into a {size}x{size} px scene "
            f"({size * PIXEL_SIZE / 1000:g} km wide): at most {limit} non-overlapping fields "
            "of >= 0.5 ha fit",
            hint=f"use fields <= {limit} or a larger size",
        )
    if isinstance(start, datetime.datetime):
        start = start.date()
    if not isinstance(start, datetime.date):
        raise ConfigError(
            f"start must be a datetime.date, got {start!r}",
            hint="e.g. start=datetime.date(2025, 3, 1)",
        )
    try:
        start + datetime.timedelta(days=(int(scenes) - 1) * int(interval_days))
    except OverflowError:
        raise ConfigError(
            f"{scenes} scenes every {interval_days} days from {start} run past year 9999",
            hint="use fewer scenes or a shorter interval_days",
        ) from None
    if progress is not None and not callable(progress):
        raise ConfigError(
            f"progress must be callable or None, got {progress!r}", hint="pass e.g. print"
        )
    return start


# --------------------------------------------------------------------------- vector layers


@dataclass(frozen=True, slots=True)
class _Field:
    geom: Polygon | MultiPolygon  # local metres
    crop: str


def _field_id(i: int, n: int) -> str:
    return f"F{i:0{max(4, len(str(n)))}d}"


def _make_fields(
    rng: np.random.Generator, extent: float, n: int, phi0: float
) -> tuple[list[_Field], Polygon | None]:
    """Place ``n`` non-overlapping fields in a jittered grid of parcels (+ maybe a lake)."""
    nx = min(math.ceil(math.sqrt(n * 1.12)), int(extent // _CELL_MIN))
    cell = extent / nx
    jit = max(0.0, min(0.15 * cell, (cell - _CELL_MIN) / 2.0))
    xb = np.array([0.0, *(i * cell + rng.uniform(-jit, jit) for i in range(1, nx)), extent])
    yb = [
        np.array([0.0, *(j * cell + rng.uniform(-jit, jit) for j in range(1, nx)), extent])
        for _ in range(nx)
    ]
    # Parcels (column i, row j; j = 0 is the southernmost row), ids ordered NW -> SE.
    cells = [(i, j) for j in range(nx - 1, -1, -1) for i in range(nx)]
    chosen = np.sort(rng.choice(len(cells), size=n, replace=False))
    empty = sorted(set(range(len(cells))) - set(chosen.tolist()))

    crops = rng.choice(len(CROPS), size=n, p=_CROP_P)
    if n >= len(CROPS):  # every crop type present at least once
        crops[rng.choice(n, size=len(CROPS), replace=False)] = np.arange(len(CROPS))

    # Fields crossing the west/south image edge (~3 %, >= 1 when n >= 10).
    edge = [f for f, c in enumerate(chosen) if cells[c][0] == 0 or cells[c][1] == 0]
    n_out = min(len(edge), max(1, round(0.03 * n)) if n >= 10 else round(0.03 * n))
    outside = set(rng.choice(edge, size=n_out, replace=False).tolist()) if n_out else set()

    geoms: list[Polygon | MultiPolygon] = []
    for f, c in enumerate(chosen):
        i, j = cells[c]
        x0, x1, y0, y1 = xb[i] + _GAP, xb[i + 1] - _GAP, yb[i][j] + _GAP, yb[i][j + 1] - _GAP
        w_av, h_av = x1 - x0, y1 - y0
        a_hi = min(_A_MAX, 0.45 * w_av * h_av)
        a_lo = max(_A_MIN, min(15_000.0, a_hi / 3.0))
        target = math.exp(rng.uniform(math.log(a_lo), math.log(a_hi))) if a_hi > a_lo else _A_MIN
        phi = phi0 + rng.normal(0.0, 0.12) if rng.random() < 0.8 else rng.uniform(-1.6, 1.6)
        pts = _field_outline(rng, w_av, h_av, target, phi)
        bw, bh = np.ptp(pts, axis=0)
        px = x0 + rng.uniform(0.0, max(0.0, w_av - bw))
        py = y0 + rng.uniform(0.0, max(0.0, h_av - bh))
        if f in outside:
            west = i == 0 and (j != 0 or rng.random() < 0.5)
            if west:
                px = -rng.uniform(0.2, 0.45) * bw
            else:
                py = -rng.uniform(0.2, 0.45) * bh
        geoms.append(Polygon(pts + np.array([px, py])))

    # ~5 % split into two parts (track through the field), ~5 % with a hole.
    quota = max(1, round(0.05 * n)) if n >= 3 else 0
    candidates = [f for f in rng.permutation(n).tolist() if f not in outside]
    n_multi = n_hole = 0
    for f in candidates:
        if n_multi < quota:
            split = _split_field(rng, geoms[f])
            if split is not None:
                geoms[f] = split
                n_multi += 1
                continue
        if n_hole < quota:
            holed = _add_hole(rng, geoms[f])
            if holed is not None:
                geoms[f] = holed
                n_hole += 1
        if n_multi >= quota and n_hole >= quota:
            break

    lake = None
    if empty and rng.random() < 0.85:
        i, j = cells[empty[int(rng.integers(len(empty)))]]
        x0, x1, y0, y1 = xb[i] + _GAP, xb[i + 1] - _GAP, yb[i][j] + _GAP, yb[i][j + 1] - _GAP
        a = min(400.0, rng.uniform(0.25, 0.45) * (x1 - x0))
        b = min(300.0, rng.uniform(0.25, 0.45) * (y1 - y0))
        t = np.sort(rng.uniform(0.0, 2 * np.pi, 28))
        r = rng.uniform(0.88, 1.05, t.size)
        lake = Polygon(
            np.column_stack([(x0 + x1) / 2 + a * r * np.cos(t), (y0 + y1) / 2 + b * r * np.sin(t)])
        )
        if not lake.is_valid:
            lake = None
    logger.debug(
        "fields: %dx%d parcels of %.0f m, %d edge-crossing, %d multi, %d holed, lake=%s",
        nx, nx, cell, len(outside), n_multi, n_hole, lake is not None,
    )  # fmt: skip
    return [_Field(g, CROPS[int(c)]) for g, c in zip(geoms, crops, strict=True)], lake


def _field_outline(
    rng: np.random.Generator, w_av: float, h_av: float, target: float, phi: float
) -> np.ndarray:
    """Return the vertices (k, 2) of a star-shaped field of ~``target`` m^2, bbox at 0.

    The polygon (4-9 vertices, mostly convex, sometimes one re-entrant vertex)
    fits into a ``w_av`` x ``h_av`` box; its area is at least ``_A_MIN``.
    """
    for attempt in range(40):
        nv = int(rng.integers(4, 10))
        relaxed = attempt >= 15  # later attempts: rounder, axis-aligned shapes
        q = rng.uniform(1.0, 1.3) if relaxed else rng.uniform(1.0, 2.2)
        ang = rng.normal(0.0, 0.05) if relaxed else phi
        step = 2 * np.pi / nv
        theta = np.pi / nv + np.arange(nv) * step + rng.uniform(-0.3, 0.3, nv) * step
        radius = rng.uniform(0.9, 1.05, nv)
        if nv >= 6 and rng.random() < 0.25:
            radius[int(rng.integers(nv))] *= rng.uniform(0.55, 0.75)
        x, y = q * radius * np.cos(theta), radius * np.sin(theta)
        ca, sa = math.cos(ang), math.sin(ang)
        pts = np.column_stack([ca * x - sa * y, sa * x + ca * y])
        pts *= math.sqrt(target / _shoelace(pts))
        bw, bh = np.ptp(pts, axis=0)
        scale = min(1.0, w_av / bw, h_av / bh)
        if target * scale * scale >= _A_MIN:
            pts *= scale
            return pts - pts.min(axis=0)
    # Fallback: a quadrilateral filling most of the box (always >= _A_MIN, see _CELL_MIN).
    inset = rng.uniform(0.0, 0.05, (4, 2)) * (w_av, h_av)
    corners = np.array([[0, 0], [w_av, 0], [w_av, h_av], [0, h_av]], dtype=float)
    pts = corners + inset * np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    return pts - pts.min(axis=0)


def _shoelace(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _split_field(rng: np.random.Generator, poly: Polygon) -> MultiPolygon | None:
    """Cut a farm track through ``poly``; return the two parts or None if unsuitable."""
    if poly.area < 1.05 * _A_MIN:
        return None
    c = poly.centroid
    size = math.sqrt(poly.area)
    for _ in range(4):
        ang = rng.uniform(0.0, np.pi)
        off = rng.uniform(-0.15, 0.15) * size
        ux, uy = math.cos(ang), math.sin(ang)
        cx, cy = c.x - uy * off, c.y + ux * off
        half = 4.0 * size
        track = LineString([(cx - ux * half, cy - uy * half), (cx + ux * half, cy + uy * half)])
        cut = poly.difference(track.buffer(rng.uniform(2.0, 5.0), cap_style="flat"))
        if (
            isinstance(cut, MultiPolygon)
            and len(cut.geoms) == 2
            and min(p.area for p in cut.geoms) >= 0.2 * poly.area
            and cut.area >= _A_MIN
            and cut.is_valid
        ):
            return cut
    return None


def _add_hole(rng: np.random.Generator, poly: Polygon) -> Polygon | None:
    """Punch a small farmstead/pond hole into ``poly``; None if it does not fit."""
    area = poly.area
    r = math.sqrt(rng.uniform(0.03, 0.08) * area / math.pi)
    if area - math.pi * (1.1 * r) ** 2 < _A_MIN:
        return None
    inner = poly.buffer(-(1.1 * r + 8.0))
    if inner.is_empty:
        return None
    centre = poly.centroid if inner.contains(poly.centroid) else inner.representative_point()
    nv = int(rng.integers(5, 9))
    t = np.arange(nv) * 2 * np.pi / nv + rng.uniform(-0.2, 0.2, nv)
    rr = r * rng.uniform(0.8, 1.1, nv)
    hole = np.column_stack([centre.x + rr * np.cos(t), centre.y + rr * np.sin(t)])
    holed = Polygon(poly.exterior.coords, [hole])
    return holed if holed.is_valid and holed.area >= _A_MIN else None


def _make_regions(rng: np.random.Generator, extent: float) -> list[tuple[str, Polygon]]:
    """Split the scene into 3-4 regions along slightly jagged lines."""
    scene = box(0.0, 0.0, extent, extent)
    m = 0.05 * extent
    k = 15
    for _ in range(100):
        t = np.linspace(-m, extent + m, k)
        xs = extent * rng.uniform(0.4, 0.6) + extent * (
            rng.uniform(-0.03, 0.03, k) + rng.uniform(-0.08, 0.08) * (t / extent - 0.5)
        )
        west_side = Polygon([(-m, -m), *zip(xs, t, strict=True), (-m, extent + m)])
        halves = {"west": scene.intersection(west_side), "east": scene.difference(west_side)}
        n_regions = int(rng.integers(3, 5))
        split = ("west", "east") if n_regions == 4 else (("west",), ("east",))[rng.integers(2)]
        parts: list[tuple[str, Any]] = []
        for side in ("west", "east"):
            if side not in split:
                parts.append((side, halves[side]))
                continue
            ys = extent * rng.uniform(0.35, 0.65) + extent * (
                rng.uniform(-0.03, 0.03, k) + rng.uniform(-0.08, 0.08) * (t / extent - 0.5)
            )
            south_side = Polygon([(-m, -m), *zip(t, ys, strict=True), (extent + m, -m)])
            parts.append((f"north-{side}", halves[side].difference(south_side)))
            parts.append((f"south-{side}", halves[side].intersection(south_side)))
        if all(
            isinstance(g, Polygon) and g.is_valid and g.area > 0.08 * scene.area for _, g in parts
        ):
            order = {"north-west": 0, "west": 1, "south-west": 2, "north-east": 3, "east": 4}
            parts.sort(key=lambda p: order.get(p[0], 5))
            return [(f"Region {i} ({label})", g) for i, (label, g) in enumerate(parts, start=1)]
    raise RuntimeError("could not split the scene into regions")  # pragma: no cover


def _local_to_utm(geom: Any, *, dx: float, dy: float) -> Any:
    return shapely.transform(geom, lambda xy: xy + np.array([dx, dy]))


@functools.cache
def _utm_to_lonlat() -> Transformer:
    return Transformer.from_crs(CRS_EPSG, 4326, always_xy=True)


def _feature(properties: dict[str, str], geom_utm: Any) -> dict[str, Any]:
    """GeoJSON feature in EPSG:4326 with coordinates rounded to 1e-7 degrees."""
    tr = _utm_to_lonlat()

    def to_lonlat(xy: np.ndarray) -> np.ndarray:
        lon, lat = tr.transform(xy[:, 0], xy[:, 1])
        return np.array(
            [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat, strict=True)]
        )

    geom = shapely.orient_polygons(shapely.transform(geom_utm, to_lonlat))
    if not geom.is_valid:  # pragma: no cover - guarded by the geometry margins above
        raise RuntimeError(f"generated invalid geometry for {properties['id']}")
    return {"type": "Feature", "properties": properties, "geometry": mapping(geom)}


def _collection_text(name: str, features: list[dict[str, Any]]) -> str:
    """Deterministic GeoJSON text, one feature per line."""
    body = ",\n".join(json.dumps(f, separators=(",", ":")) for f in features)
    return f'{{"type":"FeatureCollection","name":"{name}","features":[\n{body}\n]}}\n'


# --------------------------------------------------------------------------- landscape raster


@dataclass(slots=True)
class _Landscape:
    """Static per-pixel state shared by all scenes."""

    unit: np.ndarray  # int32 (H, W): 1..n fields, then background classes
    het: np.ndarray  # float32 (H, W): static NDVI heterogeneity
    bright: np.ndarray  # float32 (H, W): multiplicative reflectance brightness
    curves: np.ndarray  # float64 (7, n_units + 1): per-unit _Curve parameters
    water_unit: int


def _make_background(
    rng: np.random.Generator, extent: float, phi0: float
) -> list[tuple[Polygon, str]]:
    """Tessellate the scene into background parcels (grassland, forest, bare soil).

    A jittered, rotated grid of quadrilaterals (shared vertices, so no gaps) gives
    the patchwork look of farmland; forest parcels cluster along a smooth random
    field, bare-soil parcels are scattered.
    """
    s = min(450.0, max(150.0, extent / 10.0))
    ratio = rng.uniform(1.2, 1.7)
    sx, sy = s * ratio, s / ratio
    half = 0.75 * extent + 2 * s  # covers the rotated scene square
    gx1 = np.arange(-half, half + sx, sx)
    gy1 = np.arange(-half, half + sy, sy)
    gx, gy = np.meshgrid(gx1, gy1)
    gx += rng.uniform(-0.2, 0.2, gx.shape) * sx
    gy += rng.uniform(-0.2, 0.2, gy.shape) * sy
    ca, sa = math.cos(phi0), math.sin(phi0)
    px = extent / 2 + ca * gx - sa * gy
    py = extent / 2 + sa * gx + ca * gy
    corners = np.stack(
        [
            np.stack([px[:-1, :-1], py[:-1, :-1]], -1),
            np.stack([px[:-1, 1:], py[:-1, 1:]], -1),
            np.stack([px[1:, 1:], py[1:, 1:]], -1),
            np.stack([px[1:, :-1], py[1:, :-1]], -1),
        ],
        axis=2,
    ).reshape(-1, 4, 2)
    lo, hi = corners.min(axis=1), corners.max(axis=1)
    keep = (hi[:, 0] > 0) & (lo[:, 0] < extent) & (hi[:, 1] > 0) & (lo[:, 1] < extent)
    corners = corners[keep]
    centre = corners.mean(axis=1)
    # Smooth random field (sum of plane waves) -> forest clusters.
    wave = np.zeros(len(corners))
    for _ in range(6):
        theta = rng.uniform(0.0, np.pi)
        length = max(1_500.0, extent * rng.uniform(0.3, 0.9))
        wave += np.cos(
            2 * np.pi * (centre[:, 0] * math.cos(theta) + centre[:, 1] * math.sin(theta)) / length
            + rng.uniform(0.0, 2 * np.pi)
        )
    forest = wave > np.quantile(wave, 0.72)
    bare = ~forest & (rng.random(len(corners)) < 0.14)
    classes = np.where(forest, "forest", np.where(bare, "bare_soil", "bg_grassland"))
    return [(Polygon(q), str(c)) for q, c in zip(corners, classes, strict=True)]


def _make_landscape(
    rng: np.random.Generator,
    size: int,
    transform: Affine,
    fields_utm: list[tuple[Any, str]],
    background_utm: list[tuple[Any, str]],
    lake_utm: Polygon | None,
) -> _Landscape:
    """Rasterise background parcels, lake and fields; draw static noise.

    Units: 0 fallback grassland, ``1..n`` fields, then background parcels, then water.
    """
    n, m = len(fields_utm), len(background_utm)
    water_unit = n + m + 1
    shapes: list[tuple[Any, int]] = [(g, n + 1 + i) for i, (g, _) in enumerate(background_utm)]
    if lake_utm is not None:
        shapes.append((lake_utm, water_unit))
    shapes.extend((g, i) for i, (g, _) in enumerate(fields_utm, start=1))
    unit = rasterio.features.rasterize(
        shapes, out_shape=(size, size), transform=transform, fill=0, dtype="int32"
    )
    del shapes

    # Per-unit curve parameters (jittered per field/parcel), noise amplitude, brightness.
    names = ["bg_grassland", *(c for _, c in fields_utm), *(c for _, c in background_utm), "water"]
    curves = np.array([[getattr(_CURVES[nm], a) for nm in names] for a in _Curve.__slots__])
    k = len(names) - 1  # everything but the water unit
    curves[0, :k] += rng.normal(0.0, 0.02, k)  # base1
    curves[1, :k] += rng.normal(0.0, 0.03, k)  # peak
    curves[2, :k] += rng.normal(0.0, 0.02, k)  # base2
    curves[3, :k] += rng.normal(0.0, 6.0, k)  # sos
    curves[5, :k] += rng.normal(0.0, 6.0, k)  # eos
    amp = np.array([_NOISE_AMP.get(nm, 1.0) for nm in names], np.float32)
    bright_lut = np.array([_BRIGHTNESS.get(nm, 1.0) for nm in names], np.float32)
    spread = np.array([0.08 if nm == "bare_soil" else 0.04 for nm in names[:k]])
    bright_lut[:k] *= (1.0 + rng.normal(0.0, 1.0, k) * spread).astype(np.float32)

    # Static heterogeneity (within-field variability) and brightness.
    het = np.zeros((size, size), np.float32)
    _add_value_noise(rng, het, 16.0, 0.05)
    _add_value_noise(rng, het, 5.0, 0.025)
    het *= amp[unit]
    bright = np.zeros((size, size), np.float32)
    _add_value_noise(rng, bright, 24.0, 0.06)
    bright += 1.0
    bright *= bright_lut[unit]
    return _Landscape(unit, het, bright, curves, water_unit)


def _add_value_noise(rng: np.random.Generator, acc: np.ndarray, cell: float, amp: float) -> None:
    """Add ``amp`` * smooth value noise with feature size ``cell`` px to ``acc`` in place.

    A coarse grid of standard-normal values is interpolated with smoothstep
    weights (separably, in row blocks to bound the temporary memory).
    """
    h, w = acc.shape
    grid = rng.standard_normal((math.ceil(h / cell) + 2, math.ceil(w / cell) + 2), np.float32)
    oy, ox = rng.random(2)
    ys = np.arange(h) / cell + oy
    xs = np.arange(w) / cell + ox
    y0, x0 = ys.astype(np.intp), xs.astype(np.intp)
    fy, fx = _smoothstep(ys - y0), _smoothstep(xs - x0)
    tmp = grid[:, x0] * (1.0 - fx) + grid[:, x0 + 1] * fx  # (gh, w)
    tmp *= np.float32(amp)
    for r0 in range(0, h, _ROW_BLOCK):
        r1 = min(h, r0 + _ROW_BLOCK)
        a = tmp[y0[r0:r1]]
        d = tmp[y0[r0:r1] + 1]
        d -= a
        d *= fy[r0:r1, None]
        a += d
        acc[r0:r1] += a


def _smoothstep(f: np.ndarray) -> np.ndarray:
    return (f * f * (3.0 - 2.0 * f)).astype(np.float32)


# --------------------------------------------------------------------------- scenes


def _ndvi_lut(curves: np.ndarray, doy: float) -> np.ndarray:
    """Double-logistic NDVI of every unit at day of year ``doy``."""
    base1, peak, base2, sos, rs, eos, re = curves
    rise = 1.0 / (1.0 + np.exp(-(doy - sos) / rs))
    fall = 1.0 / (1.0 + np.exp(-(doy - eos) / re))
    return base1 + (peak - base1) * rise - (peak - base2) * fall


def _render_scene(
    land: _Landscape, rng: np.random.Generator, date: datetime.date, stats: dict[str, float]
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(band, array)`` for every band of one scene, band by band.

    All full-size arrays are float32 (thresholds are converted to Python floats so
    NumPy's type promotion never upcasts to float64).
    """
    unit = land.unit
    h, w = unit.shape
    size = max(h, w)
    cloud_frac = 0.0 if rng.random() < 0.35 else float(rng.uniform(0.05, 0.40))
    strip_frac = float(rng.uniform(0.03, 0.15))
    slant = float(rng.uniform(-0.6, 0.6))

    # Surface NDVI -> nir, red.
    lut = _ndvi_lut(land.curves, date.timetuple().tm_yday)
    lut[1:] += rng.normal(0.0, 0.01, lut.size - 1)
    ndvi = lut.astype(np.float32)[unit]
    ndvi += land.het
    _add_value_noise(rng, ndvi, 40.0, 0.02)
    white = rng.standard_normal((h, w), np.float32)  # reused, shifted, for the bands
    ndvi += 0.012 * white
    np.clip(ndvi, -0.9, 0.95, out=ndvi)
    nir = np.where(ndvi >= 0, np.float32(0.26), np.float32(0.55))
    nir *= ndvi
    nir += 0.20
    np.maximum(nir, 0.012, out=nir)
    nir *= land.bright
    red = (1.0 - ndvi) / (1.0 + ndvi)
    red *= nir

    scl = np.full((h, w), _SCL_SOIL, np.uint8)
    np.putmask(scl, ndvi > 0.3, _SCL_VEG)
    np.putmask(scl, (ndvi < 0.0) | (unit == land.water_unit), _SCL_WATER)
    del ndvi

    # Clouds: thresholded multi-octave smooth noise; cirrus rim; displaced shadows.
    alpha = cloud_top = shade = None
    if cloud_frac > 0:
        cell = float(np.clip(size / 4, 32, 400))
        noise = np.zeros((h, w), np.float32)
        _add_value_noise(rng, noise, cell, 1.0)
        _add_value_noise(rng, noise, cell / 2.5, 0.5)
        _add_value_noise(rng, noise, cell / 7, 0.2)
        qs = 1.0 - np.array([1.0, 0.8, 0.4, 0.02]) * cloud_frac
        t_edge, t_core, t_high, t_top = np.quantile(noise[::4, ::4], qs).tolist()
        core = noise > t_core
        cirrus = noise > t_edge
        # Opacity: 0.15-0.6 over the cirrus rim, 1 inside the cloud, 0 outside.
        alpha = noise - t_edge
        alpha *= 0.45 / (t_core - t_edge)
        alpha += 0.15
        np.putmask(alpha, core, 1.0)
        np.putmask(alpha, ~cirrus, 0.0)
        cirrus &= ~core
        # Cloud-top reflectance 0.31-0.58, brightest in the cloud centres.
        cloud_top = noise - t_core
        cloud_top *= 0.27 / (t_top - t_core)
        np.clip(cloud_top, 0.0, 0.27, out=cloud_top)
        cloud_top += 0.31
        high = noise > t_high
        del noise
        # Sun in the south-south-east -> shadows fall north-north-west of the clouds.
        dist = float(np.clip(rng.uniform(0.02, 0.06) * size, 4, 150))
        azimuth = math.radians(rng.normal(340.0, 8.0))
        shadow = _shift(core, round(-dist * math.cos(azimuth)), round(dist * math.sin(azimuth)))
        shadow &= ~core
        shadow &= ~cirrus
        shade = np.where(shadow, np.float32(rng.uniform(0.3, 0.5)), np.float32(1.0))
        np.putmask(scl, shadow, _SCL_SHADOW)
        np.putmask(scl, cirrus, _SCL_CIRRUS)
        np.putmask(scl, core, _SCL_CLOUD_MED)
        np.putmask(scl, high, _SCL_CLOUD_HIGH)
        stats["cloud"] = float(np.count_nonzero(alpha)) / alpha.size
        stats["shadow"] = float(np.count_nonzero(shadow)) / shadow.size
        del core, cirrus, high, shadow
    else:
        stats["cloud"] = stats["shadow"] = 0.0

    # Slanted nodata strip along the east edge (orbit edge): first nodata column per row.
    top, bottom = strip_frac * (1 - slant) * w, strip_frac * (1 + slant) * w
    boundary = w - (top + (bottom - top) * np.arange(h) / max(1, h - 1))
    first_col = np.clip(np.ceil(boundary), 0, w).astype(np.intp)
    stats["nodata"] = float((w - first_col).sum()) / (h * w)

    for b, band in enumerate(BANDS):
        if band == "scl":
            _apply_strip(scl, first_col)
            yield band, scl
            continue
        if band == "nir":
            refl = nir
        elif band == "red":
            refl = red
        elif band == "green":
            refl = 0.75 * red
            refl += 0.08 * nir
            refl += 0.01
        else:  # blue
            refl = 0.55 * red
            refl += 0.02 * nir
            refl += 0.02
        # Independent-looking sensor noise: the scene's white noise, shifted per band.
        noise_b = np.roll(white, (97 * (b + 1), 389 * (b + 1)), axis=(0, 1))
        noise_b *= 0.003
        refl += noise_b
        del noise_b
        np.maximum(refl, 0.001, out=refl)  # keeps NDVI within [-1, 1]
        if shade is not None:
            refl *= shade
        if alpha is not None and cloud_top is not None:
            # refl = refl * (1 - alpha) + (cloud_top + offset) * alpha
            top_b = cloud_top + _CLOUD_BAND_OFFSET[band]
            top_b -= refl
            top_b *= alpha
            refl += top_b
            del top_b
        dn = _to_dn(refl)
        del refl
        _apply_strip(dn, first_col)
        yield band, dn


def _shift(mask: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """Return ``mask`` moved by ``dr`` rows and ``dc`` columns (zero filled)."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    if abs(dr) >= h or abs(dc) >= w:
        return out
    src_r = slice(max(0, -dr), h - max(0, dr))
    dst_r = slice(max(0, dr), h - max(0, -dr))
    src_c = slice(max(0, -dc), w - max(0, dc))
    dst_c = slice(max(0, dc), w - max(0, -dc))
    out[dst_r, dst_c] = mask[src_r, src_c]
    return out


def _to_dn(refl: np.ndarray) -> np.ndarray:
    """Encode reflectance as L2A digital numbers (offset 1000) in [1, 65535] (in place)."""
    refl *= QUANTIFICATION_VALUE
    refl -= BOA_ADD_OFFSET
    np.rint(refl, out=refl)
    np.clip(refl, 1, 65535, out=refl)
    return refl.astype(np.uint16)


def _apply_strip(array: np.ndarray, first_col: np.ndarray) -> None:
    """Set ``array[row, first_col[row]:]`` to 0 (nodata) for every row."""
    for row, col in enumerate(first_col.tolist()):
        array[row, col:] = 0


# --------------------------------------------------------------------------- writing


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = _tmp_name(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_cog(path: Path, array: np.ndarray, transform: Affine, *, nearest: bool) -> None:
    """Write ``array`` as a single-band COG via a temporary file and ``os.replace``.

    The array is staged in an uncompressed in-memory GeoTIFF and converted with
    ``rasterio.shutil.copy`` (GDAL ``CreateCopy`` with the COG driver), which runs
    without the GIL so pixel generation continues meanwhile.
    """
    h, w = array.shape
    tmp = _tmp_name(path)
    resampling = "nearest" if nearest else "average"
    try:
        with rasterio.MemoryFile() as mem:
            with mem.open(
                driver="GTiff",
                width=w,
                height=h,
                count=1,
                dtype=array.dtype.name,
                crs=CRS.from_epsg(CRS_EPSG),
                transform=transform,
                nodata=0,
            ) as stage:
                stage.write(array, 1)
            with mem.open() as src:
                rasterio.shutil.copy(
                    src,
                    tmp,
                    driver="COG",
                    compress="DEFLATE",
                    predictor=2,
                    blocksize=512,
                    overviews="AUTO",
                    resampling=resampling,
                    overview_resampling=resampling,
                    num_threads="ALL_CPUS",
                )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.debug("wrote %s", path)


def _remove_stale(cog_dir: Path, keep: set[Path]) -> None:
    """Delete sample COGs of earlier runs (other dates) that were not rewritten."""
    for path in sorted(cog_dir.glob(f"S2_{TILE}_*.tif")):
        if path not in keep:
            logger.info("removing stale sample file %s", path)
            path.unlink(missing_ok=True)
