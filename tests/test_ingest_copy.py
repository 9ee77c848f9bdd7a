"""Ways in for files virtual references cannot serve, and CRSs without an EPSG code.

Expected values come from rasterio reads of the source files (and geometry_mask), never
from the engine.
"""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from pyproj import CRS
from rasterio.features import geometry_mask
from shapely.geometry import box, mapping

from pixelquery_batch import read_table
from pixelquery_batch.catalog.ingest import ingest
from pixelquery_batch.catalog.reader import open_scene
from pixelquery_batch.catalog.stac import catalog_to_item_collection
from pixelquery_batch.catalog.store import resolve_snapshot
from pixelquery_batch.pipeline import run_job
from pixelquery_batch.testing.cogs import (
    ALBERS_GRS80_PROJ,
    make_flavour,
    make_striped_partial,
    make_wkt_crs_raster,
)

from .conftest import write_spec

COPYABLE = ("jpeg_ycbcr", "jpeg_rgb", "striped_partial", "bigendian_pred2", "sparse")


def _rasterio_pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.fixture(scope="module")
def legacy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("legacy")
    for name in COPYABLE:
        make_flavour(d / f"{name}_2024-05-01.tif", name)
    make_striped_partial(d / "rasterstats_like_2024-05-01.tif")  # 78 rows in strips of 24
    return d


def test_without_the_flag_they_are_refused_naming_the_flag(tmp_path: Path, legacy_dir: Path) -> None:
    report = ingest(str(legacy_dir), str(tmp_path / "repo"), product="multiband")
    failed = report.by_status("failed")
    assert len(failed) == len(COPYABLE) + 1
    for f in failed:
        assert "--copy-unsupported" in (f.reason or ""), f.reason
    assert report.snapshot_id is None


def test_copied_files_read_back_equal_to_rasterio(tmp_path: Path, legacy_dir: Path) -> None:
    repo = tmp_path / "repo"
    report = ingest(str(legacy_dir), str(repo), product="multiband", copy_unsupported=True)
    assert report.ok, report.to_dict()
    assert len(report.copied) == len(COPYABLE) + 1
    for f in report.copied:
        assert f.copied_bytes > 0 and "copied into the repository" in (f.reason or "")
        assert report.to_dict()["copied"]["bytes"] >= f.copied_bytes
    ref = resolve_snapshot(str(repo), None)
    cat = ref.catalog()
    assert len(cat) == len(COPYABLE) + 1
    for scene in cat.scenes():
        src = Path(scene.sources[0][len("file://"):])
        expected = _rasterio_pixels(src)
        assert all(b.copied for b in scene.bands)
        ds = open_scene(ref, scene.scene_id)
        got = np.stack([ds[b.name].values for b in scene.bands])
        assert got.dtype == expected.dtype
        assert np.array_equal(got, expected), scene.scene_id
        with rasterio.open(src) as s:
            assert scene.transform == pytest.approx(tuple(s.transform)[:6])
    # a rerun recognises the copied files as unchanged (same fingerprints)
    again = ingest(str(legacy_dir), str(repo), product="multiband", copy_unsupported=True)
    assert again.counts()["unchanged"] == len(COPYABLE) + 1 and again.snapshot_id is None


def test_copied_striped_raster_statistics_equal_rasterio(tmp_path: Path) -> None:
    """python-rasterstats-like data (78 rows in strips of 24) through a whole job."""
    src = tmp_path / "cogs"
    src.mkdir()
    path = make_striped_partial(src / "slope_2024-05-01.tif", dtype="float32")
    repo = tmp_path / "repo"
    assert ingest(str(src), str(repo), product="multiband", bands=["slope"],
                  copy_unsupported=True).ok
    with rasterio.open(path) as s:
        data, transform, crs, nodata = s.read(1), s.transform, s.crs, s.nodata
    b = rasterio.transform.array_bounds(*data.shape, transform)
    geom = box(b[0] + (b[2] - b[0]) * 0.21, b[1] + (b[3] - b[1]) * 0.13,
               b[0] + (b[2] - b[0]) * 0.77, b[1] + (b[3] - b[1]) * 0.69)
    fields = tmp_path / "fields.geojson"
    gpd.GeoDataFrame({"id": ["P"]}, geometry=[geom], crs=crs).to_crs("EPSG:4326").to_file(fields)
    spec = write_spec(tmp_path, repo=repo, fields=fields, bands=["slope"], indices={},
                      scenes={"start": "2024-01-01", "end": "2024-12-31"},
                      stats=["mean", "count"], masks={"nodata": True, "cloud": None})
    df = read_table(run_job(spec, cluster="sync").outputs["stats"], None)
    geom_native = gpd.GeoSeries([geom], crs=crs).iloc[0]
    mask = geometry_mask([mapping(geom_native)], out_shape=data.shape, transform=transform, invert=True)
    vals = data[mask & (data != nodata)].astype(np.float64)
    row = df.iloc[0]
    assert row["count"] == len(vals) > 0
    assert row["mean"] == pytest.approx(float(vals.mean()), abs=1e-9)


