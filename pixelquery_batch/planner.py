"""Planner: (scenes x fields) -> frozen, picklable work units. Pure: no I/O, no cluster.

The plan is chunk-aware. Scenes sharing a work grid (same CRS, pixel grid and band
tiling) are planned together; fields are reprojected once per CRS. A per-field unit
holds every field of a grid (cut into strips of rows of equal cost only when their
pixels would not fit a worker's memory) and a batch of that grid's scenes: it decodes
each chunk its fields touch once per scene and band, works out each field's pixels once,
and computes each field entirely (exact medians and percentiles). Scene batches never
split a day and are sized by a small cost model so that the workers share the load.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import pyarrow as pa
import shapely

from .catalog.models import BandInfo, Catalog, Scene
from .errors import CatalogError, PlanError

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = [
    "CompositeSource",
    "CompositeUnit",
    "FieldBlock",
    "FieldTask",
    "Plan",
    "RegionClipUnit",
    "RegionPart",
    "RollupPlan",
    "RollupUnit",
    "SceneTask",
    "WorkUnit",
    "plan_composites",
    "plan_job",
    "plan_region_clips",
    "plan_rollup",
    "restrict_plan",
    "work_grid",
]

Window = tuple[int, int, int, int]  # row0, col0, height, width (may extend past the raster)

#: Cost model (seconds), measured on the 2-core reference machine (benchmarks/).
COST_CHUNK_S = 0.0012      # fetch + decode one 512x512 chunk (libdeflate + predictor)
COST_PIXEL_S = 6e-8        # gather + band math + statistics of one field pixel
COST_FIELD_VAR_S = 2e-6    # per field, scene and variable (segment bookkeeping)


@dataclass(frozen=True, slots=True)
class SceneTask:
    """What a worker needs of one scene: where its bands are and when it was taken.

    ``exclude_wkb`` (in the unit's CRS) covers the pixels that same-day scenes on other
    grids already provide: day merges and rollups leave them out, so pixels of overlapping
    tiles are never counted twice.
    """

    scene_id: str
    datetime: str
    group: str
    bands: tuple[tuple[str, BandInfo], ...]  # requested name/role -> band (own grid set)
    day: str = ""
    exclude_wkb: bytes | None = None

    def band(self, name: str) -> BandInfo:
        for key, info in self.bands:
            if key == name:
                return info
        raise KeyError(name)

    def has_band(self, name: str) -> bool:
        return any(key == name for key, _ in self.bands)


@dataclass(frozen=True, slots=True)
class FieldTask:
    """One field in a grid's CRS, with its (unclipped) pixel window."""

    field_id: str
    wkb: bytes
    window: Window

    def __reduce__(self) -> tuple[Any, ...]:
        # the generic slots-dataclass state calls dataclasses.fields() per object: a
        # 20,000-field unit pickled that way held the GIL ~4x longer
        return (FieldTask, (self.field_id, self.wkb, self.window))


class FieldBlock(Sequence[FieldTask]):
    """The fields of a work unit as three columns: ids, WKB geometries, pixel windows.

    A unit of 20,000 fields travels to a worker as four buffers (an Arrow string array,
    an Arrow binary array, an ``(n, 4)`` int64 array): pickling and unpickling costs a few
    copies, not an object per field (a tuple of per-field objects held the GIL ~15 ms per
    unpickle on the worker's I/O loop, ~100 ms while a unit computed beside it, and so
    started a worker's second thread late). Iterating yields :class:`FieldTask` objects.

    Examples
    --------
    >>> b = FieldBlock.from_tasks([FieldTask("a", b"\\x01", (0, 0, 2, 2)),
    ...                            FieldTask("b", b"\\x02", (1, 1, 1, 1))])
    >>> len(b), b[1].field_id, b.field_ids(), b.windows.tolist()
    (2, 'b', ['a', 'b'], [[0, 0, 2, 2], [1, 1, 1, 1]])
    >>> b.take([1]) == FieldBlock.from_tasks([b[1]])
    True
    """

    __slots__ = ("hashes", "ids", "windows", "wkb")

    def __init__(self, ids: Any, wkb: Any, windows: np.ndarray, hashes: Any = None) -> None:
        self.ids = ids if isinstance(ids, pa.Array) else pa.array(list(ids), pa.string())
        self.wkb = wkb if isinstance(wkb, pa.Array) else pa.array(list(wkb), pa.binary())
        self.windows = np.ascontiguousarray(windows, dtype=np.int64).reshape(-1, 4)
        # the fields' geometry hashes (``incremental.field_hashes``), attached by the run
        # when units stage their own rows; not part of the digest (pixels do not depend
        # on them)
        self.hashes = (hashes if hashes is None or isinstance(hashes, pa.Array)
                       else pa.array(list(hashes), pa.string()))
        if not len(self.ids) == len(self.wkb) == len(self.windows):
            raise ValueError("field ids, geometries and windows differ in length")
        if self.hashes is not None and len(self.hashes) != len(self.ids):
            raise ValueError("field ids and hashes differ in length")

    @classmethod
    def from_tasks(cls, tasks: Sequence[FieldTask] | FieldBlock) -> FieldBlock:
        if isinstance(tasks, FieldBlock):
            return tasks
        tasks = list(tasks)
        return cls([t.field_id for t in tasks], [t.wkb for t in tasks],
                   np.asarray([t.window for t in tasks], dtype=np.int64).reshape(-1, 4))

    def __len__(self) -> int:
        return len(self.windows)

    @overload
    def __getitem__(self, i: int) -> FieldTask: ...
    @overload
    def __getitem__(self, i: slice) -> FieldBlock: ...

    def __getitem__(self, i: int | slice) -> FieldTask | FieldBlock:
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        if i < 0:
            i += len(self)
        return FieldTask(self.ids[i].as_py(), self.wkb[i].as_py(),
                         tuple(int(v) for v in self.windows[i]))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[FieldTask]:
        wins = self.windows.tolist()
        for fid, wkb, win in zip(self.field_ids(), self.wkbs(), wins, strict=True):
            yield FieldTask(fid, wkb, tuple(win))  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FieldBlock):
            return NotImplemented
        return (self.ids.equals(other.ids) and self.wkb.equals(other.wkb)
                and np.array_equal(self.windows, other.windows))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FieldBlock({len(self)} fields)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FieldBlock, (self.ids, self.wkb, self.windows, self.hashes))

    def field_ids(self) -> list[str]:
        return self.ids.to_pylist()  # type: ignore[no-any-return]

    def wkbs(self) -> list[bytes]:
        return self.wkb.to_pylist()  # type: ignore[no-any-return]

    def take(self, idx: Sequence[int] | np.ndarray) -> FieldBlock:
        """The fields at positions ``idx``, in that order (compact buffers)."""
        idx = np.asarray(idx, dtype=np.int64)
        ix = pa.array(idx, pa.int64())
        return FieldBlock(self.ids.take(ix), self.wkb.take(ix), self.windows[idx],
                          None if self.hashes is None else self.hashes.take(ix))

    def with_hashes(self, hashes: pa.Array) -> FieldBlock:
        """The same fields carrying their geometry hashes (aligned with :attr:`ids`)."""
        return FieldBlock(self.ids, self.wkb, self.windows, hashes)

    def digest(self) -> str:
        """A digest of the ids, geometries and windows (workers cache pixels under it)."""
        h = hashlib.sha256(b"fields\x1f")
        for arr in (self.ids, self.wkb):
            compact = arr.take(np.arange(len(arr))) if arr.offset else arr
            for buf in compact.buffers()[1:]:
                if buf is not None:
                    h.update(memoryview(buf))
        h.update(self.windows.tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class WorkUnit:
    """One task: the fields of a grid (or of a strip of it) x a batch of its scenes."""

    unit_id: str
    crs: str  # "EPSG:nnnn" or WKT2
    transform: tuple[float, float, float, float, float, float]  # the work grid
    shape_yx: tuple[int, int]
    scenes: tuple[SceneTask, ...]
    fields: FieldBlock  # a sequence of FieldTask is converted
    chunks: int  # distinct chunks (per band and scene) the unit reads
    fields_key: str = ""  # digest of the fields: workers cache their pixels under it

    def __post_init__(self) -> None:
        if not isinstance(self.fields, FieldBlock):
            object.__setattr__(self, "fields", FieldBlock.from_tasks(self.fields))

    def __dask_tokenize__(self) -> str:
        return self.unit_id

    @property
    def n_pairs(self) -> int:
        return len(self.scenes) * len(self.fields)


@dataclass(frozen=True)
class Plan:
    """The planned job. ``units`` is what runs; the rest is what ``pqb plan`` reports."""

    units: tuple[WorkUnit, ...]
    scene_ids: tuple[str, ...]
    n_fields: int
    fields_matched: int
    fields_outside: tuple[str, ...]
    skipped_scenes: tuple[tuple[str, str], ...]  # (scene_id, reason)
    n_pairs: int
    chunks_read: int
    chunks_touched: int
    bytes_decoded: int
    variables_bands: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())
    optional_bands: tuple[str, ...] = ()  # read where a scene has them (cloud: auto)

    @property
    def read_amplification(self) -> float:
        return self.chunks_read / self.chunks_touched if self.chunks_touched else 1.0

    def summary(self) -> dict[str, Any]:
        """JSON-friendly numbers (``pqb plan --json``)."""
        return {
            "scenes_matched": len(self.scene_ids),
            "scenes_skipped": [{"scene_id": s, "reason": r} for s, r in self.skipped_scenes],
            "fields": self.n_fields,
            "fields_matched": self.fields_matched,
            "fields_outside_every_scene": list(self.fields_outside),
            "field_scene_pairs": self.n_pairs,
            "tasks": len(self.units),
            "pairs_per_task": round(self.n_pairs / len(self.units), 1) if self.units else 0,
            "bands_read": list(self.variables_bands),
            "bands_read_where_present": list(self.optional_bands),
            "chunks_read": self.chunks_read,
            "chunks_touched": self.chunks_touched,
            "read_amplification": round(self.read_amplification, 3),
            "bytes_decoded_estimate": self.bytes_decoded,
            "warnings": list(self.warnings),
        }


