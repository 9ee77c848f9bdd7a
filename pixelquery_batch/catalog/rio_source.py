"""Ingest-side rasterio access to source files through the project's storage layer.

Layer: ingest (next to :mod:`.ingest` and :mod:`.sources`). rasterio/GDAL is used here
for what virtual references cannot give: headers virtual-tiff does not interpret
(user-defined CRSs, per-band scale/offset) and the pixels of files that cannot be served
as virtual chunks (JPEG, striped with a partial last strip, big-endian with a predictor,
sparse tiles), which are then *copied* into the repository as native zarr arrays. The
query path never imports this module (it imports rasterio).

Every source is opened through obstore (:func:`.sources.object_store_for`): GDAL sees a
file-like object registered with rasterio's ``opener=`` hook whose reads are ranged GETs
(with read-ahead) on the same store the listing used. Credentials therefore stay in the
:class:`~pixelquery_batch.config.StorageProfile`; nothing is put in ``os.environ`` or in
GDAL's configuration, and rasterio's own AWS credential discovery is never triggered.
Only the TIFF itself is read: sidecar files (``.aux.xml``, ``.msk``, ``.ovr``) are not
looked for, so rasterio sees exactly what virtual-tiff sees.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import obstore
import rasterio
from pyproj import CRS
from rasterio.abc import FileContainer
from rasterio.errors import RasterioError
from rasterio.session import DummySession

from ..config import StorageProfile
from ..errors import InputDataError, StorageError
from .sources import object_store_for, split_url, to_url

if TYPE_CHECKING:
    import xarray as xr
    from rasterio.io import DatasetReader

__all__ = [
    "READ_AHEAD_BYTES",
    "CopiedRaster",
    "ScaleOffsetUnknownError",
    "copied_data_array",
    "dataset_crs",
    "dataset_scale_offset",
    "gdal_metadata_scale_offset",
    "gdal_scale_offset",
    "open_source",
    "read_source_pixels",
    "source_crs",
    "source_scale_offset",
]

logger = logging.getLogger(__name__)

#: Minimum size of one ranged GET: GDAL reads headers in many small pieces (dozens of
#: reads of 2-240 bytes for one IFD), which one read-ahead buffer turns into 1-2 GETs.
READ_AHEAD_BYTES = 256 * 1024

#: GDAL settings while a source is open: no sidecar probing, no .aux.xml reads/writes.
_GDAL_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_PAM_ENABLED": "NO"}

#: Default cap on the pixels :func:`read_source_pixels` holds in memory.
_MAX_COPY_NBYTES = 2 * 1024**3


# --------------------------------------------------------------------------- opener


class _RangeFile(io.RawIOBase):
    """Read-only, seekable view of one object; reads are ranged GETs with read-ahead."""

    def __init__(self, owner: _ObstoreContainer) -> None:
        super().__init__()
        self._owner = owner
        self._pos = 0
        self._buf = b""
        self._buf_start = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._owner.size_bytes + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        total = self._owner.size_bytes
        if size is None or size < 0:
            size = total - self._pos
        size = max(0, min(size, total - self._pos))
        if size == 0:
            return b""
        start, end = self._pos, self._pos + size
        buf_end = self._buf_start + len(self._buf)
        if not (self._buf_start <= start and end <= buf_end):
            length = min(max(size, self._owner.read_ahead), total - start)
            data = self._owner.get_range(start, length)
            if data is None:  # the error is kept on the owner; GDAL sees a short read
                return b""
            self._buf, self._buf_start = data, start
        out = self._buf[start - self._buf_start : end - self._buf_start]
        self._pos += len(out)
        return out


class _ObstoreContainer(FileContainer):
    """rasterio opener serving exactly one object of an obstore store.

    GDAL addresses the file by ``name`` (the string given to :func:`rasterio.open`); any
    other path (sidecars) does not exist, and the directory lists only the file itself.

    Deliberately not a ``MultiByteRangeResourceContainer``: rasterio copies whatever a
    multi-range read returns, and an exception raised there stays pending inside GDAL's
    callback, so a failed ranged GET could not be reported cleanly. Plain reads with
    read-ahead fail as short reads, which GDAL reports as read errors.
    """

    def __init__(self, store: Any, key: str, name: str, size_bytes: int, mtime: int,
                 read_ahead: int) -> None:
        self.store = store
        self.key = key
        self.name = name
        self.size_bytes = size_bytes
        self.mtime_s = mtime
        self.read_ahead = read_ahead
        self.error: BaseException | None = None  # first storage error seen inside GDAL
        self.requests = 0

    def _is_me(self, path: str) -> bool:
        return path == self.name

    def get_range(self, start: int, length: int) -> bytes | None:
        self.requests += 1
        try:
            return bytes(obstore.get_range(self.store, self.key, start=start, length=length))
        except Exception as exc:  # raised inside a GDAL callback: keep it for open_source
            self.error = self.error or exc
            return None

    # FileContainer API -------------------------------------------------------------
    def open(self, path: str, mode: str = "rb", **kwds: Any) -> _RangeFile:
        if not self._is_me(path):
            raise FileNotFoundError(path)
        if any(c in mode for c in "wa+"):
            raise PermissionError(f"{self.name} is opened read-only")
        return _RangeFile(self)

    def isfile(self, path: str) -> bool:
        return self._is_me(path)

    def isdir(self, path: str) -> bool:
        return path.rstrip("/") == posixpath.dirname(self.name)

    def ls(self, path: str) -> list[str]:
        return [posixpath.basename(self.name)] if self.isdir(path) else []

    def mtime(self, path: str) -> int:
        return self.mtime_s

    def rm(self, path: str) -> None:
        raise PermissionError(f"{self.name} is opened read-only")

    def size(self, path: str) -> int:
        if not self._is_me(path):
            raise FileNotFoundError(path)
        return self.size_bytes


def _display(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


@contextlib.contextmanager
def open_source(
    url: str,
    storage: StorageProfile | None = None,
    *,
    read_ahead: int = READ_AHEAD_BYTES,
) -> Iterator[DatasetReader]:
    """Open a source raster with rasterio, reading it through obstore.

    Parameters
    ----------
    url
        ``file://`` URL, local path or ``s3://bucket/key``.
    storage
        Storage profile (S3 endpoint and credentials); default profile when None.
    read_ahead
        Minimum bytes fetched per ranged GET (GDAL's small header reads share one GET).

    Yields
    ------
    rasterio.io.DatasetReader
        The open dataset, valid inside the ``with`` block only. Its ``name`` is a
        ``/vsiriopener_*`` path, not ``url``. Sidecar files are never read.

    Raises
    ------
    InputDataError
        The object does not exist, or GDAL cannot open it (not a raster, corrupt header).
    StorageError
        The object store failed (permissions, network), at open or during reads.

    Examples
    --------
    >>> with open_source("s3://bucket/scene.tif", profile) as src:  # doctest: +SKIP
    ...     src.crs, src.read(1, window=((0, 256), (0, 256)))
    """
    url = to_url(url)
    root, key = split_url(url)
    store = object_store_for(url, storage)
    shown = _display(url)
    try:
        head = obstore.head(store, key)
    except FileNotFoundError as exc:
        raise InputDataError(f"source not found: {shown}", path=shown) from exc
    except Exception as exc:
        if "not found" in str(exc).lower():
            raise InputDataError(f"source not found: {shown}", path=shown) from exc
        raise StorageError(f"cannot stat {shown}: {exc}", path=shown) from exc
    modified = head.get("last_modified")
    mtime = int(modified.timestamp()) if modified is not None else 0
    # The name GDAL sees: a plain path (no "s3://", so rasterio does not look for AWS
    # credentials of its own), ending like the object so drivers see its extension.
    name = "/" + key.lstrip("/") if root == "file:///" else f"/{root[len('s3://'):]}/{key}"
    opener = _ObstoreContainer(store, key, name, int(head["size"]), mtime, read_ahead)
    with contextlib.ExitStack() as stack:
        stack.enter_context(rasterio.Env(session=DummySession(), **_GDAL_OPTIONS))
        try:
            src = stack.enter_context(rasterio.open(name, opener=opener))
        except RasterioError as exc:
            if opener.error is not None:
                raise StorageError(f"cannot read {shown}: {opener.error}",
                                   path=shown) from opener.error
            raise InputDataError(f"GDAL cannot open {shown}: {exc}", path=shown) from exc
        try:
            yield src
        except Exception as exc:
            if opener.error is not None and not isinstance(exc, StorageError):
                raise StorageError(f"reading {shown} failed: {opener.error}",
                                   path=shown) from opener.error
            raise
        finally:
            logger.debug("closed source", extra={"path": shown, "requests": opener.requests})


# --------------------------------------------------------------------------- CRS


def dataset_crs(src: DatasetReader, *, source: str = "<unknown>") -> CRS:
    """The CRS of an open rasterio dataset as a pyproj CRS (EPSG-coded when exact).

    Parameters
    ----------
    src
        An open dataset (e.g. from :func:`open_source`).
    source
        Name used in error messages.

    Returns
    -------
    pyproj.CRS
        ``CRS.from_epsg(code)`` when the file's CRS matches an EPSG entry *exactly*
        (``to_epsg(min_confidence=100)``), else the CRS built from the file's WKT.
        A 70 %-confidence match is not enough: e.g. an Albers grid on an unnamed GRS80
        datum matches EPSG:5070, 6350, 5071 and 5072 (four NAD83 realisations) at 70 %,
        and rasterio would report EPSG:5070 for it.

    Raises
    ------
    InputDataError
        The file has no CRS.
    """
    if src.crs is None:
        raise InputDataError(
            f"{source}: raster has no CRS",
            hint="assign one with e.g. `gdal_edit.py -a_srs EPSG:xxxx`", path=source)
    crs = CRS.from_wkt(src.crs.to_wkt())
    code = crs.to_epsg(min_confidence=100)
    return CRS.from_epsg(code) if code is not None else crs


def source_crs(url: str, storage: StorageProfile | None = None) -> CRS:
    """CRS of a source GeoTIFF from its header, including user-defined CRSs.

    GeoTIFFs written with a user-defined CRS (``ProjectedCSTypeGeoKey`` = 32767 plus
    parameter GeoKeys, or a citation holding WKT / an ESRI PE string) are interpreted by
    GDAL; virtual-tiff only exposes the raw GeoKeys.

    Parameters
    ----------
    url
        ``file://`` URL, local path or ``s3://`` URL.
    storage
        Storage profile for object stores.

    Returns
    -------
    pyproj.CRS
        See :func:`dataset_crs` (EPSG-coded only on an exact match).

    Raises
    ------
    InputDataError
        Missing or unreadable file, or no CRS.
    StorageError
        The object store failed.
    """
    with open_source(url, storage) as src:
        return dataset_crs(src, source=_display(to_url(url)))


# --------------------------------------------------------------------------- scale/offset


class ScaleOffsetUnknownError(LookupError):
    """virtual-tiff's attributes cannot tell a multi-band file's per-band scale/offset.

    virtual-tiff flattens the GDAL_METADATA tag into ``{item name: text}``, so of the
    per-band ``SCALE``/``OFFSET`` items only the last band's survive. Use
    :func:`source_scale_offset` (rasterio) for such files.
    """


def _as_scale_offset(pairs: Sequence[tuple[float, float]]) -> list[tuple[float, float]] | None:
    out = [(float(s), float(o)) for s, o in pairs]
    return None if all(p == (1.0, 0.0) for p in out) else out


def gdal_scale_offset(attrs: Mapping[str, Any], count: int) -> list[tuple[float, float]] | None:
    """Per-band ``(scale, offset)`` from virtual-tiff attributes (the GDAL_METADATA tag).

    GDAL stores band scale/offset in TIFF tag 42112 as
    ``<Item name="SCALE" sample="0" role="scale">`` items, and omits them when the scale
    is 1 and the offset 0. virtual-tiff merges the items into the array attributes by
    name (``attrs["SCALE"]``, ``attrs["OFFSET"]``, as text), dropping the band number.

    Parameters
    ----------
    attrs
        Attributes of the virtual-tiff array (``vds["0"].attrs``).
    count
        Number of bands of the array (1 for a 2-D array).

    Returns
    -------
    list of (scale, offset) or None
        One pair per band, physical = raw * scale + offset; None when the file declares
        none (no items, or scale 1 and offset 0).

    Raises
    ------
    ScaleOffsetUnknownError
        ``count > 1`` and a ``SCALE``/``OFFSET`` item is present: the attributes hold
        only the last band's item, so call :func:`source_scale_offset` instead.
    ValueError
        An item is not a number, or ``count < 1``.

    Examples
    --------
    >>> gdal_scale_offset({"SCALE": "2.7500000000000001e-05", "OFFSET": "-0.2"}, 1)
    [(2.75e-05, -0.2)]
    >>> gdal_scale_offset({"OFFSET": "-1000"}, 1)
    [(1.0, -1000.0)]
    >>> gdal_scale_offset({"SCALE": "1", "OFFSET": "0"}, 1) is None
    True
    >>> gdal_scale_offset({"projected_type": 32633}, 4) is None
    True
    >>> gdal_scale_offset({"SCALE": "0.0001"}, 3)
    Traceback (most recent call last):
    ...
    pixelquery_batch.catalog.rio_source.ScaleOffsetUnknownError: ...
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    scale_raw, offset_raw = attrs.get("SCALE"), attrs.get("OFFSET")
    if scale_raw is None and offset_raw is None:
        return None
    if count > 1:
        raise ScaleOffsetUnknownError(
            f"the attributes carry one SCALE/OFFSET item for {count} bands (virtual-tiff "
            "keeps only the last band's); read them with source_scale_offset()")
    scale = 1.0 if scale_raw is None else float(str(scale_raw).strip())
    offset = 0.0 if offset_raw is None else float(str(offset_raw).strip())
    if not (math.isfinite(scale) and math.isfinite(offset)):
        raise ValueError(f"non-finite scale/offset {scale_raw!r}/{offset_raw!r}")
    return _as_scale_offset([(scale, offset)])


def gdal_metadata_scale_offset(xml: str, count: int) -> list[tuple[float, float]] | None:
    """Per-band ``(scale, offset)`` from the raw GDAL_METADATA XML (tag 42112).

    For callers that hold the tag text itself (e.g. read with async-tiff or tifffile),
    where the ``sample`` attribute still says which band an item belongs to.

    Parameters
    ----------
    xml
        The tag's text (``<GDALMetadata>...</GDALMetadata>``).
    count
        Number of bands.

    Returns
    -------
    list of (scale, offset) or None
        One pair per band (1, 0 where a band has no item); None when every band is (1, 0).

    Raises
    ------
    xml.etree.ElementTree.ParseError, ValueError
        Malformed XML or a non-numeric item.

    Examples
    --------
    >>> xml = ('<GDALMetadata><Item name="OFFSET" sample="1" role="offset">0.5</Item>'
    ...        '<Item name="SCALE" sample="1" role="scale">2</Item></GDALMetadata>')
    >>> gdal_metadata_scale_offset(xml, 2)
    [(1.0, 0.0), (2.0, 0.5)]
    >>> gdal_metadata_scale_offset("<GDALMetadata/>", 2) is None
    True
    """
    pairs = [[1.0, 0.0] for _ in range(count)]
    for item in ET.fromstring(xml).iter("Item"):
        role = (item.get("role") or "").lower()
        if role not in ("scale", "offset") or item.get("sample") is None:
            continue
        band = int(item.get("sample", "-1"))
        if 0 <= band < count:
            pairs[band][0 if role == "scale" else 1] = float((item.text or "").strip())
    return _as_scale_offset([(s, o) for s, o in pairs])


def dataset_scale_offset(src: DatasetReader) -> list[tuple[float, float]] | None:
    """Per-band ``(scale, offset)`` of an open rasterio dataset; None when all are (1, 0)."""
    return _as_scale_offset(list(zip(src.scales, src.offsets, strict=True)))


def source_scale_offset(
    url: str, storage: StorageProfile | None = None
) -> list[tuple[float, float]] | None:
    """Per-band ``(scale, offset)`` of a source raster, read by GDAL.

    The fallback for :func:`gdal_scale_offset` (multi-band files, other formats).
    GDAL reports scale 1 and offset 0 for bands that declare nothing.

    Parameters
    ----------
    url
        ``file://`` URL, local path or ``s3://`` URL.
    storage
        Storage profile for object stores.

    Returns
    -------
    list of (scale, offset) or None
        One pair per band; None when every band is exactly (1, 0).

    Raises
    ------
    InputDataError, StorageError
        As :func:`open_source`.
    """
    with open_source(url, storage) as src:
        return dataset_scale_offset(src)


# --------------------------------------------------------------------------- copies


@dataclass(frozen=True, slots=True, eq=False)
class CopiedRaster:
    """Decoded pixels of a source file that virtual references cannot serve.

    ``array`` is ``(y, x)`` for one band and ``(band, y, x)`` otherwise; values are
    GDAL's decoded values (JPEG: the RGB pixels GDAL returns, YCbCr already converted).
    Identity-hashed (holds an array).
    """

    array: np.ndarray
    transform: tuple[float, float, float, float, float, float]  # rasterio (a, b, c, d, e, f)
    crs: CRS | None
    nodata: float | None
    dtype: str
    source: str

    @property
    def nbytes(self) -> int:
        """Bytes held by :attr:`array`."""
        return int(self.array.nbytes)

    @property
    def count(self) -> int | None:
        """Number of bands, None for a 2-D (single-band) array."""
        return int(self.array.shape[0]) if self.array.ndim == 3 else None

    @property
    def shape_yx(self) -> tuple[int, int]:
        return int(self.array.shape[-2]), int(self.array.shape[-1])


def read_source_pixels(
    url: str,
    storage: StorageProfile | None = None,
    *,
    max_nbytes: int | None = _MAX_COPY_NBYTES,
) -> CopiedRaster:
    """Read every pixel of a source raster (full resolution) with rasterio.

    Parameters
    ----------
    url
        ``file://`` URL, local path or ``s3://`` URL.
    storage
        Storage profile for object stores.
    max_nbytes
        Refuse files whose decoded pixels exceed this many bytes (None: no limit); the
        whole raster is held in memory.

    Returns
    -------
    CopiedRaster
        Pixels (2-D for one band), transform, CRS (:func:`dataset_crs`; None when the
        file has none), nodata and dtype.

    Raises
    ------
    InputDataError
        Missing, unreadable or truncated file; bands of different dtypes; too large.
    StorageError
        The object store failed.
    """
    shown = _display(to_url(url))
    with open_source(url, storage) as src:
        if len(set(src.dtypes)) != 1:
            raise InputDataError(f"{shown}: bands have different data types {src.dtypes}",
                                 path=shown)
        dtype = np.dtype(src.dtypes[0])
        nbytes = src.count * src.height * src.width * dtype.itemsize
        if max_nbytes is not None and nbytes > max_nbytes:
            raise InputDataError(
                f"{shown}: {nbytes / 2**20:.0f} MiB of pixels exceeds the copy limit of "
                f"{max_nbytes / 2**20:.0f} MiB",
                hint="convert it to a tiled COG (gdal_translate -of COG) and ingest that",
                path=shown)
        if src.nodata is None and any("per_dataset" in [f.name for f in flags]
                                      for flags in src.mask_flag_enums):
            logger.warning("source has an internal mask band that the copy does not keep",
                           extra={"path": shown})
        try:
            array = src.read()
        except RasterioError as exc:
            raise InputDataError(f"{shown}: cannot decode pixels: {exc}", path=shown) from exc
        crs = dataset_crs(src, source=shown) if src.crs is not None else None
        raster = CopiedRaster(
            array=array[0] if src.count == 1 else array,
            transform=tuple(float(v) for v in tuple(src.transform)[:6]),  # type: ignore[arg-type]
            crs=crs,
            nodata=None if src.nodata is None else float(src.nodata),
            dtype=str(dtype),
            source=to_url(url),
        )
    return raster


def _fill_value(nodata: float | None, dtype: np.dtype) -> int | float | None:
    """Nodata as a value of ``dtype``; None when there is none or no pixel can equal it.

    >>> _fill_value(255.0, np.dtype("uint8")), _fill_value(-9999.0, np.dtype("uint8"))
    (255, None)
    >>> _fill_value(float("nan"), np.dtype("float32"))
    nan
    """
    if nodata is None:
        return None
    if math.isnan(nodata):
        return float("nan") if dtype.kind == "f" else None
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        ok = float(nodata).is_integer() and info.min <= nodata <= info.max
        return int(nodata) if ok else None
    return dtype.type(nodata).item()


def copied_data_array(
    raster: CopiedRaster, *, chunks_yx: tuple[int, int] = (512, 512), zstd_level: int = 3
) -> xr.DataArray:
    """A numpy-backed DataArray that ``ds.vz.to_icechunk`` writes as a native zarr array.

    virtualizarr writes every variable that is not a ManifestArray with
    ``xarray.Dataset.to_zarr`` into the same group, honouring ``DataArray.encoding``.
    Without encoding zarr picks its own chunks (e.g. ``(2, 300, 350)`` for a 3-band
    600 x 700 array). The encoding set here gives ``(1, cy, cx)`` / ``(cy, cx)`` chunks,
    zarr v3 codecs ``bytes`` (little endian) + ``zstd`` (what the fast chunk reader
    decodes), and the zarr ``fill_value`` = nodata; ``_FillValue`` is also set as an
    attribute, as virtual-tiff does for virtual arrays, so xarray masks both alike.

    Parameters
    ----------
    raster
        From :func:`read_source_pixels`.
    chunks_yx
        Chunk rows and columns, each clipped to the image size (a 78 x 100 image is one
        78 x 100 chunk). Record the clipped value (``encoding["chunks"][-2:]``) as the
        band's ``chunks_yx``.
    zstd_level
        Zstandard level.

    Returns
    -------
    xarray.DataArray
        Dims ``("y", "x")`` or ``("band", "y", "x")``, no coordinates.
    """
    import xarray as xr
    from zarr.codecs import ZstdCodec

    arr = raster.array
    if arr.dtype.byteorder == ">":  # the fast reader expects little-endian chunks
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    cy, cx = (min(int(chunks_yx[0]), raster.shape_yx[0]), min(int(chunks_yx[1]), raster.shape_yx[1]))
    if cy < 1 or cx < 1:
        raise ValueError(f"chunks_yx must be positive, got {chunks_yx}")
    dims: tuple[str, ...] = ("y", "x") if arr.ndim == 2 else ("band", "y", "x")
    chunks: tuple[int, ...] = (cy, cx) if arr.ndim == 2 else (1, cy, cx)
    attrs: dict[str, Any] = {
        "copied_with": f"rasterio {rasterio.__version__} (GDAL {rasterio.__gdal_version__})",
    }
    encoding: dict[str, Any] = {"chunks": chunks, "compressors": (ZstdCodec(level=zstd_level),)}
    fill = _fill_value(raster.nodata, arr.dtype)
    if fill is not None:
        encoding["fill_value"] = fill
        attrs["_FillValue"] = fill
    da = xr.DataArray(arr, dims=dims, attrs=attrs)
    da.encoding = encoding
    return da
