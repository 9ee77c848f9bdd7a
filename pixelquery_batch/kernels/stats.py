"""Zonal statistics over a weighted pixel mask (kernels layer: numpy only, pure).

``values`` is a float64 array over a field's window, with NaN for every invalid pixel
(nodata, cloud, outside the raster, division by zero); ``weights`` is the array from
:func:`pixelquery_batch.rasterize.geometry_weights` (0/1 for the centre and
all-touched rules, covered fractions for the coverage rule). A pixel with weight 0 is
not part of the field.

Definitions (``v`` and ``w`` are the values and weights of the *valid* pixels: weight
> 0, finite value, not flagged ``invalid``):

``count``
    ``sum(w)``, i.e. the number of valid pixels for 0/1 weights.
``valid_fraction``
    ``count / sum(all weights)``: NaN when the field has no pixel at all (total 0),
    0.0 when it has pixels but none valid.
``mean``, ``sum``, ``std``
    ``sum(v * w) / sum(w)``, ``sum(v * w)`` and the weighted *population* standard
    deviation ``sqrt(sum(w * (v - mean)**2) / sum(w))`` (exactextract's ``mean``,
    ``sum`` and ``stdev``). When every valid weight is exactly 1 these are computed as
    ``numpy.mean``, ``numpy.sum`` and ``numpy.std`` (``ddof=0``) of ``v``.
``min``, ``max``
    Over the valid pixels, whatever their weight (as exactextract).
``median``, ``pNN`` (``p1`` .. ``p99``)
    When every valid weight is exactly 1: ``numpy.median`` and ``numpy.percentile(v,
    NN)`` with numpy's default ``"linear"`` method. Otherwise exactextract's weighted
    quantile (its ``median`` and ``quantile(q=NN/100)``), see :func:`weighted_quantiles`;
    it equals numpy's linear percentile when the weights are equal and the values are
    distinct.

Every statistic except ``count`` and ``valid_fraction`` is NaN when ``count == 0``.
Everything accumulates in float64.

:class:`Moments` holds the mergeable partial aggregate (count, sum, M2, min, max) for
rollups: merging the partials of any split of the pixels gives the single-pass
count/mean/std/min/max, up to rounding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "STAT_NAMES",
    "Moments",
    "percentile_of",
    "valid_values",
    "validate_stats",
    "weighted_quantiles",
    "zonal_stats",
]

STAT_NAMES: tuple[str, ...] = (
    "mean",
    "std",
    "min",
    "max",
    "median",
    "sum",
    "count",
    "valid_fraction",
)
"""Named statistics; percentiles ``p1`` .. ``p99`` are accepted as well."""

_PERCENTILE = re.compile(r"p([1-9][0-9]?)")


def percentile_of(name: str) -> int | None:
    """The percentile ``NN`` of a ``"pNN"`` statistic name (1..99), else ``None``.

    >>> percentile_of("p90"), percentile_of("p5"), percentile_of("median")
    (90, 5, None)
    """
    match = _PERCENTILE.fullmatch(name)
    return int(match.group(1)) if match else None


def validate_stats(stats: Sequence[str]) -> tuple[str, ...]:
    """Check statistic names and return them as a tuple (order kept, duplicates dropped).

    Parameters
    ----------
    stats
        Names from :data:`STAT_NAMES` or ``"p1"`` .. ``"p99"``.

    Returns
    -------
    tuple of str

    Raises
    ------
    ValueError
        Naming the unknown statistic and the valid names.

    Examples
    --------
    >>> validate_stats(["mean", "p10", "mean"])
    ('mean', 'p10')
    """
    if isinstance(stats, str):
        stats = [stats]
    out: list[str] = []
    for name in stats:
        if not isinstance(name, str) or (name not in STAT_NAMES and percentile_of(name) is None):
            raise ValueError(
                f"unknown statistic {name!r}; valid statistics are {', '.join(STAT_NAMES)} "
                "and percentiles p1 .. p99 (e.g. 'p10', 'p90')"
            )
        if name not in out:
            out.append(name)
    return tuple(out)


def weighted_quantiles(
    values: np.ndarray, weights: np.ndarray, qs: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Weighted quantiles as exactextract computes them.

    Identical values are first merged (their weights summed). With the ``n`` distinct
    values sorted, ``x_0 < ... < x_{n-1}``, weights ``w_i`` and ``S_i = w_0 + ... +
    w_i``, each value gets the position ``s_0 = 0``, ``s_i = i * w_i + (n - 1) *
    S_{i-1}``; quantile ``q`` is the linear interpolation of ``x`` at ``q * (n - 1) *
    S_{n-1}`` over those positions (clamped to ``x_0`` and ``x_{n-1}``). This is the
    "weighted percentile" of Wikipedia; with equal weights it is numpy's ``linear``
    percentile.

    Parameters
    ----------
    values, weights
        1-D arrays of the same length; weights > 0, values finite.
    qs
        Quantiles in [0, 1].

    Returns
    -------
    numpy.ndarray
        float64, one per quantile; NaN when ``values`` is empty.

    Examples
    --------
    >>> weighted_quantiles(np.array([1.0, 2.0, 3.0, 4.0]), np.ones(4), [0.5, 0.1])
    array([2.5, 1.3])
    >>> weighted_quantiles(np.array([1.0, 2.0]), np.array([3.0, 1.0]), [0.5])
    array([1.5])
    """
    qs = np.asarray(qs, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64).ravel()
    weights = np.asarray(weights, dtype=np.float64).ravel()
    if values.size == 0:
        return np.full(qs.shape, np.nan)
    if np.any((qs < 0) | (qs > 1)) or not np.all(np.isfinite(qs)):
        raise ValueError(f"quantiles must be between 0 and 1; got {qs.tolist()!r}")
    order = np.argsort(values, kind="stable")
    xs, ws = values[order], weights[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    x, w = xs[starts], np.add.reduceat(ws, starts)
    n = x.size
    cum = np.cumsum(w)
    s = np.arange(n) * w + (n - 1) * np.r_[0.0, cum[:-1]]
    target = qs * (cum[-1] * (n - 1))
    right = np.searchsorted(s, target, side="right")
    left = np.clip(right - 1, 0, n - 1)
    r = np.clip(right, 0, n - 1)
    span = s[r] - s[left]
    interp = x[left] + (target - s[left]) * (x[r] - x[left]) / np.where(span > 0, span, 1.0)
    return np.where(right == 0, x[0], np.where(right >= n, x[-1], interp))


@dataclass(frozen=True, slots=True)
class Moments:
    """Mergeable partial aggregate of weighted values: count, sum, M2, min, max.

    ``m2`` is the weighted sum of squared deviations from the mean; partials merge with
    Chan et al.'s pairwise update, which stays accurate where ``sum_sq`` would cancel.
    An empty partial has ``count == 0`` and NaN ``min``/``max``.

    Examples
    --------
    >>> a = Moments.from_values(np.array([1.0, 2.0]))
    >>> b = Moments.from_values(np.array([3.0, 4.0, np.nan]))
    >>> m = a.merge(b)
    >>> m.count, m.mean, m.min, m.max, round(m.std, 12)
    (4.0, 2.5, 1.0, 4.0, 1.11803398875)
    """

    count: float = 0.0
    sum: float = 0.0
    m2: float = 0.0
    min: float = math.nan
    max: float = math.nan

    @classmethod
    def from_values(
        cls,
        values: np.ndarray,
        weights: np.ndarray | None = None,
        *,
        invalid: np.ndarray | None = None,
    ) -> Moments:
        """Partial aggregate of the valid pixels of an array.

        Parameters
        ----------
        values
            Pixel values; NaN/inf are invalid.
        weights
            Same shape; pixels with weight 0 are not counted. ``None`` means all 1.
        invalid
            Optional boolean array, True where a pixel is invalid (e.g. cloud).

        Returns
        -------
        Moments
        """
        v, w = valid_values(values, weights, invalid)
        return _moments(v, w)

    @property
    def mean(self) -> float:
        """Weighted mean (NaN when empty)."""
        return self.sum / self.count if self.count > 0 else math.nan

    @property
    def variance(self) -> float:
        """Weighted population variance (NaN when empty)."""
        return self.m2 / self.count if self.count > 0 else math.nan

    @property
    def std(self) -> float:
        """Weighted population standard deviation (NaN when empty)."""
        return math.sqrt(self.variance) if self.count > 0 else math.nan

    def stat(self, name: str) -> float | None:
        """``mean``, ``std``, ``sum``, ``min`` or ``max`` as a float; ``None`` for any other
        statistic (quantiles and counts are not moments).

        >>> Moments.from_values(np.array([1.0, 3.0])).stat("mean"), Moments().stat("median")
        (2.0, None)
        """
        if name == "mean":
            return self.mean
        if name == "std":
            return self.std
        if name in ("sum", "min", "max"):
            return float(getattr(self, name))
        return None

    def merge(self, other: Moments) -> Moments:
        """Combine with the partial of a disjoint set of pixels."""
        if other.count <= 0:
            return self
        if self.count <= 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / n)
        return Moments(
            count=n,
            sum=self.sum + other.sum,
            m2=m2,
            min=min(self.min, other.min),
            max=max(self.max, other.max),
        )

    @classmethod
    def merge_all(cls, parts: Iterable[Moments]) -> Moments:
        """Merge any number of partials (an empty iterable gives an empty partial)."""
        out = cls()
        for part in parts:
            out = out.merge(part)
        return out


