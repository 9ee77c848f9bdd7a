"""Raster outputs: float32 Cloud-Optimized GeoTIFFs written atomically (rasterio/GDAL)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import OutputError

__all__ = ["write_cog"]


def write_cog(path: str | os.PathLike[str], array: np.ndarray, *, crs: str,
              transform: tuple[float, float, float, float, float, float],
              tags: dict[str, str] | None = None) -> Path:
    """Write a single-band float32 COG (DEFLATE, floating-point predictor, NaN nodata,
    overviews) to ``path`` atomically (temporary file in the same directory, then rename)."""
    import rasterio
    from rasterio.transform import Affine

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=".tif", dir=dest.parent)
    os.close(fd)
    h, w = array.shape
    profile = {
        "driver": "COG", "width": w, "height": h, "count": 1, "dtype": "float32",
        "crs": crs, "transform": Affine(*transform), "nodata": float("nan"),
        "compress": "DEFLATE", "predictor": 3, "blocksize": 512,
        "overviews": "AUTO" if max(h, w) > 512 else "NONE",
    }
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array.astype(np.float32), 1)
            if tags:
                dst.update_tags(**tags)
        os.replace(tmp, dest)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {dest}: {exc}", path=str(dest)) from exc
    return dest
