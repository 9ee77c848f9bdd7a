"""Region rollup kernels: mergeable pixel partials and field rollups.

- Partials: chunk/merge invariance (random orders, random binary trees), exactness of
  count/min/max/hist, moments against numpy, the quantile error guarantee against
  numpy's inverted-CDF (and linear) quantiles, exact binning at the edges, pickling.
- hypothesis properties: merge commutativity/associativity, the quantile bound on
  adversarial small inputs (duplicates, values on edges, under/overflow).
- field_rollup against a straightforward per-region loop with ``np.average``.
"""

from __future__ import annotations

import functools
import itertools
import math
import pickle

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelquery_batch.errors import SpecError
from pixelquery_batch.kernels.rollup import (
    DEFAULT_HISTOGRAMS,
    FIELD_ROLLUP_COLUMNS,
    INDEX_HISTOGRAM,
    REFLECTANCE_HISTOGRAM,
    HistogramSpec,
    Partial,
    field_rollup,
    histogram_for,
    merge_keyed,
    merge_partials,
)
from pixelquery_batch.kernels.stats import Moments

QS = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
STATS = ["count", "mean", "std", "min", "max", "sum", "p10", "median", "p90", "p99"]


def _values(rng: np.random.Generator, n: int = 120_000) -> np.ndarray:
    """NDVI-like values: normal + uniform, ~10% NaN, a few outside [-1, 1]."""
    v = np.concatenate([rng.normal(0.35, 0.2, n // 2), rng.uniform(-0.9, 0.95, n - n // 2)])
    v[rng.random(n) < 0.1] = np.nan
    out = rng.choice(n, 200, replace=False)
    v[out[:100]] = rng.uniform(-3.0, -1.0, 100)
    v[out[100:]] = rng.uniform(1.0, 2.5, 100)
    return rng.permutation(v)


def _chunks(rng: np.random.Generator, v: np.ndarray, n_chunks: int) -> list[np.ndarray]:
    cuts = np.sort(rng.integers(0, v.size + 1, n_chunks - 1))
    return np.split(v, cuts)  # some chunks may be empty


def _tree_merge(rng: np.random.Generator, parts: list[Partial]) -> Partial:
    """Merge as a random binary tree."""
    if len(parts) == 1:
        return parts[0]
    k = int(rng.integers(1, len(parts)))
    left, right = _tree_merge(rng, parts[:k]), _tree_merge(rng, parts[k:])
    return left.merge(right) if rng.random() < 0.5 else right.merge(left)


def _assert_same(a: Partial, b: Partial, rtol: float = 1e-12) -> None:
    """Exact equality of hist/count/min/max, moments to ``rtol``."""
    assert a.spec == b.spec
    np.testing.assert_array_equal(a.hist, b.hist)
    assert a.moments.count == b.moments.count
    np.testing.assert_array_equal([a.moments.min, a.moments.max], [b.moments.min, b.moments.max])
    for name in ("sum", "m2", "mean", "std"):
        x, y = getattr(a.moments, name), getattr(b.moments, name)
        assert x == pytest.approx(y, rel=rtol, abs=0 if y != 0 else 1e-300), name


def _inverted_cdf(valid: np.ndarray, q: float) -> float:
    return float(np.quantile(valid, q, method="inverted_cdf"))


# --------------------------------------------------------------------------- spec


def test_histogram_specs() -> None:
    assert histogram_for("ndvi") == INDEX_HISTOGRAM == HistogramSpec(-1.0, 1.0, 4000)
    assert histogram_for("NBR") is DEFAULT_HISTOGRAMS["nbr"]
    for name in ("ndwi", "ndmi", "evi", "savi"):
        assert histogram_for(name) == INDEX_HISTOGRAM
    assert histogram_for("red") == REFLECTANCE_HISTOGRAM == HistogramSpec(-0.5, 1.5, 4000)
    assert histogram_for("ndvi", (0, 10, 5)) == HistogramSpec(0.0, 10.0, 5)
    spec = INDEX_HISTOGRAM
    assert spec.width == 0.0005
    assert spec.edges.size == 4001 and spec.edges[0] == -1.0 and spec.edges[-1] == 1.0
    assert spec.width <= spec.error_bound() <= spec.width * (1 + 1e-9)
    assert spec.error_bound() == np.max(np.diff(spec.edges))
    for bad in [(1.0, 1.0, 10), (0.0, 1.0, 0), (0.0, math.inf, 3), (0.0, 1.0, 2.5), ("a", 1, 2)]:
        with pytest.raises(SpecError):
            HistogramSpec(*bad)
    with pytest.raises(SpecError):
        histogram_for("ndvi", (0, 1))  # type: ignore[arg-type]


def test_binning_is_exact_at_edges() -> None:
    spec = HistogramSpec(-0.3, 0.7, 7)  # edges are not exactly representable multiples
    e = spec.edges
    v = np.concatenate([
        e, np.nextafter(e, -np.inf), np.nextafter(e, np.inf), [-5.0, 5.0, np.inf, -np.inf]
    ])
    p = Partial.from_values(v, spec)
    finite = v[np.isfinite(v)]
    inside = finite[(finite >= spec.lo) & (finite <= spec.hi)]
    expect = np.histogram(inside, bins=e)[0]  # numpy: half-open bins, last closed
    np.testing.assert_array_equal(p.hist[1:-1], expect)
    assert p.hist[0] == np.sum(finite < spec.lo) == 2
    assert p.hist[-1] == np.sum(finite > spec.hi) == 2
    assert p.count == finite.size
    # the bin of each value contains it
    for x in inside:
        k = int(np.flatnonzero(Partial.from_values(np.array([x]), spec).hist)[0])
        assert e[k - 1] <= x <= e[k]


def test_compiled_runs_equal_numpy() -> None:
    """The compiled one-pass kernel (rollup units) against numpy itself on every run:
    ``np.histogram`` on the same edges (values on and next to edges, outside the range,
    ±inf, NaN), counts, min/max exact; sum and M2 against ``np.sum`` to 1e-12; empty
    and all-NaN runs; and equal to :meth:`Partial.from_values` of each run."""
    rng = np.random.default_rng(3)
    spec = HistogramSpec(-0.3, 0.7, 7)
    e = spec.edges
    tricky = np.concatenate([e, np.nextafter(e, -np.inf), np.nextafter(e, np.inf),
                             [-5.0, 5.0, np.inf, -np.inf, np.nan]])
    v = np.concatenate([rng.permutation(tricky), _values(rng, 50_000) * 0.5, [np.nan] * 9])
    bounds = np.array([0, 0, tricky.size, tricky.size + 7, 20_000, 20_000, v.size - 9, v.size])
    parts = Partial.from_runs(v, bounds, spec)
    assert len(parts) == bounds.size - 1
    for (a, b), part in zip(itertools.pairwise(bounds), parts, strict=True):
        run = v[a:b]
        finite = run[np.isfinite(run)]
        inside = finite[(finite >= spec.lo) & (finite <= spec.hi)]
        np.testing.assert_array_equal(part.hist[1:-1], np.histogram(inside, bins=e)[0])
        assert part.hist[0] == np.sum(finite < spec.lo) and part.hist[-1] == np.sum(finite > spec.hi)
        assert part.count == finite.size
        if finite.size:
            assert (part.moments.min, part.moments.max) == (finite.min(), finite.max())
            assert part.moments.sum == pytest.approx(np.sum(finite), rel=1e-12, abs=1e-12)
            m2 = np.sum(np.square(finite - finite.mean()))
            assert part.moments.m2 == pytest.approx(m2, rel=1e-12, abs=1e-12)
            _assert_same(part, Partial.from_values(run, spec))
        else:
            assert math.isnan(part.moments.min) and math.isnan(part.moments.max)
            assert part.moments.sum == 0.0 == part.moments.m2
            np.testing.assert_array_equal(part.hist, Partial.empty(spec).hist)
    # the NDVI histogram over a large run: one pass equals numpy's dozen
    big = _values(rng, 400_000)
    (one,) = Partial.from_runs(big, [0, big.size], INDEX_HISTOGRAM)
    _assert_same(one, Partial.from_values(big, INDEX_HISTOGRAM), rtol=1e-11)
    with pytest.raises(ValueError, match="bounds must ascend"):
        Partial.from_runs(big, [0, 10, 5], INDEX_HISTOGRAM)
    with pytest.raises(ValueError, match="bounds must ascend"):
        Partial.from_runs(big, [0, big.size + 1], INDEX_HISTOGRAM)


# --------------------------------------------------------------------------- merge invariance


def test_chunked_merges_equal_single_pass() -> None:
    rng = np.random.default_rng(42)
    v = _values(rng)
    spec = INDEX_HISTOGRAM
    single = Partial.from_values(v, spec)
    valid = v[np.isfinite(v)]
    assert single.count == valid.size
    np.testing.assert_array_equal(
        single.hist[1:-1], np.histogram(valid[(valid >= -1) & (valid <= 1)], bins=spec.edges)[0]
    )
    for n_chunks in (2, 17, 97):
        parts = [Partial.from_values(c, spec) for c in _chunks(rng, v, n_chunks)]
        order = rng.permutation(len(parts))
        folded = functools.reduce(Partial.merge, [parts[i] for i in order])
        _assert_same(folded, single)
        _assert_same(merge_partials(parts[i] for i in rng.permutation(len(parts))), single)
        for _ in range(3):
            _assert_same(_tree_merge(rng, [parts[i] for i in rng.permutation(len(parts))]), single)
    # 2-d blocks as a task would see them
    blocks = [Partial.from_values(b, spec) for b in np.array_split(v.reshape(400, -1), 7, axis=1)]
    _assert_same(merge_partials(blocks), single)


def test_finalize_matches_numpy() -> None:
    rng = np.random.default_rng(7)
    v = _values(rng)
    spec = INDEX_HISTOGRAM
    parts = [Partial.from_values(c, spec) for c in _chunks(rng, v, 31)]
    merged = _tree_merge(rng, parts)
    valid = v[np.isfinite(v)]
    out = merged.finalize(STATS)
    assert list(out) == [*STATS, "quantile_error_bound"]
    assert out["count"] == valid.size
    assert out["min"] == valid.min() and out["max"] == valid.max()
    for name, exact in [("mean", np.mean(valid)), ("std", np.std(valid)), ("sum", np.sum(valid))]:
        assert out[name] == pytest.approx(exact, rel=1e-9), name
    # every requested quantile here lies inside [lo, hi]: the bound is one bin width
    assert out["quantile_error_bound"] == spec.error_bound()
    for name, q in [("p10", 0.1), ("median", 0.5), ("p90", 0.9), ("p99", 0.99)]:
        assert abs(out[name] - _inverted_cdf(valid, q)) <= spec.error_bound(), name
        # numpy's default linear percentile: off by at most the gap to the next value
        srt = np.sort(valid)
        j = math.floor(q * (valid.size - 1))
        gap = srt[min(j + 1, srt.size - 1)] - srt[j]
        linear = np.percentile(valid, q * 100)
        assert abs(out[name] - linear) <= spec.error_bound() + gap, name


def test_quantile_bounds_inside_and_outside_range() -> None:
    rng = np.random.default_rng(3)
    spec = HistogramSpec(0.0, 1.0, 50)
    v = np.concatenate([rng.uniform(0, 1, 5000), rng.uniform(-2, 0, 800), rng.uniform(1, 4, 800)])
    p = merge_partials(Partial.from_values(c, spec) for c in _chunks(rng, rng.permutation(v), 9))
    qs = np.linspace(0, 1, 201)
    est, bound = p.quantiles(qs)
    for q, e, b in zip(qs, est, bound, strict=True):
        exact = _inverted_cdf(v, q)
        assert abs(e - exact) <= b
        assert v.min() <= e <= v.max()
        if q in (0.0, 1.0):
            assert b == 0.0
        elif exact < spec.lo:
            assert b == spec.lo - v.min()
        elif exact > spec.hi:
            assert b == v.max() - spec.hi
        else:
            assert b == spec.error_bound()
    out = p.finalize(["p1", "median", "p99"])
    assert out["quantile_error_bound"] == max(spec.lo - v.min(), v.max() - spec.hi)
    assert p.finalize(["median"])["quantile_error_bound"] == spec.error_bound()
    assert "quantile_error_bound" not in p.finalize(["mean", "count"])


def test_quantiles_in_one_bin_clamped_to_min_max() -> None:
    spec = INDEX_HISTOGRAM
    p = Partial.from_values(np.array([0.30001, 0.30002, 0.30003]), spec)
    out = p.finalize(["p1", "median", "p99"])
    for name in ("p1", "median", "p99"):
        assert 0.30001 <= out[name] <= 0.30003
    one = Partial.from_values(np.array([0.123]), spec).finalize(["median", "p1", "p99", "std"])
    assert one == {"median": 0.123, "p1": 0.123, "p99": 0.123, "std": 0.0,
                   "quantile_error_bound": spec.error_bound()}


# --------------------------------------------------------------------------- edge cases


def test_empty_partials() -> None:
    spec = INDEX_HISTOGRAM
    empty = Partial.empty(spec)
    nan_only = Partial.from_values(np.full((3, 3), np.nan), spec)
    p = Partial.from_values(np.array([0.1, 0.2]), spec)
    for e in (empty, nan_only):
        assert e.count == 0 and e.hist.sum() == 0
        _assert_same(e.merge(p), p)
        _assert_same(p.merge(e), p)
        out = e.finalize(["count", "mean", "std", "min", "max", "sum", "median"])
        assert out["count"] == 0.0
        assert all(math.isnan(out[k]) for k in out if k != "count")
        assert np.isnan(e.quantiles([0.5])[0]).all()
    assert merge_partials([], spec=spec).count == 0
    with pytest.raises(ValueError, match="at least one"):
        merge_partials([])


def test_invalid_mask_and_errors() -> None:
    spec = INDEX_HISTOGRAM
    v = np.array([[0.1, 0.2], [0.3, np.inf]])
    p = Partial.from_values(v, spec, invalid=np.array([[False, True], [False, False]]))
    assert p.count == 2 and p.moments.max == 0.3
    with pytest.raises(ValueError, match="shape"):
        Partial.from_values(v, spec, invalid=np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="different histograms"):
        p.merge(Partial.empty(REFLECTANCE_HISTOGRAM))
    with pytest.raises(ValueError, match="different histograms"):
        merge_partials([p, Partial.empty(REFLECTANCE_HISTOGRAM)])
    with pytest.raises(SpecError, match="valid_fraction"):
        p.finalize(["valid_fraction"])
    with pytest.raises(SpecError, match="unknown statistic"):
        p.finalize(["p100"])
    with pytest.raises(ValueError, match="between 0 and 1"):
        p.quantiles([1.5])
    with pytest.raises(ValueError, match="does not match"):
        Partial(Moments(count=3.0), np.zeros(spec.bins + 2, dtype=np.int64), spec)
    with pytest.raises(ValueError, match="entries"):
        Partial(Moments(), np.zeros(5, dtype=np.int64), spec)


def test_partials_pickle_and_are_immutable() -> None:
    spec = INDEX_HISTOGRAM
    p = Partial.from_values(np.linspace(-0.5, 0.5, 1001), spec)
    q = pickle.loads(pickle.dumps(p))
    _assert_same(q, p, rtol=0)
    assert len(pickle.dumps(p)) < 40_000
    with pytest.raises(ValueError, match="read-only"):
        p.hist[0] = 1
    m = p.merge(q)
    assert not m.hist.flags.writeable
    assert q.hist.sum() == p.count  # merge did not modify its inputs
    own = np.zeros(spec.bins + 2, dtype=np.int64)
    Partial(Moments(), own, spec)
    own[0] = 1  # the caller's array was copied, not frozen


def test_merge_keyed_tree_reduce() -> None:
    rng = np.random.default_rng(11)
    spec = INDEX_HISTOGRAM
    keys = [(r, "2024-01-01", "ndvi") for r in ("a", "b", "c")]
    pixels = {k: rng.normal(0.3, 0.2, 3000) for k in keys}
    # each "task" sees a block of pixels of some regions
    tasks: list[dict] = []
    for i in range(12):
        task = {}
        for k in keys:
            if rng.random() < 0.7:
                task[k] = Partial.from_values(np.array_split(pixels[k], 12)[i], spec)
        tasks.append(task)
    for k in keys:  # blocks not covered by any task above
        rest = [np.array_split(pixels[k], 12)[i] for i in range(12) if k not in tasks[i]]
        if rest:
            tasks.append({k: Partial.from_values(np.concatenate(rest), spec)})
    snapshot = {id(t): dict(t) for t in tasks}

    def tree(ds: list[dict]) -> dict:
        if len(ds) == 1:
            return ds[0]
        mid = len(ds) // 2
        return merge_keyed(tree(ds[:mid]), tree(ds[mid:]))

    for result in (tree(tasks), functools.reduce(merge_keyed, reversed(tasks))):
        assert set(result) == set(keys)
        for k in keys:
            _assert_same(result[k], Partial.from_values(pixels[k], spec))
    assert all(snapshot[id(t)] == t for t in tasks)  # inputs untouched


# --------------------------------------------------------------------------- hypothesis

_spec = st.builds(
    HistogramSpec,
    st.sampled_from([-1.0, -0.3, 0.0]),
    st.sampled_from([0.5, 1.0, 2.7]),
    st.integers(1, 12),
)


@st.composite
def _arrays(draw: st.DrawFn, spec: HistogramSpec) -> np.ndarray:
    pool = [*spec.edges.tolist(), spec.lo - 1.5, spec.hi + 0.75, math.nan]
    elems = st.one_of(
        st.sampled_from(pool), st.floats(-3, 4, allow_nan=False, allow_infinity=False)
    )
    return np.array(draw(st.lists(elems, max_size=40)), dtype=np.float64)


@st.composite
def _spec_and_arrays(draw: st.DrawFn, n: int) -> tuple[HistogramSpec, list[np.ndarray]]:
    spec = draw(_spec)
    return spec, [draw(_arrays(spec)) for _ in range(n)]


@settings(max_examples=60, deadline=None)
@given(_spec_and_arrays(3))
def test_merge_commutative_associative(data: tuple[HistogramSpec, list[np.ndarray]]) -> None:
    spec, arrays = data
    a, b, c = (Partial.from_values(x, spec) for x in arrays)
    ab, ba = a.merge(b), b.merge(a)
    # exactly commutative, including the float moments
    np.testing.assert_array_equal(ab.hist, ba.hist)
    assert [ab.moments.count, ab.moments.sum, ab.moments.m2] == [
        ba.moments.count, ba.moments.sum, ba.moments.m2]
    left, right = ab.merge(c), a.merge(b.merge(c))
    whole = Partial.from_values(np.concatenate(arrays), spec)
    for p in (left, right):
        np.testing.assert_array_equal(p.hist, whole.hist)
        assert p.moments.count == whole.moments.count
        np.testing.assert_array_equal([p.moments.min, p.moments.max],
                                      [whole.moments.min, whole.moments.max])
        assert p.moments.sum == pytest.approx(whole.moments.sum, rel=1e-12, abs=1e-12)
        assert p.moments.m2 == pytest.approx(whole.moments.m2, rel=1e-9, abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(_spec_and_arrays(2), st.lists(st.floats(0, 1), min_size=1, max_size=5))
def test_quantile_error_bound_property(
    data: tuple[HistogramSpec, list[np.ndarray]], qs: list[float]
) -> None:
    spec, arrays = data
    p = Partial.from_values(arrays[0], spec).merge(Partial.from_values(arrays[1], spec))
    valid = np.concatenate(arrays)
    valid = valid[np.isfinite(valid)]
    qs = [*qs, 0.5, 0.01, 0.99]
    est, bound = p.quantiles(qs)
    if valid.size == 0:
        assert np.isnan(est).all()
        return
    for q, e, b in zip(qs, est, bound, strict=True):
        exact = _inverted_cdf(valid, q)
        assert abs(e - exact) <= b
        assert valid.min() <= e <= valid.max()
        if spec.lo <= exact <= spec.hi and 0 < q < 1:
            assert b == spec.error_bound()


# --------------------------------------------------------------------------- field rollup


def _field_data(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    fields = [f"f{i}" for i in range(12)]
    assignment = pd.DataFrame({
        "field_id": fields,
        "region_id": ["A"] * 5 + ["B"] * 5 + [None, "A"],  # f10 outside every region
        "area_m2": rng.uniform(1e3, 5e4, len(fields)),
    })
    periods = pd.date_range("2024-01-01", periods=3, freq="MS")
    rows = []
    for variable in ("ndvi", "ndwi"):
        for start in periods:
            for f in [*fields, "f_unassigned"]:
                if f == "f11" and start == periods[1]:
                    continue  # no row at all for this field and period
                count = float(rng.integers(0, 3) * rng.integers(1, 50))  # ~1/3 zero
                mean = float(rng.uniform(-0.2, 0.9)) if count > 0 else math.nan
                rows.append({"field_id": f, "variable": variable, "period_start": start,
                             "period_end": start + pd.offsets.MonthEnd(0), "mean": mean,
                             "median": mean + 0.01 if count > 0 else math.nan, "count": count})
    fs = pd.DataFrame(rows)
    # make one period have no observed field in region B
    sel = (fs["variable"] == "ndwi") & (fs["period_start"] == periods[2]) & fs["field_id"].isin(
        ["f5", "f6", "f7", "f8", "f9"])
    fs.loc[sel, ["count", "mean", "median"]] = [0.0, math.nan, math.nan]
    return fs, assignment


def _reference(fs: pd.DataFrame, assignment: pd.DataFrame, regions: list[str],
               threshold: float | None, stat: str) -> pd.DataFrame:
    rows = []
    periods = fs[["variable", "period_start", "period_end"]].drop_duplicates()
    for region in regions:
        members = assignment[assignment["region_id"] == region]
        for _, per in periods.iterrows():
            sel = fs[(fs["variable"] == per["variable"])
                     & (fs["period_start"] == per["period_start"])
                     & fs["field_id"].isin(members["field_id"])
                     & (fs["count"] > 0)]
            area = members.set_index("field_id").loc[sel["field_id"], "area_m2"].to_numpy()
            x = sel[stat].to_numpy()
            n = len(x)
            rows.append({
                "region_id": region, **per.to_dict(),
                "fields_total": len(members),
                "fields_observed": n,
                "area_weighted_mean": np.average(x, weights=area) if n else math.nan,
                "mean_of_fields": np.mean(x) if n else math.nan,
                "median_of_fields": np.median(x) if n else math.nan,
                "share_above": np.mean(x > threshold) if n and threshold is not None else math.nan,
                "observed_area_m2": float(area.sum()),
                "count": float(sel["count"].sum()),
            })
    ref = pd.DataFrame(rows)
    return ref.sort_values(["region_id", "variable", "period_start"]).reset_index(drop=True)


@pytest.mark.parametrize(("threshold", "stat"), [(0.4, "mean"), (None, "median")])
def test_field_rollup_matches_reference(threshold: float | None, stat: str) -> None:
    rng = np.random.default_rng(5)
    fs, assignment = _field_data(rng)
    out = field_rollup(fs, assignment, threshold=threshold, stat=stat, regions=["C", "A"])
    assert list(out.columns) == list(FIELD_ROLLUP_COLUMNS)
    ref = _reference(fs, assignment, ["A", "B", "C"], threshold, stat)
    assert len(out) == 3 * 2 * 3
    pd.testing.assert_frame_equal(
        out, ref[list(FIELD_ROLLUP_COLUMNS)], check_dtype=False, rtol=1e-12, atol=0
    )
    assert out["fields_total"].dtype == np.int64 and out["fields_observed"].dtype == np.int64
    c = out[out["region_id"] == "C"]
    assert (c["fields_total"] == 0).all() and (c["fields_observed"] == 0).all()
    assert (c["count"] == 0).all() and (c["observed_area_m2"] == 0).all()
    assert c["area_weighted_mean"].isna().all()
    empty_b = out[(out["region_id"] == "B") & (out["fields_observed"] == 0)]
    assert len(empty_b) == 1 and empty_b["fields_total"].iloc[0] == 5
    if threshold is None:
        assert out["share_above"].isna().all()
    else:
        assert out.loc[out["fields_observed"] > 0, "share_above"].between(0, 1).all()


def test_field_rollup_region_rows_and_errors() -> None:
    rng = np.random.default_rng(9)
    fs, assignment = _field_data(rng)
    # a region declared by an assignment row without a field
    declared = pd.concat([assignment, pd.DataFrame(
        {"field_id": [None], "region_id": ["D"], "area_m2": [math.nan]})], ignore_index=True)
    out = field_rollup(fs, declared)
    assert sorted(out["region_id"].unique()) == ["A", "B", "D"]
    assert (out.loc[out["region_id"] == "D", "fields_total"] == 0).all()
    # integer region ids
    ints = assignment.assign(region_id=assignment["region_id"].map({"A": 1, "B": 2}))
    out = field_rollup(fs, ints, regions=[3])
    assert sorted(out["region_id"].unique()) == [1, 2, 3]
    # no field results at all: empty frame with the columns
    out = field_rollup(fs.iloc[:0], assignment)
    assert out.empty and list(out.columns) == list(FIELD_ROLLUP_COLUMNS)
    with pytest.raises(SpecError, match="p90"):
        field_rollup(fs, assignment, stat="p90")
    with pytest.raises(ValueError, match="more than once"):
        field_rollup(fs, pd.concat([assignment, assignment.iloc[:1]]))
    with pytest.raises(ValueError, match="more than one row"):
        field_rollup(pd.concat([fs, fs.iloc[:1]]), assignment)
    with pytest.raises(ValueError, match="area_m2"):
        field_rollup(fs, assignment.drop(columns="area_m2"))
