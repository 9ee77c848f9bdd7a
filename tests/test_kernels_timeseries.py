"""Tests for :mod:`pixelquery_batch.kernels.timeseries`.

The per-scene statistics table is built from random pixel arrays (several fields, the
variables ``ndvi`` and ``red``, ~20 acquisition dates, cloudy scenes with count 0 and
same-day scenes covering disjoint pixel sets). Expected values come from the pixel
arrays directly (numpy over the concatenated valid pixels of a day) and from a plain
pandas groupby over dates, never from the module under test.
"""

from __future__ import annotations

import doctest
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from pixelquery_batch.errors import SpecError
from pixelquery_batch.kernels import timeseries as ts
from pixelquery_batch.kernels.timeseries import (
    Period,
    composite,
    merge_same_day,
    parse_period,
    period_bins,
    to_wide,
)

START = "2024-04-03"  # a Wednesday: the first ISO week starts before the window
END = "2024-09-27"
STATS = ["mean", "std", "min", "max", "median", "sum", "p10", "p90"]
EXACT = ["mean", "std", "min", "max", "sum"]
QUANTILES = ["median", "p10", "p90"]
FIELD_PIXELS = {"F1": 60, "F2": 45, "F3": 80, "F4": 30}  # F4: always cloudy
VARIABLES = ("ndvi", "red")
KEY = ["field_id", "variable", "period_start"]


def _summary(v: np.ndarray) -> dict[str, float]:
    if v.size == 0:
        return dict.fromkeys(STATS, np.nan)
    return {
        "mean": float(np.mean(v)),
        "std": float(np.std(v)),
        "min": float(np.min(v)),
        "max": float(np.max(v)),
        "median": float(np.median(v)),
        "sum": float(np.sum(v)),
        "p10": float(np.percentile(v, 10)),
        "p90": float(np.percentile(v, 90)),
    }


@dataclass
class Synthetic:
    rows: pd.DataFrame
    #: (field_id, variable, date) -> list of (scene_id, datetime, valid pixel values)
    parts: dict[tuple[str, str, pd.Timestamp], list[tuple[str, pd.Timestamp, np.ndarray]]] = field(
        default_factory=dict
    )

    def reference_days(self) -> pd.DataFrame:
        """One row per field x variable x date, straight from the pixel arrays."""
        out = []
        for (fid, var, day), parts in self.parts.items():
            pixels = np.concatenate([p[2] for p in parts])
            # quantiles of the part with the most valid pixels (the first one on ties)
            largest = max(range(len(parts)), key=lambda i: (parts[i][2].size, -i))
            row = {
                "field_id": fid,
                "variable": var,
                "date": day,
                "datetime": min(p[1] for p in parts),
                "scene_id": "+".join(sorted(p[0] for p in parts)),
                "n_parts": len(parts),
                "n_valid_parts": sum(p[2].size > 0 for p in parts),
                **_summary(pixels),
                "count": float(pixels.size),
            }
            quantiles = _summary(parts[largest][2])
            row.update({q: quantiles[q] for q in QUANTILES})
            out.append(row)
        return (
            pd.DataFrame(out).sort_values(["field_id", "variable", "date"]).reset_index(drop=True)
        )


