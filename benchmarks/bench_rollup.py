"""Region rollups end to end: monthly pixel statistics of every region on a 2-worker LocalCluster.

Targets (medium sample, 12 scenes of 5490 x 5490 px, 12 regions covering the scene, 2-core
machine): the rollup reads every chunk at most once per scene and band (chunks read per
scene-band <= chunks in one band of one scene, i.e. it costs no more than reading the
pixels once), peak memory per worker < 1 GB, and the client's RSS grows by < 200 MB during
the rollup (partials are tree-reduced on the workers: no pixel reaches the client). The
engine runs a job this size on threads of the client's process by default
(``cluster.processes: auto``), where the client's RSS includes the workers': the growth
target is measured on a third run with worker processes (``processes: true``).

Everything is measured in the same run; setup is timed apart and never enters a ratio:

1. setup: the sample and repository of ``bench_field_stats.py`` (same generator, same
   ``--workdir`` reuse through its marker file; both benchmarks can share a workdir when
   they are given the same field count, ``bench_field_stats.py``'s largest ``--fields``),
   plus ``bench_rollup_regions.geojson`` in the workdir: ``--regions`` polygons in a
   rows x cols grid (3 x 4 for 12) with slightly jagged interior boundaries, covering the
   whole scene with a margin, EPSG:4326, ids ``R01``, ``R02``, ... (north-west first);
2. the rollup job: ``indices: {ndvi: builtin}``, ``outputs: {stats: null, rollup: {period:
   month, kinds: [pixel], stats: [mean, std, min, max, median, p10, p90, count]}}``, nodata
   + SCL cloud mask, cluster 2 workers x 1 thread, 2 GiB each. End to end = LocalCluster
   start + ``run_job`` + cluster close; it runs twice, *first* (warms the page cache and
   the client's imports) and *warm* (the measured one). Worker RSS is sampled every 0.2 s
   and the kernel high-water mark ``VmHWM`` read at the end of each run; the client's own
   RSS is sampled every 0.1 s, and its ``VmHWM`` is reset before each run (``echo 5 >
   /proc/self/clear_refs``, best effort; this resets ``getrusage`` ``ru_maxrss`` too, so
   both then give the client's peak during that run) and read after it. The client
   process also hosts the LocalCluster's scheduler;
3. the per-field statistics job on the same data (ndvi only: red, nir and scl are read;
   mean, median, count; parquet), once, with the page cache warm from the rollup runs, on
   the cluster ``pqb run`` would start for it (``processes: auto`` sized by its
   field-scene pairs: worker processes from 1,000,000 pairs on);
4. chunk reads: the chunks the rollup fetched (manifest ``rollup.chunks_read``) per scene
   and band vs the chunks of one band of one scene (``ceil(H/512) * ceil(W/512)``), and
   vs the chunks the field job fetched (``execution.chunks_read``);
5. an independent check: for one region and the month with the most scenes, the mean and
   count of the valid-pixel NDVI (pixel centre inside the region, nodata and SCL
   3/8/9/10 masked, the 20 m SCL brought onto the 10 m window by nearest neighbour, DN
   decoded with the offset of the scene's date) with rasterio + ``geometry_mask`` + numpy,
   compared with the rollup row
   (mean within 1e-9 relative, count exact);
6. a summary table with MET / MISSED per target.

Usage (from the repository root)::

    python benchmarks/bench_rollup.py --workdir /data/bench   # full run, keep/reuse the data
    python benchmarks/bench_rollup.py --scenes 2 --size 2048 --fields 200  # smoke
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import resource
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import (  # helpers shared with bench_field_stats.py
    CLOUD_CLASSES,
    MB,
    SCALE,
    TARGET_MEMORY,
    _worker_peak_rss,
    cluster_options,
    cogs_by_scene,
    data_files,
    engine_run,
    read_nearest,
    reflectance_offset,
    resident_fraction,
    say,
    say_context,
    scene_date,
    setup_data,
    status,
    time_cluster_start,
    working_dir,
)

ROLLUP_STATS = ["mean", "std", "min", "max", "median", "p10", "p90", "count"]
FIELD_STATS = ["mean", "median", "count"]
REGIONS_FILE = "bench_rollup_regions.geojson"
TARGET_READ_RATIO = 1.0          # rollup chunk reads per scene-band / chunks per scene-band
TARGET_CLIENT_GROWTH = 200 * MB
CHECK_REL_TOL = 1e-9


# --------------------------------------------------------------------------- regions


def grid_shape(n: int) -> tuple[int, int]:
    """rows x cols with rows * cols == n, rows <= cols, as square as possible (12 -> 3 x 4)."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


