"""Pixel rules and zonal statistics against independent references.

- ``centre`` / ``all_touched`` weights against GDAL (``rasterio.features.geometry_mask``)
  on the same window and transform: exact equality of the masks, for random irregular
  polygons, holes, multipolygons, polygons partly outside the raster, sub-pixel ones,
  and for polygons whose vertices sit on pixel corners, edges and centres (we emulate
  GDAL's tie rules, so no case has to be avoided).
- statistics of the 0/1 rules against numpy over ``raster[mask]``.
- ``coverage`` weights and statistics against ``exactextract.exact_extract`` on an
  in-memory GeoTIFF (exactextract keeps coverage fractions as float32, hence the
  ``1e-6`` tolerances).
- hypothesis properties: window bounds, chunk/merge invariance, sub-pixel fields.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import shapely
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from rasterio.features import geometry_mask
from rasterio.io import MemoryFile
from rasterio.transform import Affine
from shapely.geometry import MultiPolygon, Point, Polygon, box

from pixelquery_batch.errors import InputDataError
from pixelquery_batch.kernels.stats import (
    STAT_NAMES,
    Moments,
    validate_stats,
    weighted_quantiles,
    zonal_stats,
)
from pixelquery_batch.rasterize import (
    clip_window,
    geometry_weights,
    geometry_window,
    window_transform,
)

#: UTM-like 10 m grid
RES_M = 10.0
TRANSFORM = (RES_M, 0.0, 500_000.0, 0.0, -RES_M, 4_200_000.0)
SHAPE_YX = (80, 90)
CRS = "EPSG:32633"
ALL_STATS = (*STAT_NAMES, "p10", "p90")


# ---------------------------------------------------------------------------------------
# builders (pixel coordinates -> world)


def to_world(xy_px: np.ndarray, transform=TRANSFORM) -> np.ndarray:
    """(col, row) pixel coordinates of the scene grid -> world x, y."""
    a, _, c, _, e, f = transform
    return np.c_[c + xy_px[:, 0] * a, f + xy_px[:, 1] * e]


def star_px(rng: np.random.Generator, cx: float, cy: float, radius: float, n: int) -> np.ndarray:
    """Vertices of a random star-shaped (hence simple) ring around (cx, cy), in pixels."""
    ang = (np.arange(n) + rng.uniform(0, 0.9, n)) * 2 * np.pi / n
    r = radius * rng.uniform(0.35, 1.0, n)
    return np.c_[cx + np.cos(ang) * r, cy + np.sin(ang) * r]


def random_field(rng: np.random.Generator, kind: str, *, snap: float = 0.0) -> Polygon:
    """A random valid field geometry of a given kind, in world coordinates."""
    ny, nx = SHAPE_YX

    def ring(cx, cy, radius, n):
        xy = star_px(rng, cx, cy, radius, n)
        if snap:
            xy = np.round(xy / snap) * snap
        if rng.random() < 0.5:
            xy = xy[::-1]  # both ring orientations
        return to_world(xy)

    if kind == "plain":
        cx, cy = rng.uniform(8, nx - 8), rng.uniform(8, ny - 8)
        return Polygon(ring(cx, cy, rng.uniform(1.5, 8), int(rng.integers(3, 40))))
    if kind == "hole":
        cx, cy = rng.uniform(10, nx - 10), rng.uniform(10, ny - 10)
        outer = Polygon(ring(cx, cy, rng.uniform(5, 10), int(rng.integers(8, 30))))
        inner = Polygon(to_world(star_px(rng, cx, cy, rng.uniform(0.8, 1.6), 7)))
        return Polygon(outer.exterior, [inner.exterior]) if outer.contains(inner) else outer
    if kind == "multi":
        parts = [
            Polygon(ring(rng.uniform(6, nx - 6), rng.uniform(6, ny - 6), rng.uniform(1, 5), 9))
            for _ in range(3)
        ]
        merged = shapely.union_all(parts)
        return merged if isinstance(merged, MultiPolygon) else MultiPolygon([parts[0]])
    if kind == "edge":  # straddles the raster's border (or lies just beyond it)
        cx = rng.choice([rng.uniform(-4, 4), rng.uniform(nx - 4, nx + 4)])
        cy = rng.uniform(-4, ny + 4)
        return Polygon(ring(cx, cy, rng.uniform(2, 9), int(rng.integers(5, 25))))
    if kind == "tiny":  # sub-pixel
        cx, cy = rng.uniform(2, nx - 2), rng.uniform(2, ny - 2)
        return Polygon(ring(cx, cy, rng.uniform(0.05, 0.6), int(rng.integers(3, 8))))
    raise ValueError(kind)


KINDS = ("plain", "hole", "multi", "edge", "tiny")


def random_fields(seed: int, n: int, *, snap: float = 0.0) -> list[Polygon]:
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        geom = random_field(rng, KINDS[len(out) % len(KINDS)], snap=snap)
        if geom.is_valid and geom.area > 0:
            out.append(geom)
    return out


@pytest.fixture(scope="module")
def raster() -> np.ndarray:
    """float64 scene with a block of nodata (NaN)."""
    rng = np.random.default_rng(42)
    arr = rng.normal(1000.0, 250.0, SHAPE_YX)
    arr[30:38, 40:55] = np.nan
    return arr


def gdal_mask(geom, window, *, all_touched: bool) -> np.ndarray:
    """GDAL's rasterization of ``geom`` over a window (the independent reference)."""
    return geometry_mask(
        [geom],
        out_shape=(window[2], window[3]),
        transform=Affine(*window_transform(TRANSFORM, window)),
        all_touched=all_touched,
        invert=True,
    )


