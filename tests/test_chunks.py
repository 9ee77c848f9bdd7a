"""The fast chunk reader returns exactly rasterio's pixels for every flavour (fast path and
zarr fallback), reading only the chunks asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pixelquery_batch.catalog.chunks import ChunkRequest, IcechunkChunkReader, chunks_for_window
from pixelquery_batch.catalog.store import resolve_snapshot
from pixelquery_batch.testing.cogs import SUPPORTED_FLAVOURS, read_with_rasterio

from .conftest import FLAVOUR_DATE


@pytest.mark.parametrize("flavour", sorted(SUPPORTED_FLAVOURS))
def test_fast_reader_equals_rasterio(flavour: str, flavour_dir: Path, flavour_repo: Path) -> None:
    expected, _ = read_with_rasterio(flavour_dir / f"{flavour}_{FLAVOUR_DATE}.tif")
    ref = resolve_snapshot(flavour_repo)
    scene = ref.catalog().get(f"{flavour}_{FLAVOUR_DATE}")
    reader = IcechunkChunkReader(ref.session())
    h, w = scene.shape_yx
    windows = [(0, h, 0, w), (37, 211, 101, 290)]
    for window in windows:
        reqs = [ChunkRequest(scene.group, b, window, frozenset(chunks_for_window(window, b.chunks_yx)))
                for b in scene.bands]
        got = reader.read(reqs)
        for i, arr in enumerate(got):
            assert arr.dtype == expected.dtype
            np.testing.assert_array_equal(arr, expected[i, window[0]:window[1], window[2]:window[3]])


def test_only_listed_chunks_are_read(flavour_dir: Path, flavour_repo: Path) -> None:
    ref = resolve_snapshot(flavour_repo)
    scene = ref.catalog().get(f"uint16_deflate_pred2_{FLAVOUR_DATE}")
    band = scene.bands[0]
    reader = IcechunkChunkReader(ref.session())
    window = (0, 256, 0, 256)  # 2x2 chunks of 128
    got = reader.read([ChunkRequest(scene.group, band, window, frozenset({(0, 0)}))])[0]
    assert reader.chunks_read == 1
    expected, _ = read_with_rasterio(flavour_dir / f"uint16_deflate_pred2_{FLAVOUR_DATE}.tif")
    np.testing.assert_array_equal(got[:128, :128], expected[0, :128, :128])
    assert (got[128:, :] == 0).all() and (got[:, 128:] == 0).all()  # not read: fill value
