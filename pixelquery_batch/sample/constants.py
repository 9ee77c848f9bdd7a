"""Sample data: grid, band, encoding and scene-classification constants.

Layer: *sample data (seeded generator)*. Shared by every module of
:mod:`pixelquery_batch.sample`; the public names are re-exported from there.
Pure stdlib, so independent test references may import it.
"""

from __future__ import annotations

import datetime

#: Sentinel-2 MGRS tile the synthetic scenes pretend to belong to.
TILE = "33UXP"
#: EPSG code of the raster CRS (WGS 84 / UTM zone 33N).
CRS_EPSG = 32633
#: Pixel size of the 10 m grid in metres (blue, green, red, nir).
PIXEL_SIZE = 10.0
#: Pixel size of the 20 m grid in metres (swir16, scl).
PIXEL_SIZE_20M = 20.0
#: Upper-left corner shared by the 10 m and the 20 m grid (UTM metres).
ORIGIN_XY = (600_000.0, 5_300_000.0)
#: Band file keys (``{band}`` in :data:`PATTERN`), in writing order.
BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08", "B11", "SCL")
#: Common (Earth Search STAC asset) name of every band file key.
BAND_NAMES: dict[str, str] = {
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B08": "nir",
    "B11": "swir16",
    "SCL": "scl",
}
#: Native pixel size in metres of every band file key.
BAND_RESOLUTION: dict[str, float] = {
    "B02": PIXEL_SIZE,
    "B03": PIXEL_SIZE,
    "B04": PIXEL_SIZE,
    "B08": PIXEL_SIZE,
    "B11": PIXEL_SIZE_20M,
    "SCL": PIXEL_SIZE_20M,
}
#: Internal COG tile size in pixels per grid (producers use different ones).
BLOCKSIZE: dict[float, int] = {PIXEL_SIZE: 512, PIXEL_SIZE_20M: 256}
#: Path pattern of the COGs below ``cogs/``: one folder per scene, one file per band.
PATTERN = "{scene}/{band}.tif"
#: Scene folder name, Element 84 style (``S2A_33UXP_20211001_0_L2A``); ``{date}`` is YYYYMMDD.
SCENE_ID = "{satellite}_{tile}_{date}_0_L2A"
#: Satellites, alternating by scene index (S2A for the first scene).
SATELLITES: tuple[str, ...] = ("S2A", "S2B")
#: DN = round(reflectance * QUANTIFICATION_VALUE) - BOA_ADD_OFFSET; see :func:`dn_offset`.
QUANTIFICATION_VALUE = 10_000
#: Offset of processing baseline >= 04.00; applies from :data:`BASELINE_04_DATE` on.
BOA_ADD_OFFSET = -1_000
#: First acquisition date of processing baseline 04.00 (``BOA_ADD_OFFSET`` introduced).
BASELINE_04_DATE = datetime.date(2022, 1, 25)
#: Crop types of the fields.
CROPS: tuple[str, ...] = ("winter_wheat", "maize", "sunflower", "grassland", "fallow")
#: Every value the ``SCL`` band may contain.
SCL_VALUES: frozenset[int] = frozenset({0, 3, 4, 5, 6, 8, 9, 10})

_SCL_NODATA, _SCL_SHADOW, _SCL_VEG, _SCL_SOIL, _SCL_WATER = 0, 3, 4, 5, 6
_SCL_CLOUD_MED, _SCL_CLOUD_HIGH, _SCL_CIRRUS = 8, 9, 10


def dn_offset(date: datetime.date) -> int:
    """Return the DN offset of the reflectance bands of an acquisition on ``date``.

    Acquisitions before :data:`BASELINE_04_DATE` hold ``DN = round(reflectance * 10000)``
    (offset 0); from that date on ``DN = round(reflectance * 10000) + 1000``.

    Parameters
    ----------
    date
        Acquisition date (a ``datetime.datetime`` counts by its date).

    Returns
    -------
    int
        ``0`` or ``1000`` (``-BOA_ADD_OFFSET``).

    Examples
    --------
    >>> dn_offset(datetime.date(2022, 1, 24)), dn_offset(datetime.date(2022, 1, 25))
    (0, 1000)
    """
    if isinstance(date, datetime.datetime):
        date = date.date()
    return -BOA_ADD_OFFSET if date >= BASELINE_04_DATE else 0


def scene_id(index: int, date: datetime.date) -> str:
    """Return the scene folder name of the ``index``-th acquisition (0-based) on ``date``.

    Examples
    --------
    >>> scene_id(1, datetime.date(2021, 10, 31))
    'S2B_33UXP_20211031_0_L2A'
    """
    satellite = SATELLITES[index % len(SATELLITES)]
    return SCENE_ID.format(satellite=satellite, tile=TILE, date=date.strftime("%Y%m%d"))
