"""Pixel grids of one scene: alignment checks and nearest mapping between them (pure).

Layer: *pure helpers* (numpy only). A Sentinel-2 scene stores bands at 10, 20 and 60 m;
the bands share a CRS and their grids align on pixel edges with integer resolution
ratios. A job computes on one *work grid* (the finest grid among the bands it uses, or a
coarser one the spec asks for) and brings every band onto it by nearest neighbour: each
work pixel takes the band pixel containing its centre. On aligned grids that is exactly
what ``rasterio.warp.reproject(..., resampling=Resampling.nearest)`` gives (tests compare
the two). A band coarser than the work grid is read only over the coarse chunks that
cover the needed work window, then replicated.

Windows here are clipped ``(row0, row1, col0, col1)`` (half-open), as in
:mod:`pixelquery_batch.catalog.chunks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .types import GeoTransform, ShapeYX

__all__ = [
    "GridMap",
    "align_problem",
    "band_chunks",
    "coarser_grid",
    "grid_map",
    "resolution_of",
]

Window = tuple[int, int, int, int]  # row0, row1, col0, col1

#: Tolerance (in pixels of the finer grid) when checking that pixel edges align.
_EDGE_TOL = 1e-6


def resolution_of(transform: GeoTransform) -> tuple[float, float]:
    """Pixel size ``(x, y)`` (positive) of a north-up transform.

    >>> resolution_of((20.0, 0.0, 600000.0, 0.0, -20.0, 5300000.0))
    (20.0, 20.0)
    """
    return abs(transform[0]), abs(transform[4])


def _ratio(coarse: float, fine: float) -> int | None:
    r = coarse / fine
    k = round(r)
    return k if k >= 1 and abs(r - k) <= 1e-9 * max(1.0, r) else None


def align_problem(fine: tuple[GeoTransform, ShapeYX], other: tuple[GeoTransform, ShapeYX]) -> str | None:
    """Why ``other`` cannot serve as a band grid of a scene whose finest grid is ``fine``.

    ``other`` must be north-up, have a pixel size that is an integer multiple of the fine
    one (both axes), pixel edges on fine pixel edges, and cover the fine grid's extent.
    Returns ``None`` when it can.

    >>> fine = ((10.0, 0.0, 600000.0, 0.0, -10.0, 5300000.0), (100, 100))
    >>> align_problem(fine, ((20.0, 0.0, 600000.0, 0.0, -20.0, 5300000.0), (50, 50))) is None
    True
    >>> align_problem(fine, ((15.0, 0.0, 600000.0, 0.0, -15.0, 5300000.0), (67, 67)))
    'pixel size 15 x 15 is not an integer multiple of 10 x 10'
    >>> align_problem(fine, ((20.0, 0.0, 600005.0, 0.0, -20.0, 5300000.0), (50, 50)))
    'origin (600005, 5300000) is not on a pixel edge of the finer grid (offset 0.5 x 0 pixels)'
    """
    (ft, fshape), (ot, oshape) = fine, other
    if ft[1] != 0 or ft[3] != 0 or ot[1] != 0 or ot[3] != 0:
        return "rotated grid"
    if ft[0] <= 0 or ft[4] >= 0 or ot[0] <= 0 or ot[4] >= 0:
        return "grid is not north-up (negative x or positive y pixel size)"
    fx, fy = resolution_of(ft)
    ox, oy = resolution_of(ot)
    kx, ky = _ratio(ox, fx), _ratio(oy, fy)
    if kx is None or ky is None:
        return f"pixel size {ox:g} x {oy:g} is not an integer multiple of {fx:g} x {fy:g}"
    dx = (ot[2] - ft[2]) / fx
    dy = (ft[5] - ot[5]) / fy
    if abs(dx - round(dx)) > _EDGE_TOL or abs(dy - round(dy)) > _EDGE_TOL:
        return (f"origin ({ot[2]:.12g}, {ot[5]:.12g}) is not on a pixel edge of the finer grid "
                f"(offset {dx:g} x {dy:g} pixels)")
    # extent (in fine pixels) of other relative to fine: must cover [0, n)
    c0, r0 = round(dx), round(dy)
    c1, r1 = c0 + oshape[1] * kx, r0 + oshape[0] * ky
    if c0 > 0 or r0 > 0 or c1 < fshape[1] or r1 < fshape[0]:
        return (f"does not cover the finer grid (covers columns {c0}..{c1}, rows {r0}..{r1} "
                f"of a {fshape[1]} x {fshape[0]} grid)")
    return None


def coarser_grid(transform: GeoTransform, shape_yx: ShapeYX, resolution: float) -> tuple[GeoTransform, ShapeYX]:
    """A grid of pixel size ``resolution`` with the same origin, inside the given grid.

    Partial pixels along the east and south edges are dropped, so every pixel of the
    coarser grid lies inside the original raster.

    >>> coarser_grid((10.0, 0.0, 0.0, 0.0, -10.0, 100.0), (10, 9), 20.0)
    ((20.0, 0.0, 0.0, 0.0, -20.0, 100.0), (5, 4))
    """
    a, b, c, d, e, f = transform
    ny = math.floor(shape_yx[0] * abs(e) / resolution + 1e-9)
    nx = math.floor(shape_yx[1] * abs(a) / resolution + 1e-9)
    return (resolution, b, c, d, -resolution, f), (max(ny, 1), max(nx, 1))


@dataclass(frozen=True)
class GridMap:
    """Nearest mapping of a work grid onto one band grid.

    ``rows[i]`` / ``cols[j]`` are the band pixel indices holding the centres of work row
    ``i`` / column ``j`` (``-1`` where the centre falls outside the band raster).
    """

    rows: np.ndarray
    cols: np.ndarray
    identity: bool

    def band_window(self, window: Window) -> Window | None:
        """The band window covering a (clipped) work window; ``None`` if outside."""
        r0, r1, c0, c1 = window
        rows = self.rows[r0:r1]
        cols = self.cols[c0:c1]
        rows = rows[rows >= 0]
        cols = cols[cols >= 0]
        if len(rows) == 0 or len(cols) == 0:
            return None
        return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1

    def resample(self, band_values: np.ndarray, band_window: Window, window: Window,
                 fill: float | int) -> np.ndarray:
        """Band values over ``band_window`` -> values over the work ``window`` (nearest)."""
        if self.identity and band_window == window:
            return band_values
        r0, r1, c0, c1 = window
        rows = self.rows[r0:r1] - band_window[0]
        cols = self.cols[c0:c1] - band_window[2]
        ok_r = (self.rows[r0:r1] >= 0) & (rows >= 0) & (rows < band_values.shape[0])
        ok_c = (self.cols[c0:c1] >= 0) & (cols >= 0) & (cols < band_values.shape[1])
        out = band_values.take(np.where(ok_r, rows, 0), axis=0).take(np.where(ok_c, cols, 0), axis=1)
        if not (ok_r.all() and ok_c.all()):
            out = out.copy()
            out[~ok_r, :] = fill
            out[:, ~ok_c] = fill
        return out


def _axis_index(n_work: int, work_origin: float, work_step: float, band_origin: float,
                band_step: float, n_band: int) -> np.ndarray:
    # centre of work pixel i, in band pixel units; a tiny epsilon breaks exact ties the
    # way GDAL's nearest does (a centre on a band pixel edge belongs to the next pixel)
    pos = (work_origin + work_step * (np.arange(n_work) + 0.5) - band_origin) / band_step
    idx = np.floor(pos + 1e-9).astype(np.int64)
    idx[(idx < 0) | (idx >= n_band)] = -1
    return idx


@lru_cache(maxsize=512)
def grid_map(work: tuple[GeoTransform, ShapeYX], band: tuple[GeoTransform, ShapeYX]) -> GridMap:
    """The nearest mapping from a work grid onto a band grid (same CRS, north-up).

    >>> m = grid_map(((10.0, 0.0, 0.0, 0.0, -10.0, 40.0), (4, 4)),
    ...              ((20.0, 0.0, 0.0, 0.0, -20.0, 40.0), (2, 2)))
    >>> m.rows.tolist(), m.cols.tolist()
    ([0, 0, 1, 1], [0, 0, 1, 1])
    >>> m.band_window((1, 3, 0, 4))
    (0, 2, 0, 2)
    >>> m.resample(np.array([[1, 2], [3, 4]]), (0, 2, 0, 2), (1, 3, 0, 4), 0).tolist()
    [[1, 1, 2, 2], [3, 3, 4, 4]]
    """
    (wt, wshape), (bt, bshape) = work, band
    if wt == bt and wshape == bshape:
        return GridMap(np.arange(wshape[0]), np.arange(wshape[1]), True)
    rows = _axis_index(wshape[0], wt[5], wt[4], bt[5], bt[4], bshape[0])
    cols = _axis_index(wshape[1], wt[2], wt[0], bt[2], bt[0], bshape[1])
    return GridMap(rows, cols, False)


def band_chunks(gmap: GridMap, windows: list[Window] | tuple[Window, ...],
                chunks_yx: tuple[int, int]) -> set[tuple[int, int]]:
    """Chunk ids of a band grid that the given (clipped) work windows need.

    >>> m = grid_map(((10.0, 0.0, 0.0, 0.0, -10.0, 1000.0), (100, 100)),
    ...              ((20.0, 0.0, 0.0, 0.0, -20.0, 1000.0), (50, 50)))
    >>> sorted(band_chunks(m, [(0, 10, 60, 80)], (16, 16)))
    [(0, 1), (0, 2)]
    """
    w = np.asarray(windows, dtype=np.int64).reshape(-1, 4)
    r0, r1, ok_r = _axis_span(gmap.rows, w[:, 0], w[:, 1])
    c0, c1, ok_c = _axis_span(gmap.cols, w[:, 2], w[:, 3])
    ok = ok_r & ok_c
    if not ok.any():
        return set()
    cy, cx = chunks_yx
    i0, i1 = r0[ok] // cy, (r1[ok] - 1) // cy + 1
    j0, j1 = c0[ok] // cx, (c1[ok] - 1) // cx + 1
    # every window marks its rectangle of chunk ids; 2-D prefix sums give the union
    marks = np.zeros((int(i1.max()) + 1, int(j1.max()) + 1), dtype=np.int32)
    for rows, cols, sign in ((i0, j0, 1), (i0, j1, -1), (i1, j0, -1), (i1, j1, 1)):
        np.add.at(marks, (rows, cols), sign)
    covered = marks.cumsum(axis=0).cumsum(axis=1) > 0
    return {(int(i), int(j)) for i, j in np.argwhere(covered)}


def _axis_span(idx: np.ndarray, start: np.ndarray, stop: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Band index ranges ``[lo, hi)`` covering work positions ``[start, stop)`` of many
    windows at once, and whether any of their positions falls inside the band.

    ``idx`` (a :class:`GridMap` axis) is non-decreasing where valid and ``-1`` only beyond
    either end of the band, so the valid positions are one contiguous run."""
    valid = np.flatnonzero(idx >= 0)
    if len(valid) == 0:
        zero = np.zeros(len(start), dtype=np.int64)
        return zero, zero, np.zeros(len(start), dtype=bool)
    s = np.maximum(start, valid[0])
    e = np.minimum(stop, valid[-1] + 1)
    ok = s < e
    s = np.where(ok, s, valid[0])
    e = np.where(ok, e, valid[0] + 1)
    return idx[s], idx[e - 1] + 1, ok
