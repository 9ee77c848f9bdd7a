"""Archive-shaped data end to end: Sentinel-2 L2A folders with 10/20/60 m bands, SCL at
20 m, tile sizes that differ per band, scenes before and after processing baseline 04.00;
Landsat C2 L2 with USGS names and QA_PIXEL bits.

Every expected number comes from an independent path: rasterio reads of the source COGs,
20/60 m bands brought to the 10 m grid with ``rasterio.warp.reproject(nearest)``,
``rasterio.features.geometry_mask`` masks, exactextract for coverage weights, numpy stats.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.features import geometry_mask
from rasterio.warp import reproject
from rasterio.windows import Window
from shapely.geometry import box, mapping

from pixelquery_batch import read_table
from pixelquery_batch.catalog.ingest import ingest
from pixelquery_batch.catalog.store import resolve_snapshot
from pixelquery_batch.errors import SpecError
from pixelquery_batch.pipeline import run_job
from pixelquery_batch.testing.archives import make_landsat_scene, make_s2_scene_folder

from .conftest import write_spec

CLOUD = (3, 8, 9, 10)
S2_NAMES = {"blue": "B02", "red": "B04", "nir": "B08", "swir16": "B11", "scl": "SCL"}
ORIGIN = (600000.0, 5300000.0)
DATES = (dt.date(2021, 6, 15), dt.date(2023, 6, 20))


# --------------------------------------------------------------------------- reference


def _read_on(path: Path, transform, shape, *, nearest_to_grid: bool = True) -> np.ndarray:
    """A band on the given grid: rasterio.warp.reproject with nearest resampling."""
    with rasterio.open(path) as src:
        out = np.zeros(shape, dtype=src.dtypes[0])
        reproject(rasterio.band(src, 1), out, dst_transform=transform, dst_crs=src.crs,
                  resampling=Resampling.nearest, src_nodata=None, dst_nodata=None)
    return out


def _ndmi_on(files: dict[str, Path], transform, shape) -> np.ndarray:
    """NDMI (baseline 04.00 encoding) with nodata and SCL clouds as NaN, on a given grid."""
    nir = _read_on(files["B08"], transform, shape)
    swir = _read_on(files["B11"], transform, shape)
    scl = _read_on(files["SCL"], transform, shape)
    n, s = nir * 1e-4 - 0.1, swir * 1e-4 - 0.1
    with np.errstate(all="ignore"):
        v = (n - s) / (n + s)
    v[(nir == 0) | (swir == 0) | np.isin(scl, CLOUD)] = np.nan
    return v


def _s2_reference(files: dict[str, Path], date: dt.date, geom, *, rule: str,
                  cloud: bool) -> dict[str, dict[str, float]]:
    """Per variable (ndvi, ndmi, swir16): stats over the field's 10 m pixels."""
    with rasterio.open(files["B04"]) as src:
        transform, crs = src.transform, src.crs
    minx, miny, maxx, maxy = geom.bounds
    c0 = math.floor((minx - transform.c) / transform.a) - 1
    r0 = math.floor((transform.f - maxy) / -transform.e) - 1
    c1 = math.ceil((maxx - transform.c) / transform.a) + 1
    r1 = math.ceil((transform.f - miny) / -transform.e) + 1
    win = Window(c0, r0, c1 - c0, r1 - r0)
    wt = rasterio.windows.transform(win, transform)
    shape = (r1 - r0, c1 - c0)
    scale, offset = 1e-4, (-0.1 if date >= dt.date(2022, 1, 25) else 0.0)
    phys = {}
    for name in ("red", "nir", "swir16"):
        raw = _read_on(files[S2_NAMES[name]], wt, shape)
        v = raw * scale + offset
        v[raw == 0] = np.nan
        phys[name] = v
    invalid = np.zeros(shape, bool)
    if cloud and "SCL" in files:
        scl = _read_on(files["SCL"], wt, shape)
        invalid = np.isin(scl, CLOUD)
    with np.errstate(all="ignore"):
        variables = {
            "ndvi": (phys["nir"] - phys["red"]) / (phys["nir"] + phys["red"]),
            "ndmi": (phys["nir"] - phys["swir16"]) / (phys["nir"] + phys["swir16"]),
            "swir16": phys["swir16"],
        }
    out = {}
    if rule == "coverage":
        return {"_arrays": variables, "_invalid": invalid, "_transform": wt, "_crs": crs}  # type: ignore[dict-item]
    mask = geometry_mask([mapping(geom)], out_shape=shape, transform=wt,
                         all_touched=rule == "all_touched", invert=True)
    for name, v in variables.items():
        v = v.copy()
        v[invalid | ~np.isfinite(v)] = np.nan
        vals = v[mask]
        vals = vals[np.isfinite(vals)]
        out[name] = {"mean": float(vals.mean()) if len(vals) else math.nan,
                     "median": float(np.median(vals)) if len(vals) else math.nan,
                     "p90": float(np.percentile(vals, 90)) if len(vals) else math.nan,
                     "min": float(vals.min()) if len(vals) else math.nan,
                     "max": float(vals.max()) if len(vals) else math.nan,
                     "count": float(len(vals)), "pixel_count": float(mask.sum())}
    return out


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def s2_archive(tmp_path_factory: pytest.TempPathFactory):
    """Two S2 scenes (2021 and 2023) with 10/20/60 m bands, plus one scene without SCL."""
    root = tmp_path_factory.mktemp("s2") / "sentinel-s2-l2a-cogs"
    bands = ("B01", "B02", "B04", "B08", "B8A", "B11", "SCL")
    tiles = {"B02": 256, "B04": 512, "B08": 128, "B11": 128, "SCL": 256, "B8A": 64, "B01": 32}
    scenes = [make_s2_scene_folder(root, d, size_10m=540, bands=bands, tiles=tiles, seed=3)
              for d in DATES]
    no_scl = make_s2_scene_folder(root, dt.date(2023, 7, 5), size_10m=540,
                                  bands=("B02", "B04", "B08", "B11"), tiles=tiles, seed=4)
    repo = tmp_path_factory.mktemp("s2repo") / "repo"
    report = ingest(str(root), str(repo), pattern="{scene}/{band}.tif")
    assert report.ok, report.to_dict()
    x0, y0 = ORIGIN
    geoms = [  # fields in metres: inside, across tile edges, partly outside, tiny
        box(x0 + 215, y0 - 1985, x0 + 1370, y0 - 1130),
        box(x0 + 2500, y0 - 2600, x0 + 2800, y0 - 2510),
        box(x0 + 4100, y0 - 900, x0 + 5700, y0 - 300),  # crosses the east edge (5400 m)
        box(x0 + 1265, y0 - 5123, x0 + 3841, y0 - 2561),  # spans 128/256/512 tile edges
        box(x0 + 3003, y0 - 3333, x0 + 3044, y0 - 3297),  # a few pixels
    ]
    ids = [f"F{i}" for i in range(len(geoms))]
    gdf = gpd.GeoDataFrame({"id": ids}, geometry=geoms, crs="EPSG:32633")
    fields = repo.parent / "fields.geojson"
    gdf.to_crs("EPSG:4326").to_file(fields, driver="GeoJSON")
    return {"root": root, "repo": repo, "scenes": scenes, "no_scl": no_scl, "fields": fields,
            "geoms": dict(zip(ids, geoms, strict=True)), "report": report}


