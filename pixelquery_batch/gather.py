"""Worker side: the pixels of many fields, gathered from decoded chunks (tasks layer).

A work unit covers many fields and several scenes on one work grid. Which pixels belong
to which field depends only on the grid, so :func:`field_pixels` computes it once per
unit (and caches it per process: the next unit of the same fields and grid on this
worker reuses it): for every field, the rows and columns of its pixels under the pixel
rule, laid out field after field (:class:`~pixelquery_batch.kernels.segments.Segments`).

For each scene and band, :func:`gather_band` then decodes only the chunks holding those
pixels (of the band's own grid and tiling: a 20 m band is indexed through the nearest
mapping of :mod:`pixelquery_batch.grids`) and picks the pixels out with one fancy index.
Everything downstream (band math, masks, statistics) works on these flat arrays.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely

from .catalog.chunks import ChunkReader
from .catalog.models import BandInfo
from .grids import grid_map
from .kernels.segments import Segments

__all__ = ["FieldPixels", "field_pixels", "gather_band"]

Work = tuple[tuple[float, ...], tuple[int, int]]  # (transform, shape_yx) of the work grid


@dataclass(frozen=True, eq=False)
class FieldPixels:
    """The pixels of a unit's fields on the work grid, field after field.

    ``rows``/``cols`` may lie outside the raster (fields crossing its edge): such pixels
    count in a field's total but never hold a value (``inside`` is False).
    """

    field_ids: tuple[str, ...]
    segments: Segments
    rows: np.ndarray  # (P,) int64
    cols: np.ndarray  # (P,) int64
    inside: np.ndarray  # (P,) bool
    weights: np.ndarray | None  # (P,) float64 for the coverage rule, else None (all 1)
    failed: dict[str, str] = field(default_factory=dict)  # field id -> error text
    _centres: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_pixels(self) -> int:
        return self.segments.n_pixels

    def centres_xy(self, transform: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
        """World coordinates of the pixel centres (for exclusion areas)."""
        got = self._centres.get("xy")
        if got is None:
            a, _, c, _, e, f = transform
            got = self._centres["xy"] = (c + a * (self.cols + 0.5), f + e * (self.rows + 0.5))
        return got

    def outside(self, geom_wkb: bytes | None, transform: tuple[float, ...]) -> np.ndarray | None:
        """Pixels whose centres are NOT in ``geom_wkb`` (``None``: no geometry, keep all)."""
        if geom_wkb is None:
            return None
        key = ("keep", geom_wkb)
        got = self._centres.get(key)  # type: ignore[call-overload]
        if got is None:
            geom = shapely.from_wkb(geom_wkb)
            shapely.prepare(geom)
            x, y = self.centres_xy(transform)
            got = ~shapely.contains_xy(geom, x, y)
            self._centres[key] = got  # type: ignore[index]
        return got


_CACHE: OrderedDict[tuple[Any, ...], FieldPixels] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def clear_pixel_cache() -> None:
    """Forget every cached :class:`FieldPixels` (tests)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def field_pixels(fields: Sequence[Any], transform: tuple[float, ...], shape_yx: tuple[int, int],
                 rule: str, *, key: str | None = None) -> FieldPixels:
    """The pixels of ``fields`` (planner ``FieldTask``s) under ``rule`` on a work grid.

    With a ``key`` (the planner's digest of the fields), the result is cached per
    process, so every unit of these fields on this grid reuses it.
    """
    cache_key = (key, tuple(transform), tuple(shape_yx), rule) if key else None
    if cache_key is not None:
        with _CACHE_LOCK:
            hit = _CACHE.get(cache_key)
            if hit is not None:
                _CACHE.move_to_end(cache_key)
                return hit
    pix = _build(fields, transform, shape_yx, rule)
    if cache_key is not None:
        with _CACHE_LOCK:
            _CACHE[cache_key] = pix
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return pix


def _build(fields: Sequence[Any], transform: tuple[float, ...], shape_yx: tuple[int, int],
           rule: str) -> FieldPixels:
    from .rasterize import geometry_weights

    ids, counts, rows, cols, weights = [], [], [], [], []
    failed: dict[str, str] = {}
    fractional = rule == "coverage"
    for f in fields:
        r0, c0, h, w = f.window
        try:
            if rule == "point":
                wts = np.ones((h, w))
            else:
                wts = geometry_weights(shapely.from_wkb(f.wkb), transform, f.window, rule)
        except Exception as exc:  # reported per field by the caller
            failed[f.field_id] = f"{type(exc).__name__}: {exc}"
            continue
        rr, cc = np.nonzero(wts > 0)
        ids.append(f.field_id)
        counts.append(len(rr))
        rows.append(rr + r0)
        cols.append(cc + c0)
        if fractional:
            weights.append(wts[rr, cc])
    r = np.concatenate(rows) if rows else np.empty(0, np.int64)
    c = np.concatenate(cols) if cols else np.empty(0, np.int64)
    inside = (r >= 0) & (r < shape_yx[0]) & (c >= 0) & (c < shape_yx[1])
    return FieldPixels(
        field_ids=tuple(ids), segments=Segments.from_counts(counts),
        rows=r.astype(np.int64), cols=c.astype(np.int64), inside=inside,
        weights=np.concatenate(weights) if fractional and weights else (
            np.empty(0) if fractional else None),
        failed=failed)


def gather_band(reader: ChunkReader, group: str, band: BandInfo, work: Work,
                pix: FieldPixels) -> np.ndarray:
    """Raw values of one band at every gathered pixel (``(P,)``, the band's dtype).

    Only the band chunks holding those pixels are fetched and decoded. Pixels outside
    the raster (or the band's grid) get the band's fill value (its nodata, else 0).
    """
    grid = (tuple(band.transform or work[0]), tuple(band.shape_yx or work[1]))
    gm = grid_map((tuple(work[0]), tuple(work[1])), grid)  # type: ignore[arg-type]
    inside = pix.inside
    r = pix.rows[inside]
    c = pix.cols[inside]
    if not gm.identity:
        r, c = gm.rows[r], gm.cols[c]
        ok = (r >= 0) & (c >= 0)
        if not ok.all():
            inside = inside.copy()
            inside[np.flatnonzero(inside)[~ok]] = False
            r, c = r[ok], c[ok]
    cy, cx = band.chunks_yx
    ncx = -(-grid[1][1] // cx)
    lin = (r // cy) * ncx + (c // cx)
    needed = np.unique(lin)
    tiles = reader.read_tiles(group, band, [(int(k // ncx), int(k % ncx)) for k in needed])
    nodata = band.nodata
    fill: Any = 0
    if nodata is not None and (tiles.dtype.kind == "f" or np.isfinite(nodata)):
        fill = nodata
    out = np.full(pix.n_pixels, fill, dtype=tiles.dtype)
    if len(needed):
        slot = np.searchsorted(needed, lin)
        flat_idx = slot * (cy * cx) + (r % cy) * cx + (c % cx)
        out[inside] = tiles.reshape(-1)[flat_idx]
    return out