def window_values(arr: np.ndarray, window) -> np.ndarray:
    """Raster values over a window, NaN outside the raster."""
    out = np.full((window[2], window[3]), np.nan)
    clipped = clip_window(window, arr.shape)
    if clipped is not None:
        (r0, c0, h, w), slices = clipped
        out[slices] = arr[r0 : r0 + h, c0 : c0 + w]
    return out


# ---------------------------------------------------------------------------------------
# 0/1 rules against GDAL


@pytest.mark.parametrize("rule", ["centre", "all_touched"])
@pytest.mark.parametrize(("seed", "snap"), [(1, 0.0), (2, 0.0), (3, 1.0), (4, 0.5), (5, 0.25)])
def test_mask_matches_gdal(rule: str, seed: int, snap: float) -> None:
    """Exact equality with GDAL, for generic vertices and for vertices on the pixel lattice
    (corners, edge midpoints, centres), across window offsets and padding."""
    for i, geom in enumerate(random_fields(seed, 60, snap=snap)):
        window = geometry_window(geom, TRANSFORM, pad=i % 3)
        if i % 4 == 3:  # a window cut into the geometry: GDAL clips edges to it
            window = (window[0] + 1, window[1] + 2, max(window[2] - 3, 1), max(window[3] - 2, 1))
        ours = geometry_weights(geom, TRANSFORM, window, rule)
        ref = gdal_mask(geom, window, all_touched=rule == "all_touched")
        assert ours.dtype == np.float64
        assert set(np.unique(ours)) <= {0.0, 1.0}
        np.testing.assert_array_equal(ours > 0, ref, err_msg=f"{rule} #{i}: {geom.wkt[:200]}")


def test_grid_aligned_rectangle_all_touched_takes_interior_only() -> None:
    """GDAL >= 3.11 convention: edges on pixel boundaries touch nothing outside."""
    geom = box(500_010.0, 4_199_970.0, 500_030.0, 4_199_990.0)  # pixels (1..2, 1..2)
    window = (0, 0, 4, 4)
    expected = np.zeros((4, 4))
    expected[1:3, 1:3] = 1.0
    for rule in ("centre", "all_touched", "coverage"):
        np.testing.assert_array_equal(geometry_weights(geom, TRANSFORM, window, rule), expected)
    np.testing.assert_array_equal(gdal_mask(geom, window, all_touched=True), expected > 0)


@pytest.mark.parametrize("rule", ["centre", "all_touched"])
def test_stats_of_binary_rules_match_numpy(raster: np.ndarray, rule: str) -> None:
    for i, geom in enumerate(random_fields(11, 50)):
        window = geometry_window(geom, TRANSFORM, pad=1)
        mask = gdal_mask(geom, window, all_touched=rule == "all_touched")
        values = window_values(raster, window)
        got = zonal_stats(values, geometry_weights(geom, TRANSFORM, window, rule), ALL_STATS)
        assert list(got) == list(ALL_STATS)

        sel = values[mask]
        valid = sel[np.isfinite(sel)]
        assert got["count"] == valid.size
        if mask.sum() == 0:
            assert math.isnan(got["valid_fraction"])
        else:
            assert got["valid_fraction"] == pytest.approx(valid.size / mask.sum(), abs=1e-12)
        if valid.size == 0:
            assert all(
                math.isnan(got[k]) for k in ALL_STATS if k not in ("count", "valid_fraction")
            )
            continue
        expected = {
            "mean": np.mean(valid),
            "std": np.std(valid),
            "min": np.min(valid),
            "max": np.max(valid),
            "median": np.median(valid),
            "sum": np.sum(valid),
            "p10": np.percentile(valid, 10),
            "p90": np.percentile(valid, 90),
        }
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (i, key)