def make_synthetic(seed: int = 7) -> Synthetic:
    """Per-scene rows computed from random pixel arrays."""
    rng = np.random.default_rng(seed)
    season = pd.date_range(START, END, freq="D", tz="UTC")
    # no acquisition in July: a gap month for every field
    candidates = season[season.month != 7]
    days = pd.DatetimeIndex(np.sort(rng.choice(candidates, size=20, replace=False)))
    split_days = set(days[::3])  # on these dates fields are split over two tiles
    rows: list[dict[str, object]] = []
    data = Synthetic(rows=pd.DataFrame())
    for day in days:
        t0 = day + pd.Timedelta(hours=int(rng.integers(8, 12)), minutes=int(rng.integers(60)))
        doy = (day - season[0]).days
        for fid, n_pixels in FIELD_PIXELS.items():
            pixels = rng.permutation(n_pixels)
            if day in split_days:
                cut = int(rng.integers(5, n_pixels - 5))
                pieces = [pixels[:cut], pixels[cut:]]
            else:
                pieces = [pixels]
            green = 0.3 + 0.25 * np.sin(np.pi * doy / 180.0) + 0.1 * (fid == "F2")
            for k, piece in enumerate(pieces):
                scene_id = f"S2_{day:%Y%m%d}_T{k + 1}"
                when = t0 + pd.Timedelta(minutes=3 * k)
                n = piece.size
                nodata = rng.random(n) < 0.05
                if fid == "F4" or rng.random() < 0.25:
                    cloud = ~nodata  # fully cloudy
                else:
                    cloud = ~nodata & (rng.random(n) < rng.uniform(0.0, 0.4))
                valid = ~nodata & ~cloud
                red = rng.uniform(0.02, 0.15, n)
                nir = rng.uniform(0.8, 1.2, n) * green + 0.05
                ndvi = (nir - red) / (nir + red)
                for var, values in (("ndvi", ndvi), ("red", red)):
                    v = values[valid]
                    data.parts.setdefault((fid, var, day), []).append((scene_id, when, v))
                    rows.append(
                        {
                            "field_id": fid,
                            "scene_id": scene_id,
                            "datetime": when,
                            "variable": var,
                            **_summary(v),
                            "count": float(v.size),
                            "valid_fraction": v.size / n,
                            "pixel_count": float(n),
                            "nodata_count": float(nodata.sum()),
                            "cloud_count": float(cloud.sum()),
                            "snapshot_id": "snap1",
                            "job_hash": "abc",
                        }
                    )
    data.rows = pd.DataFrame(rows)
    return data


@pytest.fixture(scope="module")
def synth() -> Synthetic:
    return make_synthetic()


@pytest.fixture(scope="module")
def ref_days(synth: Synthetic) -> pd.DataFrame:
    return synth.reference_days()


# --------------------------------------------------------------------------- reference


def _naive(s: pd.Series) -> pd.Series:
    return s.dt.tz_convert("UTC").dt.tz_localize(None)


def reference_bins(period: str, ref: pd.DataFrame) -> pd.DatetimeIndex:
    """Bin starts (naive UTC dates) built with pandas date ranges."""
    if period == "month":
        return pd.date_range("2024-04-01", END, freq="MS")
    if period == "week":
        return pd.date_range("2024-04-01", END, freq="W-MON")  # Monday before START
    if period == "P10D":
        return pd.date_range(START, END, freq="10D")
    if period == "day":
        return pd.date_range(START, END, freq="D")
    if period == "scene":
        return pd.DatetimeIndex(sorted(_naive(ref["date"]).unique()))
    raise AssertionError(period)


def reference_bin_of(period: str, dates: pd.Series) -> pd.Series:
    d = _naive(dates)
    if period == "month":
        return d.dt.to_period("M").dt.start_time
    if period == "week":
        return d.dt.to_period("W-SUN").dt.start_time
    if period == "P10D":
        return pd.Timestamp(START) + ((d - pd.Timestamp(START)).dt.days // 10) * pd.Timedelta(
            days=10
        )
    return d


