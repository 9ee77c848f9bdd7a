"""Sample data: crop curves, background parcels, landscape raster and reflectances.

Layer: *sample data (seeded generator)*. The landscape is static: fields, a
patchwork of background parcels (grassland, forest clusters, bare soil) and
usually a small lake, rasterised once with per-unit jittered seasonal NDVI
curves (double logistic in day of year), static heterogeneity and brightness.
:func:`_render_scene` turns it into the bands of one acquisition (NDVI ->
nir/red -> green/blue and swir16, sensor noise, clouds and shadows from
:mod:`.clouds`), brings swir16 and the scene classification to 20 m
(:mod:`.downsample`) and encodes reflectances as L2A digital numbers with the
offset of the acquisition's processing baseline (:func:`.constants.dn_offset`).
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
    BAND_NAMES,
    BANDS,
    QUANTIFICATION_VALUE,
    dn_offset,
)
from .downsample import _coarse_first_col, _mean_2x2, _upper_left_2x2
from .noise import _add_value_noise


@dataclass(frozen=True, slots=True)
class _Curve:
    """Seasonal NDVI curve of one year, repeated every year.

    ``base1`` in winter/spring before ``sos``, ``peak`` between ``sos`` and ``eos``,
    ``base2`` after ``eos``; around day ``winter`` the level moves from ``base2`` back
    to ``base1`` (emergence of winter crops, ploughing), so the curve is continuous
    across the turn of the year (see :func:`_ndvi_lut`).
    """

    base1: float
    peak: float
    base2: float
    sos: float  # day of year of green-up (inflection)
    rs: float  # green-up steepness (days)
    eos: float  # day of year of senescence (inflection)
    re: float  # senescence steepness (days)
    winter: float  # day of year of the base2 -> base1 transition (inflection)
    rw: float  # its steepness (days)


_CURVES: dict[str, _Curve] = {
    "winter_wheat": _Curve(0.35, 0.86, 0.18, 85.0, 10.0, 172.0, 8.0, 305.0, 12.0),
    "maize": _Curve(0.18, 0.86, 0.25, 165.0, 9.0, 255.0, 9.0, 320.0, 12.0),
    "sunflower": _Curve(0.18, 0.81, 0.25, 150.0, 8.0, 226.0, 7.0, 320.0, 12.0),
    "grassland": _Curve(0.56, 0.71, 0.56, 95.0, 12.0, 285.0, 15.0, 335.0, 20.0),
    "fallow": _Curve(0.15, 0.25, 0.18, 110.0, 15.0, 250.0, 15.0, 320.0, 12.0),
    "bg_grassland": _Curve(0.50, 0.68, 0.52, 100.0, 12.0, 280.0, 15.0, 335.0, 20.0),
    "forest": _Curve(0.45, 0.86, 0.47, 115.0, 8.0, 292.0, 10.0, 335.0, 20.0),
    "bare_soil": _Curve(0.10, 0.13, 0.11, 120.0, 20.0, 260.0, 20.0, 335.0, 20.0),
    "water": _Curve(-0.33, -0.29, -0.33, 150.0, 20.0, 240.0, 20.0, 335.0, 20.0),
}
# Per-class pixel-noise amplitude and soil/canopy brightness.
_NOISE_AMP = {"water": 0.25, "bare_soil": 0.7, "forest": 0.8}
_BRIGHTNESS = {"water": 1.0, "bare_soil": 1.12, "forest": 0.95}
# Cloud-top reflectance offsets per band (clouds are white, slightly bluish, a little
# darker in the short-wave infrared).
_CLOUD_BAND_OFFSET = {"blue": 0.02, "green": 0.01, "red": 0.0, "nir": -0.01, "swir16": -0.05}

# --------------------------------------------------------------------------- landscape raster


@dataclass(slots=True)
class _Landscape:
    """Static per-pixel state shared by all scenes."""

    unit: np.ndarray  # int32 (H, W): 1..n fields, then background classes
    het: np.ndarray  # float32 (H, W): static NDVI heterogeneity
    bright: np.ndarray  # float32 (H, W): multiplicative reflectance brightness
    curves: np.ndarray  # float64 (9, n_units + 1): per-unit _Curve parameters
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
    """NDVI of every unit at day of year ``doy`` (continuous across years).

    One year's curve is ``S(t) = (peak - base1) * L((t - sos) / rs)
    - (peak - base2) * L((t - eos) / re) + (base1 - base2) * L((t - winter) / rw)``
    (``L`` the logistic function), whose net change over a year is zero. The NDVI is
    ``base1 + S(doy + 365) + S(doy) + S(doy - 365)``: the previous year's winter
    transition and the next year's green-up are included, so 31 December and
    1 January agree (to ~1e-3) whatever ``base1`` and ``base2`` are.
    """
    base1, peak, base2, sos, rs, eos, re, winter, rw = curves

    def year(t: float) -> np.ndarray:
        rise = 1.0 / (1.0 + np.exp(-(t - sos) / rs))
        fall = 1.0 / (1.0 + np.exp(-(t - eos) / re))
        back = 1.0 / (1.0 + np.exp(-(t - winter) / rw))
        return (peak - base1) * rise - (peak - base2) * fall + (base1 - base2) * back

    return base1 + year(doy + 365.0) + year(doy) + year(doy - 365.0)


def _swir_surface(ndvi: np.ndarray, bright: np.ndarray) -> np.ndarray:
    """SWIR 1.6 um surface reflectance at 10 m from NDVI and brightness (float32).

    Piecewise linear in NDVI: ``0.31 - 0.20 * ndvi`` over land (bare soil ~0.29, dense
    green vegetation ~0.13, which gives NDMI ~0.5 for dense crops and ~-0.1 for bare
    soil), falling steeply to ~0.01 for water (``ndvi < 0``), times the static brightness.
    """
    swir = np.where(ndvi >= 0, np.float32(-0.20), np.float32(1.0))
    swir *= ndvi
    swir += 0.31
    np.maximum(swir, 0.008, out=swir)
    swir *= bright
    return swir


def _render_scene(
    land: _Landscape, rng: np.random.Generator, date: datetime.date, stats: dict[str, float]
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(band key, array)`` for every band of one scene, band by band.

    The bands come in :data:`~.constants.BANDS` order: ``B02``, ``B03``, ``B04``,
    ``B08`` (10 m, uint16 DN), ``B11`` (20 m, uint16 DN, the 2 x 2 mean of the 10 m
    reflectance) and ``SCL`` (20 m, uint8, the upper-left 10 m class of each block);
    see :mod:`.downsample`. Reflectance is encoded as
    ``DN = round(reflectance * 10000) + dn_offset(date)``.

    All full-size arrays are float32 (thresholds are converted to Python floats so
    NumPy's type promotion never upcasts to float64).
    """
    unit = land.unit
    h, w = unit.shape
    offset = dn_offset(date)
    cloud_frac = 0.0 if rng.random() < 0.35 else float(rng.uniform(0.05, 0.40))
    strip_frac = float(rng.uniform(0.03, 0.15))
    slant = float(rng.uniform(-0.6, 0.6))

    # Surface NDVI -> nir, red, swir16.
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
    swir = _swir_surface(ndvi, land.bright)

    scl = np.full((h, w), _SCL_SOIL, np.uint8)
    np.putmask(scl, ndvi > 0.3, _SCL_VEG)
    np.putmask(scl, (ndvi < 0.0) | (unit == land.water_unit), _SCL_WATER)
    del ndvi

    # Clouds: thresholded multi-octave smooth noise; cirrus rim; displaced shadows.
    alpha, cloud_top, shade = _add_clouds(rng, scl, cloud_frac, stats)

    # Slanted nodata strip along the east edge (orbit edge): first nodata column per row,
    # on the 10 m grid and on the 20 m grid (nodata where any 10 m pixel is nodata).
    first_col = _nodata_first_col(h, w, strip_frac, slant, stats)
    first_col_20m = _coarse_first_col(first_col, w)

    # Surface reflectances; each is released once its band is written (memory bound).
    surface: dict[str, np.ndarray] = {"red": red, "nir": nir, "swir16": swir}
    del red, nir, swir
    for b, key in enumerate(BANDS):
        name = BAND_NAMES[key]
        if key == "SCL":
            scl_20m = _upper_left_2x2(scl)
            del scl
            _apply_strip(scl_20m, first_col_20m)
            yield key, scl_20m
            continue
        if name == "green":
            refl = 0.75 * surface["red"]
            refl += 0.08 * surface["nir"]
            refl += 0.01
        elif name == "blue":
            refl = 0.55 * surface["red"]
            refl += 0.02 * surface["nir"]
            refl += 0.02
        else:  # red, nir, swir16: modified in place
            refl = surface.pop(name)
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
            top_b = cloud_top + _CLOUD_BAND_OFFSET[name]
            top_b -= refl
            top_b *= alpha
            refl += top_b
            del top_b
        if key == "B11":
            refl = _mean_2x2(refl)
        dn = _to_dn(refl, offset)
        del refl
        _apply_strip(dn, first_col_20m if key == "B11" else first_col)
        yield key, dn


def _to_dn(refl: np.ndarray, offset: int) -> np.ndarray:
    """Encode reflectance as ``round(refl * 10000) + offset`` in [1, 65535] (in place).

    ``offset`` is 0 before processing baseline 04.00 and 1000 from it on
    (:func:`~.constants.dn_offset`); 0 stays reserved for nodata.
    """
    refl *= QUANTIFICATION_VALUE
    np.rint(refl, out=refl)
    refl += offset
    np.clip(refl, 1, 65535, out=refl)
    return refl.astype(np.uint16)
