"""Reprojection and composite kernels (``pixelquery_batch.kernels.resample``).

- ``reproject_nearest`` against GDAL (``rasterio.warp.reproject``, nearest) from UTM 33N
  to UTM 34N, EPSG:3035 and EPSG:4326: bit-identical, NaN included. GDAL must run with
  an *exact* transformer for that: ``tolerance=0`` (rasterio's name for gdalwarp's
  ``-et``; with the default 0.125 px approximation a few hundred pixels differ, and
  passing ``ERROR_THRESHOLD=0`` as a warp option has no effect). A same-CRS case with
  many target centres exactly on source pixel edges checks the ``1e-10`` pixel slack
  GDAL applies there.
- Source windows: a sub-array gives the whole-raster result on the pixels it covers;
  ``source_window_for`` contains every source pixel used.
- ``composite_pixels`` against per-pixel loops and numpy's nan-functions (ties, NaN
  NDVI, all-NaN pixels, no RuntimeWarning).
- ``Grid.covering`` alignment and minimality; ``estimate_grid_pixels`` against the grid
  covering the densely transformed bbox.
"""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
import rasterio.warp
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS as RioCRS
from rasterio.enums import Resampling

from pixelquery_batch.errors import InputDataError, SpecError
from pixelquery_batch.kernels import resample
from pixelquery_batch.kernels.resample import (
    COMPOSITE_METHODS,
    Grid,
    composite_pixels,
    estimate_grid_pixels,
    reproject_nearest,
    source_indices,
    source_window_for,
)

# A 5 km x 4 km scene near the UTM 33/34 zone boundary (~17.6 E, 48.3 N), origin off
# the 10 m lattice so the target grids below do not align with it.
SOURCE = Grid("EPSG:32633", (10.0, 0.0, 690003.0, 0.0, -10.0, 5350007.0), (400, 500))

TARGETS = {
    "utm34n_10m": ("EPSG:32634", 10.0),
    "laea3035_20m": ("EPSG:3035", 20.0),
    "wgs84_1e-4deg": ("EPSG:4326", 0.0001),
}


