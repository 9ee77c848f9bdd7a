"""What a second thread costs the engine's band math and statistics, against a second process.

One group of fields' pixels at a time (random field sizes of 20-130 pixels, uint16 red and
nir with 1 % nodata, Sentinel-2's scale and offset), the engine's own functions: physical
values (``tasks._physical``), NDVI (``Expression.evaluate``) and the 8 statistics of the
nightly job (``segment_stats``). Each thread or process summarises the same number of pixels
(2^23 by default) in groups of each size, and reports its own CPU time (``thread_time``):
alone, as one of two threads of one process, and as one of two processes.

    python benchmarks/bench_gil_groups.py [--pixels 8388608] [--sizes 15,16,17,18,19]

A thread's CPU that grows beside another thread of the same process, and not beside another
process, is what sharing the interpreter costs (the GIL handed over and taken back around
every numpy call), not what the machine costs.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import threading
import time
from datetime import UTC, datetime

import numpy as np

STATS = ["mean", "std", "min", "max", "median", "p25", "p75", "count"]


def _setup() -> tuple[object, object, object]:
    from pixelquery_batch.catalog.models import BandInfo
    from pixelquery_batch.expr import parse_expression
    from pixelquery_batch.gather import tune_allocator

    tune_allocator()  # as a worker's units run
    band = BandInfo("b", None, "b", None, "uint16", 0, 0.0001, -0.1, (512, 512), "mem://b")
    return band, parse_expression("(nir - red) / (nir + red)", name="ndvi"), STATS


def _groups(n_px: int, seed: int) -> list[tuple[object, np.ndarray, np.ndarray]]:
    from pixelquery_batch.kernels.segments import Segments

    out = []
    for k in range(4):
        rng = np.random.default_rng(seed * 10 + k)
        counts = rng.integers(20, 130, size=max(1, n_px // 73))
        n = int(counts.sum())
        red = rng.integers(1000, 3000, n).astype(np.uint16)
        nir = rng.integers(2000, 6000, n).astype(np.uint16)
        red[rng.random(n) < 0.01] = 0  # nodata
        out.append((Segments.from_counts(counts), red, nir))
    return out


def _work(n_px: int, total: int, seed: int) -> tuple[float, float]:
    """(band math, statistics) CPU seconds of this thread over ``total`` pixels."""
    from pixelquery_batch.kernels.segments import segment_stats
    from pixelquery_batch.tasks import _physical

    band, expr, stats = _setup()
    data = _groups(n_px, seed)
    math_s = stats_s = 0.0
    for r in range(max(1, total // n_px)):
        seg, red, nir = data[r % len(data)]
        t0 = time.thread_time()
        env = {"red": _physical(red, band, True), "nir": _physical(nir, band, True)}
        values = expr.evaluate(env, finite={"red", "nir"})
        t1 = time.thread_time()
        segment_stats(values, seg, stats)
        t2 = time.thread_time()
        math_s += t1 - t0
        stats_s += t2 - t1
    return math_s, stats_s


def _append(out: list[tuple[float, float]], n_px: int, total: int, seed: int) -> None:
    out.append(_work(n_px, total, seed))


def _in_process(n_px: int, total: int, seed: int, q: mp.Queue) -> None:
    _work(n_px, total, seed)  # warm: numpy's and the allocator's first pages
    q.put(_work(n_px, total, seed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pixels", type=int, default=1 << 23, help="pixels per thread or process")
    ap.add_argument("--sizes", default="15,16,17,18,19", help="group sizes, as powers of 2")
    args = ap.parse_args()
    print(f"# {datetime.now(UTC).isoformat(timespec='seconds')}, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, numpy {np.__version__}")
    print("# CPU seconds per thread or process (band math / statistics), "
          f"{args.pixels:,} pixels each")
    print(f"{'group':>8} | {'alone':>13} | {'2 threads':>13} {'x':>11} | {'2 processes':>13} {'x':>11}")
    for p in (int(x) for x in args.sizes.split(",")):
        n_px = 1 << p
        _work(n_px, args.pixels, 0)
        alone = _work(n_px, args.pixels, 0)
        got: list[tuple[float, float]] = []
        threads = [threading.Thread(target=_append, args=(got, n_px, args.pixels, s))
                   for s in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        two_t = tuple(float(np.mean([g[k] for g in got])) for k in range(2))
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        procs = [ctx.Process(target=_in_process, args=(n_px, args.pixels, s, q)) for s in (1, 2)]
        for proc in procs:
            proc.start()
        got_p = [q.get() for _ in procs]
        for proc in procs:
            proc.join()
        two_p = tuple(float(np.mean([g[k] for g in got_p])) for k in range(2))
        print(f"{n_px:>8} | {alone[0]:.3f} / {alone[1]:.3f} | {two_t[0]:.3f} / {two_t[1]:.3f} "
              f"{two_t[0] / alone[0]:.2f} / {two_t[1] / alone[1]:.2f} | {two_p[0]:.3f} / {two_p[1]:.3f} "
              f"{two_p[0] / alone[0]:.2f} / {two_p[1] / alone[1]:.2f}", flush=True)


if __name__ == "__main__":
    main()