def write_regions(path: Path, cog: str, n: int, seed: int) -> list[str]:
    """``n`` grid regions with jagged interior edges covering the raster of ``cog`` (EPSG:4326).

    Interior boundaries are polylines (a node every ~1/16 of the extent, jittered by up to
    2 % of the extent); each cell is the intersection of a column strip and a row strip, so
    neighbours share their boundary exactly and the cells tile the scene plus a 2 % margin.
    """
    import rasterio
    import shapely
    from pyproj import Transformer
    from shapely.geometry import Polygon, box, mapping

    with rasterio.open(cog) as src:
        left, bottom, right, top = src.bounds
        epsg = src.crs.to_epsg()
    w, h = right - left, top - bottom
    m = 0.02 * max(w, h)
    outer = box(left - m, bottom - m, right + m, top + m)
    rows, cols = grid_shape(n)
    rng = np.random.default_rng([seed, 2024])
    k = 17
    ty = np.linspace(bottom - m, top + m, k)
    tx = np.linspace(left - m, right + m, k)
    # west_of[j]: everything west of vertical boundary j (0: nothing, cols: everything)
    west_of: list[Any] = [Polygon()]
    for j in range(1, cols):
        xs = left + w * j / cols + rng.uniform(-0.02, 0.02, k) * w
        west_of.append(Polygon([(left - m, bottom - m), *zip(xs, ty, strict=True),
                                (left - m, top + m)]))
    west_of.append(outer)
    # north_of[i]: everything north of horizontal boundary i (0: nothing, rows: everything)
    north_of: list[Any] = [Polygon()]
    for i in range(1, rows):
        ys = top - h * i / rows + rng.uniform(-0.02, 0.02, k) * h
        north_of.append(Polygon([(left - m, top + m), *zip(tx, ys, strict=True),
                                 (right + m, top + m)]))
    north_of.append(outer)
    to_ll = Transformer.from_crs(epsg, 4326, always_xy=True)

    def lonlat(xy: np.ndarray) -> np.ndarray:
        lon, lat = to_ll.transform(xy[:, 0], xy[:, 1])
        return np.round(np.column_stack([lon, lat]), 7)

    features, ids = [], []
    for i in range(rows):
        for j in range(cols):
            cell = (west_of[j + 1].difference(west_of[j])).intersection(
                north_of[i + 1].difference(north_of[i]))
            if cell.geom_type != "Polygon" or cell.is_empty:
                raise RuntimeError(f"region cell ({i}, {j}) is a {cell.geom_type}")
            geom = shapely.orient_polygons(shapely.transform(shapely.segmentize(cell, 250.0),
                                                             lonlat))
            if not geom.is_valid:
                raise RuntimeError(f"region cell ({i}, {j}) is invalid in EPSG:4326")
            rid = f"R{len(ids) + 1:02d}"
            ids.append(rid)
            features.append({"type": "Feature", "properties": {"id": rid, "row": i, "col": j},
                             "geometry": mapping(geom)})
    body = ",\n".join(json.dumps(f, separators=(",", ":")) for f in features)
    path.write_text(f'{{"type":"FeatureCollection","name":"regions","features":[\n{body}\n]}}\n')
    return ids


# --------------------------------------------------------------------------- specs