def valid_values(
    values: np.ndarray, weights: np.ndarray | None, invalid: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Values and weights of the valid pixels (weights ``None`` when all are 1)."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    if invalid is not None:
        invalid = np.asarray(invalid, dtype=bool)
        if invalid.shape != values.shape:
            raise ValueError(
                f"invalid must have the shape of values {values.shape}; got {invalid.shape}"
            )
        ok &= ~invalid
    if weights is None:
        return values[ok], None
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != values.shape:
        raise ValueError(
            f"weights must have the shape of values {values.shape}; got {weights.shape}"
        )
    ok &= weights > 0
    w = weights[ok]
    if np.all(w == 1.0):
        return values[ok], None
    return values[ok], w


def _moments(v: np.ndarray, w: np.ndarray | None) -> Moments:
    if v.size == 0:
        return Moments()
    if w is None:
        total = np.sum(v)
        count = float(v.size)
        mean = total / count
        m2 = np.sum(np.square(v - mean))
    else:
        total = np.sum(v * w)
        count = float(np.sum(w))
        mean = total / count
        m2 = np.sum(w * np.square(v - mean))
    return Moments(
        count=count, sum=float(total), m2=float(m2), min=float(v.min()), max=float(v.max())
    )


def zonal_stats(
    values: np.ndarray,
    weights: np.ndarray,
    stats: Sequence[str],
    *,
    invalid: np.ndarray | None = None,
) -> dict[str, float]:
    """Statistics of the valid pixels of one field (see the module docstring).

    Parameters
    ----------
    values
        float64 pixel values over the field's window; NaN (or inf) marks invalid pixels.
    weights
        Same shape, from :func:`~pixelquery_batch.rasterize.geometry_weights`: 0/1 or
        covered fractions. Pixels with weight 0 are outside the field.
    stats
        Names from :data:`STAT_NAMES` and/or ``"p1"`` .. ``"p99"``.
    invalid
        Optional boolean array, True where a pixel is invalid for another reason
        (e.g. a cloud mask), treated like NaN.

    Returns
    -------
    dict of str to float
        One entry per requested statistic, in the requested order.

    Raises
    ------
    ValueError
        For an unknown statistic or arrays of different shapes.

    Examples
    --------
    >>> v = np.array([[1.0, 2.0], [np.nan, 4.0]])
    >>> w = np.array([[1.0, 1.0], [1.0, 0.0]])
    >>> zonal_stats(v, w, ["mean", "count", "valid_fraction", "p50"])
    {'mean': 1.5, 'count': 2.0, 'valid_fraction': 0.6666666666666666, 'p50': 1.5}
    """
    names = validate_stats(stats)
    weights = np.asarray(weights, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if weights.shape != values.shape:
        raise ValueError(
            f"weights must have the shape of values {values.shape}; got {weights.shape}"
        )
    total = float(np.sum(weights[weights > 0]))
    v, w = valid_values(values, weights, invalid)
    m = _moments(v, w)
    out: dict[str, float] = {}
    nan = math.nan
    quantiles: dict[str, float] = {}
    wanted_q = [n for n in names if n == "median" or percentile_of(n) is not None]
    if wanted_q and v.size:
        quantiles = _quantiles(v, w, wanted_q)
    for name in names:
        if name == "count":
            out[name] = m.count
        elif name == "valid_fraction":
            out[name] = m.count / total if total > 0 else nan
        elif v.size == 0:
            out[name] = nan
        else:
            moment = m.stat(name)
            out[name] = quantiles[name] if moment is None else moment
    return out


def _quantiles(v: np.ndarray, w: np.ndarray | None, names: list[str]) -> dict[str, float]:
    """``median``/``pNN`` of the valid values (numpy for unit weights, else weighted)."""
    pct = [percentile_of(n) for n in names]
    if w is None:
        out = {}
        if "median" in names:
            out["median"] = float(np.median(v))
        ps = [(n, p) for n, p in zip(names, pct, strict=True) if p is not None]
        if ps:
            vals = np.percentile(v, [p for _, p in ps])
            out.update({n: float(x) for (n, _), x in zip(ps, vals, strict=True)})
        return out
    qs = [0.5 if p is None else p / 100.0 for p in pct]
    vals = weighted_quantiles(v, w, qs)
    return {n: float(x) for n, x in zip(names, vals, strict=True)}
