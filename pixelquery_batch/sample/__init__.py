"""Sample data: seeded generator of synthetic Sentinel-2 L2A-like scenes.

Layer: *sample data (seeded generator)*. Used by the quick-start demo, the
test-suite and the benchmarks; library code never depends on it. It only needs
numpy, rasterio, shapely and pyproj (no geopandas) and nothing from the rest of
the package except :mod:`pixelquery_batch.errors`.

:func:`generate_sample` writes, below ``out_dir``:

* ``cogs/S2_33UXP_{YYYY-MM-DD}_{band}.tif`` -- one Cloud-Optimized GeoTIFF per
  date and band (``blue``, ``green``, ``red``, ``nir``, ``scl``): single band
  ``uint16``, EPSG:32633, 10 m pixels, upper-left corner (600000, 5300000),
  DEFLATE + horizontal predictor, 512 px tiles, internal overviews, nodata 0.
  Reflectance bands hold ``DN = round(reflectance * 10000) + 1000`` (processing
  baseline >= 04.00, ``BOA_ADD_OFFSET = -1000``), i.e.
  ``reflectance = DN * 1e-4 - 0.1``. ``scl`` holds the scene classification
  (3 cloud shadow, 4 vegetation, 5 bare soil, 6 water, 8/9 cloud medium/high
  probability, 10 thin cirrus, 0 nodata).
* ``fields.geojson`` -- agricultural fields (EPSG:4326, properties ``id``,
  ``name``, ``crop``), including a few MultiPolygons, polygons with holes and
  fields that cross the west/south image edge.
* ``regions.geojson`` -- 3-4 large administrative-like regions covering the scene.

The landscape is fixed: the fields, a patchwork of background parcels
(grassland, forest clusters, bare soil) and usually a small lake. Every scene
samples per-crop seasonal NDVI curves (double logistic in day of year, jittered
per field), adds spatially smooth and white noise, derives reflectances from
NDVI, then adds clouds with cirrus rims and displaced shadows and a slanted
nodata strip along the east edge like a Sentinel-2 orbit edge. Everything is
derived from ``seed`` only (one ``numpy.random.default_rng([seed, stream, ...])``
per part), so equal arguments give identical pixels and GeoJSON text.

Memory stays bounded for large scenes (5490 x 5490 px: ~1.7 GB peak): the
generator works scene by scene and band by band in float32, and a writer thread
compresses one COG while the next band is computed.

Modules
-------
* :mod:`~pixelquery_batch.sample.generate` -- :func:`generate_sample`, :class:`SampleInfo`,
  :func:`max_fields_for_size` and argument validation (the orchestration).
* :mod:`~pixelquery_batch.sample.constants` -- grid, band, encoding and SCL constants.
* :mod:`~pixelquery_batch.sample.vectors` -- field and region polygons, GeoJSON text.
* :mod:`~pixelquery_batch.sample.landscape` -- crop curves, background parcels, the
  static landscape raster and per-scene reflectance synthesis.
* :mod:`~pixelquery_batch.sample.clouds` -- clouds, cirrus, shadows (SCL classes) and
  the slanted nodata strip.
* :mod:`~pixelquery_batch.sample.noise` -- smooth value noise used by both rasters.
* :mod:`~pixelquery_batch.sample.writing` -- atomic COG/GeoJSON writing, stale files.

Only the names re-exported here are public; the submodules are implementation details.

Examples
--------
>>> from pixelquery_batch.sample import generate_sample
>>> info = generate_sample(tmp_path, scenes=2, size=256, fields=12)  # doctest: +SKIP
>>> info.cog_paths[0].name  # doctest: +SKIP
'S2_33UXP_2025-03-01_blue.tif'
"""

from __future__ import annotations

import logging

from .constants import (
    BANDS,
    BOA_ADD_OFFSET,
    CROPS,
    PATTERN,
    QUANTIFICATION_VALUE,
    SCL_VALUES,
    TILE,
)
from .constants import CRS_EPSG as CRS_EPSG
from .constants import ORIGIN_XY as ORIGIN_XY
from .constants import PIXEL_SIZE as PIXEL_SIZE
from .generate import SampleInfo, generate_sample, max_fields_for_size

__all__ = [
    "BANDS",
    "BOA_ADD_OFFSET",
    "CROPS",
    "PATTERN",
    "QUANTIFICATION_VALUE",
    "SCL_VALUES",
    "TILE",
    "SampleInfo",
    "generate_sample",
    "max_fields_for_size",
]

#: Logger of the sample generator (every submodule logs under this name).
logger = logging.getLogger(__name__)
