"""Worker-side code: one :class:`WorkUnit` -> read the chunks it needs -> kernels -> rows.

Runs in Dask worker processes (or in-process for the synchronous path). The repository
is opened once per process (:meth:`RepoRef.session` caches it) and TIFF headers are never
re-read: the unit carries the array paths. The result is a compact Arrow table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import threading
import time
import traceback
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from .catalog.chunks import ChunkReader, ChunkRequest, chunks_for_window
from .catalog.models import BandInfo
from .catalog.store import RepoRef
from .errors import TaskError
from .planner import SceneTask, WorkUnit, _distinct_bands
from .storage import OutputSink

__all__ = ["JobContext", "UnitResult", "read_bands", "result_schema", "run_unit"]


@dataclass(frozen=True, slots=True)
class JobContext:
    """Everything units share (small: it travels inside each task)."""

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
    daily: bool = False  # also return day rows (time series)
    render: RenderSpec | None = None  # per-field PNG / COG outputs
    rows_to: RowStage | None = None  # units stage their own rows (workers reach the outputs)

    def __repr__(self) -> str:  # keep credentials out of logs
        return f"JobContext(job_hash={self.job_hash!r}, repo={self.repo!r})"


@dataclass(frozen=True)
class RenderSpec:
    """What units render per field and scene, and where the bytes go (the run's work
    area: the client picks and publishes them, see ``pipeline._publish_renders``)."""

    png: Any = None  # spec_models.PngOutput
    cog: Any = None  # spec_models.CogOutput
    renames: tuple[tuple[str, str], ...] = ()  # field ids unusable as file names -> names
    sink: OutputSink | None = None  # -> .work/<result hash>/render/

    def __repr__(self) -> str:
        return f"RenderSpec(png={self.png is not None}, cog={self.cog is not None})"

    @property
    def variables(self) -> frozenset[str]:
        names: set[str] = set(self.cog.variables) if self.cog is not None else set()
        if self.png is not None:
            names |= ({"red", "green", "blue"} if self.png.variable == "truecolor"
                      else {self.png.variable})
        return frozenset(names)


@dataclass(frozen=True)
class RowStage:
    """Where units stage their rows themselves: the run's work area, when the workers
    reach the outputs' location (the run probes it first). The client then receives only
    which pairs each unit computed, not hundreds of thousands of rows to relay and write;
    the units' fields carry their geometry hashes for the rows' ``field_hash``."""

    work: Any  # incremental.WorkArea
    run_id: str

    def __repr__(self) -> str:
        return f"RowStage({self.work.out.url!r})"


def render_key(kind: str, name: str, scene: SceneTask, variable: str) -> str:
    """``png/<name>/<date>_<scene>_<variable>.png`` (candidates; the published file drops
    the scene id)."""
    ext = "png" if kind == "png" else "tif"
    return f"{kind}/{name}/{scene.datetime[:10]}_{scene.scene_id}_{variable}.{ext}"


_WRITER: Any = None
_WRITER_LOCK = threading.Lock()


def _writer() -> Any:
    """A small per-process thread pool for picture writes (creating many small files is
    slow on some file systems; open/write release the GIL, so writes overlap the work)."""
    global _WRITER
    with _WRITER_LOCK:
        if _WRITER is None:
            from concurrent.futures import ThreadPoolExecutor

            _WRITER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pqb-render-write")
    return _WRITER


def _render_group(spec: RenderSpec, pix: Any, grp: Any, ids: Sequence[str], scene: SceneTask,
                  values: dict[str, np.ndarray], crs: str, transform: Sequence[float],
                  files: list[tuple[str, bytes]], writes: list[tuple[str, Any]]) -> None:
    """PNG pictures and COG clips of the group's fields for one scene (pictures written
    by the workers go to ``writes`` as pending ``(scene_id, future)``)."""
    from .render import colour_pixels

    png = spec.png
    # fixed range, one variable: colour every field's pixels in one vectorised pass
    fast = (png is not None and png.variable != "truecolor" and png.vmin is not None
            and png.stretch is None)
    rgba = colour_pixels(values[png.variable], png) if fast else None
    staged: list[tuple[str, bytes]] = []
    _render_fields(spec, pix, grp, ids, png, rgba, values, scene, crs, transform, files, staged)
    if staged:  # file creation is the cost: one write job per group, overlapping the work
        writes.append((scene.scene_id, _writer().submit(spec.sink.stage.put_many, staged,
                                                        atomic=False)))


def _render_fields(spec: RenderSpec, pix: Any, grp: Any, ids: Sequence[str], png: Any,
                   rgba: np.ndarray | None, values: dict[str, np.ndarray], scene: SceneTask,
                   crs: str, transform: Sequence[float], files: list[tuple[str, bytes]],
                   staged: list[tuple[str, bytes]]) -> None:
    from .render import field_raster, png_box, png_bytes, window_transform
    from .writers.raster import cog_bytes

    names = dict(spec.renames)
    starts = grp.segments.starts
    rows = pix.rows[grp.p0:grp.p1]
    cols = pix.cols[grp.p0:grp.p1]
    layout = pix.layout()
    flat = layout.flat[grp.p0:grp.p1]
    if rgba is not None:
        rgba32 = rgba.view(np.uint32).reshape(-1)
        drawn = grp.segments.sums(rgba[:, 3] != 0) > 0
    direct = spec.sink is not None and spec.sink.direct
    for k in range(grp.f1 - grp.f0):
        a, b = int(starts[k]), int(starts[k + 1])
        if a == b:
            continue
        f = grp.f0 + k
        fid = ids[f]
        name = names.get(fid, fid)
        if png is not None:
            var = png.variable
            if rgba is not None:
                data = png_box(rgba32[a:b], flat[a:b], int(layout.height[f]),
                               int(layout.width[f]), png) if drawn[k] else None
            else:
                r, c = rows[a:b], cols[a:b]
                layers = [field_raster(r, c, values[v][a:b])[0] for v in
                          (("red", "green", "blue") if var == "truecolor" else (var,))]
                data = png_bytes(layers, png) if np.isfinite(layers[0]).any() else None
            if data is not None:
                key = render_key("png", name, scene, var)
                if direct:
                    staged.append((key, data))
                else:
                    files += spec.sink.deliver(key, data)
        if spec.cog is not None:
            r, c = rows[a:b], cols[a:b]
            for var in spec.cog.variables:
                arr, r0, c0 = field_raster(r, c, values[var][a:b])
                data = cog_bytes(arr, crs=crs, transform=window_transform(transform, r0, c0),
                                 name=f"{fid}/{scene.scene_id}/{var}",
                                 tags={"field_id": fid, "scene_id": scene.scene_id, "variable": var})
                files += spec.sink.deliver(render_key("cog", name, scene, var), data)


@dataclass
class UnitResult:
    """What a unit returns to the client."""

    unit_id: str
    table: pa.Table
    chunks_read: int
    duration_s: float
    failures: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    day_table: pa.Table | None = None
    started_at: float = 0.0  # wall clock (time.time()) when the unit started on its worker
    files: list[tuple[str, bytes]] = field(default_factory=list)  # renders sent back
    staged: bool = False  # rows staged by the unit: ``table`` holds its (field, scene) pairs
    worker: str = ""  # Dask worker address and thread that ran it ("local ..." outside one)
    cpu_s: float = 0.0  # CPU time of the thread that ran it (not of threads it started)
    #: phase -> (wall s, CPU s of the unit's thread) in it: see :class:`PhaseClock`
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)


class PhaseClock:
    """Wall and thread-CPU seconds a unit spends per phase, summed over its scenes and
    groups: ``setup`` (the reader, the arrays' metadata), ``pixels`` (the fields' pixels,
    or waiting for another thread building them), ``index`` (where each pixel sits in each
    band's chunks), ``decode`` (fetching and decoding chunks, gathering their pixels),
    ``band_math`` (physical values, masks, expressions), ``stats`` (every statistic of
    every field), ``pictures`` (rendering and writing them, if asked for) and ``rows`` (the
    unit's rows built, sorted and staged). Wall above CPU is time off the CPU: waiting for
    I/O, for another thread (a shared pixel set, the GIL) or for a core. Two clock reads
    per phase entered (~1 µs). The run's manifest sums them over its units
    (``execution.unit_phases``).

    >>> clock = PhaseClock()
    >>> with clock("stats"):
    ...     _ = sum(range(1000))
    >>> sorted(clock.totals()), all(v >= 0 for v in clock.totals()["stats"])
    (['stats'], True)
    """

    def __init__(self) -> None:
        self._sums: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            got = self._sums.setdefault(phase, [0.0, 0.0])
            got[0] += time.perf_counter() - w0
            got[1] += time.thread_time() - c0

    def totals(self) -> dict[str, tuple[float, float]]:
        return {k: (v[0], v[1]) for k, v in self._sums.items()}


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
            ("cloud_masked", pa.bool_()),
            ("snapshot_id", pa.string()),
            ("job_hash", pa.string()),
        ]
    )


def warm_worker() -> None:
    """Import what units need and tune the allocator (run on each worker at connect)."""
    import icechunk  # noqa: F401
    import pyarrow.pandas_compat  # noqa: F401  (Arrow tables of the rows)
    import tifffile  # noqa: F401  (tile index of local sources)
    import zarr  # noqa: F401

    from . import expr, gather, rasterize  # noqa: F401
    from ._logging import quiet_own_task_errors
    from .kernels import segments  # noqa: F401

    gather.tune_allocator()
    quiet_own_task_errors()


#: Test hook (kill tests): seconds each per-field unit waits before it starts.
_TEST_DELAY_S = float(os.environ.get("PIXELQUERY_TEST_UNIT_DELAY_S") or 0)


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
    """float64 physical values of raw band values (``raw * scale + offset``), NaN at the
    band's nodata when masked (in place: one new array)."""
    values = raw.astype(np.float64)
    if band.scale != 1.0:
        values *= band.scale
    if band.offset != 0.0:
        values += band.offset
    if mask_nodata and band.nodata is not None and not np.isnan(band.nodata):
        np.copyto(values, np.nan, where=raw == band.nodata)
    return values


def _cloud_mask(raw: np.ndarray, band: BandInfo, ctx: JobContext) -> np.ndarray:
    """Cloudy pixels of the cloud band (its nodata is never cloudy).

    8/16-bit bands (Sentinel-2's SCL, Landsat's QA_PIXEL) look every pixel up in a table
    of the dtype's values, built once per process (0.1 ms for 16 bits): 0.17 ms per
    262,144 pixels against 2.2 ms for ``numpy.isin`` plus the nodata test (by hand), the
    size of a group of fields' pixels.
    """
    if raw.dtype in (np.uint8, np.uint16):
        return np.take(_cloud_lut(raw.dtype.str, band.nodata, ctx.cloud_classes,
                                  tuple(ctx.cloud_bits or ())), raw)
    return _cloudy(raw, band.nodata, ctx.cloud_classes, tuple(ctx.cloud_bits or ()))


def _cloudy(raw: np.ndarray, nodata: float | None, classes: Sequence[int] | None,
            bits: tuple[int, ...]) -> np.ndarray:
    valid = np.ones(raw.shape, bool) if nodata is None else raw != nodata
    if classes is not None:
        return valid & np.isin(raw, np.asarray(classes, dtype=raw.dtype))
    mask = 0
    for b in bits:
        mask |= 1 << b
    return valid & ((raw.astype(np.int64) & mask) != 0)


@lru_cache(maxsize=64)
def _cloud_lut(dtype: str, nodata: float | None, classes: tuple[int, ...] | None,
               bits: tuple[int, ...]) -> np.ndarray:
    """:func:`_cloudy` of every value of an 8/16-bit dtype (read-only table)."""
    lut = _cloudy(np.arange(np.iinfo(np.dtype(dtype)).max + 1, dtype=np.dtype(dtype)),
                  nodata, classes, bits)
    lut.setflags(write=False)
    return lut


def _needed_bands(scene: SceneTask, ctx: JobContext) -> dict[str, BandInfo]:
    """The bands a scene is read for; the cloud band only where the scene has it (the
    planner leaves it out of scenes without it when the mask is ``auto``)."""
    names = [n for v, text in ctx.variables for n in sorted(_expression(v, text).names)]
    if ctx.cloud_band and scene.has_band(ctx.cloud_band):
        names.append(ctx.cloud_band)
    return {n: scene.band(n) for n in dict.fromkeys(names)}


def _cloud_applies(scene: SceneTask, ctx: JobContext) -> bool:
    return bool(ctx.cloud_band) and scene.has_band(ctx.cloud_band)  # type: ignore[arg-type]


Work = tuple[tuple[float, ...], tuple[int, int]]  # work grid: (transform, shape_yx)


def read_bands(reader: ChunkReader, scene: SceneTask, bands: dict[str, BandInfo], work: Work,
               window: tuple[int, int, int, int], need: Sequence[tuple[int, int, int, int]],
               ) -> dict[tuple[str, int | None], np.ndarray]:
    """Raw values of ``bands`` over a clipped work-grid ``window`` (row0, row1, col0, col1).

    Each band is read on its own grid, over only the chunks its own tiling needs to
    cover the work windows ``need``; bands on a coarser grid are then brought onto the
    work grid by nearest neighbour (each work pixel takes the band pixel holding its
    centre). Pixels outside every ``need`` window keep the band's fill value.
    """
    from .grids import band_chunks, grid_map

    requests: list[ChunkRequest] = []
    maps = []
    for band in _distinct_bands(bands.items()):
        grid = (band.transform or work[0], band.shape_yx or work[1])
        gm = grid_map((tuple(work[0]), tuple(work[1])), (tuple(grid[0]), tuple(grid[1])))
        bw = gm.band_window(window)
        if bw is None:
            raise TaskError(f"band {band.name} of scene {scene.scene_id} does not cover the "
                            f"work window {window}", scene_id=scene.scene_id)
        chunks = band_chunks(gm, list(need), band.chunks_yx)
        requests.append(ChunkRequest(scene.group, band, bw, frozenset(chunks)))
        maps.append((gm, bw))
    out: dict[tuple[str, int | None], np.ndarray] = {}
    for req, (gm, bw), raw in zip(requests, maps, reader.read(requests), strict=True):
        nodata = req.band.nodata
        fill = nodata if nodata is not None and (raw.dtype.kind == "f" or np.isfinite(nodata)) else 0
        out[(req.band.array, req.band.index)] = gm.resample(raw, bw, window, fill)
    return out


class _Rows:
    """Output rows of one unit, appended a (scene, variable) batch of fields at a time.

    Held compact until asked for: per batch the statistics as numpy columns, the fields
    as a range of the unit's field ids and the batch's constants (scene, time, variable,
    cloud flag) once; Arrow rows are built slice by slice (:meth:`slices`), so a unit's
    670,000 rows take ~100 bytes each, never a second sorted copy."""

    def __init__(self, stats: Sequence[str], ctx: JobContext) -> None:
        self.stats = stats
        self.cols = stat_columns(stats)
        self.ctx = ctx
        self.ids: pa.Array | None = None  # the unit's field ids (every batch's range of them)
        self.ranges: list[tuple[int, int]] = []
        self.consts: list[tuple[str, dt.datetime, str, bool]] = []
        self.values: dict[str, list[np.ndarray]] = {
            c: [] for c in [*self.cols, "pixel_count", "nodata_count", "cloud_count"]}
        self.taken = False  # the numpy columns are let go of once the rows are built

    def add(self, ids: pa.Array, f0: int, f1: int, scene_id: str, when: dt.datetime,
            variable: str, res: dict[str, np.ndarray], total: np.ndarray, nodata: np.ndarray,
            cloud: np.ndarray, cloud_masked: bool) -> None:
        """Rows of the fields ``ids[f0:f1]`` (``ids``: the unit's, an Arrow string array)."""
        if f1 <= f0:
            return
        if self.ids is None:
            self.ids = ids
        elif ids is not self.ids:
            raise ValueError("every batch of a unit's rows must come from the same field ids")
        self.ranges.append((f0, f1))
        self.consts.append((scene_id, when, variable, cloud_masked))
        for c in self.cols:
            self.values[c].append(np.asarray(res[c], dtype=np.float64))
        for c, v in (("pixel_count", total), ("nodata_count", nodata), ("cloud_count", cloud)):
            self.values[c].append(np.asarray(v, dtype=np.float64))

    def add_group(self, grp: Any, ids: pa.Array, scene_id: str, when: dt.datetime,
                  variable: str, values: np.ndarray, cloud: np.ndarray, cloud_masked: bool, *,
                  weights: np.ndarray | None, keep: np.ndarray | None = None) -> None:
        """Rows of one group of fields (``ids``: all the unit's, as Arrow): their
        statistics of ``values`` (NaN = invalid), the pixel, nodata and cloud weights
        (``keep`` False drops pixels from a field)."""
        from .kernels.segments import segment_stats

        res = segment_stats(values, grp.segments, self.cols, keep=keep, weights=weights)
        if weights is None:  # the pixels not valid are those of the total not counted
            invalid_w = res["_total"] - res["_valid"]  # (whole numbers: exact)
            cloud_w = (_weighted_sums(grp.segments, None, ~np.isfinite(values) & cloud, keep)
                       if cloud.any() else np.zeros(grp.segments.n_fields))
        else:
            invalid = ~np.isfinite(values)
            cloud_w = _weighted_sums(grp.segments, weights, invalid & cloud, keep)
            invalid_w = _weighted_sums(grp.segments, weights, invalid, keep)
        nodata_w = invalid_w - cloud_w
        self.add(ids, grp.f0, grp.f1, scene_id, when, variable, res, res["_total"], nodata_w,
                 cloud_w, cloud_masked)

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        """Per row: its field's position in :attr:`ids` and its batch."""
        sizes = np.asarray([f1 - f0 for f0, f1 in self.ranges], dtype=np.int64)
        fidx = np.concatenate([np.arange(f0, f1, dtype=np.int32) for f0, f1 in self.ranges])
        return fidx, np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)

    def pairs(self) -> pa.Table:
        """``(field_id, scene_id)`` of every row, dictionary-encoded (8 bytes a row)."""
        if not self.ranges or self.ids is None:
            return pa.table({"field_id": pa.array([], pa.string()),
                             "scene_id": pa.array([], pa.string())})
        fidx, part = self._index()
        scenes = pa.array([k[0] for k in self.consts], pa.string())
        return pa.table({"field_id": pa.DictionaryArray.from_arrays(pa.array(fidx), self.ids),
                         "scene_id": pa.DictionaryArray.from_arrays(pa.array(part), scenes)})

    def table(self, *, sort: bool = False) -> pa.Table:
        """The rows; ``sort``: by field, scene and variable (the stats table's order: the
        worker sorts, in parallel, so the client streams the rows into the table)."""
        parts = list(self.slices(sort=sort))
        return pa.concat_tables(parts) if parts else result_schema(self.stats).empty_table()

    def slices(self, *, sort: bool = False, rows: int = 65_536) -> Iterator[pa.Table]:
        """The rows as consecutive tables of up to ``rows`` rows (``sort``: in
        :data:`~pixelquery_batch.types.STATS_KEY` order), each built when asked. The
        batches' numpy columns are joined once (and let go of)."""
        if not self.ranges or self.ids is None:
            return
        if self.taken:
            raise RuntimeError("a unit's rows are built once")
        self.taken = True
        fidx, part = self._index()
        cols = {c: np.concatenate(v) for c, v in self.values.items()}
        for v in self.values.values():
            v.clear()
        scene = pa.array([k[0] for k in self.consts], pa.string())
        when = pa.array([k[1] for k in self.consts], pa.timestamp("us", tz="UTC"))
        variable = pa.array([k[2] for k in self.consts], pa.string())
        masked = pa.array([k[3] for k in self.consts], pa.bool_())
        order = None
        if sort:  # by field id, then by (scene, variable): one rank per batch
            id_rank = np.empty(len(self.ids), dtype=np.int64)
            id_rank[pc.sort_indices(self.ids).to_numpy()] = np.arange(len(self.ids))
            keys = sorted(range(len(self.consts)), key=lambda k: self.consts[k][::2])
            part_rank = np.empty(len(keys), dtype=np.int64)
            part_rank[keys] = np.arange(len(keys))
            order = np.lexsort((part_rank[part], id_rank[fidx]))
        schema = result_schema(self.stats)
        snapshot, job_hash = self.ctx.repo.snapshot_id, self.ctx.job_hash
        for i in range(0, fidx.size, rows):
            sel = slice(i, i + rows) if order is None else order[i:i + rows]
            p = pa.array(part[sel])
            n = len(p)
            arrays = {
                "field_id": self.ids.take(pa.array(fidx[sel])),
                "scene_id": scene.take(p), "datetime": when.take(p), "variable": variable.take(p),
                **{c: pa.array(v[sel]) for c, v in cols.items()},
                "cloud_masked": masked.take(p),
                "snapshot_id": pa.repeat(pa.scalar(snapshot, pa.string()), n),
                "job_hash": pa.repeat(pa.scalar(job_hash, pa.string()), n),
            }
            yield pa.Table.from_pydict({f.name: arrays[f.name] for f in schema}, schema=schema)


def _weighted_sums(segments: Any, weights: np.ndarray | None, mask: np.ndarray,
                   keep: np.ndarray | None) -> np.ndarray:
    """Per field: the weight of the pixels in ``mask`` (and ``keep``)."""
    if weights is None:
        return segments.sums(mask if keep is None else mask & keep)  # type: ignore[no-any-return]
    w = np.where(mask, weights, 0.0)
    if keep is not None:
        w = np.where(keep, w, 0.0)
    return segments.sums(w)  # type: ignore[no-any-return]


def run_unit(unit: WorkUnit, ctx: JobContext, reader: ChunkReader | None = None) -> UnitResult:
    """Compute every (field, scene, variable) row of one unit.

    The fields' pixels are worked out once for the unit (cached per process for the
    next unit of the same fields); then, scene by scene, only the chunks holding those
    pixels are decoded, the pixels gathered into flat arrays, band math and masks
    applied, and every field's statistics computed in a few vectorised passes
    (:func:`~pixelquery_batch.kernels.segments.segment_stats`).

    With ``ctx.daily`` it also returns *day rows*: per field and day, the pixels of that
    day's scenes on this grid merged (first valid, clear pixel in scene order), minus the
    pixels a same-day scene on another grid provides (``SceneTask.exclude_wkb``), so the day
    rows of all grids cover disjoint pixels and time series never count a pixel twice.

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
    from .gather import _band_index, field_pixels, tune_allocator

    tune_allocator()
    if _TEST_DELAY_S:  # fault-injection hook of the kill tests: slow units down
        time.sleep(_TEST_DELAY_S)
    started_at = time.time()
    t0 = time.perf_counter()
    cpu0 = time.thread_time()
    clock = PhaseClock()
    with clock("setup"):
        reader = reader or _reader_for(ctx.repo)
    before = reader.chunks_read
    rows = _Rows(ctx.stats, ctx)
    day_rows = _Rows(ctx.stats, ctx) if ctx.daily else None
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

    threads = _worker_threads()
    with clock("pixels"):
        pix = field_pixels(unit.fields, unit.transform, unit.shape_yx, ctx.rule,
                           key=unit.fields_key)
    for fid, err in pix.failed.items():
        fail(ValueError(err), scene_id=None, field_id=fid)
    counts = pix.segments.counts
    for fid in np.asarray(pix.field_ids, dtype=object)[counts == 0]:
        warnings.append({"field_id": fid, "warning":
                         f"field covers no pixel with the {ctx.rule} rule (smaller than a pixel?)"})
    exprs = [(vname, _expression(vname, text)) for vname, text in ctx.variables]
    work = (unit.transform, unit.shape_yx)
    ids = pix.field_ids
    id_arr = pix.ids_array()
    render_vars = ctx.render.variables if ctx.render is not None else frozenset()
    files: list[tuple[str, bytes]] = []
    writes: list[tuple[str, Any]] = []  # pictures being written: (scene id, future)

    with clock("pixels"):
        groups = pix.groups(_group_pixels(threads))
    days: dict[str, list[SceneTask]] = {}
    for scene in unit.scenes:
        days.setdefault(scene.day or scene.datetime[:10], []).append(scene)
    order = [s for day_scenes in days.values() for s in day_scenes]
    following = dict(zip((s.scene_id for s in order), [*order[1:], None], strict=True))
    warm = getattr(reader, "warm", None)
    if warm is not None:  # every scene's array metadata in one round trip
        with clock("setup"), contextlib.suppress(Exception):  # each scene's read reports its problem
            warm({(s.group, b.array) for s in unit.scenes
                  for b in _needed_bands(s, ctx).values()})
    prefetch = threads == 1
    with clock("index"):  # (and the first scene's fetch started, on one thread)
        prefetched = (_prefetch(reader, order[0] if order else None, ctx, work, pix)
                      if prefetch else {})

    for day_scenes in days.values():
        merged: dict[tuple[int, str], np.ndarray] = {}  # (group, variable) -> day values
        merged_cloud: dict[int, np.ndarray] = {}
        done: list[SceneTask] = []
        for scene in day_scenes:
            try:
                bands = _needed_bands(scene, ctx)
                with clock("index"):  # built once per pixel set and grid: later scenes find it
                    for b in _distinct_bands(bands.items()):
                        _band_index(pix, b, work, threads)
                with clock("decode"):
                    current, prefetched = prefetched, {} if not prefetch else _prefetch(
                        reader, following[scene.scene_id], ctx, work, pix)
                    tiles = {(b.array, b.index): t for b, t in
                             _decode_bands(reader, scene, bands, work, pix, current, ctx)}
                masked = _cloud_applies(scene, ctx)
                when = dt.datetime.fromisoformat(scene.datetime)
                for g, grp in enumerate(groups):
                    with clock("band_math"):
                        env, cloud, finite = _group_env(grp, bands, tiles, pix, ctx)
                    gw = None if pix.weights is None else pix.weights[grp.p0:grp.p1]
                    to_render: dict[str, np.ndarray] = {}
                    for vname, expr in exprs:
                        with clock("band_math"):
                            values = _evaluate(expr, env, grp.p1 - grp.p0, finite)
                            if masked:
                                values[cloud] = np.nan
                        if render_vars and vname in render_vars:
                            to_render[vname] = values
                        with clock("stats"):
                            rows.add_group(grp, id_arr, scene.scene_id, when, vname, values,
                                           cloud, masked, weights=gw)
                        if day_rows is not None:
                            with clock("band_math"):  # the day's first valid value
                                prev = merged.get((g, vname))
                                merged[(g, vname)] = values if prev is None else np.where(
                                    np.isnan(prev), values, prev)
                    if day_rows is not None:
                        prev_c = merged_cloud.get(g)
                        merged_cloud[g] = cloud if prev_c is None else prev_c | cloud
                    if to_render:
                        with clock("pictures"):
                            _render_group(ctx.render, pix, grp, ids, scene, to_render,
                                          unit.crs, unit.transform, files, writes)
                done.append(scene)
            except TaskError:
                raise
            except Exception as exc:
                for fid in ids:
                    fail(exc, scene_id=scene.scene_id, field_id=fid)
        if day_rows is not None and done:
            with clock("stats"):  # the day's merged values, per field
                _day_rows(day_rows, done, groups, exprs, merged, merged_cloud, pix, id_arr,
                          unit, ctx)
    for scene_id, write in writes:  # every picture on storage before the unit reports
        try:
            with clock("pictures"):
                write.result()
        except Exception as exc:
            for fid in ids:
                fail(exc, scene_id=scene_id, field_id=fid)
    with clock("rows"):
        if ctx.rows_to is not None:
            table, day_table = _stage_rows(ctx.rows_to, unit, rows, day_rows), None
        else:
            table = rows.table(sort=True)
            day_table = day_rows.table() if day_rows is not None else None
    return UnitResult(unit.unit_id, table, reader.chunks_read - before,
                      time.perf_counter() - t0, failures, warnings, day_table=day_table,
                      started_at=started_at, files=files, staged=ctx.rows_to is not None,
                      worker=_worker_address(), cpu_s=time.thread_time() - cpu0,
                      phases=clock.totals())


def _day_rows(day_rows: _Rows, done: list[SceneTask], groups: Sequence[Any],
              exprs: Sequence[tuple[str, Any]], merged: dict[tuple[int, str], np.ndarray],
              merged_cloud: dict[int, np.ndarray], pix: Any, id_arr: pa.Array,
              unit: WorkUnit, ctx: JobContext) -> None:
    """Add one day's rows: per group of fields, the statistics of the day's merged values
    (``done``: the day's scenes computed on this grid), minus the pixels a same-day scene
    on another grid provides."""
    keep_all = pix.outside(done[0].exclude_wkb, unit.transform)
    day_masked = all(_cloud_applies(s, ctx) for s in done)
    day_id = "+".join(sorted(s.scene_id for s in done))
    when = min(dt.datetime.fromisoformat(s.datetime) for s in done)
    for g, grp in enumerate(groups):
        keep = None if keep_all is None else keep_all[grp.p0:grp.p1]
        gw = None if pix.weights is None else pix.weights[grp.p0:grp.p1]
        for vname, _ in exprs:
            day_rows.add_group(grp, id_arr, day_id, when, vname, merged[(g, vname)],
                               merged_cloud[g], day_masked, weights=gw, keep=keep)


def _stage_rows(to: RowStage, unit: WorkUnit, rows: _Rows, day_rows: _Rows | None) -> pa.Table:
    """Stage a unit's rows in the run's work area, slice by slice; returns its (field,
    scene) pairs, dictionary-encoded (2.4 MB for 300,000 pairs instead of the rows)."""
    from .incremental import FieldHashes, stage_unit

    if unit.fields.hashes is None:
        raise ValueError(f"unit {unit.unit_id}: its fields carry no geometry hashes")
    pairs = rows.pairs()
    stage_unit(to.work, unit, rows.slices(sort=True),
               None if day_rows is None else day_rows.slices(),
               hashes=FieldHashes(unit.fields.ids, unit.fields.hashes), run_id=to.run_id)
    return pairs


def _decode_bands(reader: ChunkReader, scene: SceneTask, bands: dict[str, BandInfo],
                  work: Work, pix: Any, prefetched: dict[Any, Any] | None,
                  ctx: JobContext) -> list[tuple[BandInfo, Any]]:
    """The chunks each distinct stored band of ``bands`` needs, decoded (the cloud band
    straight to its cloud mask where :func:`_cloud_tables` allows)."""
    from .gather import decode_band

    pre = prefetched or {}
    tables = _cloud_tables(bands, ctx)
    return [(b, decode_band(reader, scene.group, b, work, pix,
                            prefetched=pre.get((scene.scene_id, b.array, b.index)),
                            table=tables.get((b.array, b.index))))
            for b in _distinct_bands(bands.items())]


def _group_pixels(threads: int) -> int:
    """Pixels per group of fields computed together, on a worker with ``threads`` threads.

    A worker running one unit at a time (a worker process, or ``sync``) works in groups
    whose temporaries stay in the core's cache: 128 Ki pixels (1 MB per float64 array).
    Threads sharing one worker take 256 Ki: fewer numpy calls, each of whose returns
    waits for the GIL while another thread holds it, and temporaries (2 MB per array)
    that still fit the shared L3 cache for two threads, where 1 Mi (8 MB) spilled it.
    Measured by hand, execution phase: 100,000 fields x 12 scenes, two worker processes
    4.2 -> 3.7 s, one thread 7.2 -> 7.0 s (from 1 Mi); two threads, 4 runs each at
    20,000 fields: 1.87-2.05 s and 3.50-3.81 s of CPU with 1 Mi, 1.80-1.96 s and
    3.37-3.61 s with 256 Ki (at 100,000 fields 3.92-4.29 vs 3.94-4.17 s; at 2,000 fields
    1.44-1.46 vs 1.41-1.43 s).
    """
    return 1 << 17 if threads == 1 else 1 << 18


def _dask_worker() -> Any:
    """The Dask worker running this task (``None`` outside one)."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError, AttributeError):
        return None


def _worker_threads() -> int:
    """Threads of the Dask worker running this task (1 outside a worker)."""
    worker = _dask_worker()
    return int(worker.state.nthreads) if worker is not None else 1


def _worker_address() -> str:
    """Address of the Dask worker running this task ("local" outside one) and the
    thread's name."""
    worker = _dask_worker()
    address = str(worker.address) if worker is not None else "local"
    return f"{address} {threading.current_thread().name}"


def _prefetch(reader: ChunkReader, scene: SceneTask | None, ctx: JobContext, work: Work,
              pix: Any) -> dict[Any, Any]:
    """Start fetching the next scene's chunks while this one is decoded.

    Only where a unit runs alone on its worker: there the fetch overlaps the decoding
    (2,000 fields, 1 thread: 5.0 -> 4.7 s). With several threads the other units already
    keep the cores busy, and prefetching only adds a scene of buffers per thread
    (measured: same wall, +250 MB)."""
    from .gather import prefetch_band

    if scene is None:
        return {}
    try:
        bands = _needed_bands(scene, ctx)
        return {(scene.scene_id, b.array, b.index): prefetch_band(reader, scene.group, b, work, pix)
                for b in _distinct_bands(bands.items())}
    except Exception:  # the scene's own read reports the problem, with its ids
        return {}


def _group_env(grp: Any, bands: dict[str, BandInfo], tiles: dict[tuple[str, int | None], Any],
               pix: Any, ctx: JobContext) -> tuple[dict[str, np.ndarray], np.ndarray, set[str]]:
    """Physical band values (NaN = invalid or outside the raster) of the bands the
    expressions read, the cloud mask, of one group of fields' pixels, and the names whose
    values hold no infinity (integer bands: :meth:`Expression.evaluate` skips them)."""
    inside = pix.inside[grp.p0:grp.p1]
    outside = None if inside.all() else ~inside  # most groups lie inside the raster
    used = _expression_bands(ctx.variables)
    env: dict[str, np.ndarray] = {}
    finite: set[str] = set()
    cloud = np.zeros(grp.p1 - grp.p0, bool)
    for name, band in bands.items():
        got = tiles[(band.array, band.index)]
        if got.is_mask:  # the cloud band, decoded straight to its cloud mask
            cloud = got.values(grp.p0, grp.p1) & inside
            continue
        raw = got.values(grp.p0, grp.p1)
        if name in used:
            values = _physical(raw, band, ctx.mask_nodata)
            if outside is not None:
                values[outside] = np.nan
            env[name] = values
            if raw.dtype.kind in "iub" and np.isfinite(band.scale) and np.isfinite(band.offset):
                finite.add(name)
        if ctx.cloud_band and name == ctx.cloud_band:
            cloud = _cloud_mask(raw, band, ctx) & inside
    return env, cloud, finite


@lru_cache(maxsize=64)
def _expression_bands(variables: tuple[tuple[str, str], ...]) -> frozenset[str]:
    """The band names the expressions of ``variables`` read."""
    return frozenset(n for v, text in variables for n in _expression(v, text).names)


def _cloud_tables(bands: dict[str, BandInfo], ctx: JobContext) -> dict[tuple[str, int | None], np.ndarray]:
    """The cloud band's table of cloudy values, keyed by its stored band, when the band is
    decoded straight to its cloud mask: no expression reads it and it is 8/16-bit
    (Sentinel-2's SCL, Landsat's QA_PIXEL). Its pixels are then looked up once per chunk
    where a chunk serves more pixels than it holds (a 20 m band under 10 m pixels) and
    carried as one byte each instead of two, with no physical values made of them."""
    band = bands.get(ctx.cloud_band or "")
    if band is None:
        return {}
    key = (band.array, band.index)
    used = _expression_bands(ctx.variables)
    if any((b.array, b.index) == key for n, b in bands.items() if n in used):
        return {}
    try:
        dtype = np.dtype(band.dtype)
    except TypeError:
        return {}
    if dtype not in (np.uint8, np.uint16):
        return {}
    return {key: _cloud_lut(dtype.str, band.nodata, ctx.cloud_classes,
                            tuple(ctx.cloud_bits or ()))}


def _evaluate(expr: Any, env: dict[str, np.ndarray], n: int,
              finite: Container[str] = ()) -> np.ndarray:
    values = np.asarray(expr.evaluate({k: env[k] for k in expr.names}, finite=finite),
                        dtype=np.float64)
    if values.shape != (n,):
        values = np.broadcast_to(values, (n,)).copy()
    elif not values.flags.writeable:
        values = values.copy()
    return values


def _field_env(window: tuple[int, int, int, int], clip: Any, mosaic: tuple[int, int, int, int] | None,
               bands: dict[str, BandInfo], raws: dict[tuple[str, int | None], np.ndarray],
               ctx: JobContext) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Physical band values (NaN = invalid or outside the raster) and the cloud mask over
    one field's window."""
    h, w = window[2], window[3]
    cloud_full = np.zeros((h, w), bool)
    if clip is None or mosaic is None:
        return {name: np.full((h, w), np.nan) for name in bands}, cloud_full
    (y0, y1, x0, x1), sl = clip
    rs = (slice(y0 - mosaic[0], y1 - mosaic[0]), slice(x0 - mosaic[2], x1 - mosaic[2]))
    env: dict[str, np.ndarray] = {}
    for name, band in bands.items():
        raw = raws[(band.array, band.index)][rs]
        full = np.full((h, w), np.nan)
        full[sl] = _physical(raw, band, ctx.mask_nodata)
        env[name] = full
        if ctx.cloud_band and name == ctx.cloud_band:  # only present where it applies
            cloud_full[sl] = _cloud_mask(raw, band, ctx)
    return env, cloud_full


# --------------------------------------------------------------------------- rollups


@dataclass(frozen=True, slots=True)
class RollupContext:
    """What rollup units share: the job context plus histogram specs and stats."""

    job: JobContext
    variables: tuple[str, ...]
    histograms: tuple[tuple[str, tuple[float, float, int]], ...]  # variable -> (lo, hi, bins)

    def __repr__(self) -> str:
        return f"RollupContext(job_hash={self.job.job_hash!r})"


@dataclass
class RollupResult:
    """Keyed partials ``(region_id, period_start, variable) -> Partial`` and observed days."""

    partials: dict[tuple[str, str, str], Any]
    days: dict[tuple[str, str, str], set[str]]
    chunks_read: int = 0
    duration_s: float = 0.0
    units: int = 1
    failures: list[dict[str, Any]] = field(default_factory=list)


def merge_rollup_results(a: RollupResult, b: RollupResult) -> RollupResult:
    """Associative merge (the Dask tree reduction's combine step)."""
    from .kernels.rollup import merge_keyed

    days = {k: set(v) for k, v in a.days.items()}
    for k, v in b.days.items():
        days.setdefault(k, set()).update(v)
    return RollupResult(merge_keyed(a.partials, b.partials), days,
                        a.chunks_read + b.chunks_read, a.duration_s + b.duration_s,
                        a.units + b.units, a.failures + b.failures)


@dataclass(frozen=True, slots=True)
class _RegionPart:
    """A region part as the pixel builder sees a field."""

    field_id: str
    wkb: bytes
    window: tuple[int, int, int, int]


def guarded(fn: Any, stage: str, on_error: str, failed: Any) -> Any:
    """``fn`` under the job's failure policy, the same for every stage: an exception
    escaping a unit becomes, under ``on_error: fail``, a :class:`TaskError` naming the
    unit and stage; under ``skip``, ``failed(record)`` (the stage's empty result carrying
    the failure record) after one more try. Use as ``guarded(run, "rollup", ...)(unit, ...)``."""
    def run(unit: Any, *args: Any) -> Any:
        uid = getattr(unit, "unit_id", "?")
        for attempt in (1, 2):
            try:
                return fn(unit, *args)
            except TaskError:
                raise
            except Exception as exc:
                if on_error == "fail":
                    raise TaskError(f"{stage} unit {uid} failed: {type(exc).__name__}: {exc}",
                                    unit_id=uid, stage=stage) from exc
                if attempt == 2:
                    return failed({"unit_id": uid, "stage": stage, "attempts": attempt,
                                   "scene_id": "+".join(s.scene_id for s in getattr(unit, "scenes", ())),
                                   "field_id": _unit_subject(unit),
                                   "error": f"{type(exc).__name__}: {exc}",
                                   "traceback": "".join(traceback.format_exception(exc))[-2000:]})
        raise AssertionError("unreachable")  # pragma: no cover

    return run


def _unit_subject(unit: Any) -> str:
    """What a unit is about, for failure records: its region or bucket."""
    for name in ("region_id", "key"):
        value = getattr(unit, name, None)
        if value:
            return str(value)
    regions = getattr(unit, "regions", None)
    return ",".join(r.region_id for r in regions)[:200] if regions else ""


def run_rollup_unit_guarded(unit: Any, rctx: RollupContext) -> RollupResult:
    """:func:`run_rollup_unit` under the job's failure policy."""
    return guarded(run_rollup_unit, "rollup", rctx.job.on_error,
                   lambda rec: RollupResult({}, {}, 0, 0.0, 1, [rec]))(unit, rctx)


def run_composite_unit_guarded(unit: Any, ctx: JobContext, sink: OutputSink) -> dict[str, Any]:
    """:func:`run_composite_unit` under the job's failure policy."""
    return guarded(run_composite_unit, "composites", ctx.on_error,
                   lambda rec: {"region_id": unit.region_id, "period_start": unit.period_start,
                                "failure": rec, "files": []})(unit, ctx, sink)


def composite_bucket_guarded(bucket: Any, sctx: Any, sink: OutputSink) -> dict[str, Any]:
    """:func:`composite_bucket` under the job's failure policy."""
    return guarded(composite_bucket, "timeseries", sctx.on_error,
                   lambda rec: {"rows": 0, "files": [], "failure": rec})(bucket, sctx, sink)


def run_rollup_unit(unit: Any, rctx: RollupContext, reader: ChunkReader | None = None) -> RollupResult:
    """Partials of every region part of one block, per period and variable.

    The same machinery as the per-field units: the pixels of each region part (centre
    rule) are worked out once, only the chunks holding them are decoded (each band on its
    own grid and tiling), and the values are gathered into flat arrays. Same-day scenes of
    the grid are merged pixel by pixel (first valid, clear pixel in scene order) and
    pixels that a same-day scene on another grid provides are left out, so a pixel is
    counted once per day whatever the tiling.
    """
    from .gather import field_pixels, tune_allocator
    from .kernels.rollup import Partial, histogram_for

    tune_allocator()
    ctx = rctx.job
    t0 = time.perf_counter()
    reader = reader or _reader_for(ctx.repo)
    before = reader.chunks_read
    r0, r1, c0, c1 = unit.window
    window = (r0, c0, r1 - r0, c1 - c0)
    specs = {v: histogram_for(v, dict(rctx.histograms).get(v)) for v in rctx.variables}
    exprs = [(n, _expression(n, t)) for n, t in ctx.variables if n in rctx.variables]
    tiling = _work_tiling(unit, ctx)
    parts = _tile_pieces(unit.regions, window, tiling, unit.transform)
    # keyed by the block and its region parts: the units of one block (its batches of
    # days) on this worker share the pixels and their chunk indices
    digest = hashlib.sha256(repr((window, tiling)).encode()
                            + b"".join(p.wkb for p in unit.regions))
    pix = field_pixels(parts, unit.transform, unit.shape_yx, "centre",
                       key=f"rollup-{digest.hexdigest()[:24]}")
    work = (unit.transform, unit.shape_yx)
    starts = pix.segments.starts
    period_of = dict(unit.periods)
    partials: dict[tuple[str, str, str], Any] = {}
    days_seen: dict[tuple[str, str, str], set[str]] = {}
    failures: list[dict[str, Any]] = []
    by_day: dict[str, list[SceneTask]] = {}
    for scene in unit.scenes:
        by_day.setdefault(scene.day, []).append(scene)
    whole = _WholeGroup(0, pix.segments.n_fields, 0, pix.n_pixels)
    for day, scenes in by_day.items():
        merged: dict[str, np.ndarray] = {}
        try:
            for scene in scenes:
                bands = _needed_bands(scene, ctx)
                tiles = {(b.array, b.index): t for b, t in
                         _decode_bands(reader, scene, bands, work, pix, None, ctx)}
                env, cloud, finite = _group_env(whole, bands, tiles, pix, ctx)
                for vname, expr in exprs:
                    values = _evaluate(expr, env, pix.n_pixels, finite)
                    if _cloud_applies(scene, ctx):
                        values[cloud] = np.nan
                    prev = merged.get(vname)
                    merged[vname] = values if prev is None else np.where(np.isnan(prev), values, prev)
        except Exception as exc:
            if ctx.on_error == "fail":
                raise TaskError(f"rollup unit {unit.unit_id} failed on day {day}: {exc}",
                                unit_id=unit.unit_id, scene_id=scenes[0].scene_id) from exc
            failures.append({"unit_id": unit.unit_id, "scene_id": "+".join(s.scene_id for s in scenes),
                             "error": f"{type(exc).__name__}: {exc}"})
            continue
        keep = pix.outside(scenes[0].exclude_wkb, unit.transform)
        period = period_of[day]
        for vname, values in merged.items():
            if keep is not None:
                values = np.where(keep, values, np.nan)
            # pieces run chunk after chunk: consecutive ones of one region summed at once,
            # every run in one compiled pass
            runs = list(_id_runs(pix.field_ids))
            bounds = [*(starts[k0] for _, k0, _ in runs), starts[runs[-1][2]]] if runs else [0]
            for (region_id, _, _), part in zip(runs, Partial.from_runs(values, bounds,
                                                                       specs[vname]), strict=True):
                key = (region_id, period, vname)
                prev = partials.get(key)
                partials[key] = part if prev is None else prev.merge(part)
                if part.count > 0:
                    days_seen.setdefault(key, set()).add(day)
    return RollupResult(partials, days_seen, reader.chunks_read - before,
                        time.perf_counter() - t0, 1, failures)


def _work_tiling(unit: Any, ctx: JobContext) -> tuple[int, int] | None:
    """Chunk shape of a band stored on the unit's work grid (``None``: none is)."""
    for scene in unit.scenes[:1]:
        for band in _needed_bands(scene, ctx).values():
            if band.transform is None or tuple(band.transform) == tuple(unit.transform):
                return tuple(band.chunks_yx)  # type: ignore[return-value]
    return None


def _tile_pieces(regions: Sequence[Any], window: tuple[int, int, int, int],
                 tiling: tuple[int, int] | None,
                 transform: tuple[float, ...]) -> list[_RegionPart]:
    """Each region part of a block cut along the work grid's chunks, chunk after chunk
    (the regions meeting a chunk one after another): the pixels are then laid out chunk
    by chunk, so a chunk's pixels are gathered into one run of values (a chunk wholly
    inside a region is one copy) instead of pixel by pixel. Chunks a region does not
    meet are left out."""
    r0, c0, h, w = window
    if tiling is None:
        return [_RegionPart(p.region_id, p.wkb, window) for p in regions]
    cy, cx = tiling
    wins = [(max(i * cy, r0), max(j * cx, c0), min((i + 1) * cy, r0 + h) - max(i * cy, r0),
             min((j + 1) * cx, c0 + w) - max(j * cx, c0))
            for i, j in sorted(chunks_for_window((r0, r0 + h, c0, c0 + w), tiling))]
    a, _, x0, _, e, y0 = transform[:6]
    boxes = shapely.box(*np.asarray([(x0 + wc * a, y0 + (wr + wh) * e, x0 + (wc + ww) * a,
                                      y0 + wr * e) for wr, wc, wh, ww in wins]).T)
    meets = []
    for p in regions:
        geom = shapely.from_wkb(p.wkb)
        shapely.prepare(geom)
        meets.append(shapely.intersects(geom, boxes))
    return [_RegionPart(p.region_id, p.wkb, win) for k, win in enumerate(wins)
            for p, hit in zip(regions, meets, strict=True) if hit[k]]


def _id_runs(ids: Sequence[str]) -> Iterator[tuple[str, int, int]]:
    """``(id, first, end)`` of each run of equal consecutive ``ids``."""
    k0 = 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or ids[k] != ids[k0]:
            yield ids[k0], k0, k
            k0 = k


@dataclass(frozen=True, slots=True)
class _WholeGroup:
    """All the gathered pixels as one group (rollup blocks are bounded already)."""

    f0: int
    f1: int
    p0: int
    p1: int


# --------------------------------------------------------------------------- composites


def run_composite_unit(unit: Any, ctx: JobContext, sink: OutputSink,
                       reader: ChunkReader | None = None) -> dict[str, Any]:
    """Composite one region and period on the target grid and write it as a COG
    (``composites/<region>_<period>_<variable>_<method>.tif`` through ``sink``).

    Each source scene is read only over the window the target grid needs, its variable
    computed (nodata and clouds as NaN), resampled (nearest) onto the target grid, and
    same-day layers merged first-valid; then the layers are composited per pixel and the
    pixels outside the region set to NaN.
    """
    from .kernels.resample import Grid, composite_pixels, reproject_nearest
    from .rasterize import geometry_weights
    from .writers.raster import cog_bytes

    t0 = time.perf_counter()
    reader = reader or _reader_for(ctx.repo)
    before = reader.chunks_read
    target = Grid(unit.target_crs, unit.target_transform, unit.target_shape_yx)
    names = [unit.variable] + (["ndvi"] if unit.method == "max_ndvi" and unit.variable != "ndvi" else [])
    texts = dict(ctx.variables)
    cctx = dataclasses.replace(ctx, variables=tuple((n, texts[n]) for n in names))
    exprs = [(n, _expression(n, texts[n])) for n in names]
    days: dict[str, dict[str, np.ndarray]] = {}
    for src in unit.sources:
        r0, r1, c0, c1 = src.window
        bands = _needed_bands(src.scene, cctx)
        raws = read_bands(reader, src.scene, bands, (src.transform, src.shape_yx), src.window,
                          [src.window])
        clip = ((r0, r1, c0, c1), (slice(0, r1 - r0), slice(0, c1 - c0)))
        env, cloud = _field_env((r0, c0, r1 - r0, c1 - c0), clip, (r0, r1, c0, c1), bands, raws, cctx)
        grid = Grid(src.crs, src.transform, src.shape_yx)
        layer = days.setdefault(src.scene.day, {})
        for name, expr in exprs:
            values = np.asarray(expr.evaluate({n: env[n] for n in expr.names}), dtype=np.float64)
            if _cloud_applies(src.scene, cctx):
                values = np.where(cloud, np.nan, values)
            on_target = reproject_nearest(values, grid, target, source_window=src.window)
            prev = layer.get(name)
            layer[name] = on_target if prev is None else np.where(np.isnan(prev), on_target, prev)
    ordered = [days[d] for d in sorted(days)]
    stack = np.stack([d[unit.variable] for d in ordered])
    ndvi = np.stack([d["ndvi"] for d in ordered]) if unit.method == "max_ndvi" else None
    out = composite_pixels(stack, unit.method, ndvi_stack=ndvi)
    h, w = unit.target_shape_yx
    inside = geometry_weights(shapely.from_wkb(unit.region_wkb), unit.target_transform,
                              (0, 0, h, w), "centre") > 0
    out = np.where(inside, out, np.nan)
    name = f"{unit.region_id}_{unit.period_start}_{unit.variable}_{unit.method}.tif"
    data = cog_bytes(out, crs=unit.target_crs, transform=unit.target_transform, name=name,
                     tags={"region_id": unit.region_id, "period_start": unit.period_start,
                           "variable": unit.variable, "method": unit.method,
                           "scenes": ",".join(s.scene.scene_id for s in unit.sources),
                           "snapshot_id": ctx.repo.snapshot_id, "job_hash": ctx.job_hash})
    files = sink.deliver(f"composites/{name}", data)
    return {"region_id": unit.region_id, "period_start": unit.period_start, "file": name,
            "days": len(ordered), "valid_pixels": int(np.isfinite(out).sum()),
            "chunks_read": reader.chunks_read - before, "duration_s": time.perf_counter() - t0,
            "files": files}


def run_region_clip(unit: Any, ctx: JobContext, variables: tuple[str, ...], names: dict[str, str],
                    sink: OutputSink, reader: ChunkReader | None = None) -> dict[str, Any]:
    """Clip one region from one scene: each of ``variables`` over the region's pixel box
    on the scene's work grid, NaN outside the region (the job's pixel rule), where masked
    (nodata, clouds) and outside the raster, written as a COG
    ``cog_regions/<name>/<date>_<variable>.tif`` through ``sink`` (``names``: region ids
    that are not usable as file names -> names)."""
    from .rasterize import geometry_weights
    from .render import window_transform
    from .writers.raster import cog_bytes

    t0 = time.perf_counter()
    reader = reader or _reader_for(ctx.repo)
    before = reader.chunks_read
    scene = unit.scenes[0]
    texts = dict(ctx.variables)
    cctx = dataclasses.replace(ctx, variables=tuple((n, texts[n]) for n in variables))
    r0, r1, c0, c1 = unit.window
    work = (unit.transform, unit.shape_yx)
    inside = geometry_weights(shapely.from_wkb(unit.region_wkb), unit.transform,
                              (r0, c0, r1 - r0, c1 - c0), ctx.rule) > 0
    files: list[tuple[str, bytes]] = []
    if not inside.any():
        return {"region_id": unit.region_id, "scene_id": scene.scene_id, "files": files,
                "clips": 0, "chunks_read": 0, "duration_s": time.perf_counter() - t0}
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    box = (r0 + int(rows[0]), r0 + int(rows[-1]) + 1, c0 + int(cols[0]), c0 + int(cols[-1]) + 1)
    inside = inside[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    b0, b1, d0, d1 = box
    bands = _needed_bands(scene, cctx)
    raws = read_bands(reader, scene, bands, work, box, [box])
    clip = (box, (slice(0, b1 - b0), slice(0, d1 - d0)))
    env, cloud = _field_env((b0, d0, b1 - b0, d1 - d0), clip, box, bands, raws, cctx)
    masked = _cloud_applies(scene, cctx)
    name = names.get(unit.region_id, unit.region_id)
    for var in variables:
        expr = _expression(var, texts[var])
        values = np.asarray(expr.evaluate({n: env[n] for n in expr.names}), dtype=np.float64)
        if masked:
            values = np.where(cloud, np.nan, values)
        out = np.where(inside, values, np.nan).astype(np.float32)
        data = cog_bytes(out, crs=unit.crs, transform=window_transform(unit.transform, b0, d0),
                         name=f"{unit.region_id}/{scene.scene_id}/{var}",
                         tags={"region_id": unit.region_id, "scene_id": scene.scene_id,
                               "variable": var, "snapshot_id": ctx.repo.snapshot_id,
                               "job_hash": ctx.job_hash})
        files += sink.deliver(f"cog_regions/{name}/{scene.datetime[:10]}_{var}.tif", data)
    return {"region_id": unit.region_id, "scene_id": scene.scene_id, "files": files,
            "clips": len(variables), "chunks_read": reader.chunks_read - before,
            "duration_s": time.perf_counter() - t0}


def run_region_clip_guarded(unit: Any, ctx: JobContext, variables: tuple[str, ...],
                            names: dict[str, str], sink: OutputSink) -> dict[str, Any]:
    """:func:`run_region_clip` under the job's failure policy."""
    return guarded(run_region_clip, "region clips", ctx.on_error,
                   lambda rec: {"failure": rec, "files": []})(unit, ctx, variables, names, sink)


# --------------------------------------------------------------------------- time series


@dataclass(frozen=True, slots=True)
class SeriesContext:
    """How to composite the day rows of a bucket of fields into their time series."""

    period: str
    aggregation: str
    stats: tuple[str, ...]
    start: str
    end: str
    fill: str
    variables: tuple[str, ...] | None
    scene_times: tuple[str, ...]
    wide: bool
    snapshot_id: str
    job_hash: str
    on_error: str = "skip"


def field_bucket(field_id: str, n_buckets: int) -> int:
    """Stable bucket of a field id (same on every process; not Python's salted hash).

    >>> field_bucket("F0001", 4) == field_bucket("F0001", 4)
    True
    """
    import zlib

    return zlib.crc32(field_id.encode()) % max(1, n_buckets)


@dataclass(frozen=True)
class SeriesBucket:
    """One bucket of fields to composite: its day parts under ``key`` of the staging
    location, or (when the workers cannot reach it) the parts' bytes themselves."""

    key: str  # .days/b=K
    parts: tuple[bytes, ...] | None = None

    @property
    def unit_id(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def composite_bucket(bucket: SeriesBucket, sctx: SeriesContext, sink: OutputSink) -> dict[str, Any]:
    """Composite one bucket of fields and write its part of the time-series tables."""
    import io

    import pyarrow.parquet as pq

    from .kernels.timeseries import composite, to_wide
    from .writers.tables import parquet_bytes, read_parquet_prefix

    if bucket.parts is not None:
        table = pa.concat_tables([pq.read_table(io.BytesIO(b)) for b in bucket.parts])
    else:
        table = read_parquet_prefix(sink.stage, bucket.key)
    rows = table.to_pandas()
    if sctx.variables:
        rows = rows[rows["variable"].isin(sctx.variables)]
    long = composite(rows, sctx.period, aggregation=sctx.aggregation, stats=list(sctx.stats),
                     start=sctx.start, end=sctx.end, fill=sctx.fill,
                     scene_times=list(sctx.scene_times))
    long["snapshot_id"] = sctx.snapshot_id
    long["job_hash"] = sctx.job_hash
    outputs = [("timeseries", long)]
    if sctx.wide:
        wide = to_wide(long, stat="mean").reset_index()
        wide.columns = [str(c) for c in wide.columns]
        outputs.append(("timeseries_wide", wide))
    files: list[tuple[str, bytes]] = []
    for table_name, df in outputs:
        data = parquet_bytes(pa.Table.from_pandas(df, preserve_index=False))
        files += sink.deliver(f"{table_name}/part-{bucket.unit_id}.parquet", data)
    return {"rows": len(long), "files": files}