def _scene_bands(scene: Scene, names: Sequence[str], optional: Sequence[str] = ()
                 ) -> tuple[tuple[str, BandInfo], ...] | str:
    """Requested bands of a scene (each with its own grid filled in), or why it lacks one.

    ``optional`` bands (e.g. the cloud mask of ``masks.cloud: auto``) are included when
    the scene has them and silently left out otherwise."""
    out = []
    for name in names:
        try:
            out.append((name, scene.band(name)))
        except CatalogError:
            return f"no band or role {name!r} (has {', '.join(scene.band_names)})"
    for name in optional:
        if name in names:
            continue
        try:
            out.append((name, scene.band(name)))
        except CatalogError:
            continue
    filled = []
    for name, band in out:
        if band.transform is None or band.shape_yx is None:  # catalogs of single-grid scenes
            band = dataclasses.replace(band, transform=tuple(scene.transform),
                                       shape_yx=tuple(scene.shape_yx))
        filled.append((name, band))
    return tuple(filled)


def work_grid(scene: Scene, bands: Sequence[BandInfo], resolution: float | None = None
              ) -> tuple[tuple[float, ...], tuple[int, int]]:
    """The grid a job computes a scene on: the finest grid among ``bands``, or a coarser
    grid of pixel size ``resolution`` with the same origin.

    Raises
    ------
    PlanError
        ``resolution`` finer than the finest band (pixels would be invented).
    """
    from .grids import coarser_grid, resolution_of

    grids = [scene.band_grid(b) for b in bands] or [(scene.transform, scene.shape_yx)]
    finest = min(grids, key=lambda g: (resolution_of(g[0])[0] * resolution_of(g[0])[1], g))
    if resolution is None:
        return tuple(finest[0]), tuple(finest[1])  # type: ignore[return-value]
    fx, fy = resolution_of(finest[0])
    if resolution < min(fx, fy) - 1e-9:
        raise PlanError(
            f"resolution {resolution:g} is finer than the finest band the job uses "
            f"({min(fx, fy):g} in scene {scene.scene_id})",
            hint="leave `resolution` out to compute on the finest band's grid",
            scene_id=scene.scene_id)
    if abs(resolution - fx) <= 1e-9 and abs(resolution - fy) <= 1e-9:
        return tuple(finest[0]), tuple(finest[1])  # type: ignore[return-value]
    return coarser_grid(finest[0], finest[1], resolution)  # type: ignore[arg-type]