def reference_composite(period: str, aggregation: str, ref: pd.DataFrame) -> pd.DataFrame:
    days = ref.assign(period_start=reference_bin_of(period, ref["date"]))
    used = days[days["count"] > 0]
    if aggregation in ("mean", "median", "max", "min"):
        grouped = used.groupby(KEY)
        agg = grouped[STATS].agg(aggregation)
        agg["count"] = grouped["count"].sum()
        agg["n_scenes"] = grouped.size()
    elif aggregation == "last":
        agg = used.sort_values("datetime").groupby(KEY).tail(1).set_index(KEY)[[*STATS, "count"]]
        agg["n_scenes"] = 1
    else:  # max_ndvi
        ndvi = used[used["variable"] == "ndvi"]
        best = ndvi.loc[ndvi.groupby(["field_id", "period_start"])["mean"].idxmax()]
        chosen = used.merge(best[["field_id", "date"]], on=["field_id", "date"])
        agg = chosen.set_index(KEY)[[*STATS, "count"]]
        agg["n_scenes"] = 1
    pairs = ref[["field_id", "variable"]].drop_duplicates().sort_values(["field_id", "variable"])
    grid = pd.MultiIndex.from_tuples(
        [(f, v, b) for f, v in pairs.itertuples(index=False) for b in reference_bins(period, ref)],
        names=KEY,
    )
    out = agg.reindex(grid)
    out["count"] = out["count"].fillna(0.0)
    out["n_scenes"] = out["n_scenes"].fillna(0).astype(np.int64)
    return out.reset_index()


def assert_matches_reference(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert got[["field_id", "variable"]].to_numpy().tolist() == (
        expected[["field_id", "variable"]].to_numpy().tolist()
    )
    np.testing.assert_array_equal(
        _naive(got["period_start"]).to_numpy(), expected["period_start"].to_numpy()
    )
    for col in STATS:
        np.testing.assert_allclose(
            got[col].to_numpy(), expected[col].to_numpy(), rtol=1e-12, atol=1e-15, err_msg=col
        )
    np.testing.assert_allclose(got["count"].to_numpy(), expected["count"].to_numpy())
    np.testing.assert_array_equal(got["n_scenes"].to_numpy(), expected["n_scenes"].to_numpy())


# --------------------------------------------------------------------------- parse_period


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scene", Period("scene")),
        ("day", Period("day")),
        (" Week ", Period("week")),
        ("month", Period("month")),
        ("P10D", Period("duration", days=10)),
        ("P1D", Period("day")),
        ("P2W", Period("duration", days=14)),
        ("P1W", Period("duration", days=7)),
        ("P1M", Period("month")),
        ("P3M", Period("duration", months=3)),
        ("P1Y", Period("duration", months=12)),
        ("p10d", Period("duration", days=10)),
    ],
)
def test_parse_period_accepts(text: str, expected: Period) -> None:
    assert parse_period(text) == expected


@pytest.mark.parametrize(
    "text", ["P0D", "10 days", "fortnight", "", "P", "P1M10D", "PT6H", "P-1D", "P1.5M", "year"]
)
def test_parse_period_rejects(text: str) -> None:
    with pytest.raises(SpecError, match="P10D, P2W, P3M, P1Y"):
        parse_period(text)


def test_parse_period_rejects_non_string() -> None:
    with pytest.raises(SpecError):
        parse_period(10)  # type: ignore[arg-type]


def test_period_validates_itself() -> None:
    with pytest.raises(SpecError):
        Period("duration")
    with pytest.raises(SpecError):
        Period("duration", days=3, months=1)
    with pytest.raises(SpecError):
        Period("month", days=3)
    with pytest.raises(SpecError):
        Period("quarter")


# --------------------------------------------------------------------------- period_bins


@pytest.mark.parametrize("period", ["month", "week", "P10D", "day"])
def test_period_bins_match_pandas_ranges(period: str, ref_days: pd.DataFrame) -> None:
    bins = period_bins(parse_period(period), START, END)
    assert str(bins["period_start"].dt.tz) == "UTC"
    expected = reference_bins(period, ref_days)
    np.testing.assert_array_equal(_naive(bins["period_start"]).to_numpy(), expected.to_numpy())
    # inclusive ends: the day before the next start, the last bin reaches past END
    np.testing.assert_array_equal(
        (bins["period_end"] + pd.Timedelta(days=1)).to_numpy()[:-1],
        bins["period_start"].to_numpy()[1:],
    )
    assert bins["period_end"].iloc[-1] >= pd.Timestamp(END, tz="UTC")
    assert (bins["period_start"].dt.hour == 0).all()


