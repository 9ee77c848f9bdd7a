"""Worker-side pixel gathering: the fields' pixels and the chunks holding them."""

from __future__ import annotations

import itertools
import os
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import shapely
from shapely.geometry import box

from pixelquery_batch.gather import _build, field_pixels
from pixelquery_batch.rasterize import geometry_weights

T = (10.0, 0.0, 600000.0, 0.0, -10.0, 5300000.0)


@dataclass(frozen=True)
class _Field:
    field_id: str
    wkb: bytes
    window: tuple[int, int, int, int]


def _fields(n: int, seed: int = 0) -> list[_Field]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x, y = 600000 + rng.uniform(-50, 20000), 5300000 - rng.uniform(-50, 20000)
        g = shapely.affinity.rotate(box(x, y, x + rng.uniform(5, 120), y + rng.uniform(5, 120)),
                                    rng.uniform(0, 60))
        b = g.bounds
        c0, c1 = int(np.floor((b[0] - T[2]) / 10)), int(np.ceil((b[2] - T[2]) / 10))
        r0, r1 = int(np.floor((T[5] - b[3]) / 10)), int(np.ceil((T[5] - b[1]) / 10))
        out.append(_Field(f"F{i:05d}", shapely.to_wkb(g), (r0, c0, r1 - r0, c1 - c0)))
    return out


def _build_on(threads: int, *args: object) -> object:
    """``_build`` by this thread with ``threads - 1`` others helping, as a worker's threads
    waiting for the same pixels do."""
    import threading

    from pixelquery_batch.gather import _Together

    together = _Together()
    helpers = [threading.Thread(target=together.help) for _ in range(threads - 1)]
    for t in helpers:
        t.start()
    try:
        return _build(*args, together)
    finally:
        together.close()
        for t in helpers:
            t.join()


def test_threads_waiting_for_a_result_do_its_items_together() -> None:
    """The owner's stages come back in order with every item done once, helpers take
    items, an item's error reaches the owner (the rest of the stage is dropped), and
    closing releases the helpers, also those arriving late."""
    import threading
    import time

    from pixelquery_batch.gather import _Together

    together = _Together()
    ran: dict[int, list[int]] = {}

    def item(x: int) -> int:
        ran.setdefault(threading.get_ident(), []).append(x)
        time.sleep(0.01)
        return x * x

    helpers = [threading.Thread(target=together.help) for _ in range(2)]
    for t in helpers:
        t.start()
    time.sleep(0.05)
    assert together.map(item, range(30)) == [x * x for x in range(30)]
    assert together.map(item, [5, 6]) == [25, 36]  # a second stage

    def boom(x: int) -> int:
        if x == 3:
            raise ValueError("bad item 3")
        time.sleep(0.01)
        return x

    with pytest.raises(ValueError, match="bad item 3"):
        together.map(boom, range(40))
    together.close()
    for t in helpers:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in helpers)
    assert sorted(x for xs in ran.values() for x in xs) == sorted([*range(30), 5, 6])
    assert len(ran) == 3  # the owner and both helpers did items
    together.help()  # a helper arriving after the close returns at once


@pytest.mark.parametrize("threads", [1, 2])
def test_parallel_batched_centre_pixels_equal_the_per_field_rasteriser(threads: int) -> None:
    """9,000 fields take the batched path in slices (on one thread, or shared with a
    second); every
    field gets exactly the pixels of the per-field rasteriser (itself checked against GDAL
    in test_rasterize_stats)."""
    from pixelquery_batch import gather

    fields = _fields(9000)
    assert len(fields) > 3 * gather._SLICE_FIELDS  # four slices
    pix = _build_on(threads, fields, T, (2000, 2000), "centre")
    starts = pix.segments.starts
    assert pix.field_ids == tuple(f.field_id for f in fields) and not pix.failed
    for k in range(0, len(fields), 7):
        f = fields[k]
        w = geometry_weights(shapely.from_wkb(f.wkb), T, f.window, "centre")
        rr, cc = np.nonzero(w > 0)
        a, b = starts[k], starts[k + 1]
        assert np.array_equal(pix.rows[a:b], rr + f.window[0])
        assert np.array_equal(pix.cols[a:b], cc + f.window[1])
    # pixels past the raster edge (fields near x/y = 0 of the grid) are kept but flagged
    assert (~pix.inside).any() and pix.inside.any()


def _wkb_buffers(geoms: list, **kw) -> tuple[np.ndarray, np.ndarray]:
    wkb = [shapely.to_wkb(g, **kw) for g in geoms]
    return (np.frombuffer(b"".join(wkb), np.uint8),
            np.concatenate([[0], np.cumsum([len(w) for w in wkb])]))


