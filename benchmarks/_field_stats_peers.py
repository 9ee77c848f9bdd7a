"""The peers ``bench_field_stats.py`` times against each other (not a benchmark itself).

Layer: *benchmarks* (outside the package; imported by ``bench_field_stats.py``). One
function per peer, each returning a :class:`PeerRun` (wall and CPU seconds, the NDVI
statistics table, its phases):

* :func:`run_engine` -- ``pqb run SPEC --json`` as a subprocess: process wall from spawn
  to exit, CPU of the whole process tree from ``getrusage(RUSAGE_CHILDREN)`` (cross-checked
  by :class:`TreeSampler`), peak RSS per worker, the run's manifest;
* :func:`run_naive` -- the per-scene rasterio loop a user would write;
* :func:`run_exactextract` -- exactextract on a whole-scene NDVI array per scene;
* :func:`run_rasterstats` -- rasterstats the same way (only if it is installed);
* :func:`run_floor` -- one thread, exactly the touched tiles' bytes, libdeflate +
  predictor, prebuilt masks, numpy statistics: what the work costs with nothing around it.

Also here: the field windows on a band's tile grid (:func:`field_windows`,
:func:`touched_tiles`), which give both the floor's tile list and the benchmark's own
count of the distinct chunks the fields touch (the denominator of the measured read
amplification), and the numpy statistics every in-process peer shares
(:func:`ndvi_stats`).

In-process peers are timed with ``time.perf_counter`` (wall) and
``getrusage(RUSAGE_SELF)`` user + system (CPU; nothing else runs in the benchmark process
meanwhile).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _bench_common import SCALE, BackgroundSampler, reflectance_offset

#: Statistic columns of every peer's table, named as the engine names them.
STATS = ("mean", "std", "min", "max", "median", "p25", "p75", "count")
#: exactextract operations giving the same statistics (coverage-weighted by design).
EXACTEXTRACT_OPS = ("mean", "stdev", "min", "max", "median", "quantile(q=0.25)",
                    "quantile(q=0.75)", "count")
EXACTEXTRACT_COLUMNS = {"stdev": "std", "quantile_25": "p25", "quantile_75": "p75"}
SAMPLE_INTERVAL_S = 0.2


# --------------------------------------------------------------------------- timing


def cpu_self_s() -> float:
    """User + system CPU seconds of this process (every thread) so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Stopwatch:
    """Wall and CPU (this process) of a block: ``with Stopwatch() as sw: ...; sw.wall_s``."""

    wall_s: float = 0.0
    cpu_s: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._w0, self._c0 = time.perf_counter(), cpu_self_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._w0
        self.cpu_s = cpu_self_s() - self._c0


@dataclass
class PeerRun:
    """One timed run of one peer.

    ``wall_s``/``cpu_s`` are what ratios use; when only a subset was timed they are the
    extrapolation to all pairs (``extrapolated`` True, ``timed_pairs`` < ``pairs``).
    ``phases`` holds measured (not extrapolated) ``(wall_s, cpu_s)`` per phase.
    """

    peer: str
    wall_s: float
    cpu_s: float
    pairs: int
    table: Any = None  # pandas DataFrame: field_id, scene_id, *STATS
    timed_pairs: int = 0
    extrapolated: bool = False
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """JSON-friendly numbers (no table)."""
        return {"peer": self.peer, "wall_s": self.wall_s, "cpu_s": self.cpu_s,
                "pairs": self.pairs, "timed_pairs": self.timed_pairs,
                "extrapolated": self.extrapolated,
                "phases": {k: {"wall_s": w, "cpu_s": c} for k, (w, c) in self.phases.items()},
                **self.extra}


# --------------------------------------------------------------------------- shared pieces


