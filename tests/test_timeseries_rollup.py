"""Time series, composites, point series and region rollups, checked against independent
computations (rasterio reads + numpy/pandas), including overlapping tiles on one day."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.features import geometry_mask
from shapely.geometry import Point, box, mapping

from pixelquery_batch import read_table
from pixelquery_batch.api import run_job
from pixelquery_batch.catalog.ingest import ingest
from pixelquery_batch.errors import InputDataError, SpecError
from pixelquery_batch.testing.cogs import make_cog

from .conftest import write_spec
from .reference import (
    cogs_by_date,
    field_scene_values,
    reference_stats,
    region_pixels,
    scale_offset,
    scene_date,
    scene_variable,
)

SCALE, OFFSET = 1e-4, -0.1  # the hand-made 2025 tiles below (processing baseline >= 04.00)


def table(path: Path) -> pd.DataFrame:
    return read_table(path, None)


# --------------------------------------------------------------------------- field time series


def test_monthly_timeseries_matches_pandas_over_the_reference(sample_small, sample_repo, tmp_path) -> None:
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path, bands=["red"],
                      scenes={"start": "2021-11-01", "end": "2022-04-30"},
                      outputs={"dir": str(tmp_path / "out"), "stats": None,
                               "timeseries": {"period": "month", "aggregation": "mean"}})
    got = table(run_job(spec, cluster="sync").outputs["timeseries"])
    # independent per-scene reference, then a plain pandas monthly mean
    fields = gpd.read_file(sample_small.fields_path)
    cogs = cogs_by_date(sample_small.cog_dir)
    rows = []
    for _, f in fields.iterrows():
        for scene_id, cog in cogs.items():
            ref = field_scene_values(f.geometry, cog, {"ndvi": "ndvi", "red": "red"})
            if ref["red"][1] == 0:
                continue
            for var, (vals, total, _) in ref.items():
                st = reference_stats(vals, total)
                rows.append({"field_id": f["id"], "variable": var, "date": pd.Timestamp(scene_date(scene_id)),
                             "mean": st["mean"], "count": st["count"]})
    ref = pd.DataFrame(rows)
    ref["month"] = ref["date"].dt.to_period("M")
    valid = ref[ref["count"] > 0]
    agg = valid.groupby(["field_id", "variable", "month"]).agg(mean=("mean", "mean"), count=("count", "sum"),
                                                               n_scenes=("date", "nunique")).reset_index()
    got["month"] = got["period_start"].dt.tz_convert(None).dt.to_period("M")
    # every field x variable has a row for each of the 6 months: gaps are explicit
    assert (got.groupby(["field_id", "variable"]).size() == 6).all()
    merged = got.merge(agg, on=["field_id", "variable", "month"], how="left", suffixes=("", "_ref"))
    observed = merged["count_ref"].notna()
    assert observed.sum() == len(agg) > 0
    np.testing.assert_allclose(merged.loc[observed, "mean"], merged.loc[observed, "mean_ref"], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(merged.loc[observed, "count"], merged.loc[observed, "count_ref"])
    np.testing.assert_array_equal(merged.loc[observed, "n_scenes"], merged.loc[observed, "n_scenes_ref"])
    gaps = merged[~observed]
    assert (gaps["count"] == 0).all(), gaps[gaps["count"] != 0][["field_id", "variable", "month", "count", "mean"]]
    assert gaps["mean"].isna().all()
    assert set(gaps["month"].astype(str)) >= {"2021-11", "2022-03", "2022-04"}


def test_point_series_equal_rasterio_samples(sample_small, sample_repo, tmp_path) -> None:
    fields = gpd.read_file(sample_small.fields_path)
    pts = [fields.geometry.iloc[i].representative_point() for i in (0, 7, 15)]
    points = gpd.GeoDataFrame({"id": ["A", "B", "C"]}, geometry=pts, crs="EPSG:4326")
    points = pd.concat([points, gpd.GeoDataFrame({"id": ["FAR"]}, geometry=[Point(5, 45)], crs="EPSG:4326")])
    path = tmp_path / "points.geojson"
    points.to_file(path)
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path, points={"path": str(path)},
                      outputs={"dir": str(tmp_path / "out"), "stats": None})
    result = run_job(spec, cluster="sync")
    got = table(result.outputs["points"])
    assert set(got.point_id) == {"A", "B", "C"}
    assert result.manifest["points"]["plan"]["fields_outside_every_scene"] == ["FAR"]
    cogs = cogs_by_date(sample_small.cog_dir)
    for pid, geom in zip(["A", "B", "C"], pts, strict=True):
        for scene_id, cog in cogs.items():
            vals = {}
            for band in ("red", "nir", "scl"):
                with rasterio.open(cog[band]) as src:
                    x, y = gpd.GeoSeries([geom], crs="EPSG:4326").to_crs(src.crs).iloc[0].coords[0]
                    vals[band] = next(src.sample([(x, y)]))[0]
            row = got[(got.point_id == pid) & (got.scene_id == scene_id) & (got.variable == "red")].iloc[0]
            cloudy = vals["scl"] in (3, 8, 9, 10)  # SCL sampled on its own 20 m grid
            assert bool(row["cloud"]) == cloudy
            scale, offset = scale_offset(scene_id)  # baseline 04.00 from 2022-01-25
            if cloudy or vals["red"] == 0:
                assert math.isnan(row["value"])
            else:
                assert row["value"] == pytest.approx(vals["red"] * scale + offset, abs=1e-12)


# --------------------------------------------------------------------------- overlapping tiles


@pytest.fixture(scope="module")
def overlap(tmp_path_factory):
    """Three scenes on 2025-05-01: tile A (two passes, 10:00 and 10:05, with complementary
    nodata) and tile B, overlapping A by 100 px; plus one scene of A on 2025-05-20."""
    d = tmp_path_factory.mktemp("overlap")
    cogs = d / "cogs"
    cogs.mkdir()
    rng = np.random.default_rng(7)
    shape = (300, 300)

    def write(tile: str, when: str, origin_x: float, *, nodata_cols: slice | None = None, seed: int = 0):
        r = np.random.default_rng(seed)
        red = r.integers(1200, 2500, shape).astype("uint16")
        nir = r.integers(2500, 5500, shape).astype("uint16")
        scl = np.full(shape, 4, "uint8")
        scl[r.random(shape) < 0.05] = 9  # a few cloudy pixels
        if nodata_cols is not None:
            red[:, nodata_cols] = 0
            nir[:, nodata_cols] = 0
            scl[:, nodata_cols] = 0
        for band, arr in (("red", red), ("nir", nir), ("scl", scl)):
            make_cog(cogs / f"S2_{tile}_{when}_{band}.tif", shape_yx=shape, dtype=str(arr.dtype), data=arr[None],
                     origin_xy=(origin_x, 5300000.0), predictor=2, nodata=0, nodata_block=False, blocksize=128)

    write("AAAAA", "20250501T100000", 600000.0, nodata_cols=slice(150, 300), seed=1)
    write("AAAAA", "20250501T100500", 600000.0, nodata_cols=slice(0, 100), seed=2)
    write("BBBBB", "20250501T100200", 602000.0, seed=3)
    write("AAAAA", "20250520T100000", 600000.0, seed=4)
    repo = d / "repo"
    report = ingest(str(cogs), str(repo), pattern="S2_{tile}_{datetime:%Y%m%dT%H%M%S}_{band}.tif")
    assert report.ok, report.to_dict()
    field = box(601505.0, 5297505.0, 603495.0, 5298995.0)  # spans the A/B overlap (x 602000-603000)
    region = box(600000.0, 5297000.0, 605000.0, 5300000.0)  # both tiles
    fields = gpd.GeoDataFrame({"id": ["F"]}, geometry=[field], crs="EPSG:32633")
    regions = gpd.GeoDataFrame({"id": ["R"]}, geometry=[region], crs="EPSG:32633")
    fields.to_crs("EPSG:4326").to_file(d / "fields.geojson")
    regions.to_crs("EPSG:4326").to_file(d / "regions.geojson")
    del rng
    return d


def _read(d: Path, tile: str, when: str):
    out = {}
    for band in ("red", "nir", "scl"):
        with rasterio.open(d / "cogs" / f"S2_{tile}_{when}_{band}.tif") as src:
            out[band] = src.read(1)
            transform = src.transform
    with np.errstate(all="ignore"):
        red = out["red"] * SCALE + OFFSET
        nir = out["nir"] * SCALE + OFFSET
        ndvi = (nir - red) / (nir + red)
    ndvi[(out["red"] == 0) | (out["nir"] == 0) | np.isin(out["scl"], (3, 8, 9, 10))] = np.nan
    return ndvi, transform


def _day_mosaic(d: Path) -> tuple[np.ndarray, rasterio.Affine]:
    """The 2025-05-01 NDVI on a 500 px wide lattice covering A and B: tile A's two passes
    merged first-valid (10:00 first), tile B only where A's footprint does not reach."""
    a1, ta = _read(d, "AAAAA", "20250501T100000")
    a2, _ = _read(d, "AAAAA", "20250501T100500")
    b, _ = _read(d, "BBBBB", "20250501T100200")
    a = np.where(np.isnan(a1), a2, a1)
    mosaic = np.full((300, 500), np.nan)
    mosaic[:, 200:500] = b
    mosaic[:, 0:300] = a  # A's footprint wins over B's
    return mosaic, ta