def test_centre_pixels_read_from_wkb_equal_those_read_by_shapely() -> None:
    """The numpy WKB reader gives the shapely reader's pixels, bit for bit, on polygons
    with holes, multi-polygons (an empty part among them), empty geometries, and shapes
    offset so their vertices sit at every byte alignment in the buffer; anything it does
    not read (Z coordinates, big-endian, collections, a cut-off buffer) is handed back."""
    from shapely.geometry import MultiPolygon, Polygon

    from pixelquery_batch.rasterize import centre_pixels_batch, centre_pixels_wkb

    rng = np.random.default_rng(7)
    geoms, windows = [], []
    for i in range(240):
        x, y = 600000 + rng.uniform(0, 5000), 5300000 - rng.uniform(0, 5000)
        outer = shapely.affinity.rotate(box(x, y, x + rng.uniform(30, 200),
                                            y + rng.uniform(30, 200)), rng.uniform(0, 90))
        hole = shapely.affinity.scale(outer, 0.4, 0.4)
        kind = i % 6
        if kind == 0:
            g = Polygon(outer.exterior.coords, [hole.exterior.coords])
        elif kind == 1:
            g = MultiPolygon([outer, shapely.affinity.translate(outer, 400, 0)])
        elif kind == 2:
            g = MultiPolygon([Polygon(outer.exterior.coords, [hole.exterior.coords]),
                              shapely.affinity.translate(outer, 0, -300),
                              shapely.affinity.translate(outer, 300, -300)])
        elif kind == 3:
            g = Polygon()
        elif kind == 4:
            g = shapely.from_wkt("MULTIPOLYGON (EMPTY, ((0 0, 1 0, 1 1, 0 0)))")
            g = shapely.affinity.translate(g, x, y)
        else:
            g = outer
        geoms.append(g)
        b = g.bounds if not g.is_empty else (x, y, x + 1, y + 1)
        c0, c1 = int(np.floor((b[0] - T[2]) / 10)), int(np.ceil((b[2] - T[2]) / 10))
        r0, r1 = int(np.floor((T[5] - b[3]) / 10)), int(np.ceil((T[5] - b[1]) / 10))
        windows.append((r0, c0, r1 - r0, c1 - c0))
    windows = np.asarray(windows)
    want = centre_pixels_batch(geoms, windows, T)
    assert want[0].sum() > 10_000
    data, offsets = _wkb_buffers(geoms)
    for shift in range(8):  # the same WKB at every alignment of the buffer
        shifted = np.concatenate([np.zeros(shift, np.uint8), data])
        got = centre_pixels_wkb(shifted, offsets + shift, windows, T)
        assert got is not None
        for a, b in zip(want, got, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    # a slice of the fields: offsets that do not start at 0
    got = centre_pixels_wkb(data, offsets[60:121], windows[60:120], T)
    ref = centre_pixels_batch(geoms[60:120], windows[60:120], T)
    assert got is not None and all(np.array_equal(a, b) for a, b in zip(ref, got, strict=True))

    poly = geoms[5]
    handed_back = {
        "z": _wkb_buffers([shapely.force_3d(poly)]),
        "big-endian": _wkb_buffers([poly], byte_order=0),
        "collection": _wkb_buffers([shapely.GeometryCollection([poly])]),
        "cut off": (data[:offsets[6] - 3], offsets[:7]),
    }
    for name, (d, o) in handed_back.items():
        assert centre_pixels_wkb(d, o, windows[: len(o) - 1], T) is None, name


def test_fields_the_wkb_reader_hands_back_still_get_their_pixels() -> None:
    """Fields with Z coordinates (and 8,000 plain ones: the batched path) get the pixels of
    their 2-D shapes through shapely."""
    fields = _fields(8000, seed=5)
    flat = _build(fields, T, (2000, 2000), "centre")
    z = [_Field(f.field_id, shapely.to_wkb(shapely.force_3d(shapely.from_wkb(f.wkb))), f.window)
         for f in fields]
    with_z = _build_on(2, z, T, (2000, 2000), "centre")
    assert not with_z.failed and with_z.n_pixels == flat.n_pixels > 100_000
    assert np.array_equal(with_z.rows, flat.rows) and np.array_equal(with_z.cols, flat.cols)
    assert np.array_equal(with_z.segments.starts, flat.segments.starts)


def test_batched_centre_pixels_on_scan_lines_with_large_windows() -> None:
    """Boxes whose horizontal edges lie exactly on pixel-centre lines (GDAL fills those
    that run towards -x) beside windows of 50,000 x 50,000 px: the batch packs (field,
    row, col) into one integer key, (2 * 50,001 + r) * 50,001 + c for the third field,
    past int32 while the pixel arrays themselves are int32."""
    from pixelquery_batch.rasterize import centre_pixels_batch

    t = (10.0, 0.0, 0.0, 0.0, -10.0, 100000.0)
    on_lines = box(20.0, 100000.0 - 10 * 6.5, 70.0, 100000.0 - 10 * 2.5)  # y = 2.5 .. 6.5 px
    geoms = [box(10.0, 99990.0, 20.0, 99980.0), on_lines, on_lines]
    windows = np.array([[0, 0, 50000, 50000], [0, 0, 50000, 50000], [1, 1, 8, 8]])
    counts, rows, cols = centre_pixels_batch(geoms, windows, t)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for k, (geom, win) in enumerate(zip(geoms, windows, strict=True)):
        if win[2] > 100:  # the per-field rasteriser would allocate the whole window
            continue
        w = geometry_weights(geom, t, tuple(int(v) for v in win), "centre")
        rr, cc = np.nonzero(w > 0)
        assert counts[k] == len(rr) > 0
        assert np.array_equal(rows[starts[k]:starts[k + 1]], rr + win[0])
        assert np.array_equal(cols[starts[k]:starts[k + 1]], cc + win[1])
    assert counts[1] == counts[2]  # the same box, in a large and in a small window


def test_field_pixels_are_cached_by_key_and_a_bad_geometry_is_isolated() -> None:
    fields = _fields(50, seed=1)
    a = field_pixels(fields, T, (2000, 2000), "centre", key="k1")
    assert field_pixels(fields, T, (2000, 2000), "centre", key="k1") is a
    bad = [*fields[:3], _Field("LINE", shapely.to_wkb(shapely.LineString([(600000, 5299000),
                                                                         (600100, 5299100)])),
                               (0, 0, 20, 20))]
    pix = field_pixels(bad, T, (2000, 2000), "centre")
    assert "LINE" in pix.failed and "Polygon" in pix.failed["LINE"]
    assert pix.field_ids == tuple(f.field_id for f in fields[:3])


def test_decoded_chunks_reuse_one_buffer_and_never_alias_results() -> None:
    """Bands of several dtypes and chunk counts decoded one after another (each band's
    chunks pass through one reused tile buffer): each band's gathered values equal plain
    indexing of the full array, and stay intact after later decodes."""
    from pixelquery_batch.catalog.chunks import ArrayChunkReader
    from pixelquery_batch.catalog.models import BandInfo
    from pixelquery_batch.gather import decode_band

    rng = np.random.default_rng(3)
    shape = (2000, 2000)
    fields = _fields(300, seed=4)
    arrays, bands = {}, []
    for k, (dtype, chunk) in enumerate([("uint16", 256), ("float32", 512), ("uint8", 128),
                                        ("uint16", 256)]):
        full = (rng.random(shape) * 250).astype(dtype)
        arrays[(f"s{k}", "b")] = full
        bands.append((f"s{k}", BandInfo("b", None, "b", None, dtype, None, 1.0, 0.0,
                                         (chunk, chunk), f"mem://{k}")))
    reader = ArrayChunkReader(arrays)
    pix = field_pixels(fields, T, shape, "centre", key="scratch-test")
    inside = pix.inside
    r, c = pix.rows[inside], pix.cols[inside]
    got = [decode_band(reader, g, b, (T, shape), pix) for g, b in bands]
    got.append(decode_band(reader, bands[0][0], bands[0][1], (T, shape), pix))  # again
    for (g, _), tiles in zip([*bands, bands[0]], got, strict=True):
        want = arrays[(g, "b")][r, c]
        values = tiles.values(0, pix.n_pixels)
        assert values.dtype == want.dtype and np.array_equal(values[inside], want)


def test_field_layout_boxes_and_positions_equal_a_per_field_computation() -> None:
    """Each field's pixel box and each pixel's row-major place in it (what pictures are
    drawn with), against a plain per-field min/max; a field without pixels gets an empty
    box."""
    from pixelquery_batch.gather import FieldPixels
    from pixelquery_batch.kernels.segments import Segments

    pix = _build(_fields(400, seed=5), T, (2000, 2000), "centre")
    lay = pix.layout()
    starts = pix.segments.starts
    for k in range(pix.segments.n_fields):
        r, c = pix.rows[starts[k]:starts[k + 1]], pix.cols[starts[k]:starts[k + 1]]
        if not len(r):
            assert lay.height[k] == lay.width[k] == 0
            continue
        assert (lay.row0[k], lay.col0[k]) == (r.min(), c.min())
        assert (lay.height[k], lay.width[k]) == (r.max() - r.min() + 1, c.max() - c.min() + 1)
        box = np.zeros((lay.height[k], lay.width[k]), bool)
        box.reshape(-1)[lay.flat[starts[k]:starts[k + 1]]] = True
        want = np.zeros_like(box)
        want[r - r.min(), c - c.min()] = True
        assert np.array_equal(box, want)
    empty = FieldPixels(("a", "b"), Segments.from_counts([0, 2]), np.array([3, 4]),
                        np.array([7, 5]), np.ones(2, bool), None)
    e = empty.layout()
    assert e.height.tolist() == [0, 2] and e.width.tolist() == [0, 3]
    assert e.flat.tolist() == [2, 3]


def test_threads_sharing_a_layout_all_get_every_field_statistic() -> None:
    """Threads of one worker share a unit's pixel layout; four of them asking for its size
    buckets at once each get all of them (a thread that found the list half-built gave NaN
    medians and percentiles to the fields of the missing buckets: seen at 100,000 fields
    on 2 threads). Statistics of every field equal numpy's, whichever thread computed them."""
    import itertools
    import threading

    from pixelquery_batch.kernels.segments import Segments, segment_stats

    rng = np.random.default_rng(7)
    for trial in range(10):
        counts = rng.integers(0, 300, 5000)
        values = rng.random(int(counts.sum()))
        barrier = threading.Barrier(4)
        results: list[dict[str, np.ndarray]] = []
        seg = Segments.from_counts(counts)

        def work(seg: Segments = seg, values: np.ndarray = values,
                 barrier: threading.Barrier = barrier,
                 results: list[dict[str, np.ndarray]] = results) -> None:
            barrier.wait()
            results.append(segment_stats(values, seg, ["median", "p25", "min", "max"]))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 4
        starts = seg.starts
        want = np.array([np.median(values[a:b]) if b > a else np.nan
                         for a, b in itertools.pairwise(starts)])
        for got in results:
            np.testing.assert_array_equal(got["median"], want, err_msg=f"trial {trial}")


@pytest.mark.parametrize("with_keep", [True, False])
def test_segment_statistics_equal_numpy_field_by_field(with_keep: bool) -> None:
    """Every statistic of every field against numpy on that field's own pixels: fields of
    0 to 300 pixels, NaN and +-inf invalid, some pixels dropped (``keep``) or none.
    Counts and order statistics (numpy's median and linear percentiles) exactly; sums,
    means and standard deviations to 1e-12."""
    from pixelquery_batch.kernels.segments import Segments, segment_stats

    rng = np.random.default_rng(11)
    counts = np.concatenate([[0, 1, 2, 0], rng.integers(0, 300, 2000)])
    seg = Segments.from_counts(counts)
    values = rng.normal(0.4, 0.2, seg.n_pixels)
    values[rng.random(seg.n_pixels) < 0.1] = np.nan
    values[rng.random(seg.n_pixels) < 0.01] = np.inf
    values[rng.random(seg.n_pixels) < 0.01] = -np.inf
    values[seg.starts[5]:seg.starts[6]] = np.nan  # a field with no valid pixel
    keep = rng.random(seg.n_pixels) > 0.05 if with_keep else np.ones(seg.n_pixels, bool)
    names = ["mean", "std", "min", "max", "median", "p10", "p25", "p75", "p90", "count",
             "sum", "valid_fraction"]
    got = segment_stats(values, seg, names, keep=keep if with_keep else None)
    for f, (a, b) in enumerate(itertools.pairwise(seg.starts.tolist())):
        v, k = values[a:b][keep[a:b]], keep[a:b]
        ok = v[np.isfinite(v)]
        want = {"count": len(ok), "valid_fraction": len(ok) / k.sum() if k.sum() else np.nan}
        if len(ok):
            want.update(mean=ok.mean(), std=ok.std(), min=ok.min(), max=ok.max(),
                        median=np.median(ok), sum=ok.sum(),
                        **{f"p{p}": np.percentile(ok, p) for p in (10, 25, 75, 90)})
        for name in names:
            w, g = want.get(name, np.nan), got[name][f]
            if name in ("mean", "std", "sum", "valid_fraction"):
                np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15, err_msg=f"{name} of {f}")
            else:
                assert g == w or (np.isnan(g) and np.isnan(w)), (name, f, g, w)
        assert got["_total"][f] == k.sum() and got["_valid"][f] == len(ok)