def _run(tmp_path: Path, archive, *, rule: str = "centre", **overrides):
    spec = write_spec(tmp_path, repo=archive["repo"], fields=archive["fields"],
                      **{"scenes": {"start": "2021-01-01", "end": "2023-12-31"},
                         "bands": ["swir16"], "indices": {"ndvi": "builtin", "ndmi": "builtin"},
                         "stats": ["mean", "median", "p90", "min", "max", "count"],
                         "pixels": rule, **overrides})
    result = run_job(spec, cluster="sync")
    return result, read_table(result.outputs["stats"], None)


# --------------------------------------------------------------------------- tests


def test_catalog_records_each_band_grid_and_scale_offset(s2_archive) -> None:
    ref = resolve_snapshot(str(s2_archive["repo"]), None)
    cat = ref.catalog()
    assert len(cat) == 3
    for s in cat.scenes():
        assert s.shape_yx == (540, 540) and s.transform[0] == 10.0
        red, swir = s.band("red"), s.band("swir16")
        assert s.band_grid(red)[1] == (540, 540) and red.chunks_yx == (512, 512)
        assert s.band_grid(swir)[1] == (270, 270) and swir.chunks_yx == (128, 128)
        if s.datetime.date() != DATES[0]:
            assert s.band("coastal" if "B01" in str(s.sources) else "red")
    s21 = cat.get(s2_archive["scenes"][0].scene_id)
    s23 = cat.get(s2_archive["scenes"][1].scene_id)
    assert s21.band_grid(s21.band("coastal"))[1] == (90, 90)
    assert (s21.band("red").scale, s21.band("red").offset) == (1e-4, 0.0)
    assert (s23.band("red").scale, s23.band("red").offset) == (1e-4, -0.1)
    assert "baseline" in s23.band("red").scale_source
    assert s21.band("scl").offset == 0.0 and s23.band("scl").offset == 0.0
    rec = {r["scene_id"]: r for r in cat.to_records()}[s23.scene_id]
    red_info = next(b for b in rec["band_info"] if b["name"] == "red")
    assert red_info["offset"] == -0.1 and red_info["resolution"] == 10.0
    assert next(b for b in rec["band_info"] if b["name"] == "scl")["resolution"] == 20.0


