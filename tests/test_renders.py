"""Per-field PNG pictures and COG clips, checked against rasterio: the clip's pixels and
georeferencing equal a rasterio read of the scene masked with ``geometry_mask``; the
picture's alpha is that polygon mask combined with nodata and clouds, and its colours are
the colormap's at the pixel values."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import imagecodecs
import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.features import geometry_mask

from pixelquery_batch import read_table, run_job
from pixelquery_batch.render import colormap_lut, safe_names

from .conftest import write_spec
from .reference import cogs_by_date, scene_variable

UNSAFE = {0: "../escape", 1: "a/b", 2: "x" * 200, 3: "Feld-äöü", 4: "CaseOnly", 5: "caseonly"}


@pytest.fixture(scope="module")
def rendered(sample_small, sample_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("renders")
    fields = gpd.read_file(sample_small.fields_path)
    for k, new in UNSAFE.items():
        fields.loc[k, "id"] = new
    path = tmp / "fields.geojson"
    fields.to_file(path)
    spec = write_spec(tmp, repo=sample_repo, fields=path, bands=["red", "green", "blue", "nir"],
                      outputs={"dir": str(tmp / "out"), "stats": {"format": "parquet"},
                               "png": {"variable": "ndvi", "vmin": -1, "vmax": 1,
                                       "colormap": "rdylgn"},
                               "cog": {"variables": ["ndvi", "red"]}})
    result = run_job(spec, cluster="sync")
    assert result.ok, result.manifest["failures"][:3]
    return result, fields, tmp / "out"


def expected_clip(field_geom, scene_cog: dict, variable: str):
    """The scene's variable (nodata and clouds NaN) inside the polygon (centre rule), NaN
    elsewhere, on the polygon's pixel window: (array, window transform)."""
    values, crs, transform = scene_variable(scene_cog, variable)
    geom = gpd.GeoSeries([field_geom], crs="EPSG:4326").to_crs(crs).iloc[0]
    inside = ~geometry_mask([geom], out_shape=values.shape, transform=transform, all_touched=False)
    rows, cols = np.nonzero(inside)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    out = np.where(inside, values, np.nan)[r0:r1, c0:c1].astype(np.float32)
    return out, transform @ rasterio.Affine.translation(c0, r0)


def read_clip(path: Path, want_transform, scene_cog: dict) -> tuple[np.ndarray, dict]:
    """A clip's pixels and tags, after checking it is a COG (tiled, DEFLATE, overviews
    when larger than a tile) on the source grid at ``want_transform``."""
    with rasterio.open(path) as src:
        assert src.transform.almost_equals(want_transform)
        assert src.crs == rasterio.open(scene_cog["red"]).crs
        assert src.profile["tiled"] and src.profile["compress"] == "deflate"
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        if max(src.width, src.height) > 512:  # larger than a tile: overviews
            assert src.overviews(1) and src.block_shapes[0] == (512, 512)
        return src.read(1), src.tags()


def test_cog_clips_equal_a_rasterio_reference(rendered, sample_small) -> None:
    _result, fields, out = rendered
    cogs = cogs_by_date(sample_small.cog_dir)
    names = safe_names(fields["id"])
    checked = 0
    for k in (6, 7, 12, 20):
        fid = fields["id"].iloc[k]
        for scene_id, cog in cogs.items():
            for variable in ("ndvi", "red"):
                path = out / "cog" / names.get(fid, fid) / f"{scene_id[10:14]}-{scene_id[14:16]}-{scene_id[16:18]}_{variable}.tif"
                want, want_t = expected_clip(fields.geometry.iloc[k], cog, variable)
                if not np.isfinite(want).any():
                    continue
                np.testing.assert_array_equal(read_clip(path, want_t, cog)[0], want)
                checked += 1
    assert checked >= 12


def test_large_clips_have_overviews(sample_small, sample_repo, tmp_path: Path) -> None:
    from shapely.geometry import box

    fields = gpd.read_file(sample_small.fields_path).to_crs(32633)
    b = fields.total_bounds
    big = gpd.GeoDataFrame({"id": ["BIG"]}, geometry=[box(b[0], b[1], b[0] + 6000, b[1] + 6000)],
                           crs=32633)
    path = tmp_path / "big.geojson"
    big.to_crs(4326).to_file(path)
    spec = write_spec(tmp_path, repo=sample_repo, fields=path, bands=[],
                      outputs={"dir": str(tmp_path / "out"), "stats": {"format": "parquet"},
                               "cog": {"variables": ["ndvi"], "scenes": "latest"}})
    run_job(spec, cluster="sync")
    clips = sorted((tmp_path / "out" / "cog" / "BIG").glob("*.tif"))
    assert len(clips) == 1  # scenes: latest
    with rasterio.open(clips[0]) as src:
        assert src.width > 512 and src.overviews(1)
        assert src.block_shapes[0] == (512, 512)