@pytest.mark.parametrize("counts", [[0, 3, 0, 0, 2, 0], [5], [0, 0], [], [1, 0, 4, 0]])
def test_segment_sums_equal_per_field_sums_with_empty_fields(counts: list[int]) -> None:
    """Per-field sums (one reduceat pass) against plain per-field numpy sums, with empty
    fields first, last and in a row (reduceat alone would return a neighbour's value)."""
    from pixelquery_batch.kernels.segments import Segments

    rng = np.random.default_rng(len(counts))
    seg = Segments.from_counts(counts)
    values = rng.random(seg.n_pixels) * 100
    mask = values > 50
    bounds = list(itertools.pairwise(seg.starts))
    np.testing.assert_allclose(seg.sums(values), [values[a:b].sum() for a, b in bounds],
                               rtol=1e-14)
    assert seg.sums(mask).tolist() == [float(mask[a:b].sum()) for a, b in bounds]
    assert seg.sums(mask).dtype == np.float64 and len(seg.sums(mask)) == len(counts)


def test_pixel_cache_drops_older_sets_over_its_byte_budget(monkeypatch) -> None:
    """A worker moving on to the next strip of fields drops the last strip's cached pixels
    when a set as large would not fit beside them in the budget, before building the next
    one (the newest is always kept); ``nbytes`` counts
    the arrays a set holds, derived ones included; ``release_memory`` empties the cache."""
    from pixelquery_batch import gather

    gather.clear_pixel_cache()
    a = field_pixels(_fields(200, seed=1), T, (2000, 2000), "centre", key="strip-a")
    own = sum(x.nbytes for x in (a.rows, a.cols, a.inside, a.segments.seg, a.segments.starts))
    assert a.nbytes >= own
    a.segments.buckets()
    assert a.nbytes > own  # the size buckets derived since
    monkeypatch.setattr(gather, "_CACHE_BYTES", a.nbytes + 1)
    assert field_pixels(_fields(200, seed=1), T, (2000, 2000), "centre", key="strip-a") is a
    cached_at_build: list[int] = []
    build = gather._build
    monkeypatch.setattr(gather, "_build", lambda *a, **k: (cached_at_build.append(len(gather._CACHE)),
                                                           build(*a, **k))[1])
    b = field_pixels(_fields(200, seed=2), T, (2000, 2000), "centre", key="strip-b")
    assert list(gather._CACHE.values()) == [b]  # a + b over the budget: a dropped
    assert cached_at_build == [0]  # ... before b was built: never both held at once
    monkeypatch.setattr(gather, "_build", build)
    again = field_pixels(_fields(200, seed=1), T, (2000, 2000), "centre", key="strip-a")
    assert again is not a and np.array_equal(again.rows, a.rows)  # rebuilt, same pixels
    monkeypatch.setattr(gather, "_CACHE_BYTES", 1 << 40)
    field_pixels(_fields(200, seed=2), T, (2000, 2000), "centre", key="strip-b")
    assert len(gather._CACHE) == 2
    gather.release_memory()
    assert len(gather._CACHE) == 0