@pytest.mark.parametrize("rule", ["centre", "all_touched"])
def test_ndvi_ndmi_with_scl_equal_rasterio_reference(tmp_path: Path, s2_archive, rule: str) -> None:
    result, df = _run(tmp_path, s2_archive, rule=rule)
    assert result.ok
    checked = 0
    for scene in s2_archive["scenes"]:
        for fid, geom in s2_archive["geoms"].items():
            ref = _s2_reference(scene.files, scene.date, geom, rule=rule, cloud=True)
            for var in ("ndvi", "ndmi", "swir16"):
                row = df[(df.field_id == fid) & (df.scene_id == scene.scene_id) & (df.variable == var)]
                assert len(row) == 1, (fid, scene.scene_id, var)
                row = row.iloc[0]
                exp = ref[var]
                assert row["count"] == exp["count"], (fid, var, rule)
                assert row["pixel_count"] == exp["pixel_count"]
                assert bool(row["cloud_masked"])
                for stat in ("mean", "median", "p90", "min", "max"):
                    if math.isnan(exp[stat]):
                        assert math.isnan(row[stat])
                    else:
                        assert row[stat] == pytest.approx(exp[stat], abs=1e-9), (fid, var, stat)
                checked += 1
    assert checked == 2 * 5 * 3


def test_coverage_rule_equals_exactextract(tmp_path: Path, s2_archive) -> None:
    from exactextract import exact_extract

    _, df = _run(tmp_path, s2_archive, rule="coverage")
    scene = s2_archive["scenes"][1]
    for fid in ("F0", "F3"):
        geom = s2_archive["geoms"][fid]
        ref = _s2_reference(scene.files, scene.date, geom, rule="coverage", cloud=True)
        for var in ("ndvi", "ndmi"):
            v = ref["_arrays"][var].copy()
            v[ref["_invalid"] | ~np.isfinite(v)] = np.nan
            path = tmp_path / f"{fid}_{var}.tif"
            with rasterio.open(path, "w", driver="GTiff", width=v.shape[1], height=v.shape[0], count=1,
                               dtype="float64", crs=ref["_crs"], transform=ref["_transform"],
                               nodata=np.nan) as dst:
                dst.write(v, 1)
            gdf = gpd.GeoDataFrame({"id": [fid]}, geometry=[geom], crs="EPSG:32633")
            exp = exact_extract(str(path), gdf, ["mean", "count"], output="pandas")
            row = df[(df.field_id == fid) & (df.scene_id == scene.scene_id) & (df.variable == var)].iloc[0]
            assert row["mean"] == pytest.approx(float(exp["mean"].iloc[0]), abs=1e-6)
            assert row["count"] == pytest.approx(float(exp["count"].iloc[0]), rel=1e-9)


