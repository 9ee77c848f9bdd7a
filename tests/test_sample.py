"""Tests of the seeded sample-data generator (checked with rasterio/shapely/pyproj).

The expectations are independent of the generator's code: file layout and grids from
the brief (Element 84 layout, 10 m / 20 m bands), DN decoding by date written out here,
20 m bands brought onto the 10 m grid with ``rasterio.warp.reproject`` (nearest).
"""

from __future__ import annotations

import datetime
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from pyproj import Transformer
from rasterio.warp import Resampling, reproject
from shapely.geometry import MultiPolygon, Polygon, box, shape

from pixelquery_batch.sample import (
    BAND_NAMES,
    BAND_RESOLUTION,
    BANDS,
    BASELINE_04_DATE,
    CROPS,
    SCL_VALUES,
    SampleInfo,
    dn_offset,
    generate_sample,
    max_fields_for_size,
)

SIZE = 256
SCENES = 5
FIELDS = 12
INTERVAL = 30  # 2021-10-01, 10-31, 11-30, 12-30 | 2022-01-29: straddles baseline 04.00
START = datetime.date(2021, 10, 1)
BASELINE = datetime.date(2022, 1, 25)  # Sentinel-2 processing baseline 04.00
KEYS = ("B02", "B03", "B04", "B08", "B11", "SCL")
KEYS_10M = ("B02", "B03", "B04", "B08")
KEYS_20M = ("B11", "SCL")
EXTENT_UTM = box(600_000.0, 5_300_000.0 - SIZE * 10, 600_000.0 + SIZE * 10, 5_300_000.0)
TO_UTM = Transformer.from_crs(4326, 32633, always_xy=True)
SCENE_RE = re.compile(r"S2[AB]_33UXP_\d{8}_0_L2A")


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


def _path(info: SampleInfo, k: int, key: str) -> Path:
    return info.cog_dir / info.scene_ids[k] / f"{key}.tif"


def _read(info: SampleInfo, k: int, key: str) -> np.ndarray:
    with rasterio.open(_path(info, k, key)) as src:
        return src.read(1)


def _reflectance(dn: np.ndarray, date: datetime.date) -> np.ndarray:
    """L2A decoding: DN / 1e4 before baseline 04.00, (DN - 1000) / 1e4 from it on."""
    offset = -0.1 if date >= BASELINE else 0.0
    return dn.astype(np.float64) * 1e-4 + offset


def _on_10m(info: SampleInfo, k: int, key: str) -> np.ndarray:
    """A 20 m band brought onto the 10 m grid by GDAL's nearest-neighbour warp."""
    with rasterio.open(_path(info, k, key)) as src:
        out = np.zeros(info.shape_yx, src.dtypes[0])
        reproject(
            src.read(1), out, src_transform=src.transform, src_crs=src.crs,
            dst_transform=rasterio.Affine(*info.transform), dst_crs=src.crs,
            resampling=Resampling.nearest,
        )  # fmt: skip
    return out


