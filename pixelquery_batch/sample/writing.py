"""Sample data: atomic writing of COGs and GeoJSON text, stale-file cleanup.

Layer: *sample data (seeded generator)*. Every file is written to a temporary
name next to its target and moved into place with :func:`os.replace`.
:func:`_remove_stale` deletes what an earlier run wrote and this one did not.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS

from .constants import BANDS, CRS_EPSG, TILE

logger = logging.getLogger("pixelquery_batch.sample")  # one logger for the whole package

# What this generator writes (or an earlier version of it wrote) below ``cogs/``:
# scene folders ``S2A_33UXP_20211001_0_L2A/`` and the flat ``S2_33UXP_{date}_{band}.tif``
# files of the earlier layout.
_SCENE_DIR_RE = re.compile(rf"S2[AB]_{TILE}_\d{{8}}_0_L2A")
_LEGACY_FILE_RE = re.compile(rf"S2_{TILE}_\d{{4}}-\d\d-\d\d_(?:blue|green|red|nir|scl)\.tif")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = _tmp_name(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_cog(
    path: Path, array: np.ndarray, transform: Affine, *, nearest: bool, blocksize: int
) -> None:
    """Write ``array`` as a single-band COG via a temporary file and ``os.replace``.

    ``blocksize`` is the internal tile size in pixels; ``nearest`` selects nearest
    (classes) instead of average (reflectance) overview resampling. The array is staged
    in an uncompressed in-memory GeoTIFF and converted with ``rasterio.shutil.copy``
    (GDAL ``CreateCopy`` with the COG driver), which runs without the GIL so pixel
    generation continues meanwhile.
    """
    h, w = array.shape
    tmp = _tmp_name(path)
    resampling = "nearest" if nearest else "average"
    try:
        with rasterio.MemoryFile() as mem:
            with mem.open(
                driver="GTiff",
                width=w,
                height=h,
                count=1,
                dtype=array.dtype.name,
                crs=CRS.from_epsg(CRS_EPSG),
                transform=transform,
                nodata=0,
            ) as stage:
                stage.write(array, 1)
            with mem.open() as src:
                rasterio.shutil.copy(
                    src,
                    tmp,
                    driver="COG",
                    compress="DEFLATE",
                    predictor=2,
                    blocksize=blocksize,
                    overviews="AUTO",
                    resampling=resampling,
                    overview_resampling=resampling,
                    num_threads="ALL_CPUS",
                )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.debug("wrote %s", path)


def _remove_stale(cog_dir: Path, keep: set[Path]) -> None:
    """Delete sample COGs of earlier runs that this run did not rewrite.

    Only files this generator writes are touched: ``{band}.tif`` (band keys of
    :data:`~.constants.BANDS`) inside scene folders named like
    ``S2A_33UXP_20211001_0_L2A``, and the flat ``S2_33UXP_{date}_{band}.tif`` files of
    the earlier layout. A scene folder left empty is removed; anything else in it
    (and every other file or folder) stays.
    """
    for entry in sorted(cog_dir.iterdir()):
        if entry.is_symlink():
            continue
        if entry.is_dir() and _SCENE_DIR_RE.fullmatch(entry.name):
            for key in BANDS:
                path = entry / f"{key}.tif"
                if path not in keep and path.is_file():
                    logger.info("removing stale sample file %s", path)
                    path.unlink(missing_ok=True)
            if not any(entry.iterdir()):
                logger.info("removing empty stale scene folder %s", entry)
                entry.rmdir()
        elif entry.is_file() and _LEGACY_FILE_RE.fullmatch(entry.name) and entry not in keep:
            logger.info("removing sample file of the earlier flat layout %s", entry)
            entry.unlink(missing_ok=True)