def test_scene_without_scl_is_computed_unmasked_and_named(tmp_path: Path, s2_archive) -> None:
    result, df = _run(tmp_path, s2_archive)
    no_scl = s2_archive["no_scl"]
    warned = [w for w in result.manifest["warnings"] if w.get("scene_id") == no_scl.scene_id]
    assert warned and "scl" in warned[0]["warning"]
    rows = df[df.scene_id == no_scl.scene_id]
    assert len(rows) == 5 * 3 and not rows["cloud_masked"].any()
    assert df[df.scene_id != no_scl.scene_id]["cloud_masked"].all()
    ref = _s2_reference(no_scl.files, no_scl.date, s2_archive["geoms"]["F0"], rule="centre", cloud=False)
    row = rows[(rows.field_id == "F0") & (rows.variable == "ndmi")].iloc[0]
    assert row["mean"] == pytest.approx(ref["ndmi"]["mean"], abs=1e-9)
    assert row["count"] == ref["ndmi"]["count"]


def test_explicit_cloud_rule_on_scene_without_the_band_says_how_to_switch_off(
        tmp_path: Path, s2_archive) -> None:
    with pytest.raises(SpecError, match=r"cloud: null"):
        _run(tmp_path, s2_archive, masks={"nodata": True, "cloud": {"band": "scl", "exclude": [3, 8, 9, 10]}})


def test_resolution_20m_equals_rasterio_nearest_onto_the_20m_grid(tmp_path: Path, s2_archive) -> None:
    _, df = _run(tmp_path, s2_archive, resolution=20.0, indices={"ndmi": "builtin"}, bands=[])
    scene = s2_archive["scenes"][1]
    geom = s2_archive["geoms"]["F3"]
    transform = rasterio.transform.from_origin(*ORIGIN, 20.0, 20.0)
    shape = (270, 270)
    v = _ndmi_on(scene.files, transform, shape)
    mask = geometry_mask([mapping(geom)], out_shape=shape, transform=transform, invert=True)
    vals = v[mask]
    vals = vals[np.isfinite(vals)]
    row = df[(df.field_id == "F3") & (df.scene_id == scene.scene_id) & (df.variable == "ndmi")].iloc[0]
    assert row["count"] == len(vals)
    assert row["mean"] == pytest.approx(float(vals.mean()), abs=1e-9)


def test_baselines_keep_a_constant_reflectance_series_continuous(tmp_path: Path) -> None:
    """The same physical reflectance before and after 2022-01-25 (DN differ by 1000) gives
    the same NDVI: the offset is applied per acquisition date."""
    root = tmp_path / "cogs"
    first = make_s2_scene_folder(root, dt.date(2022, 1, 10), size_10m=240,
                                 bands=("B04", "B08", "SCL"), seed=7, cloud_fraction=0.0)
    second = make_s2_scene_folder(root, dt.date(2022, 2, 9), size_10m=240, bands=("B04", "B08", "SCL"),
                                  seed=7, reflectance=first.reflectance, cloud_fraction=0.0)
    with rasterio.open(first.files["B04"]) as a, rasterio.open(second.files["B04"]) as b:
        da, db = a.read(1).astype(int), b.read(1).astype(int)
    valid = da > 0
    assert np.all(db[valid] - da[valid] == 1000)  # raw DN jump at the baseline change
    repo = tmp_path / "repo"
    assert ingest(str(root), str(repo), pattern="{scene}/{band}.tif").ok
    fields = tmp_path / "fields.geojson"
    x0, y0 = ORIGIN
    gpd.GeoDataFrame({"id": ["A", "B"]}, geometry=[box(x0 + 100, y0 - 900, x0 + 800, y0 - 200),
                                                   box(x0 + 1200, y0 - 2000, x0 + 2000, y0 - 1500)],
                     crs="EPSG:32633").to_crs("EPSG:4326").to_file(fields, driver="GeoJSON")
    spec = write_spec(tmp_path, repo=repo, fields=fields,
                      scenes={"start": "2022-01-01", "end": "2022-03-01"},
                      bands=["red"], stats=["mean", "count"], masks={"nodata": True, "cloud": None})
    df = read_table(run_job(spec, cluster="sync").outputs["stats"], None)
    for fid in ("A", "B"):
        for var in ("ndvi", "red"):
            a = df[(df.field_id == fid) & (df.scene_id == first.scene_id) & (df.variable == var)].iloc[0]
            b = df[(df.field_id == fid) & (df.scene_id == second.scene_id) & (df.variable == var)].iloc[0]
            assert a["count"] == b["count"] > 0
            assert b["mean"] == pytest.approx(a["mean"], abs=1e-12), (fid, var)