def _source_values(grid: Grid = SOURCE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.random(grid.shape_yx)
    values[100:150, 200:260] = np.nan  # a NaN block inside the raster
    return values


def _target_grid(crs: str, res: float, pad_px: int = 3) -> Grid:
    """Grid in ``crs`` covering the source scene plus a margin (so some pixels miss it)."""
    tr = Transformer.from_crs(SOURCE.crs, crs, always_xy=True)
    minx, miny, maxx, maxy = tr.transform_bounds(*SOURCE.bounds(), densify_pts=51)
    pad = pad_px * res
    return Grid.covering((minx - pad, miny - pad, maxx + pad, maxy + pad), crs, res)


def _gdal_nearest(values: np.ndarray, source: Grid, target: Grid, **kwargs: object) -> np.ndarray:
    out = np.full(target.shape_yx, np.nan)
    rasterio.warp.reproject(
        values,
        out,
        src_transform=Affine(*source.transform),
        src_crs=RioCRS.from_user_input(source.crs),
        src_nodata=np.nan,
        dst_transform=Affine(*target.transform),
        dst_crs=RioCRS.from_user_input(target.crs),
        dst_nodata=np.nan,
        resampling=Resampling.nearest,
        **kwargs,
    )
    return out


def _mismatches(a: np.ndarray, b: np.ndarray) -> int:
    return int((~((a == b) | (np.isnan(a) & np.isnan(b)))).sum())


# ------------------------------------------------------------------ GDAL comparison


@pytest.mark.parametrize("name", list(TARGETS))
def test_reproject_nearest_matches_gdal_exact_transformer(name: str) -> None:
    crs, res = TARGETS[name]
    target = _target_grid(crs, res)
    values = _source_values()
    ours = reproject_nearest(values, SOURCE, target)
    # tolerance=0: exact GenImgProj transformer instead of GDAL's 0.125 px approximation.
    ref = _gdal_nearest(values, SOURCE, target, tolerance=0)
    assert ours.dtype == np.float64
    assert ours.shape == target.shape_yx
    np.testing.assert_array_equal(ours, ref)  # NaN == NaN; bit-identical
    # The comparison is meaningful: values, outside-the-scene pixels and the NaN block.
    inside = source_indices(target, SOURCE)[2]
    assert inside.mean() > 0.5
    assert np.isnan(ours[~inside]).all()
    assert np.isnan(ours[inside]).sum() > 100


def test_reproject_nearest_matches_gdal_on_pixel_edge_ties() -> None:
    # 0.3 m source, 0.2 m target on the same CRS: every third target centre lies exactly
    # on a source pixel edge, where rounding decides the pixel. GDAL adds 1e-10 pixel
    # before truncating; a bare floor would pick the pixel before the edge there.
    source = Grid("EPSG:32633", (0.3, 0.0, 690000.3, 0.0, -0.3, 5350000.3), (50, 50))
    target = Grid.covering(source.bounds(), "EPSG:32633", 0.2)
    values = np.random.default_rng(1).random(source.shape_yx)
    ref = _gdal_nearest(values, source, target, tolerance=0)
    np.testing.assert_array_equal(reproject_nearest(values, source, target), ref)


def test_pixel_edge_slack_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    source = Grid("EPSG:32633", (0.3, 0.0, 690000.3, 0.0, -0.3, 5350000.3), (50, 50))
    target = Grid.covering(source.bounds(), "EPSG:32633", 0.2)
    values = np.random.default_rng(1).random(source.shape_yx)
    ref = _gdal_nearest(values, source, target, tolerance=0)
    monkeypatch.setattr(resample, "_EDGE_EPS_PX", 0.0)
    assert _mismatches(reproject_nearest(values, source, target), ref) > 0


def test_reproject_nearest_same_crs_is_plain_indexing() -> None:
    target = Grid("EPSG:32633", (10.0, 0.0, 690003.0 + 50.0, 0.0, -10.0, 5350007.0 - 30.0), (7, 9))
    values = _source_values()
    np.testing.assert_array_equal(reproject_nearest(values, SOURCE, target), values[3:10, 5:14])


# ------------------------------------------------------------------ windows


@pytest.mark.parametrize("name", list(TARGETS))
def test_source_window_for_contains_every_source_pixel_used(name: str) -> None:
    crs, res = TARGETS[name]
    for target in (_target_grid(crs, res), _target_grid(crs, res, pad_px=-60)):
        rows, cols, valid = source_indices(target, SOURCE)
        window = source_window_for(target, SOURCE)
        assert window is not None
        r0, r1, c0, c1 = window
        assert 0 <= r0 < r1 <= SOURCE.shape_yx[0]
        assert 0 <= c0 < c1 <= SOURCE.shape_yx[1]
        assert rows[valid].min() >= r0 and rows[valid].max() < r1
        assert cols[valid].min() >= c0 and cols[valid].max() < c1
        # ... and is tight (perimeter-based, padded by one pixel)
        assert r0 >= rows[valid].min() - 2 and r1 <= rows[valid].max() + 3
        assert c0 >= cols[valid].min() - 2 and c1 <= cols[valid].max() + 3


def test_source_window_for_without_overlap_is_none() -> None:
    far = Grid.covering((20.0, 40.0, 20.01, 40.01), "EPSG:4326", 0.001)
    assert source_window_for(far, SOURCE) is None
    assert not source_indices(far, SOURCE)[2].any()
    assert np.isnan(reproject_nearest(_source_values(), SOURCE, far)).all()


@pytest.mark.parametrize("name", list(TARGETS))
def test_source_window_gives_the_same_result(name: str) -> None:
    crs, res = TARGETS[name]
    target = _target_grid(crs, res, pad_px=-40)
    values = _source_values()
    full = reproject_nearest(values, SOURCE, target)

    window = source_window_for(target, SOURCE)
    assert window is not None
    r0, r1, c0, c1 = window
    assert (r1 - r0) * (c1 - c0) < values.size
    windowed = reproject_nearest(values[r0:r1, c0:c1], SOURCE, target, source_window=window)
    np.testing.assert_array_equal(windowed, full)

    # An arbitrary chunk: same values on the target pixels it covers, NaN elsewhere.
    chunk = (50, 230, 120, 333)
    r0, r1, c0, c1 = chunk
    part = reproject_nearest(values[r0:r1, c0:c1], SOURCE, target, source_window=chunk)
    rows, cols, valid = source_indices(target, SOURCE)
    covered = valid & (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    assert covered.sum() > 1000
    np.testing.assert_array_equal(part[covered], full[covered])
    assert np.isnan(part[~covered]).all()


def test_source_indices_target_window_is_a_slice() -> None:
    target = _target_grid("EPSG:32634", 10.0)
    full = source_indices(target, SOURCE)
    win = (10, 200, 37, 301)
    part = source_indices(target, SOURCE, window=win)
    for a, b in zip(full, part, strict=True):
        np.testing.assert_array_equal(a[10:200, 37:301], b)
    rows, cols, valid = full
    assert rows.dtype == np.int64 and cols.dtype == np.int64 and valid.dtype == np.bool_
    assert (rows[~valid] == -1).all() and (cols[~valid] == -1).all()


def test_window_and_shape_errors() -> None:
    target = _target_grid("EPSG:32634", 10.0)
    with pytest.raises(InputDataError):
        source_indices(target, SOURCE, window=(0, target.shape_yx[0] + 1, 0, 5))
    with pytest.raises(InputDataError, match="do not match"):
        reproject_nearest(np.zeros((3, 3)), SOURCE, target, source_window=(0, 4, 0, 3))


# ------------------------------------------------------------------ composites


def _loop_composite(stack: np.ndarray, method: str, ndvi: np.ndarray | None = None) -> np.ndarray:
    n, h, w = stack.shape
    out = np.full((h, w), np.nan)
    for i in range(h):
        for j in range(w):
            if method == "max_ndvi":
                assert ndvi is not None
                best = None
                for k in range(n):
                    v, q = stack[k, i, j], ndvi[k, i, j]
                    if math.isnan(v) or math.isnan(q):
                        continue
                    if best is None or q > best[0]:
                        best = (q, v)
                if best is not None:
                    out[i, j] = best[1]
                continue
            vals = [float(v) for v in stack[:, i, j] if not math.isnan(v)]
            if not vals:
                continue
            if method == "median":
                out[i, j] = float(np.median(vals))
            elif method == "mean":
                out[i, j] = float(np.mean(vals))
            else:
                out[i, j] = max(vals)
    return out


@pytest.fixture
def stacks() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    n, h, w = 6, 17, 23
    stack = rng.normal(size=(n, h, w))
    stack[rng.random((n, h, w)) < 0.35] = np.nan
    stack[:, 0, :5] = np.nan  # all-NaN pixels
    ndvi = np.round(rng.uniform(-1, 1, size=(n, h, w)), 1)  # coarse -> many ties
    ndvi[rng.random((n, h, w)) < 0.2] = np.nan
    ndvi[:, 1, 0] = 0.5  # explicit tie on every layer
    stack[:, 1, 0] = np.arange(n, dtype=float)
    stack[0, 1, 1], ndvi[0, 1, 1] = 10.0, np.nan  # NaN NDVI never wins ...
    stack[1:, 1, 1], ndvi[1:, 1, 1] = -5.0, -0.9  # ... even against a low one
    return stack, ndvi


@pytest.mark.parametrize("method", COMPOSITE_METHODS)
def test_composite_pixels_matches_loops(method: str, stacks: tuple[np.ndarray, np.ndarray]) -> None:
    stack, ndvi = stacks
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning for all-NaN pixels
        got = composite_pixels(stack, method, ndvi_stack=ndvi)
    want = _loop_composite(stack, method, ndvi)
    assert got.dtype == np.float64 and got.shape == stack.shape[1:]
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
    assert np.isnan(got[0, :5]).all()
    if method != "max_ndvi":
        nan_fn = {"median": np.nanmedian, "mean": np.nanmean, "max": np.nanmax}[method]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            np.testing.assert_array_equal(got, nan_fn(stack, axis=0))


def test_max_ndvi_ties_and_nan_ndvi(stacks: tuple[np.ndarray, np.ndarray]) -> None:
    stack, ndvi = stacks
    got = composite_pixels(stack, "max_ndvi", ndvi_stack=ndvi)
    assert got[1, 0] == 0.0  # tie on all layers -> first layer
    assert got[1, 1] == -5.0  # the NaN-NDVI layer is never chosen
    # NDVI of -inf is still a valid candidate (better than none).
    s = np.array([[[1.0]], [[2.0]]])
    q = np.array([[[np.nan]], [[-np.inf]]])
    assert composite_pixels(s, "max_ndvi", ndvi_stack=q)[0, 0] == 2.0


def test_composite_errors_and_empty_stack() -> None:
    stack = np.zeros((2, 3, 4))
    with pytest.raises(SpecError) as err:
        composite_pixels(stack, "min")
    for name in COMPOSITE_METHODS:
        assert name in str(err.value)
    with pytest.raises(InputDataError, match="ndvi_stack"):
        composite_pixels(stack, "max_ndvi")
    with pytest.raises(InputDataError, match="shape"):
        composite_pixels(stack, "max_ndvi", ndvi_stack=np.zeros((2, 3, 3)))
    with pytest.raises(InputDataError):
        composite_pixels(np.zeros((3, 4)), "mean")
    empty = composite_pixels(np.zeros((0, 3, 4)), "median")
    assert empty.shape == (3, 4) and np.isnan(empty).all()


# ------------------------------------------------------------------ grids and estimates


def test_grid_covering_alignment() -> None:
    rng = np.random.default_rng(3)
    for crs, res in [("EPSG:32633", 10.0), ("EPSG:3035", 20.0), ("EPSG:4326", 0.0001)]:
        for _ in range(50):
            scale = 1000.0 * res
            x0, y0 = rng.uniform(-50, 50) * scale, rng.uniform(-50, 50) * scale
            bounds = (x0, y0, x0 + rng.uniform(0, 3) * scale, y0 + rng.uniform(0, 3) * scale)
            g = Grid.covering(bounds, crs, res)
            a, b, c, d, e, f = g.transform
            assert (a, b, d, e) == (res, 0.0, 0.0, -res)
            assert abs(c / res - round(c / res)) < 1e-6  # origin on the resolution lattice
            assert abs(f / res - round(f / res)) < 1e-6
            minx, miny, maxx, maxy = g.bounds()
            assert minx <= bounds[0] and miny <= bounds[1]  # covers ...
            assert maxx >= bounds[2] and maxy >= bounds[3]
            assert bounds[0] - minx < res and bounds[1] - miny < res  # ... minimally
            assert maxx - bounds[2] < res and maxy - bounds[3] < res
            assert g.n_pixels == g.shape_yx[0] * g.shape_yx[1]


def test_grid_covering_exact_multiples_and_degenerate() -> None:
    assert Grid.covering((0.0, 0.0, 100.0, 50.0), "EPSG:32633", 10.0).shape_yx == (5, 10)
    g = Grid.covering((16.0, 48.0, 16.05, 48.03), "EPSG:4326", 0.0001)
    assert g.shape_yx == (300, 500)
    assert g.transform[2] == pytest.approx(16.0) and g.transform[5] == pytest.approx(48.03)
    assert Grid.covering((5.0, 5.0, 5.0, 5.0), "EPSG:32633", 10.0).shape_yx == (1, 1)


def test_grid_validation_and_pickle() -> None:
    with pytest.raises(InputDataError, match="north-up"):
        Grid("EPSG:32633", (10.0, 1.0, 0.0, 0.0, -10.0, 0.0), (2, 2))
    with pytest.raises(InputDataError):
        Grid("EPSG:32633", (10.0, 0.0, 0.0, 0.0, -10.0, 0.0), (0, 2))
    with pytest.raises(SpecError):
        Grid.covering((0.0, 0.0, 1.0, 1.0), "EPSG:32633", 0.0)
    with pytest.raises(SpecError):
        Grid.covering((1.0, 0.0, 0.0, 1.0), "EPSG:32633", 1.0)
    with pytest.raises(SpecError):
        Grid.covering((0.0, 0.0, 1.0, 1.0), "EPSG:not-a-crs", 1.0)
    assert pickle.loads(pickle.dumps(SOURCE)) == SOURCE
    assert hash(SOURCE) == hash(Grid(SOURCE.crs, SOURCE.transform, SOURCE.shape_yx))


def _exact_pixels(bounds_lonlat: tuple[float, float, float, float], crs: str, res: float) -> int:
    """Pixels of the grid covering the bbox transformed with 4001 points per edge."""
    minlon, minlat, maxlon, maxlat = bounds_lonlat
    t = np.linspace(0.0, 1.0, 4001)
    lon = np.concatenate([minlon + t * (maxlon - minlon)] * 2 + [np.full_like(t, minlon), np.full_like(t, maxlon)])
    lat = np.concatenate([np.full_like(t, minlat), np.full_like(t, maxlat)] + [minlat + t * (maxlat - minlat)] * 2)
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    return Grid.covering((x.min(), y.min(), x.max(), y.max()), crs, res).n_pixels


@pytest.mark.parametrize(
    ("bounds", "crs", "res"),
    [
        ((17.4, 48.1, 17.7, 48.4), "EPSG:32633", 10.0),
        ((17.4, 48.1, 17.7, 48.4), "EPSG:32634", 10.0),
        ((12.0, 45.0, 19.0, 50.0), "EPSG:32633", 10.0),  # large: curved edges
        ((12.0, 45.0, 19.0, 50.0), "EPSG:3035", 20.0),
        ((17.4, 48.1, 17.7, 48.4), "EPSG:4326", 0.0001),
    ],
)
def test_estimate_grid_pixels_close_to_exact(
    bounds: tuple[float, float, float, float], crs: str, res: float
) -> None:
    est = estimate_grid_pixels(bounds, crs, res)
    exact = _exact_pixels(bounds, crs, res)
    assert isinstance(est, int)
    assert abs(est - exact) / exact < 0.02


def test_estimate_grid_pixels_errors() -> None:
    with pytest.raises(SpecError):
        estimate_grid_pixels((17.4, 48.1, 17.7, 48.4), "EPSG:32633", -1.0)
    with pytest.raises(SpecError):
        estimate_grid_pixels((17.7, 48.1, 17.4, 48.4), "EPSG:32633", 10.0)
