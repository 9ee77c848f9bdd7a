"""Geometry helpers without GDAL: geotransforms from TIFF tags, footprints, reprojection.

Everything here works from the GeoTIFF tags that virtual-tiff exposes, with pyproj and
shapely only, so the read path never imports rasterio/GDAL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry

from .errors import InputDataError
from .types import BBox, GeoTransform, ShapeYX

__all__ = [
    "crs_from_user",
    "crs_label",
    "footprint_lonlat",
    "footprint_native",
    "geo_from_tiff_attrs",
    "pixel_centres",
    "reproject_geometry",
    "transform_bbox",
]

#: EPSG code GeoTIFF uses for "user defined" (no EPSG code).
_USER_DEFINED = 32767
#: virtual-tiff attributes that show a GeoTIFF carries CRS GeoKeys.
_CRS_KEYS = ("projected_type", "geographic_type", "model_type", "geog_citation",
             "gt_citation", "proj_citation", "geog_geodetic_datum", "proj_coord_trans")


def geo_from_tiff_attrs(
    attrs: Mapping[str, Any], *, source: str = "<unknown>"
) -> tuple[GeoTransform, int | None, float | None]:
    """Geotransform, EPSG code and nodata from virtual-tiff GeoTIFF attributes.

    Parameters
    ----------
    attrs
        The attributes virtual-tiff puts on the array (``model_pixel_scale``,
        ``model_tiepoint`` or ``model_transformation``, ``projected_type`` or
        ``geographic_type``, ``raster_type``, ``gdal_no_data``).
    source
        Name used in error messages.

    Returns
    -------
    (transform, epsg, nodata)
        The affine coefficients in rasterio order, the EPSG code (``None`` for a
        user-defined CRS, which the caller resolves from the file's full CRS definition)
        and the nodata value (``None`` when the file declares none). Matches what
        rasterio reports, including rotated and PixelIsPoint rasters.

    Raises
    ------
    InputDataError
        When the file has no georeferencing or no CRS at all.
    """
    if "model_transformation" in attrs:
        m = [float(v) for v in attrs["model_transformation"]]
        a, b, c, d, e, f = m[0], m[1], m[3], m[4], m[5], m[7]
    elif "model_pixel_scale" in attrs and "model_tiepoint" in attrs:
        sx, sy = (float(v) for v in attrs["model_pixel_scale"][:2])
        i, j, _, x, y, _ = (float(v) for v in attrs["model_tiepoint"][:6])
        a, b, c, d, e, f = sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy
    else:
        raise InputDataError(
            f"{source}: TIFF has no georeferencing (no ModelPixelScale/ModelTiepoint or "
            "ModelTransformation tags)",
            hint="only georeferenced GeoTIFFs can be ingested; add a CRS and geotransform "
            "with e.g. `gdal_edit.py -a_srs EPSG:xxxx -a_ullr ...`",
            path=source,
        )
    if attrs.get("raster_type") == 2:  # PixelIsPoint: GDAL shifts by half a pixel
        c -= 0.5 * (a + b)
        f -= 0.5 * (d + e)
    epsg = attrs.get("projected_type") or attrs.get("geographic_type")
    if epsg is None and not any(k in attrs for k in _CRS_KEYS):
        raise InputDataError(
            f"{source}: GeoTIFF has no CRS (no GeoKeys)",
            hint="assign the CRS, e.g. `gdal_edit.py -a_srs EPSG:xxxx file.tif`",
            path=source,
        )
    nodata_raw = attrs.get("gdal_no_data")
    nodata: float | None
    if nodata_raw is None:
        nodata = None
    else:
        try:
            nodata = float(str(nodata_raw).strip().rstrip("\x00"))
        except ValueError as exc:
            raise InputDataError(
                f"{source}: unreadable GDAL_NODATA tag {nodata_raw!r}", path=source
            ) from exc
    code = None if epsg in (None, _USER_DEFINED) else int(epsg)
    return (a, b, c, d, e, f), code, nodata


def pixel_centres(transform: GeoTransform, shape_yx: ShapeYX) -> tuple[np.ndarray, np.ndarray]:
    """1-D x and y coordinates of pixel centres of a north-up raster.

    >>> x, y = pixel_centres((10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0), (2, 3))
    >>> x.tolist(), y.tolist()
    ([500005.0, 500015.0, 500025.0], [4999995.0, 4999985.0])
    """
    a, b, c, d, e, f = transform
    if b != 0 or d != 0:
        raise InputDataError(
            "rotated rasters have no 1-D x/y coordinates",
            hint="warp the raster to a north-up grid before ingesting",
        )
    ny, nx = shape_yx
    return c + a * (np.arange(nx) + 0.5), f + e * (np.arange(ny) + 0.5)


def footprint_native(transform: GeoTransform, shape_yx: ShapeYX) -> Polygon:
    """Polygon of the raster's outer edge in its own CRS (handles rotation)."""
    a, b, c, d, e, f = transform
    ny, nx = shape_yx
    corners = [(0, 0), (nx, 0), (nx, ny), (0, ny)]
    return Polygon([(a * col + b * row + c, d * col + e * row + f) for col, row in corners])


@lru_cache(maxsize=256)
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(CRS.from_user_input(src), CRS.from_user_input(dst), always_xy=True)


def crs_label(crs: str) -> str:
    """Short human name of a CRS: ``EPSG:nnnn`` when it has a code, else its name.

    >>> crs_label("EPSG:32633")
    'EPSG:32633'
    """
    if crs.upper().startswith("EPSG:"):
        return crs.upper()
    c = CRS.from_user_input(crs)
    code = c.to_epsg()
    return f"EPSG:{code}" if code else (c.name or "custom CRS")


def crs_from_user(value: int | str) -> str:
    """Canonical ``"EPSG:nnnn"`` (or WKT for non-EPSG CRSs) from an int, ``EPSG:`` string or WKT."""
    crs = CRS.from_user_input(value if not isinstance(value, int) else f"EPSG:{value}")
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def reproject_geometry(geom: BaseGeometry, src_crs: str, dst_crs: str) -> BaseGeometry:
    """Reproject a shapely geometry point by point (no densification)."""
    if CRS.from_user_input(src_crs) == CRS.from_user_input(dst_crs):
        return geom
    tr = _transformer(src_crs, dst_crs)
    return shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def _densify(poly: Polygon, n: int = 21) -> Polygon:
    length = poly.exterior.length
    return shapely.segmentize(poly, max_segment_length=length / (4 * n)) if length else poly


def footprint_lonlat(footprint: Polygon, crs: str) -> Polygon:
    """Footprint in EPSG:4326 (lon/lat), densified so curved edges stay accurate."""
    ll = reproject_geometry(_densify(footprint), crs, "EPSG:4326")
    if not ll.is_valid:
        ll = shapely.make_valid(ll)
    return ll


def transform_bbox(bbox: BBox, src_crs: str, dst_crs: str = "EPSG:4326") -> BBox:
    """Bounding box of a bbox reprojected into another CRS (densified edges)."""
    if any(math.isnan(v) for v in bbox) or bbox[0] > bbox[2] or bbox[1] > bbox[3]:
        raise ValueError(f"invalid bbox {bbox!r}: expected minx,miny,maxx,maxy with min <= max")
    poly = reproject_geometry(_densify(box(*bbox)), src_crs, dst_crs)
    return tuple(float(v) for v in poly.bounds)  # type: ignore[return-value]
