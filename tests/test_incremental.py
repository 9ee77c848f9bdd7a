"""Nightly operations: incremental and idempotent runs over versioned (Delta) outputs,
resumption after a killed client, the failure ledger and the run history.

Every comparison is against a from-scratch run over the same data (itself checked against
rasterio + numpy elsewhere), never against numbers of the incremental run itself."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest

from pixelquery_batch import read_runs, read_table, run_job
from pixelquery_batch.api import read_ledger
from pixelquery_batch.catalog.ingest import ingest

from .conftest import write_spec

VALUES = ["field_id", "scene_id", "variable", "mean", "std", "min", "max", "median", "p10", "p90",
          "count", "valid_fraction", "pixel_count", "nodata_count", "cloud_count"]
TS = ["field_id", "variable", "period_start", "period_end", "mean", "count", "n_scenes", "filled"]


def stats_of(out: Path) -> pd.DataFrame:
    df = read_table(out, "stats")
    return df[VALUES].sort_values(VALUES[:3]).reset_index(drop=True)


def series_of(out: Path) -> pd.DataFrame:
    df = read_table(out, "timeseries")
    cols = [c for c in TS if c in df.columns]
    return df[cols].sort_values(cols[:3]).reset_index(drop=True)


def assert_same_as_fresh_run(tmp_path: Path, repo: Path, fields: Path, out: str, **extra) -> None:
    """A from-scratch run of the same job into ``fresh-<out>`` gives exactly the rows (and
    the time series) the incremental runs left in ``out``."""
    fresh = nightly_spec(tmp_path, repo, fields, f"fresh-{out}", name=f"fresh-{out}", **extra)
    run_job(fresh, cluster="sync")
    pd.testing.assert_frame_equal(stats_of(tmp_path / out), stats_of(tmp_path / f"fresh-{out}"),
                                  check_exact=True)
    pd.testing.assert_frame_equal(series_of(tmp_path / out), series_of(tmp_path / f"fresh-{out}"),
                                  check_exact=True)


def scene_dirs(sample) -> list[Path]:
    return sorted({p.parent for p in sample.cog_paths})


@pytest.fixture
def archive(sample_small, tmp_path: Path):
    """A COG archive of the first two scenes (day 1) and a function adding the third."""
    cogs = tmp_path / "cogs"
    dirs = scene_dirs(sample_small)
    for d in dirs[:2]:
        shutil.copytree(d, cogs / d.name)

    def add_day2() -> None:
        shutil.copytree(dirs[2], cogs / dirs[2].name)

    return cogs, add_day2


def nightly_spec(tmp_path: Path, repo: Path, fields: Path, out: str, **extra) -> Path:
    return write_spec(tmp_path, repo=repo, fields=fields, out=out,
                      outputs={"dir": str(tmp_path / out), "stats": {"format": "parquet"},
                               "timeseries": {"period": "month", "aggregation": "mean"}},
                      **extra)


def test_rerun_computes_nothing_and_changes_nothing(sample_small, sample_repo, tmp_path: Path) -> None:
    spec = nightly_spec(tmp_path, sample_repo, sample_small.fields_path, "out")
    first = run_job(spec, cluster="sync")
    ex = first.manifest["execution"]
    assert ex["pairs_computed"] == first.manifest["plan"]["field_scene_pairs"] > 0
    before = stats_of(tmp_path / "out")
    versions_before = len(list((tmp_path / "out" / "stats" / "_delta_log").glob("*.json")))
    t0 = time.perf_counter()
    second = run_job(spec, cluster="sync")
    assert time.perf_counter() - t0 < 10
    assert second.manifest["execution"]["pairs_computed"] == 0
    assert second.manifest["execution"]["pairs_reused"] == ex["pairs_computed"]
    assert second.manifest["execution"]["units"] == 0
    pd.testing.assert_frame_equal(stats_of(tmp_path / "out"), before)
    assert len(list((tmp_path / "out" / "stats" / "_delta_log").glob("*.json"))) == versions_before
    runs = read_runs(tmp_path / "out")
    assert list(runs["pairs_computed"]) == [0, ex["pairs_computed"]]  # newest first
    assert set(runs["status"]) == {"ok"}
    # a cosmetic change (name, cluster, on_error) computes nothing either
    spec2 = nightly_spec(tmp_path, sample_repo, sample_small.fields_path, "out", name="renamed",
                         on_error="fail")
    assert run_job(spec2, cluster="sync").manifest["execution"]["pairs_computed"] == 0


def test_day1_then_day2_equals_one_run_over_both(archive, sample_small, tmp_path: Path) -> None:
    cogs, add_day2 = archive
    repo = tmp_path / "repo"
    assert ingest(str(cogs), str(repo), product="sentinel2-l2a", pattern=sample_small.pattern).ok
    spec = nightly_spec(tmp_path, repo, sample_small.fields_path, "nightly")
    day1 = run_job(spec, cluster="sync")
    n1 = day1.manifest["execution"]["pairs_computed"]
    add_day2()
    report = ingest(str(cogs), str(repo), product="sentinel2-l2a", pattern=sample_small.pattern)
    assert report.counts()["ingested"] == 6 and report.counts()["unchanged"] == 12
    day2 = run_job(spec, cluster="sync")
    ex = day2.manifest["execution"]
    assert 0 < ex["pairs_computed"] < n1  # only the new scene's pairs
    assert ex["pairs_reused"] == n1
    assert run_job(spec, cluster="sync").manifest["execution"]["pairs_computed"] == 0
    assert_same_as_fresh_run(tmp_path, repo, sample_small.fields_path, "nightly")
    # the rows carry the snapshot they were computed with
    snaps = read_table(tmp_path / "nightly", "stats").groupby("scene_id")["snapshot_id"].nunique()
    assert (snaps == 1).all()
    assert read_table(tmp_path / "nightly", "stats")["snapshot_id"].nunique() == 2
    # time travel: the first version holds day 1 only
    v0 = read_table(tmp_path / "nightly", "stats", version=0)
    assert len(v0) == len(read_table(tmp_path / "nightly", "stats")) - ex["pairs_computed"] * 3


def test_spec_changes_recompute_exactly_what_they_affect(sample_small, sample_repo, tmp_path: Path) -> None:
    fields = gpd.read_file(sample_small.fields_path)
    path = tmp_path / "fields.geojson"
    fields.to_file(path)
    spec = nightly_spec(tmp_path, sample_repo, path, "out")
    total = run_job(spec, cluster="sync").manifest["execution"]["pairs_computed"]
    n_scenes = 3
    # one field's geometry changes, one field is added: only their pairs
    moved = fields.copy()
    moved.loc[0, "geometry"] = moved.geometry.iloc[0].buffer(-0.0001)
    extra = moved.iloc[[1]].copy()
    extra["id"] = "NEW"
    pd.concat([moved, extra]).to_file(path)
    ex = run_job(spec, cluster="sync").manifest["execution"]
    assert ex["pairs_computed"] == 2 * n_scenes
    assert_same_as_fresh_run(tmp_path, sample_repo, path, "out")
    # another statistic list changes every row: everything is recomputed, the table
    # holds the new rows only (the old ones stay readable in its history)
    stats2 = nightly_spec(tmp_path, sample_repo, path, "out",
                          stats=["mean", "median", "count", "valid_fraction"])
    ex = run_job(stats2, cluster="sync").manifest["execution"]
    assert ex["pairs_computed"] == total + n_scenes
    assert "std" not in read_table(tmp_path / "out", "stats").dropna(axis=1, how="all").columns


def test_failures_go_to_the_ledger_and_retry_failed_retries_only_them(archive, sample_small,
                                                                      tmp_path: Path) -> None:
    cogs, add_day2 = archive
    add_day2()
    repo = tmp_path / "repo"
    assert ingest(str(cogs), str(repo), product="sentinel2-l2a", pattern=sample_small.pattern).ok
    victim = sorted(cogs.glob("*/B04.tif"))[1]
    hidden = victim.with_suffix(".hidden")
    os.rename(victim, hidden)  # a rename keeps the file's identity: renamed back, it reads again
    spec = nightly_spec(tmp_path, repo, sample_small.fields_path, "out")
    failed = run_job(spec, cluster="sync")
    n_failed = failed.manifest["execution"]["pairs_failed"]
    assert n_failed > 0
    ledger = read_ledger(tmp_path / "out")
    assert len(ledger) == n_failed and set(ledger["scene_id"]) == {victim.parent.name}
    assert ledger["message"].str.contains("B04").all()
    log = Path(failed.manifest["failure_log"]).read_text()
    assert log.count("Traceback") == 1  # once per distinct error, not per pair
    assert "traceback" not in str(failed.manifest["failures"][0])
    # a plain rerun leaves known failures alone
    assert run_job(spec, cluster="sync").manifest["execution"]["pairs_computed"] == 0
    os.rename(hidden, victim)
    retried = run_job(spec, cluster="sync", retry_failed=True)
    assert retried.manifest["execution"]["pairs_computed"] == n_failed
    assert read_ledger(tmp_path / "out").empty
    assert_same_as_fresh_run(tmp_path, repo, sample_small.fields_path, "out")
    runs = read_runs(tmp_path / "out")
    assert list(runs["status"])[::-1] == ["partial", "ok", "ok"]


def test_sigkill_of_the_client_then_rerun_resumes(sample_small, sample_repo, tmp_path: Path) -> None:
    """Kill -9 the `pqb run` process once some units are staged; the rerun computes only
    the rest; no row is lost or duplicated; nothing half-written is visible meanwhile."""
    spec = nightly_spec(tmp_path, sample_repo, sample_small.fields_path, "out",
                        cluster={"n_workers": 1, "threads_per_worker": 1, "processes": False,
                                 "dashboard": False})
    work = tmp_path / "out" / ".work"
    env = {**os.environ, "PIXELQUERY_TEST_UNIT_DELAY_S": "0.4"}  # slow units down: time to kill
    proc = subprocess.Popen([sys.executable, "-m", "pixelquery_batch.cli", "run", str(spec)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    # a unit's stats part is staged last (after its day rows): it marks its pairs done
    while time.monotonic() < deadline and not list(work.rglob("stats/part-*.arrow")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    staged = list(work.rglob("stats/part-*.arrow"))
    assert staged, "the run was killed before any unit finished"
    assert not (tmp_path / "out" / "stats").exists()  # nothing published half-way
    result = run_job(spec, cluster="sync")
    ex = result.manifest["execution"]
    assert ex["pairs_resumed"] > 0
    assert ex["pairs_computed"] < result.manifest["plan"]["field_scene_pairs"]
    assert not stats_of(tmp_path / "out").duplicated(VALUES[:3]).any()
    assert_same_as_fresh_run(tmp_path, sample_repo, sample_small.fields_path, "out")
    assert not work.exists() or not list(work.rglob("part-*"))
    # what the killed run staged for its other outputs is gone too (its process is dead)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith((".staging", ".old"))]


def test_one_failure_policy_for_every_stage(archive, sample_small, tmp_path: Path) -> None:
    """A COG missing at run time: under on_error: skip the stats pairs, the rollup days and
    the composites that need it are skipped and land in the ledger, the rest is
    published (run status partial); under on_error: fail the first failure stops the run
    with an error naming its unit and stage, and nothing is published."""
    from pixelquery_batch.errors import TaskError

    cogs, add_day2 = archive
    add_day2()
    repo = tmp_path / "repo"
    assert ingest(str(cogs), str(repo), product="sentinel2-l2a", pattern=sample_small.pattern).ok
    victim = sorted(cogs.glob("*/B04.tif"))[1]
    os.rename(victim, victim.with_suffix(".hidden"))
    outputs = {"dir": str(tmp_path / "out"), "stats": {"format": "parquet"},
               "timeseries": {"period": "month", "aggregation": "mean"},
               "rollup": {"regions": {"path": str(sample_small.regions_path)}, "period": "month",
                          "kinds": ["pixel"], "stats": ["mean", "count"],
                          "composite": {"crs": "EPSG:3035", "resolution": 40, "method": "median"}}}
    spec = write_spec(tmp_path, repo=repo, fields=sample_small.fields_path, outputs=outputs)
    result = run_job(spec, cluster="sync")
    ledger = read_ledger(tmp_path / "out")
    assert set(ledger["stage"]) == {"stats", "rollup", "composites"}
    assert ledger["message"].str.contains("B04").all()
    assert read_runs(tmp_path / "out")["status"].iloc[0] == "partial"
    assert len(read_table(tmp_path / "out", "timeseries")) > 0
    assert len(read_table(tmp_path / "out", "rollup")) > 0
    published = sorted(p.name for p in (tmp_path / "out" / "composites").iterdir())
    failed_composites = ledger[ledger["stage"] == "composites"]
    assert len(published) == len(result.manifest["composites"]) > 0
    assert len(failed_composites) > 0
    assert result.manifest["failures_total"] >= len(ledger)
    strict = write_spec(tmp_path, repo=repo, fields=sample_small.fields_path, name="strict",
                        on_error="fail", outputs={**outputs, "dir": str(tmp_path / "strict")})
    with pytest.raises(TaskError, match=r"B04\.tif"):
        run_job(strict, cluster="sync")
    assert not (tmp_path / "strict" / "manifest.json").exists()
    # with the file back, a clean run has exactly the skipped composites more
    os.rename(victim.with_suffix(".hidden"), victim)
    clean = write_spec(tmp_path, repo=repo, fields=sample_small.fields_path, name="clean",
                       outputs={**outputs, "dir": str(tmp_path / "clean")})
    run_job(clean, cluster="sync")
    assert len(list((tmp_path / "clean" / "composites").iterdir())) == len(published) + len(failed_composites)


def test_a_killed_worker_is_replaced_and_the_output_is_identical(sample_small, sample_repo,
                                                                  tmp_path: Path) -> None:
    """SIGKILL a worker process mid-run: its nanny restarts it, Dask reschedules its
    units, the run completes with the same rows as a synchronous run."""
    import threading

    from distributed import Client

    from pixelquery_batch.testing.cluster import separate_cluster

    env = {**os.environ, "PIXELQUERY_TEST_UNIT_DELAY_S": "0.5"}
    spec = nightly_spec(tmp_path, sample_repo, sample_small.fields_path, "out")
    with separate_cluster(workers=2, env=env, log_path=tmp_path / "cluster.log") as cluster, \
            Client(cluster.address) as client:
        pids = client.run(os.getpid)
        box: dict[str, object] = {}
        runner = threading.Thread(target=lambda: box.update(r=run_job(spec, cluster=cluster.address)))
        runner.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(client.processing().values()):
            time.sleep(0.05)
        busy = [w for w, tasks in client.processing().items() if tasks]
        os.kill(pids[busy[0]], signal.SIGKILL)
        runner.join(timeout=180)
        assert not runner.is_alive()
        assert f"Worker process {pids[busy[0]]} was killed by signal 9" in cluster.logs()
    result = box["r"]
    assert result.ok, result.manifest["failures"][:2]
    assert_same_as_fresh_run(tmp_path, sample_repo, sample_small.fields_path, "out")


def test_ingest_during_a_run_does_not_change_what_the_run_reads(archive, sample_small,
                                                                tmp_path: Path) -> None:
    """The run reads the snapshot it resolved at its start; scenes ingested meanwhile are
    computed by the next run."""
    import json

    from pixelquery_batch import open_catalog

    cogs, add_day2 = archive
    repo = tmp_path / "repo"
    assert ingest(str(cogs), str(repo), product="sentinel2-l2a", pattern=sample_small.pattern).ok
    pinned = open_catalog(repo)
    spec = nightly_spec(tmp_path, repo, sample_small.fields_path, "out",
                        cluster={"n_workers": 1, "threads_per_worker": 1, "processes": False,
                                 "dashboard": False})
    env = {**os.environ, "PIXELQUERY_TEST_UNIT_DELAY_S": "1.5"}
    proc = subprocess.Popen([sys.executable, "-m", "pixelquery_batch.cli", "run", str(spec)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    work = tmp_path / "out" / ".work"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not work.exists():
        time.sleep(0.05)
    add_day2()  # ingested while the run computes
    assert ingest(str(cogs), str(repo), product="sentinel2-l2a", pattern=sample_small.pattern).ok
    assert proc.poll() is None, "the run ended before the ingest: the test proves nothing"
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["repository"]["snapshot_id"] == pinned.snapshot_id
    assert set(read_table(tmp_path / "out", "stats")["scene_id"]) == set(pinned.ids)
    nxt = run_job(spec, cluster="sync")
    assert nxt.manifest["repository"]["snapshot_id"] != pinned.snapshot_id
    assert set(read_table(tmp_path / "out", "stats")["scene_id"]) == set(open_catalog(repo).ids)


def test_pqb_plan_says_what_a_run_would_recompute(sample_small, sample_repo, tmp_path: Path) -> None:
    from pixelquery_batch.pipeline import plan_summary, prepare_job

    spec = nightly_spec(tmp_path, sample_repo, sample_small.fields_path, "out")
    before = plan_summary(prepare_job(spec))["incremental"]
    assert before["pairs_to_compute"] == plan_summary(prepare_job(spec))["field_scene_pairs"]
    assert before["reason"].startswith("first run")
    run_job(spec, cluster="sync")
    after = plan_summary(prepare_job(spec))["incremental"]
    assert after["pairs_to_compute"] == 0 and after["reason"].startswith("nothing new")
    changed = nightly_spec(tmp_path, sample_repo, sample_small.fields_path, "out",
                           stats=["mean", "count", "valid_fraction"])
    inc = plan_summary(prepare_job(changed))["incremental"]
    assert inc["pairs_to_compute"] == before["pairs_to_compute"]
    assert "changes what the results mean" in inc["reason"]
    out = subprocess.run([sys.executable, "-m", "pixelquery_batch.cli", "plan", str(changed)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "every pair is recomputed" in out.stdout


def test_staged_parts_round_trip_and_older_parquet_parts_are_still_read(tmp_path: Path) -> None:
    """Units' rows are staged as Arrow IPC parts; a run interrupted under an older version
    left Parquet parts: both are listed and read back, value for value."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pixelquery_batch.incremental import WorkArea
    from pixelquery_batch.storage import Location

    work = WorkArea(Location.of(str(tmp_path)), "abc")
    a = pa.table({"field_id": ["F1", "F2"], "mean": [0.25, None],
                  "datetime": pa.array([0, 1], pa.timestamp("us", tz="UTC"))})
    b = pa.table({"field_id": ["F3"], "mean": [1.5],
                  "datetime": pa.array([2], pa.timestamp("us", tz="UTC"))})
    work.put("stats", "u1", a)
    work.put("stats", "u0", a.slice(0, 0))  # nothing to stage: no part
    old = tmp_path / ".work" / "abc" / "stats" / "part-u2.parquet"
    pq.write_table(b, old)
    keys = work.keys("stats")
    assert [k.rsplit("/", 1)[1] for k in keys] == ["part-u1.arrow", "part-u2.parquet"]
    assert work.read_part(keys[0]).equals(a) and work.read_part(keys[1]).equals(b)
    assert work.read("stats").equals(pa.concat_tables([a, b]))


