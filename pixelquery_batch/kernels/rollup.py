"""Region rollups: mergeable pixel partials and statistics of per-field results.

Two kinds of rollup summarise large regions per period (kernels layer: pure, no I/O).

**Pixel rollups** (:class:`Partial`). A Dask task covers one block of one scene and
returns a :class:`Partial` per ``(region_id, period_start, variable)``; Dask
tree-reduces them with :func:`merge_keyed` / :func:`merge_partials`, and the client
calls :meth:`Partial.finalize`. A partial holds the exact
:class:`~pixelquery_batch.kernels.stats.Moments` (count, sum, M2, min, max) and a
fixed-bin histogram (:class:`HistogramSpec`), so ``count``, ``min``, ``max`` and the
histogram of a merge are exactly those of a single pass over the same pixels,
``mean``/``std``/``sum`` agree up to float rounding, and quantiles are estimated from
the histogram with a guaranteed error bound.

Quantile definition and guarantee
---------------------------------
Let ``x_1 <= ... <= x_N`` be the valid pixel values. The quantile ``q`` of the pixels
is the *inverted CDF* quantile ``Q(q) = x_r`` with rank ``r = ceil(q * N)`` (``x_1``
for ``q == 0``), i.e. the smallest value with at least a fraction ``q`` of the pixels
at or below it; it is ``numpy.quantile(values, q, method="inverted_cdf")``.

The estimate finds the histogram bin holding the ``r``-th value (the first bin whose
cumulative count reaches ``q * N``), interpolates the empirical CDF linearly inside
that bin, ``edge_lo + (q * N - count_before) / count_in_bin * (edge_hi - edge_lo)``,
and clamps the result to ``[min, max]``. Both the estimate and ``Q(q)`` then lie in the
same closed bin, so

* when ``Q(q)`` lies in ``[lo, hi]``: ``|estimate - Q(q)| <= spec.error_bound()``, the
  largest bin width of the float64 bin edges (``(hi - lo) / bins`` up to a few ulps);
* when ``Q(q) < lo`` (underflow bin, values in ``[min, lo)``):
  ``|estimate - Q(q)| <= lo - min``; when ``Q(q) > hi``: ``<= max - hi``.

These hold exactly in float64 (binning is done against the same edge array, and
rounding is monotone), for any merge order. :meth:`Partial.finalize` reports
``quantile_error_bound``, the largest of those bounds over the requested quantiles.
Relative to numpy's default ``"linear"`` percentile ``L`` (interpolating between
``x_j`` and ``x_{j+1}``, ``j = floor(q * (N - 1)) + 1`` in 1-based ranks),
``Q(q)`` is one of ``x_j``, ``x_{j+1}``, so ``|estimate - L| <= bound + (x_{j+1} -
x_j)``; for dense pixel data the gap is far below a bin width.

**Field rollups** (:func:`field_rollup`). Statistics of the per-field results of a job
over the fields assigned to each region (fields observed, area-weighted mean, median of
fields, share above a threshold, ...).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pixelquery_batch.errors import SpecError
from pixelquery_batch.kernels.stats import Moments, percentile_of, valid_values, validate_stats

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_HISTOGRAMS",
    "FIELD_ROLLUP_COLUMNS",
    "INDEX_HISTOGRAM",
    "REFLECTANCE_HISTOGRAM",
    "HistogramSpec",
    "Partial",
    "field_rollup",
    "histogram_for",
    "merge_keyed",
    "merge_partials",
]

# --------------------------------------------------------------------------- histogram spec


@dataclass(frozen=True, slots=True)
class HistogramSpec:
    """Uniform histogram bins on ``[lo, hi]`` plus underflow and overflow counters.

    Bin ``i`` (0-based) covers ``[edges[i], edges[i + 1])`` with ``edges =
    numpy.linspace(lo, hi, bins + 1)``; the last bin is closed (``hi`` falls in it).
    Values below ``lo`` count as underflow, values above ``hi`` as overflow.

    Parameters
    ----------
    lo, hi
        Finite range, ``lo < hi``.
    bins
        Number of bins (>= 1).

    Raises
    ------
    SpecError
        For a non-finite or empty range or a bin count below 1.

    Examples
    --------
    >>> spec = HistogramSpec(-1.0, 1.0, 4000)
    >>> spec.width
    0.0005
    >>> spec.error_bound() >= spec.width
    True
    """

    lo: float
    hi: float
    bins: int

    def __post_init__(self) -> None:
        try:
            lo, hi = float(self.lo), float(self.hi)
            bins = int(self.bins)
        except (TypeError, ValueError) as err:
            raise SpecError(
                f"histogram range must be numbers and bins an integer; got "
                f"({self.lo!r}, {self.hi!r}, {self.bins!r})",
                hint="give the histogram as [lo, hi, bins], e.g. [-1, 1, 4000]",
            ) from err
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi) or bins < 1 or bins != self.bins:
            raise SpecError(
                f"invalid histogram ({self.lo!r}, {self.hi!r}, {self.bins!r}): need finite "
                "lo < hi and an integer bins >= 1",
                hint="give the histogram as [lo, hi, bins], e.g. [-1, 1, 4000]",
            )
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        object.__setattr__(self, "bins", bins)

    @property
    def width(self) -> float:
        """Nominal bin width ``(hi - lo) / bins``."""
        return (self.hi - self.lo) / self.bins

    @property
    def edges(self) -> np.ndarray:
        """The ``bins + 1`` float64 bin edges (read-only, cached); ``edges[0] == lo``,
        ``edges[-1] == hi``."""
        return _edges(self.lo, self.hi, self.bins)

    def error_bound(self) -> float:
        """Largest absolute error of a quantile estimate whose exact value is in ``[lo, hi]``.

        This is the largest bin width of the float64 edges, i.e. :attr:`width` up to a
        few ulps. The bound holds exactly in float64: ``abs(estimate - exact) <=
        error_bound()`` where ``exact`` is the inverted-CDF quantile (see the module
        docstring).

        Returns
        -------
        float
        """
        return _max_width(self.lo, self.hi, self.bins)


@functools.lru_cache(maxsize=64)
def _edges(lo: float, hi: float, bins: int) -> np.ndarray:
    edges = np.linspace(lo, hi, bins + 1)
    edges[0], edges[-1] = lo, hi
    edges.setflags(write=False)
    return edges


@functools.lru_cache(maxsize=64)
def _max_width(lo: float, hi: float, bins: int) -> float:
    return float(np.max(np.diff(_edges(lo, hi, bins))))


INDEX_HISTOGRAM = HistogramSpec(-1.0, 1.0, 4000)
"""Default bins for normalized-difference style indices: 4000 bins on [-1, 1] (0.0005)."""

REFLECTANCE_HISTOGRAM = HistogramSpec(-0.5, 1.5, 4000)
"""Default bins for anything else (surface reflectance): 4000 bins on [-0.5, 1.5]."""

DEFAULT_HISTOGRAMS: dict[str, HistogramSpec] = {
    name: INDEX_HISTOGRAM
    for name in (
        "ndvi", "ndwi", "mndwi", "ndmi", "nbr", "nbr2", "evi", "evi2", "savi", "msavi",
        "osavi", "gndvi", "ndre", "ndbi", "ndsi",
    )
}
"""Histogram per (lower-case) variable name; :data:`REFLECTANCE_HISTOGRAM` otherwise."""


def histogram_for(
    variable: str, override: tuple[float, float, int] | HistogramSpec | None = None
) -> HistogramSpec:
    """The histogram bins used for a variable.

    Parameters
    ----------
    variable
        Variable (index or band) name, matched case-insensitively against
        :data:`DEFAULT_HISTOGRAMS`.
    override
        ``(lo, hi, bins)`` from the job spec, used instead of the default.

    Returns
    -------
    HistogramSpec

    Raises
    ------
    SpecError
        For an invalid override.

    Examples
    --------
    >>> histogram_for("NDVI")
    HistogramSpec(lo=-1.0, hi=1.0, bins=4000)
    >>> histogram_for("red")
    HistogramSpec(lo=-0.5, hi=1.5, bins=4000)
    >>> histogram_for("red", (0, 10000, 1000)).width
    10.0
    """
    if isinstance(override, HistogramSpec):
        return override
    if override is not None:
        try:
            lo, hi, bins = override
        except (TypeError, ValueError) as err:
            raise SpecError(
                f"histogram override for {variable!r} must be (lo, hi, bins); got {override!r}",
                hint="e.g. [-1, 1, 4000]",
            ) from err
        return HistogramSpec(lo, hi, bins)
    return DEFAULT_HISTOGRAMS.get(variable.lower(), REFLECTANCE_HISTOGRAM)


def _bin_indices(v: np.ndarray, spec: HistogramSpec) -> np.ndarray:
    """Histogram slot of each finite value: 0 underflow, 1..bins, bins + 1 overflow.

    Exact with respect to :attr:`HistogramSpec.edges`: slot ``s`` holds the values in
    ``[ext[s], ext[s + 1])`` of the extended edges ``ext = [-inf, edges[0], ...,
    edges[-2], nextafter(hi, inf), inf]`` (the last bin is closed at ``hi``). An
    arithmetic guess is corrected by comparisons against ``ext``.
    """
    n = spec.bins
    ext = _ext_edges(spec.lo, spec.hi, n)
    guess = v - spec.lo
    guess *= 1.0 / spec.width
    np.clip(guess, -1.0, float(n), out=guess)
    slot = guess.astype(np.int32 if n < 2**30 else np.intp)  # truncation: off by at most one
    slot += 1
    below, above = ext[:-1], ext[1:]  # slot s holds [below[s], above[s])
    for _ in range(4):
        down = v < below[slot]
        up = v >= above[slot]
        fix_down, fix_up = bool(down.any()), bool(up.any())
        if not (fix_down or fix_up):
            return slot
        if fix_down:
            slot -= down
        if fix_up:
            slot += up
    return np.searchsorted(ext, v, side="right") - 1  # pragma: no cover - never needed


@functools.lru_cache(maxsize=64)
def _ext_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    edges = _edges(lo, hi, bins)
    ext = np.concatenate([[-np.inf], edges[:-1], [np.nextafter(hi, np.inf), np.inf]])
    ext.setflags(write=False)
    return ext


# --------------------------------------------------------------------------- partials


@dataclass(frozen=True, slots=True, eq=False)
class Partial:
    """Mergeable summary of the valid pixels of a region, period and variable.

    Parameters
    ----------
    moments
        Exact count, sum, M2, min and max (float64).
    hist
        int64 counts, length ``spec.bins + 2``: underflow, the bins, overflow. Stored
        read-only. Its total must equal ``moments.count``.
    spec
        The bins; only partials with equal specs merge.

    Notes
    -----
    Picklable and compact (the histogram dominates: 8 bytes per bin). ``merge`` is
    exactly commutative, and associative exactly for the histogram, count, min and max
    and up to float rounding for sum and M2.

    Examples
    --------
    >>> spec = HistogramSpec(0.0, 1.0, 10)
    >>> a = Partial.from_values(np.array([0.05, 0.15, np.nan]), spec)
    >>> b = Partial.from_values(np.array([0.25, 0.35]), spec)
    >>> out = a.merge(b).finalize(["count", "mean", "median"])
    >>> out["count"], round(out["mean"], 12), out["median"], round(out["quantile_error_bound"], 12)
    (4.0, 0.2, 0.2, 0.1)
    """

    moments: Moments
    hist: np.ndarray
    spec: HistogramSpec

    def __post_init__(self) -> None:
        hist = np.asarray(self.hist)
        if hist.dtype != np.int64 or hist.ndim != 1:
            hist = np.asarray(hist, dtype=np.int64).ravel()
        if hist.shape != (self.spec.bins + 2,):
            raise ValueError(
                f"hist must have bins + 2 = {self.spec.bins + 2} entries; got {hist.shape}"
            )
        if hist.flags.writeable:
            if hist is self.hist:
                hist = hist.copy()
            hist.setflags(write=False)
        total = int(hist.sum())
        if total != self.moments.count:
            raise ValueError(
                f"histogram total {total} does not match moments.count {self.moments.count}"
            )
        object.__setattr__(self, "hist", hist)

    @classmethod
    def from_values(
        cls, values: np.ndarray, spec: HistogramSpec, *, invalid: np.ndarray | None = None
    ) -> Partial:
        """Partial of the valid pixels of an array.

        Parameters
        ----------
        values
            Pixel values, any shape; converted to float64. NaN (and ±inf) are invalid
            and ignored.
        spec
            Histogram bins, e.g. from :func:`histogram_for`.
        invalid
            Optional boolean array of the same shape, True where a pixel is invalid for
            another reason (e.g. outside the region), treated like NaN.

        Returns
        -------
        Partial
        """
        v, _ = valid_values(values, None, invalid)
        moments = Moments.from_values(v)
        if v.size:
            hist = np.bincount(_bin_indices(v, spec), minlength=spec.bins + 2).astype(np.int64)
        else:
            hist = np.zeros(spec.bins + 2, dtype=np.int64)
        hist.setflags(write=False)
        return cls(moments, hist, spec)

    @classmethod
    def from_runs(cls, values: np.ndarray, bounds: Sequence[int] | np.ndarray,
                  spec: HistogramSpec) -> list[Partial]:
        """Partials of consecutive runs ``values[bounds[k]:bounds[k + 1]]`` in one
        compiled pass (GIL released), NaN and ±inf invalid.

        Equal to :meth:`from_values` of each run: the same count, min, max and histogram
        (the same slots against the same edges); sum and M2 up to float rounding (summed
        in blocks rather than pairwise).

        Examples
        --------
        >>> spec = HistogramSpec(0.0, 1.0, 10)
        >>> a, b = Partial.from_runs(np.array([0.05, 0.15, np.nan, 0.25, 0.35]), [0, 3, 5], spec)
        >>> a.count, b.count, int(b.hist[3] + b.hist[4])
        (2.0, 2.0, 2)
        """
        from pixelquery_batch.kernels.compiled import run_partials

        values = np.ascontiguousarray(values, dtype=np.float64)
        bounds = np.asarray(bounds, dtype=np.int64)
        if bounds.ndim != 1 or bounds.size < 1 or np.any(np.diff(bounds) < 0) or (
                bounds.size and (bounds[0] < 0 or bounds[-1] > values.size)):
            raise ValueError(f"bounds must ascend within 0..{values.size}; got {bounds.tolist()!r}")
        n_runs = bounds.size - 1
        hist = np.zeros((n_runs, spec.bins + 2), dtype=np.int64)
        out = np.empty((n_runs, 5), dtype=np.float64)
        run_partials(values, bounds, spec.lo, 1.0 / spec.width, spec.bins,
                     _ext_edges(spec.lo, spec.hi, spec.bins), hist, out)
        hist.setflags(write=False)
        return [cls(Moments(count=float(c), sum=float(t), m2=float(m2), min=float(mn),
                            max=float(mx)), hist[r], spec)
                for r, (c, t, m2, mn, mx) in enumerate(out)]

    @classmethod
    def empty(cls, spec: HistogramSpec) -> Partial:
        """The partial of no pixels (the identity of :meth:`merge`)."""
        hist = np.zeros(spec.bins + 2, dtype=np.int64)
        hist.setflags(write=False)
        return cls(Moments(), hist, spec)

    @property
    def count(self) -> float:
        """Number of valid pixels."""
        return self.moments.count

    def merge(self, other: Partial) -> Partial:
        """Combine with the partial of a disjoint set of pixels.

        Raises
        ------
        ValueError
            When the histogram specs differ.
        """
        _check_spec(self.spec, other.spec)
        hist = self.hist + other.hist
        hist.setflags(write=False)
        return Partial(self.moments.merge(other.moments), hist, self.spec)

    def quantiles(self, qs: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Histogram estimates of quantiles and their absolute error bounds.

        Parameters
        ----------
        qs
            Quantiles in [0, 1].

        Returns
        -------
        estimates, bounds : numpy.ndarray
            float64, one per quantile. ``abs(estimates[i] -
            numpy.quantile(values, qs[i], method="inverted_cdf")) <= bounds[i]``; the
            bound is :meth:`HistogramSpec.error_bound` when that exact quantile is in
            ``[lo, hi]``, ``lo - min`` below, ``max - hi`` above, 0 for ``q`` of 0
            or 1 (exact ``min``/``max``). All NaN when there are no pixels.
        """
        qs = np.asarray(qs, dtype=np.float64)
        if not np.all(np.isfinite(qs)) or np.any((qs < 0) | (qs > 1)):
            raise ValueError(f"quantiles must be between 0 and 1; got {qs.tolist()!r}")
        m = self.moments
        if m.count <= 0:
            nan = np.full(qs.shape, np.nan)
            return nan, nan.copy()
        spec = self.spec
        n_bins = spec.bins
        hist = self.hist
        cum = np.cumsum(hist)
        n = float(cum[-1])
        t = qs * n
        k = np.clip(np.searchsorted(cum, t, side="left"), 0, n_bins + 1)
        before = np.where(k > 0, cum[np.maximum(k - 1, 0)], 0).astype(np.float64)
        in_bin = np.maximum(hist[k], 1).astype(np.float64)
        edges = spec.edges
        inner = np.clip(k - 1, 0, n_bins - 1)
        a = np.where(k == 0, m.min, np.where(k == n_bins + 1, spec.hi, edges[inner]))
        b = np.where(k == 0, spec.lo, np.where(k == n_bins + 1, m.max, edges[inner + 1]))
        frac = np.clip((t - before) / in_bin, 0.0, 1.0)
        est = np.clip(a + frac * (b - a), a, b)
        est = np.clip(est, m.min, m.max)
        bound = np.where(
            k == 0, spec.lo - m.min, np.where(k == n_bins + 1, m.max - spec.hi, spec.error_bound())
        )
        low, high = t <= 0, t >= n
        est = np.where(low, m.min, np.where(high, m.max, est))
        bound = np.where(low | high, 0.0, bound)
        return est.astype(np.float64), bound.astype(np.float64)

    def finalize(self, stats: Sequence[str]) -> dict[str, float]:
        """Statistics of the pixels.

        Parameters
        ----------
        stats
            Any of ``mean``, ``std`` (population, ``ddof=0``), ``min``, ``max``,
            ``count``, ``sum``, ``median`` and ``p1`` .. ``p99``.

        Returns
        -------
        dict of str to float
            One entry per requested statistic in the requested order; ``mean``/``std``/
            ``min``/``max``/``count``/``sum`` are exact (up to rounding), ``median`` and
            ``pNN`` are histogram estimates of the inverted-CDF quantile (see the module
            docstring), never NaN for a non-empty partial and always within ``[min,
            max]``. When at least one quantile is requested, a last entry
            ``quantile_error_bound`` gives the largest absolute error bound of those
            estimates (:meth:`HistogramSpec.error_bound` when every estimated quantile
            is in ``[lo, hi]``, larger when one fell in the underflow/overflow bin). Every
            statistic but ``count`` is NaN when there are no pixels.

        Raises
        ------
        SpecError
            For an unknown statistic or ``valid_fraction`` (not defined for regions).
        """
        try:
            names = validate_stats(stats)
        except ValueError as err:
            raise SpecError(str(err)) from err
        if "valid_fraction" in names:
            raise SpecError(
                "statistic 'valid_fraction' is not available for region rollups",
                hint="use 'count' (the number of valid pixels)",
            )
        m = self.moments
        empty = m.count <= 0
        qnames = [n for n in names if n == "median" or percentile_of(n) is not None]
        qvals: dict[str, float] = {}
        bound = math.nan
        if qnames:
            qs = [(percentile_of(n) or 50) / 100.0 for n in qnames]  # median: 50
            est, bounds = self.quantiles(qs)
            qvals = {n: float(x) for n, x in zip(qnames, est, strict=True)}
            bound = math.nan if empty else float(np.max(bounds))
        out: dict[str, float] = {}
        for name in names:
            if name == "count":
                out[name] = float(m.count)
            elif empty:
                out[name] = math.nan
            else:
                moment = m.stat(name)
                out[name] = qvals[name] if moment is None else moment
        if qnames:
            out["quantile_error_bound"] = bound
        return out


