"""Raster outputs: float32 Cloud-Optimized GeoTIFFs encoded in memory (rasterio/GDAL), so
the bytes can go through the output layer from any process (client or worker)."""

from __future__ import annotations

import numpy as np

from ..errors import OutputError

__all__ = ["cog_bytes"]


def cog_bytes(array: np.ndarray, *, crs: str,
              transform: tuple[float, float, float, float, float, float],
              tags: dict[str, str] | None = None, name: str = "raster.tif") -> bytes:
    """A single-band float32 COG (DEFLATE, floating-point predictor, NaN nodata, overviews
    when larger than one 512 tile) as bytes; ``name`` only names it in errors."""
    from rasterio.io import MemoryFile
    from rasterio.transform import Affine

    h, w = array.shape
    profile = {
        "driver": "COG", "width": w, "height": h, "count": 1, "dtype": "float32",
        "crs": crs, "transform": Affine(*transform), "nodata": float("nan"),
        "compress": "DEFLATE", "predictor": 3, "blocksize": 512,
        "overviews": "AUTO" if max(h, w) > 512 else "NONE",
    }
    try:
        with MemoryFile() as mem:
            with mem.open(**profile) as dst:
                dst.write(array.astype(np.float32), 1)
                if tags:
                    dst.update_tags(**tags)
            return bytes(mem.read())
    except Exception as exc:
        raise OutputError(f"cannot encode {name}: {exc}", path=name) from exc