GridKey = tuple[Any, ...]
GridMembers = list[tuple[Scene, tuple[tuple[str, BandInfo], ...]]]


def _band_signature(resolved: tuple[tuple[str, BandInfo], ...]) -> tuple[Any, ...]:
    return tuple(sorted((n, b.transform, b.shape_yx, b.chunks_yx) for n, b in resolved))


def _group_grids(catalog: Catalog, bands: Sequence[str], *, optional: Sequence[str] = (),
                 resolution: float | None = None,
                 ) -> tuple[dict[GridKey, GridMembers], list[tuple[str, str]]]:
    """Scenes with the needed bands, grouped by work grid (ordered), and the skipped ones.

    A grid key is ``(crs, work transform, work shape, band grids)``: scenes sharing it
    share every pixel index (field masks, chunk ids) and differ only in pixel values.
    """
    scenes_all = catalog.scenes()
    if not scenes_all:
        raise PlanError("no scene matches the job's scene filter",
                        hint="widen scenes.start/end or check the product; `pqb scenes` lists them")
    skipped: list[tuple[str, str]] = []
    grids: dict[GridKey, GridMembers] = defaultdict(list)
    for scene in scenes_all:
        resolved = _scene_bands(scene, bands, optional)
        if isinstance(resolved, str):
            skipped.append((scene.scene_id, resolved))
            continue
        if scene.transform[1] != 0 or scene.transform[3] != 0:
            raise PlanError(f"scene {scene.scene_id} is on a rotated grid: not supported")
        wt, wshape = work_grid(scene, [b for _, b in resolved], resolution)
        grids[(scene.crs, wt, wshape, _band_signature(resolved))].append((scene, resolved))
    if not grids:
        raise PlanError("no matched scene has the bands the job needs",
                        hint="; ".join(f"{s}: {r}" for s, r in skipped[:5]))
    ordered = dict(sorted(grids.items(), key=lambda kv: repr(kv[0])))
    for key in ordered:
        ordered[key].sort(key=lambda m: (m[0].datetime, m[0].scene_id))
    return ordered, skipped


def _work_chunk(work: tuple[Any, Any], bands: Sequence[BandInfo]) -> tuple[int, int]:
    """The largest band chunk expressed in work-grid pixels (drives blocking)."""
    from .grids import resolution_of

    wx, wy = resolution_of(work[0])
    best = (1, 1)
    for b in bands:
        bx, by = resolution_of(b.transform) if b.transform is not None else (wx, wy)
        cy = max(1, round(b.chunks_yx[0] * by / wy))
        cx = max(1, round(b.chunks_yx[1] * bx / wx))
        best = (max(best[0], cy), max(best[1], cx))
    return best


def _distinct_bands(resolved: Iterable[tuple[str, BandInfo]]) -> list[BandInfo]:
    """One entry per stored array/band (two names for one band read it once)."""
    return list({(b.array, b.index): b for _, b in resolved}.values())


def _count_chunks(work: tuple[Any, Any], bands: Sequence[BandInfo],
                  windows: Sequence[tuple[int, int, int, int]]) -> tuple[int, int]:
    """(chunks, decoded bytes) of the given clipped work windows over every band."""
    from .grids import band_chunks, grid_map

    n = nbytes = 0
    for b in bands:
        gm = grid_map(work, (b.transform, b.shape_yx))
        k = len(band_chunks(gm, list(windows), b.chunks_yx))
        n += k
        nbytes += k * b.chunks_yx[0] * b.chunks_yx[1] * np.dtype(b.dtype).itemsize
    return n, nbytes


