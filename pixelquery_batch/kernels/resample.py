"""Nearest-neighbour reprojection onto an output grid, and per-pixel composites (kernels layer).

Pure computation with numpy and pyproj only (no rasterio/GDAL, no I/O): composites per
region and period are written on the grid a job spec gives (``crs``, ``resolution``)
from scenes that may lie in other CRSs (e.g. other UTM zones).

Conventions
-----------
- Geotransforms are affine 6-tuples ``(a, b, c, d, e, f)`` in rasterio order
  (``x = c + a * col + b * row``, ``y = f + d * col + e * row``), north-up only
  (``b == d == 0``, ``a > 0``, ``e < 0``).
- Windows are ``(row0, row1, col0, col1)``, half-open, in pixels of the grid they refer
  to.
- NaN marks an invalid pixel everywhere; everything is float64.

Nearest-neighbour semantics follow GDAL's warper (``gdalwarp -r near -et 0``): the
centre of each target pixel (``col + 0.5``, ``row + 0.5``) goes to target coordinates
with the target geotransform, to the source CRS with an *exact* pyproj transformation
(``always_xy``; no interpolating approximation), then to fractional source pixel
coordinates ``(sx, sy)`` with the inverse source geotransform, computed as GDAL's
``GDALInvGeoTransform`` does. The point is inside the source raster when ``0 <= sx``,
``0 <= sy``, ``sx + 1e-10 <= width`` and ``sy + 1e-10 <= height``, and the source pixel
is ``floor(sx + 1e-10)``, ``floor(sy + 1e-10)`` (clamped to the last row/column): GDAL's
``GWKCheckAndComputeSrcOffsets``, whose ``1e-10`` pixel slack resolves points that land
on a pixel edge up to rounding in favour of the pixel after the edge.

Composites (:func:`composite_pixels`) reduce a stack ``(n, h, w)`` of target-grid arrays
per pixel (``"max_ndvi"``, ``"median"``, ``"mean"``, ``"max"``); all-NaN pixels stay
NaN and no ``RuntimeWarning`` is emitted (no global warning filters are touched either,
so this is safe in threaded workers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from pixelquery_batch.errors import InputDataError, SpecError

__all__ = [
    "COMPOSITE_METHODS",
    "Grid",
    "composite_pixels",
    "estimate_grid_pixels",
    "reproject_nearest",
    "source_indices",
    "source_window_for",
]

#: Per-pixel composite methods understood by :func:`composite_pixels`.
COMPOSITE_METHODS: tuple[str, ...] = ("max_ndvi", "median", "mean", "max")

#: GDAL's slack (in source pixels) when truncating a source coordinate to a pixel index.
_EDGE_EPS_PX = 1e-10

#: Relative tolerance (in pixels) when snapping bounds to multiples of the resolution,
#: so bounds that are multiples up to rounding do not gain an extra row/column.
_SNAP_RTOL = 1e-9

#: Target pixels transformed per block in :func:`reproject_nearest` (bounds memory).
_BLOCK_PIXELS = 1 << 20

#: Points per bbox edge for :func:`estimate_grid_pixels`.
_DENSIFY_PTS = 21

Transform6 = tuple[float, float, float, float, float, float]
Window = tuple[int, int, int, int]


# --------------------------------------------------------------------------- grids


@dataclass(frozen=True, slots=True)
class Grid:
    """A north-up raster grid: CRS, affine geotransform and shape.

    Parameters
    ----------
    crs
        The grid's CRS as a user string (``"EPSG:32633"``, or WKT).
    transform
        Affine coefficients ``(a, b, c, d, e, f)`` in rasterio order; north-up only
        (``b == d == 0``, ``a > 0``, ``e < 0``).
    shape_yx
        ``(rows, cols)``, both >= 1.

    Raises
    ------
    InputDataError
        If the geotransform is not north-up or not finite, or the shape is not positive.

    Examples
    --------
    >>> g = Grid.covering((500003.0, 4999990.0, 500021.0, 5000000.0), "EPSG:32633", 10.0)
    >>> g.transform, g.shape_yx, g.n_pixels
    ((10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0), (1, 3), 3)
    >>> g.bounds()
    (500000.0, 4999990.0, 500030.0, 5000000.0)
    """

    crs: str
    transform: Transform6
    shape_yx: tuple[int, int]

    def __post_init__(self) -> None:
        if len(self.transform) != 6:
            raise InputDataError(
                f"grid transform must have 6 coefficients (a, b, c, d, e, f), got {self.transform!r}"
            )
        a, b, c, d, e, f = (float(v) for v in self.transform)
        if not all(math.isfinite(v) for v in (a, b, c, d, e, f)):
            raise InputDataError(f"grid transform is not finite: {self.transform!r}")
        if b != 0.0 or d != 0.0 or a <= 0.0 or e >= 0.0:
            raise InputDataError(
                f"grid transform {self.transform!r} is not north-up",
                hint="only b == d == 0, a > 0, e < 0 is supported; warp rotated rasters first",
            )
        rows, cols = self.shape_yx
        if int(rows) != rows or int(cols) != cols or rows < 1 or cols < 1:
            raise InputDataError(f"grid shape_yx must be two positive ints, got {self.shape_yx!r}")
        object.__setattr__(self, "transform", (a, b, c, d, e, f))
        object.__setattr__(self, "shape_yx", (int(rows), int(cols)))

    @classmethod
    def covering(
        cls, bounds: tuple[float, float, float, float], crs: str, resolution: float
    ) -> Grid:
        """Smallest grid aligned to multiples of ``resolution`` that covers ``bounds``.

        Parameters
        ----------
        bounds
            ``(minx, miny, maxx, maxy)`` in ``crs`` units.
        crs
            CRS of the grid (and of ``bounds``).
        resolution
            Square pixel size in ``crs`` units (> 0).

        Returns
        -------
        Grid
            Origin snapped outward (``minx`` down, ``maxy`` up) to multiples of
            ``resolution``, extent snapped outward likewise; at least one pixel each way.
            Bounds that are multiples of ``resolution`` up to rounding (relative 1e-9
            pixel) are not extended by an extra pixel.

        Raises
        ------
        SpecError
            Invalid CRS, non-positive or non-finite resolution, or invalid bounds.
        """
        _check_crs(crs)
        res = _check_resolution(resolution)
        minx, miny, maxx, maxy = _check_bounds(bounds)
        col0, col1 = _snap_range(minx / res, maxx / res)
        row0, row1 = _snap_range(miny / res, maxy / res)
        return cls(
            crs=crs,
            transform=(res, 0.0, col0 * res, 0.0, -res, row1 * res),
            shape_yx=(row1 - row0, col1 - col0),
        )

    @property
    def n_pixels(self) -> int:
        """Number of pixels (rows * cols)."""
        return self.shape_yx[0] * self.shape_yx[1]

    def bounds(self) -> tuple[float, float, float, float]:
        """Outer edges ``(minx, miny, maxx, maxy)`` of the grid, in its CRS."""
        a, _, c, _, e, f = self.transform
        rows, cols = self.shape_yx
        return (c, f + e * rows, c + a * cols, f)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (type(self).__qualname__, self.crs, self.transform, self.shape_yx)


def _check_crs(crs: str) -> CRS:
    try:
        return CRS.from_user_input(crs)
    except CRSError as exc:
        raise SpecError(
            f"invalid crs {crs!r}: {exc}", hint="use an 'EPSG:nnnn' code or WKT", crs=crs
        ) from exc


def _check_resolution(resolution: float) -> float:
    res = float(resolution)
    if not math.isfinite(res) or res <= 0:
        raise SpecError(
            f"invalid resolution {resolution!r}: expected a positive number of CRS units",
            resolution=resolution,
        )
    return res


def _check_bounds(bounds: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    if len(bounds) != 4:
        raise SpecError(f"invalid bounds {bounds!r}: expected (minx, miny, maxx, maxy)")
    minx, miny, maxx, maxy = (float(v) for v in bounds)
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)) or minx > maxx or miny > maxy:
        raise SpecError(
            f"invalid bounds {bounds!r}: expected finite (minx, miny, maxx, maxy) with min <= max"
        )
    return minx, miny, maxx, maxy


def _snap_range(lo: float, hi: float) -> tuple[int, int]:
    """Integer range ``[k0, k1)`` covering ``[lo, hi]`` (in pixel units), snapped outward."""
    k0 = math.floor(lo + _SNAP_RTOL * max(1.0, abs(lo)))
    k1 = math.ceil(hi - _SNAP_RTOL * max(1.0, abs(hi)))
    return k0, max(k1, k0 + 1)


def _inverse_north_up(transform: Transform6) -> Transform6:
    """Inverse geotransform of a north-up grid, as GDAL's ``GDALInvGeoTransform`` computes it."""
    a, _, c, _, e, f = transform
    return (1.0 / a, 0.0, -c / a, 0.0, 1.0 / e, -f / e)