def _block_any(mask: np.ndarray) -> np.ndarray:
    """Any of each 2 x 2 block (last row/column replicated when the size is odd)."""
    h, w = mask.shape
    m = np.pad(mask, ((0, h % 2), (0, w % 2)), mode="edge")
    return m.reshape(m.shape[0] // 2, 2, m.shape[1] // 2, 2).any(axis=(1, 3))


def _utm(geom: shapely.Geometry) -> shapely.Geometry:
    return shapely.transform(geom, lambda xy: np.column_stack(TO_UTM.transform(*xy.T)))


def _features(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    return data["features"]


def _crop_mask(info: SampleInfo, crops: tuple[str, ...]) -> np.ndarray:
    geoms = [
        _utm(shape(f["geometry"]))
        for f in _features(info.fields_path)
        if f["properties"]["crop"] in crops
    ]
    assert geoms, crops
    return rasterio.features.geometry_mask(
        geoms, out_shape=info.shape_yx, transform=rasterio.Affine(*info.transform), invert=True
    )


# --------------------------------------------------------------------------- files & COG layout


def test_constants_and_dn_offset() -> None:
    assert BANDS == KEYS
    assert BAND_NAMES == {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir",
                          "B11": "swir16", "SCL": "scl"}  # fmt: skip
    expected_res = {k: 10.0 for k in KEYS_10M} | {k: 20.0 for k in KEYS_20M}
    assert expected_res == BAND_RESOLUTION
    assert BASELINE_04_DATE == BASELINE
    assert dn_offset(datetime.date(2022, 1, 24)) == 0
    assert dn_offset(datetime.date(2022, 1, 25)) == 1000
    assert dn_offset(datetime.date(2015, 7, 1)) == 0
    assert dn_offset(datetime.datetime(2022, 1, 25, 10, 30)) == 1000
    params = inspect.signature(generate_sample).parameters
    start, interval, scenes = (params[n].default for n in ("start", "interval_days", "scenes"))
    assert (start, interval, scenes) == (START, 30, 8)
    dates = [start + datetime.timedelta(days=interval * k) for k in range(scenes)]
    assert dates[-1] == datetime.date(2022, 4, 29)
    assert dates[0] < BASELINE <= dates[-1]


def test_info_and_file_names(sample: SampleInfo) -> None:
    assert sample.cog_dir == sample.out_dir / "cogs"
    assert sample.fields_path == sample.out_dir / "fields.geojson"
    assert sample.regions_path == sample.out_dir / "regions.geojson"
    assert sample.bands == KEYS
    assert sample.band_names == BAND_NAMES
    assert sample.band_resolution == BAND_RESOLUTION
    assert sample.tile == "33UXP"
    assert sample.crs_epsg == 32633
    assert sample.shape_yx == (SIZE, SIZE)
    assert sample.shape_yx_20m == (SIZE // 2, SIZE // 2)
    assert sample.transform == (10.0, 0.0, 600000.0, 0.0, -10.0, 5300000.0)
    assert sample.transform_20m == (20.0, 0.0, 600000.0, 0.0, -20.0, 5300000.0)
    assert sample.pattern == "{scene}/{band}.tif"
    assert sample.n_fields == FIELDS
    assert sample.dates == tuple(START + datetime.timedelta(days=30 * k) for k in range(SCENES))
    assert sample.dates[-2] < BASELINE <= sample.dates[-1]
    assert sample.scene_ids == (
        "S2A_33UXP_20211001_0_L2A",
        "S2B_33UXP_20211031_0_L2A",
        "S2A_33UXP_20211130_0_L2A",
        "S2B_33UXP_20211230_0_L2A",
        "S2A_33UXP_20220129_0_L2A",
    )
    assert sample.scene_dirs == tuple(sample.cog_dir / s for s in sample.scene_ids)
    expected = [sample.cog_dir / s / f"{k}.tif" for s in sample.scene_ids for k in KEYS]
    assert list(sample.cog_paths) == expected
    assert sample.pattern.format(scene=sample.scene_ids[0], band="B04") == (
        "S2A_33UXP_20211001_0_L2A/B04.tif"
    )
    # Nothing else below cogs/ (no temp files left behind).
    assert sorted(sample.cog_dir.iterdir()) == sorted(sample.scene_dirs)
    on_disk = sorted(p for p in sample.cog_dir.rglob("*") if p.is_file())
    assert on_disk == sorted(expected)
    for p in on_disk:
        assert SCENE_RE.fullmatch(p.parent.name), p
        assert p.name in {f"{k}.tif" for k in KEYS}, p


def _check_cog(path: Path, size: int) -> None:
    key = path.stem
    res = 20.0 if key in KEYS_20M else 10.0
    n = -(-size // 2) if res == 20.0 else size
    with rasterio.open(path) as src:
        assert src.driver == "GTiff"
        assert src.count == 1
        assert src.dtypes == (("uint8",) if key == "SCL" else ("uint16",)), path
        assert src.crs.to_epsg() == 32633
        assert tuple(src.transform)[:6] == (res, 0.0, 600000.0, 0.0, -res, 5300000.0), path
        assert (src.width, src.height) == (n, n), path
        assert src.nodata == 0
        assert src.block_shapes == [(256, 256) if res == 20.0 else (512, 512)], path
        assert src.profile["tiled"]
        structure = src.tags(ns="IMAGE_STRUCTURE")
        assert structure["LAYOUT"] == "COG"
        assert structure["COMPRESSION"] == "DEFLATE"
        assert structure["PREDICTOR"] == "2"
        # No GDAL scale/offset metadata (like the real Earth Search COGs).
        assert src.scales == (1.0,) and src.offsets == (0.0,), path
        assert not any("SCALE" in t.upper() or "OFFSET" in t.upper() for t in src.tags(1)), path
        if size >= 1024:
            assert src.overviews(1), f"{path} has no overviews"
            if key == "SCL":
                assert structure.get("OVERVIEW_RESAMPLING", "").lower() == "nearest"


def test_cog_layout(sample: SampleInfo) -> None:
    for path in sample.cog_paths:
        _check_cog(path, SIZE)


def test_cog_layout_with_overviews(tmp_path: Path) -> None:
    info = generate_sample(tmp_path, scenes=1, size=1024, fields=4, seed=1)
    assert len(info.cog_paths) == len(KEYS)
    for path in info.cog_paths:
        _check_cog(path, 1024)
    with rasterio.open(_path(info, 0, "B04")) as src:
        assert src.overviews(1) == [2]
        overview = src.read(1, out_shape=(512, 512))
        assert overview.dtype == np.uint16
    with rasterio.open(_path(info, 0, "B11")) as src:
        assert src.shape == (512, 512)
        assert src.overviews(1) == [2]


def test_odd_size_grids_extend_past_the_10m_grid(tmp_path: Path) -> None:
    info = generate_sample(tmp_path, scenes=1, size=131, fields=4, seed=3)
    assert info.shape_yx == (131, 131)
    assert info.shape_yx_20m == (66, 66)
    for path in info.cog_paths:
        _check_cog(path, 131)
    with rasterio.open(_path(info, 0, "B04")) as a, rasterio.open(_path(info, 0, "B11")) as b:
        assert a.bounds.left == b.bounds.left and a.bounds.top == b.bounds.top
        assert b.bounds.right - a.bounds.right == pytest.approx(10.0)
        assert a.bounds.bottom - b.bounds.bottom == pytest.approx(10.0)
    nodata_10m = _read(info, 0, "B04") == 0
    for key in KEYS_20M:
        np.testing.assert_array_equal(_read(info, 0, key) == 0, _block_any(nodata_10m), err_msg=key)


# --------------------------------------------------------------------------- pixel content


def test_nodata_strip_in_every_band(sample: SampleInfo) -> None:
    fractions = []
    for k, date in enumerate(sample.dates):
        masks = {key: _read(sample, k, key) == 0 for key in KEYS}
        reference = masks["B04"]
        for key in KEYS_10M:
            np.testing.assert_array_equal(masks[key], reference, err_msg=f"{date} {key}")
        # 20 m: nodata wherever any of the four 10 m pixels is nodata.
        expected_20m = _block_any(reference)
        for key in KEYS_20M:
            np.testing.assert_array_equal(masks[key], expected_20m, err_msg=f"{date} {key}")
        # Brought to 10 m, the 20 m strip covers the 10 m strip and is at most 1 px wider.
        scl_10m = _on_10m(sample, k, "SCL")
        assert np.all(scl_10m[reference] == 0)
        extra = (scl_10m == 0) & ~reference
        assert extra.sum(axis=1).max() <= 2
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


def test_scl_20m_agrees_with_the_10m_rendering(sample: SampleInfo) -> None:
    """SCL is the class of the upper-left 10 m pixel of each 2 x 2 block: at those pixels
    clouds (8, 9) are exactly the bright pixels of the 10 m bands, and nearly everywhere
    else too."""
    checked = 0
    for k, date in enumerate(sample.dates):
        scl_20m = _read(sample, k, "SCL")
        scl = _on_10m(sample, k, "SCL")
        # GDAL's nearest warp puts every 10 m pixel in the 20 m pixel that contains it.
        np.testing.assert_array_equal(scl, np.repeat(np.repeat(scl_20m, 2, 0), 2, 1))
        blue = _reflectance(_read(sample, k, "B02"), date)
        valid = scl > 0
        cloud = np.isin(scl, [8, 9])
        clear = np.isin(scl, [4, 5, 6])
        ul = np.zeros_like(valid)
        ul[0::2, 0::2] = True
        if cloud.any():
            assert blue[cloud & ul].min() >= 0.3, date  # opaque cloud tops are bright
            checked += 1
        assert blue[clear & ul & valid].max() < 0.25, date  # no cloud over clear pixels
        bright = blue > 0.28
        agree = (bright == cloud)[valid].mean()
        assert agree >= 0.97, (date, agree)
        # Vegetation (4) at the upper-left pixels has a vegetation NDVI.
        nir = _reflectance(_read(sample, k, "B08"), date)
        red = _reflectance(_read(sample, k, "B04"), date)
        veg = (scl == 4) & ul
        assert np.all((nir[veg] - red[veg]) / (nir[veg] + red[veg]) > 0.25), date
    assert checked >= 2


def test_scl_values_and_reflectance(sample: SampleInfo) -> None:
    seen: set[int] = set()
    for k, date in enumerate(sample.dates):
        scl = _on_10m(sample, k, "SCL")
        values = set(np.unique(_read(sample, k, "SCL")).tolist())
        assert values <= SCL_VALUES, values
        seen |= values
        refl = {key: _reflectance(_read(sample, k, key), date) for key in KEYS_10M}
        valid = scl > 0
        clear = np.isin(scl, [4, 5, 6])
        cloud = np.isin(scl, [8, 9])
        for key, r in refl.items():
            assert r[valid].min() >= 0.0, key
            assert r[valid].max() <= 0.8, key
            assert 0.0 <= np.median(r[clear]) <= 0.5, key
            if cloud.any():
                assert np.median(r[cloud]) >= 0.3, key
        nir, red = refl["B08"], refl["B04"]
        ndvi = (nir[valid] - red[valid]) / (nir[valid] + red[valid])
        assert np.all(np.abs(ndvi) <= 1.0)
        assert 0.15 <= np.median(nir[clear]) <= 0.5
        # Vegetation: blue darkest of the visible bands.
        veg_px = scl == 4
        assert np.median(refl["B02"][veg_px]) < np.median(refl["B03"][veg_px])
    assert {4, 5, 6} <= seen, "vegetation, bare soil and water expected"
    assert {3, 8, 9, 10} <= seen, "clouds, cirrus and shadows expected in some scene"


def test_swir16_is_plausible(sample: SampleInfo) -> None:
    """B11 (20 m): water < dense vegetation < bare soil; clouds bright; NDMI sign."""
    by_class: dict[int, list[np.ndarray]] = {c: [] for c in (4, 5, 6, 8, 9)}
    ndmi_veg, ndmi_soil = [], []
    for k, date in enumerate(sample.dates):
        scl = _read(sample, k, "SCL")
        swir = _reflectance(_read(sample, k, "B11"), date)
        valid = scl > 0
        assert swir[valid].min() >= 0.0
        assert swir[valid].max() <= 0.8
        # nir averaged to 20 m by hand (even SIZE: no padding needed).
        nir10 = _reflectance(_read(sample, k, "B08"), date)
        nir = nir10.reshape(SIZE // 2, 2, SIZE // 2, 2).mean(axis=(1, 3))
        for c, values in by_class.items():
            values.append(swir[scl == c])
        with np.errstate(all="ignore"):
            ndmi = (nir - swir) / (nir + swir)
        ndmi_veg.append(ndmi[scl == 4])
        ndmi_soil.append(ndmi[scl == 5])
    med = {c: float(np.median(np.concatenate(v))) for c, v in by_class.items()}
    assert med[6] < 0.1, med
    assert med[6] < med[4] < med[5], med
    assert 0.1 <= med[4] <= 0.3 and 0.2 <= med[5] <= 0.4, med
    assert min(med[8], med[9]) >= 0.25, med
    assert np.median(np.concatenate(ndmi_veg)) > 0.1
    assert np.median(np.concatenate(ndmi_soil)) < 0.05


def test_reflectance_is_continuous_across_baseline_04(tmp_path: Path) -> None:
    """Only the DN encoding changes on 2022-01-25: decoded with the per-date offset, the
    grassland fields look the same in the last scene before and the first scene after it,
    and their raw DN are ~1000 higher afterwards."""
    # 40 fields so that enough grassland is clear in both scenes (498 px with seed 0).
    sample = _generate(tmp_path, scenes=2, fields=40, start=datetime.date(2022, 1, 15),
                       interval_days=20)  # fmt: skip
    pre, post = 0, 1
    assert sample.dates[pre] < BASELINE <= sample.dates[post]
    grass = _crop_mask(sample, ("grassland",))
    use = grass.copy()
    for k in (pre, post):
        use &= np.isin(_on_10m(sample, k, "SCL"), [4, 5]) & (_read(sample, k, "B04") > 0)
    assert use.sum() >= 200, use.sum()

    def mean_ndvi(k: int, date: datetime.date) -> float:
        nir = _reflectance(_read(sample, k, "B08"), date)[use]
        red = _reflectance(_read(sample, k, "B04"), date)[use]
        return float(np.mean((nir - red) / (nir + red)))

    before = mean_ndvi(pre, sample.dates[pre])
    after = mean_ndvi(post, sample.dates[post])
    wrong = mean_ndvi(post, sample.dates[pre])  # decoded as if there were no offset
    assert 0.5 <= before <= 0.7, before
    assert abs(after - before) < 0.03, (before, after)
    assert abs(wrong - before) > 0.1, (before, wrong)  # what the offset alone would cause
    assert abs(after - before) < 0.2 * abs(wrong - before)
    # Raw DN: the pre-baseline scene is ~1000 lower (no offset), in every reflectance band.
    for key in KEYS_10M:
        shift = np.median(_read(sample, post, key)[use].astype(np.int64)) - np.median(
            _read(sample, pre, key)[use].astype(np.int64)
        )
        assert abs(shift - 1000) < 100, (key, shift)
    use_20m = ~_block_any(~use)  # 20 m pixels whose four 10 m pixels are all usable
    assert use_20m.sum() >= 30
    swir_pre = np.median(_read(sample, pre, "B11")[use_20m].astype(np.int64))
    swir_post = np.median(_read(sample, post, "B11")[use_20m].astype(np.int64))
    assert abs(swir_post - swir_pre - 1000) < 100, (swir_pre, swir_post)
    # Pre-baseline vegetation DN are reflectance * 1e4 (nir 0.2-0.55), not + 1000.
    nir_pre = _read(sample, pre, "B08")[use]
    assert 2000 <= np.median(nir_pre) <= 5500


def test_maize_ndvi_peaks_in_summer(tmp_path: Path) -> None:
    info = _generate(tmp_path, scenes=3, start=datetime.date(2022, 4, 1), interval_days=52)
    assert info.dates[-1] == datetime.date(2022, 7, 14)
    inside = _crop_mask(info, ("maize",))
    medians = []
    for k, date in enumerate(info.dates):
        use = inside & np.isin(_on_10m(info, k, "SCL"), [4, 5]) & (_read(info, k, "B04") > 0)
        assert use.sum() >= 20, f"too few clear maize pixels on {date}"
        nir = _reflectance(_read(info, k, "B08"), date)[use]
        red = _reflectance(_read(info, k, "B04"), date)[use]
        medians.append(float(np.median((nir - red) / (nir + red))))
    assert int(np.argmax(medians)) == len(medians) - 1, medians  # 2022-07-14
    assert medians[-1] > 0.7, medians
    assert medians[0] < 0.35, medians  # bare in April


def test_field_pixels_are_rasterised(sample: SampleInfo) -> None:
    """Fallow fields stay bare, grassland fields stay green, whenever they are clear."""
    masks = {crop: _crop_mask(sample, (crop,)) for crop in ("fallow", "grassland")}
    limits = {"fallow": (0.05, 0.35), "grassland": (0.5, 0.8)}
    checked = 0
    for k, date in enumerate(sample.dates):
        scl = _on_10m(sample, k, "SCL")
        nir = _reflectance(_read(sample, k, "B08"), date)
        red = _reflectance(_read(sample, k, "B04"), date)
        for crop, mask in masks.items():
            use = mask & np.isin(scl, [4, 5]) & (red > -0.05)
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
        assert a.relative_to(sample.cog_dir) == b.relative_to(again.cog_dir)
        assert a.read_bytes() == b.read_bytes(), a  # identical files, not only pixels
    other = _generate(tmp_path / "other", seed=1, scenes=1)
    assert other.fields_path.read_text() != sample.fields_path.read_text()
    with rasterio.open(other.cog_paths[0]) as so, rasterio.open(sample.cog_paths[0]) as ss:
        assert not np.array_equal(so.read(), ss.read())


def test_overwrite_and_progress(tmp_path: Path) -> None:
    first = generate_sample(tmp_path, scenes=3, size=128, fields=3)
    cog_dir = first.cog_dir
    # Left-overs of the earlier flat layout, and things the generator never writes.
    legacy = cog_dir / "S2_33UXP_2025-03-01_red.tif"
    legacy.write_bytes(b"old")
    foreign_file = cog_dir / "notes.txt"
    foreign_file.write_text("keep me")
    foreign_dir = cog_dir / "my_scene"
    foreign_dir.mkdir()
    (foreign_dir / "B04.tif").write_bytes(b"not ours")
    stale_with_extra = first.scene_dirs[2]
    (stale_with_extra / "extra.txt").write_text("keep me too")

    messages: list[str] = []
    second = generate_sample(tmp_path, scenes=2, size=128, fields=3, progress=messages.append)
    assert len(messages) == 2
    assert all("scene" in m for m in messages)
    assert second.scene_ids[0] in messages[0]
    assert len(second.cog_paths) == 2 * len(KEYS)
    assert set(second.cog_paths) < set(first.cog_paths)
    # Stale band files of the third scene and the legacy flat file are removed; the
    # third scene's folder stays only because it holds a file the generator did not write.
    assert not legacy.exists()
    assert not any((stale_with_extra / f"{k}.tif").exists() for k in KEYS)
    assert sorted(p.name for p in stale_with_extra.iterdir()) == ["extra.txt"]
    assert foreign_file.read_text() == "keep me"
    assert (foreign_dir / "B04.tif").read_bytes() == b"not ours"
    ours = sorted(p for p in cog_dir.rglob("*.tif") if SCENE_RE.fullmatch(p.parent.name))
    assert ours == sorted(second.cog_paths)
    # Without the extra file the stale scene folder itself goes.
    (stale_with_extra / "extra.txt").unlink()
    generate_sample(tmp_path, scenes=2, size=128, fields=3)
    assert not stale_with_extra.exists()
    assert sorted(p.name for p in cog_dir.iterdir()) == sorted(
        [*second.scene_ids, "my_scene", "notes.txt"]
    )


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
