"""Tests for the GeoTIFF fixture factory :mod:`pixelquery_batch.testing.cogs`."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import tifffile
from rasterio.errors import NotGeoreferencedWarning

from pixelquery_batch.testing.cogs import (
    SUPPORTED_FLAVOURS,
    UNSUPPORTED_FLAVOURS,
    expected_pixels,
    flavour_chunk_yx,
    make_cog,
    make_flavour,
    make_pixels,
    nodata_block_slices,
    read_window_with_rasterio,
    read_with_rasterio,
)

GEOTIFF_TAGS = (33550, 33922, 34264, 34735)  # ModelPixelScale, Tiepoint, Transformation, GeoKeys


@pytest.fixture(scope="module")
def flavour_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding every flavour, built once per module."""
    root = tmp_path_factory.mktemp("flavours")
    for name in [*SUPPORTED_FLAVOURS, *UNSUPPORTED_FLAVOURS]:
        make_flavour(root / f"{name}.tif", name)
    return root


def _kw(name: str) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "shape_yx": (300, 400),
        "count": 1,
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "origin_xy": (500000.0, 5000000.0),
        "res": 10.0,
        "nodata": 0,
        "compress": "DEFLATE",
        "predictor": None,
        "tiled": True,
        "blocksize": 128,
        "interleave": "band",
        "bigtiff": False,
        "overviews": False,
        "photometric": None,
        "rows_per_strip": None,
    }
    return {**defaults, **SUPPORTED_FLAVOURS[name]}


# --------------------------------------------------------------------------- pixels


@pytest.mark.parametrize(
    ("dtype", "nodata"),
    [
        ("uint16", 0),
        ("int16", -9999),
        ("float32", float("nan")),
        ("float32", -9999.0),
        ("uint8", None),
    ],
)
def test_make_pixels_values(dtype: str, nodata: float | None) -> None:
    data = make_pixels((300, 400), 2, dtype, nodata)
    assert data.shape == (2, 300, 400)
    assert data.dtype == np.dtype(dtype)
    rows, cols = nodata_block_slices((300, 400), (128, 128))
    assert rows.start < 128 < rows.stop
    assert cols.start < 128 < cols.stop
    block = data[:, rows, cols]
    outside = data.copy().astype("float64")
    outside[:, rows, cols] = 12345.5
    if nodata is None:
        assert not np.isnan(outside).any()
    elif math.isnan(nodata):
        assert np.isnan(block).all()
        assert not np.isnan(outside).any()
    else:
        assert (block == nodata).all()
        assert not (outside == nodata).any()
    assert np.unique(data).size > 200  # non-trivial
    if dtype == "int16":
        assert (outside < 0).any()
        assert (outside > 0).any()
    if dtype == "float32":
        finite = outside[np.isfinite(outside)]
        assert (finite < 0).any()
        assert (finite != np.round(finite)).any()
    # hand-checkable: pixel (0, 0) of band 0 is low + noise, noise in [0, 64)
    if dtype == "uint16":
        assert 1 <= int(data[0, 0, 0]) < 65
        assert int(data[0, 1, 0]) - int(data[0, 0, 0]) in range(37 - 63, 37 + 64)