def test_pixel_rollup_reads_every_band_whatever_its_tile_size(tmp_path: Path, s2_archive) -> None:
    """Rollups used one band's tile ids for every band: bands with other tile sizes were
    never read (their pixels stayed 0 = nodata). Here every band has its own tiling."""
    regions = tmp_path / "regions.geojson"
    x0, y0 = ORIGIN
    region = box(x0 + 600, y0 - 4700, x0 + 4900, y0 - 700)
    gpd.GeoDataFrame({"id": ["R1"]}, geometry=[region], crs="EPSG:32633").to_crs(
        "EPSG:4326").to_file(regions, driver="GeoJSON")
    spec = write_spec(tmp_path, repo=s2_archive["repo"], fields=s2_archive["fields"],
                      scenes={"start": "2023-06-01", "end": "2023-06-30"}, bands=[],
                      indices={"ndmi": "builtin"}, stats=["mean", "count"],
                      outputs={"dir": str(tmp_path / "out"),
                               "rollup": {"regions": {"path": str(regions), "id": "id"},
                                          "period": "month", "kinds": ["pixel"],
                                          "stats": ["mean", "min", "max", "count"]}})
    result = run_job(spec, cluster="sync")
    df = read_table(result.outputs["rollup"], None)
    row = df[(df.region_id == "R1") & (df.variable == "ndmi")].iloc[0]
    scene = s2_archive["scenes"][1]
    with rasterio.open(scene.files["B04"]) as src:
        transform, shape = src.transform, src.shape
    v = _ndmi_on(scene.files, transform, shape)
    mask = geometry_mask([mapping(region)], out_shape=shape, transform=transform, invert=True)
    vals = v[mask]
    vals = vals[np.isfinite(vals)]
    assert row["count"] == len(vals)
    assert row["mean"] == pytest.approx(float(vals.mean()), abs=1e-9)
    assert row["min"] == pytest.approx(float(vals.min()), abs=1e-12)


