"""Scene records and the scene catalog table (pure: Arrow in, Arrow/records out).

The catalog is one Arrow table, one row per scene; :meth:`Catalog.search` filters it
with vectorised pyarrow/numpy/shapely operations (well under 100 ms for 10,000 scenes,
see ``benchmarks/bench_catalog.py``).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from ..errors import CatalogError, SceneNotFoundError
from ..types import BBox, GeoTransform, ShapeYX

__all__ = ["FILE_SCHEMA", "SCENE_SCHEMA", "BandInfo", "Catalog", "Scene"]

SCENE_SCHEMA = pa.schema(
    [
        ("scene_id", pa.string()),
        ("datetime", pa.timestamp("us", tz="UTC")),
        ("product", pa.string()),
        ("group", pa.string()),
        ("crs_epsg", pa.int32()),  # null when the CRS has no EPSG code (see crs_wkt)
        ("transform", pa.list_(pa.float64(), 6)),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("bands", pa.list_(pa.string())),
        ("bands_json", pa.string()),
        ("footprint_wkb", pa.binary()),
        ("footprint_lonlat_wkb", pa.binary()),
        ("minlon", pa.float64()),
        ("minlat", pa.float64()),
        ("maxlon", pa.float64()),
        ("maxlat", pa.float64()),
        ("cloud_cover", pa.float64()),
        ("properties_json", pa.string()),
        ("sources", pa.list_(pa.string())),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
        ("crs_wkt", pa.string()),  # WKT2 of the scene CRS (every CRS pyproj understands)
    ]
)

FILE_SCHEMA = pa.schema(
    [
        ("url", pa.string()),
        ("scene_id", pa.string()),
        ("band", pa.string()),  # the {band} key the file was grouped by (None: multi-band)
        ("size", pa.int64()),
        ("fingerprint", pa.string()),
    ]
)


@dataclass(frozen=True, slots=True)
class BandInfo:
    """Where a band lives in its scene group, on which grid, and how to interpret it.

    ``transform``/``shape_yx`` are the band's own pixel grid (bands of one scene may sit
    on grids of different resolution, e.g. Sentinel-2's 10/20/60 m; they share the CRS
    and align on pixel edges). ``None`` means the scene's grid (catalogs written before
    per-band grids existed). ``scale``/``offset`` are the ones applied to this scene
    (physical = DN * scale + offset) and ``scale_source`` says where they came from.
    """

    name: str
    role: str | None
    array: str  # array name inside the scene group
    index: int | None  # position along the array's band axis (None for 2-D arrays)
    dtype: str
    nodata: float | None
    scale: float
    offset: float
    chunks_yx: tuple[int, int]
    source: str
    transform: tuple[float, float, float, float, float, float] | None = None
    shape_yx: tuple[int, int] | None = None
    scale_source: str = "profile"
    copied: bool = False  # pixels copied into the repository (not virtual references)
    #: ``size:etag`` of the source file when ingested (virtual bands; ``None`` in catalogs
    #: written before it was recorded): lets workers read a local source directly and
    #: still refuse a file that changed since
    source_fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "role": self.role, "array": self.array, "index": self.index,
            "dtype": self.dtype, "nodata": self.nodata, "scale": self.scale,
            "offset": self.offset, "chunks_yx": list(self.chunks_yx), "source": self.source,
            "transform": list(self.transform) if self.transform is not None else None,
            "shape_yx": list(self.shape_yx) if self.shape_yx is not None else None,
            "scale_source": self.scale_source, "copied": self.copied,
            "source_fingerprint": self.source_fingerprint,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BandInfo:
        tr = d.get("transform")
        shape = d.get("shape_yx")
        return cls(
            name=d["name"], role=d.get("role"), array=d["array"], index=d.get("index"),
            dtype=d["dtype"], nodata=d.get("nodata"), scale=float(d.get("scale", 1.0)),
            offset=float(d.get("offset", 0.0)), chunks_yx=tuple(d["chunks_yx"]),  # type: ignore[arg-type]
            source=d["source"],
            transform=tuple(float(v) for v in tr) if tr is not None else None,  # type: ignore[arg-type]
            shape_yx=(int(shape[0]), int(shape[1])) if shape is not None else None,
            scale_source=d.get("scale_source") or "profile",
            copied=bool(d.get("copied", False)),
            source_fingerprint=d.get("source_fingerprint"),
        )

    @property
    def resolution(self) -> float | None:
        """Pixel width in CRS units (``None`` when the band is on the scene grid)."""
        return abs(self.transform[0]) if self.transform is not None else None


@dataclass(frozen=True, slots=True)
class Scene:
    """One scene: a set of co-registered bands on one grid at one acquisition time."""

    scene_id: str
    datetime: dt.datetime
    product: str
    group: str
    crs_epsg: int | None
    transform: GeoTransform
    shape_yx: ShapeYX
    bands: tuple[BandInfo, ...]
    footprint: BaseGeometry  # native CRS
    footprint_lonlat: BaseGeometry
    cloud_cover: float | None
    properties: tuple[tuple[str, str], ...]
    sources: tuple[str, ...]
    crs_wkt: str | None = None

    @property
    def crs(self) -> str:
        """``"EPSG:nnnn"`` when the CRS has an EPSG code, else its WKT2 (pyproj input)."""
        if self.crs_epsg is not None:
            return f"EPSG:{self.crs_epsg}"
        if self.crs_wkt:
            return self.crs_wkt
        raise CatalogError(f"scene {self.scene_id} has no CRS in the catalog",
                           scene_id=self.scene_id)

    def band_grid(self, band: BandInfo) -> tuple[GeoTransform, ShapeYX]:
        """The pixel grid (transform, shape) a band is stored on."""
        if band.transform is None or band.shape_yx is None:
            return self.transform, self.shape_yx
        return band.transform, band.shape_yx  # type: ignore[return-value]

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    def band(self, name_or_role: str) -> BandInfo:
        """A band by name, else by role (case-insensitive)."""
        key = name_or_role.lower()
        for b in self.bands:
            if b.name.lower() == key:
                return b
        for b in self.bands:
            if b.role is not None and b.role.lower() == key:
                return b
        raise CatalogError(
            f"scene {self.scene_id} has no band or role {name_or_role!r}",
            hint=f"bands: {', '.join(self.band_names)}",
            scene_id=self.scene_id,
        )


class Catalog:
    """The scene table at one snapshot, with fast search.

    Parameters
    ----------
    table
        Rows of :data:`SCENE_SCHEMA`.
    files
        Rows of :data:`FILE_SCHEMA` (source files, for dedup).
    snapshot_id
        The snapshot the table was read from.
    """

    def __init__(self, table: pa.Table, *, files: pa.Table | None = None,
                 snapshot_id: str | None = None) -> None:
        self.table = table.select(SCENE_SCHEMA.names).cast(SCENE_SCHEMA)
        self.files = files if files is not None else FILE_SCHEMA.empty_table()
        self.snapshot_id = snapshot_id

    @classmethod
    def empty(cls) -> Catalog:
        return cls(SCENE_SCHEMA.empty_table())

    def __len__(self) -> int:
        return self.table.num_rows

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.scenes())

    def __repr__(self) -> str:
        return f"<Catalog {len(self)} scenes @ {self.snapshot_id}>"

    @property
    def ids(self) -> list[str]:
        return self.table.column("scene_id").to_pylist()

    @cached_property
    def _footprints(self) -> np.ndarray:
        return shapely.from_wkb(self.table.column("footprint_lonlat_wkb").to_numpy(zero_copy_only=False))

    def _subset(self, mask: np.ndarray | pa.ChunkedArray) -> Catalog:
        sub = Catalog.__new__(Catalog)
        sub.table = self.table.filter(mask)
        sub.files = self.files
        sub.snapshot_id = self.snapshot_id
        return sub

    def search(
        self,
        *,
        start: dt.datetime | dt.date | str | None = None,
        end: dt.datetime | dt.date | str | None = None,
        bbox: BBox | None = None,
        bbox_crs: str = "EPSG:4326",
        intersects: BaseGeometry | None = None,
        product: str | None = None,
        scene_ids: list[str] | None = None,
        max_cloud: float | None = None,
    ) -> Catalog:
        """Scenes matching every given criterion, sorted by (datetime, scene_id).

        Parameters
        ----------
        start, end
            Inclusive time window; a date ``end`` includes the whole day.
        bbox
            ``(minx, miny, maxx, maxy)`` in ``bbox_crs`` (reprojected to lon/lat).
        intersects
            A lon/lat geometry the footprint must intersect.
        product
            Product profile name.
        scene_ids
            Keep only these ids.
        max_cloud
            Keep scenes whose cloud cover (0-100) is known and at most this.
        """
        t = self.table
        mask = np.ones(t.num_rows, dtype=bool)
        times = t.column("datetime")
        if start is not None:
            mask &= pc.greater_equal(times, pa.scalar(_as_datetime(start, end=False), times.type)).to_numpy(zero_copy_only=False)
        if end is not None:
            mask &= pc.less_equal(times, pa.scalar(_as_datetime(end, end=True), times.type)).to_numpy(zero_copy_only=False)
        if product is not None:
            mask &= pc.equal(t.column("product"), product).to_numpy(zero_copy_only=False)
        if scene_ids is not None:
            mask &= pc.is_in(t.column("scene_id"), pa.array(list(scene_ids), pa.string())).to_numpy(zero_copy_only=False)
        if max_cloud is not None:
            cc = t.column("cloud_cover").to_numpy(zero_copy_only=False)
            mask &= np.nan_to_num(cc.astype(float), nan=np.inf) <= max_cloud
        geom: BaseGeometry | None = intersects
        if bbox is not None:
            from ..geo import reproject_geometry

            if bbox[0] > bbox[2] or bbox[1] > bbox[3]:
                raise CatalogError(f"invalid bbox {bbox}: expected minx,miny,maxx,maxy")
            bgeom = box(*bbox)
            if bbox_crs.upper() not in ("EPSG:4326", "OGC:CRS84"):
                bgeom = reproject_geometry(shapely.segmentize(bgeom, (bbox[2] - bbox[0]) / 20 or 1.0),
                                           bbox_crs, "EPSG:4326")
            geom = bgeom if geom is None else geom.intersection(bgeom)
        if geom is not None:
            minx, miny, maxx, maxy = geom.bounds
            coarse = (
                (t.column("maxlon").to_numpy() >= minx) & (t.column("minlon").to_numpy() <= maxx)
                & (t.column("maxlat").to_numpy() >= miny) & (t.column("minlat").to_numpy() <= maxy)
            )
            cand = np.flatnonzero(mask & coarse)
            exact = np.zeros_like(mask)
            if len(cand):
                exact[cand] = shapely.intersects(self._footprints[cand], geom)
            mask &= exact
        sub = self._subset(pa.array(mask))
        order = pc.sort_indices(sub.table, [("datetime", "ascending"), ("scene_id", "ascending")])
        sub.table = sub.table.take(order)
        return sub

    def scenes(self) -> list[Scene]:
        """The rows as :class:`Scene` records."""
        return [_row_to_scene(r) for r in self.table.to_pylist()]

    def get(self, scene_id: str) -> Scene:
        """One scene by id; :class:`SceneNotFoundError` when absent."""
        rows = self.table.filter(pc.equal(self.table.column("scene_id"), scene_id))
        if rows.num_rows == 0:
            close = [s for s in self.ids if scene_id.lower() in s.lower()][:5]
            raise SceneNotFoundError(
                f"no scene {scene_id!r} in the catalog at snapshot {self.snapshot_id}",
                hint=f"did you mean one of {close}?" if close else "`pqb scenes` lists them",
                scene_id=scene_id,
            )
        return _row_to_scene(rows.to_pylist()[0])

    def to_records(self) -> list[dict[str, Any]]:
        """JSON-friendly rows (no WKB; footprint as GeoJSON)."""
        from ..geo import crs_label

        out = []
        for s in self.scenes():
            out.append({
                "scene_id": s.scene_id,
                "datetime": s.datetime.isoformat().replace("+00:00", "Z"),
                "product": s.product,
                "crs": crs_label(s.crs),
                "crs_epsg": s.crs_epsg,
                "crs_wkt": s.crs_wkt,
                "shape_yx": list(s.shape_yx),
                "transform": list(s.transform),
                "bands": [b.name for b in s.bands],
                "band_info": [{
                    "name": b.name, "role": b.role,
                    "resolution": abs(s.band_grid(b)[0][0]),
                    "shape_yx": list(s.band_grid(b)[1]), "chunks_yx": list(b.chunks_yx),
                    "nodata": b.nodata, "scale": b.scale, "offset": b.offset,
                    "scale_source": b.scale_source, "copied": b.copied,
                } for b in s.bands],
                "bbox_lonlat": [round(v, 7) for v in s.footprint_lonlat.bounds],
                "cloud_cover": s.cloud_cover,
                "properties": dict(s.properties),
                "sources": list(s.sources),
            })
        return out


def _as_datetime(value: dt.datetime | dt.date | str, *, end: bool) -> dt.datetime:
    if isinstance(value, str):
        from .patterns import parse_datetime

        date_only = len(value.strip()) <= 10
        parsed = parse_datetime(value)
        if date_only and end:
            return parsed + dt.timedelta(days=1, microseconds=-1)
        return parsed
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    base = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    return base + dt.timedelta(days=1, microseconds=-1) if end else base


def _row_to_scene(r: dict[str, Any]) -> Scene:
    return Scene(
        scene_id=r["scene_id"],
        datetime=r["datetime"],
        product=r["product"],
        group=r["group"],
        crs_epsg=int(r["crs_epsg"]) if r.get("crs_epsg") is not None else None,
        transform=tuple(r["transform"]),  # type: ignore[arg-type]
        shape_yx=(int(r["height"]), int(r["width"])),
        bands=tuple(BandInfo.from_dict(d) for d in json.loads(r["bands_json"])),
        footprint=shapely.from_wkb(r["footprint_wkb"]),
        footprint_lonlat=shapely.from_wkb(r["footprint_lonlat_wkb"]),
        cloud_cover=r["cloud_cover"],
        properties=tuple(sorted(json.loads(r["properties_json"] or "{}").items())),
        sources=tuple(r["sources"]),
        crs_wkt=r.get("crs_wkt"),
    )
