"""Per-field statistics end to end: ``pqb run`` on a 2-worker LocalCluster vs a naive rasterio loop.

Targets (medium sample, 2,000 fields x 12 scenes of 5490 x 5490 px, 2-core machine):
end-to-end speedup >= 4x against the single-process naive loop, peak memory per worker
< 1 GB, >= 10 field-scene pairs per task, read amplification <= 1.2.

Everything is measured in the same run; setup is timed apart and never enters a ratio:

1. setup: generate the seeded sample and ingest it into an Icechunk repository (reused
   from ``--workdir`` when a marker file says it was built with the same arguments);
2. a job spec like ``jobs/nightly-field-stats.yaml`` (red, nir, ndvi; 9 statistics;
   nodata + SCL cloud mask; parquet; cluster of 2 workers x 1 thread, 2 GiB each);
3. ``run_job`` twice on a LocalCluster built from the spec's ``cluster`` section: *cold*
   (the COGs are first evicted from the page cache, best effort, with
   ``posix_fadvise(DONTNEED)``) and *warm* (page cache filled by the cold run). End to end
   = LocalCluster start + ``run_job`` + cluster close. Worker RSS is sampled every 0.2 s
   by a second client; the kernel high-water mark (``VmHWM``) is read at the end;
4. the naive baseline: a per-field, per-scene loop with rasterio, as a user would write
   it (reproject, ``rasterio.open``, ``geometry_window``, windowed read of red and nir at
   10 m, the 20 m SCL brought onto that window with ``rasterio.warp.reproject`` (nearest),
   nodata + SCL 3/8/9/10 mask, DN * 1e-4 with offset -0.1 from processing baseline 04.00
   (2022-01-25) on and 0 before, NDVI, numpy statistics of the same three
   variables and nine statistics the engine outputs, a parquet file at the end). It runs
   after the engine runs, so the page cache is warm for it too: the speedup compares the
   *warm* engine run with the (warm) naive loop. ``--naive-pairs N`` times a seeded
   random subset of field-scene pairs and extrapolates (printed as such);
5. a check that the naive loop and the engine agree (mean within 1e-9 on a handful of
   pairs; the other statistics are compared too and reported: ``valid_fraction`` differs
   for fields crossing the image edge, where the naive window is clipped to the raster),
   then a summary table with MET / MISSED per target.

Usage (from the repository root)::

    python benchmarks/bench_field_stats.py                      # full medium run
    python benchmarks/bench_field_stats.py --workdir /data/bench  # keep and reuse the data
    python benchmarks/bench_field_stats.py --scenes 2 --size 2048 --fields 200  # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import json
import math
import mmap
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

STATS = ["mean", "std", "min", "max", "median", "p10", "p90", "count", "valid_fraction"]
VARIABLES = ("red", "nir", "ndvi")
CLOUD_CLASSES = (3, 8, 9, 10)       # SCL: cloud shadow, cloud medium/high, thin cirrus
SCALE = 1e-4                        # Sentinel-2 L2A: reflectance = DN * SCALE + offset
BASELINE_04 = dt.date(2022, 1, 25)  # processing baseline 04.00: offset -0.1 from here on, 0 before
PATTERN = "{scene}/{band}.tif"      # the sample's Element 84 layout below cogs/
FILE_BANDS = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B11": "swir16",
              "SCL": "scl"}
MARKER = "bench_field_stats.json"
GB = 1e9
MB = 1e6

TARGET_SPEEDUP = 4.0
TARGET_MEMORY = 1 * GB
TARGET_PAIRS_PER_TASK = 10.0
TARGET_READ_AMP = 1.2


# --------------------------------------------------------------------------- helpers


def say(msg: str) -> None:
    print(msg, flush=True)


def fmt_s(seconds: float) -> str:
    return f"{seconds:9.2f} s"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("pixelquery_batch", "numpy", "dask", "distributed", "zarr", "icechunk", "rasterio"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # a missing module is reported, not fatal
            out[mod] = "n/a"
    import rasterio

    out["gdal"] = rasterio.__gdal_version__
    return out


def total_ram() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def data_files(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs for p in d.rglob("*") if p.is_file())


def evict_page_cache(paths: list[Path]) -> None:
    """Ask the kernel to drop these files from the page cache (no root needed, best effort)."""
    os.sync()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(paths: list[Path]) -> float | None:
    """Fraction of the files' bytes in the page cache (Linux ``mincore``), None if unknown."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        page = mmap.PAGESIZE
        resident = total = 0
        for p in paths:
            size = p.stat().st_size
            if size == 0:
                continue
            n_pages = (size + page - 1) // page
            vec = (ctypes.c_ubyte * n_pages)()
            with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as mm:
                buf = ctypes.c_char.from_buffer(mm)
                try:
                    rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(buf)),
                                      ctypes.c_size_t(size), vec)
                finally:
                    del buf
            if rc != 0:
                return None
            resident += sum(v & 1 for v in vec)
            total += n_pages
        return resident / total if total else None
    except Exception:  # informational only
        return None


