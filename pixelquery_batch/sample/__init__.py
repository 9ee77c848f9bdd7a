"""Sample data: seeded generator of synthetic Sentinel-2 L2A-like scenes.

Layer: *sample data (seeded generator)*. Used by the quick-start demo, the
test-suite and the benchmarks; library code never depends on it. It only needs
numpy, rasterio, shapely and pyproj (no geopandas) and nothing from the rest of
the package except :mod:`pixelquery_batch.errors`.

:func:`generate_sample` writes, below ``out_dir``:

* ``cogs/{scene}/{band}.tif`` -- the Element 84 / AWS (Earth Search) layout: one
  folder per acquisition, named like ``S2A_33UXP_20211001_0_L2A`` (satellite
  alternating S2A/S2B by scene index, tile, date ``YYYYMMDD``), holding one
  single-band Cloud-Optimized GeoTIFF per band: EPSG:32633, upper-left corner
  (600000, 5300000) for every band, DEFLATE + horizontal predictor, internal
  overviews, nodata 0, no scale/offset metadata (like the real files).

  ====== ======== ========== =========================== ======= =========
  file   name     resolution size                        dtype   tiles
  ====== ======== ========== =========================== ======= =========
  B02    blue     10 m       size x size                 uint16  512 px
  B03    green    10 m       size x size                 uint16  512 px
  B04    red      10 m       size x size                 uint16  512 px
  B08    nir      10 m       size x size                 uint16  512 px
  B11    swir16   20 m       ceil(size/2) x ceil(size/2) uint16  256 px
  SCL    scl      20 m       ceil(size/2) x ceil(size/2) uint8   256 px
  ====== ======== ========== =========================== ======= =========

  When ``size`` is odd the 20 m grid reaches 10 m past the 10 m grid on the east
  and south edges. Reflectance bands hold digital numbers encoded by the
  acquisition date, as Sentinel-2 processing baselines do: before 2022-01-25
  (:data:`BASELINE_04_DATE`) ``DN = round(reflectance * 10000)``, from then on
  ``DN = round(reflectance * 10000) + 1000`` (baseline 04.00,
  ``BOA_ADD_OFFSET = -1000``); :func:`dn_offset` gives the offset of a date. The
  reflectance itself does not depend on the encoding. ``SCL`` holds the scene
  classification (3 cloud shadow, 4 vegetation, 5 bare soil, 6 water, 8/9 cloud
  medium/high probability, 10 thin cirrus, 0 nodata).
  The scene is rendered at 10 m; the 20 m bands derive from it per 2 x 2 block of
  10 m pixels: ``B11`` is the mean of the four reflectances, ``SCL`` the class of
  the upper-left one, and both are nodata where any of the four is nodata (see
  :mod:`~pixelquery_batch.sample.downsample`).
* ``fields.geojson`` -- agricultural fields (EPSG:4326, properties ``id``,
  ``name``, ``crop``), including a few MultiPolygons, polygons with holes and
  fields that cross the west/south image edge.
* ``regions.geojson`` -- 3-4 large administrative-like regions covering the scene.

The landscape is fixed: the fields, a patchwork of background parcels
(grassland, forest clusters, bare soil) and usually a small lake. Every scene
samples per-crop seasonal NDVI curves (double logistic in day of year, jittered
per field, continuous across the turn of the year), adds spatially smooth and
white noise, derives reflectances (blue, green, red, nir, swir16) from NDVI, then
adds clouds with cirrus rims and displaced shadows and a slanted
nodata strip along the east edge like a Sentinel-2 orbit edge. Everything is
derived from ``seed`` only (one ``numpy.random.default_rng([seed, stream, ...])``
per part), so equal arguments give identical pixels and GeoJSON text.

Memory stays bounded for large scenes (5490 x 5490 px: ~1.8 GB peak): the
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
* :mod:`~pixelquery_batch.sample.downsample` -- the 10 m -> 20 m rules of ``B11`` and ``SCL``.
* :mod:`~pixelquery_batch.sample.noise` -- smooth value noise used by both rasters.
* :mod:`~pixelquery_batch.sample.writing` -- atomic COG/GeoJSON writing, stale files
  and scene folders.

Only the names re-exported here are public; the submodules are implementation details.

Examples
--------
>>> from pixelquery_batch.sample import generate_sample
>>> info = generate_sample(tmp_path, scenes=2, size=256, fields=12)  # doctest: +SKIP
>>> info.cog_paths[0].relative_to(info.cog_dir).as_posix()  # doctest: +SKIP
'S2A_33UXP_20211001_0_L2A/B02.tif'
"""

from __future__ import annotations

import logging

from .constants import (
    BAND_NAMES,
    BAND_RESOLUTION,
    BANDS,
    BASELINE_04_DATE,
    BOA_ADD_OFFSET,
    CROPS,
    PATTERN,
    QUANTIFICATION_VALUE,
    SCL_VALUES,
    TILE,
    dn_offset,
)
from .constants import CRS_EPSG as CRS_EPSG
from .constants import ORIGIN_XY as ORIGIN_XY
from .constants import PIXEL_SIZE as PIXEL_SIZE
from .constants import PIXEL_SIZE_20M as PIXEL_SIZE_20M
from .generate import SampleInfo, generate_sample, max_fields_for_size

__all__ = [
    "BANDS",
    "BAND_NAMES",
    "BAND_RESOLUTION",
    "BASELINE_04_DATE",
    "BOA_ADD_OFFSET",
    "CROPS",
    "PATTERN",
    "QUANTIFICATION_VALUE",
    "SCL_VALUES",
    "TILE",
    "SampleInfo",
    "dn_offset",
    "generate_sample",
    "max_fields_for_size",
]

#: Logger of the sample generator (every submodule logs under this name).
logger = logging.getLogger(__name__)
