"""Open scenes lazily from a repository (no GDAL on this path).

:func:`open_scene` returns an :class:`xarray.Dataset` with one variable per band, raw
dtypes, x/y coordinates from the geotransform and CRS/nodata attributes. Indexing reads
only the chunks touched, through Icechunk's virtual references.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..config import StorageProfile
from ..errors import CatalogError
from ..geo import pixel_centres
from .models import Scene
from .store import RepoRef, resolve_snapshot

if TYPE_CHECKING:  # xarray and virtual-tiff's codecs load on first use: a job never needs them
    import xarray as xr

__all__ = ["as_repo_ref", "open_scene"]

_DROP_ATTRS = {"_FillValue", "photometric_interpretation", "OVERVIEW_RESAMPLING"}


def as_repo_ref(
    repo: str | os.PathLike[str] | RepoRef,
    snapshot: str | None = None,
    *,
    storage: StorageProfile | None = None,
) -> RepoRef:
    """A :class:`RepoRef` from a location (resolving ``snapshot``) or an existing ref."""
    if isinstance(repo, RepoRef):
        if snapshot is not None and snapshot != repo.snapshot_id:
            return resolve_snapshot(repo.location, snapshot, profile=repo.profile)
        return repo
    return resolve_snapshot(repo, snapshot, profile=storage)


def open_scene(
    repo: str | os.PathLike[str] | RepoRef,
    scene_id: str,
    *,
    bands: Sequence[str] | None = None,
    snapshot: str | None = None,
    storage: StorageProfile | None = None,
    chunks: Any = None,
) -> xr.Dataset:
    """Open one scene as a lazy Dataset.

    Parameters
    ----------
    repo
        Repository location or :class:`RepoRef`.
    scene_id
        The scene (see ``pqb scenes``).
    bands
        Band names or roles to include (default: all), in that order.
    snapshot
        Branch, tag or snapshot id (default: ``main``).
    storage
        Storage profile for ``s3://`` repositories.
    chunks
        ``None`` (default) for lazily indexed arrays that read only the chunks an index
        touches; ``{}`` for dask arrays on the native chunks; or any xarray ``chunks``.

    Returns
    -------
    xarray.Dataset
        Variables named after the bands, dims ``(y, x)`` (bands stored on a coarser grid,
        such as Sentinel-2's 20 m bands, keep their own ``(y_20m, x_20m)`` dims and
        coordinates), raw dtypes; attributes
        ``scene_id``, ``datetime``, ``crs``, ``crs_epsg``, ``transform``, ``snapshot_id``;
        per variable ``nodata``, ``scale_factor``, ``add_offset``, ``role``, ``source``.

    Raises
    ------
    SceneNotFoundError
        No such scene at that snapshot.
    CatalogError
        Unknown band.
    """
    ref = as_repo_ref(repo, snapshot, storage=storage)
    scene = ref.catalog().get(scene_id)
    return _open(ref, scene, bands=bands, chunks=chunks)


def _open(ref: RepoRef, scene: Scene, *, bands: Sequence[str] | None, chunks: Any) -> xr.Dataset:
    import virtual_tiff.codecs  # noqa: F401  (registers HorizontalDeltaCodec/ChunkyCodec names)
    import xarray as xr

    wanted = [scene.band(b) for b in bands] if bands else list(scene.bands)
    if bands and len({b.name for b in wanted}) != len(wanted):
        raise CatalogError(f"bands {list(bands)} name the same band twice", scene_id=scene.scene_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = xr.open_zarr(
            ref.session().store, group=scene.group, consolidated=False, zarr_format=3,
            mask_and_scale=False, decode_times=False, chunks=chunks,
        )
    out: dict[str, xr.DataArray] = {}
    for band in wanted:
        da = raw[band.array]
        if band.index is not None:
            band_dim = next(d for d in da.dims if d not in ("y", "x"))
            da = da.isel({band_dim: band.index}, drop=True)
        attrs = {k: v for k, v in da.attrs.items() if k not in _DROP_ATTRS and k != "source"}
        attrs.update({
            "band": band.name,
            "role": band.role if band.role is not None else "",
            "nodata": band.nodata if band.nodata is not None else float("nan"),
            "scale_factor": band.scale,
            "add_offset": band.offset,
            "source": band.source,
        })
        da.attrs = attrs
        da.encoding = {}
        out[band.name] = da
    ds = xr.Dataset(out)
    coords: dict[str, Any] = {}
    for band in wanted:  # bands on coarser grids (20/60 m) have their own y_*/x_* dims
        da = out[band.name]
        ydim, xdim = da.dims[-2:]
        if xdim not in coords:
            x, y = pixel_centres(*scene.band_grid(band))
            coords[xdim], coords[ydim] = (xdim, x), (ydim, y)
    if not coords:
        x, y = pixel_centres(scene.transform, scene.shape_yx)
        coords = {"x": ("x", x), "y": ("y", y)}
    ds = ds.assign_coords(coords)
    geographic = scene.crs_epsg == 4326
    for name in coords:
        axis = "x" if name.startswith("x") else "y"
        ds[name].attrs.update({
            "units": "m" if not geographic else ("degrees_east" if axis == "x" else "degrees_north"),
            "standard_name": f"projection_{axis}_coordinate"})
    ds.attrs = {
        "scene_id": scene.scene_id,
        "datetime": scene.datetime.isoformat().replace("+00:00", "Z"),
        "product": scene.product,
        "crs": scene.crs,
        "crs_epsg": scene.crs_epsg,
        "transform": list(scene.transform),
        "snapshot_id": ref.snapshot_id,
        **{f"property_{k}": v for k, v in scene.properties},
    }
    return ds