def test_png_alpha_is_the_polygon_and_valid_mask_and_colours_follow_the_colormap(rendered,
                                                                              sample_small) -> None:
    _result, fields, out = rendered
    cogs = cogs_by_date(sample_small.cog_dir)
    lut = colormap_lut("rdylgn")
    checked = 0
    for k in (6, 9, 15):
        fid = fields["id"].iloc[k]
        for scene_id, cog in cogs.items():
            want, _ = expected_clip(fields.geometry.iloc[k], cog, "ndvi")
            path = out / "png" / fid / f"{scene_id[10:14]}-{scene_id[14:16]}-{scene_id[16:18]}_ndvi.png"
            if not np.isfinite(want).any():
                assert not path.exists()
                continue
            img = imagecodecs.png_decode(path.read_bytes())
            assert img.shape == (*want.shape, 4)
            np.testing.assert_array_equal(img[..., 3] == 255, np.isfinite(want))
            assert (img[..., 3][~np.isfinite(want)] == 0).all()
            idx = np.clip(np.round((want + 1) / 2 * 255), 0, 255)
            ok = np.isfinite(want)
            np.testing.assert_array_equal(img[..., :3][ok], lut[idx[ok].astype(int)])
            checked += 1
    assert checked >= 6
    # the colormap's ends are ColorBrewer's RdYlGn ends
    assert tuple(lut[0]) == (165, 0, 38) and tuple(lut[255]) == (0, 104, 55)


def test_unsafe_field_ids_get_safe_distinct_names_and_a_mapping(rendered) -> None:
    _result, fields, out = rendered
    dirs = {p.name for p in (out / "png").iterdir() if p.is_dir()}
    mapping = pd.read_csv(out / "png" / "ids.csv")
    assert set(mapping["field_id"]) == set(UNSAFE.values())
    assert len(set(mapping["name"])) == len(UNSAFE)
    assert len({n.lower() for n in mapping["name"]}) == len(UNSAFE)  # case-insensitive FS
    for name in mapping["name"]:
        assert "/" not in name and not name.startswith(".") and len(name) <= 80
    assert set(mapping["name"]) <= dirs | set(mapping["name"])  # every mapped name is usable
    assert not (out.parent / "escape").exists() and not (out / "escape").exists()
    assert all((out / "png" / n).resolve().parent == (out / "png").resolve() for n in dirs)
    ok_ids = set(fields["id"]) - set(UNSAFE.values())
    assert ok_ids & dirs  # ordinary ids are used as they are


def test_best_scene_per_period_and_true_colour(sample_small, sample_repo, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path,
                      bands=["red", "green", "blue"], indices={},
                      outputs={"dir": str(tmp_path / "out"), "stats": {"format": "parquet"},
                               "png": {"variable": "truecolor", "scenes": "best",
                                       "period": "P1Y", "min_size": 64, "legend": False}})
    run_job(spec, cluster="sync")
    stats = read_table(tmp_path / "out", "stats")
    red = stats[(stats.variable == "red") & (stats.valid_fraction > 0)]
    for fid, rows in list(red.groupby("field_id"))[:8]:
        files = sorted((tmp_path / "out" / "png" / fid).glob("*.png"))
        years = rows.assign(y=rows.datetime.dt.year).groupby("y")
        assert len(files) == years.ngroups
        for _, yr in years:
            best = yr.sort_values(["valid_fraction", "datetime"]).iloc[-1]
            assert (tmp_path / "out" / "png" / fid / f"{best.datetime:%Y-%m-%d}_truecolor.png").exists()
        img = imagecodecs.png_decode(files[0].read_bytes())
        assert max(img.shape[:2]) >= 64 and img.shape[2] == 4


