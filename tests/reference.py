"""Independent reference implementation of per-field statistics (test support).

rasterio windowed reads of the source COGs + ``rasterio.features.geometry_mask`` for the
centre and all_touched rules, exactextract for coverage-weighted statistics. It shares no
code with the engine (no pixelquery_batch import at all: the layout, band names and the
DN encoding are written out here from the Sentinel-2 / Element 84 conventions).

Layouts understood by :func:`cogs_by_date`:

* Element 84 / AWS (the sample data): ``{scene}/{B02,B03,B04,B08,B11,SCL}.tif``, scene
  folders such as ``S2A_33UXP_20211001_0_L2A``; B11 and SCL are on a 20 m grid;
* flat files ``S2_{tile}_{YYYY-MM-DD}_{band}.tif`` with band names (small test fixtures).

Every read happens on the 10 m grid of the red band: bands on another grid are brought
onto the 10 m window with ``rasterio.warp.reproject(..., resampling=Resampling.nearest)``.
Reflectance = DN * 1e-4 + offset, offset -0.1 for acquisitions from 2022-01-25 on
(processing baseline 04.00) and 0.0 before, the date taken from the scene id.
"""

from __future__ import annotations

import datetime
import math
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.features import geometry_mask
from rasterio.warp import Resampling, reproject, transform_geom
from rasterio.windows import Window, from_bounds
from shapely.geometry import mapping, shape

SCALE = 1e-4
BASELINE_04 = datetime.date(2022, 1, 25)  # BOA_ADD_OFFSET = -1000 from this date on
CLOUD_CLASSES = (3, 8, 9, 10)
#: Element 84 file keys -> band names.
FILE_BANDS = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B11": "swir16", "SCL": "scl"}
#: Bands each variable needs (a band name needs itself).
NEEDS = {"ndvi": ("nir", "red"), "evi": ("nir", "red", "blue"), "ndmi": ("nir", "swir16")}

_SCENE_DIR = re.compile(r"S2[ABCD]_\d{2}[A-Z]{3}_\d{8}_\d+_L2A")
_DATE = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)")


def scene_date(scene_id: str) -> datetime.date:
    """The acquisition date in a scene id (``..._20211001_...`` or ``..._2025-03-15``)."""
    m = _DATE.search(scene_id)
    if m is None:
        raise ValueError(f"no date in scene id {scene_id!r}")
    return datetime.date(*map(int, m.groups()))


def scale_offset(scene_id: str) -> tuple[float, float]:
    """(scale, offset) of the reflectance bands of a scene: offset -0.1 from 2022-01-25 on."""
    return SCALE, (-0.1 if scene_date(scene_id) >= BASELINE_04 else 0.0)


def scene_of(path: Path) -> str:
    """Scene id of a band file in either layout."""
    path = Path(path)
    if _SCENE_DIR.fullmatch(path.parent.name):
        return path.parent.name
    return path.stem.rsplit("_", 1)[0]


def cogs_by_date(cog_dir: Path) -> dict[str, dict[str, Path]]:
    """{scene_id: {band name: path}}, scenes in date order (then by id)."""
    cog_dir = Path(cog_dir)
    out: dict[str, dict[str, Path]] = {}
    for d in sorted(p for p in cog_dir.iterdir() if p.is_dir() and _SCENE_DIR.fullmatch(p.name)):
        bands = {FILE_BANDS[p.stem]: p for p in sorted(d.glob("*.tif")) if p.stem in FILE_BANDS}
        if bands:
            out[d.name] = bands
    for p in sorted(cog_dir.glob("S2_*_*_*.tif")):
        scene, band = p.stem.rsplit("_", 1)
        out.setdefault(scene, {})[band] = p
    return dict(sorted(out.items(), key=lambda kv: (scene_date(kv[0]), kv[0])))


