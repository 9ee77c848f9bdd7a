"""Independent reference implementation of per-field statistics (test support).

rasterio windowed reads of the source COGs + ``rasterio.features.geometry_mask`` for the
centre and all_touched rules, exactextract for coverage-weighted statistics. It shares no
code with the engine (no pixelquery_batch import besides the product constants).
"""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.features import geometry_mask
from rasterio.warp import transform_geom
from rasterio.windows import Window, from_bounds
from shapely.geometry import mapping, shape

SCALE, OFFSET = 1e-4, -0.1          # Sentinel-2 L2A baseline >= 04.00
CLOUD_CLASSES = (3, 8, 9, 10)


def _read(path: Path, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Window values (boundless) and a mask of pixels inside the raster."""
    with rasterio.open(path) as src:
        arr = src.read(1, window=window, boundless=True, fill_value=src.nodata or 0)
        rows = np.arange(window.row_off, window.row_off + window.height)
        cols = np.arange(window.col_off, window.col_off + window.width)
        inside = ((rows >= 0) & (rows < src.height))[:, None] & ((cols >= 0) & (cols < src.width))[None, :]
    return arr, inside


def field_scene_values(field_geom_ll, cog: dict[str, Path], variables: dict[str, str], *,
                       all_touched: bool = False, cloud: bool = True):
    """Per variable: (values at the field's pixels, total pixels in the field)."""
    with rasterio.open(cog["red"]) as src:
        crs, transform = src.crs, src.transform
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
    bands = {}
    inside = None
    for name in ("red", "nir", "blue", "green"):
        raw, inside = _read(cog[name], window)
        val = raw.astype(np.float64) * SCALE + OFFSET
        val[(raw == 0) | ~inside] = np.nan
        bands[name] = val
    scl, _ = _read(cog["scl"], window)
    cloudy = np.isin(scl, CLOUD_CLASSES) & inside if cloud else np.zeros_like(mask)
    out = {}
    with np.errstate(all="ignore"):
        for var, kind in variables.items():
            if kind == "ndvi":
                v = (bands["nir"] - bands["red"]) / (bands["nir"] + bands["red"])
            elif kind == "evi":
                v = 2.5 * (bands["nir"] - bands["red"]) / (bands["nir"] + 6 * bands["red"] - 7.5 * bands["blue"] + 1)
            else:
                v = bands[kind].copy()
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


def cogs_by_date(cog_dir: Path) -> dict[str, dict[str, Path]]:
    """{scene_id: {band: path}} for the sample layout S2_{tile}_{date}_{band}.tif."""
    out: dict[str, dict[str, Path]] = {}
    for p in sorted(cog_dir.glob("S2_*_*_*.tif")):
        stem = p.stem
        scene, band = stem.rsplit("_", 1)
        out.setdefault(scene, {})[band] = p
    return out


def exactextract_means(field_geom_ll, cog: dict[str, Path], variable: str, tmp: Path) -> tuple[float, float]:
    """Coverage-weighted (mean, count) of one variable with exactextract on a float raster
    written with rasterio (nodata and clouds as NaN)."""
    from exactextract import exact_extract

    with rasterio.open(cog["red"]) as src:
        profile = src.profile
        red = src.read(1).astype(np.float64)
    with rasterio.open(cog["nir"]) as src:
        nir = src.read(1).astype(np.float64)
    with rasterio.open(cog["scl"]) as src:
        scl = src.read(1)
    nodata = (red == 0) | (nir == 0)
    red, nir = red * SCALE + OFFSET, nir * SCALE + OFFSET
    with np.errstate(all="ignore"):
        v = (nir - red) / (nir + red) if variable == "ndvi" else {"red": red, "nir": nir}[variable]
    v[nodata | np.isin(scl, CLOUD_CLASSES) | ~np.isfinite(v)] = np.nan
    path = tmp / f"ref_{cog['red'].stem}_{variable}.tif"
    profile.update(driver="GTiff", dtype="float64", nodata=np.nan, compress="deflate", predictor=1)
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    profile["tiled"] = False
    if not path.exists():
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(v, 1)
    gdf = gpd.GeoDataFrame({"id": [0]}, geometry=[field_geom_ll], crs="EPSG:4326").to_crs(profile["crs"])
    res = exact_extract(str(path), gdf, ["mean", "count"], output="pandas")
    return float(res["mean"].iloc[0]), float(res["count"].iloc[0])


def scene_variable(cog: dict[str, Path], variable: str = "ndvi"):
    """A whole scene's variable (ndvi or a band) with nodata and clouds as NaN, read with
    rasterio; returns (values, crs, transform)."""
    bands = {}
    for b in ("red", "nir", "scl"):
        with rasterio.open(cog[b]) as src:
            bands[b] = src.read(1)
            crs, transform = src.crs, src.transform
    red, nir = bands["red"] * SCALE + OFFSET, bands["nir"] * SCALE + OFFSET
    with np.errstate(all="ignore"):
        v = (nir - red) / (nir + red) if variable == "ndvi" else {"red": red, "nir": nir}[variable].copy()
    invalid = (bands["red"] == 0) | np.isin(bands["scl"], CLOUD_CLASSES)
    if variable in ("ndvi", "nir"):
        invalid |= bands["nir"] == 0
    v[invalid | ~np.isfinite(v)] = np.nan
    return v, crs, transform


def region_pixels(region_ll, cogs: dict[str, dict[str, Path]], month: str, variable: str = "ndvi") -> np.ndarray:
    """Every valid pixel value of a region (centre rule) over the scenes of one month."""
    pix = []
    for scene_id, cog in cogs.items():
        if scene_id[-10:-3] != month:
            continue
        v, crs, transform = scene_variable(cog, variable)
        geom = gpd.GeoSeries([region_ll], crs="EPSG:4326").to_crs(crs).iloc[0]
        m = geometry_mask([mapping(geom)], out_shape=v.shape, transform=transform, invert=True)
        pix.append(v[m])
    vals = np.concatenate(pix) if pix else np.empty(0)
    return vals[np.isfinite(vals)]