def test_same_day_tiles_are_merged_without_double_counting(overlap, tmp_path) -> None:
    spec = write_spec(tmp_path, repo=overlap / "repo", fields=overlap / "fields.geojson", bands=[],
                      indices={"ndvi": "builtin"}, stats=["mean", "std", "min", "max", "count", "valid_fraction"],
                      scenes={"start": "2025-05-01", "end": "2025-05-31"},
                      outputs={"dir": str(tmp_path / "out"), "stats": {"format": "parquet"},
                               "timeseries": {"period": "day", "aggregation": "mean"}})
    result = run_job(spec, cluster="sync")
    ts = table(result.outputs["timeseries"])
    day = ts[(ts.period_start.dt.strftime("%Y-%m-%d") == "2025-05-01") & (ts.variable == "ndvi")].iloc[0]
    mosaic, ta = _day_mosaic(overlap)
    field = gpd.read_file(overlap / "fields.geojson").to_crs("EPSG:32633").geometry.iloc[0]
    mask = geometry_mask([mapping(field)], out_shape=mosaic.shape, transform=ta, invert=True)
    vals = mosaic[mask]
    vals = vals[np.isfinite(vals)]
    assert mask[:, 200:300].any()  # the field does cross the overlap
    assert day["count"] == len(vals)
    assert day["mean"] == pytest.approx(vals.mean(), abs=1e-12)
    assert day["std"] == pytest.approx(vals.std(), abs=1e-12)
    assert day["min"] == vals.min()
    assert day["max"] == vals.max()
    # the per-scene table keeps every scene whole (three rows on that day)
    stats = table(result.outputs["stats"])
    assert len(stats[(stats.variable == "ndvi") & stats.scene_id.str.contains("20250501")]) == 3