def _read(path: Path, window: Window, grid_transform, grid_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Window of the 10 m grid (``grid_transform``/``grid_shape``: the red band's) as raw
    values, and a mask of the window pixels inside the 10 m raster. A band on another grid
    is brought onto the window by nearest-neighbour warping (``rasterio.warp.reproject``);
    window pixels it does not cover get its nodata (0)."""
    rows = np.arange(window.row_off, window.row_off + window.height)
    cols = np.arange(window.col_off, window.col_off + window.width)
    inside = ((rows >= 0) & (rows < grid_shape[0]))[:, None] & ((cols >= 0) & (cols < grid_shape[1]))[None, :]
    with rasterio.open(path) as src:
        fill = src.nodata or 0
        if src.transform == grid_transform:
            arr = src.read(1, window=window, boundless=True, fill_value=fill)
        else:
            arr = np.full((int(window.height), int(window.width)), fill, src.dtypes[0])
            reproject(rasterio.band(src, 1), arr, src_transform=src.transform, src_crs=src.crs,
                      dst_transform=rasterio.windows.transform(window, grid_transform), dst_crs=src.crs,
                      resampling=Resampling.nearest, src_nodata=src.nodata, dst_nodata=fill)
    return arr, inside


def _grid(cog: dict[str, Path]):
    with rasterio.open(cog["red"]) as src:
        return src.crs, src.transform, src.shape


def _variable(kind: str, bands: dict[str, np.ndarray]) -> np.ndarray:
    with np.errstate(all="ignore"):
        if kind == "ndvi":
            return (bands["nir"] - bands["red"]) / (bands["nir"] + bands["red"])
        if kind == "evi":
            return 2.5 * (bands["nir"] - bands["red"]) / (bands["nir"] + 6 * bands["red"] - 7.5 * bands["blue"] + 1)
        if kind == "ndmi":
            return (bands["nir"] - bands["swir16"]) / (bands["nir"] + bands["swir16"])
        return bands[kind].copy()


def _reflectances(cog: dict[str, Path], names, window: Window, transform, shape_yx) -> dict[str, np.ndarray]:
    """Reflectance (NaN at nodata and outside the raster) of ``names`` on a 10 m window."""
    scale, offset = scale_offset(scene_of(cog["red"]))
    out = {}
    for name in names:
        raw, inside = _read(cog[name], window, transform, shape_yx)
        val = raw.astype(np.float64) * scale + offset
        val[(raw == 0) | ~inside] = np.nan
        out[name] = val
    return out


def field_scene_values(field_geom_ll, cog: dict[str, Path], variables: dict[str, str], *,
                       all_touched: bool = False, cloud: bool = True):
    """Per variable: (values at the field's pixels, total pixels in the field, cloudy pixels).

    ``variables`` maps output names to kinds: ``ndvi``, ``evi``, ``ndmi`` or a band name
    (``red``, ``nir``, ``blue``, ``green``, ``swir16``)."""
    crs, transform, shape_yx = _grid(cog)
    geom = shape(transform_geom("EPSG:4326", crs, mapping(field_geom_ll)))
    minx, miny, maxx, maxy = geom.bounds
    win = from_bounds(minx, miny, maxx, maxy, transform=transform)
    r0, c0 = math.floor(win.row_off) - 1, math.floor(win.col_off) - 1
    r1 = math.ceil(win.row_off + win.height) + 1
    c1 = math.ceil(win.col_off + win.width) + 1
    window = Window(c0, r0, c1 - c0, r1 - r0)
    wtransform = rasterio.windows.transform(window, transform)
    mask = geometry_mask([mapping(geom)], out_shape=(r1 - r0, c1 - c0), transform=wtransform,
                         all_touched=all_touched, invert=True)
    needed = sorted({b for kind in variables.values() for b in NEEDS.get(kind, (kind,))})
    bands = _reflectances(cog, needed, window, transform, shape_yx)
    scl, inside = _read(cog["scl"], window, transform, shape_yx)
    cloudy = np.isin(scl, CLOUD_CLASSES) & inside if cloud else np.zeros_like(mask)
    out = {}
    for var, kind in variables.items():
        v = _variable(kind, bands)
        v[~np.isfinite(v) | cloudy] = np.nan
        vals = v[mask]
        out[var] = (vals[np.isfinite(vals)], int(mask.sum()), int((cloudy & mask).sum()))
    return out


def reference_stats(values: np.ndarray, total: int) -> dict[str, float]:
    n = len(values)
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "min": nan, "max": nan, "median": nan, "p10": nan,
                "p90": nan, "count": 0.0, "valid_fraction": 0.0 if total else nan}
    return {
        "mean": float(np.mean(values)), "std": float(np.std(values)),
        "min": float(np.min(values)), "max": float(np.max(values)),
        "median": float(np.median(values)), "p10": float(np.percentile(values, 10)),
        "p90": float(np.percentile(values, 90)), "count": float(n),
        "valid_fraction": n / total if total else float("nan"),
    }


def scene_variable(cog: dict[str, Path], variable: str = "ndvi"):
    """A whole scene's variable (ndvi, evi, ndmi or a band) on the 10 m grid, with nodata
    and clouds as NaN, read with rasterio; returns (values, crs, transform)."""
    crs, transform, shape_yx = _grid(cog)
    window = Window(0, 0, shape_yx[1], shape_yx[0])
    bands = _reflectances(cog, NEEDS.get(variable, (variable,)), window, transform, shape_yx)
    scl, _ = _read(cog["scl"], window, transform, shape_yx)
    v = _variable(variable, bands)
    v[np.isin(scl, CLOUD_CLASSES) | ~np.isfinite(v)] = np.nan
    return v, crs, transform


def exactextract_means(field_geom_ll, cog: dict[str, Path], variable: str, tmp: Path) -> tuple[float, float]:
    """Coverage-weighted (mean, count) of one variable with exactextract on a float raster
    of the 10 m grid written with rasterio (nodata and clouds as NaN)."""
    from exactextract import exact_extract

    v, crs, _ = scene_variable(cog, variable)
    with rasterio.open(cog["red"]) as src:
        profile = src.profile
    path = tmp / f"ref_{scene_of(cog['red'])}_{variable}.tif"
    profile.update(driver="GTiff", dtype="float64", nodata=np.nan, compress="deflate", predictor=1)
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    profile["tiled"] = False
    if not path.exists():
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(v, 1)
    gdf = gpd.GeoDataFrame({"id": [0]}, geometry=[field_geom_ll], crs="EPSG:4326").to_crs(crs)
    res = exact_extract(str(path), gdf, ["mean", "count"], output="pandas")
    return float(res["mean"].iloc[0]), float(res["count"].iloc[0])


def region_pixels(region_ll, cogs: dict[str, dict[str, Path]], month: str, variable: str = "ndvi") -> np.ndarray:
    """Every valid pixel value of a region (centre rule) over the scenes of one month (YYYY-MM)."""
    pix = []
    for scene_id, cog in cogs.items():
        if scene_date(scene_id).strftime("%Y-%m") != month:
            continue
        v, crs, transform = scene_variable(cog, variable)
        geom = gpd.GeoSeries([region_ll], crs="EPSG:4326").to_crs(crs).iloc[0]
        m = geometry_mask([mapping(geom)], out_shape=v.shape, transform=transform, invert=True)
        pix.append(v[m])
    vals = np.concatenate(pix) if pix else np.empty(0)
    return vals[np.isfinite(vals)]