def test_grids_that_do_not_align_are_refused_naming_both_files(tmp_path: Path) -> None:
    root = tmp_path / "cogs"
    ok = make_s2_scene_folder(root, dt.date(2023, 5, 1), size_10m=120, bands=("B04", "B08"))
    shifted = make_s2_scene_folder(root, dt.date(2023, 5, 11), size_10m=120, bands=("B04",))
    make_s2_scene_folder(root, dt.date(2023, 5, 11), size_10m=120, bands=("B11",),
                         origin=(ORIGIN[0] + 5.0, ORIGIN[1]))  # half a 10 m pixel off
    odd = make_s2_scene_folder(root, dt.date(2023, 5, 21), size_10m=120, bands=("B04",))
    with rasterio.open(odd.files["B04"]) as src:
        profile = src.profile
    data = np.ones((80, 80), np.uint16)
    profile.update(width=80, height=80, transform=rasterio.transform.from_origin(*ORIGIN, 15.0, 15.0),
                   driver="GTiff", tiled=True, blockxsize=64, blockysize=64)
    with rasterio.open(odd.folder / "B11.tif", "w", **profile) as dst:
        dst.write(data, 1)
    utm34 = make_s2_scene_folder(root, dt.date(2023, 5, 31), size_10m=120, bands=("B04",))
    make_s2_scene_folder(root, dt.date(2023, 5, 31), size_10m=120, bands=("B11",), crs="EPSG:32634")
    report = ingest(str(root), str(tmp_path / "repo"), pattern="{scene}/{band}.tif")
    failed = {Path(f.url).parent.name + "/" + Path(f.url).name: f.reason for f in report.by_status("failed")}
    assert set(failed) == {f"{s.scene_id}/{b}.tif" for s in (shifted, odd, utm34) for b in ("B04", "B11")}
    for reason in failed.values():
        assert "do not align" in reason and "B04.tif" in reason and "B11.tif" in reason
    assert "not on a pixel edge" in failed[f"{shifted.scene_id}/B11.tif"]
    assert "not an integer multiple" in failed[f"{odd.scene_id}/B11.tif"]
    assert "different CRS" in failed[f"{utm34.scene_id}/B11.tif"]
    assert {f.scene_id for f in report.by_status("ingested")} == {ok.scene_id}


def test_landsat_c2_l2_end_to_end(tmp_path: Path) -> None:
    root = tmp_path / "landsat"
    files = make_landsat_scene(root, dt.date(2025, 3, 15), size=200)
    repo = tmp_path / "repo"
    report = ingest(str(root), str(repo), product="landsat-c2l2")
    assert report.ok, report.to_dict()
    scene = resolve_snapshot(str(repo), None).catalog().scenes()[0]
    assert (scene.band("red").scale, scene.band("red").offset) == (2.75e-5, -0.2)
    assert scene.datetime.date() == dt.date(2025, 3, 15)
    x0, y0 = ORIGIN
    geom = box(x0 + 700, y0 - 4100, x0 + 3950, y0 - 1230)
    fields = tmp_path / "fields.geojson"
    gpd.GeoDataFrame({"id": ["L1"]}, geometry=[geom], crs="EPSG:32633").to_crs(
        "EPSG:4326").to_file(fields, driver="GeoJSON")
    spec = write_spec(tmp_path, repo=repo, fields=fields, bands=[], stats=["mean", "median", "count"])
    df = read_table(run_job(spec, cluster="sync").outputs["stats"], None)
    row = df[df.variable == "ndvi"].iloc[0]
    with rasterio.open(files["SR_B4"]) as a, rasterio.open(files["SR_B5"]) as b, \
            rasterio.open(files["QA_PIXEL"]) as q:
        red, nir, qa = a.read(1), b.read(1), q.read(1)
        transform = a.transform
    r, n = red * 2.75e-5 - 0.2, nir * 2.75e-5 - 0.2
    with np.errstate(all="ignore"):
        v = (n - r) / (n + r)
    cloudy = (qa.astype(int) & 0b11110) != 0
    v[(red == 0) | (nir == 0) | cloudy] = np.nan
    mask = geometry_mask([mapping(geom)], out_shape=red.shape, transform=transform, invert=True)
    vals = v[mask]
    vals = vals[np.isfinite(vals)]
    assert cloudy[mask].any() and len(vals) > 0
    assert row["count"] == len(vals)
    assert row["mean"] == pytest.approx(float(vals.mean()), abs=1e-9)
    assert row["median"] == pytest.approx(float(np.median(vals)), abs=1e-9)
    assert bool(row["cloud_masked"])


