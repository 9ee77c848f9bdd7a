"""Sample data: :func:`generate_sample` and its argument validation.

Layer: *sample data (seeded generator)*. Orchestrates the other modules:
validates the arguments, builds the vector layers (:mod:`.vectors`) and the
static landscape (:mod:`.landscape`), renders every scene band by band and
hands each band to a writer thread that compresses the COG (:mod:`.writing`)
while the next band is computed. Each scene gets its own folder below ``cogs/``
(``S2A_33UXP_20211001_0_L2A/B04.tif``, ...). Each part draws from its own
``numpy.random.default_rng([seed, stream, ...])``, so equal arguments give
identical pixels and GeoJSON text.
"""

from __future__ import annotations

import collections
import datetime
import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine

from pixelquery_batch.errors import ConfigError

from .constants import (
    BAND_NAMES,
    BAND_RESOLUTION,
    BANDS,
    BLOCKSIZE,
    CRS_EPSG,
    ORIGIN_XY,
    PATTERN,
    PIXEL_SIZE,
    PIXEL_SIZE_20M,
    TILE,
    scene_id,
)
from .landscape import _make_background, _make_landscape, _render_scene
from .vectors import (
    _CELL_MIN,
    _collection_text,
    _feature,
    _field_id,
    _local_to_utm,
    _make_fields,
    _make_regions,
)
from .writing import _atomic_write_text, _remove_stale, _write_cog

logger = logging.getLogger("pixelquery_batch.sample")  # one logger for the whole package

_MIN_SIZE = 128
_MAX_SIZE = 10_980  # a full Sentinel-2 tile at 10 m

# Seed streams: each part of the sample draws from its own generator so that, for
# example, changing ``fields`` does not change the regions or the clouds.
_STREAM_ORIENT, _STREAM_FIELDS, _STREAM_REGIONS, _STREAM_LAND, _STREAM_SCENE = 0, 1, 2, 3, 4
_STREAM_BACKGROUND = 5

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
        Every COG written: scene by scene in date order, bands in ``bands`` order.
    scene_dirs
        One folder per scene below ``cog_dir``, in date order.
    scene_ids
        The scene folder names, e.g. ``"S2A_33UXP_20211001_0_L2A"``, in date order.
    fields_path
        ``out_dir / "fields.geojson"`` (EPSG:4326).
    regions_path
        ``out_dir / "regions.geojson"`` (EPSG:4326).
    dates
        Acquisition dates, ascending (one per scene).
    bands
        Band file keys, ``("B02", "B03", "B04", "B08", "B11", "SCL")``.
    band_names
        Common name of every band key (``{"B02": "blue", ..., "B11": "swir16",
        "SCL": "scl"}``).
    band_resolution
        Pixel size in metres of every band key (10.0 or 20.0).
    tile
        MGRS tile id used in the scene ids (``"33UXP"``).
    crs_epsg
        EPSG code of the rasters (32633).
    transform
        Affine geotransform coefficients ``(a, b, c, d, e, f)`` of the 10 m grid.
    transform_20m
        The same for the 20 m grid (same upper-left corner).
    shape_yx
        Shape ``(rows, columns)`` of the 10 m bands.
    shape_yx_20m
        Shape of the 20 m bands, ``ceil(rows / 2), ceil(columns / 2)``.
    pattern
        Path pattern below ``cog_dir``, ``"{scene}/{band}.tif"``.
    n_fields
        Number of features in ``fields.geojson``.
    """

    out_dir: Path
    cog_dir: Path
    cog_paths: tuple[Path, ...]
    scene_dirs: tuple[Path, ...]
    scene_ids: tuple[str, ...]
    fields_path: Path
    regions_path: Path
    dates: tuple[datetime.date, ...]
    bands: tuple[str, ...]
    band_names: dict[str, str]
    band_resolution: dict[str, float]
    tile: str
    crs_epsg: int
    transform: tuple[float, float, float, float, float, float]
    transform_20m: tuple[float, float, float, float, float, float]
    shape_yx: tuple[int, int]
    shape_yx_20m: tuple[int, int]
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
    start: datetime.date = datetime.date(2021, 10, 1),
    interval_days: int = 30,
    progress: Callable[[str], None] | None = None,
) -> SampleInfo:
    """Write a deterministic synthetic Sentinel-2 L2A-like sample below ``out_dir``.

    The COGs follow the Element 84 / AWS layout, ``cogs/{scene}/{band}.tif`` (see
    :mod:`pixelquery_batch.sample`). With the defaults the 8 scenes run from
    2021-10-01 to 2022-04-29, so they straddle processing baseline 04.00
    (2022-01-25): reflectance bands of earlier scenes hold ``reflectance * 10000``,
    later ones ``reflectance * 10000 + 1000`` (:func:`dn_offset`).

    Parameters
    ----------
    out_dir
        Target directory (created if missing). Existing sample files are replaced
        atomically; stale COGs and scene folders of an earlier sample (other dates, or
        the earlier flat ``S2_33UXP_{date}_{band}.tif`` layout) are removed.
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
    transform_20m = Affine(PIXEL_SIZE_20M, 0.0, ox, 0.0, -PIXEL_SIZE_20M, oy)
    transforms = {PIXEL_SIZE: transform, PIXEL_SIZE_20M: transform_20m}
    size_20m = -(-size // 2)
    scene_ids = tuple(scene_id(k, d) for k, d in enumerate(dates))
    scene_dirs = tuple(cog_dir / s for s in scene_ids)
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
                scene_dirs[k].mkdir(exist_ok=True)
                stats: dict[str, float] = {}
                for band, array in _render_scene(land, scene_rng, date, stats):
                    path = cog_dir / PATTERN.format(scene=scene_ids[k], band=band)
                    res = BAND_RESOLUTION[band]
                    future = pool.submit(
                        _write_cog, path, array, transforms[res],
                        nearest=band == "SCL", blocksize=BLOCKSIZE[res],
                    )  # fmt: skip
                    message = None
                    if band == BANDS[-1]:
                        message = (
                            f"scene {k + 1}/{scenes} {scene_ids[k]}: "
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
        cog_paths=tuple(written),
        scene_dirs=scene_dirs,
        scene_ids=scene_ids,
        fields_path=fields_path,
        regions_path=regions_path,
        dates=dates,
        bands=BANDS,
        band_names=dict(BAND_NAMES),
        band_resolution=dict(BAND_RESOLUTION),
        tile=TILE,
        crs_epsg=CRS_EPSG,
        transform=_coefficients(transform),
        transform_20m=_coefficients(transform_20m),
        shape_yx=(size, size),
        shape_yx_20m=(size_20m, size_20m),
        pattern=PATTERN,
        n_fields=fields,
    )
    logger.info("sample written in %.1f s: %d COGs", time.perf_counter() - t0, len(written))
    return info


def _coefficients(transform: Affine) -> tuple[float, float, float, float, float, float]:
    return (transform.a, transform.b, transform.c, transform.d, transform.e, transform.f)


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
            hint="e.g. start=datetime.date(2021, 10, 1)",
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
