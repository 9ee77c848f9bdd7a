"""Compiled per-pixel kernels: one pass over the pixels where numpy needs a dozen.

Compiled with numba on first use (cached on disk beside this module, or in the user's
cache directory when the package is read-only) and run without the GIL, so a worker's
threads summarise pixels side by side. Imported lazily: jobs that never need these
kernels never load numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_BLOCK = 4096  # values summed per block before joining the total (error ~ (block + n / block) ulp)


@njit(nogil=True, cache=True, boundscheck=False)
def _squared_deviations(values: np.ndarray, a: int, b: int, mean: float) -> float:  # pragma: no cover - compiled
    """Sum of ``(x - mean) ** 2`` over the finite values of ``values[a:b]``, in blocks."""
    total = 0.0
    for i in range(a, b, _BLOCK):
        part = 0.0
        for j in range(i, min(i + _BLOCK, b)):
            x = values[j]
            if np.isfinite(x):
                d = x - mean
                part += d * d
        total += part
    return total


@njit(nogil=True, cache=True, boundscheck=False)
def run_partials(values: np.ndarray, bounds: np.ndarray, lo: float, inv_width: float,
                 nbins: int, ext: np.ndarray, hist: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """For each run ``values[bounds[r]:bounds[r + 1]]``: histogram slots into ``hist[r]``
    and ``out[r] = (count, sum, m2, min, max)`` of its finite values (min/max NaN when
    there is none).

    A value's slot ``s`` is the one with ``ext[s] <= value < ext[s + 1]`` (``ext``: the
    extended edges of :func:`pixelquery_batch.kernels.rollup._ext_edges`): an arithmetic
    guess, corrected by comparisons against ``ext``, as the numpy path does. ``m2`` is a
    second pass around the run's mean (the numpy path's definition).
    """
    for r in range(bounds.size - 1):
        a = bounds[r]
        b = bounds[r + 1]
        count = 0
        total = 0.0
        mn = np.inf
        mx = -np.inf
        for i in range(a, b, _BLOCK):
            part = 0.0
            for j in range(i, min(i + _BLOCK, b)):
                x = values[j]
                if not np.isfinite(x):
                    continue
                count += 1
                part += x
                mn = min(mn, x)
                mx = max(mx, x)
                g = (x - lo) * inv_width
                g = min(max(g, -1.0), float(nbins))
                s = int(g) + 1  # truncation, as numpy's cast: off by at most one
                while x < ext[s]:
                    s -= 1
                while x >= ext[s + 1]:
                    s += 1
                hist[r, s] += 1
            total += part
        if not count:
            mn = np.nan
            mx = np.nan
        out[r, 0] = count
        out[r, 1] = total
        out[r, 2] = _squared_deviations(values, a, b, total / count) if count else 0.0
        out[r, 3] = mn
        out[r, 4] = mx
