"""Helpers shared by the benchmark scripts (not a benchmark itself).

Layer: *benchmarks* (outside the package; imported by ``bench_field_stats.py`` and
``bench_rollup.py`` as a sibling module). Holds what both scripts need:

* context: :func:`say`, :func:`say_context` (versions, machine, CPU model, date),
  :func:`machine_context`, :func:`status`, :func:`working_dir`;
* setup: :func:`setup_data` generates the seeded sample and ingests it once, reusing a
  ``--workdir`` when its marker file says it was built with the same arguments;
* the sample's layout: :func:`cogs_by_scene`, :func:`scene_date`,
  :func:`reflectance_offset`, :func:`read_nearest`;
* page cache: :func:`data_files`, :func:`evict_page_cache`, :func:`resident_fraction`;
* an in-process engine run (LocalCluster + ``run_job`` + close, worker RSS sampled by a
  second client): :func:`engine_run`, :func:`cluster_options`, :func:`time_cluster_start`
  (used by ``bench_rollup.py``; ``bench_field_stats.py`` runs ``pqb run`` as a subprocess).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import json
import mmap
import os
import platform
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

CLOUD_CLASSES = (3, 8, 9, 10)       # SCL: cloud shadow, cloud medium/high, thin cirrus
SCALE = 1e-4                        # Sentinel-2 L2A: reflectance = DN * SCALE + offset
BASELINE_04 = dt.date(2022, 1, 25)  # processing baseline 04.00: offset -0.1 from here on, 0 before
PATTERN = "{scene}/{band}.tif"      # the sample's Element 84 layout below cogs/
FILE_BANDS = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B11": "swir16",
              "SCL": "scl"}
MARKER = "bench_field_stats.json"
GB = 1e9
MB = 1e6
TARGET_MEMORY = 1 * GB

VERSION_MODULES = ("pixelquery_batch", "numpy", "dask", "distributed", "zarr", "icechunk",
                   "rasterio", "exactextract", "imagecodecs", "tifffile", "pyarrow", "psutil")


# --------------------------------------------------------------------------- context


def say(msg: str) -> None:
    print(msg, flush=True)


def fmt_s(seconds: float) -> str:
    return f"{seconds:9.2f} s"


def status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in VERSION_MODULES:
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # a missing module is reported, not fatal
            out[mod] = "n/a"
    import rasterio

    out["gdal"] = rasterio.__gdal_version__
    with contextlib.suppress(Exception):
        import imagecodecs

        out["libdeflate"] = imagecodecs.deflate_version()
    return out


def total_ram() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_context() -> dict[str, Any]:
    """Machine, date and versions, as recorded in benchmark results."""
    import psutil

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": affinity,
        "ram_bytes": total_ram(),
        "ram_available_bytes": int(psutil.virtual_memory().available),
        "load_avg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions(),
    }


#: /proc/vmstat counters that tell how the host treated memory during a run
_VMSTAT = ("workingset_refault_file", "pgmajfault", "pgpgin", "compact_stall")


def host_events() -> dict[str, float]:
    """Counters of the host's memory and CPU behaviour (Linux; empty elsewhere): file
    pages refaulted after eviction, major faults, KB read from disk, compaction stalls
    (/proc/vmstat) and CPU time stolen by the hypervisor, in seconds (/proc/stat). Their
    change over a run tells a quiet host from a busy one."""
    out: dict[str, float] = {}
    try:
        with open("/proc/vmstat", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key in _VMSTAT:
                    out[key] = float(value)
        with open("/proc/stat", encoding="utf-8") as f:
            cpu = f.readline().split()
        if cpu and cpu[0] == "cpu" and len(cpu) > 8:
            out["steal_s"] = float(cpu[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return {}
    return out


def say_host_events(before: dict[str, float], label: str) -> dict[str, float]:
    """Print (and return) how :func:`host_events` changed since ``before``."""
    now = host_events()
    delta = {k: now[k] - before[k] for k in now if k in before}
    if delta:
        page_mb = os.sysconf("SC_PAGE_SIZE") / 1e6
        say(f"host during {label}: file pages refaulted "
            f"{delta.get('workingset_refault_file', 0):,.0f} "
            f"({delta.get('workingset_refault_file', 0) * page_mb:,.0f} MB), major faults "
            f"{delta.get('pgmajfault', 0):,.0f}, read from disk "
            f"{delta.get('pgpgin', 0) / 1e3:,.0f} MB, compaction stalls "
            f"{delta.get('compact_stall', 0):,.0f}, CPU stolen {delta.get('steal_s', 0):.1f} s")
    return delta


def say_context(title: str) -> dict[str, Any]:
    """Print the benchmark title, library versions, the machine and the date; return them."""
    ctx = machine_context()
    say(title)
    say("# " + ", ".join(f"{k} {val}" for k, val in ctx["versions"].items()))
    load = ctx["load_avg_1_5_15"]
    say(f"# {ctx['date']}, {ctx['host']}: {ctx['machine']} {ctx['cpu_model']}, "
        f"{ctx['cpus']} CPUs ({ctx['cpus_usable'] or '?'} usable), "
        f"{ctx['ram_bytes'] / GB:.1f} GB RAM ({ctx['ram_available_bytes'] / GB:.1f} GB available)"
        + (f", load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}" if load else ""))
    return ctx


@contextlib.contextmanager
def working_dir(path: str | None, prefix: str = "bench_field_stats_") -> Iterator[Path]:
    if path:
        p = Path(path).resolve()
        p.mkdir(parents=True, exist_ok=True)
        yield p
    else:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)


# --------------------------------------------------------------------------- page cache


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


def warm_page_cache(paths: list[Path]) -> int:
    """Read every file once so that it sits in the page cache; returns the bytes read."""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    return total


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


def setup_data(workdir: Path, args: argparse.Namespace, *, fields: int | None = None) -> dict[str, Any]:
    """Generate + ingest (or reuse); returns paths and the setup timings.

    Uses ``args.scenes``, ``args.size``, ``args.seed`` and ``fields`` (default
    ``args.fields``). The sample lives in ``workdir/sample``, the repository in
    ``workdir/repo``; the marker ``workdir/bench_field_stats.json`` records the arguments,
    so a later run with the same arguments reuses both (other arguments regenerate).
    """
    from pixelquery_batch.catalog.ingest import ingest
    from pixelquery_batch.sample import generate_sample

    n_fields = int(args.fields if fields is None else fields)
    # markers of the earlier flat layout regenerate; so do repositories ingested before
    # bands recorded their source's fingerprint (catalog 2: local sources read in place)
    key = {"scenes": args.scenes, "size": args.size, "fields": n_fields, "seed": args.seed,
           "layout": PATTERN, "catalog": 2}
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
    say(f"setup: generating {args.scenes} scenes x {args.size}^2 px, {n_fields} fields "
        f"(seed {args.seed}) in {sample_dir} ...")
    t0 = time.perf_counter()
    sample = generate_sample(sample_dir, scenes=args.scenes, size=args.size, fields=n_fields,
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


# --------------------------------------------------------------------------- sample layout


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


# --------------------------------------------------------------------------- in-process engine run


def _worker_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def ndvi_job(name: str, *, repo: str, fields: str, outputs: dict[str, Any],
             stats: tuple[str, ...]) -> dict[str, Any]:
    """The benchmarks' per-field NDVI job (centre rule, nodata mask, no cloud mask) as a
    spec mapping, without a cluster section."""
    return {
        "version": 1,
        "name": name,
        "repository": {"path": repo},
        "scenes": {"start": "1900-01-01", "end": "2999-12-31"},
        "fields": {"path": fields, "id": "id"},
        "bands": [],
        "indices": {"ndvi": "builtin"},
        "stats": list(stats),
        "pixels": "centre",
        "masks": {"nodata": True, "cloud": None},
        "outputs": outputs,
        "on_error": "skip",
    }


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write a benchmark's numbers as JSON and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))
    say(f"all numbers: {path}")


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


class BackgroundSampler:
    """A daemon thread calling :meth:`sample` every ``interval`` s while in a ``with``."""

    def __init__(self, interval: float, name: str) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> BackgroundSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class RssSampler(BackgroundSampler):
    """Background thread: every ``interval`` s, the RSS of every worker (via ``client.run``)."""

    def __init__(self, client: Any, interval: float = 0.2) -> None:
        super().__init__(interval, "rss-sampler")
        self.client = client
        self.peak: dict[str, int] = {}
        self.samples = 0
        self.errors = 0

    def sample(self) -> None:
        try:
            for addr, rss in self.client.run(_worker_rss).items():
                self.peak[addr] = max(self.peak.get(addr, 0), rss)
            self.samples += 1
        except Exception:  # a worker going away must not kill the run
            self.errors += 1


def cluster_options(spec_path: Path) -> Any:
    """The spec's ``cluster`` section as executor options (what ``pqb run`` would start:
    the engine's own translation, so no setting of the spec is left out)."""
    from pixelquery_batch.api import load_job
    from pixelquery_batch.pipeline import _cluster_options

    return _cluster_options(load_job(spec_path), None)


def time_cluster_start(opts: Any) -> tuple[float, float]:
    from pixelquery_batch.executor import open_client

    t0 = time.perf_counter()
    with open_client(opts):
        t1 = time.perf_counter()
    return t1 - t0, time.perf_counter() - t1


def engine_run(spec_path: Path, opts: Any) -> dict[str, Any]:
    """LocalCluster start + run_job + close in this process, with worker memory sampled."""
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