# --------------------------------------------------------------------------- setup


def setup_data(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Generate + ingest (or reuse); returns paths and the setup timings."""
    from pixelquery_batch.catalog.ingest import ingest
    from pixelquery_batch.sample import generate_sample

    key = {"scenes": args.scenes, "size": args.size, "fields": args.fields, "seed": args.seed,
           "layout": PATTERN}  # markers of the earlier flat layout regenerate
    sample_dir, repo = workdir / "sample", workdir / "repo"
    marker = workdir / MARKER
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("key") == key and Path(info["cog_dir"]).is_dir() and repo.is_dir():
            info["reused"] = True
            return info
        say(f"# marker {marker} is for other arguments ({info.get('key')}): regenerating")
        marker.unlink()
    shutil.rmtree(repo, ignore_errors=True)
    say(f"setup: generating {args.scenes} scenes x {args.size}^2 px, {args.fields} fields "
        f"(seed {args.seed}) in {sample_dir} ...")
    t0 = time.perf_counter()
    sample = generate_sample(sample_dir, scenes=args.scenes, size=args.size, fields=args.fields,
                             seed=args.seed, progress=lambda m: say(f"  {m}"))
    gen_s = time.perf_counter() - t0
    say(f"setup: ingesting into {repo} ...")
    t0 = time.perf_counter()
    report = ingest(str(sample.cog_dir), str(repo), product="sentinel2-l2a", pattern=PATTERN)
    ingest_s = time.perf_counter() - t0
    if not report.ok:
        raise SystemExit(f"ingest failed: {json.dumps(report.to_dict(), indent=1)[:2000]}")
    info = {"key": key, "cog_dir": str(sample.cog_dir), "fields_path": str(sample.fields_path),
            "repo": str(repo), "n_fields": sample.n_fields, "generate_s": gen_s,
            "ingest_s": ingest_s, "files_ingested": report.counts()["ingested"]}
    marker.write_text(json.dumps(info, indent=1))
    info["reused"] = False
    return info


def write_spec(path: Path, *, repo: str, fields: str, out_dir: Path, rule: str) -> Path:
    import yaml

    spec = {
        "version": 1,
        "name": path.stem,
        "repository": {"path": repo},
        "scenes": {"start": "1900-01-01", "end": "2999-12-31"},
        "fields": {"path": fields, "id": "id"},
        "bands": ["red", "nir"],
        "indices": {"ndvi": "builtin"},
        "stats": STATS,
        "pixels": rule,
        "masks": {"nodata": True, "cloud": "auto"},
        "outputs": {"dir": str(out_dir), "stats": {"format": "parquet"}},
        "cluster": {"n_workers": 2, "threads_per_worker": 1, "memory_limit": "2GiB",
                    "dashboard": False},
        "on_error": "skip",
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --------------------------------------------------------------------------- engine run


def _worker_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _worker_peak_rss() -> int:
    """Kernel high-water mark of this process's RSS (``VmHWM``; 0 where unavailable).

    Not ``ru_maxrss``: that survives fork + exec, so a worker would report the RSS of the
    process that spawned it (here the benchmark itself) if that was larger.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return 0


class RssSampler:
    """Background thread: every ``interval`` s, the RSS of every worker (via ``client.run``)."""

    def __init__(self, client: Any, interval: float = 0.2) -> None:
        self.client, self.interval = client, interval
        self.peak: dict[str, int] = {}
        self.samples = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for addr, rss in self.client.run(_worker_rss).items():
                    self.peak[addr] = max(self.peak.get(addr, 0), rss)
                self.samples += 1
            except Exception:  # a worker going away must not kill the run
                self.errors += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cluster_options(spec_path: Path) -> Any:
    """The spec's ``cluster`` section as executor options (what ``pqb run`` would start)."""
    from pixelquery_batch.api import load_job
    from pixelquery_batch.executor import ClusterOptions

    c = load_job(spec_path).cluster
    return ClusterOptions(address=c.address, n_workers=c.n_workers,
                          threads_per_worker=c.threads_per_worker,
                          memory_limit=c.memory_limit, dashboard=c.dashboard)


def time_cluster_start(opts: Any) -> tuple[float, float]:
    from pixelquery_batch.executor import open_client

    t0 = time.perf_counter()
    with open_client(opts):
        t1 = time.perf_counter()
    return t1 - t0, time.perf_counter() - t1


def engine_run(spec_path: Path, opts: Any) -> dict[str, Any]:
    """LocalCluster start + run_job + close, with worker memory sampled meanwhile."""
    from distributed import Client

    from pixelquery_batch.api import run_job
    from pixelquery_batch.executor import open_client

    t0 = time.perf_counter()
    with open_client(opts) as client:
        start_s = time.perf_counter() - t0
        monitor = Client(client.scheduler.address, set_as_default=False)
        try:
            with RssSampler(monitor) as sampler:
                t1 = time.perf_counter()
                result = run_job(spec_path, cluster=client)
                run_s = time.perf_counter() - t1
            hwm = client.run(_worker_peak_rss)
        finally:
            monitor.close()
        t2 = time.perf_counter()
    close_s = time.perf_counter() - t2
    if not result.ok:
        say(f"  WARNING: {len(result.manifest['failures'])} failures, first: "
            f"{result.manifest['failures'][0]}")
    return {"result": result, "start_s": start_s, "run_s": run_s, "close_s": close_s,
            "e2e_s": start_s + run_s + close_s, "rss_sampled": sampler.peak,
            "rss_hwm": hwm, "samples": sampler.samples, "sample_errors": sampler.errors}


def print_engine_run(label: str, r: dict[str, Any]) -> None:
    m = r["result"].manifest
    ex = m["execution"]
    par = ex["unit_s_total"] / (ex["wall_s"] * max(ex["workers"], 1)) if ex["wall_s"] else 0.0
    say(f"pqb run [{label}]  end to end              {fmt_s(r['e2e_s'])}")
    say(f"    LocalCluster start / close               {r['start_s']:7.2f} s / {r['close_s']:.2f} s")
    say(f"    run_job                                  {fmt_s(r['run_s'])}")
    say(f"      of which execution (units)             {fmt_s(ex['wall_s'])}  "
        f"({ex['units']} units, sum of unit times {ex['unit_s_total']:.2f} s, "
        f"slowest {ex['unit_s_max']:.2f} s, worker busy {par:.0%})")
    say(f"    rows {ex['rows']}, chunks fetched {ex['chunks_read']}, failures {len(m['failures'])}")
    for i, addr in enumerate(sorted(r["rss_hwm"])):
        sampled = r["rss_sampled"].get(addr, 0)
        say(f"    worker {i + 1} ({addr}): peak RSS sampled {sampled / MB:7.1f} MB, "
            f"high-water (VmHWM) {r['rss_hwm'][addr] / MB:7.1f} MB")
    say(f"    ({r['samples']} RSS samples at 0.2 s, {r['sample_errors']} failed)")


# --------------------------------------------------------------------------- naive baseline


def load_fields_plain(path: str) -> list[tuple[str, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        fc = json.load(f)
    return [(str(feat["properties"]["id"]), feat["geometry"]) for feat in fc["features"]]


def cogs_by_scene(cog_dir: str) -> dict[str, dict[str, str]]:
    """{scene_id: {band name: path}} for ``{scene}/{B04,B08,SCL,...}.tif``, in date order."""
    out: dict[str, dict[str, str]] = {}
    for d in sorted(p for p in Path(cog_dir).iterdir() if p.is_dir()):
        bands = {FILE_BANDS[p.stem]: str(p) for p in sorted(d.glob("*.tif"))
                 if p.stem in FILE_BANDS}
        if bands:
            out[d.name] = bands
    return dict(sorted(out.items(), key=lambda kv: (scene_date(kv[0]), kv[0])))


def scene_date(scene_id: str) -> dt.date:
    """The acquisition date of a scene id such as ``S2A_33UXP_20211001_0_L2A``."""
    m = re.search(r"_(\d{4})(\d{2})(\d{2})_", scene_id)
    if m is None:
        raise ValueError(f"no YYYYMMDD date in scene id {scene_id!r}")
    return dt.date(*map(int, m.groups()))


def reflectance_offset(scene_id: str) -> float:
    """-0.1 for acquisitions from processing baseline 04.00 (2022-01-25) on, 0.0 before."""
    return -0.1 if scene_date(scene_id) >= BASELINE_04 else 0.0


def read_nearest(path: str, dst_transform: Any, shape: tuple[int, int]) -> np.ndarray:
    """A band on another grid (the 20 m SCL) brought onto a 10 m window by nearest neighbour."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    with rasterio.open(path) as src:
        out = np.zeros(shape, src.dtypes[0])
        reproject(rasterio.band(src, 1), out, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=dst_transform, dst_crs=src.crs, resampling=Resampling.nearest)
    return out


def numpy_stats(values: np.ndarray, total: int) -> dict[str, float]:
    n = values.size
    if n == 0:
        nan = float("nan")
        out = dict.fromkeys(STATS, nan)
        out["count"], out["valid_fraction"] = 0.0, (0.0 if total else nan)
        return out
    return {
        "mean": float(np.mean(values)), "std": float(np.std(values)),
        "min": float(np.min(values)), "max": float(np.max(values)),
        "median": float(np.median(values)), "p10": float(np.percentile(values, 10)),
        "p90": float(np.percentile(values, 90)), "count": float(n),
        "valid_fraction": n / total if total else float("nan"),
    }


def naive_loop(fields: list[tuple[str, dict[str, Any]]], scenes: dict[str, dict[str, str]],
               pairs: list[tuple[int, int]], all_touched: bool) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The baseline: one field, one scene at a time, straight rasterio + numpy."""
    import rasterio
    from rasterio.errors import WindowError
    from rasterio.features import geometry_mask, geometry_window
    from rasterio.warp import transform_geom

    scene_ids = list(scenes)
    rows: list[dict[str, Any]] = []
    t = {"reproject": 0.0, "open+read": 0.0, "mask": 0.0, "stats": 0.0}
    for fi, si in pairs:
        field_id, geom_ll = fields[fi]
        scene_id = scene_ids[si]
        paths = scenes[scene_id]
        c0 = time.perf_counter()
        with rasterio.open(paths["red"]) as src:
            geom = transform_geom("EPSG:4326", src.crs, geom_ll)
            c1 = time.perf_counter()
            try:
                # Clipped to the raster (rasterio's default): for fields crossing the image
                # edge the naive valid_fraction counts only the part inside the image, the
                # engine's the whole field. No other statistic is affected.
                window = geometry_window(src, [geom])
            except WindowError:
                continue  # field outside this scene
            red_dn = src.read(1, window=window)
            transform = src.window_transform(window)
        with rasterio.open(paths["nir"]) as src:
            nir_dn = src.read(1, window=window)
        scl = read_nearest(paths["scl"], transform, red_dn.shape)  # 20 m -> the 10 m window
        c2 = time.perf_counter()
        inside = geometry_mask([geom], out_shape=red_dn.shape, transform=transform,
                               all_touched=all_touched, invert=True)
        cloudy = np.isin(scl, CLOUD_CLASSES)
        c3 = time.perf_counter()
        offset = reflectance_offset(scene_id)
        red = np.where(red_dn == 0, np.nan, red_dn * SCALE + offset)
        nir = np.where(nir_dn == 0, np.nan, nir_dn * SCALE + offset)
        with np.errstate(divide="ignore", invalid="ignore"):
            ndvi = (nir - red) / (nir + red)
        total = int(inside.sum())
        for name, arr in (("red", red), ("nir", nir), ("ndvi", ndvi)):
            vals = arr[inside & ~cloudy]
            vals = vals[np.isfinite(vals)]
            rows.append({"field_id": field_id, "scene_id": scene_id, "variable": name,
                         **numpy_stats(vals, total)})
        c4 = time.perf_counter()
        t["reproject"] += c1 - c0
        t["open+read"] += c2 - c1
        t["mask"] += c3 - c2
        t["stats"] += c4 - c3
    return rows, t


def naive_run(info: dict[str, Any], out_dir: Path, rule: str, n_pairs: int | None,
              seed: int) -> dict[str, Any]:
    import pandas as pd

    t0 = time.perf_counter()
    fields = load_fields_plain(info["fields_path"])
    scenes = cogs_by_scene(info["cog_dir"])
    load_s = time.perf_counter() - t0
    all_pairs = [(fi, si) for fi in range(len(fields)) for si in range(len(scenes))]
    if n_pairs is not None and n_pairs < len(all_pairs):
        rng = np.random.default_rng([seed, 7])
        pick = np.sort(rng.choice(len(all_pairs), size=n_pairs, replace=False))
        pairs = [all_pairs[i] for i in pick]
    else:
        pairs = all_pairs
    t1 = time.perf_counter()
    rows, parts = naive_loop(fields, scenes, pairs, all_touched=rule == "all_touched")
    loop_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_parquet(out_dir / "stats.parquet", index=False)
    write_s = time.perf_counter() - t2
    scale = len(all_pairs) / len(pairs) if pairs else 0.0
    return {"df": df, "load_s": load_s, "loop_s": loop_s, "write_s": write_s,
            "pairs_timed": len(pairs), "pairs_total": len(all_pairs),
            "extrapolated": len(pairs) < len(all_pairs), "scale": scale, "parts": parts,
            "total_s": load_s + loop_s * scale + write_s * scale}


def check_against_engine(naive_df: Any, stats_path: Path, seed: int, n_check: int = 10) -> dict[str, Any]:
    """Compare a handful of naive pairs with the engine's stats table (every variable)."""
    import pyarrow.parquet as pq

    eng = pq.read_table(stats_path).to_pandas().set_index(["field_id", "scene_id", "variable"])
    keys = naive_df[["field_id", "scene_id"]].drop_duplicates().to_numpy().tolist()
    rng = np.random.default_rng([seed, 11])
    chosen = [keys[i] for i in sorted(rng.choice(len(keys), size=min(n_check, len(keys)),
                                                 replace=False))]
    max_dmean, other_diff, missing, compared = 0.0, set(), 0, 0
    nd = naive_df.set_index(["field_id", "scene_id", "variable"])
    for fid, sid in chosen:
        for var in VARIABLES:
            key = (fid, sid, var)
            if key not in eng.index:
                missing += 1
                continue
            a, b = nd.loc[key], eng.loc[key]
            compared += 1
            for stat in STATS:
                x, y = float(a[stat]), float(b[stat])
                if math.isnan(x) and math.isnan(y):
                    continue
                d = abs(x - y) if not (math.isnan(x) or math.isnan(y)) else math.inf
                if stat == "mean":
                    max_dmean = max(max_dmean, d)
                elif d > 1e-9 * max(1.0, abs(y)):
                    other_diff.add(stat)
    return {"pairs": len(chosen), "compared": compared, "missing": missing,
            "max_dmean": max_dmean, "ok": missing == 0 and compared > 0 and max_dmean <= 1e-9,
            "other_diff": sorted(other_diff)}


# --------------------------------------------------------------------------- main


@contextlib.contextmanager
def working_dir(path: str | None) -> Iterator[Path]:
    if path:
        p = Path(path).resolve()
        p.mkdir(parents=True, exist_ok=True)
        yield p
    else:
        with tempfile.TemporaryDirectory(prefix="bench_field_stats_") as tmp:
            yield Path(tmp)


def status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def say_context(title: str) -> None:
    """Print the benchmark title, library versions and the machine."""
    import psutil

    say(title)
    say("# " + ", ".join(f"{k} {val}" for k, val in versions().items()))
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    say(f"# {platform.machine()}, {os.cpu_count()} CPUs ({affinity} usable), "
        f"{total_ram() / GB:.1f} GB RAM ({psutil.virtual_memory().available / GB:.1f} GB available), "
        f"{platform.node()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=12)
    ap.add_argument("--size", type=int, default=5490, help="scene width/height in pixels")
    ap.add_argument("--fields", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None,
                    help="keep sample + repository here and reuse them (default: a temp dir)")
    ap.add_argument("--naive-pairs", type=int, default=None,
                    help="time the naive loop on N seeded random field-scene pairs and "
                    "extrapolate (default: all pairs)")
    ap.add_argument("--skip-naive", action="store_true", help="no naive baseline (no speedup)")
    ap.add_argument("--rules", "--rule", dest="rule", default="centre",
                    choices=["centre", "all_touched", "coverage"],
                    help="pixel rule of the job (the naive loop knows centre and all_touched)")
    args = ap.parse_args()
    if args.rule == "coverage" and not args.skip_naive:
        ap.error("--rules coverage has no naive rasterio equivalent: add --skip-naive")
    if args.naive_pairs is not None and args.naive_pairs < 1:
        ap.error("--naive-pairs must be >= 1")

    say_context(f"# per-field statistics benchmark: {args.scenes} scenes x {args.size}^2 px, "
                f"{args.fields} fields, pixels={args.rule}, seed {args.seed}")

    with working_dir(args.workdir) as workdir:
        # ---------------------------------------------------------------- 1. setup
        info = setup_data(workdir, args)
        n_scenes = len(cogs_by_scene(info["cog_dir"]))
        pairs_total = info["n_fields"] * n_scenes
        cogs = data_files(Path(info["cog_dir"]))
        cog_bytes = sum(p.stat().st_size for p in cogs)
        say(f"# data: {n_scenes} scenes x {args.size}^2 px x 6 bands (4 at 10 m, B11 + SCL at "
            f"20 m; {len(cogs)} COGs, {cog_bytes / GB:.2f} GB; red, nir, scl read), "
            f"{info['n_fields']} fields, "
            f"{pairs_total} field-scene pairs; workdir {workdir}")
        how = "reused from the marker (timings of the run that built it)" if info["reused"] else "this run"
        say(f"setup [{how}]: generate {info['generate_s']:.1f} s, ingest {info['ingest_s']:.1f} s "
            "(not part of any ratio)")

        runs = workdir / "runs"
        shutil.rmtree(runs, ignore_errors=True)
        runs.mkdir()
        spec_cold = write_spec(runs / "bench-cold.yaml", repo=info["repo"], fields=info["fields_path"],
                               out_dir=runs / "cold", rule=args.rule)
        spec_warm = write_spec(runs / "bench-warm.yaml", repo=info["repo"], fields=info["fields_path"],
                               out_dir=runs / "warm", rule=args.rule)
        opts = cluster_options(spec_cold)
        say(f"job spec: {spec_warm} (cluster: {opts.n_workers} workers x "
            f"{opts.threads_per_worker} thread, memory_limit {opts.memory_limit})")

        # ---------------------------------------------------------------- 2-3. pqb run
        up_s, down_s = time_cluster_start(opts)
        say(f"LocalCluster alone (open_client): start {up_s:.2f} s, close {down_s:.2f} s")

        evict_page_cache(data_files(Path(info["cog_dir"]), Path(info["repo"])))
        res = resident_fraction(cogs)
        say("cold run: COGs evicted from the page cache (posix_fadvise DONTNEED); resident now: "
            + ("unknown" if res is None else f"{res:.0%}"))
        cold = engine_run(spec_cold, opts)
        print_engine_run("cold", cold)
        res = resident_fraction(cogs)
        say("warm run: page cache filled by the cold run; COGs resident: "
            + ("unknown" if res is None else f"{res:.0%}")
            + " (the job reads only the red/nir/scl tiles that fields touch, no overviews)")
        warm = engine_run(spec_warm, opts)
        print_engine_run("warm", warm)

        from pixelquery_batch.api import plan_prepared, prepare_job

        t0 = time.perf_counter()
        job = prepare_job(spec_warm)
        t1 = time.perf_counter()
        plan_prepared(job)
        t2 = time.perf_counter()
        say(f"client side, timed alone: prepare_job {t1 - t0:.2f} s, plan {t2 - t1:.2f} s")

        plan = warm["result"].manifest["plan"]
        pairs_per_task = plan["field_scene_pairs"] / plan["tasks"] if plan["tasks"] else 0.0
        read_amp = float(plan["read_amplification"])
        say(f"plan: {plan['tasks']} tasks for {plan['field_scene_pairs']} field-scene pairs -> "
            f"{pairs_per_task:.1f} pairs per task; fields matched {plan['fields_matched']}"
            f"/{plan['fields']}")
        say(f"plan: chunks read {plan['chunks_read']} / chunks touched by fields "
            f"{plan['chunks_touched']} -> read amplification {read_amp:.3f}; "
            f"fetched by the workers: {warm['result'].manifest['execution']['chunks_read']}")
        peak = max([*warm["rss_hwm"].values(), *warm["rss_sampled"].values(),
                    *cold["rss_hwm"].values(), *cold["rss_sampled"].values()], default=0)

        # ---------------------------------------------------------------- 4. naive
        naive, chk = None, None
        if not args.skip_naive:
            say(f"naive loop (single process, warm page cache): "
                f"{args.naive_pairs or pairs_total} of {pairs_total} pairs ...")
            naive = naive_run(info, runs / "naive", args.rule, args.naive_pairs, args.seed)
            per_pair = naive["loop_s"] / max(naive["pairs_timed"], 1)
            parts = ", ".join(f"{k} {val / max(naive['loop_s'], 1e-9):.0%}"
                              for k, val in naive["parts"].items())
            say(f"naive: load fields {naive['load_s']:.2f} s, loop {naive['loop_s']:.2f} s for "
                f"{naive['pairs_timed']} pairs ({per_pair * 1000:.2f} ms/pair: {parts}), "
                f"write {naive['write_s']:.2f} s")
            if naive["extrapolated"]:
                say(f"naive: EXTRAPOLATED to all {naive['pairs_total']} pairs "
                    f"(x{naive['scale']:.1f} on loop and write): {naive['total_s']:.2f} s")
            else:
                say(f"naive: total {naive['total_s']:.2f} s (measured on every pair)")
            chk = check_against_engine(naive["df"], warm["result"].outputs["stats"], args.seed)
            say(f"check naive vs engine: {chk['pairs']} pairs x {len(VARIABLES)} variables, "
                f"{chk['compared']} rows compared, {chk['missing']} missing in the engine table, "
                f"max |mean diff| {chk['max_dmean']:.3g} (<= 1e-9): {'OK' if chk['ok'] else 'FAILED'}"
                + (f"; other statistics differ: {', '.join(chk['other_diff'])}"
                   if chk["other_diff"] else "; all 9 statistics agree"))

        # ---------------------------------------------------------------- summary
        e2e = warm["e2e_s"]
        say("")
        say("=" * 96)
        say(f"summary ({n_scenes} scenes x {args.size}^2 px, {info['n_fields']} fields, "
            f"{pairs_total} pairs, pixels={args.rule})")
        say("-" * 96)
        say(f"{'figure':<56}{'value':>14}  {'target':<12}{'status'}")
        say("-" * 96)

        def row(label: str, value: str, target: str = "", st: str = "") -> None:
            say(f"{label:<56}{value:>14}  {target:<12}{st}".rstrip())

        row("setup: generate + ingest (not in ratios)",
            f"{info['generate_s'] + info['ingest_s']:.1f} s")
        row("LocalCluster start (open_client alone)", f"{up_s:.2f} s")
        row("pqb run end to end, cold", f"{cold['e2e_s']:.2f} s")
        row("pqb run end to end, warm (used in ratios)", f"{e2e:.2f} s")
        speed_ok = None
        if naive is not None:
            tag = " [extrapolated]" if naive["extrapolated"] else ""
            row(f"naive loop, 1 process, warm{tag}", f"{naive['total_s']:.2f} s")
            row(f"naive x2 processes, ideal (= naive / 2){tag}", f"{naive['total_s'] / 2:.2f} s")
            speedup = naive["total_s"] / e2e
            speed_ok = speedup >= TARGET_SPEEDUP
            row("speedup vs naive (1 process)", f"{speedup:.1f}x", f">= {TARGET_SPEEDUP:g}x",
                status(speed_ok))
            row("speedup vs naive x2 (ideal)", f"{naive['total_s'] / 2 / e2e:.1f}x", "(info)")
        else:
            row("speedup vs naive (1 process)", "skipped", f">= {TARGET_SPEEDUP:g}x", "n/a")
        mem_ok = peak < TARGET_MEMORY
        row("peak worker memory (max: workers, runs)", f"{peak / MB:.0f} MB", "< 1 GB",
            status(mem_ok))
        pairs_ok = pairs_per_task >= TARGET_PAIRS_PER_TASK
        row("field-scene pairs per task", f"{pairs_per_task:.1f}", f">= {TARGET_PAIRS_PER_TASK:g}",
            status(pairs_ok))
        amp_ok = read_amp <= TARGET_READ_AMP
        row("read amplification (plan)", f"{read_amp:.3f}", f"<= {TARGET_READ_AMP:g}",
            status(amp_ok))
        say("=" * 96)
        if chk is not None and not chk["ok"]:
            say("WARNING: the naive loop disagrees with the engine: the speedup compares "
                "different work")
    return 0


if __name__ == "__main__":
    sys.exit(main())