def test_pixel_rollup_equals_a_single_pass(overlap, tmp_path) -> None:
    spec = write_spec(tmp_path, repo=overlap / "repo", fields=overlap / "fields.geojson", bands=[],
                      indices={"ndvi": "builtin"}, scenes={"start": "2025-05-01", "end": "2025-05-31"},
                      outputs={"dir": str(tmp_path / "out"), "stats": None,
                               "rollup": {"regions": {"path": str(overlap / "regions.geojson")},
                                          "period": "month",
                                          "stats": ["mean", "std", "min", "max", "median", "p10", "p90", "count"]}})
    got = table(run_job(spec, cluster="sync").outputs["rollup"]).iloc[0]
    mosaic, ta = _day_mosaic(overlap)
    region = gpd.read_file(overlap / "regions.geojson").to_crs("EPSG:32633").geometry.iloc[0]
    mask = geometry_mask([mapping(region)], out_shape=mosaic.shape, transform=ta, invert=True)
    later, _ = _read(overlap, "AAAAA", "20250520T100000")
    mask_a = mask[:, :300]
    vals = np.concatenate([mosaic[mask], later[mask_a]])
    vals = vals[np.isfinite(vals)]
    assert got["count"] == len(vals)
    assert got["n_scenes"] == 2  # two days observed
    assert got["mean"] == pytest.approx(vals.mean(), rel=1e-12)
    assert got["std"] == pytest.approx(vals.std(), rel=1e-9)
    assert got["min"] == vals.min()
    assert got["max"] == vals.max()
    bound = got["quantile_error_bound"]
    assert bound == pytest.approx(2 / 4000, rel=1e-6)
    for name, q in (("median", 0.5), ("p10", 0.1), ("p90", 0.9)):
        exact = np.quantile(vals, q, method="inverted_cdf")
        assert abs(got[name] - exact) <= bound, name