@pytest.mark.parametrize("flavor", ["STANDARD", "ESRI_PE"])
def test_wkt_only_crs_ingests_and_fields_are_reprojected_to_it(tmp_path: Path, flavor: str) -> None:
    src = tmp_path / "cogs"
    src.mkdir()
    path = make_wkt_crs_raster(src / "albers_2024-07-01.tif", keys_flavor=flavor, dtype="float32",
                               nodata=-9999.0)
    repo = tmp_path / "repo"
    report = ingest(str(src), str(repo), product="multiband", bands=["elev"])
    assert report.ok, report.to_dict()
    scene = resolve_snapshot(str(repo), None).catalog().scenes()[0]
    with rasterio.open(path) as s:
        data, transform, rcrs, nodata = s.read(1), s.transform, s.crs, s.nodata
    assert scene.crs_epsg is None
    assert CRS.from_wkt(scene.crs_wkt).equals(CRS.from_wkt(rcrs.to_wkt()))
    # fields given in lon/lat and in the same WKT CRS both land on the right pixels
    b = rasterio.transform.array_bounds(*data.shape, transform)
    geom = box(b[0] + 1234.0, b[1] + 2345.0, b[0] + 7321.0, b[1] + 6789.0)
    fields = tmp_path / "fields.geojson"
    gpd.GeoDataFrame({"id": ["W"]}, geometry=[geom], crs=ALBERS_GRS80_PROJ).to_crs(
        "EPSG:4326").to_file(fields)
    spec = write_spec(tmp_path, repo=repo, fields=fields, bands=["elev"], indices={},
                      scenes={"start": "2024-01-01", "end": "2024-12-31"},
                      stats=["mean", "count"], masks={"nodata": True, "cloud": None})
    row = read_table(run_job(spec, cluster="sync").outputs["stats"], None).iloc[0]
    mask = geometry_mask([mapping(geom)], out_shape=data.shape, transform=transform, invert=True)
    vals = data[mask & (data != nodata)].astype(np.float64)
    # the lon/lat round trip may move a vertex by a hair: counts can differ only on the edge
    assert abs(row["count"] - len(vals)) <= 0.02 * len(vals)
    assert row["mean"] == pytest.approx(float(vals.mean()), rel=1e-3)
    # the STAC output names the CRS by its WKT2/PROJJSON (no EPSG code exists)
    item = catalog_to_item_collection(resolve_snapshot(str(repo), None).catalog())["features"][0]
    props = item["properties"]
    assert props.get("proj:code") is None and props.get("proj:epsg") is None
    assert "proj:wkt2" in props and CRS.from_wkt(props["proj:wkt2"]).equals(CRS.from_wkt(rcrs.to_wkt()))
    assert not math.isnan(item["bbox"][0])


def test_file_scale_offset_metadata_wins_over_the_profile(tmp_path: Path) -> None:
    from pixelquery_batch.testing.cogs import make_scale_offset_raster

    src = tmp_path / "cogs"
    src.mkdir()
    make_scale_offset_raster(src / "one_2024-05-01.tif", scales=(2e-4,), offsets=(-0.5,))
    make_scale_offset_raster(src / "two_2024-05-01.tif", scales=(1e-3, 2e-3), offsets=(0.1, 0.2))
    repo = tmp_path / "repo"
    assert ingest(str(src), str(repo), product="multiband").ok
    cat = resolve_snapshot(str(repo), None).catalog()
    one = cat.get("one_2024-05-01").bands[0]
    assert (one.scale, one.offset) == (2e-4, -0.5) and one.scale_source.startswith("file")
    two = cat.get("two_2024-05-01").bands
    with rasterio.open(src / "two_2024-05-01.tif") as s:  # per band, as GDAL reports them
        assert [(b.scale, b.offset) for b in two] == list(zip(s.scales, s.offsets, strict=True))
