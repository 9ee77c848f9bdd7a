"""Sample data: crop curves, background parcels, landscape raster and reflectances.

Layer: *sample data (seeded generator)*. The landscape is static: fields, a
patchwork of background parcels (grassland, forest clusters, bare soil) and
usually a small lake, rasterised once with per-unit jittered seasonal NDVI
curves (double logistic in day of year), static heterogeneity and brightness.
:func:`_render_scene` turns it into the bands of one acquisition (NDVI ->
nir/red -> green/blue, sensor noise, clouds and shadows from :mod:`.clouds`),
encoded as L2A digital numbers.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio.features
from affine import Affine
from shapely.geometry import Polygon

from .clouds import _add_clouds, _apply_strip, _nodata_first_col
from .constants import (
    _SCL_SOIL,
    _SCL_VEG,
    _SCL_WATER,
    BANDS,
    BOA_ADD_OFFSET,
    QUANTIFICATION_VALUE,
)
from .noise import _add_value_noise


@dataclass(frozen=True, slots=True)
class _Curve:
    """Seasonal NDVI curve: ``base1`` before ``sos``, ``peak`` between, ``base2`` after ``eos``."""

    base1: float
    peak: float
    base2: float
    sos: float  # day of year of green-up (inflection)
    rs: float  # green-up steepness (days)
    eos: float  # day of year of senescence (inflection)
    re: float  # senescence steepness (days)


_CURVES: dict[str, _Curve] = {
    "winter_wheat": _Curve(0.35, 0.86, 0.18, 85.0, 10.0, 172.0, 8.0),
    "maize": _Curve(0.18, 0.86, 0.25, 165.0, 9.0, 255.0, 9.0),
    "sunflower": _Curve(0.18, 0.81, 0.25, 150.0, 8.0, 226.0, 7.0),
    "grassland": _Curve(0.56, 0.71, 0.56, 95.0, 12.0, 285.0, 15.0),
    "fallow": _Curve(0.15, 0.25, 0.18, 110.0, 15.0, 250.0, 15.0),
    "bg_grassland": _Curve(0.50, 0.68, 0.52, 100.0, 12.0, 280.0, 15.0),
    "forest": _Curve(0.45, 0.86, 0.47, 115.0, 8.0, 292.0, 10.0),
    "bare_soil": _Curve(0.10, 0.13, 0.11, 120.0, 20.0, 260.0, 20.0),
    "water": _Curve(-0.33, -0.29, -0.33, 150.0, 20.0, 240.0, 20.0),
}
# Per-class pixel-noise amplitude and soil/canopy brightness.
_NOISE_AMP = {"water": 0.25, "bare_soil": 0.7, "forest": 0.8}
_BRIGHTNESS = {"water": 1.0, "bare_soil": 1.12, "forest": 0.95}
# Cloud-top reflectance offsets per band (clouds are white, slightly bluish).
_CLOUD_BAND_OFFSET = {"blue": 0.02, "green": 0.01, "red": 0.0, "nir": -0.01}

# --------------------------------------------------------------------------- landscape raster


@dataclass(slots=True)
class _Landscape:
    """Static per-pixel state shared by all scenes."""

    unit: np.ndarray  # int32 (H, W): 1..n fields, then background classes
    het: np.ndarray  # float32 (H, W): static NDVI heterogeneity
    bright: np.ndarray  # float32 (H, W): multiplicative reflectance brightness
    curves: np.ndarray  # float64 (7, n_units + 1): per-unit _Curve parameters
    water_unit: int


def _make_background(
    rng: np.random.Generator, extent: float, phi0: float
) -> list[tuple[Polygon, str]]:
    """Tessellate the scene into background parcels (grassland, forest, bare soil).

    A jittered, rotated grid of quadrilaterals (shared vertices, so no gaps) gives
    the patchwork look of farmland; forest parcels cluster along a smooth random
    field, bare-soil parcels are scattered.
    """
    s = min(450.0, max(150.0, extent / 10.0))
    ratio = rng.uniform(1.2, 1.7)
    sx, sy = s * ratio, s / ratio
    half = 0.75 * extent + 2 * s  # covers the rotated scene square
    gx1 = np.arange(-half, half + sx, sx)
    gy1 = np.arange(-half, half + sy, sy)
    gx, gy = np.meshgrid(gx1, gy1)
    gx += rng.uniform(-0.2, 0.2, gx.shape) * sx
    gy += rng.uniform(-0.2, 0.2, gy.shape) * sy
    ca, sa = math.cos(phi0), math.sin(phi0)
    px = extent / 2 + ca * gx - sa * gy
    py = extent / 2 + sa * gx + ca * gy
    corners = np.stack(
        [
            np.stack([px[:-1, :-1], py[:-1, :-1]], -1),
            np.stack([px[:-1, 1:], py[:-1, 1:]], -1),
            np.stack([px[1:, 1:], py[1:, 1:]], -1),
            np.stack([px[1:, :-1], py[1:, :-1]], -1),
        ],
        axis=2,
    ).reshape(-1, 4, 2)
    lo, hi = corners.min(axis=1), corners.max(axis=1)
    keep = (hi[:, 0] > 0) & (lo[:, 0] < extent) & (hi[:, 1] > 0) & (lo[:, 1] < extent)
    corners = corners[keep]
    centre = corners.mean(axis=1)
    # Smooth random field (sum of plane waves) -> forest clusters.
    wave = np.zeros(len(corners))
    for _ in range(6):
        theta = rng.uniform(0.0, np.pi)
        length = max(1_500.0, extent * rng.uniform(0.3, 0.9))
        wave += np.cos(
            2 * np.pi * (centre[:, 0] * math.cos(theta) + centre[:, 1] * math.sin(theta)) / length
            + rng.uniform(0.0, 2 * np.pi)
        )
    forest = wave > np.quantile(wave, 0.72)
    bare = ~forest & (rng.random(len(corners)) < 0.14)
    classes = np.where(forest, "forest", np.where(bare, "bare_soil", "bg_grassland"))
    return [(Polygon(q), str(c)) for q, c in zip(corners, classes, strict=True)]


def _make_landscape(
    rng: np.random.Generator,
    size: int,
    transform: Affine,
    fields_utm: list[tuple[Any, str]],
    background_utm: list[tuple[Any, str]],
    lake_utm: Polygon | None,
) -> _Landscape:
    """Rasterise background parcels, lake and fields; draw static noise.

    Units: 0 fallback grassland, ``1..n`` fields, then background parcels, then water.
    """
    n, m = len(fields_utm), len(background_utm)
    water_unit = n + m + 1
    shapes: list[tuple[Any, int]] = [(g, n + 1 + i) for i, (g, _) in enumerate(background_utm)]
    if lake_utm is not None:
        shapes.append((lake_utm, water_unit))
    shapes.extend((g, i) for i, (g, _) in enumerate(fields_utm, start=1))
    unit = rasterio.features.rasterize(
        shapes, out_shape=(size, size), transform=transform, fill=0, dtype="int32"
    )
    del shapes

    # Per-unit curve parameters (jittered per field/parcel), noise amplitude, brightness.
    names = ["bg_grassland", *(c for _, c in fields_utm), *(c for _, c in background_utm), "water"]
    curves = np.array([[getattr(_CURVES[nm], a) for nm in names] for a in _Curve.__slots__])
    k = len(names) - 1  # everything but the water unit
    curves[0, :k] += rng.normal(0.0, 0.02, k)  # base1
    curves[1, :k] += rng.normal(0.0, 0.03, k)  # peak
    curves[2, :k] += rng.normal(0.0, 0.02, k)  # base2
    curves[3, :k] += rng.normal(0.0, 6.0, k)  # sos
    curves[5, :k] += rng.normal(0.0, 6.0, k)  # eos
    amp = np.array([_NOISE_AMP.get(nm, 1.0) for nm in names], np.float32)
    bright_lut = np.array([_BRIGHTNESS.get(nm, 1.0) for nm in names], np.float32)
    spread = np.array([0.08 if nm == "bare_soil" else 0.04 for nm in names[:k]])
    bright_lut[:k] *= (1.0 + rng.normal(0.0, 1.0, k) * spread).astype(np.float32)

    # Static heterogeneity (within-field variability) and brightness.
    het = np.zeros((size, size), np.float32)
    _add_value_noise(rng, het, 16.0, 0.05)
    _add_value_noise(rng, het, 5.0, 0.025)
    het *= amp[unit]
    bright = np.zeros((size, size), np.float32)
    _add_value_noise(rng, bright, 24.0, 0.06)
    bright += 1.0
    bright *= bright_lut[unit]
    return _Landscape(unit, het, bright, curves, water_unit)


# --------------------------------------------------------------------------- scenes


def _ndvi_lut(curves: np.ndarray, doy: float) -> np.ndarray:
    """Double-logistic NDVI of every unit at day of year ``doy``."""
    base1, peak, base2, sos, rs, eos, re = curves
    rise = 1.0 / (1.0 + np.exp(-(doy - sos) / rs))
    fall = 1.0 / (1.0 + np.exp(-(doy - eos) / re))
    return base1 + (peak - base1) * rise - (peak - base2) * fall


def _render_scene(
    land: _Landscape, rng: np.random.Generator, date: datetime.date, stats: dict[str, float]
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(band, array)`` for every band of one scene, band by band.

    All full-size arrays are float32 (thresholds are converted to Python floats so
    NumPy's type promotion never upcasts to float64).
    """
    unit = land.unit
    h, w = unit.shape
    cloud_frac = 0.0 if rng.random() < 0.35 else float(rng.uniform(0.05, 0.40))
    strip_frac = float(rng.uniform(0.03, 0.15))
    slant = float(rng.uniform(-0.6, 0.6))

    # Surface NDVI -> nir, red.
    lut = _ndvi_lut(land.curves, date.timetuple().tm_yday)
    lut[1:] += rng.normal(0.0, 0.01, lut.size - 1)
    ndvi = lut.astype(np.float32)[unit]
    ndvi += land.het
    _add_value_noise(rng, ndvi, 40.0, 0.02)
    white = rng.standard_normal((h, w), np.float32)  # reused, shifted, for the bands
    ndvi += 0.012 * white
    np.clip(ndvi, -0.9, 0.95, out=ndvi)
    nir = np.where(ndvi >= 0, np.float32(0.26), np.float32(0.55))
    nir *= ndvi
    nir += 0.20
    np.maximum(nir, 0.012, out=nir)
    nir *= land.bright
    red = (1.0 - ndvi) / (1.0 + ndvi)
    red *= nir

    scl = np.full((h, w), _SCL_SOIL, np.uint8)
    np.putmask(scl, ndvi > 0.3, _SCL_VEG)
    np.putmask(scl, (ndvi < 0.0) | (unit == land.water_unit), _SCL_WATER)
    del ndvi

    # Clouds: thresholded multi-octave smooth noise; cirrus rim; displaced shadows.
    alpha, cloud_top, shade = _add_clouds(rng, scl, cloud_frac, stats)

    # Slanted nodata strip along the east edge (orbit edge): first nodata column per row.
    first_col = _nodata_first_col(h, w, strip_frac, slant, stats)

    for b, band in enumerate(BANDS):
        if band == "scl":
            _apply_strip(scl, first_col)
            yield band, scl
            continue
        if band == "nir":
            refl = nir
        elif band == "red":
            refl = red
        elif band == "green":
            refl = 0.75 * red
            refl += 0.08 * nir
            refl += 0.01
        else:  # blue
            refl = 0.55 * red
            refl += 0.02 * nir
            refl += 0.02
        # Independent-looking sensor noise: the scene's white noise, shifted per band.
        noise_b = np.roll(white, (97 * (b + 1), 389 * (b + 1)), axis=(0, 1))
        noise_b *= 0.003
        refl += noise_b
        del noise_b
        np.maximum(refl, 0.001, out=refl)  # keeps NDVI within [-1, 1]
        if shade is not None:
            refl *= shade
        if alpha is not None and cloud_top is not None:
            # refl = refl * (1 - alpha) + (cloud_top + offset) * alpha
            top_b = cloud_top + _CLOUD_BAND_OFFSET[band]
            top_b -= refl
            top_b *= alpha
            refl += top_b
            del top_b
        dn = _to_dn(refl)
        del refl
        _apply_strip(dn, first_col)
        yield band, dn


def _to_dn(refl: np.ndarray) -> np.ndarray:
    """Encode reflectance as L2A digital numbers (offset 1000) in [1, 65535] (in place)."""
    refl *= QUANTIFICATION_VALUE
    refl -= BOA_ADD_OFFSET
    np.rint(refl, out=refl)
    np.clip(refl, 1, 65535, out=refl)
    return refl.astype(np.uint16)