def test_pixel_rollup_on_the_sample_matches_numpy_and_a_cluster(sample_small, sample_repo, tmp_path) -> None:
    rollup = {"regions": {"path": str(sample_small.regions_path)}, "period": "month",
              "stats": ["mean", "std", "min", "max", "median", "count"]}
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path, bands=["red"],
                      indices={"ndvi": "builtin"}, scenes={"start": "2021-12-01", "end": "2022-02-28"},
                      outputs={"dir": str(tmp_path / "out"), "stats": None, "rollup": rollup})
    sync = table(run_job(spec, cluster="sync").outputs["rollup"])
    regions = gpd.read_file(sample_small.regions_path)
    cogs = cogs_by_date(sample_small.cog_dir)
    for _, reg in regions.iterrows():
        for var in ("ndvi", "red"):
            for month in ("2021-12", "2022-01", "2022-02"):
                vals = region_pixels(reg.geometry, cogs, month, var)
                row = sync[(sync.region_id == reg["id"]) & (sync.variable == var)
                           & (sync.period_start.dt.strftime("%Y-%m") == month)].iloc[0]
                assert row["count"] == len(vals)
                assert row["mean"] == pytest.approx(vals.mean(), rel=1e-12)
                assert row["std"] == pytest.approx(vals.std(), rel=1e-9)
                assert abs(row["median"] - np.quantile(vals, 0.5, method="inverted_cdf")) <= row["quantile_error_bound"]
    # the same table from a LocalCluster (tree reduction on the workers)
    dist = table(run_job(spec).outputs["rollup"])
    cols = ["region_id", "variable", "period_start", "count", "min", "max", "median", "n_scenes"]
    pd.testing.assert_frame_equal(sync[cols], dist[cols])
    np.testing.assert_allclose(sync["mean"], dist["mean"], rtol=1e-12)


def test_field_rollup_matches_pandas(sample_small, sample_repo, tmp_path) -> None:
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path, bands=[],
                      indices={"ndvi": "builtin"}, scenes={"start": "2021-12-01", "end": "2022-02-28"},
                      outputs={"dir": str(tmp_path / "out"), "stats": None,
                               "timeseries": {"period": "month", "aggregation": "mean"},
                               "rollup": {"regions": {"path": str(sample_small.regions_path)},
                                          "period": "month", "kinds": ["field"], "threshold": 0.4}})
    result = run_job(spec, cluster="sync")
    got = table(result.outputs["rollup_fields"])
    ts = table(result.outputs["timeseries"])
    fields = gpd.read_file(sample_small.fields_path).to_crs("EPSG:6933")
    regions = gpd.read_file(sample_small.regions_path).to_crs("EPSG:6933")
    region_of = {}
    for _, f in fields.iterrows():
        hits = regions[regions.contains(f.geometry.centroid)]
        region_of[f["id"]] = hits["id"].iloc[0] if len(hits) else None
    area = dict(zip(fields["id"], fields.area, strict=True))
    for (region_id, start), grp in got.groupby(["region_id", "period_start"]):
        members = [fid for fid, r in region_of.items() if r == region_id]
        rows = ts[(ts.period_start == start) & ts.field_id.isin(members) & (ts["count"] > 0)]
        row = grp.iloc[0]
        assert row["fields_total"] == len(members)
        assert row["fields_observed"] == len(rows)
        if len(rows):
            w = rows.field_id.map(area)
            assert row["area_weighted_mean"] == pytest.approx(np.average(rows["mean"], weights=w), rel=1e-9)
            assert row["share_above"] == pytest.approx((rows["mean"] > 0.4).mean())


