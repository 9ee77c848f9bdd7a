"""STAC export of catalog scenes (pystac Items and a Collection).

Each scene becomes an Item with the projection extension (``proj:code``, ``proj:shape``,
``proj:transform``, ``proj:bbox``) and one asset per band file pointing at the source
COG; the repository snapshot is recorded in ``pixelquery:snapshot_id``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pystac
from pystac.extensions.projection import ProjectionExtension
from shapely.geometry import mapping

from .models import Catalog, Scene

__all__ = ["catalog_to_collection", "scene_to_item"]

_COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def scene_to_item(scene: Scene, *, snapshot_id: str | None = None) -> pystac.Item:
    """One scene as a STAC Item."""
    footprint = scene.footprint_lonlat
    item = pystac.Item(
        id=scene.scene_id,
        geometry=mapping(footprint),
        bbox=[round(v, 9) for v in footprint.bounds],
        datetime=scene.datetime,
        properties={
            "pixelquery:product": scene.product,
            **({"pixelquery:snapshot_id": snapshot_id} if snapshot_id else {}),
            **({"eo:cloud_cover": scene.cloud_cover} if scene.cloud_cover is not None else {}),
            **{f"pixelquery:{k}": v for k, v in scene.properties},
        },
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    if scene.crs_epsg is not None:
        proj.code = scene.crs
    else:  # no EPSG code: name the CRS by its WKT2 (and PROJJSON), as the extension says
        from pyproj import CRS

        proj.code = None
        proj.wkt2 = scene.crs_wkt
        proj.projjson = CRS.from_wkt(scene.crs_wkt).to_json_dict()
    proj.shape = list(scene.shape_yx)
    proj.transform = list(scene.transform)
    proj.bbox = list(scene.footprint.bounds)
    by_source: dict[str, list[Any]] = {}
    for band in scene.bands:
        by_source.setdefault(band.source, []).append(band)
    for source, bands in by_source.items():
        key = bands[0].name if len(bands) == 1 else bands[0].array
        item.add_asset(
            key,
            pystac.Asset(
                href=source,
                media_type=_COG_TYPE,
                roles=["data"],
                extra_fields={
                    "bands": [
                        {
                            "name": b.name,
                            "data_type": b.dtype,
                            **({"nodata": _nodata_json(b.nodata)} if b.nodata is not None else {}),
                            **({"scale": b.scale} if b.scale != 1.0 else {}),
                            **({"offset": b.offset} if b.offset != 0.0 else {}),
                            **({"pixelquery:role": b.role} if b.role else {}),
                        }
                        for b in bands
                    ]
                },
            ),
        )
    return item


def _nodata_json(value: float) -> float | str:
    if value != value:  # NaN
        return "nan"
    return int(value) if float(value).is_integer() else value


def catalog_to_collection(catalog: Catalog, *, collection_id: str = "pixelquery-scenes",
                          description: str | None = None) -> pystac.Collection:
    """The scenes as a STAC Collection holding one Item per scene."""
    scenes = catalog.scenes()
    if scenes:
        bounds = [s.footprint_lonlat.bounds for s in scenes]
        bbox = [min(b[0] for b in bounds), min(b[1] for b in bounds),
                max(b[2] for b in bounds), max(b[3] for b in bounds)]
        times: list[dt.datetime | None] = [min(s.datetime for s in scenes),
                                           max(s.datetime for s in scenes)]
    else:
        bbox, times = [-180.0, -90.0, 180.0, 90.0], [None, None]
    collection = pystac.Collection(
        id=collection_id,
        description=description or f"Scenes of a pixelquery repository at snapshot "
        f"{catalog.snapshot_id}",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([times])),
        license="other",
    )
    for scene in scenes:
        collection.add_item(scene_to_item(scene, snapshot_id=catalog.snapshot_id))
    return collection


def catalog_to_item_collection(catalog: Catalog, *,
                               collection_id: str = "pixelquery-scenes") -> dict[str, Any]:
    """A self-contained STAC ItemCollection dict (what ``pqb scenes --format stac`` prints).

    Items are standalone (no links to unresolvable hrefs, so no ``collection`` field); the
    Collection describing them is embedded under ``"collection"``.
    """
    coll = catalog_to_collection(catalog, collection_id=collection_id)
    items = []
    for item in coll.get_items():
        d = item.to_dict(include_self_link=False, transform_hrefs=False)
        d["links"] = [link for link in d["links"] if link.get("href")]
        d.pop("collection", None)
        items.append(d)
    cd = coll.to_dict(include_self_link=False, transform_hrefs=False)
    cd["links"] = [link for link in cd["links"] if link.get("href") and link["rel"] != "item"]
    return {"type": "FeatureCollection", "features": items, "collection": cd}
