"""Sample data: seeded smooth value noise.

Layer: *sample data (seeded generator)*. Used for the static landscape
heterogeneity and the per-scene NDVI noise (:mod:`.landscape`) and for the
cloud fields (:mod:`.clouds`).
"""

from __future__ import annotations

import math

import numpy as np

_ROW_BLOCK = 1024  # rows per block in the smooth-noise interpolation


def _add_value_noise(rng: np.random.Generator, acc: np.ndarray, cell: float, amp: float) -> None:
    """Add ``amp`` * smooth value noise with feature size ``cell`` px to ``acc`` in place.

    A coarse grid of standard-normal values is interpolated with smoothstep
    weights (separably, in row blocks to bound the temporary memory).
    """
    h, w = acc.shape
    grid = rng.standard_normal((math.ceil(h / cell) + 2, math.ceil(w / cell) + 2), np.float32)
    oy, ox = rng.random(2)
    ys = np.arange(h) / cell + oy
    xs = np.arange(w) / cell + ox
    y0, x0 = ys.astype(np.intp), xs.astype(np.intp)
    fy, fx = _smoothstep(ys - y0), _smoothstep(xs - x0)
    tmp = grid[:, x0] * (1.0 - fx) + grid[:, x0 + 1] * fx  # (gh, w)
    tmp *= np.float32(amp)
    for r0 in range(0, h, _ROW_BLOCK):
        r1 = min(h, r0 + _ROW_BLOCK)
        a = tmp[y0[r0:r1]]
        d = tmp[y0[r0:r1] + 1]
        d -= a
        d *= fy[r0:r1, None]
        a += d
        acc[r0:r1] += a


def _smoothstep(f: np.ndarray) -> np.ndarray:
    return (f * f * (3.0 - 2.0 * f)).astype(np.float32)