def test_rollup_bad_input(sample_small, sample_repo, tmp_path) -> None:
    base = {"dir": str(tmp_path / "out"), "stats": None}
    rollup = {"regions": {"path": str(sample_small.regions_path)}, "period": "fortnightly"}
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path,
                      outputs={**base, "rollup": rollup})
    with pytest.raises(SpecError, match="fortnightly"):
        run_job(spec, cluster="sync")
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path,
                      outputs={**base, "rollup": {**rollup, "period": "month", "variables": ["ndwi"]}})
    with pytest.raises(SpecError, match="ndwi"):
        run_job(spec, cluster="sync")
    regions = gpd.read_file(sample_small.regions_path)
    dup = pd.concat([regions, regions.iloc[:1]])
    dup.to_file(tmp_path / "dup.geojson")
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path,
                      outputs={**base, "rollup": {"regions": {"path": str(tmp_path / "dup.geojson")}}})
    with pytest.raises(InputDataError, match="duplicate field ids 'R1'"):
        run_job(spec, cluster="sync")
    from shapely.geometry import Polygon

    bowtie = Polygon([(16.35, 47.76), (16.45, 47.84), (16.45, 47.76), (16.35, 47.84), (16.35, 47.76)])
    bad = pd.concat([regions, gpd.GeoDataFrame({"id": ["BOW"]}, geometry=[bowtie], crs="EPSG:4326")])
    bad.to_file(tmp_path / "bad.geojson")
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path,
                      outputs={**base, "rollup": {"regions": {"path": str(tmp_path / "bad.geojson")}}})
    with pytest.raises(InputDataError, match="invalid geometries for ids 'BOW'"):
        run_job(spec, cluster="sync")
    far = pd.concat([regions, gpd.GeoDataFrame({"id": ["FAR"]}, geometry=[box(5, 45, 5.1, 45.1)], crs="EPSG:4326")])
    far.to_file(tmp_path / "far.geojson")
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path,
                      outputs={**base, "rollup": {"regions": {"path": str(tmp_path / "far.geojson")}}})
    result = run_job(spec, cluster="sync")
    assert result.manifest["rollup"]["plan"]["regions_outside_every_scene"] == ["FAR"]
    rows = table(result.outputs["rollup"])
    assert (rows[rows.region_id == "FAR"]["count"] == 0).all()


@pytest.mark.parametrize("method", ["max_ndvi", "median"])
def test_composite_cog_matches_a_rasterio_warp_reference(method, sample_small, sample_repo, tmp_path) -> None:
    from rasterio.warp import Resampling, reproject

    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path, bands=[],
                      indices={"ndvi": "builtin"}, scenes={"start": "2021-12-01", "end": "2022-02-28"},
                      outputs={"dir": str(tmp_path / "out"), "stats": None,
                               "rollup": {"regions": {"path": str(sample_small.regions_path)},
                                          "period": "month", "kinds": [],
                                          "composite": {"crs": "EPSG:3035", "resolution": 20, "method": method}}})
    result = run_job(spec, cluster="sync")
    cogs = cogs_by_date(sample_small.cog_dir)
    regions = gpd.read_file(sample_small.regions_path)
    checked = 0
    for _, reg in regions.iterrows():
        for month in ("2021-12", "2022-01", "2022-02"):
            path = Path(result.outputs["composites"]) / f"{reg['id']}_{month}-01_ndvi_{method}.tif"
            if not path.exists():
                continue
            with rasterio.open(path) as src:
                got = src.read(1)
                t = src.transform
                assert src.crs.to_epsg() == 3035
                assert t.a == 20 and t.c % 20 == 0 and t.f % 20 == 0  # grid aligned to the resolution
            layers = []
            for scene_id, cog in cogs.items():
                if scene_date(scene_id).strftime("%Y-%m") != month:
                    continue
                v, src_crs, src_t = scene_variable(cog)
                dst = np.full(got.shape, np.nan)
                reproject(v, dst, src_transform=src_t, src_crs=src_crs, dst_transform=t, dst_crs="EPSG:3035",
                          resampling=Resampling.nearest, src_nodata=np.nan, dst_nodata=np.nan, tolerance=0)
                layers.append(dst)
            stack = np.stack(layers)
            if method == "median":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
                    want = np.nanmedian(stack, axis=0)
            else:
                score = np.where(np.isnan(stack), -np.inf, stack)
                idx = np.argmax(score, axis=0)
                want = np.take_along_axis(stack, idx[None], axis=0)[0]
            geom = gpd.GeoSeries([reg.geometry], crs="EPSG:4326").to_crs("EPSG:3035").iloc[0]
            inside = geometry_mask([mapping(geom)], out_shape=got.shape, transform=t, invert=True)
            want = np.where(inside, want, np.nan).astype(np.float32)
            np.testing.assert_array_equal(got, want)
            checked += 1
    assert checked >= 4