def test_period_bins_details() -> None:
    week = period_bins(parse_period("week"), "2024-04-03", "2024-04-03")
    assert week["period_start"].tolist() == [pd.Timestamp("2024-04-01", tz="UTC")]
    assert week["period_end"].tolist() == [pd.Timestamp("2024-04-07", tz="UTC")]
    assert (week["period_start"].dt.day_of_week == 0).all()
    quarters = period_bins(parse_period("P3M"), "2024-02-10", "2025-01-05")
    assert [d.strftime("%Y-%m-%d") for d in quarters["period_start"]] == [
        "2024-01-01",
        "2024-04-01",
        "2024-07-01",
        "2024-10-01",
        "2025-01-01",
    ]
    assert quarters["period_end"].iloc[0] == pd.Timestamp("2024-03-31", tz="UTC")
    years = period_bins(parse_period("P1Y"), "2023-06-01", "2024-06-01")
    assert years["period_start"].dt.year.tolist() == [2023, 2024]
    assert years["period_end"].iloc[-1] == pd.Timestamp("2024-12-31", tz="UTC")
    p10 = period_bins(parse_period("P10D"), "2024-04-03", "2024-04-13")
    assert p10["period_start"].dt.day.tolist() == [3, 13]
    assert p10["period_end"].dt.day.tolist() == [12, 22]
    # tz-aware inputs are converted to UTC dates
    day = period_bins(
        parse_period("day"), pd.Timestamp("2024-04-03 01:00", tz="Europe/Berlin"), "2024-04-03"
    )
    assert day["period_start"].dt.day.tolist() == [2, 3]


def test_period_bins_scene(ref_days: pd.DataFrame, synth: Synthetic) -> None:
    times = synth.rows["datetime"]
    bins = period_bins(parse_period("scene"), START, END, scene_times=times)
    expected = reference_bins("scene", ref_days)
    np.testing.assert_array_equal(_naive(bins["period_start"]).to_numpy(), expected.to_numpy())
    assert (bins["period_start"] == bins["period_end"]).all()
    # the window clips scene dates; scene needs the times
    first_two = period_bins(parse_period("scene"), START, expected[1], scene_times=times)
    assert len(first_two) == 2
    with pytest.raises(ValueError, match="scene_times"):
        period_bins(parse_period("scene"), START, END)


def test_period_bins_rejects_reversed_window() -> None:
    with pytest.raises(SpecError, match="before it starts"):
        period_bins(parse_period("day"), END, START)


# --------------------------------------------------------------------------- merge_same_day


def test_synthetic_has_the_cases_we_need(ref_days: pd.DataFrame, synth: Synthetic) -> None:
    assert (ref_days["n_valid_parts"] >= 2).sum() >= 4  # exact merges of two valid parts
    assert ((ref_days["n_parts"] == 2) & (ref_days["n_valid_parts"] == 1)).any()
    assert (ref_days["count"] == 0).sum() >= 10  # cloudy days
    assert (synth.rows["count"] == 0).any()
    assert (ref_days.loc[ref_days["field_id"] == "F4", "count"] == 0).all()


def test_merge_same_day_exact(synth: Synthetic, ref_days: pd.DataFrame) -> None:
    merged = merge_same_day(synth.rows, STATS)
    assert len(merged) == len(ref_days)
    assert merged.columns.tolist() == [*synth.rows.columns, "approx_quantiles"]
    assert merged["field_id"].tolist() == ref_days["field_id"].tolist()
    assert merged["variable"].tolist() == ref_days["variable"].tolist()
    assert merged["scene_id"].tolist() == ref_days["scene_id"].tolist()
    assert (merged["datetime"] == ref_days["datetime"]).all()
    np.testing.assert_array_equal(merged["count"], ref_days["count"])
    for col in EXACT:
        np.testing.assert_allclose(merged[col], ref_days[col], rtol=1e-12, err_msg=col)
    for col in ("min", "max"):
        np.testing.assert_array_equal(merged[col], ref_days[col])
    for col in QUANTILES:  # from the part with the largest count
        np.testing.assert_array_equal(merged[col], ref_days[col])
    np.testing.assert_array_equal(
        merged["approx_quantiles"].to_numpy(), (ref_days["n_valid_parts"] >= 2).to_numpy()
    )
    field_size = merged["field_id"].map(FIELD_PIXELS).astype(float)
    np.testing.assert_array_equal(merged["pixel_count"], field_size)
    np.testing.assert_allclose(merged["valid_fraction"], ref_days["count"] / field_size)
    np.testing.assert_array_equal(
        merged["nodata_count"] + merged["cloud_count"] + merged["count"], field_size
    )
    assert (merged["snapshot_id"] == "snap1").all()