def test_pqb_scenes_json_shows_grids_and_scale_offset(s2_archive) -> None:
    import json

    from click.testing import CliRunner

    from pixelquery_batch.cli import main

    res = CliRunner().invoke(main, ["scenes", "--repo", str(s2_archive["repo"]), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["scenes"]
    s23 = next(r for r in rows if r["scene_id"] == s2_archive["scenes"][1].scene_id)
    info = {b["name"]: b for b in s23["band_info"]}
    assert info["red"]["offset"] == -0.1 and "baseline" in info["red"]["scale_source"]
    assert info["swir16"]["resolution"] == 20.0 and info["coastal"]["resolution"] == 60.0
    assert s23["crs"] == "EPSG:32633"
    table = CliRunner().invoke(main, ["scenes", "--repo", str(s2_archive["repo"])])
    assert "10: blue,red,nir | 20: swir16,nir08,scl | 60: coastal" in table.output
    assert "x0.0001 -0.1 (profile sentinel2-l2a: processing baseline" in table.output


def test_open_scene_gives_each_grid_its_coordinates(s2_archive) -> None:
    from pixelquery_batch.catalog.reader import open_scene

    scene = s2_archive["scenes"][1]
    ds = open_scene(s2_archive["repo"], scene.scene_id, bands=["red", "swir16", "scl", "coastal"])
    assert ds["red"].dims == ("y", "x") and ds["swir16"].dims == ("y_20m", "x_20m")
    assert ds["coastal"].dims == ("y_60m", "x_60m")
    for name, key in (("red", "B04"), ("swir16", "B11"), ("coastal", "B01")):
        with rasterio.open(scene.files[key]) as src:
            np.testing.assert_array_equal(ds[name].values, src.read(1))
            xdim, ydim = ds[name].dims[1], ds[name].dims[0]
            assert ds[xdim].values[0] == pytest.approx(src.xy(0, 0)[0])
            assert ds[ydim].values[-1] == pytest.approx(src.xy(src.height - 1, 0)[1])


def test_coarse_bands_read_only_the_chunks_fields_need(s2_archive) -> None:
    """The 20 m chunks fetched for a field are exactly the 20 m tiles holding its pixels:
    here those of its bounds (a box), computed independently with rasterio."""
    from pixelquery_batch.catalog.chunks import IcechunkChunkReader
    from pixelquery_batch.fields import prepare_fields
    from pixelquery_batch.planner import plan_job
    from pixelquery_batch.tasks import JobContext, run_unit

    ref = resolve_snapshot(str(s2_archive["repo"]), None)
    cat = ref.catalog().search(scene_ids=[s2_archive["scenes"][1].scene_id])
    geom = s2_archive["geoms"]["F3"]
    fields = prepare_fields(gpd.GeoDataFrame({"id": ["F3"]}, geometry=[geom], crs="EPSG:32633"))
    plan = plan_job(cat, fields, bands=("nir", "swir16"))
    (unit,) = plan.units

    class Recording(IcechunkChunkReader):
        def tiles(self, group, band, chunks, **kw):
            self.seen = getattr(self, "seen", set()) | {(band.name, tuple(c)) for c in chunks}
            return super().tiles(group, band, chunks, **kw)

    reader = Recording(ref.session())
    ctx = JobContext(repo=ref, job_hash="t", variables=(("ndmi", "(nir - swir16) / (nir + swir16)"),),
                     stats=("mean",))
    run_unit(unit, ctx, reader=reader)
    files = s2_archive["scenes"][1].files
    with rasterio.open(files["B04"]) as fine, rasterio.open(files["B11"]) as coarse:
        inside = geometry_mask([mapping(geom)], out_shape=fine.shape, transform=fine.transform,
                               invert=True)
        rows, cols = np.nonzero(inside)  # the field's 10 m pixels (centre rule)
        xs, ys = rasterio.transform.xy(fine.transform, rows, cols)  # their centres
        crow, ccol = rasterio.transform.rowcol(coarse.transform, xs, ys)  # 20 m pixel holding each
        by, bx = coarse.block_shapes[0]
    expected = {(int(r) // by, int(c) // bx) for r, c in zip(crow, ccol, strict=True)}
    assert {c for name, c in reader.seen if name == "swir16"} == expected
    assert len(expected) > 1
