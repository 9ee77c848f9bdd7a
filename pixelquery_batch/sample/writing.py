"""Sample data: atomic writing of COGs and GeoJSON text, stale-file cleanup.

Layer: *sample data (seeded generator)*. Every file is written to a temporary
name next to its target and moved into place with :func:`os.replace`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS

from .constants import CRS_EPSG, TILE

logger = logging.getLogger("pixelquery_batch.sample")  # one logger for the whole package


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


def _write_cog(path: Path, array: np.ndarray, transform: Affine, *, nearest: bool) -> None:
    """Write ``array`` as a single-band COG via a temporary file and ``os.replace``.

    The array is staged in an uncompressed in-memory GeoTIFF and converted with
    ``rasterio.shutil.copy`` (GDAL ``CreateCopy`` with the COG driver), which runs
    without the GIL so pixel generation continues meanwhile.
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
                    blocksize=512,
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
    """Delete sample COGs of earlier runs (other dates) that were not rewritten."""
    for path in sorted(cog_dir.glob(f"S2_{TILE}_*.tif")):
        if path not in keep:
            logger.info("removing stale sample file %s", path)
            path.unlink(missing_ok=True)
