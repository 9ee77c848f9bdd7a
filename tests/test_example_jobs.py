"""The example specs in jobs/ run end to end from the CLI on sample data laid out like
`pqb demo`'s, and their outputs agree with independent computations."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio

from pixelquery_batch import read_table
from pixelquery_batch.catalog.ingest import ingest
from pixelquery_batch.sample import generate_sample

from .reference import (
    cogs_by_date,
    field_scene_values,
    reference_stats,
    region_pixels,
    scene_date,
    scene_variable,
)

JOBS = Path(__file__).resolve().parents[1] / "jobs"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ws")
    shutil.copytree(JOBS, root / "jobs")
    info = generate_sample(root / "demo" / "sample", scenes=5, size=700, fields=20, seed=3)
    assert ingest(str(info.cog_dir), str(root / "demo" / "warehouse"), pattern=info.pattern).ok
    return root


def pqb(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "pixelquery_batch.cli", *args], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_every_example_spec_validates(workspace: Path) -> None:
    # the nightly workflow's own repository (its test builds it day by day)
    if not (workspace / "nightly" / "warehouse").exists():
        assert ingest(str(workspace / "demo" / "sample" / "cogs"), str(workspace / "nightly" / "warehouse"),
                      pattern="{scene}/{band}.tif").ok
    for spec in sorted((workspace / "jobs").glob("*.yaml")):
        pqb("validate", str(spec))


def test_field_timeseries_example(workspace: Path) -> None:
    pqb("run", str(workspace / "jobs" / "field-timeseries.yaml"), "--cluster", "sync")
    out = workspace / "demo" / "out" / "field-timeseries"
    ts = read_table(out, "timeseries")
    wide = read_table(out, "timeseries_wide")
    assert len(wide) == ts.groupby(["field_id", "variable"]).ngroups
    # weekly max_ndvi: each observed week carries the stats of the scene with the highest
    # field NDVI that week, recomputed here from rasterio reads
    fields = gpd.read_file(workspace / "demo" / "sample" / "fields.geojson")
    cogs = cogs_by_date(workspace / "demo" / "sample" / "cogs")
    ref = []
    for _, f in fields.iterrows():
        for scene_id, cog in cogs.items():
            r = field_scene_values(f.geometry, cog, {"ndvi": "ndvi", "evi": "evi"})
            if r["ndvi"][1] == 0:
                continue
            for var in ("ndvi", "evi"):
                st = reference_stats(r[var][0], r[var][1])
                ref.append({"field_id": f["id"], "variable": var, "date": pd.Timestamp(scene_date(scene_id), tz="UTC"),
                            "mean": st["mean"], "count": st["count"]})
    ref = pd.DataFrame(ref)
    ref["week"] = ref["date"] - pd.to_timedelta(ref["date"].dt.day_of_week, unit="D")
    checked = 0
    for (fid, week), grp in ref[ref["count"] > 0].groupby(["field_id", "week"]):
        nd = grp[grp.variable == "ndvi"]
        if nd.empty:
            continue
        best = nd.loc[nd["mean"].idxmax(), "date"]
        for var in ("ndvi", "evi"):
            want = grp[(grp.variable == var) & (grp.date == best)]
            row = ts[(ts.field_id == fid) & (ts.variable == var) & (ts.period_start == week)]
            assert len(row) == 1
            if want.empty:
                continue
            assert row["mean"].iloc[0] == pytest.approx(want["mean"].iloc[0], abs=1e-9)
            assert row["count"].iloc[0] == want["count"].iloc[0]
            checked += 1
    assert checked > 20
    # filled gaps are flagged, never counted
    assert (ts.loc[ts.filled, "count"] == 0).all()
    assert ts.filled.any()
    # the point series: P1 and P2 lie in the scenes, P3 far away; each value is the pixel's
    # value read with rasterio (nodata and clouds: not valid)
    points = read_table(out, "points")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["points"]["plan"]["fields_outside_every_scene"] == ["P3"]
    pts = gpd.read_file(workspace / "jobs" / "points.geojson").set_index("id")
    assert set(points.point_id) == {"P1", "P2"}
    assert len(points) == 2 * len(cogs) * 2  # points x scenes x (ndvi, evi)
    for pid in ("P1", "P2"):
        for scene_id, cog in cogs.items():
            for var in ("ndvi", "evi"):
                values, crs, transform = scene_variable(cog, var)
                x, y = gpd.GeoSeries([pts.geometry[pid]], crs=pts.crs).to_crs(crs).iloc[0].coords[0]
                col, row = ~transform * (x, y)
                want = values[int(row), int(col)]
                got = points[(points.point_id == pid) & (points.scene_id == scene_id)
                             & (points.variable == var)]
                assert len(got) == 1
                if np.isfinite(want):
                    assert got["valid"].iloc[0] and got["value"].iloc[0] == pytest.approx(want, abs=1e-12)
                else:
                    assert not got["valid"].iloc[0]


def test_regional_rollup_example(workspace: Path) -> None:
    pqb("run", str(workspace / "jobs" / "regional-ndvi-rollup.yaml"))  # the spec's LocalCluster
    out = workspace / "demo" / "out" / "regional-ndvi-rollup"
    rollup = read_table(out, "rollup")
    fields_rollup = read_table(out, "rollup_fields")
    regions = gpd.read_file(workspace / "demo" / "sample" / "regions.geojson")
    assert set(rollup.region_id) == set(regions["id"]) == set(fields_rollup.region_id)
    cogs = cogs_by_date(workspace / "demo" / "sample" / "cogs")
    for _, reg in regions.iterrows():
        for month in ("2021-10", "2021-11", "2022-01"):  # two scenes, one, one after baseline 04.00
            vals = region_pixels(reg.geometry, cogs, month)
            row = rollup[(rollup.region_id == reg["id"]) & (rollup.period_start.dt.strftime("%Y-%m") == month)].iloc[0]
            assert row["count"] == len(vals)
            assert row["mean"] == pytest.approx(vals.mean(), rel=1e-12)
            assert abs(row["median"] - np.quantile(vals, 0.5, method="inverted_cdf")) <= row["quantile_error_bound"]
    # the regions' NDVI clips: one COG per region and scene, the region's valid pixels
    for _, reg in regions.iterrows():
        clips = sorted((out / "cog_regions" / str(reg["id"])).glob("*_ndvi.tif"))
        assert len(clips) == len(cogs)
        month = [c for c in clips if c.name.startswith("2022-01")]
        with rasterio.open(month[0]) as src:
            got = src.read(1)
        assert np.sort(got[np.isfinite(got)]).tolist() == np.sort(
            region_pixels(reg.geometry, cogs, "2022-01")).astype(np.float32).tolist()
    assert not (out / "cog").exists()  # fields: false


def test_documented_nightly_workflow(workspace: Path, tmp_path: Path) -> None:
    """The README's nightly workflow, command by command: day 1 -> run -> day 2 -> run ->
    rerun gives exactly the outputs of one run over all data, the rerun computes nothing,
    and the history is visible from the CLI."""
    import json

    root = tmp_path / "ws"
    shutil.copytree(workspace / "jobs", root / "jobs")
    (root / "demo").symlink_to(workspace / "demo")
    cogs = root / "demo" / "sample" / "cogs"
    pattern = ["--product", "sentinel2-l2a", "--pattern", "{scene}/{band}.tif"]
    spec = str(root / "jobs" / "nightly-incremental.yaml")
    years = sorted({p.name.split("_")[2][:4] for p in cogs.iterdir()})
    assert len(years) == 2  # scenes on both sides of the new year
    pqb("ingest", f"{cogs}/*_{years[0]}*/*.tif", "--repo", str(root / "nightly" / "warehouse"), *pattern)
    pqb("run", spec)
    pqb("ingest", str(cogs), "--repo", str(root / "nightly" / "warehouse"), *pattern)
    day2 = json.loads(pqb("run", spec, "--json").stdout)
    again = json.loads(pqb("run", spec, "--json").stdout)
    assert 0 < day2["execution"]["pairs_computed"] < day2["plan"]["field_scene_pairs"]
    assert again["execution"]["pairs_computed"] == 0
    history = pqb("runs", str(root / "nightly" / "out"), "--json").stdout.splitlines()
    assert [json.loads(r)["pairs_computed"] for r in history] == [
        0, day2["execution"]["pairs_computed"],
        day2["plan"]["field_scene_pairs"] - day2["execution"]["pairs_computed"]]
    # one run over all the data, elsewhere
    once = root / "jobs" / "once.yaml"
    once.write_text((root / "jobs" / "nightly-incremental.yaml").read_text()
                    .replace("../nightly/out", "../once/out").replace("name: nightly-incremental",
                                                                      "name: once"))
    pqb("run", str(once))
    for table, keys in (("stats", ["field_id", "scene_id", "variable"]),
                        ("timeseries", ["field_id", "variable", "period_start"])):
        a = read_table(root / "nightly" / "out", table).drop(columns=["run_id", "snapshot_id",
                                                                       "job_hash"], errors="ignore")
        b = read_table(root / "once" / "out", table).drop(columns=["run_id", "snapshot_id",
                                                                    "job_hash"], errors="ignore")
        pd.testing.assert_frame_equal(a.sort_values(keys).reset_index(drop=True),
                                      b.sort_values(keys).reset_index(drop=True), check_exact=True)
