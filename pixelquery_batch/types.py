"""Aliases and tiny value objects shared by every layer (bottom layer: stdlib only).

``bbox`` always means ``(minx, miny, maxx, maxy)``; a geotransform is the six affine
coefficients ``(a, b, c, d, e, f)`` in rasterio order (``x = a*col + b*row + c``,
``y = d*col + e*row + f``); shapes are ``shape_yx``.
"""

from __future__ import annotations

import os
from typing import NewType

__all__ = [
    "STATS_KEY",
    "BBox",
    "FieldId",
    "GeoTransform",
    "SceneId",
    "ShapeYX",
    "SnapshotId",
    "SomePath",
]

SceneId = NewType("SceneId", str)
FieldId = NewType("FieldId", str)
SnapshotId = NewType("SnapshotId", str)

BBox = tuple[float, float, float, float]
GeoTransform = tuple[float, float, float, float, float, float]
ShapeYX = tuple[int, int]
SomePath = str | os.PathLike[str]

#: The key of a per-field statistics row; units return their rows sorted by it.
STATS_KEY: tuple[str, ...] = ("field_id", "scene_id", "variable")
