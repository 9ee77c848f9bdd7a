"""Ingest, step 1: one source file -> its header parsed (virtual references) or, on
request, its pixels copied; checked for the cases that parse but would read back wrong.

Layer: ingest (used by :mod:`.ingest`). virtual-tiff parses the TIFF header into virtual
references; rasterio (:mod:`.rio_source`) is only used for what those cannot give: the
full definition of a user-defined CRS, per-band GDAL scale/offset of multi-band files,
and the pixels of files virtual references cannot serve (``copy_unsupported``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import obstore

from ..config import StorageProfile
from ..errors import InputDataError, StorageError
from ..geo import geo_from_tiff_attrs
from .sources import SourceFile, object_store_for, split_url

__all__ = ["ParsedFile", "parse_file"]

logger = logging.getLogger(__name__)

_TIFF_MAGIC = {b"II*\x00": "little", b"MM\x00*": "big", b"II+\x00": "little", b"MM\x00+": "big"}


@dataclass
class ParsedFile:
    """One source file, parsed: its virtual dataset (or copied pixels) and its grid."""

    file: SourceFile
    band_key: str | None
    vds: Any
    transform: tuple[float, ...]
    epsg: int | None
    crs: str  # "EPSG:nnnn", or WKT2 for CRSs without an EPSG code
    nodata: float | None
    shape_yx: tuple[int, int]
    count: int | None  # None for 2-D arrays
    dtype: str
    chunks_yx: tuple[int, int]
    file_scale_offset: list[tuple[float, float]] | None = None  # GDAL metadata of the file
    copied_nbytes: int = 0  # > 0: pixels copied into the repository (not virtual)
    copy_reason: str | None = None

    @property
    def grid(self) -> tuple[tuple[float, ...], tuple[int, int]]:
        return tuple(self.transform), self.shape_yx

    def describe_grid(self) -> str:
        from ..geo import crs_label

        a, _, c, _, e, f = self.transform
        return (f"{self.shape_yx[1]} x {self.shape_yx[0]} px of {abs(a):g} x {abs(e):g} "
                f"at ({c:.12g}, {f:.12g}) in {crs_label(self.crs)}")


def _read_magic(file: SourceFile, profile: StorageProfile) -> str:
    if file.size == 0:
        raise InputDataError("empty file (0 bytes)", path=file.url)
    _, key = split_url(file.url)
    try:
        head = bytes(obstore.get_range(object_store_for(file.url, profile), key, start=0,
                                       length=min(16, file.size)))
    except Exception as exc:
        raise StorageError(f"cannot read {file.url}: {exc}", path=file.url) from exc
    endian = _TIFF_MAGIC.get(head[:4])
    if endian is None:
        raise InputDataError("not a TIFF file (bad magic bytes)", path=file.url)
    return endian


def _problems(da: Any, file_size: int, endian: str) -> list[str]:
    """Cases that parse but read back wrong or fail at query time (stack notes, section 2)."""
    specs = [c.to_dict() for c in da.data.metadata.codecs]
    names = {s["name"] for s in specs}
    problems = []
    predictor = names & {"HorizontalDeltaCodec", "imagecodecs_floatpred", "FloatingPointPredictorCodec"}
    if endian == "big" and predictor:
        problems.append("big-endian TIFF with a predictor: virtual reads would return wrong pixels")
    refs = [entry for _, entry in da.data.manifest.iter_refs()]
    if any(e["length"] == 0 for e in refs):
        problems.append("sparse TIFF (tiles with no data): not servable as virtual references")
    if max((e["offset"] + e["length"] for e in refs), default=0) > file_size:
        problems.append("truncated file: tile data extends past the end of the file")
    if len(refs) == 0:
        problems.append("no tile data")
    return problems


def _explain_parse_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if "jpeg" in low or "ycbcr" in low:
        return f"unsupported compression: JPEG ({exc}); re-encode with DEFLATE/ZSTD/LZW"
    if ("equal" in low and "chunk" in low) or "strip" in low:
        return ("striped TIFF whose last strip is partial cannot be served as virtual chunks; "
                f"convert to a tiled COG ({exc})")
    if "zero-length" in low:
        return "sparse TIFF (tiles with no data): not servable as virtual references"
    if "compression" in low or "not implemented" in low or "unsupported" in low:
        return f"unsupported TIFF encoding ({text})"
    return f"unreadable or corrupt TIFF ({text})"


#: Refusal reasons a pixel copy (``copy_unsupported``) can get around.
_COPYABLE = ("JPEG", "striped TIFF", "big-endian", "sparse TIFF", "unsupported TIFF encoding")
_COPY_HINT = ("; pass --copy-unsupported (Python: copy_unsupported=True) to copy its pixels "
              "into the repository instead")


def parse_file(
    file: SourceFile, band_key: str | None, registry: Any, profile: StorageProfile,
    copy_unsupported: bool = False,
) -> ParsedFile:
    """Parse one source file for ingest.

    Raises
    ------
    InputDataError
        The file cannot be ingested; the message says why (and names
        ``--copy-unsupported`` when a pixel copy would get it in).
    StorageError
        The file could not be read.
    """
    try:
        return _parse_virtual(file, band_key, registry, profile)
    except InputDataError as exc:
        if not any(k in exc.message for k in _COPYABLE):
            raise
        if not copy_unsupported:
            raise InputDataError(exc.message + _COPY_HINT, path=file.url) from exc
        return _parse_copy(file, band_key, profile, reason=exc.message)


def _parse_virtual(
    file: SourceFile, band_key: str | None, registry: Any, profile: StorageProfile,
) -> ParsedFile:
    from virtual_tiff import VirtualTIFF
    from virtualizarr import open_virtual_dataset

    endian = _read_magic(file, profile)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vds = open_virtual_dataset(file.url, registry=registry, parser=VirtualTIFF(ifd=0))
    except Exception as exc:
        raise InputDataError(_explain_parse_error(exc), path=file.url) from exc
    if "0" not in vds.data_vars:
        raise InputDataError("TIFF has no image data", path=file.url)
    da = vds["0"]
    problems = _problems(da, file.size, endian)
    if problems:
        raise InputDataError("; ".join(problems), path=file.url)
    transform, epsg, nodata = geo_from_tiff_attrs(da.attrs, source=file.url)
    if epsg is not None:
        crs = f"EPSG:{epsg}"
    else:  # user-defined CRS (national grids): the full definition from the file header
        from .rio_source import source_crs

        full = source_crs(file.url, profile)
        epsg = full.to_epsg(min_confidence=100)  # only an exact match is that EPSG CRS
        crs = f"EPSG:{epsg}" if epsg else full.to_wkt()
    if transform[1] != 0 or transform[3] != 0:
        raise InputDataError("rotated rasters are not supported; warp to a north-up grid",
                             path=file.url)
    dims = tuple(da.dims)
    if dims[-2:] != ("y", "x") or len(dims) not in (2, 3):
        raise InputDataError(f"unexpected array layout {dims}", path=file.url)
    chunks = da.data.metadata.chunk_grid.chunk_shape
    count = int(da.shape[0]) if len(dims) == 3 else None
    return ParsedFile(
        file=file, band_key=band_key, vds=vds, transform=transform, epsg=epsg, crs=crs,
        nodata=nodata, shape_yx=(int(da.shape[-2]), int(da.shape[-1])),
        count=count, dtype=str(da.dtype),
        chunks_yx=(int(chunks[-2]), int(chunks[-1])),
        file_scale_offset=_file_scale_offset(da.attrs, count or 1, file.url, profile),
    )


def _parse_copy(file: SourceFile, band_key: str | None, profile: StorageProfile, *,
                reason: str) -> ParsedFile:
    """Read a file virtual references cannot serve with rasterio, as native chunks."""
    import xarray as xr

    from .rio_source import copied_data_array, read_source_pixels, source_scale_offset

    raster = read_source_pixels(file.url, profile)
    if raster.crs is None:
        raise InputDataError(f"{reason}; copying failed too: the file has no CRS", path=file.url)
    if raster.transform[1] != 0 or raster.transform[3] != 0:
        raise InputDataError("rotated rasters are not supported; warp to a north-up grid",
                             path=file.url)
    epsg = raster.crs.to_epsg(min_confidence=100)
    da = copied_data_array(raster)
    logger.info("copying pixels of a file virtual references cannot serve",
                extra={"path": file.url, "reason": reason, "nbytes": raster.nbytes})
    return ParsedFile(
        file=file, band_key=band_key, vds=xr.Dataset({"0": da}),
        transform=raster.transform, epsg=epsg,
        crs=f"EPSG:{epsg}" if epsg else raster.crs.to_wkt(), nodata=raster.nodata,
        shape_yx=raster.shape_yx, count=raster.count, dtype=raster.dtype,
        chunks_yx=tuple(int(v) for v in da.encoding["chunks"][-2:]),  # type: ignore[arg-type]
        file_scale_offset=source_scale_offset(file.url, profile),
        copied_nbytes=raster.nbytes, copy_reason=reason,
    )


def _file_scale_offset(attrs: Any, count: int, url: str,
                       profile: StorageProfile) -> list[tuple[float, float]] | None:
    """Per-band (scale, offset) a file declares in its GDAL metadata, or ``None``.

    virtual-tiff flattens GDAL's per-band metadata into one ``SCALE``/``OFFSET`` pair;
    multi-band files that declare any are asked again through rasterio.
    """
    from .rio_source import ScaleOffsetUnknownError, gdal_scale_offset, source_scale_offset

    try:
        return gdal_scale_offset(attrs, count)
    except ScaleOffsetUnknownError:
        return source_scale_offset(url, profile)
