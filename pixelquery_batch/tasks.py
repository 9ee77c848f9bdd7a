"""Worker-side code: one :class:`WorkUnit` -> read the chunks it needs -> kernels -> rows.

Runs in Dask worker processes (or in-process for the synchronous path). The repository
is opened once per process (:meth:`RepoRef.session` caches it) and TIFF headers are never
re-read: the unit carries the array paths. The result is a compact Arrow table.
"""

from __future__ import annotations

import datetime as dt
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import shapely

from .catalog.chunks import ChunkReader, ChunkRequest, chunks_for_window
from .catalog.models import BandInfo
from .catalog.store import RepoRef
from .errors import TaskError
from .planner import SceneTask, WorkUnit

__all__ = ["JobContext", "UnitResult", "result_schema", "run_unit"]


@dataclass(frozen=True, slots=True)
class JobContext:
    """Everything units share (sent to each worker once)."""

    repo: RepoRef
    job_hash: str
    variables: tuple[tuple[str, str], ...]  # (name, expression text)
    stats: tuple[str, ...]
    rule: str = "centre"
    mask_nodata: bool = True
    cloud_band: str | None = None
    cloud_classes: tuple[int, ...] | None = None
    cloud_bits: tuple[int, ...] | None = None
    on_error: str = "skip"

    def __repr__(self) -> str:  # keep credentials out of logs
        return f"JobContext(job_hash={self.job_hash!r}, repo={self.repo!r})"


@dataclass
class UnitResult:
    """What a unit returns to the client."""

    unit_id: str
    table: pa.Table
    chunks_read: int
    duration_s: float
    failures: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)


def stat_columns(stats: Sequence[str]) -> list[str]:
    """Stat columns in output order (count and valid_fraction always last)."""
    cols = [s for s in stats if s not in ("count", "valid_fraction")]
    return [*cols, "count", "valid_fraction"]


def result_schema(stats: Sequence[str]) -> pa.Schema:
    """Schema of the stats table for a list of requested statistics."""
    return pa.schema(
        [
            ("field_id", pa.string()),
            ("scene_id", pa.string()),
            ("datetime", pa.timestamp("us", tz="UTC")),
            ("variable", pa.string()),
            *[(c, pa.float64()) for c in stat_columns(stats)],
            ("pixel_count", pa.float64()),
            ("nodata_count", pa.float64()),
            ("cloud_count", pa.float64()),
            ("snapshot_id", pa.string()),
            ("job_hash", pa.string()),
        ]
    )


@lru_cache(maxsize=256)
def _expression(name: str, text: str) -> Any:
    from .expr import parse_expression

    return parse_expression(text, name=name)


_READERS: dict[tuple[str, str, str], ChunkReader] = {}


def _reader_for(repo: RepoRef) -> ChunkReader:
    from .catalog.chunks import IcechunkChunkReader

    key = repo.cache_key
    reader = _READERS.get(key)
    if reader is None:
        reader = _READERS.setdefault(key, IcechunkChunkReader(repo.session()))
    return reader


def _physical(raw: np.ndarray, band: BandInfo, mask_nodata: bool) -> np.ndarray:
    values = raw.astype(np.float64)
    if mask_nodata and band.nodata is not None:
        if np.isnan(band.nodata):
            pass  # NaN stays NaN
        else:
            values[raw == band.nodata] = np.nan
    if band.scale != 1.0 or band.offset != 0.0:
        values = values * band.scale + band.offset
    return values


def _cloud_mask(raw: np.ndarray, band: BandInfo, ctx: JobContext) -> np.ndarray:
    valid = np.ones(raw.shape, bool) if band.nodata is None else raw != band.nodata
    if ctx.cloud_classes is not None:
        return valid & np.isin(raw, np.asarray(ctx.cloud_classes, dtype=raw.dtype))
    bits = 0
    for b in ctx.cloud_bits or ():
        bits |= 1 << b
    return valid & ((raw.astype(np.int64) & bits) != 0)


def _needed_bands(scene: SceneTask, ctx: JobContext) -> dict[str, BandInfo]:
    names = [n for v, text in ctx.variables for n in sorted(_expression(v, text).names)]
    if ctx.cloud_band:
        names.append(ctx.cloud_band)
    return {n: scene.band(n) for n in dict.fromkeys(names)}


def _clip(window: tuple[int, int, int, int], shape_yx: tuple[int, int]):  # type: ignore[no-untyped-def]
    r0, c0, h, w = window
    y0, y1 = max(r0, 0), min(r0 + h, shape_yx[0])
    x0, x1 = max(c0, 0), min(c0 + w, shape_yx[1])
    if y1 <= y0 or x1 <= x0:
        return None
    return (y0, y1, x0, x1), (slice(y0 - r0, y1 - r0), slice(x0 - c0, x1 - c0))