def test_partly_outside_valid_fraction_counts_outside_pixels() -> None:
    """A field over the raster's border keeps its outside pixels in the total."""
    full = np.random.default_rng(3).uniform(0, 1, SHAPE_YX)  # no nodata
    geom = Polygon(to_world(star_px(np.random.default_rng(8), -1.5, 40.0, 6.0, 17)))
    window = geometry_window(geom, TRANSFORM)
    row0, col0, h, w = window
    assert col0 < 0  # unclipped
    mask = gdal_mask(geom, window, all_touched=False)
    rows = np.arange(row0, row0 + h)[:, None] + np.zeros((1, w), dtype=int)
    cols = np.arange(col0, col0 + w)[None, :] + np.zeros((h, 1), dtype=int)
    in_raster = (rows >= 0) & (rows < SHAPE_YX[0]) & (cols >= 0) & (cols < SHAPE_YX[1])
    inside = mask & in_raster
    assert 0 < inside.sum() < mask.sum()
    got = zonal_stats(
        window_values(full, window),
        geometry_weights(geom, TRANSFORM, window, "centre"),
        ["count", "valid_fraction", "mean"],
    )
    assert got["count"] == inside.sum()
    assert got["valid_fraction"] == pytest.approx(inside.sum() / mask.sum(), abs=1e-12)
    assert got["valid_fraction"] < 1
    assert got["mean"] == pytest.approx(full[rows[inside], cols[inside]].mean(), rel=1e-12)


# ---------------------------------------------------------------------------------------
# coverage against exactextract


@pytest.fixture(scope="module")
def exactextract_results(raster: np.ndarray):
    exactextract = pytest.importorskip("exactextract")
    gpd = pytest.importorskip("geopandas")
    geoms = random_fields(21, 60) + random_fields(22, 15, snap=0.5)
    # integer-valued raster too: exactextract merges equal values in its quantiles
    rasters = {"float": raster, "integer": np.round(raster / 50.0)}
    ops = [
        "mean",
        "sum",
        "count",
        "stdev",
        "min",
        "max",
        "median",
        "quantile(q=0.1)",
        "quantile(q=0.9)",
        "coverage",
        "cell_id",
    ]
    results = {}
    for name, arr in rasters.items():
        with MemoryFile() as mem:
            profile = dict(
                driver="GTiff",
                height=SHAPE_YX[0],
                width=SHAPE_YX[1],
                count=1,
                dtype="float64",
                crs=CRS,
                transform=Affine(*TRANSFORM),
                nodata=np.nan,
            )
            with mem.open(**profile) as ds:
                ds.write(arr, 1)
            with mem.open() as ds:
                frame = gpd.GeoDataFrame(geometry=geoms, crs=CRS)
                results[name] = exactextract.exact_extract(ds, frame, ops, output="pandas")
    return geoms, rasters, results


def test_coverage_fractions_match_exactextract(exactextract_results) -> None:
    geoms, rasters, results = exactextract_results
    has_data = np.isfinite(rasters["float"]).ravel()  # exactextract skips nodata cells
    ny, nx = SHAPE_YX
    for geom, (_, row) in zip(geoms, results["float"].iterrows(), strict=True):
        window = geometry_window(geom, TRANSFORM)
        cov = geometry_weights(geom, TRANSFORM, window, "coverage")
        assert cov.min() >= 0 and cov.max() <= 1
        # the whole field, inside or outside the raster, is accounted for
        assert cov.sum() * RES_M**2 == pytest.approx(geom.area, rel=1e-9, abs=1e-6)
        ours = np.zeros(ny * nx)
        clipped = clip_window(window, SHAPE_YX)
        if clipped is not None:
            (r0, c0, h, w), slices = clipped
            full = np.zeros(SHAPE_YX)
            full[r0 : r0 + h, c0 : c0 + w] = cov[slices]
            ours = full.ravel()
        ref = np.zeros(ny * nx)
        ref[np.asarray(row["cell_id"], dtype=np.int64)] = np.asarray(row["coverage"])
        np.testing.assert_allclose(ours * has_data, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["float", "integer"])
