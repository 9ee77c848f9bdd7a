"""Archive-shaped test scenes: Sentinel-2 L2A and Landsat C2 L2 folders (test support only).

Library code never imports this module. It writes small scenes laid out the way users'
archives are (see the real-archives notes):

* :func:`make_s2_scene_folder` -- one folder per scene,
  ``S2B_33UXP_20230620_0_L2A/B04.tif``, bands at 10, 20 and 60 m on aligned grids with
  *different internal tile sizes per band*, an SCL band at 20 m, and DN encoded for the
  acquisition date's processing baseline (``+1000`` from 2022-01-25 on).
* :func:`make_landsat_scene` -- USGS Collection 2 Level-2 names
  (``LC09_L2SP_190026_20250315_20250320_02_T1_SR_B4.TIF``), 30 m, ``QA_PIXEL`` bit flags.

Pixel values come from a seeded generator and are returned as *physical reflectance*
arrays too, so tests can check continuity across encodings; but correctness tests should
re-read the files with rasterio (the independent path), not trust these arrays.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.transform import from_origin

__all__ = [
    "LANDSAT_BANDS",
    "S2_BANDS",
    "S2Scene",
    "baseline_offset_dn",
    "make_landsat_scene",
    "make_s2_scene_folder",
]

#: Sentinel-2 band file keys -> (resolution m, default tile size px).
S2_BANDS: dict[str, tuple[int, int]] = {
    "B01": (60, 64), "B02": (10, 256), "B03": (10, 256), "B04": (10, 256), "B08": (10, 256),
    "B8A": (20, 128), "B11": (20, 128), "B12": (20, 256), "SCL": (20, 256), "B09": (60, 64),
}
#: Landsat C2 L2 band suffixes written by :func:`make_landsat_scene`.
LANDSAT_BANDS: tuple[str, ...] = ("SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "QA_PIXEL")

_BASELINE_04 = dt.date(2022, 1, 25)


def baseline_offset_dn(date: dt.date) -> int:
    """DN added to reflectance * 10000 by the Sentinel-2 baseline in force on ``date``.

    >>> baseline_offset_dn(dt.date(2021, 6, 1)), baseline_offset_dn(dt.date(2023, 6, 1))
    (0, 1000)
    """
    return 1000 if date >= _BASELINE_04 else 0


@dataclass(frozen=True)
class S2Scene:
    """What :func:`make_s2_scene_folder` wrote."""

    folder: Path
    scene_id: str
    date: dt.date
    files: dict[str, Path]
    reflectance: dict[str, np.ndarray]  # physical values per band key (NaN = nodata)


def _write(path: Path, array: np.ndarray, transform, crs: str, nodata: float | None,
           blocksize: int, *, predictor: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = array.shape
    with rasterio.MemoryFile() as mem:
        with mem.open(driver="GTiff", width=w, height=h, count=1, dtype=array.dtype.name,
                      crs=crs, transform=transform, nodata=nodata) as stage:
            stage.write(array, 1)
        with mem.open() as src:
            rasterio.shutil.copy(src, path, driver="COG", compress="DEFLATE", predictor=predictor,
                                 blocksize=blocksize, overviews="NONE")


def _smooth(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Blocky smooth field in [0, 1): coarse noise upsampled by ``scale``."""
    coarse = rng.random((shape[0] // scale + 2, shape[1] // scale + 2))
    return np.kron(coarse, np.ones((scale, scale)))[: shape[0], : shape[1]]


def make_s2_scene_folder(
    root: str | Path,
    date: dt.date,
    *,
    size_10m: int = 600,
    bands: tuple[str, ...] = ("B02", "B04", "B08", "B11", "SCL"),
    tiles: dict[str, int] | None = None,
    origin: tuple[float, float] = (600000.0, 5300000.0),
    crs: str = "EPSG:32633",
    satellite: str = "S2B",
    tile: str = "33UXP",
    seed: int = 0,
    reflectance: dict[str, np.ndarray] | None = None,
    cloud_fraction: float = 0.15,
) -> S2Scene:
    """Write one Sentinel-2 L2A scene folder the way Earth Search publishes it.

    Parameters
    ----------
    root
        Parent directory; the scene goes to ``root/{satellite}_{tile}_{YYYYMMDD}_0_L2A/``.
    date
        Acquisition date; decides the DN offset (processing baseline 04.00).
    size_10m
        Width/height of the 10 m grid (multiple of 6 keeps 20/60 m grids exact).
    bands
        Band keys to write (see :data:`S2_BANDS`).
    tiles
        Tile size per band key (default :data:`S2_BANDS`).
    reflectance
        Physical reflectance per band key to encode instead of random values (same
        shapes as the band grids); lets two scenes carry identical physics.
    cloud_fraction
        Share of SCL pixels flagged as cloud (classes 8/9) or shadow (3).
    """
    rng = np.random.default_rng([seed, date.toordinal()])
    scene_id = f"{satellite}_{tile}_{date:%Y%m%d}_0_L2A"
    folder = Path(root) / scene_id
    files: dict[str, Path] = {}
    refl_out: dict[str, np.ndarray] = {}
    for key in bands:
        res, default_tile = S2_BANDS[key]
        n = -(-size_10m * 10 // res)  # ceil: coarse grids cover the 10 m extent
        transform = from_origin(origin[0], origin[1], res, res)
        blocksize = (tiles or {}).get(key, default_tile)
        path = folder / f"{key}.tif"
        if key == "SCL":
            field = _smooth(rng, (n, n), 7)
            scl = np.full((n, n), 4, np.uint8)  # vegetation
            scl[field < 0.25] = 5  # bare soil
            scl[field > 1 - cloud_fraction] = 9
            scl[(field > 1 - cloud_fraction * 1.4) & (field <= 1 - cloud_fraction)] = 8
            scl[(field > 0.45) & (field < 0.45 + cloud_fraction / 3)] = 3
            scl[: max(2, n // 20), -max(2, n // 10):] = 0  # nodata corner
            _write(path, scl, transform, crs, 0, blocksize, predictor=1)
        else:
            if reflectance is not None and key in reflectance:
                refl = np.asarray(reflectance[key], dtype=np.float64)
            else:
                base = 0.05 + 0.4 * _smooth(rng, (n, n), max(2, 30 // (res // 10)))
                refl = np.round(base + rng.normal(0, 0.01, (n, n)), 4)
                refl = np.clip(refl, 0.001, 0.9)
                refl[: max(2, n // 20), -max(2, n // 10):] = np.nan  # nodata corner
            dn = np.where(np.isnan(refl), 0,
                          np.round(np.nan_to_num(refl) * 10000) + baseline_offset_dn(date))
            _write(path, dn.astype(np.uint16), transform, crs, 0, blocksize)
            refl_out[key] = refl
        files[key] = path
    return S2Scene(folder, scene_id, date, files, refl_out)


def make_landsat_scene(
    root: str | Path,
    date: dt.date,
    *,
    size: int = 300,
    origin: tuple[float, float] = (600000.0, 5300000.0),
    crs: str = "EPSG:32633",
    path_row: str = "190026",
    seed: int = 0,
    blocksize: int = 256,
) -> dict[str, Path]:
    """Write a Landsat 9 Collection 2 Level-2 scene (USGS names, 30 m, one COG per band).

    Surface reflectance bands hold DN with reflectance = DN * 2.75e-5 - 0.2 (nodata 0);
    ``QA_PIXEL`` holds bit flags (bit 0 fill, 1 dilated cloud, 3 cloud, 4 cloud shadow)
    with fill = 1 where the SR bands are nodata.
    """
    rng = np.random.default_rng([seed, date.toordinal(), 8])
    processed = date + dt.timedelta(days=5)
    stem = f"LC09_L2SP_{path_row}_{date:%Y%m%d}_{processed:%Y%m%d}_02_T1"
    transform = from_origin(origin[0], origin[1], 30.0, 30.0)
    nodata = np.zeros((size, size), bool)
    nodata[-max(2, size // 15):, : max(2, size // 8)] = True
    files: dict[str, Path] = {}
    for key in LANDSAT_BANDS:
        path = Path(root) / f"{stem}_{key}.TIF"
        if key == "QA_PIXEL":
            field = _smooth(rng, (size, size), 9)
            qa = np.full((size, size), 21824, np.uint16)  # clear land (bits 6, 8, 10, 12, 14)
            qa[field > 0.85] = 22280  # cloud (bit 3)
            qa[(field > 0.4) & (field < 0.45)] = 23888  # cloud shadow (bit 4)
            qa[nodata] = 1
            _write(path, qa, transform, crs, 1, blocksize, predictor=1)
        else:
            refl = 0.03 + 0.35 * _smooth(rng, (size, size), 5) + rng.normal(0, 0.005, (size, size))
            dn = np.round((np.clip(refl, 0.0, 0.9) + 0.2) / 2.75e-5)
            dn[nodata] = 0
            _write(path, dn.astype(np.uint16), transform, crs, 0, blocksize)
        files[key] = path
    return files
