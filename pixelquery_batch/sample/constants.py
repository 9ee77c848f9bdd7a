"""Sample data: grid, band, encoding and scene-classification constants.

Layer: *sample data (seeded generator)*. Shared by every module of
:mod:`pixelquery_batch.sample`; the public names are re-exported from there.
"""

from __future__ import annotations

#: Sentinel-2 MGRS tile the synthetic scenes pretend to belong to.
TILE = "33UXP"
#: EPSG code of the raster CRS (WGS 84 / UTM zone 33N).
CRS_EPSG = 32633
#: Pixel size in metres.
PIXEL_SIZE = 10.0
#: Upper-left corner of the raster grid (UTM metres).
ORIGIN_XY = (600_000.0, 5_300_000.0)
#: Band names, in writing order.
BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "scl")
#: File-name pattern of the COGs.
PATTERN = "S2_{tile}_{date}_{band}.tif"
#: DN = reflectance * QUANTIFICATION_VALUE - BOA_ADD_OFFSET (baseline >= 04.00).
QUANTIFICATION_VALUE = 10_000
BOA_ADD_OFFSET = -1_000
#: Crop types of the fields.
CROPS: tuple[str, ...] = ("winter_wheat", "maize", "sunflower", "grassland", "fallow")
#: Every value the ``scl`` band may contain.
SCL_VALUES: frozenset[int] = frozenset({0, 3, 4, 5, 6, 8, 9, 10})

_SCL_NODATA, _SCL_SHADOW, _SCL_VEG, _SCL_SOIL, _SCL_WATER = 0, 3, 4, 5, 6
_SCL_CLOUD_MED, _SCL_CLOUD_HIGH, _SCL_CIRRUS = 8, 9, 10