def test_merge_same_day_leaves_single_rows_alone(synth: Synthetic) -> None:
    merged = merge_same_day(synth.rows, STATS)
    singles = merged[~merged["scene_id"].str.contains("+", regex=False)]
    original = synth.rows.set_index(["field_id", "scene_id", "variable"])
    for col in [*STATS, "count", "valid_fraction", "pixel_count"]:
        expected = original.loc[
            list(zip(singles["field_id"], singles["scene_id"], singles["variable"], strict=True)),
            col,
        ].to_numpy()
        np.testing.assert_array_equal(singles[col].to_numpy(), expected, err_msg=col)
    assert not singles["approx_quantiles"].any()


def test_merge_same_day_std_from_sum_or_approx() -> None:
    a, b = np.array([1.0, 2.0, 4.0]), np.array([10.0, 11.0])
    rows = pd.DataFrame(
        {
            "field_id": ["f", "f"],
            "scene_id": ["s2", "s1"],
            "datetime": pd.to_datetime(["2024-05-01 10:03", "2024-05-01 10:00"]),  # naive: UTC
            "variable": ["x", "x"],
            "std": [a.std(), b.std()],
            "sum": [a.sum(), b.sum()],
            "count": [3.0, 2.0],
        }
    )
    merged = merge_same_day(rows, ["std", "sum"])
    both = np.concatenate([a, b])
    assert merged["std"].iloc[0] == pytest.approx(both.std(), rel=1e-12)
    assert merged["sum"].iloc[0] == both.sum()
    assert merged["scene_id"].iloc[0] == "s1+s2"
    assert merged["datetime"].iloc[0] == pd.Timestamp("2024-05-01 10:00", tz="UTC")
    assert not merged["approx_quantiles"].iloc[0]
    only_std = merge_same_day(rows.drop(columns="sum"), ["std"])
    assert only_std["std"].iloc[0] == a.std()  # the larger part's, flagged
    assert only_std["approx_quantiles"].iloc[0]


def test_merge_same_day_errors(synth: Synthetic) -> None:
    with pytest.raises(SpecError, match="unknown statistic"):
        merge_same_day(synth.rows, ["mean", "p100"])
    with pytest.raises(SpecError, match="p25"):
        merge_same_day(synth.rows, ["mean", "p25"])


# --------------------------------------------------------------------------- composite


@pytest.mark.parametrize("aggregation", ["mean", "median", "max", "min", "last", "max_ndvi"])
@pytest.mark.parametrize("period", ["month", "week", "P10D", "day", "scene"])
def test_composite_matches_pandas(
    synth: Synthetic, ref_days: pd.DataFrame, period: str, aggregation: str
) -> None:
    got = composite(
        synth.rows, parse_period(period), aggregation=aggregation, stats=STATS, start=START, end=END
    )
    assert got.columns.tolist()[:4] == ["field_id", "variable", "period_start", "period_end"]
    assert got.columns.tolist()[4:] == [*STATS, "count", "n_scenes", "filled", "approx_quantiles"]
    assert not got["filled"].any()
    assert_matches_reference(got, reference_composite(period, aggregation, ref_days))