def run_unit(unit: WorkUnit, ctx: JobContext, reader: ChunkReader | None = None) -> UnitResult:
    """Compute every (field, scene, variable) row of one unit.

    Parameters
    ----------
    unit
        From the planner.
    ctx
        Shared job settings.
    reader
        Chunk reader; default: the per-process Icechunk reader for ``ctx.repo``.

    Raises
    ------
    TaskError
        With ``on_error: fail``, on the first failing field or scene (ids attached).
    """
    from .kernels.stats import zonal_stats
    from .rasterize import geometry_weights

    t0 = time.perf_counter()
    reader = reader or _reader_for(ctx.repo)
    before = reader.chunks_read
    cols = stat_columns(ctx.stats)
    rows: dict[str, list[Any]] = {k: [] for k in result_schema(ctx.stats).names}
    failures: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []

    def fail(exc: BaseException, *, scene_id: str | None, field_id: str | None) -> None:
        info = {"unit_id": unit.unit_id, "scene_id": scene_id, "field_id": field_id,
                "error": f"{type(exc).__name__}: {exc}"}
        if ctx.on_error == "fail":
            raise TaskError(
                f"unit {unit.unit_id} failed on field {field_id!r}, scene {scene_id!r}: {exc}",
                unit_id=unit.unit_id, field_id=field_id, scene_id=scene_id,
            ) from exc
        info["traceback"] = "".join(traceback.format_exception(exc))[-2000:]
        failures.append(info)

    # Field geometry, weights and clipped windows: once per unit, shared by all scenes.
    fields = []
    for f in unit.fields:
        try:
            geom = shapely.from_wkb(f.wkb)
            weights = geometry_weights(geom, unit.transform, f.window, ctx.rule)
            clip = _clip(f.window, unit.shape_yx)
            total = float(weights.sum())
            if total == 0:
                warnings.append({"field_id": f.field_id, "warning":
                                 f"field covers no pixel with the {ctx.rule} rule (smaller than a pixel?)"})
            fields.append((f, weights, clip))
        except Exception as exc:
            fail(exc, scene_id=None, field_id=f.field_id)
    clipped: list[tuple[int, int, int, int]] = [c[0] for _, _, c in fields if c is not None]
    if clipped:
        mosaic = (min(c[0] for c in clipped), max(c[1] for c in clipped),
                  min(c[2] for c in clipped), max(c[3] for c in clipped))
    else:
        mosaic = None

    exprs = [(vname, _expression(vname, text)) for vname, text in ctx.variables]
    for scene in unit.scenes:
        when = dt.datetime.fromisoformat(scene.datetime)
        raws: dict[tuple[str, int | None], np.ndarray] = {}
        try:
            bands = _needed_bands(scene, ctx)
            if mosaic is not None:
                requests = []
                for band in {(b.array, b.index): b for b in bands.values()}.values():
                    chunks: set[tuple[int, int]] = set()
                    for c in clipped:
                        chunks |= chunks_for_window(c, band.chunks_yx)
                    requests.append(ChunkRequest(scene.group, band, mosaic, frozenset(chunks)))
                raws = dict(zip(((r.band.array, r.band.index) for r in requests),
                                reader.read(requests), strict=True))
        except Exception as exc:
            for f, _, _ in fields:
                fail(exc, scene_id=scene.scene_id, field_id=f.field_id)
            continue

        for f, weights, clip in fields:
            try:
                h, w = f.window[2], f.window[3]
                env: dict[str, np.ndarray] = {}
                cloud_full = np.zeros((h, w), bool)
                if clip is not None and mosaic is not None:
                    (y0, y1, x0, x1), sl = clip
                    rs = (slice(y0 - mosaic[0], y1 - mosaic[0]), slice(x0 - mosaic[2], x1 - mosaic[2]))
                    for name, band in bands.items():
                        raw = raws[(band.array, band.index)][rs]
                        full = np.full((h, w), np.nan)
                        full[sl] = _physical(raw, band, ctx.mask_nodata)
                        env[name] = full
                        if ctx.cloud_band and name == ctx.cloud_band:
                            cloud_full[sl] = _cloud_mask(raw, band, ctx)
                else:
                    env = {name: np.full((h, w), np.nan) for name in bands}
                in_field = weights > 0
                for vname, expr in exprs:
                    values = np.asarray(expr.evaluate({n: env[n] for n in expr.names}), dtype=np.float64)
                    if values.shape != (h, w):
                        values = np.broadcast_to(values, (h, w)).copy()
                    if ctx.cloud_band:
                        values = np.where(cloud_full, np.nan, values)
                    res = zonal_stats(values, weights, ctx.stats)
                    invalid = in_field & ~np.isfinite(values)
                    cloud_w = float(weights[invalid & cloud_full].sum())
                    rows["field_id"].append(f.field_id)
                    rows["scene_id"].append(scene.scene_id)
                    rows["datetime"].append(when)
                    rows["variable"].append(vname)
                    for c in cols:
                        rows[c].append(float(res[c]))
                    rows["pixel_count"].append(float(weights.sum()))
                    rows["nodata_count"].append(float(weights[invalid].sum()) - cloud_w)
                    rows["cloud_count"].append(cloud_w)
                    rows["snapshot_id"].append(ctx.repo.snapshot_id)
                    rows["job_hash"].append(ctx.job_hash)
            except TaskError:
                raise
            except Exception as exc:
                fail(exc, scene_id=scene.scene_id, field_id=f.field_id)
    table = pa.Table.from_pydict(rows, schema=result_schema(ctx.stats))
    return UnitResult(unit.unit_id, table, reader.chunks_read - before,
                      time.perf_counter() - t0, failures, warnings)