def test_make_pixels_deterministic() -> None:
    a = make_pixels((50, 60), 1, "uint16", 0, seed=3)
    b = make_pixels((50, 60), 1, "uint16", 0, seed=3)
    c = make_pixels((50, 60), 1, "uint16", 0, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_make_flavour_unknown(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown flavour"):
        make_flavour(tmp_path / "x.tif", "nope")


def test_overviews_rejects_strips(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="overviews"):
        make_cog(tmp_path / "x.tif", overviews=True, tiled=False)


# --------------------------------------------------------------------------- supported


@pytest.mark.parametrize("name", list(SUPPORTED_FLAVOURS))
def test_supported_flavour_layout(flavour_dir: Path, name: str) -> None:
    kw = _kw(name)
    path = flavour_dir / f"{name}.tif"
    height, width = kw["shape_yx"]
    with rasterio.open(path) as src:
        profile = src.profile
        structure = src.tags(ns="IMAGE_STRUCTURE")
        assert src.driver == "GTiff"
        assert (src.height, src.width) == (height, width)
        assert src.count == kw["count"]
        assert set(src.dtypes) == {kw["dtype"]}
        # compression
        if kw["compress"] is None:
            assert src.compression is None
            assert "COMPRESSION" not in structure
        else:
            assert src.compression is not None
            assert src.compression.name.upper() == kw["compress"]
            assert profile["compress"].upper() == kw["compress"]
            assert structure["COMPRESSION"] == kw["compress"]
        # predictor
        if kw["predictor"] is None:
            assert "PREDICTOR" not in structure
        else:
            assert structure["PREDICTOR"] == str(kw["predictor"])
        # interleave (only meaningful with several bands)
        if kw["count"] > 1:
            assert src.interleaving.name == kw["interleave"]
            assert structure["INTERLEAVE"] == kw["interleave"].upper()
        # tiling / strips
        if kw["tiled"]:
            assert profile["tiled"] is True
            assert src.block_shapes == [(kw["blocksize"], kw["blocksize"])] * kw["count"]
            assert height % kw["blocksize"]
            assert width % kw["blocksize"]
        else:
            assert not profile.get("tiled", False)
            assert src.block_shapes == [(kw["rows_per_strip"], width)] * kw["count"]
            assert height % kw["rows_per_strip"] == 0
        # overviews
        if kw["overviews"]:
            assert src.overviews(1) == [2, 4]
            assert structure.get("LAYOUT") == "COG"
        else:
            assert src.overviews(1) == []
        # georeferencing
        assert src.crs is not None
        assert src.crs.to_epsg() == int(kw["crs"].split(":")[1])
        assert src.transform.c == kw["origin_xy"][0]
        assert src.transform.f == kw["origin_xy"][1]
        assert src.res == (kw["res"], kw["res"])
        # nodata
        if kw["nodata"] is None:
            assert src.nodata is None
        elif math.isnan(kw["nodata"]):
            assert src.nodata is not None
            assert math.isnan(src.nodata)
        else:
            assert src.nodata == kw["nodata"]
        if kw["photometric"] is not None:
            assert src.colorinterp[:3] == (
                rasterio.enums.ColorInterp.red,
                rasterio.enums.ColorInterp.green,
                rasterio.enums.ColorInterp.blue,
            )

    with tifffile.TiffFile(path) as tif:
        assert tif.byteorder == "<"
        assert tif.is_bigtiff == kw["bigtiff"]
        assert 0 not in tif.pages[0].databytecounts  # every chunk written


@pytest.mark.parametrize("name", list(SUPPORTED_FLAVOURS))
def test_supported_flavour_pixels(flavour_dir: Path, name: str) -> None:
    kw = _kw(name)
    array, meta = read_with_rasterio(flavour_dir / f"{name}.tif")
    expected = expected_pixels(name)
    assert array.shape == (kw["count"], *kw["shape_yx"])
    np.testing.assert_array_equal(array, expected)  # NaNs compare equal here
    assert meta["dtype"] == kw["dtype"]
    assert meta["crs_epsg"] == int(kw["crs"].split(":")[1])
    assert len(meta["transform"]) == 6
    assert meta["transform"] == (
        kw["res"],
        0.0,
        kw["origin_xy"][0],
        0.0,
        -kw["res"],
        kw["origin_xy"][1],
    )

    rows, cols = nodata_block_slices(kw["shape_yx"], flavour_chunk_yx(name))
    block = array[:, rows, cols]
    nodata = kw["nodata"]
    if nodata is None:
        assert meta["nodata"] is None
        return
    chunk_y, chunk_x = flavour_chunk_yx(name)
    assert rows.start < chunk_y < rows.stop  # block straddles a chunk boundary
    if kw["tiled"]:
        assert cols.start < chunk_x < cols.stop
    mask = np.zeros(array.shape, dtype=bool)
    mask[:, rows, cols] = True
    if math.isnan(nodata):
        assert math.isnan(meta["nodata"])
        assert np.isnan(block).all()
        assert not np.isnan(array[~mask]).any()
    else:
        assert meta["nodata"] == nodata
        assert (block == nodata).all()
        assert not (array[~mask] == nodata).any()
    # a window read across the block agrees with the full read
    window = read_window_with_rasterio(
        flavour_dir / f"{name}.tif", rows.start - 5, cols.start - 5, 60, 70
    )
    np.testing.assert_array_equal(
        window, array[:, rows.start - 5 : rows.start + 55, cols.start - 5 : cols.start + 65]
    )


# --------------------------------------------------------------------------- unsupported


def test_unsupported_table_reasons() -> None:
    reasons = {name: reason for name, (_spec, reason) in UNSUPPORTED_FLAVOURS.items()}
    assert reasons == {
        "jpeg_ycbcr": "JPEG",
        "jpeg_rgb": "JPEG",
        "striped_partial": "strip",
        "bigendian_pred2": "big-endian",
        "sparse": "sparse",
        "truncated": "truncated",
        "not_a_tiff": "not a TIFF",
        "empty": "empty",
        "no_georef": "georeferenc",
    }
    assert not set(SUPPORTED_FLAVOURS) & set(UNSUPPORTED_FLAVOURS)


@pytest.mark.parametrize(("name", "photometric"), [("jpeg_ycbcr", 6), ("jpeg_rgb", 2)])
def test_unsupported_jpeg(flavour_dir: Path, name: str, photometric: int) -> None:
    with tifffile.TiffFile(flavour_dir / f"{name}.tif") as tif:
        page = tif.pages[0]
        assert page.compression == 7  # JPEG
        assert page.photometric == photometric
        assert page.samplesperpixel == 3
    with rasterio.open(flavour_dir / f"{name}.tif") as src:
        assert src.compression.name == "jpeg"


def test_unsupported_striped_partial(flavour_dir: Path) -> None:
    with tifffile.TiffFile(flavour_dir / "striped_partial.tif") as tif:
        page = tif.pages[0]
        assert not page.is_tiled
        assert page.rowsperstrip == 128
        assert page.imagelength == 300
        assert page.imagelength % page.rowsperstrip != 0
        counts = page.databytecounts
        assert len(counts) == 3
        assert counts[-1] < counts[0]  # last strip is partial (44 rows)
        assert counts[-1] == 44 * 400 * 2


def test_unsupported_bigendian(flavour_dir: Path) -> None:
    with tifffile.TiffFile(flavour_dir / "bigendian_pred2.tif") as tif:
        assert tif.byteorder == ">"
        assert tif.pages[0].predictor == 2
        assert tif.pages[0].compression == 8
    raw = (flavour_dir / "bigendian_pred2.tif").read_bytes()[:2]
    assert raw == b"MM"


def test_unsupported_sparse(flavour_dir: Path) -> None:
    path = flavour_dir / "sparse.tif"
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.is_tiled
        counts = np.asarray(page.databytecounts)
        assert (counts == 0).sum() == 4  # tile row 1 (rows 128-255) never written
        assert (counts > 0).sum() == 8
    array, _meta = read_with_rasterio(path)
    assert (array[:, 128:256, :] == 0).all()


def test_unsupported_truncated(flavour_dir: Path) -> None:
    path = flavour_dir / "truncated.tif"
    size = path.stat().st_size
    with tifffile.TiffFile(path) as tif:  # header and IFD survive
        page = tif.pages[0]
        ends = np.asarray(page.dataoffsets) + np.asarray(page.databytecounts)
        assert ends.max() > size
        assert page.shape == (300, 400)
    reference = make_cog(path.with_name("reference.tif"), nodata=0, predictor=2)
    full = reference.stat().st_size
    assert size == int(full * 0.6)
    assert path.read_bytes() == reference.read_bytes()[:size]


def test_unsupported_not_a_tiff(flavour_dir: Path) -> None:
    path = flavour_dir / "not_a_tiff.tif"
    assert path.stat().st_size > 0
    assert path.read_bytes()[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    with pytest.raises(tifffile.TiffFileError):
        tifffile.TiffFile(path)


def test_unsupported_empty(flavour_dir: Path) -> None:
    path = flavour_dir / "empty.tif"
    assert path.stat().st_size == 0
    with pytest.raises(tifffile.TiffFileError):
        tifffile.TiffFile(path)


def test_unsupported_no_georef(flavour_dir: Path) -> None:
    path = flavour_dir / "no_georef.tif"
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        assert not any(code in tags for code in GEOTIFF_TAGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            assert src.crs is None
    _array, meta = read_with_rasterio(path)
    assert meta["crs_epsg"] is None
