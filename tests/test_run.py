"""The batch engine end to end: results match an independent implementation, and are the
same synchronously, on a LocalCluster and on a scheduler + workers started by the test."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from pixelquery_batch import read_table
from pixelquery_batch.api import run_job
from pixelquery_batch.errors import TaskError

from .conftest import write_spec
from .reference import cogs_by_date, exactextract_means, field_scene_values, reference_stats

STATS = ["mean", "std", "min", "max", "median", "p10", "p90", "count", "valid_fraction"]


def read_stats(path: Path) -> pd.DataFrame:
    """The current rows of a stats table (Delta), without the id of the run that wrote them."""
    df = read_table(path, None).drop(columns=["run_id"])
    return df.sort_values(["field_id", "scene_id", "variable"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def sync_run(sample_small, sample_repo, tmp_path_factory):
    d = tmp_path_factory.mktemp("sync")
    spec = write_spec(d, repo=sample_repo, fields=sample_small.fields_path)
    return run_job(spec, cluster="sync")


@pytest.mark.parametrize("rule", ["centre", "all_touched"])
def test_stats_match_rasterio_reference(rule, sample_small, sample_repo, tmp_path, sync_run) -> None:
    if rule == "centre":
        result = sync_run
    else:
        spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path, pixels=rule)
        result = run_job(spec, cluster="sync")
    assert_equal_to_reference(read_stats(result.outputs["stats"]), sample_small, rule)


def test_groups_of_a_few_fields_match_rasterio_reference(monkeypatch, sample_small, sample_repo,
                                                        tmp_path) -> None:
    """Fields computed in groups of ~97 pixels (a larger field alone in its group): the
    same exact statistics as the reference."""
    from pixelquery_batch import tasks

    monkeypatch.setattr(tasks, "_group_pixels", lambda threads: 97)
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path)
    result = run_job(spec, cluster="sync")
    assert_equal_to_reference(read_stats(result.outputs["stats"]), sample_small, "centre")


def assert_equal_to_reference(got: pd.DataFrame, sample_small: Any, rule: str) -> None:
    fields = gpd.read_file(sample_small.fields_path)
    cogs = cogs_by_date(sample_small.cog_dir)
    checked = 0
    for _, f in fields.iterrows():
        for scene_id, cog in cogs.items():
            ref = field_scene_values(f.geometry, cog, {"ndvi": "ndvi", "red": "red", "nir": "nir"},
                                     all_touched=rule == "all_touched")
            rows = got[(got.field_id == f["id"]) & (got.scene_id == scene_id)]
            if ref["red"][1] == 0 and rows.empty:
                continue  # outside the scene: no row (listed in the plan instead)
            assert len(rows) == 3, (f["id"], scene_id)
            for var, (vals, total, cloudy) in ref.items():
                row = rows[rows.variable == var].iloc[0]
                want = reference_stats(vals, total)
                for stat in STATS:
                    a, b = row[stat], want[stat]
                    assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-9), \
                        (f["id"], scene_id, var, stat, a, b)
                assert row["pixel_count"] == total
                assert row["cloud_count"] == cloudy
                checked += 1
    assert checked >= 40 * 3 * 3 * 0.8


def test_coverage_matches_exactextract(sample_small, sample_repo, tmp_path) -> None:
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path, pixels="coverage",
                      bands=["red"], indices={"ndvi": "builtin"})
    got = read_stats(run_job(spec, cluster="sync").outputs["stats"])
    fields = gpd.read_file(sample_small.fields_path)
    cogs = cogs_by_date(sample_small.cog_dir)
    compared = 0
    for (_, f), scene_id in zip(fields.head(30).iterrows(), sorted(cogs) * 10, strict=False):
        for var in ("ndvi", "red"):
            mean, count = exactextract_means(f.geometry, cogs[scene_id], var, tmp_path)
            rows = got[(got.field_id == f["id"]) & (got.scene_id == scene_id) & (got.variable == var)]
            if rows.empty:
                continue
            row = rows.iloc[0]
            if count == 0:
                assert row["count"] == pytest.approx(0, abs=1e-9)
                continue
            assert row["mean"] == pytest.approx(mean, abs=1e-6), (f["id"], var)
            assert row["count"] == pytest.approx(count, rel=1e-6, abs=1e-6), (f["id"], var)
            compared += 1
    assert compared >= 30


def test_outputs_and_manifest(sync_run, sample_small) -> None:
    import icechunk as ic

    m = sync_run.manifest
    # the run pinned the head of main, as Icechunk itself resolves it
    repo = ic.Repository.open(ic.local_filesystem_storage(m["repository"]["location"]))
    assert m["repository"]["requested"] == "main"
    assert m["repository"]["snapshot_id"] == repo.lookup_branch("main")
    assert m["execution"]["rows"] == len(read_stats(sync_run.outputs["stats"]))
    assert m["plan"]["tasks"] * 10 <= m["plan"]["field_scene_pairs"]
    df = read_stats(sync_run.outputs["stats"])
    assert set(df.columns) >= {"field_id", "scene_id", "datetime", "variable", *STATS, "nodata_count",
                               "cloud_count", "snapshot_id", "job_hash"}
    assert df.snapshot_id.nunique() == 1
    assert df.job_hash.nunique() == 1
    # a field partly outside the scene has valid_fraction < 1 from the outside part
    partial = df[(df.valid_fraction < 1) & (df.cloud_count == 0) & (df.variable == "red")]
    assert not partial.empty
    assert (Path(sync_run.manifest_path).parent / "stats").is_dir()


def test_rerun_is_idempotent(sample_small, sample_repo, tmp_path) -> None:
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path)
    first = read_stats(run_job(spec, cluster="sync").outputs["stats"])
    files1 = sorted(p.name for p in (tmp_path / "out" / "stats").iterdir())
    second = read_stats(run_job(spec, cluster="sync").outputs["stats"])
    files2 = sorted(p.name for p in (tmp_path / "out" / "stats").iterdir())
    pd.testing.assert_frame_equal(first, second)
    assert files1 == files2
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_fields_outside_every_scene_are_reported(sample_small, sample_repo, tmp_path) -> None:
    from shapely.geometry import box

    fields = gpd.read_file(sample_small.fields_path)
    far = gpd.GeoDataFrame({"id": ["FAR"], "name": ["far away"], "crop": ["none"]},
                           geometry=[box(5.0, 45.0, 5.001, 45.001)], crs="EPSG:4326")
    path = tmp_path / "fields.geojson"
    pd.concat([fields, far]).to_file(path)
    spec = write_spec(tmp_path, repo=sample_repo, fields=path)
    result = run_job(spec, cluster="sync")
    assert result.manifest["plan"]["fields_outside_every_scene"] == ["FAR"]
    assert "FAR" not in set(read_stats(result.outputs["stats"]).field_id)


def test_failing_unit_surfaces_ids(sample_small, sample_repo, tmp_path) -> None:
    # a copy of the repo whose COGs we may damage
    cogs = tmp_path / "cogs"
    shutil.copytree(sample_small.cog_dir, cogs)
    from pixelquery_batch.catalog.ingest import ingest

    assert ingest(str(cogs), str(tmp_path / "repo")).ok
    victim = sorted(cogs.glob("*/B08.tif"))[1]  # nir of the second scene
    os.utime(victim, (time.time() + 100, time.time() + 100))  # changed after ingest
    spec = write_spec(tmp_path, repo=tmp_path / "repo", fields=sample_small.fields_path)
    result = run_job(spec, cluster="sync")
    failed_scenes = {f["scene_id"] for f in result.manifest["failures"]}
    assert failed_scenes == {victim.parent.name}
    assert all(f["field_id"] for f in result.manifest["failures"])
    assert "changed" in result.manifest["failures"][0]["error"].lower()
    before = read_stats(result.outputs["stats"])
    manifest_before = Path(result.manifest_path).read_text()
    spec = write_spec(tmp_path, repo=tmp_path / "repo", fields=sample_small.fields_path, on_error="fail")
    # known failures are in the ledger: a plain rerun leaves them alone, --retry-failed
    # computes them again, and with on_error: fail the first one stops the run
    assert run_job(spec, cluster="sync").manifest["execution"]["pairs_computed"] == 0
    manifest_before = Path(result.manifest_path).read_text()
    with pytest.raises(TaskError) as err:
        run_job(spec, cluster="sync", retry_failed=True)
    assert err.value.scene_id == victim.parent.name
    assert err.value.field_id
    # the failed run changed nothing published: same table, same manifest, no run staging
    # left behind (only .work: units it finished, reused by the next run)
    pd.testing.assert_frame_equal(read_stats(result.outputs["stats"]), before)
    assert Path(result.manifest_path).read_text() == manifest_before
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".staging")]


def test_local_cluster_matches_sync(sync_run, sample_small, sample_repo, tmp_path) -> None:
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path)
    result = run_job(spec)  # the spec's cluster: a LocalCluster of 2 worker processes
    assert result.manifest["execution"]["workers"] == 2
    pd.testing.assert_frame_equal(read_stats(result.outputs["stats"]), read_stats(sync_run.outputs["stats"]))


def test_embedded_default_threads_match_sync(sync_run, sample_small, sample_repo, tmp_path) -> None:
    """The embedded default: one worker in this process, a thread per core, sharing one
    cache of field pixels; same table as the synchronous run."""
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path,
                      cluster={"n_workers": 1, "threads_per_worker": 2, "processes": False,
                               "dashboard": False})
    result = run_job(spec)
    assert result.manifest["execution"]["workers"] == 1
    assert result.manifest["timings"]["first_unit_started_s"] >= result.manifest["timings"]["planned_s"]
    # units in threads share one reader; each counts its own chunks (none twice)
    assert result.manifest["execution"]["chunks_read"] == sync_run.manifest["execution"]["chunks_read"]
    pd.testing.assert_frame_equal(read_stats(result.outputs["stats"]), read_stats(sync_run.outputs["stats"]))


@pytest.mark.parametrize("threshold", [1, 10**12])
def test_processes_auto_sizes_the_cluster(threshold, monkeypatch, sync_run, sample_small, sample_repo,
                                          tmp_path) -> None:
    """The embedded default (``processes: auto``) starts single-thread worker processes
    for jobs of at least ``AUTO_PROCESSES_PAIRS`` field-scene pairs, else threads of this
    process; the manifest records the choice; the table is the same either way."""
    from pixelquery_batch import executor

    monkeypatch.setattr(executor, "AUTO_PROCESSES_PAIRS", threshold)
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path,
                      cluster={"n_workers": 1, "threads_per_worker": 2, "dashboard": False})
    result = run_job(spec)
    big = threshold == 1
    assert result.manifest["cluster"] == {"processes": big, "n_workers": 2 if big else 1,
                                          "threads_per_worker": 1 if big else 2, "chosen": True}
    assert result.manifest["execution"]["workers"] == (2 if big else 1)
    assert result.manifest["execution"]["scheduler"].startswith("tcp://" if big else "inproc://")
    pd.testing.assert_frame_equal(read_stats(result.outputs["stats"]), read_stats(sync_run.outputs["stats"]))


def test_choose_processes_keeps_what_the_spec_says() -> None:
    from pixelquery_batch.executor import ClusterOptions, choose_processes

    auto = ClusterOptions(n_workers=2, threads_per_worker=3, processes="auto")
    assert choose_processes(auto, 10**6, 1) == ClusterOptions(n_workers=6, threads_per_worker=1,
                                                              processes=True)
    assert choose_processes(auto, 10**6 - 1, 1).processes is False  # below the threshold
    one = ClusterOptions(n_workers=1, threads_per_worker=1, processes="auto")
    assert choose_processes(one, 10**9, 10).processes is False  # one thread: nothing to share
    for given in (True, False):
        opts = ClusterOptions(n_workers=1, threads_per_worker=2, processes=given)
        assert choose_processes(opts, 10**9, 10) is opts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scheduler_and_workers_over_tcp_match_sync(sync_run, sample_small, sample_repo, tmp_path) -> None:
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([str(bindir / "dask"), "worker", addr, "--nthreads", "1",
                                           "--nworkers", "1", "--no-dashboard", "--memory-limit", "1GiB"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        from distributed import Client

        with Client(addr, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path)
            result = run_job(spec, cluster=client)
        assert result.manifest["execution"]["workers"] == 2
        assert result.manifest["execution"]["scheduler"] == addr
        pd.testing.assert_frame_equal(read_stats(result.outputs["stats"]), read_stats(sync_run.outputs["stats"]))
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_plan_is_pure_and_counts(sample_small, sample_repo, tmp_path) -> None:
    from pixelquery_batch.api import plan_prepared, prepare_job

    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path)
    job = prepare_job(spec)
    p1, p2 = plan_prepared(job), plan_prepared(job)
    assert [u.unit_id for u in p1.units] == [u.unit_id for u in p2.units]
    assert p1.summary()["scenes_matched"] == 3
    assert p1.read_amplification == 1.0  # every chunk is planned once per scene and band


def test_chunks_read_equal_the_tiles_holding_field_pixels(sync_run, sample_small) -> None:
    """The chunks the readers actually fetched (counted by the reader) equal an independent
    count: per scene and band, the internal tiles of the COG holding at least one field
    pixel (centre rule via rasterio's geometry_mask; the 20 m SCL through the 20 m pixel
    holding each 10 m pixel centre)."""
    import rasterio
    from rasterio.features import geometry_mask
    from shapely.geometry import mapping

    fields = gpd.read_file(sample_small.fields_path)
    expected = 0
    for cog in cogs_by_date(sample_small.cog_dir).values():
        with rasterio.open(cog["red"]) as fine:
            geoms = fields.to_crs(fine.crs).geometry
            mask = np.zeros(fine.shape, bool)
            for g in geoms:
                mask |= geometry_mask([mapping(g)], out_shape=fine.shape, transform=fine.transform,
                                      invert=True)
            rows, cols = np.nonzero(mask)
            for band in ("red", "nir", "scl"):
                with rasterio.open(cog[band]) as src:
                    by, bx = src.block_shapes[0]
                    xs, ys = rasterio.transform.xy(fine.transform, rows, cols)
                    r, c = rasterio.transform.rowcol(src.transform, xs, ys)
                    expected += len({(int(i) // by, int(j) // bx) for i, j in zip(r, c, strict=True)})
    assert sync_run.manifest["execution"]["chunks_read"] == expected


def test_unit_rows_sorted_in_slices_equal_pandas() -> None:
    """A unit's rows, held compact and built slice by slice, against the same rows put
    together and sorted by pandas (field id, scene id, variable: code-point order, with
    ids that sort differently as numbers, by case and beyond ASCII); slices of 7 rows
    join to the whole table; the returned pairs decode to the rows' pairs."""
    import datetime as dt
    from types import SimpleNamespace

    import pyarrow as pa

    from pixelquery_batch.tasks import _Rows, stat_columns

    rng = np.random.default_rng(5)
    ids = pa.array(rng.permutation(["f10", "f2", "F3", "é1", "e9", "f1", *[f"g{i}" for i in range(44)]]).tolist())
    ctx = SimpleNamespace(repo=SimpleNamespace(snapshot_id="SNAP"), job_hash="JH")
    stats = ["mean", "median", "count"]
    rows = _Rows(stats, ctx)  # type: ignore[arg-type]
    expect = []
    batches = [(s, v, g) for s in ("S2", "S10", "S1") for v in ("ndvi", "evi") for g in ((0, 20), (20, 50))]
    for k in rng.permutation(len(batches)):
        scene, var, (f0, f1) = batches[k]
        when = dt.datetime(2022, 1, 1 + int(k), tzinfo=dt.UTC)
        res = {c: rng.normal(size=f1 - f0) for c in stat_columns(stats)}
        total, nodata, cloud = (rng.integers(0, 9, f1 - f0).astype(float) for _ in range(3))
        rows.add(ids, f0, f1, scene, when, var, res, total, nodata, cloud, k % 2 == 0)
        for i in range(f0, f1):
            expect.append({"field_id": ids[i].as_py(), "scene_id": scene, "datetime": when,
                           "variable": var, **{c: res[c][i - f0] for c in res},
                           "pixel_count": total[i - f0], "nodata_count": nodata[i - f0],
                           "cloud_count": cloud[i - f0], "cloud_masked": k % 2 == 0,
                           "snapshot_id": "SNAP", "job_hash": "JH"})
    want = (pd.DataFrame(expect).sort_values(["field_id", "scene_id", "variable"])
            .reset_index(drop=True))
    pairs = rows.pairs()
    got = pa.concat_tables(list(rows.slices(sort=True, rows=7)))
    assert got.num_rows == len(want) == 50 * 3 * 2
    pd.testing.assert_frame_equal(got.to_pandas(), want, check_dtype=False)
    assert sorted(zip(pairs["field_id"].cast(pa.string()).to_pylist(),
                      pairs["scene_id"].cast(pa.string()).to_pylist(), strict=True)) == \
        sorted(zip(want["field_id"], want["scene_id"], strict=True))