def _day(scene: Scene) -> str:
    return scene.datetime.astimezone(dt.UTC).date().isoformat()


def _exclusions(grids: dict[GridKey, GridMembers]) -> dict[tuple[GridKey, str], bytes]:
    """Per (grid, day): the area (in the grid's CRS) that earlier grids cover that day.

    Grids are ranked in a fixed order; a pixel inside a higher-ranked grid's footprint on
    the same day belongs to that grid, so overlapping tiles are never counted twice.
    """
    from .geo import reproject_geometry

    by_day: dict[str, list[GridKey]] = defaultdict(list)
    for key, members in grids.items():
        for day in dict.fromkeys(_day(s) for s, _ in members):
            by_day[day].append(key)
    out: dict[tuple[GridKey, str], bytes] = {}
    for day, keys in by_day.items():
        for i, key in enumerate(keys[1:], 1):
            own = grids[key][0][0]
            parts = []
            for other in keys[:i]:
                fp = grids[other][0][0].footprint_lonlat
                if fp.intersects(own.footprint_lonlat):
                    parts.append(reproject_geometry(shapely.segmentize(fp, 0.01), "EPSG:4326", own.crs))
            if parts:
                out[(key, day)] = shapely.to_wkb(shapely.union_all(parts))
    return out


def _scene_tasks(key: GridKey, batch: GridMembers,
                 exclusions: dict[tuple[GridKey, str], bytes]) -> tuple[SceneTask, ...]:
    return tuple(SceneTask(s.scene_id, s.datetime.isoformat(), s.group, rb, _day(s),
                           exclusions.get((key, _day(s)))) for s, rb in batch)


def _day_batches(members: GridMembers, per_unit: int) -> list[GridMembers]:
    """Consecutive batches of about ``per_unit`` scenes that never split a day."""
    days: dict[str, GridMembers] = defaultdict(list)
    for m in members:
        days[_day(m[0])].append(m)
    batches: list[GridMembers] = []
    current: GridMembers = []
    for day_members in days.values():
        if current and len(current) + len(day_members) > per_unit:
            batches.append(current)
            current = []
        current.extend(day_members)
    if current:
        batches.append(current)
    return batches


def _meeting(polygons: gpd.GeoDataFrame, by_crs: dict[str, Any], crs: str,
             footprint: Any) -> tuple[np.ndarray, np.ndarray]:
    """``polygons``' geometries in ``crs`` (reprojected once per CRS: ``by_crs`` keeps
    them) and the positions of those meeting ``footprint`` (a grid's, in ``crs``)."""
    geoms = by_crs.get(crs)
    if geoms is None:
        geoms = by_crs[crs] = polygons.geometry.to_crs(crs).to_numpy()
    return geoms, np.flatnonzero(shapely.intersects(geoms, footprint))


def _windows(bounds: np.ndarray, transform: tuple[float, ...], pad: int) -> np.ndarray:
    """Unclipped (row0, col0, height, width) windows of bounds arrays (north-up grids)."""
    a, _, c, _, e, f = transform
    col0 = np.floor((bounds[:, 0] - c) / a).astype(np.int64) - pad
    col1 = np.ceil((bounds[:, 2] - c) / a).astype(np.int64) + pad
    row0 = np.floor((bounds[:, 3] - f) / e).astype(np.int64) - pad
    row1 = np.ceil((bounds[:, 1] - f) / e).astype(np.int64) + pad
    return np.stack([row0, col0, np.maximum(row1 - row0, 1), np.maximum(col1 - col0, 1)], axis=1)


def _strip_index(centre_row: np.ndarray, cost: np.ndarray, n_strips: int) -> np.ndarray:
    """Strip of each field: ``n_strips`` bands of rows (by the field's centre row) of
    about equal estimated cost, so that workers given one strip each finish together.

    The cuts fall where the cost splits, not snapped to chunk boundaries: fields smaller
    than a chunk that straddle a cut inside a chunk row make both strips read that one
    row, where a cut on a chunk boundary makes them read the rows on both sides of it.
    Fields whose centres share a row stay in one strip.

    Examples
    --------
    >>> _strip_index(np.array([50, 0, 10, 20, 30, 40]), np.array([4, 1, 1, 1, 3, 2.0]), 2)
    array([1, 0, 0, 0, 0, 1])
    >>> _strip_index(np.array([5, 5, 5]), np.ones(3), 2)
    array([0, 0, 0])
    """
    if n_strips <= 1 or len(centre_row) == 0:
        return np.zeros(len(centre_row), dtype=np.int64)
    order = np.argsort(centre_row, kind="stable")
    cum = np.cumsum(cost[order], dtype=np.float64)
    share = cum[-1] * np.arange(1, n_strips) / n_strips
    first = np.searchsorted(cum, share)  # the field whose cost reaches each share
    below = np.where(first > 0, cum[np.maximum(first - 1, 0)], 0.0)
    cut = first + (cum[first] - share <= share - below)  # the nearer side of that field
    edges = np.unique(centre_row[order][cut[cut < len(cum)]])
    strip = np.searchsorted(edges, centre_row, side="right")
    return np.unique(strip, return_inverse=True)[1].astype(np.int64)


