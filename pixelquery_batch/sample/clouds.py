"""Sample data: clouds, cirrus, cloud shadows and the nodata strip of one scene.

Layer: *sample data (seeded generator)*. Clouds are thresholded multi-octave
smooth noise with a cirrus rim and shadows displaced away from the sun; they are
marked in the SCL band (3 shadow, 8/9 cloud medium/high probability, 10 thin
cirrus). Every scene also gets a slanted nodata strip along the east edge, like
a Sentinel-2 orbit edge.
"""

from __future__ import annotations

import math

import numpy as np

from .constants import _SCL_CIRRUS, _SCL_CLOUD_HIGH, _SCL_CLOUD_MED, _SCL_SHADOW
from .noise import _add_value_noise


def _add_clouds(
    rng: np.random.Generator, scl: np.ndarray, cloud_frac: float, stats: dict[str, float]
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Draw clouds covering ~``cloud_frac`` of the scene; mark them in ``scl`` in place.

    Returns ``(alpha, cloud_top, shade)`` -- cloud opacity, cloud-top reflectance and
    the multiplicative shadow factor (float32, shape of ``scl``) -- or three ``None``
    when ``cloud_frac`` is 0. Sets ``stats["cloud"]`` and ``stats["shadow"]``.
    """
    h, w = scl.shape
    size = max(h, w)
    # Clouds: thresholded multi-octave smooth noise; cirrus rim; displaced shadows.
    alpha = cloud_top = shade = None
    if cloud_frac > 0:
        cell = float(np.clip(size / 4, 32, 400))
        noise = np.zeros((h, w), np.float32)
        _add_value_noise(rng, noise, cell, 1.0)
        _add_value_noise(rng, noise, cell / 2.5, 0.5)
        _add_value_noise(rng, noise, cell / 7, 0.2)
        qs = 1.0 - np.array([1.0, 0.8, 0.4, 0.02]) * cloud_frac
        t_edge, t_core, t_high, t_top = np.quantile(noise[::4, ::4], qs).tolist()
        core = noise > t_core
        cirrus = noise > t_edge
        # Opacity: 0.15-0.6 over the cirrus rim, 1 inside the cloud, 0 outside.
        alpha = noise - t_edge
        alpha *= 0.45 / (t_core - t_edge)
        alpha += 0.15
        np.putmask(alpha, core, 1.0)
        np.putmask(alpha, ~cirrus, 0.0)
        cirrus &= ~core
        # Cloud-top reflectance 0.31-0.58, brightest in the cloud centres.
        cloud_top = noise - t_core
        cloud_top *= 0.27 / (t_top - t_core)
        np.clip(cloud_top, 0.0, 0.27, out=cloud_top)
        cloud_top += 0.31
        high = noise > t_high
        del noise
        # Sun in the south-south-east -> shadows fall north-north-west of the clouds.
        dist = float(np.clip(rng.uniform(0.02, 0.06) * size, 4, 150))
        azimuth = math.radians(rng.normal(340.0, 8.0))
        shadow = _shift(core, round(-dist * math.cos(azimuth)), round(dist * math.sin(azimuth)))
        shadow &= ~core
        shadow &= ~cirrus
        shade = np.where(shadow, np.float32(rng.uniform(0.3, 0.5)), np.float32(1.0))
        np.putmask(scl, shadow, _SCL_SHADOW)
        np.putmask(scl, cirrus, _SCL_CIRRUS)
        np.putmask(scl, core, _SCL_CLOUD_MED)
        np.putmask(scl, high, _SCL_CLOUD_HIGH)
        stats["cloud"] = float(np.count_nonzero(alpha)) / alpha.size
        stats["shadow"] = float(np.count_nonzero(shadow)) / shadow.size
        del core, cirrus, high, shadow
    else:
        stats["cloud"] = stats["shadow"] = 0.0
    return alpha, cloud_top, shade


def _nodata_first_col(
    h: int, w: int, strip_frac: float, slant: float, stats: dict[str, float]
) -> np.ndarray:
    """Return the first nodata column of every row; set ``stats["nodata"]``."""
    # Slanted nodata strip along the east edge (orbit edge): first nodata column per row.
    top, bottom = strip_frac * (1 - slant) * w, strip_frac * (1 + slant) * w
    boundary = w - (top + (bottom - top) * np.arange(h) / max(1, h - 1))
    first_col = np.clip(np.ceil(boundary), 0, w).astype(np.intp)
    stats["nodata"] = float((w - first_col).sum()) / (h * w)
    return first_col


def _shift(mask: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """Return ``mask`` moved by ``dr`` rows and ``dc`` columns (zero filled)."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    if abs(dr) >= h or abs(dc) >= w:
        return out
    src_r = slice(max(0, -dr), h - max(0, dr))
    dst_r = slice(max(0, dr), h - max(0, -dr))
    src_c = slice(max(0, -dc), w - max(0, dc))
    dst_c = slice(max(0, dc), w - max(0, -dc))
    out[dst_r, dst_c] = mask[src_r, src_c]
    return out


def _apply_strip(array: np.ndarray, first_col: np.ndarray) -> None:
    """Set ``array[row, first_col[row]:]`` to 0 (nodata) for every row."""
    for row, col in enumerate(first_col.tolist()):
        array[row, col:] = 0