def test_coverage_stats_match_exactextract(exactextract_results, kind: str) -> None:
    geoms, rasters, results = exactextract_results
    pairs = {
        "mean": "mean",
        "sum": "sum",
        "count": "count",
        "std": "stdev",
        "min": "min",
        "max": "max",
        "median": "median",
        "p10": "quantile_10",
        "p90": "quantile_90",
    }
    for i, (geom, (_, row)) in enumerate(zip(geoms, results[kind].iterrows(), strict=True)):
        window = geometry_window(geom, TRANSFORM)
        got = zonal_stats(
            window_values(rasters[kind], window),
            geometry_weights(geom, TRANSFORM, window, "coverage"),
            list(pairs),
        )
        if row["count"] == 0:  # exactextract reports sum 0 there; we report NaN
            assert got["count"] == 0.0
            assert all(math.isnan(got[k]) for k in pairs if k != "count"), i
            continue
        for ours, theirs in pairs.items():
            assert got[ours] == pytest.approx(row[theirs], rel=1e-6, abs=1e-6), (i, ours)


# ---------------------------------------------------------------------------------------
# windows and inputs


def test_window_helpers() -> None:
    assert geometry_window(Polygon(), TRANSFORM) is None
    assert geometry_window(box(500_000, 4_199_990, 500_010, 4_200_000), TRANSFORM) == (0, 0, 1, 1)
    assert geometry_window(box(499_980, 4_200_000, 499_990, 4_200_020), TRANSFORM, pad=1) == (
        -3,
        -3,
        4,
        3,
    )
    assert clip_window((-5, -5, 3, 3), SHAPE_YX) is None
    (clipped, (rows, cols)) = clip_window((78, -2, 5, 6), SHAPE_YX)
    assert clipped == (78, 0, 2, 4)
    assert (rows, cols) == (slice(0, 2), slice(2, 6))
    assert np.zeros((5, 6))[rows, cols].shape == clipped[2:]
    assert window_transform(TRANSFORM, (-1, 2, 3, 4)) == (
        10.0,
        0.0,
        500_020.0,
        0.0,
        -10.0,
        4_200_010.0,
    )


def test_geometry_weights_inputs() -> None:
    geom = box(500_005, 4_199_985, 500_025, 4_199_995)
    empty = geometry_weights(Polygon(), TRANSFORM, (0, 0, 3, 4), "coverage")
    assert empty.shape == (3, 4) and not empty.any()
    far = geometry_weights(geom, TRANSFORM, (50, 50, 3, 4), "all_touched")
    assert not far.any()
    with pytest.raises(ValueError, match="rule must be one of"):
        geometry_weights(geom, TRANSFORM, (0, 0, 3, 4), "center")  # type: ignore[arg-type]
    with pytest.raises(InputDataError, match="north-up"):
        geometry_weights(geom, (10.0, 1.0, 0.0, 0.0, -10.0, 0.0), (0, 0, 3, 4), "centre")
    with pytest.raises(InputDataError, match="Polygon or MultiPolygon"):
        geometry_weights(Point(500_005, 4_199_995), TRANSFORM, (0, 0, 3, 4), "centre")
    collection = shapely.GeometryCollection([geom])
    np.testing.assert_array_equal(
        geometry_weights(collection, TRANSFORM, (0, 0, 3, 4), "coverage"),
        geometry_weights(geom, TRANSFORM, (0, 0, 3, 4), "coverage"),
    )


