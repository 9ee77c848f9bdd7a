"""Fields files: ids, geometry checks and repairs, any CRS and format."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pytest
from shapely.geometry import LineString, MultiPolygon, Polygon, box

from pixelquery_batch import read_table
from pixelquery_batch.api import run_job
from pixelquery_batch.errors import InputDataError
from pixelquery_batch.fields import load_fields

from .conftest import write_spec

BOWTIE = Polygon([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)])  # self-intersecting


def _write(tmp_path: Path, rows: list[dict], name: str = "f.geojson", crs: str = "EPSG:4326") -> Path:
    gdf = gpd.GeoDataFrame(rows, geometry=[r.pop("geometry") for r in rows], crs=crs)
    path = tmp_path / name
    if name.endswith(".parquet"):
        gdf.to_parquet(path)
    else:
        gdf.to_file(path)
    return path


def test_ids_must_be_unique_and_present(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"id": "a", "geometry": box(0, 0, 1, 1)}, {"id": "a", "geometry": box(1, 1, 2, 2)},
                             {"id": "b", "geometry": box(2, 2, 3, 3)}])
    with pytest.raises(InputDataError, match=r"duplicate field ids 'a'"):
        load_fields(path)
    with pytest.raises(InputDataError, match=r"no id column 'parcel'.*set fields.id to one of \['id'\]"):
        load_fields(path, id_column="parcel")
    path = _write(tmp_path, [{"id": None, "geometry": box(0, 0, 1, 1)}, {"id": "b", "geometry": box(1, 1, 2, 2)}],
                  name="g.geojson")
    with pytest.raises(InputDataError, match="without an id"):
        load_fields(path)


def test_invalid_geometries_rejected_with_ids_or_repaired(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"id": "ok", "geometry": box(0, 0, 1, 1)}, {"id": "bowtie", "geometry": BOWTIE}])
    with pytest.raises(InputDataError, match=r"invalid geometries for ids 'bowtie'.*fix_invalid"):
        load_fields(path)
    fixed = load_fields(path, fix_invalid=True)
    geom = fixed.set_index("field_id").geometry["bowtie"]
    assert geom.is_valid
    assert geom.area == pytest.approx(0.5)


def test_non_polygons_and_formats(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"id": "l", "geometry": LineString([(0, 0), (1, 1)])}])
    with pytest.raises(InputDataError, match="must be polygons"):
        load_fields(path)
    multi = MultiPolygon([box(0, 0, 1, 1), box(2, 2, 3, 3)])
    holed = Polygon(box(0, 0, 10, 10).exterior.coords, [box(4, 4, 6, 6).exterior.coords])
    pq = _write(tmp_path, [{"id": 7, "geometry": multi}, {"id": 8, "geometry": holed}], name="f.parquet",
                crs="EPSG:32633")
    f = load_fields(pq)
    assert list(f.field_id) == ["7", "8"]
    assert f.crs.to_epsg() == 32633
    with pytest.raises(InputDataError, match="not found"):
        load_fields(tmp_path / "nope.geojson")


def test_sub_pixel_field_gives_count_zero_and_a_warning(tmp_path: Path, sample_small, sample_repo) -> None:
    fields = gpd.read_file(sample_small.fields_path)
    centre = fields.to_crs(32633).geometry.iloc[5].centroid
    # a 3 m square placed between pixel centres (pixel centres are at 5 m offsets)
    x0 = (centre.x // 10) * 10 + 1
    y0 = (centre.y // 10) * 10 + 1
    tiny = gpd.GeoDataFrame({"id": ["tiny"]}, geometry=[box(x0, y0, x0 + 3, y0 + 3)], crs="EPSG:32633")
    path = tmp_path / "tiny.gpkg"
    tiny.to_file(path)
    spec = write_spec(tmp_path, repo=sample_repo, fields=path)
    result = run_job(spec, cluster="sync")
    assert any(w["field_id"] == "tiny" and "no pixel" in w["warning"] for w in result.manifest["warnings"])

    df = read_table(result.outputs["stats"], None)
    assert (df["count"] == 0).all()
    assert (df["pixel_count"] == 0).all()
    # with all_touched the same field gets its one pixel
    spec = write_spec(tmp_path, repo=sample_repo, fields=path, pixels="all_touched")
    df = read_table(run_job(spec, cluster="sync").outputs["stats"], None)
    assert (df["pixel_count"] == 1).all()


@pytest.mark.parametrize("name", ["f.geojson", "f.gpkg", "f.fgb", "f.parquet", "f.shp"])
def test_count_features_sizes_any_format(name, tmp_path) -> None:
    from pixelquery_batch.fields import count_features

    gdf = gpd.GeoDataFrame({"id": [f"a{i}" for i in range(7)]},
                           geometry=[box(i, 0, i + 1, 1) for i in range(7)], crs="EPSG:32633")
    path = tmp_path / name
    if name.endswith(".parquet"):
        gdf.to_parquet(path)
    else:
        gdf.to_file(path)
    assert count_features(path) == len(load_fields(path)) == 7


def test_count_features_cannot_tell(tmp_path) -> None:
    from pixelquery_batch.fields import count_features

    assert count_features(tmp_path / "missing.gpkg") is None
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    assert count_features(tmp_path / "bad.parquet") is None