def test_threads_asking_for_one_band_index_build_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's threads starting on the same pixels get one band index: the first
    builds it, the others wait for it rather than building it again beside it."""
    import threading
    import time

    from pixelquery_batch import gather
    from pixelquery_batch.catalog.models import BandInfo

    pix = field_pixels(_fields(300, seed=6), T, (2000, 2000), "centre", key="one-index")
    band = BandInfo("b", None, "b", None, "uint16", 0, 1.0, 0.0, (256, 256), "mem://b")
    built = []
    build = gather._build_band_index

    def slow_build(*args: object) -> object:
        built.append(threading.get_ident())
        time.sleep(0.2)  # the other threads arrive while it builds
        return build(*args)

    monkeypatch.setattr(gather, "_build_band_index", slow_build)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(gather._band_index(pix, band, (T, (2000, 2000)))))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and len(got) == 3 and all(g is got[0] for g in got)
    idx = got[0]
    assert sorted(idx.pos.tolist()) == np.flatnonzero(pix.inside).tolist()  # every pixel once


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(("band_t", "band_shape", "chunks"), [
    (T, (2000, 2000), (256, 256)),  # the work grid itself
    ((20.0, 0.0, 600000.0, 0.0, -20.0, 5300000.0), (1000, 1000), (128, 256)),  # a 20 m band
    ((60.0, 0.0, 600030.0, 0.0, -60.0, 5299970.0), (300, 320), (64, 128)),  # 60 m, shifted
    (T, (2000, 2000), (7, 3)),  # 95,000+ chunks: keys wider than 16 bits
])
def test_band_index_equals_a_pixel_by_pixel_construction(band_t: tuple[float, ...],
                                                          band_shape: tuple[int, int],
                                                          chunks: tuple[int, int], threads: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pixel a chunk holds appears once, under that chunk, at its row-major offset
    in it, positions ascending within a chunk; chunks in ascending order; the rest are
    missing. Fields cross the raster's edge, so some pixels lie outside it. Built on
    three threads (the pixels cut in three parts, each sorted alone), it is the same."""
    from pixelquery_batch import gather
    from pixelquery_batch.gather import _build_band_index
    from pixelquery_batch.grids import grid_map

    monkeypatch.setattr(gather, "_PARALLEL_MIN_PIXELS", 1000)  # these few pixels in parts
    work = (T, (2000, 2000))
    pix = field_pixels(_fields(700, seed=12), T, work[1], "centre", key=("index", chunks, band_t))
    assert not pix.inside.all()
    idx = _build_band_index(pix, (band_t, band_shape), chunks, work, threads)
    gm = grid_map(work, (band_t, band_shape))
    cy, cx = chunks
    expect: dict[tuple[int, int], list[tuple[int, int]]] = {}
    missing = []
    for p, (r, c, inside) in enumerate(zip(pix.rows.tolist(), pix.cols.tolist(),
                                           pix.inside.tolist(), strict=True)):
        br, bc = (int(gm.rows[r]), int(gm.cols[c])) if inside else (-1, -1)
        if br < 0 or bc < 0:
            missing.append(p)
            continue
        expect.setdefault((br // cy, bc // cx), []).append((p, (br % cy) * cx + bc % cx))
    order = sorted(expect)
    assert idx.chunks == order
    for k, chunk in enumerate(order):
        b0, b1 = idx.bounds[k], idx.bounds[k + 1]
        got = list(zip(idx.pos[b0:b1].tolist(), idx.local[b0:b1].tolist(), strict=True))
        assert got == expect[chunk], chunk
    assert idx.bounds[-1] == len(idx.pos) == pix.n_pixels - len(missing)
    assert sorted(idx.missing.tolist()) == missing
    assert idx.pos.dtype == idx.local.dtype == np.intp


def test_chunk_by_chunk_pixel_sets_are_copied_and_equal_plain_indexing() -> None:
    """Pixel sets laid out chunk by chunk (a rollup block cut along the chunks): whole
    chunks are copied in one piece, partial ones gathered into one run, and pixels of a
    chunk spread over the set picked one by one; every way gives the array's values."""
    from pixelquery_batch.catalog.chunks import ArrayChunkReader
    from pixelquery_batch.catalog.models import BandInfo
    from pixelquery_batch.gather import _band_index, decode_band

    shape = (1000, 1000)
    full = (np.random.default_rng(5).random(shape) * 60000).astype(np.uint16)
    band = BandInfo("b", None, "b", None, "uint16", None, 1.0, 0.0, (256, 256), "mem://b")
    reader = ArrayChunkReader({("s", "b"): full})
    x0, y0 = T[2], T[5]

    def piece(fid: str, r0: int, c0: int, h: int, w: int, shrink: float = 0.0) -> _Field:
        g = box(x0 + c0 * 10 + shrink, y0 - (r0 + h) * 10 + shrink,
                x0 + (c0 + w) * 10 - shrink, y0 - r0 * 10 - shrink)
        return _Field(fid, shapely.to_wkb(g), (r0, c0, h, w))

    fields = [piece("whole", 0, 0, 256, 256), piece("whole2", 0, 256, 256, 256),
              piece("part", 256, 0, 256, 256, shrink=35.0),  # one run, not the whole chunk
              # spread over the chunks below (rows 512 on)
              *[f for f in _fields(400, seed=9) if f.window[0] >= 512 and f.window[0] + f.window[2] < 1000]]
    pix = field_pixels(fields, T, shape, "centre", key="runs-test")
    runs = _band_index(pix, band, (T, shape)).runs
    assert {0, 1, 2} <= set(runs.tolist())
    # built in parts on threads (the first parts already in chunk order), the same index
    from pixelquery_batch.gather import _band_index_parts
    from pixelquery_batch.grids import grid_map

    one = _band_index(pix, band, (T, shape))
    for n_parts in (2, 3, 5):
        parts = _band_index_parts(pix, grid_map((T, shape), (T, shape)), (256, 256), (4, 4),
                                  n_parts)
        assert parts.chunks == one.chunks
        for name in ("bounds", "pos", "local", "missing", "runs"):
            assert np.array_equal(getattr(parts, name), getattr(one, name)), (n_parts, name)
    got = decode_band(reader, "s", band, (T, shape), pix).values(0, pix.n_pixels)
    inside = pix.inside
    assert np.array_equal(got[inside], full[pix.rows[inside], pix.cols[inside]])


@pytest.mark.parametrize("order", ["chunk by chunk", "reversed"])
def test_a_pixel_set_of_whole_chunks_in_or_out_of_chunk_order_gets_every_value(order: str) -> None:
    """Fields that are exactly the raster's chunks: laid out in chunk order, every pixel is
    gathered in place (no scatter); in reverse order, put at its position. Both give the
    array's values at each field's pixels."""
    from pixelquery_batch.catalog.chunks import ArrayChunkReader
    from pixelquery_batch.catalog.models import BandInfo
    from pixelquery_batch.gather import _band_index, decode_band

    shape = (512, 768)
    full = (np.random.default_rng(8).random(shape) * 60000).astype(np.uint16)
    band = BandInfo("b", None, "b", None, "uint16", None, 1.0, 0.0, (256, 256), "mem://b")
    reader = ArrayChunkReader({("s", "b"): full})
    x0, y0 = T[2], T[5]
    fields = [_Field(f"c{r}{c}", shapely.to_wkb(box(x0 + c * 2560, y0 - (r + 1) * 2560,
                                                     x0 + (c + 1) * 2560, y0 - r * 2560)),
                     (r * 256, c * 256, 256, 256))
              for r in range(2) for c in range(3)]
    if order == "reversed":
        fields = fields[::-1]
    pix = field_pixels(fields, T, shape, "centre", key=f"whole-chunks-{order}")
    assert pix.n_pixels == full.size
    idx = _band_index(pix, band, (T, shape))
    assert idx.in_order == (order == "chunk by chunk")
    got = decode_band(reader, "s", band, (T, shape), pix).values(0, pix.n_pixels)
    assert np.array_equal(got, full[pix.rows, pix.cols])


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_a_20m_cloud_band_decoded_to_its_mask_equals_the_mask_of_its_values(dtype: str) -> None:
    """A cloud band decoded straight to its mask (``decode_band(table=)``) under 10 m
    pixels: a 20 m band read through the nearest mapping, each 20 m pixel serving up to
    four 10 m ones, for a sparse set of fields (their pixels looked up) and for whole
    chunks laid out chunk by chunk (the chunk looked up, then gathered). Compared with
    numpy ``isin`` on the 20 m array at ``row // 2, col // 2``; nodata and pixels outside
    the raster are never cloudy."""
    from pixelquery_batch.catalog.chunks import ArrayChunkReader
    from pixelquery_batch.catalog.models import BandInfo
    from pixelquery_batch.gather import decode_band
    from pixelquery_batch.tasks import _cloud_lut

    shape10 = (1000, 1000)
    scl = np.random.default_rng(3).integers(0, 12, (500, 500)).astype(dtype)
    t20 = (20.0, 0.0, T[2], 0.0, -20.0, T[5])
    band = BandInfo("scl", None, "scl", None, dtype, 0, 1.0, 0.0, (128, 128), "mem://scl",
                    transform=t20, shape_yx=(500, 500))
    reader = ArrayChunkReader({("s", "scl"): scl})
    classes = (3, 8, 9, 10)
    table = _cloud_lut(np.dtype(dtype).str, 0, classes, ())
    x0, y0 = T[2], T[5]
    whole = [_Field(f"w{k}", shapely.to_wkb(box(x0 + c * 10, y0 - (r + 256) * 10,
                                                 x0 + (c + 256) * 10, y0 - r * 10)), (r, c, 256, 256))
             for k, (r, c) in enumerate([(0, 0), (0, 256), (256, 0)])]
    # one field reaching past the raster's east edge: its outside pixels are not cloudy
    edge = _Field("edge", shapely.to_wkb(box(x0 + 9950, y0 - 5000, x0 + 10100, y0 - 4900)),
                  (490, 995, 10, 15))
    for name, fields in [("sparse", [*_fields(300, seed=4), edge]), ("chunks", whole)]:
        pix = field_pixels(fields, T, shape10, "centre", key=f"cloud-table-{name}-{dtype}")
        got = decode_band(reader, "s", band, (T, shape10), pix, table=table)
        assert got.is_mask and got.gathered.dtype == bool
        inside = pix.inside
        want = np.zeros(pix.n_pixels, bool)
        values = scl[pix.rows[inside] // 2, pix.cols[inside] // 2]
        want[inside] = np.isin(values, classes)
        assert want.any() and (~want).any()
        np.testing.assert_array_equal(got.values(0, pix.n_pixels), want)
        if name == "sparse":
            assert not inside.all()  # the edge field's outside pixels were checked


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_band_values_and_cloud_masks_equal_direct_arithmetic(dtype: str) -> None:
    """Band values (scale, offset, nodata; computed in place) and cloud masks (classes or
    bits, nodata never cloudy; 8/16-bit arrays of any size through a per-dtype table) equal the
    direct numpy computation bit for bit."""
    from pixelquery_batch.catalog.models import BandInfo
    from pixelquery_batch.tasks import JobContext, _cloud_mask, _cloudy, _physical

    rng = np.random.default_rng(11)
    top = np.iinfo(dtype).max
    raw = rng.integers(0, top + 1, 300_000).astype(dtype)
    raw[:50] = 0
    for scale, offset, nodata in [(1.0, 0.0, 0), (1e-4, -0.1, 0), (2.5e-5, 0.0, None)]:
        band = BandInfo("b", None, "b", None, dtype, nodata, scale, offset, (256, 256), "x")
        for mask in (True, False):
            want = raw.astype(np.float64)
            if mask and nodata is not None:
                want[raw == nodata] = np.nan
            if scale != 1.0 or offset != 0.0:
                want = want * scale + offset
            np.testing.assert_array_equal(_physical(raw, band, mask), want)
    band = BandInfo("scl", None, "scl", None, dtype, 0, 1.0, 0.0, (256, 256), "x")
    for classes, bits in [((3, 8, 9, 10), None), (None, (3, 5))]:
        ctx = JobContext(repo=None, job_hash="t", variables=(), stats=(), cloud_band="scl",  # type: ignore[arg-type]
                         cloud_classes=classes, cloud_bits=bits)
        if classes is not None:
            want = np.isin(raw, classes)
        else:
            want = (raw.astype(np.int64) & ((1 << 3) | (1 << 5))) != 0
        want &= raw != 0
        for part in (raw, raw[:1000]):  # a whole block, a small group of fields
            got = _cloud_mask(part, band, ctx)
            assert got.dtype == np.bool_ and np.array_equal(got, want[:len(part)])
        assert np.array_equal(_cloudy(raw, 0, classes, bits or ()), want)
        assert not _cloud_mask(raw, band, ctx)[:50].any()


@pytest.mark.parametrize(("env", "backend"), [({}, "system"),
                                             ({"ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}, "mimalloc")])
def test_arrow_pool_is_the_system_allocator_unless_the_user_chose(env: dict[str, str],
                                                                  backend: str) -> None:
    """Units stage their rows through the C library's (tuned) allocator, whose heap keeps
    freed pages for the next unit (mimalloc kept ~200 MB more at 100,000 fields, jemalloc
    handed the pages back and faulted them in again on every unit); a pool the user chose
    with ARROW_DEFAULT_MEMORY_POOL stays."""
    import subprocess
    import sys

    code = ("import pyarrow as pa; from pixelquery_batch.gather import tune_allocator; "
            "tune_allocator(); print(pa.default_memory_pool().backend_name)")
    base = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, check=True,
                         capture_output=True, text=True).stdout.strip()
    assert out == backend


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator (Linux)")
def test_tuned_allocator_reuses_freed_arrays_without_faulting_them_in_again() -> None:
    """Under Dask's ``MALLOC_TRIM_THRESHOLD_`` a worker's arrays of a few MB were mapped,
    unmapped and faulted in again on every allocation; after ``tune_allocator`` the heap
    keeps them: 20 allocations of a 3 MB array fault in (about) one array's pages, where
    the untuned process faults in all twenty."""
    import subprocess

    code = ("import resource, numpy as np\n"
            "from pixelquery_batch.gather import tune_allocator\n"
            "if TUNE: tune_allocator()\n"
            "np.ones(3 << 20, np.uint8)\n"
            "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(20):\n"
            "    a = np.ones(3 << 20, np.uint8); del a\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n")
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}  # as Dask's nanny sets it
    faults = {}
    for tune in (False, True):
        out = subprocess.run([sys.executable, "-c", f"TUNE = {tune}\n{code}"], env=env,
                             check=True, capture_output=True, text=True).stdout
        faults[tune] = int(out.strip())
    pages = (3 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert faults[False] >= 15 * pages  # the untuned process: every array faulted in again
    assert faults[True] <= pages  # tuned: the heap keeps the freed array


_HUGE_PAGE_PROBE = """
import numpy as np
from pixelquery_batch.gather import tune_allocator
if TUNE:
    tune_allocator()
a = np.ones(64 << 20, np.uint8)
at = a.ctypes.data + (32 << 20)  # inside the 2 MiB-aligned part numpy advises
flags = ""
with open("/proc/self/smaps") as smaps:
    inside = False
    for line in smaps:
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= at < hi
        elif inside and head == "VmFlags:":
            flags = line
print("hg" in flags.split())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc smaps")
@pytest.mark.parametrize(("tune", "env", "advised"), [
    (False, {}, True), (True, {}, False), (True, {"NUMPY_MADVISE_HUGEPAGE": "1"}, True)])
def test_units_arrays_are_not_advised_onto_huge_pages(tune: bool, env: dict[str, str],
                                                      advised: bool) -> None:
    """numpy marks arrays of 4 MiB or more MADV_HUGEPAGE, and the kernel compacts memory on
    their first faults (each worker's first unit took 0.8-1.5 s of system time at 100,000
    fields); after ``tune_allocator`` the kernel sees no such mark on a unit's array (read
    from the array's mapping in /proc/self/smaps), unless the user asked numpy for it."""
    import subprocess

    base = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    out = subprocess.run([sys.executable, "-c", f"TUNE = {tune}\n{_HUGE_PAGE_PROBE}"],
                         env={**base, **env}, check=True, capture_output=True, text=True).stdout
    assert out.strip() == str(advised)
