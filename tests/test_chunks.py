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


@pytest.mark.parametrize("flavour", sorted(SUPPORTED_FLAVOURS))
def test_tiles_read_in_place_from_local_files_equal_rasterio(
        flavour: str, flavour_dir: Path, flavour_repo: Path, monkeypatch) -> None:
    """``read_tiles`` of local single-band sources reads the file in place (Icechunk's I/O
    is not used: its fetch is made to fail) and gives rasterio's pixels; bands it cannot
    read in place (multi-band, copied, striped ...) still go through Icechunk."""
    from pixelquery_batch.catalog import chunks as chunks_mod

    expected, _ = read_with_rasterio(flavour_dir / f"{flavour}_{FLAVOUR_DATE}.tif")
    ref = resolve_snapshot(flavour_repo)
    scene = ref.catalog().get(f"{flavour}_{FLAVOUR_DATE}")
    through_icechunk = IcechunkChunkReader(ref.session(), direct_local=False)
    reader = IcechunkChunkReader(ref.session())
    for b in scene.bands:
        cy, cx = b.chunks_yx
        h, w = scene.shape_yx
        ids = [(i, j) for i in range(-(-h // cy)) for j in range(-(-w // cx))]
        want = through_icechunk.read_tiles(scene.group, b, ids)
        path = f"{scene.group}/{b.array}"
        local = chunks_mod._local_tiff(b, reader._plans_for({path})[path])
        if local is not None:
            assert b.source_fingerprint is not None and b.index is None and not b.copied
            with monkeypatch.context() as m:
                m.setattr(IcechunkChunkReader, "_fetch", lambda *a, **k: pytest.fail("fetched"))
                got = reader.read_tiles(scene.group, b, ids)
        else:
            got = reader.read_tiles(scene.group, b, ids)
        np.testing.assert_array_equal(got, want)
        full = np.zeros((len(range(0, h, cy)) * cy, len(range(0, w, cx)) * cx), got.dtype)
        for k, (i, j) in enumerate(ids):
            full[i * cy:(i + 1) * cy, j * cx:(j + 1) * cx] = got[k]
        band = b.index or 0
        np.testing.assert_array_equal(full[:h, :w], expected[band])
    if flavour.startswith("uint16_deflate"):  # the common case is read in place
        b = scene.bands[0]
        assert chunks_mod._local_tiff(b, reader._plans_for({f"{scene.group}/{b.array}"})[
            f"{scene.group}/{b.array}"]) is not None


def test_a_local_file_changed_after_it_was_opened_is_refused(flavour_dir: Path, flavour_repo: Path,
                                                             tmp_path: Path) -> None:
    """The direct read checks the file's size + ETag against the ingest fingerprint on every
    read, as Icechunk checks its references: a rewritten file is named, never read."""
    import os
    import shutil

    from pixelquery_batch.catalog import chunks as chunks_mod
    from pixelquery_batch.catalog.models import BandInfo
    from pixelquery_batch.errors import StorageError

    ref = resolve_snapshot(flavour_repo)
    scene = ref.catalog().get(f"uint16_deflate_pred2_{FLAVOUR_DATE}")
    b = scene.bands[0]
    copy = tmp_path / "copy.tif"
    shutil.copyfile(b.source[len("file://"):], copy)
    fp = chunks_mod._fingerprint(copy.as_uri())
    moved = BandInfo.from_dict({**b.to_dict(), "source": copy.as_uri(), "source_fingerprint": fp})
    reader = IcechunkChunkReader(ref.session())
    plan = reader._plans_for({f"{scene.group}/{b.array}"})[f"{scene.group}/{b.array}"]
    local = chunks_mod._local_tiff(moved, plan)
    assert local is not None and local.read([(0, 0)])[0]
    later = copy.stat().st_mtime + 60
    os.utime(copy, (later, later))
    with pytest.raises(StorageError, match=r"reading 1 chunk\(s\) of .*copy\.tif failed: the file changed "
                       r"since ingest"):
        local.read([(0, 0)])
    copy.unlink()
    with pytest.raises(StorageError, match=r"reading 1 chunk\(s\) of .*copy\.tif failed: .*copy\.tif not found"):
        local.read([(0, 0)])


def test_absent_chunks_of_a_predictor_band_read_as_fill_beside_decoded_ones(
        flavour_dir: Path, flavour_repo: Path, monkeypatch) -> None:
    """The predictor is undone for all of a band's chunks in one call; chunks absent from
    the store keep the fill value, their neighbours rasterio's pixels."""
    ref = resolve_snapshot(flavour_repo)
    scene = ref.catalog().get(f"uint16_deflate_pred2_{FLAVOUR_DATE}")
    b = scene.bands[0]
    expected, _ = read_with_rasterio(flavour_dir / f"uint16_deflate_pred2_{FLAVOUR_DATE}.tif")
    reader = IcechunkChunkReader(ref.session(), direct_local=False)
    plan = reader._plans_for({f"{scene.group}/{b.array}"})[f"{scene.group}/{b.array}"]
    assert plan.predictor and plan.fast
    real = IcechunkChunkReader._fetch

    def drop_second(self, keys, source=None):
        raws = real(self, keys, source)
        return [None if k == 1 else r for k, r in enumerate(raws)]

    monkeypatch.setattr(IcechunkChunkReader, "_fetch", drop_second)
    cy, cx = b.chunks_yx
    got = reader.read_tiles(scene.group, b, [(0, 0), (0, 1), (1, 0)])
    fill = plan.fill_value if plan.fill_value is not None else 0
    assert (got[1] == fill).all()
    np.testing.assert_array_equal(got[0], expected[0, :cy, :cx])
    np.testing.assert_array_equal(got[2], expected[0, cy:2 * cy, :cx])


def test_in_place_reads_check_the_file_once_per_version(flavour_dir: Path, flavour_repo: Path,
                                                        tmp_path: Path, monkeypatch) -> None:
    """A local source read in place is looked up (size + ETag against the ingest-time
    fingerprint) on its first read and again only when the open file's identity changes:
    rewritten in place with the same bytes but a new time, or deleted, the next read
    fails naming the file."""
    import os
    import shutil

    from pixelquery_batch.catalog import chunks as chunks_mod
    from pixelquery_batch.errors import StorageError

    ref = resolve_snapshot(flavour_repo)
    scene = ref.catalog().get(f"uint16_deflate_pred2_{FLAVOUR_DATE}")
    band = scene.bands[0]
    reader = IcechunkChunkReader(ref.session())
    plan = reader._plans_for({f"{scene.group}/{band.array}"})[f"{scene.group}/{band.array}"]
    copy = tmp_path / "copy.tif"
    shutil.copyfile(flavour_dir / f"uint16_deflate_pred2_{FLAVOUR_DATE}.tif", copy)
    url = f"file://{copy}"
    local = chunks_mod._open_local_tiff(url, chunks_mod._fingerprint(url), plan)
    assert local is not None
    lookups = []
    real = chunks_mod._fingerprint
    monkeypatch.setattr(chunks_mod, "_fingerprint", lambda u: lookups.append(u) or real(u))
    first = local.read([(0, 0), (0, 1)])
    again = local.read([(0, 0), (0, 1)])
    assert first == again and all(first) and lookups == [url]  # looked up once
    copy.write_bytes(copy.read_bytes())  # same bytes, rewritten: a new modification time
    later = copy.stat().st_mtime + 60
    os.utime(copy, (later, later))
    with pytest.raises(StorageError, match=rf"of {copy} failed: the file changed since ingest"):
        local.read([(0, 0)])
    copy.unlink()
    with pytest.raises(StorageError, match=rf"of {copy} failed: {copy} not found"):
        local.read([(0, 0)])


def test_streamed_tiles_are_the_files_bytes_and_nested_streams_keep_their_own(
        flavour_dir: Path, flavour_repo: Path, monkeypatch) -> None:
    """A local source's tiles stream through a buffer the thread keeps: each item holds
    the bytes at the offset and length the TIFF's own tags give (read here with plain
    file I/O), a second stream opened while the first runs does not overwrite it, and a
    read cut short fails naming the file."""
    import tifffile

    from pixelquery_batch.catalog import chunks as chunks_mod
    from pixelquery_batch.errors import StorageError

    ref = resolve_snapshot(flavour_repo)
    scene = ref.catalog().get(f"uint16_deflate_pred2_{FLAVOUR_DATE}")
    band = scene.bands[0]
    reader = IcechunkChunkReader(ref.session())
    plan = reader._plans_for({f"{scene.group}/{band.array}"})[f"{scene.group}/{band.array}"]
    path = flavour_dir / f"uint16_deflate_pred2_{FLAVOUR_DATE}.tif"
    local = chunks_mod._open_local_tiff(f"file://{path}", chunks_mod._fingerprint(f"file://{path}"), plan)
    assert local is not None
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        across = -(-page.imagewidth // page.tilewidth)
        offsets, counts = page.dataoffsets, page.databytecounts
    with open(path, "rb") as fh:
        def tile_bytes(i: int, j: int) -> bytes:
            fh.seek(offsets[i * across + j])
            return fh.read(counts[i * across + j])
        chunks = [(0, 0), (0, 1), (1, 0)]
        outer = local.stream(chunks)
        first = next(outer)
        inner = [bytes(v) for v in local.stream([(1, 0), (0, 1)])]  # runs while outer holds (0, 0)
        assert bytes(first) == tile_bytes(0, 0)
        assert inner == [tile_bytes(1, 0), tile_bytes(0, 1)]
        assert [bytes(v) for v in outer] == [tile_bytes(0, 1), tile_bytes(1, 0)]
        assert local.read(chunks) == [tile_bytes(i, j) for i, j in chunks]
    monkeypatch.setattr(chunks_mod.os, "preadv", lambda fd, bufs, off: len(bufs[0]) - 1)
    with pytest.raises(StorageError, match=rf"chunk \(0, 0\) of {path}: read \d+ of \d+ bytes"):
        local.read([(0, 0)])
