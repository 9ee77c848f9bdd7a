"""Catalog search (time, bbox in other CRSs, product), STAC export, GDAL-free read path."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
import shapely
from shapely.geometry import box

from pixelquery_batch.catalog.ingest import ingest
from pixelquery_batch.catalog.models import Catalog
from pixelquery_batch.catalog.stac import catalog_to_collection, catalog_to_item_collection
from pixelquery_batch.catalog.store import resolve_snapshot
from pixelquery_batch.errors import CatalogError
from pixelquery_batch.geo import reproject_geometry
from pixelquery_batch.testing.catalogs import synthetic_scene_table

from .test_ingest import make_s2_scene


@pytest.fixture(scope="module")
def two_zone_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Scenes in UTM 33N and 34N, on three dates."""
    root = tmp_path_factory.mktemp("cat")
    make_s2_scene(root / "cogs", "2025-03-15", tile="33UXP", bands=("red", "nir"))
    make_s2_scene(root / "cogs", "2025-04-15", tile="33UXP", bands=("red", "nir"), seed=1)
    make_s2_scene(root / "cogs", "2025-04-15", tile="34UCU", bands=("red", "nir"), seed=2,
                  origin=(300000.0, 5300000.0), crs="EPSG:32634")
    repo = root / "repo"
    assert ingest(str(root / "cogs"), str(repo)).ok
    return repo


def test_time_filters(two_zone_repo: Path) -> None:
    cat = resolve_snapshot(two_zone_repo).catalog()
    assert len(cat) == 3
    assert cat.search(start="2025-04-01").ids == ["S2_33UXP_2025-04-15", "S2_34UCU_2025-04-15"]
    assert cat.search(end="2025-03-15").ids == ["S2_33UXP_2025-03-15"]  # a date end is the whole day
    assert cat.search(start=dt.date(2025, 3, 16), end=dt.date(2025, 4, 14)).ids == []
    assert len(cat.search(start=dt.datetime(2025, 3, 15, tzinfo=dt.UTC))) == 3


def test_bbox_search_in_lonlat_and_in_another_crs(two_zone_repo: Path) -> None:
    cat = resolve_snapshot(two_zone_repo).catalog()
    s33 = cat.get("S2_33UXP_2025-03-15")
    # a small box inside the 33N scene, given in UTM 33N
    minx, miny, _, _ = s33.footprint.bounds
    utm_box = (minx + 100, miny + 100, minx + 600, miny + 600)
    assert cat.search(bbox=utm_box, bbox_crs="EPSG:32633").ids == ["S2_33UXP_2025-03-15", "S2_33UXP_2025-04-15"]
    # the same box in lon/lat, and in Web Mercator
    ll = reproject_geometry(box(*utm_box), "EPSG:32633", "EPSG:4326").bounds
    assert cat.search(bbox=ll).ids == ["S2_33UXP_2025-03-15", "S2_33UXP_2025-04-15"]
    merc = reproject_geometry(box(*utm_box), "EPSG:32633", "EPSG:3857").bounds
    assert len(cat.search(bbox=merc, bbox_crs="EPSG:3857")) == 2
    # the 34N scene, found from a box in its own CRS
    s34 = cat.get("S2_34UCU_2025-04-15")
    bx = s34.footprint.bounds
    assert cat.search(bbox=(bx[0] + 50, bx[1] + 50, bx[0] + 70, bx[1] + 70), bbox_crs="EPSG:32634").ids == ["S2_34UCU_2025-04-15"]
    # far away: nothing
    assert cat.search(bbox=(100.0, 10.0, 101.0, 11.0)).ids == []
    with pytest.raises(CatalogError, match="invalid bbox"):
        cat.search(bbox=(2.0, 0.0, 1.0, 1.0))


def test_footprints_match_independent_rasterio_bounds(two_zone_repo: Path, tmp_path: Path) -> None:
    import rasterio
    from rasterio.warp import transform_bounds

    cat = resolve_snapshot(two_zone_repo).catalog()
    for scene in cat.scenes():
        src = scene.bands[0].source[len("file://"):]
        with rasterio.open(src) as r:
            assert scene.footprint.bounds == pytest.approx(tuple(r.bounds))
            ll = transform_bounds(r.crs, "EPSG:4326", *r.bounds, densify_pts=21)
        assert scene.footprint_lonlat.bounds == pytest.approx(ll, abs=1e-6)


