"""Sample data: 10 m -> 20 m derivations (2 x 2 blocks) for the 20 m bands.

Layer: *sample data (seeded generator)*. The 20 m grid shares the upper-left
corner of the 10 m grid; 20 m pixel ``(i, j)`` covers the 10 m pixels
``(2i .. 2i+1, 2j .. 2j+1)``. When the 10 m size is odd, the last 20 m row and
column reach 10 m past the 10 m grid; their missing 10 m pixels are taken as
copies of the last 10 m row/column (edge replication). The rules:

* reflectance (``B11``): the mean of the four 10 m reflectances (:func:`_mean_2x2`);
* classification (``SCL``): the 10 m class of the upper-left pixel of the block,
  i.e. ``scl_10m[0::2, 0::2]`` (:func:`_upper_left_2x2`); edge replication never
  changes it;
* nodata (every 20 m band): nodata where *any* of the four 10 m pixels is nodata
  (:func:`_coarse_first_col`), so the slanted strip appears in every band.
"""

from __future__ import annotations

import numpy as np


def _mean_2x2(array: np.ndarray) -> np.ndarray:
    """Return the mean of every 2 x 2 block of ``array`` (edge-replicated when odd).

    Keeps the dtype (float32 in, float32 out). The four terms are added in a fixed
    order, so the result is deterministic.

    >>> _mean_2x2(np.arange(9, dtype=np.float32).reshape(3, 3)).tolist()
    [[2.0, 3.5], [6.5, 8.0]]
    """
    h, w = array.shape
    if h % 2 or w % 2:
        array = np.pad(array, ((0, h % 2), (0, w % 2)), mode="edge")
    out = array[0::2, 0::2] + array[1::2, 0::2]
    out += array[0::2, 1::2]
    out += array[1::2, 1::2]
    out *= 0.25
    return out


def _upper_left_2x2(array: np.ndarray) -> np.ndarray:
    """Return the upper-left pixel of every 2 x 2 block (a contiguous copy).

    >>> _upper_left_2x2(np.arange(9).reshape(3, 3)).tolist()
    [[0, 2], [6, 8]]
    """
    return np.ascontiguousarray(array[0::2, 0::2])


def _coarse_first_col(first_col: np.ndarray, width: int) -> np.ndarray:
    """First nodata column of every 20 m row, given that of every 10 m row.

    ``first_col[r]`` is the first nodata column of 10 m row ``r`` (``width``: none).
    A 20 m pixel is nodata when any of its (edge-replicated) 10 m pixels is.

    >>> _coarse_first_col(np.array([5, 4, 3, 2, 1]), 5).tolist()
    [2, 1, 0]
    >>> _coarse_first_col(np.array([5, 5, 4]), 5).tolist()  # only the last column
    [3, 2]
    """
    h = first_col.size
    below = first_col[np.minimum(np.arange(1, h + 1, 2), h - 1)]
    fc_min = np.minimum(first_col[0::2], below)
    width_20 = (width + 1) // 2
    return np.where(fc_min >= width, width_20, fc_min // 2).astype(np.intp)
