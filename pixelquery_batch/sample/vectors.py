"""Sample data: field and region polygons and their GeoJSON text.

Layer: *sample data (seeded generator)*. Fields are placed in a jittered grid
of parcels (a few MultiPolygons, holes and fields crossing the west/south image
edge, maybe a lake); regions split the scene into 3-4 parts. Geometries are
built in local metres, shifted to UTM and written as EPSG:4326 GeoJSON with
coordinates rounded to 1e-7 degrees, one feature per line, so the text is
deterministic.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry import LineString, MultiPolygon, Polygon, box, mapping

from .constants import CROPS, CRS_EPSG

logger = logging.getLogger("pixelquery_batch.sample")  # one logger for the whole package

_A_MIN = 5_200.0  # m^2: 0.5 ha floor plus a margin for reprojection/rounding
_A_MAX = 195_000.0  # m^2: 20 ha ceiling minus a margin
_GAP = 6.0  # m kept free along each parcel boundary
_CELL_MIN = 130.0  # m: smallest parcel side that still holds a 0.52-0.6 ha field
_CROP_P = (0.30, 0.25, 0.15, 0.15, 0.15)


@dataclass(frozen=True, slots=True)
class _Field:
    geom: Polygon | MultiPolygon  # local metres
    crop: str


def _field_id(i: int, n: int) -> str:
    return f"F{i:0{max(4, len(str(n)))}d}"


def _make_fields(
    rng: np.random.Generator, extent: float, n: int, phi0: float
) -> tuple[list[_Field], Polygon | None]:
    """Place ``n`` non-overlapping fields in a jittered grid of parcels (+ maybe a lake)."""
    nx = min(math.ceil(math.sqrt(n * 1.12)), int(extent // _CELL_MIN))
    cell = extent / nx
    jit = max(0.0, min(0.15 * cell, (cell - _CELL_MIN) / 2.0))
    xb = np.array([0.0, *(i * cell + rng.uniform(-jit, jit) for i in range(1, nx)), extent])
    yb = [
        np.array([0.0, *(j * cell + rng.uniform(-jit, jit) for j in range(1, nx)), extent])
        for _ in range(nx)
    ]
    # Parcels (column i, row j; j = 0 is the southernmost row), ids ordered NW -> SE.
    cells = [(i, j) for j in range(nx - 1, -1, -1) for i in range(nx)]
    chosen = np.sort(rng.choice(len(cells), size=n, replace=False))
    empty = sorted(set(range(len(cells))) - set(chosen.tolist()))

    crops = rng.choice(len(CROPS), size=n, p=_CROP_P)
    if n >= len(CROPS):  # every crop type present at least once
        crops[rng.choice(n, size=len(CROPS), replace=False)] = np.arange(len(CROPS))

    # Fields crossing the west/south image edge (~3 %, >= 1 when n >= 10).
    edge = [f for f, c in enumerate(chosen) if cells[c][0] == 0 or cells[c][1] == 0]
    n_out = min(len(edge), max(1, round(0.03 * n)) if n >= 10 else round(0.03 * n))
    outside = set(rng.choice(edge, size=n_out, replace=False).tolist()) if n_out else set()

    geoms: list[Polygon | MultiPolygon] = []
    for f, c in enumerate(chosen):
        i, j = cells[c]
        x0, x1, y0, y1 = xb[i] + _GAP, xb[i + 1] - _GAP, yb[i][j] + _GAP, yb[i][j + 1] - _GAP
        w_av, h_av = x1 - x0, y1 - y0
        a_hi = min(_A_MAX, 0.45 * w_av * h_av)
        a_lo = max(_A_MIN, min(15_000.0, a_hi / 3.0))
        target = math.exp(rng.uniform(math.log(a_lo), math.log(a_hi))) if a_hi > a_lo else _A_MIN
        phi = phi0 + rng.normal(0.0, 0.12) if rng.random() < 0.8 else rng.uniform(-1.6, 1.6)
        pts = _field_outline(rng, w_av, h_av, target, phi)
        bw, bh = np.ptp(pts, axis=0)
        px = x0 + rng.uniform(0.0, max(0.0, w_av - bw))
        py = y0 + rng.uniform(0.0, max(0.0, h_av - bh))
        if f in outside:
            west = i == 0 and (j != 0 or rng.random() < 0.5)
            if west:
                px = -rng.uniform(0.2, 0.45) * bw
            else:
                py = -rng.uniform(0.2, 0.45) * bh
        geoms.append(Polygon(pts + np.array([px, py])))

    # ~5 % split into two parts (track through the field), ~5 % with a hole.
    quota = max(1, round(0.05 * n)) if n >= 3 else 0
    candidates = [f for f in rng.permutation(n).tolist() if f not in outside]
    n_multi = n_hole = 0
    for f in candidates:
        if n_multi < quota:
            split = _split_field(rng, geoms[f])
            if split is not None:
                geoms[f] = split
                n_multi += 1
                continue
        if n_hole < quota:
            holed = _add_hole(rng, geoms[f])
            if holed is not None:
                geoms[f] = holed
                n_hole += 1
        if n_multi >= quota and n_hole >= quota:
            break

    lake = None
    if empty and rng.random() < 0.85:
        i, j = cells[empty[int(rng.integers(len(empty)))]]
        x0, x1, y0, y1 = xb[i] + _GAP, xb[i + 1] - _GAP, yb[i][j] + _GAP, yb[i][j + 1] - _GAP
        a = min(400.0, rng.uniform(0.25, 0.45) * (x1 - x0))
        b = min(300.0, rng.uniform(0.25, 0.45) * (y1 - y0))
        t = np.sort(rng.uniform(0.0, 2 * np.pi, 28))
        r = rng.uniform(0.88, 1.05, t.size)
        lake = Polygon(
            np.column_stack([(x0 + x1) / 2 + a * r * np.cos(t), (y0 + y1) / 2 + b * r * np.sin(t)])
        )
        if not lake.is_valid:
            lake = None
    logger.debug(
        "fields: %dx%d parcels of %.0f m, %d edge-crossing, %d multi, %d holed, lake=%s",
        nx, nx, cell, len(outside), n_multi, n_hole, lake is not None,
    )  # fmt: skip
    return [_Field(g, CROPS[int(c)]) for g, c in zip(geoms, crops, strict=True)], lake


def _field_outline(
    rng: np.random.Generator, w_av: float, h_av: float, target: float, phi: float
) -> np.ndarray:
    """Return the vertices (k, 2) of a star-shaped field of ~``target`` m^2, bbox at 0.

    The polygon (4-9 vertices, mostly convex, sometimes one re-entrant vertex)
    fits into a ``w_av`` x ``h_av`` box; its area is at least ``_A_MIN``.
    """
    for attempt in range(40):
        nv = int(rng.integers(4, 10))
        relaxed = attempt >= 15  # later attempts: rounder, axis-aligned shapes
        q = rng.uniform(1.0, 1.3) if relaxed else rng.uniform(1.0, 2.2)
        ang = rng.normal(0.0, 0.05) if relaxed else phi
        step = 2 * np.pi / nv
        theta = np.pi / nv + np.arange(nv) * step + rng.uniform(-0.3, 0.3, nv) * step
        radius = rng.uniform(0.9, 1.05, nv)
        if nv >= 6 and rng.random() < 0.25:
            radius[int(rng.integers(nv))] *= rng.uniform(0.55, 0.75)
        x, y = q * radius * np.cos(theta), radius * np.sin(theta)
        ca, sa = math.cos(ang), math.sin(ang)
        pts = np.column_stack([ca * x - sa * y, sa * x + ca * y])
        pts *= math.sqrt(target / _shoelace(pts))
        bw, bh = np.ptp(pts, axis=0)
        scale = min(1.0, w_av / bw, h_av / bh)
        if target * scale * scale >= _A_MIN:
            pts *= scale
            return pts - pts.min(axis=0)
    # Fallback: a quadrilateral filling most of the box (always >= _A_MIN, see _CELL_MIN).
    inset = rng.uniform(0.0, 0.05, (4, 2)) * (w_av, h_av)
    corners = np.array([[0, 0], [w_av, 0], [w_av, h_av], [0, h_av]], dtype=float)
    pts = corners + inset * np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    return pts - pts.min(axis=0)


def _shoelace(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _split_field(rng: np.random.Generator, poly: Polygon) -> MultiPolygon | None:
    """Cut a farm track through ``poly``; return the two parts or None if unsuitable."""
    if poly.area < 1.05 * _A_MIN:
        return None
    c = poly.centroid
    size = math.sqrt(poly.area)
    for _ in range(4):
        ang = rng.uniform(0.0, np.pi)
        off = rng.uniform(-0.15, 0.15) * size
        ux, uy = math.cos(ang), math.sin(ang)
        cx, cy = c.x - uy * off, c.y + ux * off
        half = 4.0 * size
        track = LineString([(cx - ux * half, cy - uy * half), (cx + ux * half, cy + uy * half)])
        cut = poly.difference(track.buffer(rng.uniform(2.0, 5.0), cap_style="flat"))
        if (
            isinstance(cut, MultiPolygon)
            and len(cut.geoms) == 2
            and min(p.area for p in cut.geoms) >= 0.2 * poly.area
            and cut.area >= _A_MIN
            and cut.is_valid
        ):
            return cut
    return None


def _add_hole(rng: np.random.Generator, poly: Polygon) -> Polygon | None:
    """Punch a small farmstead/pond hole into ``poly``; None if it does not fit."""
    area = poly.area
    r = math.sqrt(rng.uniform(0.03, 0.08) * area / math.pi)
    if area - math.pi * (1.1 * r) ** 2 < _A_MIN:
        return None
    inner = poly.buffer(-(1.1 * r + 8.0))
    if inner.is_empty:
        return None
    centre = poly.centroid if inner.contains(poly.centroid) else inner.representative_point()
    nv = int(rng.integers(5, 9))
    t = np.arange(nv) * 2 * np.pi / nv + rng.uniform(-0.2, 0.2, nv)
    rr = r * rng.uniform(0.8, 1.1, nv)
    hole = np.column_stack([centre.x + rr * np.cos(t), centre.y + rr * np.sin(t)])
    holed = Polygon(poly.exterior.coords, [hole])
    return holed if holed.is_valid and holed.area >= _A_MIN else None


def _make_regions(rng: np.random.Generator, extent: float) -> list[tuple[str, Polygon]]:
    """Split the scene into 3-4 regions along slightly jagged lines."""
    scene = box(0.0, 0.0, extent, extent)
    m = 0.05 * extent
    k = 15
    for _ in range(100):
        t = np.linspace(-m, extent + m, k)
        xs = extent * rng.uniform(0.4, 0.6) + extent * (
            rng.uniform(-0.03, 0.03, k) + rng.uniform(-0.08, 0.08) * (t / extent - 0.5)
        )
        west_side = Polygon([(-m, -m), *zip(xs, t, strict=True), (-m, extent + m)])
        halves = {"west": scene.intersection(west_side), "east": scene.difference(west_side)}
        n_regions = int(rng.integers(3, 5))
        split = ("west", "east") if n_regions == 4 else (("west",), ("east",))[rng.integers(2)]
        parts: list[tuple[str, Any]] = []
        for side in ("west", "east"):
            if side not in split:
                parts.append((side, halves[side]))
                continue
            ys = extent * rng.uniform(0.35, 0.65) + extent * (
                rng.uniform(-0.03, 0.03, k) + rng.uniform(-0.08, 0.08) * (t / extent - 0.5)
            )
            south_side = Polygon([(-m, -m), *zip(t, ys, strict=True), (extent + m, -m)])
            parts.append((f"north-{side}", halves[side].difference(south_side)))
            parts.append((f"south-{side}", halves[side].intersection(south_side)))
        if all(
            isinstance(g, Polygon) and g.is_valid and g.area > 0.08 * scene.area for _, g in parts
        ):
            order = {"north-west": 0, "west": 1, "south-west": 2, "north-east": 3, "east": 4}
            parts.sort(key=lambda p: order.get(p[0], 5))
            return [(f"Region {i} ({label})", g) for i, (label, g) in enumerate(parts, start=1)]
    raise RuntimeError("could not split the scene into regions")  # pragma: no cover


def _local_to_utm(geom: Any, *, dx: float, dy: float) -> Any:
    return shapely.transform(geom, lambda xy: xy + np.array([dx, dy]))


@functools.cache
def _utm_to_lonlat() -> Transformer:
    return Transformer.from_crs(CRS_EPSG, 4326, always_xy=True)


def _feature(properties: dict[str, str], geom_utm: Any) -> dict[str, Any]:
    """GeoJSON feature in EPSG:4326 with coordinates rounded to 1e-7 degrees."""
    tr = _utm_to_lonlat()

    def to_lonlat(xy: np.ndarray) -> np.ndarray:
        lon, lat = tr.transform(xy[:, 0], xy[:, 1])
        return np.array(
            [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat, strict=True)]
        )

    geom = shapely.orient_polygons(shapely.transform(geom_utm, to_lonlat))
    if not geom.is_valid:  # pragma: no cover - guarded by the geometry margins above
        raise RuntimeError(f"generated invalid geometry for {properties['id']}")
    return {"type": "Feature", "properties": properties, "geometry": mapping(geom)}


def _collection_text(name: str, features: list[dict[str, Any]]) -> str:
    """Deterministic GeoJSON text, one feature per line."""
    body = ",\n".join(json.dumps(f, separators=(",", ":")) for f in features)
    return f'{{"type":"FeatureCollection","name":"{name}","features":[\n{body}\n]}}\n'