def test_product_filter_and_records(two_zone_repo: Path) -> None:
    cat = resolve_snapshot(two_zone_repo).catalog()
    assert len(cat.search(product="sentinel2-l2a")) == 3
    assert len(cat.search(product="landsat-c2l2")) == 0
    rec = cat.search(start="2025-03-15", end="2025-03-15").to_records()[0]
    assert rec["crs"] == "EPSG:32633" and rec["bands"] == ["nir", "red"]
    json.dumps(rec)


def test_stac_collection_is_valid(two_zone_repo: Path) -> None:
    import pystac
    from pystac.validation import validate_dict

    cat = resolve_snapshot(two_zone_repo).catalog()
    out = catalog_to_item_collection(cat)
    assert len(out["features"]) == 3
    for d in out["features"]:
        assert d["properties"]["proj:code"].startswith("EPSG:326")
        assert len(d["properties"]["proj:transform"]) == 6
        assert d["properties"]["pixelquery:snapshot_id"] == cat.snapshot_id
        assert set(d["assets"]) == {"red", "nir"}
        assert d["assets"]["red"]["href"].startswith("file:///")
        # core-schema validation with pystac's bundled schemas (extension schemas would
        # need the network, so they are checked field by field above)
        validate_dict({**d, "stac_extensions": []})
        assert pystac.Item.from_dict(d).id == d["id"]
    validate_dict({**out["collection"], "stac_extensions": []})
    assert pystac.ItemCollection.from_dict(out).items[0].id == "S2_33UXP_2025-03-15"
    assert len(list(catalog_to_collection(cat).get_items())) == 3


def test_search_is_exact_on_a_large_table() -> None:
    table = synthetic_scene_table(2000)
    cat = Catalog(table)
    bbox = (5.0, 45.0, 6.0, 46.0)
    start, end = dt.datetime(2021, 1, 1, tzinfo=dt.UTC), dt.datetime(2022, 1, 1, tzinfo=dt.UTC)
    got = set(cat.search(bbox=bbox, start=start, end=end).ids)
    # brute force, row by row
    want = set()
    q = box(*bbox)
    for r in table.to_pylist():
        if start <= r["datetime"] <= end and shapely.from_wkb(r["footprint_lonlat_wkb"]).intersects(q):
            want.add(r["scene_id"])
    assert got == want and len(want) > 0


_NO_GDAL = """
import sys
from pixelquery_batch.catalog.reader import open_scene
ds = open_scene(sys.argv[1], sys.argv[2])
float(ds[list(ds.data_vars)[0]].isel(y=slice(0, 10), x=slice(0, 10)).values.sum())
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('rasterio', 'osgeo', 'fiona'))
print(bad)
assert not bad, bad
"""


def test_open_scene_path_never_imports_gdal(two_zone_repo: Path) -> None:
    out = subprocess.run([sys.executable, "-c", _NO_GDAL, str(two_zone_repo), "S2_33UXP_2025-03-15"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_cloud_cover_is_computed_at_ingest(sample_small, sample_repo) -> None:
    import numpy as np
    import rasterio

    from .reference import cogs_by_date

    cat = resolve_snapshot(sample_repo).catalog()
    for scene_id, cog in cogs_by_date(sample_small.cog_dir).items():
        with rasterio.open(cog["scl"]) as src:
            scl = src.read(1)
        valid = scl != 0
        want = 100.0 * (np.isin(scl, (3, 8, 9, 10)) & valid).sum() / valid.sum()
        assert cat.get(scene_id).cloud_cover == pytest.approx(want, abs=1e-9)
    covers = sorted(s.cloud_cover for s in cat.scenes())
    limit = (covers[0] + covers[-1]) / 2
    kept = cat.search(max_cloud=limit)
    assert 0 < len(kept) < len(cat)
    assert all(s.cloud_cover <= limit for s in kept.scenes())