def test_absurd_composite_grid_is_refused_before_any_work(sample_small, sample_repo, tmp_path) -> None:
    from pixelquery_batch.errors import PlanError

    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path, bands=[],
                      indices={"ndvi": "builtin"},
                      outputs={"dir": str(tmp_path / "out"), "stats": None,
                               "rollup": {"regions": {"path": str(sample_small.regions_path)}, "kinds": [],
                                          "composite": {"crs": "EPSG:3035", "resolution": 0.01}}})
    with pytest.raises(PlanError, match=r"would be about [\d,]+ pixels"):
        run_job(spec, cluster="sync")
    assert not (tmp_path / "out" / "composites").exists()


def test_composite_from_two_utm_zones(tmp_path) -> None:
    """Scenes in UTM 33N and 34N around 18 E, composited on an EPSG:3035 grid, equal a
    rasterio.warp reference."""
    from pyproj import Transformer
    from rasterio.warp import Resampling, reproject

    cogs = tmp_path / "cogs"
    cogs.mkdir()
    lon0, lat0 = 18.0, 47.7
    for tile, epsg, day, seed in (("33UYP", 32633, "2025-05-03", 1), ("34UCU", 32634, "2025-05-09", 2)):
        x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon0, lat0)
        origin = (round(x / 10) * 10 - 1500.0, round(y / 10) * 10 + 1500.0)
        r = np.random.default_rng(seed)
        red = r.integers(1200, 2500, (300, 300)).astype("uint16")
        nir = r.integers(2500, 5500, (300, 300)).astype("uint16")
        scl = np.full((300, 300), 4, "uint8")
        for band, arr in (("red", red), ("nir", nir), ("scl", scl)):
            make_cog(cogs / f"S2_{tile}_{day}_{band}.tif", shape_yx=(300, 300), dtype=str(arr.dtype), data=arr[None],
                     origin_xy=origin, crs=f"EPSG:{epsg}", predictor=2, nodata=0, nodata_block=False)
    assert ingest(str(cogs), str(tmp_path / "repo")).ok
    region = box(lon0 - 0.012, lat0 - 0.008, lon0 + 0.012, lat0 + 0.008)
    gpd.GeoDataFrame({"id": ["R"]}, geometry=[region], crs="EPSG:4326").to_file(tmp_path / "regions.geojson")
    spec = write_spec(tmp_path, repo=tmp_path / "repo", fields=tmp_path / "regions.geojson", bands=[],
                      indices={"ndvi": "builtin"},
                      outputs={"dir": str(tmp_path / "out"), "stats": None,
                               "rollup": {"regions": {"path": str(tmp_path / "regions.geojson")}, "kinds": [],
                                          "composite": {"crs": "EPSG:3035", "resolution": 10, "method": "max_ndvi"}}})
    result = run_job(spec, cluster="sync")
    with rasterio.open(Path(result.outputs["composites"]) / "R_2025-05-01_ndvi_max_ndvi.tif") as src:
        got, t = src.read(1), src.transform
    layers = []
    for scene_id, cog in cogs_by_date(cogs).items():
        v, crs, transform = scene_variable(cog)
        dst = np.full(got.shape, np.nan)
        reproject(v, dst, src_transform=transform, src_crs=crs, dst_transform=t, dst_crs="EPSG:3035",
                  resampling=Resampling.nearest, src_nodata=np.nan, dst_nodata=np.nan, tolerance=0)
        layers.append(dst)
        assert np.isfinite(dst).any(), scene_id  # both zones contribute
    stack = np.stack(layers)
    idx = np.argmax(np.where(np.isnan(stack), -np.inf, stack), axis=0)
    want = np.take_along_axis(stack, idx[None], axis=0)[0]
    geom = gpd.GeoSeries([region], crs="EPSG:4326").to_crs("EPSG:3035").iloc[0]
    inside = geometry_mask([mapping(geom)], out_shape=got.shape, transform=t, invert=True)
    np.testing.assert_array_equal(got, np.where(inside, want, np.nan).astype(np.float32))
    assert np.isfinite(got).sum() > 0.5 * inside.sum()