def _base_spec(path: Path, repo: str, start: str, end: str) -> dict[str, Any]:
    return {
        "version": 1,
        "name": path.stem,
        "repository": {"path": repo},
        "scenes": {"start": start, "end": end},
        "indices": {"ndvi": "builtin"},
        "masks": {"nodata": True, "cloud": "auto"},
        "cluster": {"n_workers": 2, "threads_per_worker": 1, "memory_limit": "2GiB",
                    "dashboard": False},
        "on_error": "skip",
    }


def write_rollup_spec(path: Path, *, repo: str, regions: Path, out_dir: Path, start: str,
                      end: str, processes: bool | None = None) -> Path:
    """The rollup job; ``processes``: force worker processes (or threads) instead of the
    engine's own choice."""
    import yaml

    spec = _base_spec(path, repo, start, end)
    if processes is not None:
        spec["cluster"]["processes"] = processes
    spec["outputs"] = {"dir": str(out_dir), "stats": None,
                       "rollup": {"regions": {"path": str(regions), "id": "id"},
                                  "period": "month", "kinds": ["pixel"],
                                  "stats": ROLLUP_STATS}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_field_spec(path: Path, *, repo: str, fields: str, out_dir: Path, start: str,
                     end: str) -> Path:
    import yaml

    spec = _base_spec(path, repo, start, end)
    spec["fields"] = {"path": fields, "id": "id"}
    spec["stats"] = FIELD_STATS
    spec["pixels"] = "centre"
    spec["outputs"] = {"dir": str(out_dir), "stats": {"format": "parquet"}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --------------------------------------------------------------------------- client memory


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0; best effort)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


class ClientRss:
    """RSS of this (client + scheduler) process during a block: before, sampled peak, VmHWM."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.before = self.sampled = self.hwm = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="client-rss", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sampled = max(self.sampled, _rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> ClientRss:
        self.before = _rss()
        self.hwm_reset = _reset_peak_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sampled = max(self.sampled, _rss())
        self.hwm = _worker_peak_rss()  # reads /proc/self/status: this process here

    @property
    def peak(self) -> int:
        return max(self.sampled, self.hwm if self.hwm_reset else 0)

    @property
    def growth(self) -> int:
        return self.peak - self.before

    def describe(self) -> str:
        hwm = f"VmHWM (reset before) {self.hwm / MB:.1f} MB" if self.hwm_reset else \
            "VmHWM reset unavailable: sampled only"
        return (f"client RSS before {self.before / MB:.1f} MB, peak sampled "
                f"{self.sampled / MB:.1f} MB, {hwm} -> growth {self.growth / MB:+.1f} MB")


def timed_run(spec_path: Path, opts: Any) -> dict[str, Any]:
    """``engine_run`` of bench_field_stats (cluster + run_job + close, worker RSS) + client RSS."""
    with ClientRss() as crss:
        r = engine_run(spec_path, opts)
    r["client"] = crss
    r["maxrss"] = maxrss_bytes()
    r["worker_peak"] = max([*r["rss_hwm"].values(), *r["rss_sampled"].values()], default=0)
    return r


def print_workers(r: dict[str, Any]) -> None:
    for i, addr in enumerate(sorted(r["rss_hwm"])):
        say(f"    worker {i + 1}: peak RSS sampled {r['rss_sampled'].get(addr, 0) / MB:7.1f} MB, "
            f"high-water (VmHWM) {r['rss_hwm'][addr] / MB:7.1f} MB")
    say(f"    ({r['samples']} worker RSS samples at 0.2 s, {r['sample_errors']} failed)")
    scope = "since the VmHWM reset, which resets it too" if r["client"].hwm_reset else "whole process"
    say(f"    {r['client'].describe()}; getrusage ru_maxrss {r['maxrss'] / MB:.1f} MB ({scope})")


def print_rollup_run(label: str, r: dict[str, Any]) -> None:
    m = r["result"].manifest
    ro = m["rollup"]
    say(f"rollup [{label}]  end to end                {r['e2e_s']:9.2f} s")
    say(f"    LocalCluster start / close               {r['start_s']:7.2f} s / {r['close_s']:.2f} s")
    say(f"    run_job                                  {r['run_s']:9.2f} s  "
        f"({ro['units']} units, sum of unit times {ro['unit_s_total']:.2f} s)")
    say(f"    chunks fetched {ro['chunks_read']} (plan: {ro['plan']['chunks_read']}), "
        f"failures {len(m['failures'])}")
    print_workers(r)


def print_field_run(r: dict[str, Any]) -> None:
    m = r["result"].manifest
    ex = m["execution"]
    say(f"field stats  end to end                    {r['e2e_s']:9.2f} s")
    say(f"    LocalCluster start / close               {r['start_s']:7.2f} s / {r['close_s']:.2f} s")
    say(f"    run_job                                  {r['run_s']:9.2f} s  "
        f"({ex['units']} units, sum of unit times {ex['unit_s_total']:.2f} s)")
    say(f"    rows {ex['rows']}, chunks fetched {ex['chunks_read']} "
        f"(plan: {m['plan']['chunks_read']}), failures {len(m['failures'])}")
    print_workers(r)


# --------------------------------------------------------------------------- independent check


def scene_day(scene_id: str) -> str:
    return scene_date(scene_id).isoformat()  # S2A_{tile}_{YYYYMMDD}_0_L2A -> YYYY-MM-DD


def naive_region_month(regions_path: Path, region_id: str,
                       scenes: dict[str, dict[str, str]]) -> tuple[float, int]:
    """Mean and count of the valid NDVI pixels (centre inside the region) over ``scenes``."""
    import rasterio
    from rasterio.errors import WindowError
    from rasterio.features import geometry_mask, geometry_window
    from rasterio.warp import transform_geom

    fc = json.loads(regions_path.read_text())
    [geom_ll] = [f["geometry"] for f in fc["features"] if f["properties"]["id"] == region_id]
    total, count = 0.0, 0
    for scene_id, paths in scenes.items():
        with rasterio.open(paths["red"]) as src:
            geom = transform_geom("EPSG:4326", src.crs, geom_ll)
            try:
                window = geometry_window(src, [geom])
            except WindowError:
                continue
            red_dn = src.read(1, window=window)
            transform = src.window_transform(window)
        with rasterio.open(paths["nir"]) as src:
            nir_dn = src.read(1, window=window)
        scl = read_nearest(paths["scl"], transform, red_dn.shape)  # 20 m -> the 10 m window
        inside = geometry_mask([geom], out_shape=red_dn.shape, transform=transform, invert=True)
        offset = reflectance_offset(scene_id)
        red = np.where(red_dn == 0, np.nan, red_dn * SCALE + offset)
        nir = np.where(nir_dn == 0, np.nan, nir_dn * SCALE + offset)
        with np.errstate(divide="ignore", invalid="ignore"):
            ndvi = (nir - red) / (nir + red)
        vals = ndvi[inside & ~np.isin(scl, CLOUD_CLASSES) & np.isfinite(ndvi)]
        total += float(vals.sum())
        count += int(vals.size)
    return (total / count if count else math.nan), count


def check_rollup(rollup_path: Path, regions_path: Path, region_id: str, month: str,
                 scenes: dict[str, dict[str, str]]) -> dict[str, Any]:
    import pandas as pd

    df = pd.read_parquet(rollup_path)
    sel = df[(df["region_id"] == region_id) & (df["variable"] == "ndvi")
             & (df["period_start"].dt.strftime("%Y-%m") == month)]
    t0 = time.perf_counter()
    mean, count = naive_region_month(regions_path, region_id, scenes)
    took = time.perf_counter() - t0
    if len(sel) != 1:
        return {"ok": False, "why": f"{len(sel)} rollup rows for ({region_id}, {month}, ndvi)",
                "naive_mean": mean, "naive_count": count, "s": took}
    row = sel.iloc[0]
    rel = abs(float(row["mean"]) - mean) / max(abs(mean), 1e-300)
    ok = rel <= CHECK_REL_TOL and float(row["count"]) == count
    return {"ok": ok, "why": "", "naive_mean": mean, "naive_count": count,
            "rollup_mean": float(row["mean"]), "rollup_count": float(row["count"]),
            "rollup_n_scenes": int(row["n_scenes"]), "rel": rel, "s": took}


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=12)
    ap.add_argument("--size", type=int, default=5490, help="scene width/height in pixels")
    ap.add_argument("--fields", type=int, default=2000)
    ap.add_argument("--regions", type=int, default=12, help="number of regions (rows x cols grid)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None,
                    help="keep sample + repository here and reuse them (shared with "
                    "bench_field_stats.py; default: a temp dir)")
    ap.add_argument("--check-region", default=None,
                    help="region id of the independent check (default: the north-east one)")
    args = ap.parse_args()
    if args.regions < 1:
        ap.error("--regions must be >= 1")

    say_context(f"# region rollup benchmark: {args.scenes} scenes x {args.size}^2 px, "
                f"{args.regions} regions, {args.fields} fields (field job), seed {args.seed}")

    with working_dir(args.workdir) as workdir:
        # ---------------------------------------------------------------- 1. setup
        info = setup_data(workdir, args)
        scenes = cogs_by_scene(info["cog_dir"])
        n_scenes = len(scenes)
        days = sorted(scene_day(s) for s in scenes)
        cogs = data_files(Path(info["cog_dir"]))
        first_red = scenes[next(iter(scenes))]["red"]
        import rasterio

        with rasterio.open(first_red) as src:
            (by, bx), (height, width) = src.block_shapes[0], src.shape
        # The same count for the 20 m SCL: ceil(ceil(H / 2) / 256) == ceil(H / 512).
        chunks_per_band = math.ceil(height / by) * math.ceil(width / bx)
        how = "reused from the marker (timings of the run that built it)" if info["reused"] else "this run"
        say(f"setup [{how}]: generate {info['generate_s']:.1f} s, ingest {info['ingest_s']:.1f} s "
            "(not part of any ratio)")
        t0 = time.perf_counter()
        regions_path = workdir / REGIONS_FILE
        region_ids = write_regions(regions_path, first_red, args.regions, args.seed)
        rows, cols = grid_shape(args.regions)
        if args.check_region is not None and args.check_region not in region_ids:
            ap.error(f"--check-region {args.check_region!r} is not one of {region_ids}")
        say(f"setup: {len(region_ids)} regions ({rows} x {cols} grid, jagged edges, EPSG:4326) "
            f"-> {regions_path} in {time.perf_counter() - t0:.2f} s")
        say(f"# data: {n_scenes} scenes ({days[0]} .. {days[-1]}) x {height} x {width} px, "
            f"{bx} x {by} px chunks -> {chunks_per_band} chunks per band and scene; "
            f"{info['n_fields']} fields; workdir {workdir}")

        runs = workdir / "rollup_runs"
        shutil.rmtree(runs, ignore_errors=True)
        runs.mkdir()
        month_start = dt.date.fromisoformat(days[0]).replace(day=1).isoformat()
        window = {"start": month_start, "end": days[-1]}
        spec_first = write_rollup_spec(runs / "rollup-first.yaml", repo=info["repo"],
                                       regions=regions_path, out_dir=runs / "rollup-first", **window)
        spec_warm = write_rollup_spec(runs / "rollup-warm.yaml", repo=info["repo"],
                                      regions=regions_path, out_dir=runs / "rollup-warm", **window)
        spec_field = write_field_spec(runs / "fields.yaml", repo=info["repo"],
                                      fields=info["fields_path"], out_dir=runs / "fields", **window)
        # the engine's default runs jobs this size on threads of the client's own process,
        # so the client's RSS includes the workers' there; "no pixel reaches the client"
        # is measured on a run with worker processes
        spec_proc = write_rollup_spec(runs / "rollup-processes.yaml", repo=info["repo"],
                                      regions=regions_path, out_dir=runs / "rollup-processes",
                                      processes=True, **window)
        opts = cluster_options(spec_warm)
        from pixelquery_batch.api import prepare_job

        job = prepare_job(spec_warm)
        bands = job.bands + job.optional_bands  # the cloud band of `cloud: auto` is read too
        say(f"job specs: {spec_warm}, {spec_field} (cluster: {opts.n_workers} workers x "
            f"{opts.threads_per_worker} thread, memory_limit {opts.memory_limit}); "
            f"bands read: {', '.join(bands)}; {len(job.scenes)} scenes matched")
        say(f"client RSS after setup {_rss() / MB:.1f} MB, ru_maxrss so far {maxrss_bytes() / MB:.1f} MB"
            + (" (includes generating the sample)" if not info["reused"] else ""))

        # ---------------------------------------------------------------- 2. rollup
        up_s, down_s = time_cluster_start(opts)
        say(f"LocalCluster alone (open_client): start {up_s:.2f} s, close {down_s:.2f} s")
        res = resident_fraction(cogs)
        say("first run: COGs resident in the page cache: "
            + ("unknown" if res is None else f"{res:.0%}"))
        first = timed_run(spec_first, opts)
        print_rollup_run("first", first)
        warm = timed_run(spec_warm, opts)
        print_rollup_run("warm", warm)
        opts_proc = cluster_options(spec_proc)
        proc = timed_run(spec_proc, opts_proc)
        print_rollup_run("worker processes", proc)

        # ---------------------------------------------------------------- 3. field job
        # on the cluster `pqb run` would start for it: `processes: auto` sized by the job's
        # field-scene pairs (worker processes from 1,000,000 on), not the rollup's threads
        from pixelquery_batch.executor import choose_processes

        n_field_scenes = len(prepare_job(spec_field).scenes)
        opts_field = choose_processes(cluster_options(spec_field), info["n_fields"], n_field_scenes)
        say(f"field job: {info['n_fields']} fields x {n_field_scenes} scenes on "
            f"{opts_field.n_workers} x {opts_field.threads_per_worker} "
            f"{'worker processes' if opts_field.processes else 'threads of this process'} "
            "(processes: auto, as pqb run sizes it)")
        field = timed_run(spec_field, opts_field)
        print_field_run(field)

        # ---------------------------------------------------------------- 4. chunk reads
        ro = warm["result"].manifest["rollup"]
        n_rollup_scenes = int(ro["plan"]["scenes_matched"])
        scene_bands = n_rollup_scenes * len(bands)
        rollup_chunks = int(ro["chunks_read"])
        per_scene_band = rollup_chunks / scene_bands if scene_bands else math.nan
        read_ratio = per_scene_band / chunks_per_band
        field_chunks = int(field["result"].manifest["execution"]["chunks_read"])
        say(f"chunks: rollup fetched {rollup_chunks} for {n_rollup_scenes} scenes x {len(bands)} "
            f"bands -> {per_scene_band:.1f} per scene-band vs {chunks_per_band} chunks in a "
            f"scene-band -> ratio {read_ratio:.3f} (<= {TARGET_READ_RATIO:g}: every chunk at most once)")
        say(f"chunks: field job fetched {field_chunks} "
            f"({field_chunks / scene_bands if scene_bands else math.nan:.1f} per scene-band); "
            f"rollup / field = {rollup_chunks / field_chunks if field_chunks else math.nan:.2f}")

        # ---------------------------------------------------------------- 5. check
        by_month: dict[str, list[str]] = {}
        for sid in sorted(scenes, key=scene_day):
            by_month.setdefault(scene_day(sid)[:7], []).append(sid)
        month = max(by_month, key=lambda k: (len(by_month[k]), -int(k.replace("-", ""))))
        region = args.check_region or region_ids[cols - 1]
        chk = check_rollup(warm["result"].outputs["rollup"], regions_path, region, month,
                           {s: scenes[s] for s in by_month[month]})
        if chk["why"]:
            say(f"check {region} {month}: MISMATCH ({chk['why']})")
        else:
            say(f"check {region} {month} ({len(by_month[month])} scenes; rasterio + geometry_mask + "
                f"numpy in {chk['s']:.2f} s): naive mean {chk['naive_mean']:.12f} count "
                f"{chk['naive_count']}; rollup mean {chk['rollup_mean']:.12f} count "
                f"{chk['rollup_count']:.0f} (n_scenes {chk['rollup_n_scenes']}); rel. diff "
                f"{chk['rel']:.2g} -> {'OK' if chk['ok'] else 'MISMATCH'}")

        # ---------------------------------------------------------------- 6. summary
        rollup_peak = max(first["worker_peak"], warm["worker_peak"], proc["worker_peak"])
        growth = proc["client"].growth
        in_process = set(warm["rss_hwm"]) and all(
            "inproc" in a for a in warm["rss_hwm"])  # threads of this process
        say("")
        say("=" * 100)
        say(f"summary ({n_scenes} scenes x {height} x {width} px, {len(region_ids)} regions, "
            f"{info['n_fields']} fields)")
        say("-" * 100)
        say(f"{'figure':<60}{'value':>14}  {'target':<12}{'status'}")
        say("-" * 100)

        def row(label: str, value: str, target: str = "", st: str = "") -> None:
            say(f"{label:<60}{value:>14}  {target:<12}{st}".rstrip())

        row("setup: generate + ingest (not in ratios)",
            f"{info['generate_s'] + info['ingest_s']:.1f} s")
        row("LocalCluster start (open_client alone)", f"{up_s:.2f} s")
        row("rollup end to end, first run", f"{first['e2e_s']:.2f} s")
        row("rollup end to end, warm (measured)", f"{warm['e2e_s']:.2f} s")
        row("field stats job end to end (warm page cache)", f"{field['e2e_s']:.2f} s")
        row("wall time rollup (warm) / field job",
            f"{warm['e2e_s'] / field['e2e_s']:.2f}x", "(info)")
        row("rollup chunks per scene-band", f"{per_scene_band:.1f}")
        row("chunks in one scene-band (ceil(H/512) * ceil(W/512))", f"{chunks_per_band}")
        row("rollup reads / (scenes x bands x chunks per band)", f"{read_ratio:.3f}",
            f"<= {TARGET_READ_RATIO:g}", status(read_ratio <= TARGET_READ_RATIO))
        row("field job chunks fetched", f"{field_chunks}")
        row("chunks fetched rollup / field job",
            f"{rollup_chunks / field_chunks if field_chunks else math.nan:.2f}", "(info)")
        row("peak worker memory, rollup (max: workers, all three runs)",
            f"{rollup_peak / MB:.0f} MB", "< 1 GB", status(rollup_peak < TARGET_MEMORY))
        row("peak worker memory, field job", f"{field['worker_peak'] / MB:.0f} MB", "(info)")
        row("client RSS growth during the rollup, worker processes", f"{growth / MB:.1f} MB",
            "< 200 MB", status(growth < TARGET_CLIENT_GROWTH))
        row("rollup end to end with worker processes", f"{proc['e2e_s']:.2f} s", "(info)")
        workers_in = " (workers are threads of this process)" if in_process else ""
        row("client RSS growth, warm run" + workers_in, f"{warm['client'].growth / MB:.1f} MB",
            "(info)")
        row("client RSS growth, first run" + workers_in,
            f"{first['client'].growth / MB:.1f} MB", "(info)")
        row("client RSS before the warm rollup", f"{warm['client'].before / MB:.0f} MB", "(info)")
        row("client peak RSS in the warm rollup (getrusage ru_maxrss)"
            + ("" if warm["client"].hwm_reset else " [whole process]"),
            f"{warm['maxrss'] / MB:.0f} MB", "(info)")
        row(f"independent check {region} {month} (mean 1e-9 rel., count)",
            "OK" if chk["ok"] else "MISMATCH")
        say("=" * 100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
