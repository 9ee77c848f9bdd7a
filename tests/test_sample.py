"""Tests of the seeded sample-data generator (checked with rasterio/shapely/pyproj)."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon, box, shape

from pixelquery_batch.sample import (
    BANDS,
    CROPS,
    SCL_VALUES,
    SampleInfo,
    generate_sample,
    max_fields_for_size,
)

SIZE = 256
SCENES = 4
FIELDS = 12
INTERVAL = 45  # 2025-03-01, 04-15, 05-30, 07-14: spans the maize season
EXTENT_UTM = box(600_000.0, 5_300_000.0 - SIZE * 10, 600_000.0 + SIZE * 10, 5_300_000.0)
TO_UTM = Transformer.from_crs(4326, 32633, always_xy=True)


def _generate(out: Path, **kwargs: object) -> SampleInfo:
    args: dict[str, object] = {
        "scenes": SCENES,
        "size": SIZE,
        "fields": FIELDS,
        "interval_days": INTERVAL,
        "seed": 0,
    }
    args.update(kwargs)
    return generate_sample(out, **args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleInfo:
    return _generate(tmp_path_factory.mktemp("sample"))


def _read(info: SampleInfo, date: datetime.date, band: str) -> np.ndarray:
    path = info.cog_dir / info.pattern.format(tile=info.tile, date=date.isoformat(), band=band)
    with rasterio.open(path) as src:
        return src.read(1)


def _reflectance(dn: np.ndarray) -> np.ndarray:
    return dn.astype(np.float64) * 1e-4 - 0.1


def _utm(geom: shapely.Geometry) -> shapely.Geometry:
    return shapely.transform(geom, lambda xy: np.column_stack(TO_UTM.transform(*xy.T)))


def _features(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    return data["features"]


# --------------------------------------------------------------------------- files & COG layout


def test_info_and_file_names(sample: SampleInfo) -> None:
    assert sample.cog_dir == sample.out_dir / "cogs"
    assert sample.fields_path == sample.out_dir / "fields.geojson"
    assert sample.regions_path == sample.out_dir / "regions.geojson"
    assert sample.bands == ("blue", "green", "red", "nir", "scl") == BANDS
    assert sample.tile == "33UXP"
    assert sample.crs_epsg == 32633
    assert sample.shape_yx == (SIZE, SIZE)
    assert sample.transform == (10.0, 0.0, 600000.0, 0.0, -10.0, 5300000.0)
    assert sample.n_fields == FIELDS
    assert sample.dates == tuple(
        datetime.date(2025, 3, 1) + datetime.timedelta(days=45 * k) for k in range(SCENES)
    )
    expected = sorted(
        sample.cog_dir / f"S2_33UXP_{d.isoformat()}_{b}.tif" for d in sample.dates for b in BANDS
    )
    assert list(sample.cog_paths) == expected
    on_disk = sorted(p for p in sample.cog_dir.iterdir())
    assert on_disk == expected  # no temp files left behind
    assert all(re.fullmatch(r"S2_33UXP_\d{4}-\d\d-\d\d_[a-z]+\.tif", p.name) for p in on_disk)


def _check_cog(path: Path, size: int) -> None:
    with rasterio.open(path) as src:
        assert src.driver == "GTiff"
        assert src.count == 1
        assert src.dtypes == ("uint8",) if path.stem.endswith("_scl") else src.dtypes == ("uint16",)
        assert src.crs.to_epsg() == 32633
        assert tuple(src.transform)[:6] == (10.0, 0.0, 600000.0, 0.0, -10.0, 5300000.0)
        assert (src.width, src.height) == (size, size)
        assert src.nodata == 0
        assert src.block_shapes == [(512, 512)]
        assert src.profile["tiled"]
        structure = src.tags(ns="IMAGE_STRUCTURE")
        assert structure["LAYOUT"] == "COG"
        assert structure["COMPRESSION"] == "DEFLATE"
        assert structure["PREDICTOR"] == "2"
        if size >= 1024:
            assert src.overviews(1), f"{path.name} has no overviews"
            if path.stem.endswith("_scl"):
                assert structure.get("OVERVIEW_RESAMPLING", "").lower() == "nearest"


def test_cog_layout(sample: SampleInfo) -> None:
    for path in sample.cog_paths:
        _check_cog(path, SIZE)


def test_cog_layout_with_overviews(tmp_path: Path) -> None:
    info = generate_sample(tmp_path, scenes=1, size=1024, fields=4, seed=1)
    assert len(info.cog_paths) == len(BANDS)
    for path in info.cog_paths:
        _check_cog(path, 1024)
    with rasterio.open(info.cog_paths[0]) as src:
        assert src.overviews(1) == [2]
        overview = src.read(1, out_shape=(512, 512))
        assert overview.dtype == np.uint16


# --------------------------------------------------------------------------- pixel content


def test_nodata_strip_identical_across_bands(sample: SampleInfo) -> None:
    fractions = []
    for date in sample.dates:
        masks = {band: _read(sample, date, band) == 0 for band in BANDS}
        reference = masks["scl"]
        for band, mask in masks.items():
            np.testing.assert_array_equal(mask, reference, err_msg=f"{date} {band}")
        fraction = reference.mean()
        assert 0.02 <= fraction <= 0.17, fraction
        assert reference[:, -1].all(), "strip must touch the east edge"
        assert not reference[:, 0].any(), "west edge must be valid"
        # A strip: once nodata starts in a row it continues to the east edge.
        first = np.argmax(reference, axis=1)
        for row, col in enumerate(first):
            assert reference[row, col:].all()
        fractions.append(fraction)
    assert len(set(np.round(fractions, 4))) > 1, "strip width should vary by scene"


def test_scl_values_and_reflectance(sample: SampleInfo) -> None:
    seen: set[int] = set()
    for date in sample.dates:
        scl = _read(sample, date, "scl")
        values = set(np.unique(scl).tolist())
        assert values <= SCL_VALUES, values
        seen |= values
        refl = {b: _reflectance(_read(sample, date, b)) for b in BANDS[:4]}
        valid = scl > 0
        clear = np.isin(scl, [4, 5, 6])
        cloud = np.isin(scl, [8, 9])
        for band, r in refl.items():
            assert r[valid].min() >= -0.1, band
            assert r[valid].max() <= 0.8, band
            assert 0.0 <= np.median(r[clear]) <= 0.5, band
            if cloud.any():
                assert np.median(r[cloud]) >= 0.3, band
        nir, red = refl["nir"], refl["red"]
        ndvi = (nir[valid] - red[valid]) / (nir[valid] + red[valid])
        assert np.all(np.abs(ndvi) <= 1.0)
        veg = scl[valid] == 4
        assert np.all(ndvi[veg] > 0.25)
        assert 0.15 <= np.median(nir[clear]) <= 0.5
        # Vegetation: blue darkest of the visible bands.
        veg_px = scl == 4
        assert np.median(refl["blue"][veg_px]) < np.median(refl["green"][veg_px])
    assert {4, 5, 6} <= seen, "vegetation, bare soil and water expected"
    assert {3, 8, 9, 10} <= seen, "clouds, cirrus and shadows expected in some scene"


def test_maize_ndvi_peaks_in_summer(sample: SampleInfo) -> None:
    maize = [
        _utm(shape(f["geometry"]))
        for f in _features(sample.fields_path)
        if f["properties"]["crop"] == "maize"
    ]
    assert maize
    transform = rasterio.Affine(*sample.transform)
    inside = rasterio.features.geometry_mask(
        maize, out_shape=sample.shape_yx, transform=transform, invert=True
    )
    medians = []
    for date in sample.dates:
        scl = _read(sample, date, "scl")
        use = inside & np.isin(scl, [4, 5])
        assert use.sum() >= 20, f"too few clear maize pixels on {date}"
        nir = _reflectance(_read(sample, date, "nir"))[use]
        red = _reflectance(_read(sample, date, "red"))[use]
        medians.append(float(np.median((nir - red) / (nir + red))))
    assert int(np.argmax(medians)) == len(medians) - 1, medians  # 2025-07-14
    assert medians[-1] > 0.7, medians
    assert medians[0] < 0.35, medians  # bare in March


def test_field_pixels_are_rasterised(sample: SampleInfo) -> None:
    """Fallow fields stay bare, grassland fields stay green, whenever they are clear."""
    by_crop: dict[str, list] = {}
    for f in _features(sample.fields_path):
        by_crop.setdefault(f["properties"]["crop"], []).append(_utm(shape(f["geometry"])))
    transform = rasterio.Affine(*sample.transform)
    masks = {
        crop: rasterio.features.geometry_mask(
            by_crop[crop], out_shape=sample.shape_yx, transform=transform, invert=True
        )
        for crop in ("fallow", "grassland")
    }
    limits = {"fallow": (0.05, 0.35), "grassland": (0.5, 0.8)}
    checked = 0
    for date in sample.dates:
        scl = _read(sample, date, "scl")
        nir = _reflectance(_read(sample, date, "nir"))
        red = _reflectance(_read(sample, date, "red"))
        for crop, mask in masks.items():
            use = mask & np.isin(scl, [4, 5])
            if use.sum() < 20:
                continue
            ndvi = (nir[use] - red[use]) / (nir[use] + red[use])
            low, high = limits[crop]
            assert low <= np.median(ndvi) <= high, (date, crop, np.median(ndvi))
            checked += 1
    assert checked >= SCENES


# --------------------------------------------------------------------------- vector layers


def test_fields_geojson(sample: SampleInfo) -> None:
    feats = _features(sample.fields_path)
    assert len(feats) == FIELDS
    ids = [f["properties"]["id"] for f in feats]
    assert ids == [f"F{i:04d}" for i in range(1, FIELDS + 1)]
    geoms_utm = []
    n_multi = n_holes = n_outside = 0
    for f in feats:
        props = f["properties"]
        assert props["crop"] in CROPS
        assert props["name"] == f"Field {int(props['id'][1:])} ({props['crop'].replace('_', ' ')})"
        geom = shape(f["geometry"])
        assert geom.is_valid, props["id"]
        lon, lat = shapely.get_coordinates(geom).T
        assert np.all((lon > 15.0) & (lon < 18.0) & (lat > 47.0) & (lat < 48.5))
        np.testing.assert_allclose(np.round(lon, 7), lon, rtol=0, atol=1e-12)
        utm = _utm(geom)
        assert 5_000.0 <= utm.area <= 200_000.0, (props["id"], utm.area)
        polys = list(utm.geoms) if isinstance(utm, MultiPolygon) else [utm]
        assert len(polys[0].exterior.coords) >= 5
        n_multi += isinstance(geom, MultiPolygon) and len(geom.geoms) == 2
        n_holes += any(len(p.interiors) > 0 for p in polys)
        if not EXTENT_UTM.contains(utm):
            assert EXTENT_UTM.intersects(utm)
            assert utm.intersection(EXTENT_UTM).area < 0.9 * utm.area
            n_outside += 1
        geoms_utm.append(utm)
    assert n_multi >= 1
    assert n_holes >= 1
    assert n_outside >= 1
    # Non-overlapping.
    total = sum(g.area for g in geoms_utm)
    assert shapely.union_all(geoms_utm).area == pytest.approx(total, rel=1e-9)
    # Polygons with an exterior ring of 4-9 vertices (before splitting).
    simple = [g for g in geoms_utm if isinstance(g, Polygon) and not g.interiors]
    assert all(4 <= len(g.exterior.coords) - 1 <= 9 for g in simple)


def test_every_crop_present_with_enough_fields(tmp_path: Path) -> None:
    info = generate_sample(tmp_path, scenes=1, size=512, fields=40, seed=7)
    feats = _features(info.fields_path)
    assert len(feats) == 40
    assert {f["properties"]["crop"] for f in feats} == set(CROPS)
    assert all(shape(f["geometry"]).is_valid for f in feats)


def test_regions_geojson(sample: SampleInfo) -> None:
    feats = _features(sample.regions_path)
    assert 3 <= len(feats) <= 4
    assert [f["properties"]["id"] for f in feats] == [f"R{i}" for i in range(1, len(feats) + 1)]
    geoms = [_utm(shape(f["geometry"])) for f in feats]
    assert all(shape(f["geometry"]).is_valid for f in feats)
    assert all(f["properties"]["name"] for f in feats)
    for i, a in enumerate(geoms):
        for b in geoms[i + 1 :]:
            assert a.intersection(b).area < 1.0
    covered = shapely.union_all(geoms).intersection(EXTENT_UTM).area
    assert covered >= 0.9 * EXTENT_UTM.area


# --------------------------------------------------------------------------- determinism & API


def test_determinism(sample: SampleInfo, tmp_path: Path) -> None:
    again = _generate(tmp_path / "again")
    assert again.fields_path.read_text() == sample.fields_path.read_text()
    assert again.regions_path.read_text() == sample.regions_path.read_text()
    for a, b in zip(sample.cog_paths, again.cog_paths, strict=True):
        assert a.name == b.name
        with rasterio.open(a) as sa, rasterio.open(b) as sb:
            np.testing.assert_array_equal(sa.read(), sb.read())
    other = _generate(tmp_path / "other", seed=1, scenes=1)
    assert other.fields_path.read_text() != sample.fields_path.read_text()
    with rasterio.open(other.cog_paths[0]) as so, rasterio.open(sample.cog_paths[0]) as ss:
        assert not np.array_equal(so.read(), ss.read())


def test_overwrite_and_progress(tmp_path: Path) -> None:
    first = generate_sample(tmp_path, scenes=3, size=128, fields=3)
    messages: list[str] = []
    second = generate_sample(tmp_path, scenes=2, size=128, fields=3, progress=messages.append)
    assert len(messages) == 2
    assert all("scene" in m for m in messages)
    assert len(second.cog_paths) == 2 * len(BANDS)
    # Stale COGs of the third date are removed, the others replaced in place.
    assert sorted(second.cog_dir.iterdir()) == list(second.cog_paths)
    assert set(second.cog_paths) < set(first.cog_paths)


def test_max_fields() -> None:
    limit = max_fields_for_size(128)
    assert limit >= 1
    with pytest.raises(ValueError, match=f"at most {limit}"):
        generate_sample("/nonexistent/never-created", size=128, fields=limit + 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scenes": 0}, "scenes"),
        ({"size": 64}, "size"),
        ({"size": 256.0}, "size"),
        ({"fields": 0}, "fields"),
        ({"seed": -1}, "seed"),
        ({"interval_days": 0}, "interval_days"),
        ({"start": "2025-03-01"}, "start"),
        ({"progress": 3}, "progress"),
        ({"scenes": True}, "scenes"),
    ],
)
def test_argument_validation(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate_sample(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()