def test_rasterize_and_kernels_do_not_import_gdal() -> None:
    code = (
        "import sys, pixelquery_batch.rasterize, pixelquery_batch.kernels.stats\n"
        "bad = [m for m in ('rasterio', 'osgeo', 'exactextract', 'distributed', 'icechunk')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------
# zonal_stats / Moments semantics


def test_zonal_stats_empty_and_invalid() -> None:
    values = np.array([[1.0, np.nan], [3.0, 4.0]])
    weights = np.array([[1.0, 1.0], [0.0, 1.0]])
    got = zonal_stats(values, weights, ALL_STATS, invalid=np.array([[False, False], [False, True]]))
    assert got["count"] == 1.0 and got["valid_fraction"] == pytest.approx(1 / 3)
    assert got["mean"] == got["min"] == got["max"] == got["median"] == got["p90"] == 1.0
    assert got["std"] == 0.0

    nothing_valid = zonal_stats(np.full((2, 2), np.nan), weights, ALL_STATS)
    assert nothing_valid["count"] == 0.0 and nothing_valid["valid_fraction"] == 0.0
    assert all(
        math.isnan(nothing_valid[k]) for k in ALL_STATS if k not in ("count", "valid_fraction")
    )

    no_pixels = zonal_stats(values, np.zeros((2, 2)), ALL_STATS)
    assert no_pixels["count"] == 0.0 and math.isnan(no_pixels["valid_fraction"])
    assert math.isnan(no_pixels["mean"])

    with pytest.raises(ValueError, match="unknown statistic 'p100'"):
        zonal_stats(values, weights, ["p100"])
    with pytest.raises(ValueError, match="shape"):
        zonal_stats(values, weights[:1], ["mean"])
    assert validate_stats(["p1", "p99", "median", "p1"]) == ("p1", "p99", "median")


def test_weighted_quantiles_definition() -> None:
    """exactextract's weighted quantile: equal weights give numpy's linear percentile,
    equal values merge."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=37)
    qs = np.linspace(0, 1, 11)
    np.testing.assert_allclose(weighted_quantiles(v, np.full(37, 0.3), qs), np.quantile(v, qs))
    # [1, 1, 1, 2] with equal weights -> values {1: 3w, 2: w}: s = [0, 4w], median 1.5
    assert weighted_quantiles(np.array([1.0, 1, 1, 2]), np.full(4, 0.5), [0.5])[0] == 1.5
    assert math.isnan(weighted_quantiles(np.array([]), np.array([]), [0.5])[0])


def test_fractional_weights_formulas() -> None:
    v = np.array([1.0, 2.0, 4.0, np.nan])
    w = np.array([0.5, 1.0, 0.25, 1.0])
    got = zonal_stats(v, w, ["mean", "sum", "count", "std", "valid_fraction"])
    mean = (0.5 + 2.0 + 1.0) / 1.75
    assert got["sum"] == pytest.approx(3.5) and got["count"] == pytest.approx(1.75)
    assert got["mean"] == pytest.approx(mean)
    assert got["std"] == pytest.approx(
        math.sqrt((0.5 * (1 - mean) ** 2 + (2 - mean) ** 2 + 0.25 * (4 - mean) ** 2) / 1.75)
    )
    assert got["valid_fraction"] == pytest.approx(1.75 / 2.75)


# ---------------------------------------------------------------------------------------
# hypothesis properties

coords = st.floats(min_value=-3.0, max_value=23.0, allow_nan=False)


@st.composite
def px_polygons(draw) -> Polygon:
    """Star-shaped polygons in pixel units of a 20 x 20 window (some vertices outside)."""
    n = draw(st.integers(3, 12))
    cx, cy = draw(coords), draw(coords)
    radii = draw(st.lists(st.floats(0.05, 9.0), min_size=n, max_size=n))
    jitter = draw(st.lists(st.floats(0.0, 0.9), min_size=n, max_size=n))
    ang = (np.arange(n) + np.asarray(jitter)) * 2 * np.pi / n
    xy = np.c_[cx + np.cos(ang) * radii, cy + np.sin(ang) * radii]
    geom = Polygon(to_world(xy))
    assume(geom.is_valid and geom.area > 0)
    return geom


@settings(max_examples=60, deadline=None)
@given(geom=px_polygons(), pad=st.integers(0, 2))
def test_property_masks_within_window(geom: Polygon, pad: int) -> None:
    window = geometry_window(geom, TRANSFORM, pad=pad)
    h, w = window[2], window[3]
    centre = geometry_weights(geom, TRANSFORM, window, "centre")
    touched = geometry_weights(geom, TRANSFORM, window, "all_touched")
    cov = geometry_weights(geom, TRANSFORM, window, "coverage")
    for weights in (centre, touched, cov):
        assert weights.shape == (h, w)
        assert (weights > 0).sum() <= h * w
        assert weights.min() >= 0.0 and weights.max() <= 1.0
    assert np.all(touched >= centre)
    # GDAL may skip slivers thinner than 0.01 px along near-vertical/horizontal edges
    assert np.all(touched[cov > 0.01] == 1.0)
    # areas to ~1e-11 px: world coordinates near 5e5 m carry no more precision
    assert cov.sum() * RES_M**2 == pytest.approx(geom.area, rel=1e-9, abs=1e-6)
    # a fixed window smaller than the geometry's: never more pixels than the window
    small = (window[0] + h // 3, window[1] + w // 3, max(h // 3, 1), max(w // 3, 1))
    for rule in ("centre", "all_touched", "coverage"):
        part = geometry_weights(geom, TRANSFORM, small, rule)
        assert part.shape == small[2:] and (part > 0).sum() <= small[2] * small[3]


def _assert_moments_close(a: Moments, b: Moments) -> None:
    assert a.count == pytest.approx(b.count, rel=1e-9, abs=1e-9)
    if b.count == 0:
        assert a.count == 0 and math.isnan(a.mean) and math.isnan(a.std)
        return
    assert a.mean == pytest.approx(b.mean, rel=1e-9, abs=1e-9)
    assert a.std == pytest.approx(b.std, rel=1e-9, abs=1e-9)
    assert a.min == b.min and a.max == b.max


@settings(max_examples=60, deadline=None)
@given(
    geom=px_polygons(),
    rule=st.sampled_from(["centre", "all_touched", "coverage"]),
    seed=st.integers(0, 2**32 - 1),
    split=st.floats(0.0, 1.0),
    nodata=st.floats(0.0, 0.5),
)
def test_property_split_and_merge_equals_single_pass(geom, rule, seed, split, nodata) -> None:
    rng = np.random.default_rng(seed)
    window = geometry_window(geom, TRANSFORM, pad=1)
    weights = geometry_weights(geom, TRANSFORM, window, rule)
    values = rng.normal(500.0, 120.0, weights.shape)
    values[rng.random(weights.shape) < nodata] = np.nan
    whole = Moments.from_values(values, weights)
    k = round(split * weights.shape[0])  # two row chunks (one may be empty)
    top = Moments.from_values(values[:k], weights[:k])
    bottom = Moments.from_values(values[k:], weights[k:])
    _assert_moments_close(top.merge(bottom), whole)
    _assert_moments_close(bottom.merge(top), whole)
    _assert_moments_close(Moments.merge_all([Moments(), top, Moments(), bottom]), whole)
    # and zonal_stats agrees with the single pass
    got = zonal_stats(values, weights, ["count", "mean", "std", "min", "max"])
    as_moments = Moments(
        count=got["count"],
        sum=got["mean"] * got["count"] if got["count"] else 0.0,
        m2=got["std"] ** 2 * got["count"] if got["count"] else 0.0,
        min=got["min"],
        max=got["max"],
    )
    _assert_moments_close(as_moments, whole)


@settings(max_examples=80, deadline=None)
@given(
    col=st.integers(0, 19),
    row=st.integers(0, 19),
    pts=st.lists(st.tuples(st.floats(0.01, 0.99), st.floats(0.01, 0.99)), min_size=3, max_size=3),
)
def test_property_subpixel_polygon_centre_count(col: int, row: int, pts) -> None:
    """A triangle inside one pixel counts 1 pixel under the centre rule iff it holds the
    pixel centre, else 0; all_touched always counts exactly that pixel."""
    xy = np.asarray([(col + x, row + y) for x, y in pts])
    geom = Polygon(to_world(xy))
    assume(geom.is_valid and geom.area > 1e-6)
    centre_pt = Point(to_world(np.array([[col + 0.5, row + 0.5]]))[0])
    assume(geom.exterior.distance(centre_pt) > 1e-6)  # no exact-on-edge centre
    window = geometry_window(geom, TRANSFORM)
    values = np.ones((window[2], window[3]))
    got = zonal_stats(values, geometry_weights(geom, TRANSFORM, window, "centre"), ["count"])
    assert got["count"] == (1.0 if geom.contains(centre_pt) else 0.0)
    touched = zonal_stats(
        values, geometry_weights(geom, TRANSFORM, window, "all_touched"), ["count"]
    )
    assert touched["count"] == 1.0
    cov = geometry_weights(geom, TRANSFORM, window, "coverage")
    assert cov.sum() * RES_M**2 == pytest.approx(geom.area, rel=1e-9, abs=1e-6)