def test_composite_gaps_are_explicit(synth: Synthetic, ref_days: pd.DataFrame) -> None:
    got = composite(synth.rows, "month", aggregation="mean", stats=STATS, start=START, end=END)
    n_bins = len(reference_bins("month", ref_days))
    assert len(got) == len(FIELD_PIXELS) * len(VARIABLES) * n_bins
    july = got[got["period_start"] == pd.Timestamp("2024-07-01", tz="UTC")]
    assert len(july) == len(FIELD_PIXELS) * len(VARIABLES)
    assert (july["count"] == 0).all()
    assert (july["n_scenes"] == 0).all()
    assert july[STATS].isna().all().all()
    never = got[got["field_id"] == "F4"]  # only cloudy observations
    assert len(never) == len(VARIABLES) * n_bins
    assert (never["n_scenes"] == 0).all()
    assert never["mean"].isna().all()
    assert got["period_end"].iloc[0] == pd.Timestamp("2024-04-30", tz="UTC")
    # deterministic order whatever the input order
    shuffled = synth.rows.sample(frac=1.0, random_state=3).reset_index(drop=True)
    again = composite(shuffled, "month", aggregation="mean", stats=STATS, start=START, end=END)
    pd.testing.assert_frame_equal(got, again)
    assert got.equals(got.sort_values(KEY, kind="mergesort").reset_index(drop=True))


def test_composite_includes_fields_without_any_observation(synth: Synthetic) -> None:
    rows = synth.rows.copy()
    ghost = rows[rows["field_id"] == "F1"].head(2).copy()
    ghost["field_id"] = "F0"
    ghost["datetime"] = pd.Timestamp("2023-01-01", tz="UTC")  # outside the window
    got = composite(
        pd.concat([rows, ghost]), "P10D", aggregation="max", stats=STATS, start=START, end=END
    )
    f0 = got[got["field_id"] == "F0"]
    assert (
        len(f0) == len(period_bins(parse_period("P10D"), START, END)) * ghost["variable"].nunique()
    )
    assert (f0["count"] == 0).all()


def test_composite_max_ndvi_picks_the_greenest_day(
    synth: Synthetic, ref_days: pd.DataFrame
) -> None:
    got = composite(synth.rows, "month", aggregation="max_ndvi", stats=STATS, start=START, end=END)
    may = pd.Timestamp("2024-05-01", tz="UTC")
    for fid in ("F1", "F2", "F3"):
        days = ref_days[
            (ref_days["field_id"] == fid)
            & (ref_days["date"].dt.month == 5)
            & (ref_days["count"] > 0)
        ]
        ndvi_days = days[days["variable"] == "ndvi"]
        best_day = ndvi_days.loc[ndvi_days["mean"].idxmax(), "date"]
        for var in VARIABLES:
            row = got[
                (got["field_id"] == fid) & (got["variable"] == var) & (got["period_start"] == may)
            ].iloc[0]
            want = days[(days["variable"] == var) & (days["date"] == best_day)].iloc[0]
            assert row["mean"] == pytest.approx(want["mean"], rel=1e-12)
            assert row["max"] == want["max"]
            assert row["count"] == want["count"]
        ndvi_row = got[
            (got["field_id"] == fid) & (got["variable"] == "ndvi") & (got["period_start"] == may)
        ].iloc[0]
        assert ndvi_row["mean"] == pytest.approx(ndvi_days["mean"].max(), rel=1e-12)


def test_composite_max_ndvi_needs_ndvi(synth: Synthetic) -> None:
    red = synth.rows[synth.rows["variable"] == "red"]
    with pytest.raises(SpecError, match="ndvi"):
        composite(red, "month", aggregation="max_ndvi", stats=STATS, start=START, end=END)
    renamed = synth.rows.replace({"variable": {"ndvi": "NDVI"}})
    got = composite(
        renamed,
        "month",
        aggregation="max_ndvi",
        stats=["mean"],
        start=START,
        end=END,
        ndvi_variable="NDVI",
    )
    assert (got["n_scenes"] > 0).any()