def _unit_id(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\x1f")
    return h.hexdigest()[:16]


def plan_job(
    catalog: Catalog,
    fields: gpd.GeoDataFrame,
    *,
    bands: Sequence[str],
    optional_bands: Sequence[str] = (),
    rule: str = "centre",
    n_variables: int = 1,
    resolution: float | None = None,
    min_units: int = 4,
    max_unit_s: float = 30.0,
    max_unit_pixels: int = 12_000_000,
) -> Plan:
    """Expand fields x scenes into work units shaped by cost.

    A unit holds every field of a work grid and a batch of that grid's scenes: each
    chunk a field touches is decoded once per scene and band (no read amplification),
    and each field's pixels are worked out once per unit (and once per worker, which
    caches them). Scenes are batched (never splitting a day) so that there are at least
    ``min_units`` units to share among the workers and none lasts much longer than
    ``max_unit_s``; grids whose fields hold more than ``max_unit_pixels`` pixels are cut
    into strips of rows of about equal cost (memory bound) at the price of re-reading the
    chunk row that fields straddling a strip boundary need.

    Parameters
    ----------
    catalog
        The scenes to use (already filtered by time/product).
    fields
        From :func:`pixelquery_batch.fields.prepare_fields` (``field_id``, geometry, CRS).
    bands
        Band names or roles every scene must provide (the variables' inputs).
    optional_bands
        Bands used where a scene has them (the cloud mask of ``masks.cloud: auto``).
    rule
        Pixel rule; ``all_touched`` and ``coverage`` pad windows by one pixel.
    n_variables
        Variables computed per field (cost model).
    resolution
        Compute on a grid of this pixel size instead of the finest band's grid.
    min_units
        Units to aim for at least (about twice the workers: they balance the load).
    max_unit_s
        Estimated duration above which a unit's scenes are split further.
    max_unit_pixels
        Field pixels (window area) above which a grid's fields are split into strips.

    Raises
    ------
    PlanError
        No scene, no field, or no scene with the needed bands.
    """
    if len(fields) == 0:
        raise PlanError("no fields to compute")
    grids, skipped = _group_grids(catalog, bands, optional=optional_bands, resolution=resolution)
    exclusions = _exclusions(grids)

    pad = 0 if rule in ("centre", "point") else 1
    ids = fields["field_id"].to_numpy()
    ids_arr = pa.array([str(i) for i in ids], pa.string())
    matched = np.zeros(len(fields), dtype=bool)
    by_crs: dict[str, Any] = {}
    units: list[WorkUnit] = []
    chunks_read = chunks_touched = bytes_decoded = 0
    per_grid = max(1, math.ceil(min_units / max(1, len(grids))))
    for gkey, members in grids.items():
        crs, transform, shape_yx, _ = gkey
        geoms, hit = _meeting(fields, by_crs, crs, members[0][0].footprint)
        if len(hit) == 0:
            continue
        matched[hit] = True
        wins = _windows(shapely.bounds(geoms[hit]), transform, pad)
        wkbs = pa.array(shapely.to_wkb(geoms[hit]), pa.binary())
        band_infos = _distinct_bands(members[0][1])
        work = (transform, shape_yx)
        field_px = wins[:, 2].astype(np.int64) * wins[:, 3]
        # estimated seconds per scene of each field's own work (its chunks come per strip)
        field_s = n_variables * (field_px * COST_PIXEL_S + COST_FIELD_VAR_S)
        strip = _strip_index(wins[:, 0] + wins[:, 2] // 2, field_s,
                             max(1, math.ceil(int(field_px.sum()) / max_unit_pixels)))
        strips = np.unique(strip)
        all_clipped: list[tuple[int, int, int, int]] = []
        for sk in strips:
            part = np.flatnonzero(strip == sk)
            part = part[np.lexsort((wins[part, 1], wins[part, 0]))]  # row-major: local reads
            block = FieldBlock(ids_arr.take(pa.array(hit[part])), wkbs.take(pa.array(part)),
                               wins[part])
            clipped = _clipped(block.windows, shape_yx)
            all_clipped.extend(clipped)
            n_chunks, _ = _count_chunks(work, band_infos, clipped)
            per_scene = n_chunks * COST_CHUNK_S + float(field_s[part].sum())
            n_batches = max(math.ceil(per_grid / len(strips)),
                            math.ceil(per_scene * len(members) / max_unit_s))
            per_unit = max(1, math.ceil(len(members) / max(1, n_batches)))
            fkey = block.digest()
            for batch in _day_batches(members, per_unit):
                stasks = _scene_tasks(gkey, batch, exclusions)
                uid = _unit_id(crs, transform, int(sk), fkey, [s.scene_id for s in stasks])
                units.append(WorkUnit(uid, crs, tuple(transform), tuple(shape_yx),  # type: ignore[arg-type]
                                      stasks, block, n_chunks, fkey))
                chunks_read += n_chunks * len(batch)
        touched, nbytes = _count_chunks(work, band_infos, all_clipped)
        chunks_touched += touched * len(members)
        bytes_decoded += nbytes * len(members)
    used = {s.scene_id for m in grids.values() for s, _ in m}
    warnings: list[str] = []
    outside = tuple(str(i) for i in ids[~matched])
    if outside:
        warnings.append(f"{len(outside)} field(s) lie outside every matched scene")
    if skipped:
        warnings.append(f"{len(skipped)} scene(s) skipped for missing bands")
    n_pairs = sum(u.n_pairs for u in units)
    return Plan(
        units=tuple(units),
        scene_ids=tuple(sorted(used)),
        n_fields=len(fields),
        fields_matched=int(matched.sum()),
        fields_outside=outside,
        skipped_scenes=tuple(skipped),
        n_pairs=n_pairs,
        chunks_read=chunks_read,
        chunks_touched=chunks_touched,
        bytes_decoded=bytes_decoded,
        variables_bands=tuple(bands),
        warnings=tuple(warnings),
        optional_bands=tuple(b for b in optional_bands if b not in bands),
    )


def _clipped(windows: np.ndarray, shape_yx: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(row0, row1, col0, col1) of the parts of unclipped ``(n, 4)`` windows inside the
    raster; windows wholly outside are left out."""
    return [c for c in _clipped_each(windows, shape_yx) if c[1] > c[0] and c[3] > c[2]]


# --------------------------------------------------------------------------- rollups


@dataclass(frozen=True, slots=True)
class RegionPart:
    """The part of a region inside one block, in the block grid's CRS."""

    region_id: str
    wkb: bytes


@dataclass(frozen=True, slots=True)
class RollupUnit:
    """One rollup task: one block of one grid x a batch of that grid's scenes."""

    unit_id: str
    crs: str  # "EPSG:nnnn" or WKT2
    transform: tuple[float, float, float, float, float, float]  # the work grid
    shape_yx: tuple[int, int]
    window: tuple[int, int, int, int]  # row0, row1, col0, col1 (inside the raster)
    parts: tuple[tuple[int, int, int, int], ...]  # work windows regions touch (read these)
    regions: tuple[RegionPart, ...]
    scenes: tuple[SceneTask, ...]
    periods: tuple[tuple[str, str], ...]  # (day, period_start)

    def __dask_tokenize__(self) -> str:
        return self.unit_id


@dataclass(frozen=True)
class RollupPlan:
    """The planned pixel rollup."""

    units: tuple[RollupUnit, ...]
    scene_ids: tuple[str, ...]
    n_regions: int
    regions_outside: tuple[str, ...]
    chunks_read: int
    skipped_scenes: tuple[tuple[str, str], ...]

    def summary(self) -> dict[str, Any]:
        return {
            "tasks": len(self.units),
            "scenes_matched": len(self.scene_ids),
            "regions": self.n_regions,
            "regions_outside_every_scene": list(self.regions_outside),
            "chunks_read": self.chunks_read,
            "scenes_skipped": [{"scene_id": s, "reason": r} for s, r in self.skipped_scenes],
        }


def plan_rollup(
    catalog: Catalog,
    regions: gpd.GeoDataFrame,
    *,
    bands: Sequence[str],
    period_of: Callable[[str], str],
    optional_bands: Sequence[str] = (),
    resolution: float | None = None,
    n_variables: int = 1,
    block_chunks: int = 2,
    target_unit_s: float = 1.0,
) -> RollupPlan:
    """Pixel-rollup units: chunk-aligned blocks of each work grid x batches of days.

    Blocks never overlap, so every chunk of every band is read once per scene (no read
    amplification, whatever the bands' tile sizes and resolutions), and every pixel
    belongs to exactly one block. Each unit lists the work-grid windows its regions
    touch; workers map them onto each band's own grid and chunks.

    Parameters
    ----------
    regions
        ``region_id`` and polygon geometry (any CRS).
    period_of
        Maps a UTC day (``YYYY-MM-DD``) to its period start (ISO string).
    """
    grids, skipped = _group_grids(catalog, bands, optional=optional_bands, resolution=resolution)
    exclusions = _exclusions(grids)
    ids = regions["region_id"].to_numpy()
    matched = np.zeros(len(regions), dtype=bool)
    units: list[RollupUnit] = []
    chunks_read = 0
    by_crs: dict[str, Any] = {}
    for gkey, members in grids.items():
        crs, transform, shape_yx, _ = gkey
        geoms, hit = _meeting(regions, by_crs, crs, members[0][0].footprint)
        if len(hit) == 0:
            continue
        matched[hit] = True
        band_infos = _distinct_bands(members[0][1])
        work = (transform, shape_yx)
        cy, cx = _work_chunk(work, band_infos)
        a, _, c, _, e, f = transform
        by, bx = cy * block_chunks, cx * block_chunks
        for r0 in range(0, shape_yx[0], by):
            for c0 in range(0, shape_yx[1], bx):
                r1, c1 = min(r0 + by, shape_yx[0]), min(c0 + bx, shape_yx[1])
                bbox = shapely.box(c + a * c0, f + e * r1, c + a * c1, f + e * r0)
                parts = []
                for k in hit:
                    if shapely.intersects(geoms[k], bbox):
                        part = shapely.intersection(geoms[k], bbox.buffer(abs(a)))
                        if not part.is_empty:
                            parts.append(RegionPart(str(ids[k]), shapely.to_wkb(part)))
                if not parts:
                    continue
                touched = []
                for i in range(r0 // cy, (r1 - 1) // cy + 1):
                    for j in range(c0 // cx, (c1 - 1) // cx + 1):
                        w = (i * cy, min((i + 1) * cy, r1), j * cx, min((j + 1) * cx, c1))
                        cb = shapely.box(c + a * w[2], f + e * w[1], c + a * w[3], f + e * w[0])
                        if any(shapely.intersects(shapely.from_wkb(p.wkb), cb) for p in parts):
                            touched.append(w)
                n_chunks, _ = _count_chunks(work, band_infos, touched)
                pixels_per_scene = (r1 - r0) * (c1 - c0)
                per_scene = (n_chunks * COST_CHUNK_S
                             + pixels_per_scene * n_variables * 3e-8 * (1 + len(parts)))
                per_unit = max(1, math.floor(target_unit_s / max(per_scene, 1e-9)))
                for batch in _day_batches(members, per_unit):
                    stasks = _scene_tasks(gkey, batch, exclusions)
                    days = sorted({s.day for s in stasks})
                    uid = _unit_id("rollup", crs, transform, r0, c0, [s.scene_id for s in stasks],
                                   [p.region_id for p in parts])
                    units.append(RollupUnit(uid, crs, tuple(transform), tuple(shape_yx),  # type: ignore[arg-type]
                                            (r0, r1, c0, c1), tuple(touched), tuple(parts),
                                            stasks, tuple((d, period_of(d)) for d in days)))
                    chunks_read += n_chunks * len(stasks)
    used = {s.scene_id for m in grids.values() for s, _ in m}
    return RollupPlan(tuple(units), tuple(sorted(used)), len(regions),
                      tuple(str(i) for i in ids[~matched]), chunks_read, tuple(skipped))


# --------------------------------------------------------------------------- composites


@dataclass(frozen=True, slots=True)
class CompositeSource:
    """One scene feeding a composite: its grid and the window of it the target needs."""

    scene: SceneTask
    crs: str
    transform: tuple[float, float, float, float, float, float]
    shape_yx: tuple[int, int]
    window: tuple[int, int, int, int]  # row0, row1, col0, col1


@dataclass(frozen=True, slots=True)
class CompositeUnit:
    """One composite raster: a region x a period on the target grid."""

    unit_id: str
    region_id: str
    region_wkb: bytes  # in the target CRS
    period_start: str
    target_crs: str
    target_transform: tuple[float, float, float, float, float, float]
    target_shape_yx: tuple[int, int]
    sources: tuple[CompositeSource, ...]
    variable: str
    method: str

    def __dask_tokenize__(self) -> str:
        return self.unit_id


def plan_composites(
    catalog: Catalog,
    regions: gpd.GeoDataFrame,
    *,
    bands: Sequence[str],
    period_of: Callable[[str], str],
    crs: str,
    resolution: float,
    variable: str,
    method: str,
    max_pixels: int,
    optional_bands: Sequence[str] = (),
) -> tuple[CompositeUnit, ...]:
    """One unit per region and period with at least one scene over the region.

    Raises
    ------
    PlanError
        A target grid larger than ``max_pixels`` (with its estimated size), before any
        pixel is read.
    """
    from .kernels.resample import Grid, estimate_grid_pixels, source_window_for

    grids, _ = _group_grids(catalog, bands, optional=optional_bands)
    target = regions.to_crs(crs)
    lonlat = regions.to_crs("EPSG:4326")
    units = []
    for k in range(len(regions)):
        region_id = str(regions["region_id"].iloc[k])
        est = estimate_grid_pixels(tuple(lonlat.geometry.iloc[k].bounds), crs, resolution)
        if est > max_pixels:
            raise PlanError(
                f"composite of region {region_id!r} at {resolution} {crs} would be about "
                f"{est:,} pixels ({est * 4 / 1e9:.1f} GB as float32), over the limit of "
                f"{max_pixels:,}",
                hint="use a coarser outputs.rollup.composite.resolution or raise max_pixels",
                region_id=region_id)
        grid = Grid.covering(tuple(target.geometry.iloc[k].bounds), crs, resolution)
        by_period: dict[str, list[CompositeSource]] = defaultdict(list)
        for key, members in grids.items():
            src_crs, transform, shape_yx, _ = key
            if not members[0][0].footprint_lonlat.intersects(lonlat.geometry.iloc[k]):
                continue
            source = Grid(src_crs, transform, shape_yx)
            window = source_window_for(grid, source)
            if window is None:
                continue
            for task in _scene_tasks(key, members, {}):
                period = period_of(task.day)
                if period:
                    by_period[period].append(CompositeSource(task, source.crs, transform, shape_yx, window))
        for period, sources in sorted(by_period.items()):
            srcs = tuple(sorted(sources, key=lambda s: (s.scene.datetime, s.scene.scene_id)))
            uid = _unit_id("composite", region_id, period, variable, method, crs, resolution,
                           [s.scene.scene_id for s in srcs])
            units.append(CompositeUnit(uid, region_id, shapely.to_wkb(target.geometry.iloc[k]), period,
                                       crs, grid.transform, grid.shape_yx, srcs, variable, method))
    return tuple(units)


@dataclass(frozen=True, slots=True)
class RegionClipUnit:
    """One region clipped from one scene, on the scene's work grid."""

    unit_id: str
    region_id: str
    region_wkb: bytes  # in the grid's CRS
    crs: str
    transform: tuple[float, float, float, float, float, float]
    shape_yx: tuple[int, int]
    window: tuple[int, int, int, int]  # row0, row1, col0, col1 (inside the raster)
    scenes: tuple[SceneTask, ...]  # one scene

    def __dask_tokenize__(self) -> str:
        return self.unit_id


def plan_region_clips(catalog: Catalog, regions: gpd.GeoDataFrame, *, bands: Sequence[str],
                      rule: str, max_pixels: int, optional_bands: Sequence[str] = (),
                      resolution: float | None = None) -> tuple[RegionClipUnit, ...]:
    """One unit per region and scene whose footprint meets it: the region's pixel window
    on the scene's work grid (the grid per-field statistics use).

    Raises
    ------
    PlanError
        A clip larger than ``max_pixels`` (naming the region, the scene and the size),
        before any pixel is read.
    """
    grids, _ = _group_grids(catalog, bands, optional=optional_bands, resolution=resolution)
    pad = 0 if rule in ("centre", "point") else 1
    units = []
    by_crs: dict[str, Any] = {}
    for gkey, members in grids.items():
        crs, transform, shape_yx, _ = gkey
        geoms, hit = _meeting(regions, by_crs, crs, members[0][0].footprint)
        if len(hit) == 0:
            continue
        wins = _windows(shapely.bounds(geoms[hit]), transform, pad)
        for k, (r0, r1, c0, c1) in zip(hit, _clipped_each(wins, shape_yx), strict=True):
            region_id = str(regions["region_id"].iloc[k])
            if r1 <= r0 or c1 <= c0:
                continue
            size = (r1 - r0) * (c1 - c0)
            if size > max_pixels:
                raise PlanError(
                    f"the clip of region {region_id!r} on the grid of scene "
                    f"{members[0][0].scene_id} would be {r1 - r0:,} x {c1 - c0:,} = {size:,} "
                    f"pixels, over outputs.cog.max_pixels ({max_pixels:,})",
                    hint="raise outputs.cog.max_pixels, or clip smaller regions",
                    region_id=region_id)
            wkb = shapely.to_wkb(geoms[k])
            for task in _scene_tasks(gkey, members, {}):
                uid = _unit_id("region-clip", region_id, task.scene_id, crs, transform)
                units.append(RegionClipUnit(uid, region_id, wkb, crs, tuple(transform),  # type: ignore[arg-type]
                                            tuple(shape_yx), (r0, r1, c0, c1), (task,)))  # type: ignore[arg-type]
    return tuple(units)


def _clipped_each(windows: np.ndarray, shape_yx: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(row0, row1, col0, col1) of each unclipped window inside the raster (empty when
    wholly outside: row1 <= row0 or col1 <= col0)."""
    w = np.asarray(windows, dtype=np.int64).reshape(-1, 4)
    r0, r1 = np.maximum(w[:, 0], 0), np.minimum(w[:, 0] + w[:, 2], shape_yx[0])
    c0, c1 = np.maximum(w[:, 1], 0), np.minimum(w[:, 1] + w[:, 3], shape_yx[1])
    return list(zip(*(a.tolist() for a in (r0, r1, c0, c1)), strict=True))


def restrict_plan(plan: Plan, done: Callable[[str, str], bool]) -> Plan:
    """The part of ``plan`` still to compute, given ``done(field_id, scene_id)``.

    Works day by day inside each unit (a field's day row merges the day's scenes, so a
    new scene on a day recomputes the field's whole day): the days of a unit are grouped
    by the set of fields they still need, and each group becomes a unit of those fields
    and those days' scenes. Units with nothing left disappear. Pure; chunk counts are
    recounted for units that lost fields.
    """
    units: list[WorkUnit] = []
    chunks_read = 0
    for unit in plan.units:
        field_ids = unit.fields.field_ids()
        by_day: dict[str, list[SceneTask]] = {}
        for s in unit.scenes:
            by_day.setdefault(s.day or s.scene_id, []).append(s)
        groups: dict[tuple[int, ...], list[SceneTask]] = {}
        for day_scenes in by_day.values():
            need = tuple(k for k, fid in enumerate(field_ids)
                         if any(not done(fid, s.scene_id) for s in day_scenes))
            if need:
                groups.setdefault(need, []).extend(day_scenes)
        for need, scenes in groups.items():
            if len(need) == len(unit.fields) and len(scenes) == len(unit.scenes):
                units.append(unit)
                chunks_read += unit.chunks * len(scenes)
                continue
            block = unit.fields
            n_chunks = unit.chunks
            fkey = unit.fields_key
            if len(need) < len(unit.fields):
                block = unit.fields.take(need)
                work = (unit.transform, unit.shape_yx)
                n_chunks, _ = _count_chunks(work, _distinct_bands(scenes[0].bands),
                                            _clipped(block.windows, unit.shape_yx))
                fkey = block.digest()
            uid = _unit_id(unit.unit_id, fkey, [s.scene_id for s in scenes])
            units.append(dataclasses.replace(unit, unit_id=uid, scenes=tuple(scenes),
                                             fields=block, chunks=n_chunks, fields_key=fkey))
            chunks_read += n_chunks * len(scenes)
    n_pairs = sum(u.n_pairs for u in units)
    return dataclasses.replace(plan, units=tuple(units), n_pairs=n_pairs, chunks_read=chunks_read)
