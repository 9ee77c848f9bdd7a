"""Catalog search speed: filtering a 10,000-scene catalog (target: well under 100 ms).

Builds a synthetic catalog table (seeded), stores it in a real Icechunk repository the
way ingest does (Parquet bytes in the ``catalog`` group), then measures:

- loading the table from the repository at a snapshot;
- ``Catalog.search`` by time window, by bbox (lon/lat and another CRS) and combined;
- a baseline in the same run: a row-by-row Python/shapely filter over the same rows.

Usage: ``python benchmarks/bench_catalog.py [--scenes 10000] [--repeat 7]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import shapely
from shapely.geometry import box

from pixelquery_batch.catalog.models import FILE_SCHEMA, Catalog
from pixelquery_batch.catalog.store import (
    open_repository,
    read_catalog_tables,
    write_catalog_tables,
)
from pixelquery_batch.testing.catalogs import synthetic_scene_table


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    print(f"# catalog search benchmark: {args.scenes} scenes, median of {args.repeat}")
    print(f"# python {platform.python_version()}, {platform.machine()}, {platform.node()}")
    table = synthetic_scene_table(args.scenes, densify_deg=0.05)
    with tempfile.TemporaryDirectory() as tmp:
        repo = open_repository(Path(tmp) / "repo", create=True)
        session = repo.writable_session("main")
        write_catalog_tables(session.store, table, FILE_SCHEMA.empty_table())
        snap = session.commit("synthetic catalog")
        load_s, tables = timed(lambda: read_catalog_tables(repo.readonly_session(snapshot_id=snap).store),
                               args.repeat)
    cat = Catalog(tables[0])
    _ = cat.search(bbox=(0, 0, 1, 1))  # build the footprint array once (cached on the catalog)
    start, end = dt.datetime(2022, 1, 1, tzinfo=dt.UTC), dt.datetime(2022, 3, 31, tzinfo=dt.UTC)
    bbox = (10.0, 45.0, 12.0, 47.0)
    utm_bbox = (600000.0, 5000000.0, 700000.0, 5100000.0)
    cases = {
        "time window (3 months)": lambda: cat.search(start=start, end=end),
        "bbox lon/lat": lambda: cat.search(bbox=bbox),
        "bbox in EPSG:32633": lambda: cat.search(bbox=utm_bbox, bbox_crs="EPSG:32633"),
        "time + bbox + max_cloud": lambda: cat.search(start=start, end=end, bbox=bbox, max_cloud=50),
    }
    print(f"load catalog table from Icechunk snapshot: {load_s * 1000:8.2f} ms")
    rows = table.to_pylist()
    geoms = [shapely.from_wkb(r["footprint_lonlat_wkb"]) for r in rows]
    q = box(*bbox)

    def naive() -> list[str]:
        return [r["scene_id"] for r, g in zip(rows, geoms, strict=True)
                if start <= r["datetime"] <= end and g.intersects(q)]

    base_s, want = timed(naive, max(3, args.repeat // 2))
    worst = 0.0
    for label, fn in cases.items():
        s, res = timed(fn, args.repeat)
        worst = max(worst, s)
        print(f"search {label:<28} {s * 1000:8.2f} ms  ({len(res)} scenes)")
    got = cat.search(start=start, end=end, bbox=bbox).ids
    assert sorted(got) == sorted(want), "search disagrees with the row-by-row baseline"
    print(f"baseline row-by-row filter (time+bbox): {base_s * 1000:8.2f} ms "
          f"-> search is {base_s / max(worst, 1e-9):.1f}x faster than the baseline (slowest case)")
    print(f"target < 100 ms per search: {'MET' if worst < 0.1 else 'MISSED'} (slowest {worst * 1000:.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