def _same_crs(crs1: str, crs2: str) -> bool:
    return crs1 == crs2 or CRS.from_user_input(crs1) == CRS.from_user_input(crs2)


def _transformer(src: str, dst: str) -> Transformer | None:
    """Exact pyproj transformation ``src -> dst`` (``always_xy``), ``None`` for the same CRS.

    A new transformer per call: pyproj transformers are not shared between threads.
    """
    if _same_crs(src, dst):
        return None
    return Transformer.from_crs(CRS.from_user_input(src), CRS.from_user_input(dst), always_xy=True)


def _check_window(window: Window, shape_yx: tuple[int, int], what: str) -> Window:
    if len(window) != 4:
        raise InputDataError(f"{what} {window!r} must be (row0, row1, col0, col1)")
    r0, r1, c0, c1 = (int(v) for v in window)
    rows, cols = shape_yx
    if not (0 <= r0 <= r1 <= rows and 0 <= c0 <= c1 <= cols):
        raise InputDataError(
            f"{what} {window!r} is outside the grid of shape {shape_yx!r}",
            hint="expected 0 <= row0 <= row1 <= rows and 0 <= col0 <= col1 <= cols",
        )
    return r0, r1, c0, c1


def _source_coords(
    cols: np.ndarray,
    rows: np.ndarray,
    target: Grid,
    source: Grid,
    transformer: Transformer | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fractional source pixel coordinates of target pixel centres ``(cols, rows)``.

    ``cols`` and ``rows`` are broadcast together; non-finite where the CRS
    transformation fails.
    """
    a, b, c, d, e, f = target.transform
    px = np.asarray(cols, dtype=np.float64) + 0.5
    py = np.asarray(rows, dtype=np.float64) + 0.5
    px, py = np.broadcast_arrays(px, py)
    # Same operation order as GDALGenImgProjTransform (pixel -> georeferenced).
    x = c + px * a + py * b
    y = f + px * d + py * e
    if transformer is not None:
        shape = x.shape
        x, y = transformer.transform(x.ravel(), y.ravel())
        x = np.asarray(x, dtype=np.float64).reshape(shape)
        y = np.asarray(y, dtype=np.float64).reshape(shape)
    ia, ib, ic, id_, ie, if_ = _inverse_north_up(source.transform)
    sx = ic + x * ia + y * ib
    sy = if_ + x * id_ + y * ie
    return sx, sy


def _to_indices(
    sx: np.ndarray, sy: np.ndarray, shape_yx: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GDAL's ``GWKCheckAndComputeSrcOffsets``: (rows, cols, valid); -1 where not valid."""
    height, width = shape_yx
    with np.errstate(invalid="ignore"):
        valid = (
            (sx >= 0.0)
            & (sy >= 0.0)
            & (sx + _EDGE_EPS_PX <= width)
            & (sy + _EDGE_EPS_PX <= height)
        )  # NaN/inf compare False
    cols = np.full(sx.shape, -1, dtype=np.int64)
    rows = np.full(sx.shape, -1, dtype=np.int64)
    cols[valid] = np.minimum(np.floor(sx[valid] + _EDGE_EPS_PX), width - 1).astype(np.int64)
    rows[valid] = np.minimum(np.floor(sy[valid] + _EDGE_EPS_PX), height - 1).astype(np.int64)
    return rows, cols, valid


# ----------------------------------------------------------------------- reprojection


def source_indices(
    target: Grid, source: Grid, *, window: Window | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source pixel under each target pixel centre (GDAL "nearest" semantics).

    Parameters
    ----------
    target
        The output grid.
    source
        The grid of the raster to sample.
    window
        Only target rows ``row0:row1`` and columns ``col0:col1``, as
        ``(row0, row1, col0, col1)``; default the whole target grid.

    Returns
    -------
    (rows, cols, valid)
        ``int64``, ``int64`` and ``bool`` arrays of the (windowed) target shape: the
        source row and column containing each target pixel centre, and whether that
        centre falls inside the source raster. ``rows`` and ``cols`` are ``-1`` where
        ``valid`` is False (also where the CRS transformation fails).

    Raises
    ------
    InputDataError
        If ``window`` is malformed or outside the target grid.

    Notes
    -----
    Centres go to the source CRS with an exact pyproj transformation, no
    approximation. A centre exactly on a source pixel edge (up to 1e-10 pixel) belongs
    to the pixel after the edge, as in GDAL's warper; see the module docstring.
    """
    r0, r1, c0, c1 = _check_window(
        window if window is not None else (0, target.shape_yx[0], 0, target.shape_yx[1]),
        target.shape_yx,
        "target window",
    )
    transformer = _transformer(target.crs, source.crs)
    sx, sy = _source_coords(
        np.arange(c0, c1)[np.newaxis, :], np.arange(r0, r1)[:, np.newaxis], target, source, transformer
    )
    return _to_indices(sx, sy, source.shape_yx)


def reproject_nearest(
    values: np.ndarray,
    source: Grid,
    target: Grid,
    *,
    source_window: Window | None = None,
) -> np.ndarray:
    """Nearest-neighbour reprojection of a source raster (or a window of it) to a target grid.

    Parameters
    ----------
    values
        ``(h, w)`` array (cast to float64) holding the source grid's window
        ``source_window``; NaN marks invalid pixels.
    source
        Grid of the full source raster.
    target
        Output grid.
    source_window
        ``(row0, row1, col0, col1)`` of the source grid that ``values`` covers; default
        the whole source grid. See :func:`source_window_for`.

    Returns
    -------
    numpy.ndarray
        float64 array of ``target.shape_yx``: the source value under each target pixel
        centre, NaN where that centre falls outside the provided values (or on a NaN
        source pixel). On the target pixels a window covers, the result equals the
        whole-raster result.

    Raises
    ------
    InputDataError
        If ``values`` is not 2-D or its shape does not match ``source_window``.
    """
    arr = np.asarray(values, dtype=np.float64)
    r0, r1, c0, c1 = _check_window(
        source_window if source_window is not None else (0, source.shape_yx[0], 0, source.shape_yx[1]),
        source.shape_yx,
        "source window",
    )
    if arr.shape != (r1 - r0, c1 - c0):
        raise InputDataError(
            f"values of shape {arr.shape!r} do not match source window "
            f"{(r0, r1, c0, c1)!r} (expected {(r1 - r0, c1 - c0)!r})"
        )
    rows_t, cols_t = target.shape_yx
    out = np.full((rows_t, cols_t), np.nan, dtype=np.float64)
    if arr.size == 0:
        return out
    transformer = _transformer(target.crs, source.crs)
    step = max(1, _BLOCK_PIXELS // cols_t)
    col_idx = np.arange(cols_t)[np.newaxis, :]
    for start in range(0, rows_t, step):
        stop = min(rows_t, start + step)
        sx, sy = _source_coords(
            col_idx, np.arange(start, stop)[:, np.newaxis], target, source, transformer
        )
        rows, cols, valid = _to_indices(sx, sy, source.shape_yx)
        inside = valid & (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
        block = out[start:stop]
        block[inside] = arr[rows[inside] - r0, cols[inside] - c0]
    return out


def source_window_for(target: Grid, source: Grid) -> Window | None:
    """Window of the source grid that :func:`reproject_nearest` onto ``target`` can read.

    Parameters
    ----------
    target
        Output grid.
    source
        Grid of the source raster.

    Returns
    -------
    (row0, row1, col0, col1) or None
        Half-open window, clipped to the source grid, containing every source pixel
        that some target pixel centre falls in; ``None`` when no target pixel centre can
        fall inside the source raster.

    Notes
    -----
    Only the outermost target pixel centres (the perimeter, ``2 * (rows + cols)``
    points) are transformed: the transformation is continuous and one-to-one, so the
    source coordinates of every interior centre lie within the range of the
    perimeter's; the window is padded by one pixel for the curvature of the edges
    between adjacent perimeter centres. The window is therefore conservative (it can
    hold a few pixels no centre falls in). If some perimeter point cannot be
    transformed (target reaching outside the source CRS's domain), every target
    centre is transformed instead, block by block, and the window is exact.
    """
    rows_t, cols_t = target.shape_yx
    transformer = _transformer(target.crs, source.crs)
    last_r, last_c = rows_t - 1, cols_t - 1
    cc = np.arange(cols_t)
    rr = np.arange(rows_t)
    per_cols = np.concatenate([cc, cc, np.zeros(rows_t, np.int64), np.full(rows_t, last_c)])
    per_rows = np.concatenate([np.zeros(cols_t, np.int64), np.full(cols_t, last_r), rr, rr])
    sx, sy = _source_coords(per_cols, per_rows, target, source, transformer)
    height, width = source.shape_yx
    if np.all(np.isfinite(sx)) and np.all(np.isfinite(sy)):
        col0 = math.floor(float(sx.min())) - 1
        col1 = math.floor(float(sx.max())) + 2
        row0 = math.floor(float(sy.min())) - 1
        row1 = math.floor(float(sy.max())) + 2
        col0, col1 = max(col0, 0), min(col1, width)
        row0, row1 = max(row0, 0), min(row1, height)
        if col0 >= col1 or row0 >= row1:
            return None
        return (row0, row1, col0, col1)
    return _exact_window(target, source, transformer)


def _exact_window(target: Grid, source: Grid, transformer: Transformer | None) -> Window | None:
    rows_t, cols_t = target.shape_yx
    step = max(1, _BLOCK_PIXELS // cols_t)
    col_idx = np.arange(cols_t)[np.newaxis, :]
    lo_r = lo_c = np.iinfo(np.int64).max
    hi_r = hi_c = -1
    for start in range(0, rows_t, step):
        stop = min(rows_t, start + step)
        sx, sy = _source_coords(
            col_idx, np.arange(start, stop)[:, np.newaxis], target, source, transformer
        )
        rows, cols, valid = _to_indices(sx, sy, source.shape_yx)
        if valid.any():
            lo_r, hi_r = min(lo_r, int(rows[valid].min())), max(hi_r, int(rows[valid].max()))
            lo_c, hi_c = min(lo_c, int(cols[valid].min())), max(hi_c, int(cols[valid].max()))
    if hi_r < 0:
        return None
    return (lo_r, hi_r + 1, lo_c, hi_c + 1)


def estimate_grid_pixels(
    bounds_lonlat: tuple[float, float, float, float], crs: str, resolution: float
) -> int:
    """Cheap estimate of the pixel count of the grid covering a lon/lat bbox.

    Parameters
    ----------
    bounds_lonlat
        ``(min_lon, min_lat, max_lon, max_lat)`` in EPSG:4326 degrees.
    crs
        Output CRS.
    resolution
        Output pixel size in ``crs`` units.

    Returns
    -------
    int
        ``rows * cols`` of :meth:`Grid.covering` for the bbox of the lon/lat bbox
        transformed to ``crs`` (21 points per edge). No array of that size is allocated,
        so absurd sizes can be refused before any work.

    Raises
    ------
    SpecError
        Invalid CRS, resolution or bounds, or bounds that cannot be transformed to
        ``crs``.

    Examples
    --------
    >>> estimate_grid_pixels((10.0, 50.0, 10.001, 50.001), "EPSG:4326", 0.0001)
    100
    """
    target_crs = _check_crs(crs)
    res = _check_resolution(resolution)
    bounds = _check_bounds(bounds_lonlat)
    if target_crs == CRS.from_epsg(4326):
        minx, miny, maxx, maxy = bounds
    else:
        tr = Transformer.from_crs(CRS.from_epsg(4326), target_crs, always_xy=True)
        minx, miny, maxx, maxy = tr.transform_bounds(*bounds, densify_pts=_DENSIFY_PTS)
        if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
            raise SpecError(
                f"bounds {bounds_lonlat!r} cannot be transformed to {crs!r}",
                hint="check that the region lies within the CRS's area of use",
                crs=crs,
            )
    col0, col1 = _snap_range(minx / res, maxx / res)
    row0, row1 = _snap_range(miny / res, maxy / res)
    return (col1 - col0) * (row1 - row0)


# ------------------------------------------------------------------------- composites


def composite_pixels(
    stack: np.ndarray, method: str, *, ndvi_stack: np.ndarray | None = None
) -> np.ndarray:
    """Per-pixel composite of a stack of target-grid arrays.

    Parameters
    ----------
    stack
        ``(n, h, w)`` values (cast to float64), NaN = no valid value.
    method
        ``"max_ndvi"``: the value of the layer with the highest ``ndvi_stack`` value;
        a layer is a candidate only where both its NDVI and its value are not NaN (a NaN
        NDVI never wins), ties go to the first layer. ``"median"``, ``"mean"``,
        ``"max"``: ``numpy.nanmedian``, ``numpy.nanmean``, ``numpy.nanmax`` over the
        layers.
    ndvi_stack
        ``(n, h, w)`` NDVI per layer; required for ``"max_ndvi"``, ignored otherwise.

    Returns
    -------
    numpy.ndarray
        float64 ``(h, w)``; NaN where no layer is valid (without a RuntimeWarning).

    Raises
    ------
    SpecError
        Unknown ``method`` (the message lists the allowed ones).
    InputDataError
        ``stack`` not 3-D, or ``ndvi_stack`` missing or of another shape for
        ``"max_ndvi"``.

    Examples
    --------
    >>> s = np.array([[[1.0, np.nan]], [[3.0, np.nan]]])
    >>> composite_pixels(s, "mean").tolist()
    [[2.0, nan]]
    """
    if method not in COMPOSITE_METHODS:
        raise SpecError(
            f"unknown composite method {method!r}",
            hint=f"expected one of {', '.join(COMPOSITE_METHODS)}",
            method=method,
        )
    arr = np.asarray(stack, dtype=np.float64)
    if arr.ndim != 3:
        raise InputDataError(f"composite stack must be (n, h, w), got shape {arr.shape!r}")
    n, h, w = arr.shape
    if n == 0:
        return np.full((h, w), np.nan)
    if method == "max_ndvi":
        return _max_ndvi(arr, ndvi_stack)
    if method == "max":
        return np.fmax.reduce(arr, axis=0)  # == nanmax; NaN only where all are NaN
    valid = ~np.isnan(arr)
    count = valid.sum(axis=0)
    if method == "mean":
        # np.nanmean's own arithmetic (sum with NaN -> 0, divided by the count).
        total = np.where(valid, arr, 0.0).sum(axis=0)
        out = np.full((h, w), np.nan)
        np.divide(total, count, out=out, where=count > 0)
        return out
    # median: call nanmedian only on pixels with a valid value (no all-NaN slices).
    flat = arr.reshape(n, h * w)
    has = (count > 0).ravel()
    out_flat = np.full(h * w, np.nan)
    if has.any():
        out_flat[has] = np.nanmedian(flat[:, has], axis=0)
    return out_flat.reshape(h, w)


def _max_ndvi(arr: np.ndarray, ndvi_stack: np.ndarray | None) -> np.ndarray:
    if ndvi_stack is None:
        raise InputDataError(
            "composite method 'max_ndvi' needs ndvi_stack",
            hint="pass the per-layer NDVI with the same (n, h, w) shape as the stack",
        )
    ndvi = np.asarray(ndvi_stack, dtype=np.float64)
    if ndvi.shape != arr.shape:
        raise InputDataError(
            f"ndvi_stack shape {ndvi.shape!r} does not match stack shape {arr.shape!r}"
        )
    candidate = ~np.isnan(ndvi) & ~np.isnan(arr)
    key = np.where(candidate, ndvi, -np.inf)
    best = np.argmax(key, axis=0)  # first maximum -> ties go to the first layer
    has = candidate.any(axis=0)
    chosen_ok = np.take_along_axis(candidate, best[np.newaxis], axis=0)[0]
    # Only when every candidate NDVI is -inf can argmax land on a non-candidate.
    fix = has & ~chosen_ok
    if fix.any():
        best = np.where(fix, np.argmax(candidate, axis=0), best)
    out = np.take_along_axis(arr, best[np.newaxis], axis=0)[0]
    out[~has] = np.nan
    return out