def test_python_point_timeseries_equals_rasterio(sample_small, sample_repo) -> None:
    import pixelquery_batch as pqb

    fields = gpd.read_file(sample_small.fields_path)
    pt = fields.geometry.iloc[3].representative_point()
    df = pqb.timeseries(sample_repo, pt.x, pt.y, variables={"red": "red", "ndvi": "builtin"})
    cogs = cogs_by_date(sample_small.cog_dir)
    assert sorted(df.scene_id.unique()) == sorted(cogs)
    for scene_id, cog in cogs.items():
        vals = {}
        for band in ("red", "nir", "scl"):
            with rasterio.open(cog[band]) as src:
                x, y = gpd.GeoSeries([pt], crs="EPSG:4326").to_crs(src.crs).iloc[0].coords[0]
                vals[band] = float(next(src.sample([(x, y)]))[0])
        scale, offset = scale_offset(scene_id)
        red, nir = vals["red"] * scale + offset, vals["nir"] * scale + offset
        cloudy = vals["scl"] in (3, 8, 9, 10)
        row = df[(df.scene_id == scene_id) & (df.variable == "ndvi")].iloc[0]
        assert bool(row["cloud"]) == cloudy
        if cloudy:
            assert math.isnan(row["value"])
        else:
            assert row["value"] == pytest.approx((nir - red) / (nir + red), abs=1e-12)
    assert pqb.timeseries(sample_repo, 5.0, 45.0).empty


@pytest.mark.parametrize("period", ["scene", "P10D"])
def test_bucketed_compositing_equals_a_single_bucket(period, sample_small, sample_repo, tmp_path, monkeypatch) -> None:
    import pixelquery_batch.pipeline as pipeline

    outputs = {"stats": None, "timeseries": {"period": period, "aggregation": "median", "fill": "linear",
                                             "wide": True}}
    one = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path, out="one",
                     outputs={"dir": str(tmp_path / "one"), **outputs})
    first = run_job(one, cluster="sync")
    monkeypatch.setattr(pipeline, "_FIELDS_PER_BUCKET", 7)  # 40 fields -> 6 buckets
    many = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path, out="many",
                      outputs={"dir": str(tmp_path / "many"), **outputs})
    second = run_job(many, cluster="sync")
    assert len(list((tmp_path / "many" / "timeseries").iterdir())) > 1
    key = ["field_id", "variable", "period_start"]
    a = table(first.outputs["timeseries"]).sort_values(key).reset_index(drop=True)
    b = table(second.outputs["timeseries"]).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    wa = table(first.outputs["timeseries_wide"]).sort_values(["field_id", "variable"]).reset_index(drop=True)
    wb = table(second.outputs["timeseries_wide"]).sort_values(["field_id", "variable"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(wa, wb)
