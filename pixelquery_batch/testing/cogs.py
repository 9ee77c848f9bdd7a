"""Factory for small GeoTIFF fixtures of every "flavour" (test support only).

This module is test support: library code never imports it. It writes small
GeoTIFFs with rasterio/GDAL so the test-suite can check that the virtual-reference
reader (icechunk + zarr via virtual-tiff) returns pixels identical to rasterio for
every *supported* layout, and that *unsupported* files are refused at ingest.

Pixel values are deterministic and hand-checkable (see :func:`make_pixels`): an
arange-style ramp ``y * 37 + x * 11 + band * 1009`` plus a small seeded noise
term, mapped into the dtype's range, with a rectangular block of ``nodata`` that
straddles a chunk boundary in both directions.

Examples
--------
>>> from pixelquery_batch.testing.cogs import make_flavour, read_with_rasterio
>>> path = make_flavour(tmp_path / "a.tif", "uint16_deflate_pred2")  # doctest: +SKIP
>>> array, meta = read_with_rasterio(path)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from rasterio.windows import Window

__all__ = [
    "ALBERS_GRS80_PROJ",
    "SUPPORTED_FLAVOURS",
    "UNSUPPORTED_FLAVOURS",
    "expected_pixels",
    "flavour_chunk_yx",
    "make_cog",
    "make_flavour",
    "make_pixels",
    "make_scale_offset_raster",
    "make_striped_partial",
    "make_wkt_crs_raster",
    "nodata_block_slices",
    "read_window_with_rasterio",
    "read_with_rasterio",
]

#: Overview decimation factors built when ``overviews=True``.
OVERVIEW_FACTORS: tuple[int, ...] = (2, 4)


# --------------------------------------------------------------------------- pixels


def nodata_block_slices(
    shape_yx: tuple[int, int], chunk_yx: tuple[int, int]
) -> tuple[slice, slice]:
    """Return the (row, column) slices of the rectangular nodata block.

    The block straddles the first chunk boundary along each axis (when the axis has
    more than one chunk); for an axis held in a single chunk (e.g. the columns of a
    striped file) it straddles the one-third point instead.

    Parameters
    ----------
    shape_yx : tuple of int
        Image shape ``(height, width)``.
    chunk_yx : tuple of int
        Chunk (tile or strip) shape ``(rows, columns)``.

    Returns
    -------
    tuple of slice
        ``(row_slice, col_slice)``, never empty for images of at least 4 x 4 pixels.
    """
    out: list[slice] = []
    for size, chunk, before, after in (
        (shape_yx[0], chunk_yx[0], 16, 24),
        (shape_yx[1], chunk_yx[1], 20, 36),
    ):
        boundary = chunk if 0 < chunk < size else max(size // 3, 1)
        start = max(0, boundary - min(before, boundary // 2 or 1))
        stop = min(size, boundary + min(after, max((size - boundary) // 2, 1)))
        out.append(slice(start, stop))
    return out[0], out[1]


def _integer_range(dtype: np.dtype) -> tuple[int, int]:
    """Return ``(low, span)`` so that ``low + k % span`` stays well inside ``dtype``."""
    info = np.iinfo(dtype)
    if info.min < 0:
        span = min(int(info.max), 30000)
        return -(span // 2), span
    return 1, min(int(info.max) - 1, 60000)


def make_pixels(
    shape_yx: tuple[int, int] = (300, 400),
    count: int = 1,
    dtype: str | np.dtype = "uint16",
    nodata: float | None = 0,
    *,
    seed: int = 0,
    nodata_block: bool = True,
    chunk_yx: tuple[int, int] = (128, 128),
) -> np.ndarray:
    """Build the deterministic pixel array written by :func:`make_cog`.

    For band ``b``, row ``y`` and column ``x`` let ``ramp = y*37 + x*11 + b*1009`` and
    ``noise`` be a seeded integer in ``[0, 64)``. Then

    * integer dtypes: ``low + (ramp + noise) % span`` (``low = 1, span = 60000`` for
      ``uint16``; ``low = -15000, span = 30000`` for ``int16`` so values are negative
      and positive; ``low = 1, span = 254`` for ``uint8``);
    * float dtypes: ``(ramp + noise / 2) / 4 - 2500`` -- exact multiples of 0.125,
      negative and positive.

    Values equal to ``nodata`` outside the block are nudged by one so the block is
    the only nodata in the image; the block (see :func:`nodata_block_slices`) is
    filled with ``nodata`` (NaN when ``nodata`` is NaN).

    Parameters
    ----------
    shape_yx : tuple of int
        ``(height, width)``.
    count : int
        Number of bands.
    dtype : str or numpy.dtype
        Output dtype.
    nodata : float or None
        Nodata value (``float("nan")`` allowed for float dtypes), or None.
    seed : int
        Seed for the noise term.
    nodata_block : bool
        Whether to write the nodata block (ignored when ``nodata`` is None).
    chunk_yx : tuple of int
        Chunk shape used to place the block across a chunk boundary.

    Returns
    -------
    numpy.ndarray
        Array of shape ``(count, height, width)``.
    """
    dt = np.dtype(dtype)
    height, width = shape_yx
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.int64)
    bands = []
    for band in range(count):
        ramp = yy * 37 + xx * 11 + band * 1009
        noise = rng.integers(0, 64, size=(height, width))
        if dt.kind == "f":
            values = (ramp + noise / 2.0) / 4.0 - 2500.0
        elif dt.kind in "iu":
            low, span = _integer_range(dt)
            values = low + (ramp + noise) % span
        else:
            raise ValueError(f"unsupported dtype {dt}")
        bands.append(values.astype(dt))
    data = np.stack(bands)
    if nodata is None:
        return data
    is_nan = isinstance(nodata, float) and math.isnan(nodata)
    if not is_nan:
        if dt.kind in "iu":
            info = np.iinfo(dt)
            if not info.min <= nodata <= info.max or nodata != int(nodata):
                raise ValueError(f"nodata {nodata!r} not representable as {dt}")
            alt = nodata + 1 if nodata + 1 <= info.max else nodata - 1
        else:
            alt = nodata + 1
        data[data == nodata] = alt
    if nodata_block:
        rows, cols = nodata_block_slices(shape_yx, chunk_yx)
        data[:, rows, cols] = np.nan if is_nan else nodata
    return data


# --------------------------------------------------------------------------- writing


def _chunk_yx(
    shape_yx: tuple[int, int], tiled: bool, blocksize: int, rows_per_strip: int | None
) -> tuple[int, int]:
    if tiled:
        return blocksize, blocksize
    return (rows_per_strip or blocksize), shape_yx[1]


def make_cog(
    path: str | os.PathLike[str],
    *,
    shape_yx: tuple[int, int] = (300, 400),
    count: int = 1,
    dtype: str = "uint16",
    crs: str | None = "EPSG:32633",
    origin_xy: tuple[float, float] = (500000.0, 5000000.0),
    res: float = 10.0,
    nodata: float | None = 0,
    compress: str | None = "DEFLATE",
    predictor: int | None = None,
    tiled: bool = True,
    blocksize: int = 128,
    interleave: Literal["band", "pixel"] = "band",
    bigtiff: bool = False,
    overviews: bool = False,
    endian: Literal["little", "big"] = "little",
    photometric: str | None = None,
    rows_per_strip: int | None = None,
    seed: int = 0,
    nodata_block: bool = True,
    georeferenced: bool = True,
    data: np.ndarray | None = None,
    creation_options: dict[str, Any] | None = None,
) -> Path:
    """Write a small GeoTIFF with the requested layout and return its path.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; parent directories are created.
    shape_yx : tuple of int
        ``(height, width)``; keep it a non-multiple of ``blocksize`` so edge chunks
        are partial.
    count : int
        Number of bands.
    dtype : str
        Numpy/GDAL dtype name.
    crs : str or None
        CRS (e.g. ``"EPSG:32633"``).
    origin_xy : tuple of float
        Upper-left corner ``(x, y)``.
    res : float
        Square pixel size (north-up).
    nodata : float or None
        Nodata value (``float("nan")`` for floats) or None for no nodata.
    compress : str or None
        GDAL ``COMPRESS`` (``"DEFLATE"``, ``"LZW"``, ``"ZSTD"``, ``"JPEG"`` ...);
        None means uncompressed.
    predictor : int or None
        GDAL ``PREDICTOR`` (2 horizontal, 3 floating point).
    tiled : bool
        Tiled (``blocksize`` square tiles) or striped.
    blocksize : int
        Tile edge in pixels (multiple of 16).
    interleave : {"band", "pixel"}
        GDAL ``INTERLEAVE``.
    bigtiff : bool
        Force BigTIFF.
    overviews : bool
        Build nearest-neighbour overviews with factors ``(2, 4)`` and write the file
        with GDAL's COG driver (so the layout is a real COG).
    endian : {"little", "big"}
        GDAL ``ENDIANNESS``.
    photometric : str or None
        GDAL ``PHOTOMETRIC`` (``"RGB"``, ``"YCBCR"`` ...); None for GDAL's default.
    rows_per_strip : int or None
        Rows per strip when ``tiled=False`` (GDAL ``BLOCKYSIZE``); None for GDAL's
        default.
    seed : int
        Seed for :func:`make_pixels`.
    nodata_block : bool
        Write a nodata block across a chunk boundary (only when ``nodata`` is set).
    georeferenced : bool
        When False, write neither CRS nor geotransform.
    data : numpy.ndarray, optional
        Pixel override of shape ``(count, height, width)``; default
        :func:`make_pixels`.
    creation_options : dict, optional
        Extra GDAL creation options (e.g. ``{"SPARSE_OK": "TRUE"}``).

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ValueError
        For option combinations the COG driver cannot express.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    chunk = _chunk_yx(shape_yx, tiled, blocksize, rows_per_strip)
    if data is None:
        data = make_pixels(
            shape_yx, count, dtype, nodata, seed=seed, nodata_block=nodata_block, chunk_yx=chunk
        )
    if data.shape != (count, *shape_yx):
        raise ValueError(f"data shape {data.shape} != {(count, *shape_yx)}")

    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": shape_yx[1],
        "height": shape_yx[0],
        "count": count,
        "dtype": dtype,
        "nodata": nodata,
    }
    if georeferenced:
        profile["crs"] = crs
        profile["transform"] = from_origin(origin_xy[0], origin_xy[1], res, res)

    options: dict[str, Any] = {
        "COMPRESS": (compress or "NONE").upper(),
        "INTERLEAVE": interleave.upper(),
        "BIGTIFF": "YES" if bigtiff else "NO",
    }
    if predictor is not None:
        options["PREDICTOR"] = str(predictor)

    if overviews:
        if not tiled or endian != "little" or photometric is not None or rows_per_strip:
            raise ValueError("overviews=True (COG driver) needs tiled little-endian output")
        tmp = out.with_name(out.name + ".tmp.tif")
        try:
            _write_gtiff(tmp, profile, data, {"TILED": "YES", "INTERLEAVE": options["INTERLEAVE"]})
            with rasterio.open(tmp, "r+") as dst:
                dst.build_overviews(list(OVERVIEW_FACTORS), Resampling.nearest)
            cog_options = dict(options)
            cog_options.update(
                BLOCKSIZE=str(blocksize),
                OVERVIEWS="FORCE_USE_EXISTING",
                RESAMPLING="NEAREST",
                **(creation_options or {}),
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                rasterio.shutil.copy(tmp, out, driver="COG", **cog_options)
        finally:
            tmp.unlink(missing_ok=True)
        return out

    options["ENDIANNESS"] = endian.upper()
    if photometric is not None:
        options["PHOTOMETRIC"] = photometric.upper()
    if tiled:
        options.update(TILED="YES", BLOCKXSIZE=str(blocksize), BLOCKYSIZE=str(blocksize))
    else:
        options["TILED"] = "NO"
        if rows_per_strip is not None:
            options["BLOCKYSIZE"] = str(rows_per_strip)
    options.update(creation_options or {})
    _write_gtiff(out, profile, data, options)
    return out


def _write_gtiff(
    path: Path, profile: dict[str, Any], data: np.ndarray, options: dict[str, Any]
) -> None:
    """Write ``data`` with the GTiff driver, silencing the not-georeferenced warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile, **options) as dst:
            dst.write(data)


# --------------------------------------------------------------------------- special builders


def _build_sparse(path: str | os.PathLike[str]) -> Path:
    """Tiled DEFLATE file with ``SPARSE_OK=TRUE`` whose second tile row is omitted.

    Tile row 1 (rows 128-255) is entirely nodata, so GDAL never writes those tiles:
    their TileOffsets/TileByteCounts are 0.
    """
    import tifffile  # dev dependency; imported lazily so the module loads without it

    data = make_pixels((300, 400), 1, "uint16", 0, nodata_block=False)
    data[:, 128:256, :] = 0
    out = make_cog(path, nodata=0, predictor=2, data=data, creation_options={"SPARSE_OK": "TRUE"})
    with tifffile.TiffFile(out) as tif:
        if 0 not in tif.pages[0].databytecounts:
            raise RuntimeError("GDAL wrote every tile; the sparse fixture is not sparse")
    return out


def _build_truncated(path: str | os.PathLike[str]) -> Path:
    """Valid tiled DEFLATE file cut to ~60 % of its size (header and IFD kept)."""
    import tifffile

    out = make_cog(path, nodata=0, predictor=2)
    size = out.stat().st_size
    with tifffile.TiffFile(out) as tif:
        first_data = min(o for o in tif.pages[0].dataoffsets if o > 0)
    cut = int(size * 0.6)
    if cut <= first_data:
        raise RuntimeError("truncation would remove the TIFF header/IFD")
    with open(out, "r+b") as fh:
        fh.truncate(cut)
    return out


def _build_not_a_tiff(path: str | os.PathLike[str]) -> Path:
    """A text file named ``.tif``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("this is not a TIFF file, just text with a .tif suffix\n")
    return out


def _build_empty(path: str | os.PathLike[str]) -> Path:
    """A 0-byte ``.tif``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"")
    return out


_SPECIAL_BUILDERS = {
    "sparse": _build_sparse,
    "truncated": _build_truncated,
    "not_a_tiff": _build_not_a_tiff,
    "empty": _build_empty,
}


# --------------------------------------------------------------------------- flavours

#: Flavours the project must read pixel-identically to rasterio: name -> make_cog kwargs.
SUPPORTED_FLAVOURS: dict[str, dict[str, Any]] = {
    "uint16_deflate_pred2": {"dtype": "uint16", "compress": "DEFLATE", "predictor": 2, "nodata": 0},
    "int16_4band_pixel": {
        "dtype": "int16",
        "count": 4,
        "interleave": "pixel",
        "compress": "DEFLATE",
        "predictor": 2,
        "nodata": -9999,
    },
    "int16_4band_band_interleaved": {
        "dtype": "int16",
        "count": 4,
        "interleave": "band",
        "compress": "DEFLATE",
        "predictor": 2,
        "nodata": -9999,
    },
    "uint16_lzw": {"dtype": "uint16", "compress": "LZW", "predictor": 2, "nodata": 0},
    "uint16_zstd": {"dtype": "uint16", "compress": "ZSTD", "predictor": 2, "nodata": 0},
    "float32_pred3": {
        "dtype": "float32",
        "compress": "DEFLATE",
        "predictor": 3,
        "nodata": float("nan"),
    },
    "float32_zstd_pred3_nodata": {
        "dtype": "float32",
        "compress": "ZSTD",
        "predictor": 3,
        "nodata": -9999.0,
    },
    "uint8_rgb_deflate": {
        "dtype": "uint8",
        "count": 3,
        "interleave": "pixel",
        "photometric": "RGB",
        "compress": "DEFLATE",
        "nodata": None,
    },
    "uint16_striped": {
        "dtype": "uint16",
        "tiled": False,
        "compress": None,
        "rows_per_strip": 100,
        "nodata": 0,
    },
    "uint16_epsg4326": {
        "dtype": "uint16",
        "crs": "EPSG:4326",
        "origin_xy": (16.0, 48.0),
        "res": 0.0001,
        "compress": "DEFLATE",
        "predictor": 2,
        "nodata": 0,
    },
    "uint16_overviews": {
        "dtype": "uint16",
        "shape_yx": (600, 700),
        "blocksize": 128,
        "overviews": True,
        "compress": "DEFLATE",
        "predictor": 2,
        "nodata": 0,
    },
    "uint16_no_nodata": {"dtype": "uint16", "compress": "DEFLATE", "predictor": 2, "nodata": None},
    "uint16_bigtiff": {
        "dtype": "uint16",
        "bigtiff": True,
        "compress": "DEFLATE",
        "predictor": 2,
        "nodata": 0,
    },
    "uint16_uncompressed": {"dtype": "uint16", "compress": None, "nodata": 0},
}

#: Flavours the project must refuse at ingest: name -> (make_cog kwargs or a special
#: builder key, reason keyword expected in the refusal message).
UNSUPPORTED_FLAVOURS: dict[str, tuple[dict[str, Any] | str, str]] = {
    "jpeg_ycbcr": (
        {
            "dtype": "uint8",
            "count": 3,
            "interleave": "pixel",
            "compress": "JPEG",
            "photometric": "YCBCR",
            "nodata": None,
        },
        "JPEG",
    ),
    "jpeg_rgb": (
        {
            "dtype": "uint8",
            "count": 3,
            "interleave": "pixel",
            "compress": "JPEG",
            "photometric": "RGB",
            "nodata": None,
        },
        "JPEG",
    ),
    "striped_partial": (
        {"dtype": "uint16", "tiled": False, "compress": None, "rows_per_strip": 128, "nodata": 0},
        "strip",
    ),
    "bigendian_pred2": (
        {"dtype": "uint16", "endian": "big", "compress": "DEFLATE", "predictor": 2, "nodata": 0},
        "big-endian",
    ),
    "sparse": ("sparse", "sparse"),
    "truncated": ("truncated", "truncated"),
    "not_a_tiff": ("not_a_tiff", "not a TIFF"),
    "empty": ("empty", "empty"),
    "no_georef": ({"dtype": "uint16", "georeferenced": False, "nodata": 0}, "georeferenc"),
}


def make_flavour(path: str | os.PathLike[str], name: str) -> Path:
    """Build the named flavour (supported or unsupported) at ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Output file.
    name : str
        A key of :data:`SUPPORTED_FLAVOURS` or :data:`UNSUPPORTED_FLAVOURS`.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    KeyError
        If ``name`` is not a known flavour.
    """
    if name in SUPPORTED_FLAVOURS:
        return make_cog(path, **SUPPORTED_FLAVOURS[name])
    if name in UNSUPPORTED_FLAVOURS:
        spec, _reason = UNSUPPORTED_FLAVOURS[name]
        if isinstance(spec, str):
            return _SPECIAL_BUILDERS[spec](path)
        return make_cog(path, **spec)
    known = sorted([*SUPPORTED_FLAVOURS, *UNSUPPORTED_FLAVOURS])
    raise KeyError(f"unknown flavour {name!r}; known: {known}")


def flavour_chunk_yx(name: str) -> tuple[int, int]:
    """Return the chunk (tile or strip) shape of a supported flavour.

    Parameters
    ----------
    name : str
        A key of :data:`SUPPORTED_FLAVOURS`.

    Returns
    -------
    tuple of int
        ``(rows, columns)`` of one chunk.
    """
    kw = SUPPORTED_FLAVOURS[name]
    return _chunk_yx(
        kw.get("shape_yx", (300, 400)),
        kw.get("tiled", True),
        kw.get("blocksize", 128),
        kw.get("rows_per_strip"),
    )


def expected_pixels(name: str) -> np.ndarray:
    """Return the exact array written for a supported flavour.

    Parameters
    ----------
    name : str
        A key of :data:`SUPPORTED_FLAVOURS`.

    Returns
    -------
    numpy.ndarray
        ``(count, height, width)`` array, identical to what rasterio reads back.
    """
    kw = SUPPORTED_FLAVOURS[name]
    return make_pixels(
        kw.get("shape_yx", (300, 400)),
        kw.get("count", 1),
        kw.get("dtype", "uint16"),
        kw.get("nodata", 0),
        seed=kw.get("seed", 0),
        nodata_block=kw.get("nodata_block", True),
        chunk_yx=flavour_chunk_yx(name),
    )


# --------------------------------------------------------------------------- reading


def read_with_rasterio(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a whole file with rasterio (the reference reader for comparisons).

    Parameters
    ----------
    path : str or os.PathLike
        GeoTIFF to read.

    Returns
    -------
    array : numpy.ndarray
        Pixels with shape ``(bands, y, x)``.
    meta : dict
        ``{"transform": (a, b, c, d, e, f)`` in affine order, ``"crs_epsg": int | None,
        "nodata": float | None, "dtype": str}``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            array = src.read()
            crs_epsg = src.crs.to_epsg() if src.crs is not None else None
            meta = {
                "transform": tuple(src.transform)[:6],
                "crs_epsg": crs_epsg,
                "nodata": src.nodata,
                "dtype": src.dtypes[0],
            }
    return array, meta


def read_window_with_rasterio(
    path: str | os.PathLike[str], row_off: int, col_off: int, height: int, width: int
) -> np.ndarray:
    """Read a window ``(bands, height, width)`` with rasterio.

    Parameters
    ----------
    path : str or os.PathLike
        GeoTIFF to read.
    row_off, col_off : int
        Upper-left pixel of the window.
    height, width : int
        Window size in pixels.

    Returns
    -------
    numpy.ndarray
        Pixels with shape ``(bands, height, width)``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read(window=Window(col_off, row_off, width, height))


# --------------------------------------------------------------------------- rasterio-only cases

#: Albers Equal Area on the GRS80 ellipsoid with no datum name and no EPSG code, like
#: python-rasterstats' test rasters. pyproj matches it to EPSG:5070/6350/5071/5072 (NAD83
#: realisations) at only 70 % confidence, so it has no exact EPSG code.
ALBERS_GRS80_PROJ = (
    "+proj=aea +lat_0=23 +lon_0=-96 +lat_1=29.5 +lat_2=45.5 +x_0=0 +y_0=0 "
    "+ellps=GRS80 +units=m +no_defs"
)


def make_wkt_crs_raster(
    path: str | os.PathLike[str],
    *,
    crs: str = ALBERS_GRS80_PROJ,
    keys_flavor: Literal["STANDARD", "ESRI_PE"] = "STANDARD",
    dtype: str = "uint8",
    shape_yx: tuple[int, int] = (300, 400),
    nodata: float | None = 255,
) -> Path:
    """Write a tiled GeoTIFF whose CRS is user-defined (no EPSG code in the GeoKeys).

    Parameters
    ----------
    path : str or os.PathLike
        Output file.
    crs : str
        PROJ string or WKT without an EPSG code.
    keys_flavor : {"STANDARD", "ESRI_PE"}
        ``"STANDARD"``: a COG (GDAL's COG driver, 128-pixel tiles, overviews) with
        ``ProjectedCSTypeGeoKey`` = 32767 and the projection parameters as GeoKeys.
        ``"ESRI_PE"``: a tiled GTiff (the COG driver ignores the option) written with
        ``GEOTIFF_KEYS_FLAVOR=ESRI_PE``, which also puts the ESRI PE string in the
        ``PCSCitationGeoKey`` (``"ESRI PE String = PROJCS[...]"``).
    dtype : str
        Pixel type (``uint8`` or ``float32`` in the tests).
    shape_yx : tuple of int
        ``(height, width)``.
    nodata : float or None
        Nodata value.

    Returns
    -------
    pathlib.Path
        The written file; DEFLATE-compressed, servable as virtual references.
    """
    common: dict[str, Any] = {
        "shape_yx": shape_yx, "dtype": dtype, "crs": crs, "origin_xy": (-1_000_000.0, 2_000_000.0),
        "res": 30.0, "nodata": nodata, "compress": "DEFLATE", "blocksize": 128,
    }
    if keys_flavor == "STANDARD":
        return make_cog(path, overviews=True, **common)
    return make_cog(path, creation_options={"GEOTIFF_KEYS_FLAVOR": keys_flavor}, **common)


def make_scale_offset_raster(
    path: str | os.PathLike[str],
    *,
    scales: tuple[float, ...] = (2.75e-5,),
    offsets: tuple[float, ...] = (-0.2,),
    dtype: str = "uint16",
    shape_yx: tuple[int, int] = (64, 96),
) -> Path:
    """Write a tiled GeoTIFF whose bands carry GDAL scale/offset (GDAL_METADATA tag 42112).

    Parameters
    ----------
    path : str or os.PathLike
        Output file.
    scales, offsets : tuple of float
        One value per band (the band count is ``len(scales)``). GDAL writes no item for
        a band whose scale is 1 and offset 0.
    dtype : str
        Pixel type.
    shape_yx : tuple of int
        ``(height, width)``.

    Returns
    -------
    pathlib.Path
        Band-interleaved, DEFLATE, 32-pixel tiles, EPSG:32633, nodata 0.
    """
    if len(scales) != len(offsets):
        raise ValueError("one offset per scale")
    out = make_cog(path, count=len(scales), dtype=dtype, shape_yx=shape_yx, blocksize=32,
                   nodata=0)
    with rasterio.open(out, "r+") as dst:
        dst.scales = tuple(float(s) for s in scales)
        dst.offsets = tuple(float(o) for o in offsets)
    return out


def make_striped_partial(
    path: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    shape_yx: tuple[int, int] = (78, 100),
    rows_per_strip: int = 24,
    nodata: float | None = -9999.0,
) -> Path:
    """Write a striped GeoTIFF whose last strip is partial (78 rows in strips of 24), as
    python-rasterstats' test rasters are; virtual-tiff refuses it (unequal chunks).

    Parameters
    ----------
    path : str or os.PathLike
        Output file.
    dtype : str
        Pixel type.
    shape_yx : tuple of int
        ``(height, width)``; the height must not be a multiple of ``rows_per_strip``.
    rows_per_strip : int
        GDAL ``BLOCKYSIZE``.
    nodata : float or None
        Nodata value (a block of it straddles the first strip boundary).

    Returns
    -------
    pathlib.Path
        Uncompressed, EPSG:32633.
    """
    if shape_yx[0] % rows_per_strip == 0:
        raise ValueError("the last strip would not be partial")
    return make_cog(path, dtype=dtype, shape_yx=shape_yx, tiled=False,
                    rows_per_strip=rows_per_strip, compress=None, nodata=nodata)