def load_fields(path: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Field ids and EPSG:4326 GeoJSON geometries of a fields file, in file order."""
    with open(path, encoding="utf-8") as f:
        fc = json.load(f)
    feats = fc["features"]
    return [str(ft["properties"]["id"]) for ft in feats], [ft["geometry"] for ft in feats]


def ndvi_values(red_dn: np.ndarray, nir_dn: np.ndarray, inside: np.ndarray,
                offset: float) -> np.ndarray:
    """Finite NDVI of the pixels ``inside`` a field where neither band is nodata (0)."""
    valid = inside & (red_dn != 0) & (nir_dn != 0)
    red = red_dn[valid] * SCALE + offset
    nir = nir_dn[valid] * SCALE + offset
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = (nir - red) / (nir + red)
    return ndvi[np.isfinite(ndvi)]


def ndvi_stats(v: np.ndarray) -> tuple[float, ...]:
    """mean, std (ddof 0), min, max, median, p25, p75 (linear), count; NaN when empty."""
    if v.size == 0:
        nan = math.nan
        return (nan, nan, nan, nan, nan, nan, nan, 0.0)
    p25, p75 = np.percentile(v, [25, 75])
    return (float(v.mean()), float(v.std()), float(v.min()), float(v.max()),
            float(np.median(v)), float(p25), float(p75), float(v.size))


def stats_frame(field_ids: Sequence[str], scene_ids: Sequence[str], values: np.ndarray) -> Any:
    import pandas as pd

    df = pd.DataFrame(values, columns=list(STATS))
    df.insert(0, "scene_id", list(scene_ids))
    df.insert(0, "field_id", list(field_ids))
    return df


@dataclass(frozen=True)
class Grid:
    """A band's raster grid: geotransform, shape and tile (chunk) size."""

    transform: tuple[float, float, float, float, float, float]  # a, b, c, d, e, f
    shape_yx: tuple[int, int]
    tile_yx: tuple[int, int]
    crs_wkt: str

    @classmethod
    def of(cls, path: str) -> Grid:
        import rasterio

        with rasterio.open(path) as src:
            t = src.transform
            return cls((t.a, t.b, t.c, t.d, t.e, t.f), (src.height, src.width),
                       tuple(src.block_shapes[0]), src.crs.to_wkt())  # type: ignore[arg-type]

    @property
    def n_tiles_yx(self) -> tuple[int, int]:
        return (-(-self.shape_yx[0] // self.tile_yx[0]), -(-self.shape_yx[1] // self.tile_yx[1]))


def scene_bounds(geoms_4326: list[dict[str, Any]], crs_wkt: str) -> np.ndarray:
    """(minx, miny, maxx, maxy) of every field in the scene CRS, shape (n, 4)."""
    import shapely.geometry
    from rasterio.warp import transform_geom

    out = transform_geom("EPSG:4326", crs_wkt, geoms_4326)
    return np.array([shapely.geometry.shape(g).bounds for g in out], dtype=np.float64)


def field_windows(bounds: np.ndarray, grid: Grid) -> np.ndarray:
    """(row0, row1, col0, col1) of each field's bounds rounded out and clipped to the raster.

    Empty windows (a field outside the raster) have ``row1 <= row0`` or ``col1 <= col0``.
    """
    a, _, c, _, e, f = grid.transform
    h, w = grid.shape_yx
    col0 = np.clip(np.floor((bounds[:, 0] - c) / a), 0, w).astype(np.int64)
    col1 = np.clip(np.ceil((bounds[:, 2] - c) / a), 0, w).astype(np.int64)
    row0 = np.clip(np.floor((bounds[:, 3] - f) / e), 0, h).astype(np.int64)
    row1 = np.clip(np.ceil((bounds[:, 1] - f) / e), 0, h).astype(np.int64)
    return np.stack([row0, row1, col0, col1], axis=1)


def touched_tiles(windows: np.ndarray, grid: Grid) -> list[tuple[int, int]]:
    """Distinct (tile_row, tile_col) the non-empty windows overlap, sorted."""
    ty, tx = grid.tile_yx
    tiles: set[tuple[int, int]] = set()
    for r0, r1, c0, c1 in windows.tolist():
        if r1 <= r0 or c1 <= c0:
            continue
        for tr in range(r0 // ty, (r1 - 1) // ty + 1):
            for tc in range(c0 // tx, (c1 - 1) // tx + 1):
                tiles.add((tr, tc))
    return sorted(tiles)


# --------------------------------------------------------------------------- engine (pqb run)


def _vm_hwm(pid: int) -> int:
    """``VmHWM`` (peak RSS) of a live process in bytes, 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeSampler(BackgroundSampler):
    """Every ``interval`` s: CPU, RSS and ``VmHWM`` of a process and all its descendants.

    Per pid it keeps the last sampled user + system CPU (the sum over pids is a lower bound
    of the tree's CPU: what ran after a process's last sample is missed), the peak RSS
    (max of sampled RSS and ``VmHWM``) and a kind: ``main`` (the root), ``worker`` (a Dask
    worker: a ``multiprocessing`` spawn child, or a child of the forkserver), ``forkserver``
    (the ``multiprocessing`` fork server the workers are forked from), ``other`` (e.g. the
    resource tracker).
    """

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL_S) -> None:
        import psutil

        super().__init__(interval, "tree-sampler")
        self.root = psutil.Process(pid)
        self.cpu: dict[int, float] = {}
        self.peak_rss: dict[int, int] = {}
        self.kind: dict[int, str] = {}
        self.parent: dict[int, int] = {}
        self.procs: dict[int, Any] = {}
        self.samples = 0

    def _classify(self, p: Any) -> str:
        if p.pid == self.root.pid:
            return "main"
        try:
            cmd = " ".join(p.cmdline())
        except Exception:
            return "other"
        if "resource_tracker" in cmd:
            return "other"
        if "multiprocessing.forkserver" in cmd:  # the server, or a worker forked from it
            return "forkserver" if p.ppid() == self.root.pid else "worker"
        return "worker" if "spawn_main" in cmd else "other"

    def sample(self) -> None:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    rss = p.memory_info().rss
            except psutil.Error:
                continue
            pid = p.pid
            if pid not in self.kind:
                self.kind[pid] = self._classify(p)
                self.procs[pid] = p
                with contextlib.suppress(psutil.Error):
                    self.parent[pid] = p.ppid()
            self.cpu[pid] = t.user + t.system  # own CPU only (children_* are other pids)
            self.peak_rss[pid] = max(self.peak_rss.get(pid, 0), rss, _vm_hwm(pid))
        self.samples += 1

    def peaks(self, kind: str) -> list[int]:
        return [self.peak_rss[pid] for pid in sorted(self.kind) if self.kind[pid] == kind]

    def survivors(self) -> dict[int, str]:
        """Descendants still present (running or zombie) after the root was reaped.

        Nobody in the tree waited for them, so their CPU is missing from the root's
        ``RUSAGE_CHILDREN`` (the multiprocessing resource tracker is typically one: it is
        orphaned when ``pqb`` exits and reaped later by init).
        """
        alive: dict[int, str] = {}
        for pid, p in self.procs.items():
            if pid == self.root.pid:
                continue
            try:
                if p.is_running():  # True for zombies too
                    alive[pid] = self.kind[pid]
            except Exception:
                continue
        return alive

    def unreaped(self) -> dict[int, str]:
        """Descendants whose CPU ``pqb``'s ``RUSAGE_CHILDREN`` cannot hold: the survivors,
        and the processes they reaped (workers forked from an orphaned fork server)."""
        alive = self.survivors()
        return {pid: self.kind[pid] for pid in self.procs
                if pid in alive or self.parent.get(pid) in alive}


def run_engine(spec: Path, *, python: str, log_path: Path, cpus: set[int] | None = None) -> PeerRun:
    """``pqb run SPEC --json`` as a subprocess; wall, tree CPU, worker RSS, manifest numbers.

    ``cpus``: the cores the process tree may run on (``sched_setaffinity``, inherited by
    every thread and worker process): ``{0}`` makes a 1-worker run a 1-core run.

    Wall: ``perf_counter`` from just before ``Popen`` to after ``wait`` (interpreter start,
    imports, LocalCluster start and close included). CPU: the change of
    ``getrusage(RUSAGE_CHILDREN)`` user + system around the subprocess. The kernel adds a
    process's CPU, and that of every descendant it has waited for, to its parent's
    ``RUSAGE_CHILDREN`` when the parent reaps it; the Dask worker processes are children
    of ``pqb`` (nannies run in the ``pqb`` process and join their workers on close), so
    once ``pqb`` is reaped the figure covers the whole tree, except descendants that
    ``pqb`` never waited for (``survivors``: the multiprocessing resource tracker, orphaned
    at exit; the ``forkserver`` that forks the workers, and so the workers it reaps); their
    last sampled CPU is added (``cpu_s`` = getrusage + that). The
    :class:`TreeSampler` per-process sum (a lower bound of the tree's CPU) is returned as
    ``cpu_sampled_s`` so the caller can check the two agree.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen([python, "-m", "pixelquery_batch.cli", "run", str(spec), "--json"],
                                stdout=subprocess.PIPE, stderr=log,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        with TreeSampler(proc.pid) as sampler:
            out, _ = proc.communicate()
        wall_s = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user_s, sys_s = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    try:  # exit code 1 with a summary: finished, with failures recorded (on_error: skip)
        summary = json.loads(out)
    except ValueError:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"pqb run {spec} exited with {proc.returncode} and no JSON "
                           f"summary; log tail:\n{tail}") from None
    manifest = json.loads(Path(summary["manifest"]).read_text())
    ex, plan = manifest["execution"], manifest["plan"]
    workers = sampler.peaks("worker")
    survivors = sampler.survivors()
    unreaped = sampler.unreaped()
    missed_s = sum(sampler.cpu.get(pid, 0.0) for pid in unreaped)
    run = PeerRun(peer="engine", wall_s=wall_s, cpu_s=user_s + sys_s + missed_s,
                  pairs=int(plan["field_scene_pairs"]), timed_pairs=int(plan["field_scene_pairs"]))
    run.extra = {
        "workers": int(ex["workers"] or 1),
        "cpu_rusage_s": user_s + sys_s, "cpu_user_s": user_s, "cpu_sys_s": sys_s,
        "cpu_sampled_s": sum(sampler.cpu.values()),
        "cpu_sampled_by_kind_s": {k: sum(c for pid, c in sampler.cpu.items()
                                         if sampler.kind[pid] == k)
                                  for k in sorted(set(sampler.kind.values()))},
        "survivors": sorted(survivors.values()),  # kinds of descendants that outlived pqb
        "unreaped": sorted(unreaped.values()),  # ... and of those they reaped
        "survivors_cpu_sampled_s": missed_s,
        "tree_samples": sampler.samples,
        "worker_processes": len(workers),
        # the LocalCluster's shape the run chose or was given (processes: auto)
        "processes": bool((manifest.get("cluster") or {}).get("processes")),
        "peak_rss_workers": workers,
        "peak_rss_main": max(sampler.peaks("main"), default=0),
        "exec_wall_s": float(ex["wall_s"]),
        "units": int(ex["units"]),
        "chunks_read": int(ex["chunks_read"]),
        "rows": int(ex["rows"]),
        "unit_s_total": float(ex["unit_s_total"]),
        # per worker thread: units, busy and CPU seconds, last end (from the first start)
        "per_worker": list((ex.get("per_worker") or {}).values()),
        # what the units spent their time on, summed over units: phase -> wall_s, cpu_s
        "unit_phases": ex.get("unit_phases") or {},
        "failures": len(manifest["failures"]),
        "manifest_duration_s": float(manifest["duration_s"]),
        "plan": {k: plan[k] for k in ("scenes_matched", "fields", "fields_matched",
                                      "field_scene_pairs", "tasks", "pairs_per_task",
                                      "bands_read", "chunks_read", "chunks_touched",
                                      "read_amplification")},
        "stats_path": str(manifest["outputs"]["stats"]),
        "returncode": proc.returncode,
    }
    return run


def read_engine_table(stats_path: str | Path) -> Any:
    """The engine's NDVI rows as a peer table (field_id, scene_id, *STATS)."""
    import pyarrow.parquet as pq

    df = pq.read_table(stats_path).to_pandas()
    df = df[df["variable"] == "ndvi"]
    return df[["field_id", "scene_id", *STATS]].reset_index(drop=True)


# --------------------------------------------------------------------------- naive rasterio loop


def run_naive(fields_path: Path, scenes: dict[str, dict[str, str]], out_path: Path, *,
              max_pairs: int | None, seed: int) -> PeerRun:
    """The per-scene loop a user would write with rasterio + numpy.

    Reproject every field once (``transform_geom``, outside the scene loop); then per
    scene open red and nir once, and per field: ``from_bounds`` rounded out and clipped,
    windowed read of both bands, ``geometry_mask(invert=True)`` (pixel centres),
    DN * 1e-4 + the date's offset, NDVI with nodata masked, numpy statistics; rows to a
    parquet file at the end. With ``max_pairs`` below the number of pairs only a seeded
    random subset of (field, scene) pairs is timed; the per-pair loop and the write are
    then scaled up, loading, reprojection and the per-scene opens are not.
    """
    import pandas as pd
    import rasterio
    from rasterio.features import bounds as geom_bounds
    from rasterio.features import geometry_mask
    from rasterio.warp import transform_geom
    from rasterio.windows import Window, from_bounds

    scene_ids = list(scenes)
    with Stopwatch() as sw_load:
        ids, geoms_ll = load_fields(fields_path)
        with rasterio.open(scenes[scene_ids[0]]["red"]) as src:
            crs = src.crs
        geoms = [transform_geom("EPSG:4326", crs, g) for g in geoms_ll]
        bounds = [geom_bounds(g) for g in geoms]
    n_all = len(ids) * len(scene_ids)
    chosen: dict[int, list[int]] | None = None
    if max_pairs is not None and max_pairs < n_all:
        pick = np.sort(np.random.default_rng([seed, 7]).choice(n_all, size=max_pairs,
                                                                replace=False))
        chosen = {}
        for k in pick.tolist():
            chosen.setdefault(k % len(scene_ids), []).append(k // len(scene_ids))
    rows: list[tuple[Any, ...]] = []
    open_w = open_c = loop_w = loop_c = 0.0
    timed = 0
    for si, sid in enumerate(scene_ids):
        todo = range(len(ids)) if chosen is None else chosen.get(si, [])
        offset = reflectance_offset(sid)
        with Stopwatch() as sw_open:
            red_src = rasterio.open(scenes[sid]["red"])
            nir_src = rasterio.open(scenes[sid]["nir"])
        open_w, open_c = open_w + sw_open.wall_s, open_c + sw_open.cpu_s
        try:
            with Stopwatch() as sw_loop:
                height, width = red_src.height, red_src.width
                for fi in todo:
                    win = from_bounds(*bounds[fi], transform=red_src.transform)
                    r0 = max(math.floor(win.row_off), 0)
                    c0 = max(math.floor(win.col_off), 0)
                    r1 = min(math.ceil(win.row_off + win.height), height)
                    c1 = min(math.ceil(win.col_off + win.width), width)
                    timed += 1
                    if r1 <= r0 or c1 <= c0:
                        continue  # field outside this scene
                    window = Window(c0, r0, c1 - c0, r1 - r0)
                    red_dn = red_src.read(1, window=window)
                    nir_dn = nir_src.read(1, window=window)
                    inside = geometry_mask([geoms[fi]], out_shape=red_dn.shape,
                                           transform=red_src.window_transform(window),
                                           invert=True)
                    rows.append((ids[fi], sid,
                                 *ndvi_stats(ndvi_values(red_dn, nir_dn, inside, offset))))
        finally:
            red_src.close()
            nir_src.close()
        loop_w, loop_c = loop_w + sw_loop.wall_s, loop_c + sw_loop.cpu_s
    with Stopwatch() as sw_write:
        df = pd.DataFrame.from_records(rows, columns=["field_id", "scene_id", *STATS])
        out_path.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(out_path, index=False)
    scale = n_all / timed if timed else 1.0
    fixed_w, fixed_c = sw_load.wall_s + open_w, sw_load.cpu_s + open_c
    return PeerRun(
        peer="naive", pairs=n_all, timed_pairs=timed, extrapolated=timed < n_all, table=df,
        wall_s=fixed_w + (loop_w + sw_write.wall_s) * scale,
        cpu_s=fixed_c + (loop_c + sw_write.cpu_s) * scale,
        phases={"load+reproject": (sw_load.wall_s, sw_load.cpu_s), "open": (open_w, open_c),
                "per-pair loop": (loop_w, loop_c), "write": (sw_write.wall_s, sw_write.cpu_s)},
        extra={"scale": scale})


# --------------------------------------------------------------------------- exactextract


def scene_ndvi(scene: dict[str, str], offset: float) -> tuple[np.ndarray, Any, Any]:
    """Whole-scene NDVI (float64, NaN where either band is nodata), its transform and CRS."""
    import rasterio

    with rasterio.open(scene["red"]) as src:
        red_dn = src.read(1)
        transform, crs = src.transform, src.crs
    with rasterio.open(scene["nir"]) as src:
        nir_dn = src.read(1)
    nodata = (red_dn == 0) | (nir_dn == 0)
    red = red_dn * SCALE + offset
    del red_dn
    nir = nir_dn * SCALE + offset
    del nir_dn
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = nir - red
        nir += red
        ndvi /= nir
    del red, nir
    ndvi[nodata] = np.nan
    return ndvi, transform, crs


def run_exactextract(fields_path: Path, scenes: dict[str, dict[str, str]], out_path: Path, *,
                     max_fields: int | None, seed: int) -> PeerRun:
    """exactextract 0.3 per scene on a whole-scene NDVI array (``NumPyRasterSource``).

    Per scene: read red and nir whole with rasterio, NDVI float64 with NaN nodata
    (exactextract skips NaN cells), then ``exact_extract`` with the fields as a
    GeoDataFrame in the scene CRS. Statistics are weighted by the fraction of each pixel
    the polygon covers (by design, unlike the centre rule), so they differ from the other
    peers'. With ``max_fields`` only a seeded subset of fields is extracted and the
    extraction time scaled up (the per-scene read + NDVI is measured in full).
    """
    import exactextract
    import geopandas as gpd
    import pandas as pd
    from exactextract.raster import NumPyRasterSource

    scene_ids = list(scenes)
    with Stopwatch() as sw_load:
        gdf = gpd.read_file(fields_path)[["id", "geometry"]]
        # exactextract 0.3 takes a column named "id" as the feature id and returns the row
        # number in it: carry the field id under another name.
        gdf = gdf.rename(columns={"id": "field_id"})
        n_all = len(gdf)
        if max_fields is not None and max_fields < n_all:
            keep = np.sort(np.random.default_rng([seed, 17]).choice(n_all, size=max_fields,
                                                                    replace=False))
            gdf = gdf.iloc[keep].reset_index(drop=True)
        crs_gdf: dict[str, Any] = {}
    read_w = read_c = ext_w = ext_c = 0.0
    parts = []
    for sid in scene_ids:
        with Stopwatch() as sw_read:
            ndvi, t, crs = scene_ndvi(scenes[sid], reflectance_offset(sid))
            h, w = ndvi.shape
            src = NumPyRasterSource(ndvi, t.c, t.f + t.e * h, t.c + t.a * w, t.f,
                                    nodata=math.nan, srs_wkt=crs.to_wkt())
            key = crs.to_wkt()
            if key not in crs_gdf:
                crs_gdf[key] = gdf.to_crs(crs)
        with Stopwatch() as sw_ext:
            df = exactextract.exact_extract(src, crs_gdf[key], list(EXACTEXTRACT_OPS),
                                            include_cols=["field_id"], output="pandas")
            df.insert(1, "scene_id", sid)
            parts.append(df)
        del src, ndvi
        read_w, read_c = read_w + sw_read.wall_s, read_c + sw_read.cpu_s
        ext_w, ext_c = ext_w + sw_ext.wall_s, ext_c + sw_ext.cpu_s
    with Stopwatch() as sw_write:
        table = pd.concat(parts, ignore_index=True).rename(columns=EXACTEXTRACT_COLUMNS)
        table = table[["field_id", "scene_id", *STATS]]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(out_path, index=False)
    scale = n_all / len(gdf) if len(gdf) else 1.0
    return PeerRun(
        peer="exactextract", pairs=n_all * len(scene_ids),
        timed_pairs=len(gdf) * len(scene_ids), extrapolated=scale > 1.0, table=table,
        wall_s=sw_load.wall_s + read_w + (ext_w + sw_write.wall_s) * scale,
        cpu_s=sw_load.cpu_s + read_c + (ext_c + sw_write.cpu_s) * scale,
        phases={"load fields": (sw_load.wall_s, sw_load.cpu_s),
                "read + NDVI + reproject fields": (read_w, read_c),
                "exact_extract": (ext_w, ext_c), "write": (sw_write.wall_s, sw_write.cpu_s)},
        extra={"scale": scale})


def run_rasterstats(fields_path: Path, scenes: dict[str, dict[str, str]]) -> PeerRun | None:
    """rasterstats ``zonal_stats`` per scene on the same NDVI array (None if not installed).

    Pixel-centre rule like the engine; NaN cells are passed as ``nodata``. Not exercised
    where this was written (rasterstats is not installed there).
    """
    try:
        from rasterstats import zonal_stats
    except ImportError:
        return None
    import geopandas as gpd
    import pandas as pd

    with Stopwatch() as sw:
        gdf = gpd.read_file(fields_path)
        parts = []
        for sid in scenes:
            ndvi, t, crs = scene_ndvi(scenes[sid], reflectance_offset(sid))
            geoms = list(gdf.to_crs(crs).geometry)
            res = zonal_stats(geoms, ndvi, affine=t, nodata=math.nan,
                              stats="mean std min max median percentile_25 percentile_75 count")
            df = pd.DataFrame(res).rename(columns={"percentile_25": "p25", "percentile_75": "p75"})
            df.insert(0, "scene_id", sid)
            df.insert(0, "field_id", gdf["id"].astype(str).to_numpy())
            parts.append(df[["field_id", "scene_id", *STATS]])
        table = pd.concat(parts, ignore_index=True)
    return PeerRun(peer="rasterstats", wall_s=sw.wall_s, cpu_s=sw.cpu_s,
                   pairs=len(gdf) * len(scenes), timed_pairs=len(gdf) * len(scenes), table=table)


# --------------------------------------------------------------------------- floor


@dataclass
class TileFile:
    """An open COG band file and its full-resolution tiles' offsets and byte counts."""

    path: str
    fd: int
    offsets: np.ndarray
    counts: np.ndarray


def open_tile_file(path: str, grid: Grid) -> TileFile:
    """Read the IFD of the full-resolution image once (tifffile) and open the file."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        ok = (tif.byteorder == "<" and page.dtype == np.uint16 and int(page.predictor) == 2
              and int(page.compression) in (8, 32946) and page.is_tiled
              and (page.tilelength, page.tilewidth) == grid.tile_yx
              and page.shape == grid.shape_yx)
        if not ok:
            raise ValueError(f"{path}: the floor reads little-endian uint16 DEFLATE + "
                             "horizontal predictor tiles on the band's grid; got "
                             f"{page.dtype} compression {page.compression} predictor "
                             f"{page.predictor} tiles {page.tilelength}x{page.tilewidth}")
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
    return TileFile(path, os.open(path, os.O_RDONLY), offsets, counts)


@dataclass
class FloorPrep:
    """Everything the floor builds before timing (for one field density)."""

    grid: Grid
    field_ids: list[str]
    windows: np.ndarray  # (n, 4) row0, row1, col0, col1; non-empty windows only
    masks: list[np.ndarray]  # pixel-centre masks over each window
    tiles: list[tuple[int, int]]  # touched tiles (same grid for red and nir)
    files: dict[str, dict[str, TileFile]]  # scene -> {"red": ..., "nir": ...}


def prepare_floor(ids: list[str], bounds: np.ndarray, geoms_scene: list[dict[str, Any]],
                  grid: Grid, files: dict[str, dict[str, TileFile]]) -> FloorPrep:
    """Windows, prebuilt centre masks and the touched tiles (not timed)."""
    from affine import Affine
    from rasterio.features import geometry_mask

    wins = field_windows(bounds, grid)
    keep = np.flatnonzero((wins[:, 1] > wins[:, 0]) & (wins[:, 3] > wins[:, 2]))
    a, b, c, d, e, f = grid.transform
    masks = []
    for k in keep.tolist():
        r0, r1, c0, c1 = wins[k].tolist()
        tr = Affine(a, b, c + a * c0, d, e, f + e * r0)
        masks.append(geometry_mask([geoms_scene[k]], out_shape=(r1 - r0, c1 - c0),
                                   transform=tr, invert=True))
    return FloorPrep(grid, [ids[k] for k in keep.tolist()], wins[keep], masks,
                     touched_tiles(wins[keep], grid), files)


def _decode_scene(prep: FloorPrep, sid: str, bands: dict[str, np.ndarray], buf: np.ndarray,
                  tile: np.ndarray) -> int:
    """The floor's reading and decoding of one scene: every touched tile of red and nir
    ``os.pread``, libdeflate into ``buf``, the predictor undone in place, pasted into
    ``bands``. Returns the bytes read."""
    import imagecodecs

    grid = prep.grid
    ty, tx = grid.tile_yx
    _, ntx = grid.n_tiles_yx
    h, w = grid.shape_yx
    nbytes = 0
    for band, arr in bands.items():
        tf = prep.files[sid][band]
        for tr, tc in prep.tiles:
            i = tr * ntx + tc
            count = int(tf.counts[i])
            r0, c0 = tr * ty, tc * tx
            r1, c1 = min(r0 + ty, h), min(c0 + tx, w)
            if count == 0:  # sparse tile: nodata
                arr[r0:r1, c0:c1] = 0
                continue
            raw = os.pread(tf.fd, count, int(tf.offsets[i]))
            nbytes += count
            imagecodecs.deflate_decode(raw, out=buf)
            imagecodecs.delta_decode(tile, axis=-1, out=tile)
            arr[r0:r1, c0:c1] = tile[: r1 - r0, : c1 - c0]
    return nbytes


def _decode_buffers(grid: Grid) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The band arrays (allocated once) and the tile buffer the floor decodes into."""
    ty, tx = grid.tile_yx
    bands = {b: np.zeros(grid.shape_yx, np.uint16) for b in ("red", "nir")}
    buf = np.empty(ty * tx * 2, np.uint8)
    return bands, buf, buf.view("<u2").reshape(ty, tx)


def run_floor(prep: FloorPrep, scene_ids: list[str]) -> PeerRun:
    """One thread: read exactly the touched tiles, libdeflate + predictor, numpy statistics.

    Per scene and band: ``os.pread`` of each touched tile's bytes (offsets read before
    timing), ``imagecodecs.deflate_decode`` (libdeflate) into a reused buffer,
    ``imagecodecs.delta_decode`` along rows (the horizontal predictor) in place, pasted
    into a band array allocated once. Per field: the window slice, the prebuilt mask,
    NDVI with nodata masked, the same numpy statistics as the naive loop. No output file.
    """
    bands, buf, tile = _decode_buffers(prep.grid)
    n = len(prep.field_ids)
    values = np.empty((n * len(scene_ids), len(STATS)), np.float64)
    wins = prep.windows.tolist()
    dec_w = dec_c = st_w = st_c = 0.0
    nbytes = 0
    with Stopwatch() as sw:
        for si, sid in enumerate(scene_ids):
            w0, c0_ = time.perf_counter(), time.thread_time()
            nbytes += _decode_scene(prep, sid, bands, buf, tile)
            w1, c1_ = time.perf_counter(), time.thread_time()
            offset = reflectance_offset(sid)
            red, nir = bands["red"], bands["nir"]
            base = si * n
            for k in range(n):
                r0, r1, c0, c1 = wins[k]
                values[base + k] = ndvi_stats(ndvi_values(red[r0:r1, c0:c1], nir[r0:r1, c0:c1],
                                                          prep.masks[k], offset))
            dec_w, dec_c = dec_w + w1 - w0, dec_c + c1_ - c0_
            st_w, st_c = st_w + time.perf_counter() - w1, st_c + time.thread_time() - c1_
    table = stats_frame([fid for _ in scene_ids for fid in prep.field_ids],
                        [sid for sid in scene_ids for _ in prep.field_ids], values)
    pairs = n * len(scene_ids)
    return PeerRun(peer="floor", wall_s=sw.wall_s, cpu_s=sw.cpu_s, pairs=pairs,
                   timed_pairs=pairs, table=table,
                   phases={"read + decode tiles": (dec_w, dec_c), "stats": (st_w, st_c)},
                   extra={"tiles_per_band_scene": len(prep.tiles),
                          "tiles_read": 2 * len(prep.tiles) * len(scene_ids),
                          "bytes_read": nbytes})


def run_decode(prep: FloorPrep, scene_ids: list[str]) -> PeerRun:
    """The floor's reading and decoding alone, on one thread (no statistics): the part of
    the work that dominates once statistics are batched."""
    bands, buf, tile = _decode_buffers(prep.grid)
    nbytes = 0
    with Stopwatch() as sw:
        for sid in scene_ids:
            nbytes += _decode_scene(prep, sid, bands, buf, tile)
    pairs = len(prep.field_ids) * len(scene_ids)
    return PeerRun(peer="decode", wall_s=sw.wall_s, cpu_s=sw.cpu_s, pairs=pairs,
                   timed_pairs=pairs, extra={"bytes_read": nbytes})


def _floor_child(prep: FloorPrep, scene_ids: list[str], core: int, start: Any, out: Any,
                 decode_only: bool) -> None:
    os.sched_setaffinity(0, {core})
    start.wait()
    run = (run_decode if decode_only else run_floor)(prep, scene_ids)
    out.put((core, run.wall_s, run.cpu_s))


def run_floor_pair(prep: FloorPrep, scene_ids: list[str], cores: tuple[int, int], *,
                   decode_only: bool = False) -> PeerRun:
    """Two copies of the floor at once, each in a forked process pinned to its own core;
    ``decode_only``: the floor's reading and decoding, the scenes shared out between the
    two (alternate scenes), as the engine's workers share theirs out.

    What this machine gives two cores doing this work with nothing shared between them
    (no GIL, no lock, no common data structure): the same work twice,
    ``2 * one copy's wall / this wall``, is the 1 -> 2 core ceiling that memory
    bandwidth and shared caches leave, the yardstick beside the engine's own speedup. Both
    copies decode the same tiles at the same moments, so the compressed bytes one reads
    are often still in the shared cache for the other: the decoding shared out (each
    core its own scenes, ``one copy's wall / this wall``) is the ceiling for the
    engine's decode-bound work. Wall = the slower copy, from a common start (a barrier
    after both are pinned).
    """
    import multiprocessing as mp

    parts = ([scene_ids[k::len(cores)] for k in range(len(cores))] if decode_only
             else [scene_ids] * len(cores))
    ctx = mp.get_context("fork")  # the children inherit the prebuilt masks and open files
    start, out = ctx.Barrier(len(cores) + 1), ctx.SimpleQueue()
    procs = [ctx.Process(target=_floor_child, args=(prep, part, c, start, out, decode_only))
             for c, part in zip(cores, parts, strict=True)]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    got = [out.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"{'decode' if decode_only else 'floor'} copy exited with "
                               f"{p.exitcode}")
    pairs = len(prep.field_ids) * sum(len(part) for part in parts)
    return PeerRun(peer="decode_pair" if decode_only else "floor_pair", wall_s=wall,
                   cpu_s=sum(g[2] for g in got), pairs=pairs, timed_pairs=pairs,
                   extra={"copy_wall_s": [round(g[1], 3) for g in sorted(got)]})