def _check_spec(a: HistogramSpec, b: HistogramSpec) -> None:
    if a != b:
        raise ValueError(f"cannot merge partials with different histograms: {a} and {b}")


def merge_partials(parts: Iterable[Partial], *, spec: HistogramSpec | None = None) -> Partial:
    """Merge any number of partials (a fold; use it as a tree-reduce step too).

    Parameters
    ----------
    parts
        Partials with equal specs.
    spec
        Needed only to return an empty partial when ``parts`` is empty.

    Returns
    -------
    Partial

    Raises
    ------
    ValueError
        When specs differ, or ``parts`` is empty and no ``spec`` is given.
    """
    it = iter(parts)
    first = next(it, None)
    if first is None:
        if spec is None:
            raise ValueError("merge_partials needs at least one partial or a spec")
        return Partial.empty(spec)
    if spec is not None:
        _check_spec(spec, first.spec)
    hist = first.hist.copy()
    moments = first.moments
    for part in it:
        _check_spec(first.spec, part.spec)
        hist += part.hist
        moments = moments.merge(part.moments)
    hist.setflags(write=False)
    return Partial(moments, hist, first.spec)


def merge_keyed[K: Hashable](a: dict[K, Partial], b: dict[K, Partial]) -> dict[K, Partial]:
    """Union of two keyed partial maps, merging the partials of common keys.

    Used to tree-reduce ``{(region_id, period_start, variable): Partial}`` maps. The
    inputs are not modified; the result keeps ``a``'s key order, then ``b``'s new keys.

    Examples
    --------
    >>> spec = HistogramSpec(0.0, 1.0, 4)
    >>> a = {"r1": Partial.from_values(np.array([0.1]), spec)}
    >>> b = {"r1": Partial.from_values(np.array([0.2]), spec),
    ...      "r2": Partial.from_values(np.array([0.9]), spec)}
    >>> {k: p.count for k, p in merge_keyed(a, b).items()}
    {'r1': 2.0, 'r2': 1.0}
    """
    out = dict(a)
    for key, part in b.items():
        mine = out.get(key)
        out[key] = part if mine is None else mine.merge(part)
    return out


