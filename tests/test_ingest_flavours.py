"""Every supported COG flavour reads back pixel-for-pixel identical to rasterio;
every unsupported one is refused at ingest with a reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pixelquery_batch.catalog.ingest import ingest
from pixelquery_batch.catalog.reader import open_scene
from pixelquery_batch.catalog.store import resolve_snapshot
from pixelquery_batch.testing.cogs import (
    SUPPORTED_FLAVOURS,
    UNSUPPORTED_FLAVOURS,
    make_flavour,
    read_with_rasterio,
)

from .conftest import FLAVOUR_DATE


@pytest.mark.parametrize("flavour", sorted(SUPPORTED_FLAVOURS))
def test_open_scene_equals_rasterio(flavour: str, flavour_dir: Path, flavour_repo: Path) -> None:
    expected, meta = read_with_rasterio(flavour_dir / f"{flavour}_{FLAVOUR_DATE}.tif")
    ds = open_scene(flavour_repo, f"{flavour}_{FLAVOUR_DATE}")
    names = list(ds.data_vars)
    assert len(names) == expected.shape[0]
    got = np.stack([ds[n].values for n in names])
    assert got.dtype == expected.dtype  # raw dtype, no float conversion
    np.testing.assert_array_equal(got, expected)  # NaNs compare equal here
    # geo metadata matches rasterio's
    assert tuple(ds.attrs["transform"]) == pytest.approx(meta["transform"])
    assert ds.attrs["crs_epsg"] == meta["crs_epsg"]
    nodata = ds[names[0]].attrs["nodata"]
    if meta["nodata"] is None:
        assert np.isnan(nodata)
    else:
        assert nodata == pytest.approx(meta["nodata"], nan_ok=True)
    # coordinates are pixel centres
    a, _, c, _, e, f = meta["transform"]
    assert ds.x.values[0] == pytest.approx(c + a / 2)
    assert ds.y.values[-1] == pytest.approx(f + e * (expected.shape[1] - 0.5))


@pytest.mark.parametrize("flavour", ["uint16_deflate_pred2", "int16_4band_pixel", "float32_pred3"])
def test_window_reads_equal_rasterio(flavour: str, flavour_dir: Path, flavour_repo: Path) -> None:
    expected, _ = read_with_rasterio(flavour_dir / f"{flavour}_{FLAVOUR_DATE}.tif")
    ds = open_scene(flavour_repo, f"{flavour}_{FLAVOUR_DATE}")
    first = next(iter(ds.data_vars))
    win = ds[first].isel(y=slice(100, 237), x=slice(50, 301)).values
    np.testing.assert_array_equal(win, expected[0, 100:237, 50:301])


def test_dask_chunks_follow_native_tiles(flavour_repo: Path) -> None:
    ds = open_scene(flavour_repo, f"uint16_deflate_pred2_{FLAVOUR_DATE}", chunks={})
    da = ds[next(iter(ds.data_vars))]
    assert da.chunks is not None
    assert da.chunks[0][0] == 128 and da.chunks[1][0] == 128


@pytest.mark.parametrize("flavour", sorted(UNSUPPORTED_FLAVOURS))
def test_unsupported_files_are_refused(flavour: str, tmp_path: Path, flavour_dir: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(flavour_dir / f"uint16_lzw_{FLAVOUR_DATE}.tif", src)
    make_flavour(src / f"bad_{flavour}_{FLAVOUR_DATE}.tif", flavour)
    report = ingest(str(src), str(tmp_path / "repo"), product="multiband")
    failed = report.by_status("failed")
    assert [Path(f.url).name for f in failed] == [f"bad_{flavour}_{FLAVOUR_DATE}.tif"]
    keyword = UNSUPPORTED_FLAVOURS[flavour][1]
    assert keyword.lower() in (failed[0].reason or "").lower()
    # the good file still went in, and reads back
    assert [Path(f.url).name for f in report.by_status("ingested")] == [f"uint16_lzw_{FLAVOUR_DATE}.tif"]
    ref = resolve_snapshot(tmp_path / "repo")
    assert ref.catalog().ids == [f"uint16_lzw_{FLAVOUR_DATE}"]