@pytest.mark.parametrize("period", ["month", "week", "P10D"])
def test_composite_linear_fill(synth: Synthetic, period: str) -> None:
    kwargs = {"aggregation": "mean", "stats": STATS, "start": START, "end": END}
    plain = composite(synth.rows, period, **kwargs)
    got = composite(synth.rows, period, fill="linear", **kwargs)
    pd.testing.assert_frame_equal(
        got[[*KEY, "count", "n_scenes"]], plain[[*KEY, "count", "n_scenes"]]
    )
    n_filled = 0
    for (_fid, _var), g in plain.groupby(["field_id", "variable"]):
        filled = got.loc[g.index]
        length = g["period_end"] + pd.Timedelta(days=1) - g["period_start"]
        mid = ((g["period_start"] + length / 2) - pd.Timestamp("2024-01-01", tz="UTC")).dt
        x = mid.total_seconds().to_numpy()
        valid = (g["n_scenes"] > 0).to_numpy()
        positions = np.arange(len(g))
        if valid.any():
            inside = (
                (~valid)
                & (positions > positions[valid].min())
                & (positions < positions[valid].max())
            )
        else:
            inside = np.zeros(len(g), bool)
        np.testing.assert_array_equal(filled["filled"].to_numpy(), inside)
        n_filled += int(inside.sum())
        for col in STATS:
            expected = g[col].to_numpy().copy()
            if inside.any():
                expected[inside] = np.interp(x[inside], x[valid], g[col].to_numpy()[valid])
            np.testing.assert_allclose(filled[col].to_numpy(), expected, rtol=1e-9, err_msg=col)
        # edges are not extrapolated
        assert np.isnan(filled[col].to_numpy()[~valid & ~inside]).all()
    assert n_filled > 0
    assert (got.loc[got["filled"], "count"] == 0).all()
    assert (got.loc[got["filled"], "n_scenes"] == 0).all()


def test_composite_rejects_unknown_options(synth: Synthetic) -> None:
    with pytest.raises(SpecError, match="max_ndvi"):
        composite(synth.rows, "month", aggregation="sum", stats=STATS, start=START, end=END)
    with pytest.raises(SpecError, match="linear"):
        composite(
            synth.rows,
            "month",
            aggregation="mean",
            stats=STATS,
            start=START,
            end=END,
            fill="spline",
        )
    with pytest.raises(SpecError, match="P10D"):
        composite(synth.rows, "fortnight", aggregation="mean", stats=STATS, start=START, end=END)


def test_composite_without_quantiles_has_no_approx_column(synth: Synthetic) -> None:
    got = composite(
        synth.rows, "week", aggregation="median", stats=["mean", "count"], start=START, end=END
    )
    assert got.columns.tolist() == [*KEY, "period_end", "mean", "count", "n_scenes", "filled"]


def test_composite_empty_input(synth: Synthetic) -> None:
    got = composite(
        synth.rows.iloc[:0], "month", aggregation="max_ndvi", stats=STATS, start=START, end=END
    )
    assert got.empty
    assert "mean" in got.columns


# --------------------------------------------------------------------------- to_wide


def test_to_wide_shape(synth: Synthetic) -> None:
    long = composite(synth.rows, "month", aggregation="mean", stats=STATS, start=START, end=END)
    wide = to_wide(long)
    assert wide.shape == (len(FIELD_PIXELS) * len(VARIABLES), 6)
    assert wide.columns.tolist() == [
        "2024-04-01",
        "2024-05-01",
        "2024-06-01",
        "2024-07-01",
        "2024-08-01",
        "2024-09-01",
    ]
    assert wide.index.names == ["field_id", "variable"]
    assert (
        wide.loc[("F1", "ndvi"), "2024-05-01"]
        == long[
            (long["field_id"] == "F1")
            & (long["variable"] == "ndvi")
            & (long["period_start"] == pd.Timestamp("2024-05-01", tz="UTC"))
        ]["mean"].iloc[0]
    )
    counts = to_wide(long, stat="n_scenes")
    assert counts.to_numpy().sum() == long["n_scenes"].sum()
    with pytest.raises(SpecError, match="p42"):
        to_wide(long, stat="p42")


def test_doctests() -> None:
    result = doctest.testmod(ts, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
