"""The CLI end to end in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import write_spec

PQB = [sys.executable, "-m", "pixelquery_batch.cli"]


def run(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([*PQB, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"pqb {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def test_sample_ingest_scenes_validate_plan_run(tmp_path: Path) -> None:
    run("sample-data", str(tmp_path / "s"), "--scenes", "2", "--size", "600", "--fields", "15")
    cogs = str(tmp_path / "s" / "cogs")
    out = run("ingest", cogs, "--repo", str(tmp_path / "wh"), "--pattern", "{scene}/{band}.tif", "--json")
    report = json.loads(out.stdout)
    assert report["counts"]["ingested"] == 12  # 2 scenes x (4 bands at 10 m + B11 and SCL at 20 m)
    assert report["snapshot_id"]
    again = json.loads(run("ingest", cogs, "--repo", str(tmp_path / "wh"), "--json").stdout)
    assert again["counts"]["unchanged"] == 12  # the profile's patterns include {scene}/{band}.tif
    assert again["snapshot_id"] is None

    scenes = json.loads(run("scenes", "--repo", str(tmp_path / "wh"), "--json").stdout)
    assert [s["scene_id"] for s in scenes["scenes"]] == ["S2A_33UXP_20211001_0_L2A",
                                                         "S2B_33UXP_20211031_0_L2A"]
    stac = json.loads(run("scenes", "--repo", str(tmp_path / "wh"), "--format", "stac").stdout)
    assert stac["type"] == "FeatureCollection"
    assert len(stac["features"]) == 2
    table = run("scenes", "--repo", str(tmp_path / "wh"), "--end", "2021-10-01").stdout
    assert "1 of 2 scene(s)" in table
    assert "10: blue,green,red,nir | 20: swir16,scl" in table

    spec = write_spec(tmp_path, repo=tmp_path / "wh", fields=tmp_path / "s" / "fields.geojson")
    assert "valid" in run("validate", str(spec)).stdout
    plan = json.loads(run("plan", str(spec), "--json").stdout)
    assert plan["scenes_matched"] == 2
    assert plan["fields"] == 15
    out = run("run", str(spec), "--json")
    summary = json.loads(out.stdout)
    assert summary["execution"]["workers"] == 2  # the spec's LocalCluster
    assert summary["execution"]["rows"] == plan["field_scene_pairs"] * 3
    # where the units ran: each worker thread's units, busy and CPU seconds, first start
    # and last end (from the first unit's start), adding up to the execution's totals
    threads = summary["execution"]["per_worker"]
    assert threads and all(k.startswith(("tcp://", "inproc://")) for k in threads)
    assert sum(t["units"] for t in threads.values()) == summary["execution"]["units_done"]
    assert sum(t["busy_s"] for t in threads.values()) == pytest.approx(
        summary["execution"]["unit_s_total"], abs=0.01)
    assert min(t["first_start_s"] for t in threads.values()) == 0
    for t in threads.values():
        assert t["cpu_s"] > 0 and t["first_start_s"] + t["busy_s"] <= t["last_end_s"] + 0.002
    # what the units spent their time on: the phases account for (nearly) all of it, and a
    # thread cannot use more CPU in a phase than the phase lasted
    phases = summary["execution"]["unit_phases"]
    assert {"setup", "pixels", "index", "decode", "band_math", "stats", "rows"} == set(phases)
    spent, total = sum(p["wall_s"] for p in phases.values()), summary["execution"]["unit_s_total"]
    # (outside them: bookkeeping, ~4 ms per unit of these 15 fields)
    assert total - 0.1 * total - 0.01 * summary["execution"]["units_done"] <= spent <= total + 0.01
    assert all(0 <= p["cpu_s"] <= p["wall_s"] + 0.02 for p in phases.values())
    assert Path(summary["outputs"]["stats"]).is_dir()
    human = run("run", str(spec), "--cluster", "sync").stdout
    assert "first rows:" in human
    assert "manifest:" in human


def test_cli_errors_are_actionable(tmp_path: Path) -> None:
    out = run("ingest", str(tmp_path / "missing"), "--repo", str(tmp_path / "wh"), check=False)
    assert out.returncode == 3
    assert "source not found" in out.stderr
    out = run("ingest", str(tmp_path), "--repo", str(tmp_path / "wh"), "--product", "nope", check=False)
    assert out.returncode == 2
    assert "unknown product profile 'nope'" in out.stderr
    assert "sentinel2-l2a" in out.stderr
    bad = tmp_path / "job.yaml"
    bad.write_text("version: 1\nname: x\nrepository: {path: wh}\nfields: {path: f.geojson}\n"
                   "bands: [red]\nstats: [mean, p95x]\noutputs: {dir: out}\npixels: middle\n")
    out = run("validate", str(bad), check=False)
    assert out.returncode == 2
    assert "job.yaml:6 stats[1]: unknown statistic 'p95x'" in out.stderr
    assert "job.yaml:8 pixels:" in out.stderr
    out = run("scenes", "--repo", str(tmp_path / "nowhere"), check=False)
    assert out.returncode == 4
    assert "no repository" in out.stderr


def test_validate_reports_consistency_problems(tmp_path: Path, sample_small, sample_repo) -> None:
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path, bands=["red", "swir2"])
    out = run("validate", str(spec), check=False)
    assert out.returncode == 2
    assert "no band or role 'swir2'" in out.stderr
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path,
                      scenes={"start": "2030-01-01", "end": "2030-12-31"})
    out = run("validate", str(spec), check=False)
    assert "no scene between 2030-01-01 and 2030-12-31" in out.stderr


@pytest.mark.parametrize("module", ["pixelquery_batch.kernels.stats", "pixelquery_batch.rasterize",
                                    "pixelquery_batch.expr", "pixelquery_batch.planner",
                                    "pixelquery_batch.spec", "pixelquery_batch"])
def test_layering_imports(module: str) -> None:
    """Lower layers stay light: kernels/rasterize/expr pull in no distributed, icechunk or
    rasterio; the planner neither distributed nor icechunk; the package root nothing heavy."""
    code = (f"import sys, {module}\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'distributed', 'icechunk', 'rasterio', 'zarr', 'dask'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.replace("'", '"'))
    assert "distributed" not in loaded
    assert "icechunk" not in loaded
    if module != "pixelquery_batch.planner":
        assert "rasterio" not in loaded


def test_payloads_pickle_without_secrets(sample_small, sample_repo, tmp_path: Path) -> None:
    import pickle

    from pydantic import SecretStr

    from pixelquery_batch.api import plan_prepared, prepare_job
    from pixelquery_batch.config import S3Options, StorageProfile

    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path)
    job = prepare_job(spec)
    plan = plan_prepared(job)
    ctx = job.context()
    for obj in (ctx, *plan.units):
        assert pickle.loads(pickle.dumps(obj)) == obj
    prof = StorageProfile(s3=S3Options(access_key_id=SecretStr("AKIAXXX"), secret_access_key=SecretStr("s3cr3t")))
    ref = type(ctx.repo)(ctx.repo.location, ctx.repo.snapshot_id, prof)
    from pixelquery_batch.storage import Location, OutputSink

    loc = Location.of("s3://bucket/out", prof)
    # what Dask prints about a failed task's arguments, and what our logs show: never the
    # secret (the end-to-end check greps real logs and outputs: tests/test_cluster_s3.py)
    for obj in (ref, type(ctx)(repo=ref, job_hash="x", variables=(), stats=()), prof, loc,
                OutputSink(loc, direct=False)):
        assert "s3cr3t" not in repr(obj) and "s3cr3t" not in str(obj)
    # while the payload itself carries it, for the workers
    assert b"s3cr3t" in pickle.dumps(loc)


def test_first_rows_of_a_delta_table_of_many_files_then_exit(tmp_path: Path) -> None:
    """``pqb run`` prints the first rows of the stats table and exits: reading them must
    leave nothing running. A dataset scan stopped after 8 rows kept Arrow reading the
    other files, and the exiting process aborted, crashed or hung (10 runs of 10)."""
    import numpy as np
    import pyarrow as pa
    from deltalake import write_deltalake

    rows = pa.table({"field_id": [f"F{i:05d}" for i in range(20_000)],
                     "scene_id": ["S1"] * 20_000, "mean": np.linspace(0, 1, 20_000)})
    for _ in range(16):
        write_deltalake(str(tmp_path / "stats"), rows, mode="append")
    code = "import sys; from pixelquery_batch.cli import _print_head; _print_head(sys.argv[1])"
    for _ in range(4):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "stats")],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "first rows:" in out.stdout and "F00007" in out.stdout


def test_reading_a_delta_table_then_exiting_does_not_abort(tmp_path: Path) -> None:
    """``pqb plan`` reads the stats table and exits. With deltalake's Python filesystem,
    Arrow's threads released the scan's buffers after the read returned, needing the GIL
    while the interpreter finalised: rc 134 ("terminate called without an active
    exception") in 10 of 30 exits on a 32-file table, and in CI. Native files: 0 of 30."""
    import numpy as np
    import pyarrow as pa

    from pixelquery_batch.storage import Location
    from pixelquery_batch.writers import delta

    loc = Location.of(tmp_path / "out")
    for i in range(32):
        delta.append(loc, "stats", pa.table({"field_id": np.arange(20_000) + 20_000 * i,
                                             "mean": np.random.default_rng(i).random(20_000)}))
    code = ("import sys; from pixelquery_batch.storage import Location; "
            "from pixelquery_batch.writers import delta; "
            "print(delta.read(Location.of(sys.argv[1]), 'stats', columns=['field_id']).num_rows)")
    for _ in range(10):  # each exit aborted with probability ~1/3 before the fix
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.strip() == str(32 * 20_000)


def test_demo_twice_in_one_directory(tmp_path: Path) -> None:
    """A second ``pqb demo`` in the same directory finds every pair in the outputs and says
    so (it raised KeyError 'rows' on the manifest of a run with nothing to compute)."""
    from click.testing import CliRunner

    from pixelquery_batch.cli import main

    args = ["demo", str(tmp_path / "demo"), "--scenes", "2", "--size", "256", "--fields", "6"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "rows (12 field-scene pairs x" in first.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "nothing new to compute: the outputs already hold all 12 field-scene pairs" in again.output
    assert "first rows:" in again.output