def test_vectorised_and_per_field_colouring_give_the_same_picture() -> None:
    """The engine colours a group's pixels in one pass when the range is fixed: the
    picture must be the one the per-field path draws (float32 values, same rounding)."""
    from types import SimpleNamespace

    from pixelquery_batch.render import colour_pixels, field_raster, png_bytes, png_from_pixels

    rng = np.random.default_rng(5)
    rows = np.repeat(np.arange(40), 30) + 100
    cols = np.tile(np.arange(30), 40) - 7  # a field over the raster's western edge
    values = rng.uniform(-1.2, 1.2, rows.size)
    values[rng.random(rows.size) < 0.1] = np.nan
    # values right at the colour steps, where float32 and float64 round differently
    k = rng.integers(1, 255, 600)
    values[:600] = (k - 0.5) / 255 * 2 - 1 + rng.uniform(-3e-8, 3e-8, 600)
    spec = SimpleNamespace(colormap="viridis", vmin=-1.0, vmax=1.0, stretch=None, min_size=64,
                           legend=True)
    a = imagecodecs.png_decode(png_from_pixels(colour_pixels(values, spec), rows, cols, spec))
    b = imagecodecs.png_decode(png_bytes([field_raster(rows, cols, values)[0]], spec))
    np.testing.assert_array_equal(a, b)


def test_region_clips_equal_a_rasterio_reference(sample_small, sample_repo, tmp_path: Path) -> None:
    """``outputs.cog.regions``: per region and scene, the variable on the scene's grid over
    the region's pixel box, NaN outside the polygon (centre rule) and where masked: equal
    to rasterio reads + ``geometry_mask``; valid COGs with the source window's
    georeferencing and overviews where larger than a tile. A rerun computes nothing."""
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path, bands=[],
                      indices={"ndvi": "builtin"},
                      scenes={"start": "2021-12-01", "end": "2022-02-28"},
                      outputs={"dir": str(tmp_path / "out"), "stats": {"format": "parquet"},
                               "rollup": {"regions": {"path": str(sample_small.regions_path)},
                                          "kinds": []},
                               "cog": {"variables": ["ndvi"], "regions": True}})
    result = run_job(spec, cluster="sync")
    assert result.ok and result.manifest["region_clips"]["failed"] == 0
    out = tmp_path / "out" / "cog_regions"
    cogs = cogs_by_date(sample_small.cog_dir)
    regions = gpd.read_file(sample_small.regions_path)
    checked = 0
    for _, reg in regions.iterrows():
        for scene_id, cog in cogs.items():
            date = f"{scene_id[10:14]}-{scene_id[14:16]}-{scene_id[16:18]}"
            if not "2021-12-01" <= date <= "2022-02-28":
                continue
            want, want_t = expected_clip(reg.geometry, cog, "ndvi")
            path = out / str(reg["id"]) / f"{date}_ndvi.tif"
            got, tags = read_clip(path, want_t, cog)
            assert tags["region_id"] == str(reg["id"])
            np.testing.assert_array_equal(got, want)
            checked += 1
    assert checked >= 4 and result.manifest["region_clips"]["written"] == checked
    before = {p: p.read_bytes() for p in out.rglob("*.tif")}
    again = run_job(spec, cluster="sync")
    assert again.manifest["execution"]["pairs_computed"] == 0
    assert {p: p.read_bytes() for p in out.rglob("*.tif")} == before


def test_a_region_clip_over_its_limit_is_refused_before_any_work(sample_small, sample_repo,
                                                                 tmp_path: Path) -> None:
    from pixelquery_batch.errors import PlanError, SpecError

    outputs = {"dir": str(tmp_path / "out"), "stats": {"format": "parquet"},
               "rollup": {"regions": {"path": str(sample_small.regions_path)}, "kinds": []},
               "cog": {"variables": ["ndvi"], "regions": True, "max_pixels": 1000}}
    spec = write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path, bands=[],
                      indices={"ndvi": "builtin"}, outputs=outputs)
    with pytest.raises(PlanError, match=r"clip of region .* pixels, over outputs.cog.max_pixels"):
        run_job(spec, cluster="sync")
    assert not (tmp_path / "out" / "stats").exists()
    no_rollup = {k: v for k, v in outputs.items() if k != "rollup"}
    with pytest.raises(SpecError, match=r"outputs\.cog\.regions clips the regions of"):
        run_job(write_spec(tmp_path, repo=sample_repo, fields=sample_small.fields_path, bands=[],
                           indices={"ndvi": "builtin"}, outputs=no_rollup), cluster="sync")