def _cached_field_sets() -> list[str]:
    from pixelquery_batch import gather

    return sorted({k[0] for k in gather._CACHE})


def test_units_of_one_strip_run_on_one_worker_process(sample_small, sample_repo, tmp_path) -> None:
    """Cut into strips, the units of each strip prefer one worker process (the strips
    spread over both): each process works out only its strips' pixels (its cache holds
    no other strip) and the rows equal the synchronous run's."""
    from distributed import Client, LocalCluster

    from pixelquery_batch.executor import execute
    from pixelquery_batch.pipeline import prepare_job
    from pixelquery_batch.planner import plan_job

    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path)
    job = prepare_job(spec)

    def plan_for(max_unit_pixels: int) -> Any:
        return plan_job(job.scenes, job.fields, bands=job.bands,
                        optional_bands=job.optional_bands, n_variables=len(job.variables),
                        min_units=8, max_unit_pixels=max_unit_pixels)

    # four strips of equal cost, two per worker: none left over for Dask to even out
    whole = plan_for(10**12).units[0].fields.windows
    plan = plan_for(math.ceil(int((whole[:, 2] * whole[:, 3]).sum()) / 4))
    strips = {u.fields_key for u in plan.units}
    assert len(strips) == 4 and len(plan.units) > len(strips)  # several units per strip
    ctx = job.context()

    def rows(cluster: Any) -> pd.DataFrame:
        tables: list[Any] = []
        execute(plan, ctx, on_result=lambda r: tables.append(r.table), cluster=cluster)
        import pyarrow as pa

        return (pa.concat_tables(tables).to_pandas().sort_values(["field_id", "scene_id", "variable"])
                .reset_index(drop=True))

    want = rows("sync")
    import dask

    # without work stealing: Dask may rightly move a unit to a worker that ran out of its
    # own (the preference is loose), which would make this check depend on timing
    with dask.config.set({"distributed.scheduler.work-stealing": False}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
            Client(lc) as client:
        got = rows(client)
        cached = client.run(_cached_field_sets)
    pd.testing.assert_frame_equal(got, want)
    held = [set(v) for v in cached.values()]
    assert len(held) == 2 and all(held) and not (held[0] & held[1])
    assert held[0] | held[1] == strips


def test_a_local_cluster_without_dashboard_keeps_dasks_monitors_quiet() -> None:
    """Worker processes of a LocalCluster without dashboard neither profile their threads
    nor run the 20 ms event-loop tick and 500 ms system monitor in every server (they would
    take CPU from the units on a machine with no spare core); the scheduler neither."""
    from pixelquery_batch.executor import ClusterOptions, open_client

    def intervals(dask_worker: Any = None, dask_scheduler: Any = None) -> dict[str, Any]:
        import dask

        server = dask_worker or dask_scheduler
        return {"tick_ms": server.periodic_callbacks["tick"].callback_time,
                "monitor_ms": server.periodic_callbacks["monitor"].callback_time,
                "profile": dask.config.get("distributed.worker.profile.enabled")}

    opts = ClusterOptions(n_workers=1, threads_per_worker=1, processes=True, dashboard=False)
    with open_client(opts) as client:
        (worker,) = client.run(intervals).values()
        scheduler = client.run_on_scheduler(intervals)
    assert worker == {"tick_ms": 200, "monitor_ms": 2000, "profile": False}
    assert scheduler["tick_ms"] == 200 and scheduler["monitor_ms"] == 2000