# --------------------------------------------------------------------------- field rollup

_KEYS = ["region_id", "variable", "period_start", "period_end"]
_PERIOD = ["variable", "period_start", "period_end"]

FIELD_ROLLUP_COLUMNS: tuple[str, ...] = (
    *_KEYS,
    "fields_total",
    "fields_observed",
    "area_weighted_mean",
    "mean_of_fields",
    "median_of_fields",
    "share_above",
    "observed_area_m2",
    "count",
)
"""Columns of :func:`field_rollup`'s result, in order."""


def field_rollup(
    field_stats: pd.DataFrame,
    assignment: pd.DataFrame,
    *,
    threshold: float | None = None,
    stat: str = "mean",
    regions: Iterable[Hashable] | None = None,
) -> pd.DataFrame:
    """Statistics of per-field results over the fields of each region, per period.

    Parameters
    ----------
    field_stats
        Long per-field time series: ``field_id, variable, period_start, period_end,
        <stat columns>, count``; ``count == 0`` means no valid observation of that field
        in that period. At most one row per field, variable and period.
    assignment
        ``field_id, region_id, area_m2``: the region holding each field's centroid
        (computed by the caller). Rows with a missing ``region_id`` are ignored; a row
        with a missing ``field_id`` only declares its region; a field appears at most
        once.
    threshold
        For ``share_above``; ``None`` gives NaN.
    stat
        The ``field_stats`` column summarised (e.g. ``"mean"``, ``"median"``).
    regions
        Every region to report (besides those in ``assignment``). Regions without any
        assigned field still get rows, with ``fields_total == 0``.

    Returns
    -------
    pandas.DataFrame
        One row per region and per ``(variable, period_start, period_end)`` present in
        ``field_stats``, with :data:`FIELD_ROLLUP_COLUMNS`, sorted by region, variable
        and period:

        ``fields_total``
            Fields assigned to the region (whether or not they have rows).
        ``fields_observed``
            Assigned fields with ``count > 0`` and a non-NaN ``stat`` in the period
            (a field without a row for the period is not observed).
        ``area_weighted_mean``
            ``sum(area_m2 * stat) / sum(area_m2)`` over observed fields.
        ``mean_of_fields``, ``median_of_fields``
            Unweighted mean and median of ``stat`` over observed fields.
        ``share_above``
            Fraction of observed fields with ``stat > threshold``.
        ``observed_area_m2``
            Total ``area_m2`` of observed fields (0.0 when none).
        ``count``
            Sum of the pixel counts of observed fields (0.0 when none).

        The statistics are NaN when no field is observed.

    Raises
    ------
    SpecError
        When ``stat`` is not a column of ``field_stats``.
    ValueError
        For missing columns or duplicate rows.
    """
    import pandas as pd

    _require(field_stats, ["field_id", *_PERIOD, "count"], "field_stats")
    _require(assignment, ["field_id", "region_id", "area_m2"], "assignment")
    if stat not in field_stats.columns or stat in ("field_id", *_PERIOD, "count"):
        raise SpecError(
            f"statistic {stat!r} is not a statistic column of the field results "
            f"(columns: {', '.join(map(str, field_stats.columns))})",
            hint="roll up a statistic the job computes per field, e.g. 'mean'",
        )
    assign = assignment.loc[assignment["region_id"].notna(), ["field_id", "region_id", "area_m2"]]
    region_ids = list(dict.fromkeys([*(regions if regions is not None else []),
                                     *assign["region_id"].tolist()]))
    assign = assign.loc[assign["field_id"].notna()]
    dup = assign["field_id"].duplicated()
    if dup.any():
        raise ValueError(
            "assignment lists fields more than once: "
            f"{assign.loc[dup, 'field_id'].unique()[:5].tolist()!r}"
        )
    rows = field_stats[["field_id", *_PERIOD, stat, "count"]]
    dup = rows.duplicated(["field_id", *_PERIOD])
    if dup.any():
        raise ValueError(
            "field_stats has more than one row per field_id, variable and period "
            f"(e.g. field {rows.loc[dup, 'field_id'].iloc[0]!r})"
        )

    periods = rows[_PERIOD].drop_duplicates()
    grid = pd.DataFrame(
        {"region_id": pd.Series(region_ids, dtype=None if region_ids else assign["region_id"].dtype)}
    )
    grid = grid.merge(periods, how="cross")
    totals = assign.groupby("region_id", sort=False).size().rename("fields_total")
    grid["fields_total"] = grid["region_id"].map(totals).fillna(0).astype(np.int64)

    obs = rows.loc[(rows["count"] > 0) & rows[stat].notna()].merge(assign, on="field_id")
    x = obs[stat].astype(np.float64)
    w = obs["area_m2"].astype(np.float64)
    obs = obs.assign(
        _x=x,
        _w=w,
        _wx=w * x,
        _above=(x > threshold).astype(np.float64) if threshold is not None else np.nan,
        _n=obs["count"].astype(np.float64),
    )
    agg = obs.groupby(_KEYS, sort=False, dropna=False).agg(
        fields_observed=("_x", "size"),
        _sw=("_w", "sum"),
        _swx=("_wx", "sum"),
        mean_of_fields=("_x", "mean"),
        median_of_fields=("_x", "median"),
        share_above=("_above", "mean"),
        count=("_n", "sum"),
    ).reset_index()
    agg["area_weighted_mean"] = agg["_swx"] / agg["_sw"].where(agg["_sw"] != 0)
    agg = agg.rename(columns={"_sw": "observed_area_m2"}).drop(columns="_swx")
    if threshold is None:
        agg["share_above"] = np.nan

    out = grid.merge(agg, on=_KEYS, how="left")
    out["fields_observed"] = out["fields_observed"].fillna(0).astype(np.int64)
    out["observed_area_m2"] = out["observed_area_m2"].fillna(0.0).astype(np.float64)
    out["count"] = out["count"].fillna(0.0).astype(np.float64)
    for col in ("area_weighted_mean", "mean_of_fields", "median_of_fields", "share_above"):
        out[col] = out[col].astype(np.float64)
    out = out.sort_values(_KEYS, kind="stable").reset_index(drop=True)
    return out[list(FIELD_ROLLUP_COLUMNS)]


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} is missing column(s) {', '.join(missing)}")