def test_staged_parts_are_published_as_a_stream_with_pairs_dropped(tmp_path: Path) -> None:
    """publish_parts commits every staged part in one append: Arrow parts (sorted by the
    workers) streamed batch by batch, an older Parquet part read whole; pairs already
    published are left out; nothing lost or duplicated."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pixelquery_batch.incremental import STATS_KEYS, WorkArea, pair_keys, publish_parts
    from pixelquery_batch.storage import Location
    from pixelquery_batch.writers import delta

    rng = np.random.default_rng(0)
    n = 150_000  # several IPC batches of 65,536 rows

    def rows(prefix: str, count: int) -> pa.Table:
        ids = [f"{prefix}{i:06d}" for i in rng.permutation(count)]
        return pa.table({"field_id": ids, "scene_id": ["S1"] * count,
                         "variable": ["ndvi"] * count, "mean": rng.random(count)})

    root = Location.of(str(tmp_path / "out"))
    work = WorkArea(root, "h")
    a = rows("A", n).sort_by([(c, "ascending") for c in STATS_KEYS])
    work.put("stats", "u1", a)
    old = rows("B", 1000)  # unsorted, as an older version staged it
    path = tmp_path / "out" / ".work" / "h" / "stats" / "part-u0.parquet"
    pq.write_table(old, path)
    drop = set(pair_keys(a.slice(10, 5)).to_pylist())
    written = publish_parts(work, "stats", root, "stats", STATS_KEYS, replace_all=False,
                            drop=drop, metadata={"run_id": "r"})
    assert written == n + 1000 - 5
    got = delta.read(root, "stats")
    want = pa.concat_tables([old.sort_by([(c, "ascending") for c in STATS_KEYS]),
                             pa.concat_tables([a.slice(0, 10), a.slice(15)])])
    assert got.num_rows == want.num_rows
    assert got.sort_by("field_id").equals(want.select(got.column_names).sort_by("field_id"))
    from deltalake import DeltaTable

    assert DeltaTable(str(tmp_path / "out" / "stats")).version() == 0  # one commit
