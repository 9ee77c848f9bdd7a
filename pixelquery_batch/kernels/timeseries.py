"""Per-field time series from the per-scene statistics table (kernels layer: pure).

Input is the stats table written by the batch engine, one row per field x scene x
variable::

    field_id, scene_id, datetime (UTC), variable, <stats...>, count, valid_fraction,
    pixel_count, nodata_count, cloud_count, snapshot_id, job_hash

where ``<stats...>`` are among ``mean, std, min, max, median, sum, p1 .. p99``. A row
with ``count == 0`` is an observation with no valid pixel (cloud, nodata).

Three steps turn it into a regular time series:

1. :func:`merge_same_day` merges the rows of one field, variable and UTC *date*
   (adjacent tiles, overlapping orbits). The engine guarantees that such rows cover
   disjoint pixel sets, so count/sum/mean/std/min/max merge exactly; median and
   percentiles cannot be merged from summaries and are taken from the row with the
   largest count (flagged ``approx_quantiles``).
2. :func:`period_bins` lays out the periods between ``start`` and ``end``
   (see :func:`parse_period` for the accepted forms).
3. :func:`composite` reduces the observations of each field x variable x period with an
   aggregation (``mean``, ``median``, ``max``, ``min``, ``last``, ``max_ndvi``), emits
   explicit gap rows and optionally fills them by linear interpolation.

:func:`to_wide` pivots the long result into one column per period.

Dates are UTC calendar dates throughout; every period covers whole days. Imports:
numpy, pandas, the standard library and :mod:`pixelquery_batch.errors` only.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pandas as pd

from pixelquery_batch.errors import SpecError

__all__ = [
    "AGGREGATIONS",
    "FILLS",
    "PERIOD_KINDS",
    "Period",
    "composite",
    "merge_same_day",
    "parse_period",
    "period_bins",
    "to_wide",
]

PERIOD_KINDS: tuple[str, ...] = ("scene", "day", "week", "month")
"""Named period kinds accepted by :func:`parse_period` (plus ISO-8601 durations)."""

AGGREGATIONS: tuple[str, ...] = ("mean", "median", "max", "min", "last", "max_ndvi")
"""Aggregations accepted by :func:`composite`."""

FILLS: tuple[str, ...] = ("none", "linear")
"""Gap fill methods accepted by :func:`composite`."""

_ACCEPTED_PERIODS = "scene, day, week, month, or an ISO-8601 duration such as P10D, P2W, P3M, P1Y"
_DURATION = re.compile(r"P([0-9]+)([DWMY])", re.IGNORECASE)
_PERCENTILE = re.compile(r"p([1-9][0-9]?)")
_MERGEABLE = ("mean", "std", "min", "max", "sum")
_KNOWN_STATS = ("mean", "std", "min", "max", "median", "sum", "count", "valid_fraction")
_TOTALS = ("pixel_count", "nodata_count", "cloud_count")
_REQUIRED = ("field_id", "scene_id", "datetime", "variable", "count")

TimeLike = pd.Timestamp | _dt.datetime | _dt.date | np.datetime64 | str
"""Anything :class:`pandas.Timestamp` accepts; naive values are taken as UTC."""


# --------------------------------------------------------------------------- periods


@dataclass(frozen=True, slots=True)
class Period:
    """A parsed period spec (see :func:`parse_period`).

    Parameters
    ----------
    kind
        ``"scene"``, ``"day"``, ``"week"``, ``"month"`` or ``"duration"``.
    days
        Bin length in days for a day-based duration (``PnD``, ``PnW``), else ``None``.
    months
        Bin length in months for a month-based duration (``PnM`` with n > 1, ``PnY``),
        else ``None``.

    Raises
    ------
    SpecError
        For an unknown kind, or a duration without exactly one positive length.
    """

    kind: str
    days: int | None = None
    months: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in (*PERIOD_KINDS, "duration"):
            raise SpecError(
                f"unknown period kind {self.kind!r}",
                hint=f"use {_ACCEPTED_PERIODS}",
            )
        if self.kind == "duration":
            lengths = [v for v in (self.days, self.months) if v is not None]
            if len(lengths) != 1 or not isinstance(lengths[0], int) or lengths[0] < 1:
                raise SpecError(
                    f"a duration period needs exactly one positive length, got "
                    f"days={self.days!r}, months={self.months!r}",
                    hint=f"use {_ACCEPTED_PERIODS}",
                )
        elif self.days is not None or self.months is not None:
            raise SpecError(
                f"period kind {self.kind!r} takes no length, got days={self.days!r}, "
                f"months={self.months!r}",
                hint=f"use {_ACCEPTED_PERIODS}",
            )

    def __str__(self) -> str:
        if self.kind != "duration":
            return self.kind
        if self.days is not None:
            return f"P{self.days}D"
        return f"P{self.months}M"


def parse_period(text: str) -> Period:
    """Parse a period spec.

    Accepted forms (case-insensitive, surrounding blanks ignored):

    ``scene``
        One bin per distinct acquisition date (same-day scenes merge).
    ``day``, ``week``, ``month``
        UTC calendar days, ISO weeks (Monday to Sunday) and calendar months.
    ``PnD``, ``PnW``
        Bins of n days / n weeks anchored at the start date (``P1D`` is ``day``).
    ``PnM``, ``PnY``
        Bins of n months / n years anchored at January of the start year (``P1M`` is
        ``month``; ``P3M`` gives calendar quarters, ``P1Y`` calendar years).

    Combined durations (``P1M10D``) and time components (``PT6H``) are not supported.

    Parameters
    ----------
    text
        The spec string.

    Returns
    -------
    Period

    Raises
    ------
    SpecError
        For anything else, listing the accepted forms.

    Examples
    --------
    >>> parse_period("month")
    Period(kind='month', days=None, months=None)
    >>> parse_period("P10D")
    Period(kind='duration', days=10, months=None)
    >>> parse_period("P2W").days, parse_period("P3M").months, parse_period("P1Y").months
    (14, 3, 12)
    >>> parse_period("P1M") == parse_period("month")
    True
    """
    if not isinstance(text, str):
        raise SpecError(
            f"a period must be a string, got {type(text).__name__} {text!r}",
            hint=f"use {_ACCEPTED_PERIODS}",
        )
    spec = text.strip()
    if spec.lower() in PERIOD_KINDS:
        return Period(spec.lower())
    match = _DURATION.fullmatch(spec)
    if match is None or int(match.group(1)) < 1:
        raise SpecError(
            f"invalid period {text!r}: expected {_ACCEPTED_PERIODS} (n >= 1)",
            hint="e.g. period: month, or period: P10D",
        )
    n, unit = int(match.group(1)), match.group(2).upper()
    if unit == "D":
        return Period("day") if n == 1 else Period("duration", days=n)
    if unit == "W":
        return Period("duration", days=7 * n)
    if unit == "M":
        return Period("month") if n == 1 else Period("duration", months=n)
    return Period("duration", months=12 * n)


def _utc_date(value: TimeLike) -> np.datetime64:
    """The UTC calendar date of a time as ``datetime64[D]`` (naive times are UTC)."""
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as err:
        raise SpecError(f"not a date or time: {value!r}", hint="use e.g. '2024-05-01'") from err
    if ts is pd.NaT:
        raise SpecError(f"not a date or time: {value!r}", hint="use e.g. '2024-05-01'")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return np.datetime64(ts.to_datetime64(), "D")


def _utc_days(times: pd.Series | Sequence[TimeLike]) -> np.ndarray:
    """UTC calendar dates (``datetime64[D]``) of a series of times (naive = UTC)."""
    ts = pd.to_datetime(pd.Series(times), utc=True)
    return ts.dt.tz_localize(None).to_numpy().astype("datetime64[D]")


def _bin_edges(
    period: Period,
    start: TimeLike,
    end: TimeLike,
    scene_times: pd.Series | Sequence[TimeLike] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bin starts and inclusive bin ends as ``datetime64[D]`` arrays."""
    if not isinstance(period, Period):
        raise SpecError(f"expected a Period, got {type(period).__name__}; use parse_period()")
    d0, d1 = _utc_date(start), _utc_date(end)
    if d1 < d0:
        raise SpecError(
            f"the time window ends ({d1}) before it starts ({d0})",
            hint="swap start and end",
        )
    one = np.timedelta64(1, "D")
    if period.kind == "scene":
        if scene_times is None:
            raise ValueError("period 'scene' needs scene_times (the acquisition times)")
        days = np.unique(_utc_days(scene_times)) if len(scene_times) else np.array([], "M8[D]")
        days = days[(days >= d0) & (days <= d1)]
        return days, days.copy()
    if period.kind in ("day", "week") or period.days is not None:
        step = 1 if period.kind == "day" else 7 if period.kind == "week" else int(period.days or 1)
        first = d0
        if period.kind == "week":  # Monday on or before the start (1970-01-01 was a Thursday)
            first = d0 - np.timedelta64((int(d0.astype(np.int64)) + 3) % 7, "D")
        n_bins = int((d1 - first) // np.timedelta64(step, "D")) + 1
        starts = first + np.arange(n_bins + 1) * np.timedelta64(step, "D")
    else:
        step_m = 1 if period.kind == "month" else int(period.months or 1)
        m0, m1 = d0.astype("M8[M]"), d1.astype("M8[M]")
        anchor = d0.astype("M8[Y]").astype("M8[M]")  # January of the start year
        k0 = int((m0 - anchor) // np.timedelta64(step_m, "M"))
        k1 = int((m1 - anchor) // np.timedelta64(step_m, "M"))
        months = anchor + np.arange(k0, k1 + 2) * np.timedelta64(step_m, "M")
        starts = months.astype("M8[D]")
    return starts[:-1], starts[1:] - one


def _as_utc_timestamps(days: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(days.astype("M8[us]")).tz_localize("UTC")


def period_bins(
    period: Period,
    start: TimeLike,
    end: TimeLike,
    scene_times: pd.Series | Sequence[TimeLike] | None = None,
) -> pd.DataFrame:
    """The periods of a time window, as whole UTC days.

    Every bin is a whole period: bins are the periods that contain at least one date of
    the window ``start.date() .. end.date()`` (both inclusive, UTC), so the first and
    last bin can reach beyond the window (a week starting on the Monday before
    ``start``, the last ``P10D`` bin running past ``end``).

    - ``day``: every date; ``week``: ISO weeks, Monday to Sunday; ``month``: calendar
      months.
    - ``PnD`` / ``PnW``: n-day bins anchored at the start date.
    - ``PnM`` / ``PnY``: n-month bins anchored at January 1st of the start year
      (``P3M``: calendar quarters, ``P6M``: half years, ``P1Y``: calendar years).
    - ``scene``: one bin per distinct UTC acquisition date among ``scene_times`` that
      falls in the window; ``period_start == period_end`` is that date.

    Parameters
    ----------
    period
        From :func:`parse_period`.
    start, end
        The time window; naive times are UTC. Only their UTC dates matter.
    scene_times
        Acquisition times; required for ``scene``, ignored otherwise.

    Returns
    -------
    pandas.DataFrame
        Columns ``period_start`` and ``period_end``, tz-aware UTC timestamps at 00:00
        (``datetime64[us, UTC]``). ``period_end`` is the *inclusive* last date of the
        bin, i.e. the next bin's start minus one day; bins are sorted and disjoint.

    Raises
    ------
    SpecError
        When ``end`` is before ``start`` or either is not a time.
    ValueError
        For ``scene`` without ``scene_times``.

    Examples
    --------
    >>> bins = period_bins(parse_period("month"), "2024-01-15", "2024-03-02")
    >>> [str(d.date()) for d in bins["period_start"]]
    ['2024-01-01', '2024-02-01', '2024-03-01']
    >>> [str(d.date()) for d in bins["period_end"]]
    ['2024-01-31', '2024-02-29', '2024-03-31']
    >>> bins = period_bins(parse_period("week"), "2024-05-01", "2024-05-08")
    >>> [str(d.date()) for d in bins["period_start"]]  # Mondays
    ['2024-04-29', '2024-05-06']
    >>> len(period_bins(parse_period("P3M"), "2024-02-01", "2024-12-31"))  # quarters
    4
    """
    starts, ends = _bin_edges(period, start, end, scene_times)
    return pd.DataFrame(
        {"period_start": _as_utc_timestamps(starts), "period_end": _as_utc_timestamps(ends)}
    )


# --------------------------------------------------------------------------- merging


def _is_quantile(name: str) -> bool:
    return name == "median" or _PERCENTILE.fullmatch(name) is not None


def _stat_columns(stats: Sequence[str]) -> list[str]:
    """Validated stat names without ``count``/``valid_fraction`` (order kept, deduplicated)."""
    if isinstance(stats, str):
        stats = [stats]
    out: list[str] = []
    for name in stats:
        if not isinstance(name, str) or (
            name not in _KNOWN_STATS and _PERCENTILE.fullmatch(name) is None
        ):
            raise SpecError(
                f"unknown statistic {name!r}",
                hint=f"valid statistics are {', '.join(_KNOWN_STATS)} and p1 .. p99",
            )
        if name not in out and name not in ("count", "valid_fraction"):
            out.append(name)
    return out


def _require_columns(rows: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise SpecError(
            f"the statistics table lacks column(s) {', '.join(missing)} needed by {what}",
            hint=f"columns present: {', '.join(map(str, rows.columns))}",
        )


def _group_sum(codes: np.ndarray, values: np.ndarray, ok: np.ndarray, n: int) -> np.ndarray:
    """Per-group sum of ``values[ok]``; NaN for a group without any ``ok`` value."""
    total = np.bincount(codes, weights=np.where(ok, values, 0.0), minlength=n)
    hits = np.bincount(codes, weights=ok.astype(np.float64), minlength=n)
    return np.where(hits > 0, total, np.nan)


def merge_same_day(rows: pd.DataFrame, stats: Sequence[str]) -> pd.DataFrame:
    """Merge the rows of one field, variable and UTC date into one observation.

    Rows of the same field, variable and UTC date cover disjoint pixel sets (the engine
    partitions pixels between scenes), so with ``c_i`` the counts of the rows with
    ``count > 0``:

    - ``count``, ``pixel_count``, ``nodata_count``, ``cloud_count``, ``sum``: sums
      (exact);
    - ``mean``: ``sum(c_i * mean_i) / sum(c_i)``;
    - ``std``: the pooled population std
      ``sqrt(sum(c_i * (std_i**2 + (mean_i - mean)**2)) / sum(c_i))``, exact for
      disjoint pixel sets (``mean_i`` from ``sum_i / c_i`` when ``mean`` is not listed);
    - ``min``, ``max``: min of mins, max of maxes;
    - ``median``, ``pNN``: cannot be merged from summaries; taken from the row with the
      largest count (earliest on ties);
    - ``valid_fraction``: merged ``count / pixel_count`` (NaN when that is 0);
    - ``scene_id``: the ``'+'``-joined sorted scene ids; ``datetime``: the earliest;
    - any other column (``snapshot_id``, ``job_hash``, stat columns not in ``stats``):
      from the earliest row.

    Statistics are NaN when the merged count is 0. Groups of a single row are returned
    unchanged.

    Parameters
    ----------
    rows
        The per-scene statistics table. Needs ``field_id, scene_id, datetime, variable,
        count`` and the columns of ``stats``; ``datetime`` naive values are taken as UTC.
    stats
        Statistic columns to merge (``count`` and ``valid_fraction`` are always handled
        when present).

    Returns
    -------
    pandas.DataFrame
        The input columns (``datetime`` converted to UTC) plus a boolean
        ``approx_quantiles``: True on a row that merged two or more observations with
        ``count > 0`` while carrying median/percentile columns (or a std that could not
        be pooled because neither ``mean`` nor ``sum`` is listed), i.e. whenever a
        statistic was taken from one row instead of merged exactly. An incoming
        ``approx_quantiles`` column is OR-ed in. Sorted by ``field_id, variable,
        datetime``; fresh index.

    Raises
    ------
    SpecError
        For an unknown statistic, or a column missing from ``rows``.
    """
    stat_cols = _stat_columns(stats)
    _require_columns(rows, [*_REQUIRED, *stat_cols], "merge_same_day")
    df = rows.copy()
    df["datetime"] = pd.to_datetime(df["datetime"], utc=True)
    df["_day"] = _utc_days(df["datetime"])
    df = df.sort_values(
        ["field_id", "variable", "_day", "datetime", "scene_id"], kind="mergesort"
    ).reset_index(drop=True)
    flag_in = (
        df["approx_quantiles"].fillna(False).astype(bool).to_numpy()
        if "approx_quantiles" in df.columns
        else np.zeros(len(df), bool)
    )
    gid = df.groupby(["field_id", "variable", "_day"], sort=False).ngroup().to_numpy()
    multi = np.bincount(gid)[gid] > 1 if len(df) else np.zeros(0, bool)
    single = df.loc[~multi].copy()
    single["approx_quantiles"] = flag_in[~multi]

    sub = df.loc[multi].reset_index(drop=True)
    if len(sub):
        _, codes = np.unique(gid[multi], return_inverse=True)  # contiguous: df is sorted
        n = int(codes.max()) + 1
        firsts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        c = np.nan_to_num(sub["count"].to_numpy(np.float64), nan=0.0)
        ok = c > 0
        total = np.bincount(codes, weights=c, minlength=n)
        has = total > 0
        n_ok = np.bincount(codes, weights=ok.astype(np.float64), minlength=n)
        merged = sub.iloc[firsts].reset_index(drop=True)
        merged["count"] = total
        col = {name: sub[name].to_numpy(np.float64) for name in stat_cols}

        member_mean = None
        if "mean" in col:
            member_mean = col["mean"]
        elif "sum" in col:
            member_mean = np.divide(col["sum"], c, out=np.full(len(c), np.nan), where=ok)
        pooled_mean = None
        if member_mean is not None:
            weighted = _group_sum(codes, c * member_mean, ok, n)
            pooled_mean = np.divide(weighted, total, out=np.full(n, np.nan), where=has)
        order = np.lexsort((np.arange(len(sub)), -c, codes))  # largest count first
        pick = order[firsts]
        approx = np.zeros(n, bool)

        for name in stat_cols:
            v = col[name]
            if name == "sum":
                out = _group_sum(codes, v, ok, n)
            elif name == "mean":
                out = pooled_mean
            elif name == "std" and pooled_mean is not None and member_mean is not None:
                dev = v**2 + (member_mean - pooled_mean[codes]) ** 2
                m2 = _group_sum(codes, c * dev, ok, n)
                out = np.sqrt(np.divide(m2, total, out=np.full(n, np.nan), where=has))
            elif name == "min":
                out = np.fmin.reduceat(np.where(ok, v, np.nan), firsts)
            elif name == "max":
                out = np.fmax.reduceat(np.where(ok, v, np.nan), firsts)
            else:  # median, pNN, or a std that cannot be pooled
                out = v[pick].copy()
                approx |= n_ok >= 2
            merged[name] = np.where(has, out, np.nan)

        for name in _TOTALS:
            if name in sub.columns:
                vals = sub[name].to_numpy(np.float64)
                merged[name] = _group_sum(codes, vals, np.isfinite(vals), n)
        if "valid_fraction" in sub.columns:
            pixels = (
                merged["pixel_count"].to_numpy(np.float64)
                if "pixel_count" in merged.columns
                else np.full(n, np.nan)
            )
            merged["valid_fraction"] = np.divide(
                total, pixels, out=np.full(n, np.nan), where=pixels > 0
            )
        scene_ids = sub["scene_id"].astype(str).to_numpy()
        bounds = [*firsts.tolist(), len(sub)]
        merged["scene_id"] = ["+".join(sorted(scene_ids[a:b])) for a, b in pairwise(bounds)]
        merged["approx_quantiles"] = approx | np.logical_or.reduceat(flag_in[multi], firsts)
        out_df = pd.concat([single, merged], ignore_index=True)
    else:
        out_df = single
    out_df = out_df.sort_values(
        ["field_id", "variable", "_day", "datetime", "scene_id"], kind="mergesort"
    )
    out_df["approx_quantiles"] = out_df["approx_quantiles"].astype(bool)
    return out_df.drop(columns="_day").reset_index(drop=True)


# --------------------------------------------------------------------------- composites


def _fill_linear(
    values: np.ndarray, valid: np.ndarray, mid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of gap cells along axis 1 (no extrapolation).

    ``values`` is (groups, bins), ``valid`` marks periods with observations, ``mid`` the
    bin midpoints. Returns the filled values and the mask of filled cells (gaps with a
    valid period on both sides).
    """
    n_bins = values.shape[1]
    idx = np.arange(n_bins)

    def brackets(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prev = np.maximum.accumulate(np.where(mask, idx, -1), axis=1)
        nxt = np.minimum.accumulate(np.where(mask, idx, n_bins)[:, ::-1], axis=1)[:, ::-1]
        return prev, nxt

    prev, nxt = brackets(valid)
    filled = ~valid & (prev >= 0) & (nxt < n_bins)
    ok = valid & np.isfinite(values)
    prev, nxt = brackets(ok)
    target = filled & (prev >= 0) & (nxt < n_bins)
    rows, cols = np.nonzero(target)
    p, q = prev[rows, cols], nxt[rows, cols]
    x0, x1 = mid[p], mid[q]
    y0, y1 = values[rows, p], values[rows, q]
    out = values.copy()
    out[rows, cols] = (y1 - y0) / (x1 - x0) * (mid[cols] - x0) + y0  # as numpy.interp
    return out, filled


def composite(
    rows: pd.DataFrame,
    period: Period | str,
    *,
    aggregation: str,
    stats: Sequence[str],
    start: TimeLike,
    end: TimeLike,
    fill: str = "none",
    ndvi_variable: str = "ndvi",
    scene_times: Sequence[TimeLike] | None = None,
) -> pd.DataFrame:
    """Composite the per-scene statistics into a regular per-field time series.

    Steps: :func:`merge_same_day`; lay out :func:`period_bins` (for ``scene``, the
    distinct dates of all rows); put each merged observation in the bin holding its UTC
    date (observations outside every bin are dropped); reduce, per field x variable x
    bin, the observations with ``count > 0``:

    ``mean``, ``median``, ``max``, ``min``
        That reduction of each stat column across the observations (``median`` gives
        the median over days of the per-day mean, of the per-day max, ...). ``count`` is
        the sum of their counts, ``n_scenes`` their number.
    ``last``
        The stats of the latest observation.
    ``max_ndvi``
        For every variable, the stats of the observation on the date when the field's
        ``ndvi_variable`` mean was highest in the bin (earliest date on ties). A
        variable without a valid observation on that date gives a gap row.

    Every field x variable present in ``rows`` gets a row for every bin; bins without an
    observation are explicit gap rows (``count`` 0, ``n_scenes`` 0, NaN stats).

    ``fill="linear"`` interpolates each stat column of a gap row linearly in time over
    the bin midpoints, between the nearest periods with observations before and after
    (no extrapolation at the edges), and sets ``filled=True`` on those rows; their
    ``count`` and ``n_scenes`` stay 0.

    Parameters
    ----------
    rows
        The per-scene statistics table (see :func:`merge_same_day`).
    period
        A :class:`Period` or a spec string for :func:`parse_period`.
    aggregation
        One of :data:`AGGREGATIONS`.
    stats
        Stat columns to composite (``count`` and ``valid_fraction`` are ignored here:
        ``count`` is always reported).
    start, end
        The time window (see :func:`period_bins`).
    fill
        ``"none"`` or ``"linear"``.
    ndvi_variable
        The variable whose ``mean`` drives ``max_ndvi``.
    scene_times
        For ``scene`` periods: the acquisition times that define the bins (default: the
        dates of ``rows``). Pass every scene's time when compositing a subset of fields,
        so all subsets get the same bins.

    Returns
    -------
    pandas.DataFrame
        Columns ``field_id, variable, period_start, period_end, <stats...>, count,
        n_scenes, filled``, plus ``approx_quantiles`` (True where an observation used
        had quantiles taken from one of several same-day scenes) when any used
        observation had it. Sorted by ``field_id, variable, period_start``; ``n_scenes``
        counts observation *dates* (same-day scenes count once).

    Raises
    ------
    SpecError
        For an unknown aggregation, fill, period or statistic, a missing column, or
        ``max_ndvi`` without the ``ndvi_variable`` rows or a ``mean`` column.
    """
    if aggregation not in AGGREGATIONS:
        raise SpecError(
            f"unknown aggregation {aggregation!r}",
            hint=f"use one of {', '.join(AGGREGATIONS)}",
        )
    if fill not in FILLS:
        raise SpecError(f"unknown fill {fill!r}", hint=f"use one of {', '.join(FILLS)}")
    if isinstance(period, str):
        period = parse_period(period)
    stat_cols = _stat_columns(stats)
    merge_cols = list(stat_cols)
    if aggregation == "max_ndvi":
        if "mean" not in rows.columns:
            raise SpecError(
                "aggregation max_ndvi needs the per-scene mean statistic",
                hint="add 'mean' to the job's stats",
            )
        if len(rows) and not (rows["variable"] == ndvi_variable).any():
            raise SpecError(
                f"aggregation max_ndvi needs the variable {ndvi_variable!r}, which is not "
                "in the statistics table",
                hint=f"the job must compute ndvi for max_ndvi (a variable named "
                f"{ndvi_variable!r}), or pass ndvi_variable=",
            )
        if "mean" not in merge_cols:
            merge_cols.append("mean")
    merged = merge_same_day(rows, merge_cols)
    starts, ends = _bin_edges(
        period, start, end,
        (merged["datetime"] if scene_times is None else scene_times) if period.kind == "scene" else None
    )
    n_bins = len(starts)

    pairs = (
        merged[["field_id", "variable"]]
        .drop_duplicates()
        .sort_values(["field_id", "variable"], kind="mergesort")
        .reset_index(drop=True)
    )
    n_pairs = len(pairs)
    size = n_pairs * n_bins
    out_stats = {name: np.full(size, np.nan) for name in stat_cols}
    count = np.zeros(size)
    n_scenes = np.zeros(size, np.int64)
    approx = np.zeros(size, bool)

    if size and len(merged):
        day = _utc_days(merged["datetime"])
        b = np.searchsorted(starts, day, side="right") - 1
        inside = (b >= 0) & (day <= ends[np.clip(b, 0, None)])
        c = np.nan_to_num(merged["count"].to_numpy(np.float64), nan=0.0)
        pair_index = pd.MultiIndex.from_frame(pairs).get_indexer(
            pd.MultiIndex.from_frame(merged[["field_id", "variable"]])
        )
        obs = merged.assign(_pos=pair_index * n_bins + b, _day=day).loc[inside & (c > 0)]
        if aggregation in ("mean", "median", "max", "min"):
            grouped = obs.groupby("_pos", sort=True)
            reduced = grouped[stat_cols].agg(aggregation) if stat_cols else None
            pos = grouped.size().index.to_numpy()
            for name in stat_cols:
                out_stats[name][pos] = reduced[name].to_numpy(np.float64)
            count[pos] = grouped["count"].sum().to_numpy(np.float64)
            n_scenes[pos] = grouped.size().to_numpy()
            approx[pos] = grouped["approx_quantiles"].any().to_numpy(bool)
        else:
            if aggregation == "last":
                picked = obs.sort_values(["_pos", "datetime"], kind="mergesort")
                picked = picked.drop_duplicates("_pos", keep="last")
            else:  # max_ndvi
                nd = obs.loc[(obs["variable"] == ndvi_variable) & np.isfinite(obs["mean"])]
                nd = nd.assign(_bin=nd["_pos"] % n_bins)
                best = nd.sort_values(
                    ["field_id", "_bin", "mean", "_day"],
                    ascending=[True, True, False, True],
                    kind="mergesort",
                ).drop_duplicates(["field_id", "_bin"])
                picked = obs.merge(best[["field_id", "_day"]], on=["field_id", "_day"])
            pos = picked["_pos"].to_numpy()
            for name in stat_cols:
                out_stats[name][pos] = picked[name].to_numpy(np.float64)
            count[pos] = picked["count"].to_numpy(np.float64)
            n_scenes[pos] = 1
            approx[pos] = picked["approx_quantiles"].to_numpy(bool)

    filled = np.zeros(size, bool)
    if fill == "linear" and size:
        valid = (n_scenes > 0).reshape(n_pairs, n_bins)
        origin = starts[0]
        mid = ((starts - origin) + (ends + np.timedelta64(1, "D") - origin)).astype(
            np.float64
        ) / 2.0
        for name in stat_cols:
            values, mask = _fill_linear(out_stats[name].reshape(n_pairs, n_bins), valid, mid)
            out_stats[name] = values.ravel()
            filled = mask.ravel()
        if not stat_cols:
            filled = _fill_linear(np.zeros((n_pairs, n_bins)), valid, mid)[1].ravel()

    result = pd.DataFrame(
        {
            "field_id": np.repeat(pairs["field_id"].to_numpy(), n_bins),
            "variable": np.repeat(pairs["variable"].to_numpy(), n_bins),
            "period_start": _as_utc_timestamps(np.tile(starts, n_pairs)),
            "period_end": _as_utc_timestamps(np.tile(ends, n_pairs)),
            **out_stats,
            "count": count,
            "n_scenes": n_scenes,
            "filled": filled,
        }
    )
    if approx.any():
        result["approx_quantiles"] = approx
    return result


def to_wide(long: pd.DataFrame, *, stat: str = "mean") -> pd.DataFrame:
    """Pivot a :func:`composite` result to one column per period.

    Parameters
    ----------
    long
        Output of :func:`composite`.
    stat
        The column to spread (``mean``, ``count``, ``n_scenes``, ...).

    Returns
    -------
    pandas.DataFrame
        Index ``(field_id, variable)``; one column per ``period_start`` as an ISO date
        string (``"2024-05-01"``), in time order; values of ``stat`` (NaN for gaps).

    Raises
    ------
    SpecError
        When ``stat`` is not a column of ``long``.

    Examples
    --------
    >>> long = pd.DataFrame({
    ...     "field_id": ["a", "a"], "variable": ["ndvi", "ndvi"],
    ...     "period_start": pd.to_datetime(["2024-05-01", "2024-06-01"], utc=True),
    ...     "mean": [0.5, 0.7]})
    >>> wide = to_wide(long)
    >>> wide.columns.to_list(), wide.index.to_list(), wide.to_numpy().tolist()
    (['2024-05-01', '2024-06-01'], [('a', 'ndvi')], [[0.5, 0.7]])
    """
    _require_columns(long, ["field_id", "variable", "period_start", stat], "to_wide")
    dates = pd.to_datetime(long["period_start"], utc=True)
    frame = long[["field_id", "variable", stat]].assign(
        period_start=dates.dt.strftime("%Y-%m-%d"), _t=dates
    )
    columns = frame.sort_values("_t", kind="mergesort")["period_start"].drop_duplicates()
    wide = frame.pivot(index=["field_id", "variable"], columns="period_start", values=stat)
    wide = wide.reindex(columns=pd.Index(columns.to_list(), name="period_start"))
    return wide.sort_index()
