"""Band math: allowlisted parsing, numpy evaluation and NaN propagation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pixelquery_batch.errors import ExpressionError, SpecError
from pixelquery_batch.expr import (
    BUILTIN_INDICES,
    Expression,
    check_name,
    parse_expression,
    resolve_index,
)


@pytest.fixture
def env() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    bands = ("red", "nir", "blue", "green", "swir1", "swir2")
    return {b: rng.uniform(0.01, 1.0, size=(16, 16)) for b in bands}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(nir - red) / (nir + red)", lambda e: (e["nir"] - e["red"]) / (e["nir"] + e["red"])),
        ("-nir + +red", lambda e: -e["nir"] + e["red"]),
        ("nir ** 2 - red ** 0.5", lambda e: e["nir"] ** 2 - e["red"] ** 0.5),
        ("2.5 * nir / 4", lambda e: 2.5 * e["nir"] / 4),
        ("nir > red", lambda e: (e["nir"] > e["red"]).astype(float)),
        ("0.2 <= nir < 0.7", lambda e: ((e["nir"] >= 0.2) & (e["nir"] < 0.7)).astype(float)),
        ("(nir > 0.5) & (red < 0.5)", lambda e: ((e["nir"] > 0.5) & (e["red"] < 0.5)) * 1.0),
        ("(nir > 0.5) | (red < 0.5)", lambda e: ((e["nir"] > 0.5) | (e["red"] < 0.5)) * 1.0),
        ("~(nir == red) & (nir != 0.3)", lambda e: ((e["nir"] != e["red"]) & (e["nir"] != 0.3)) * 1.0),
        ("where(nir > red, nir, -red)", lambda e: np.where(e["nir"] > e["red"], e["nir"], -e["red"])),
        ("clip(nir * 2, 0.1, 0.9)", lambda e: np.clip(e["nir"] * 2, 0.1, 0.9)),
        ("abs(nir - red)", lambda e: np.abs(e["nir"] - e["red"])),
        ("sqrt(nir) + log(red) - log10(blue)", lambda e: np.sqrt(e["nir"]) + np.log(e["red"]) - np.log10(e["blue"])),
        ("exp(-nir)", lambda e: np.exp(-e["nir"])),
        ("minimum(nir, red) / maximum(nir, red)", lambda e: np.minimum(e["nir"], e["red"]) / np.maximum(e["nir"], e["red"])),
        ("(nir > 0.5) * 10 + 1", lambda e: (e["nir"] > 0.5) * 10.0 + 1),
    ],
)
def test_evaluate_matches_numpy(text, expected, env):
    result = parse_expression(text).evaluate(env)
    assert result.dtype == np.float64
    assert result.shape == (16, 16)
    np.testing.assert_allclose(result, expected(env))


def test_names_and_identity():
    expr = parse_expression("where(nir > 0, nir / red, 0)", name="ratio")
    assert expr.names == frozenset({"nir", "red"})
    assert expr.name == "ratio"
    red = np.array([1.0, np.inf])
    out = parse_expression("red", name="red").evaluate({"red": red})
    assert out is not red
    np.testing.assert_array_equal(out, [1.0, np.nan])


def test_division_by_zero_and_nan_propagate():
    env = {"nir": np.array([0.0, 0.5, np.nan, 0.5, -1.0]), "red": np.array([0.0, 0.5, 0.2, np.nan, 0.0])}
    ndvi = resolve_index("ndvi", "builtin").evaluate(env)
    np.testing.assert_array_equal(ndvi, [np.nan, 0.0, np.nan, np.nan, 1.0])
    assert np.isnan(parse_expression("1 / (nir - nir)").evaluate(env)).all()
    # inf in an intermediate step is invalid, not a number to keep computing with
    np.testing.assert_array_equal(parse_expression("1 / (1 / red)").evaluate(env)[:2], [np.nan, 0.5])
    logs = parse_expression("log(nir) + sqrt(nir)").evaluate(env)
    assert np.isnan(logs[[0, 2, 4]]).all()
    # comparisons and where with an invalid operand stay invalid
    np.testing.assert_array_equal(
        parse_expression("where(nir > 0.1, 1, 0)").evaluate(env), [0, 1, np.nan, 1, 0]
    )
    np.testing.assert_array_equal(
        parse_expression("(nir > 0.1) | (red > 0.1)").evaluate(env), [0, 1, np.nan, np.nan, 0]
    )


def test_inputs_declared_finite_give_the_same_results():
    """Integer bands' values hold no infinity, so ``finite`` names skip the scan; what the
    expression itself makes infinite (a division by zero, an overflow) is still NaN."""
    rng = np.random.default_rng(3)
    raw = {"nir": rng.integers(0, 4, 1000).astype(np.uint16),
           "red": rng.integers(0, 4, 1000).astype(np.uint16)}
    env = {k: v * 0.0001 - 0.0001 for k, v in raw.items()}  # offset: zeros, negatives
    env["red"][::7] = np.nan  # nodata
    for text in ("(nir - red) / (nir + red)", "nir / red", "nir * 1e308 * 10 + red",
                 "sqrt(nir) - red", "where(nir > red, nir, 1 / red)"):
        expr = parse_expression(text, name="v")
        got = expr.evaluate(env, finite={"nir", "red"})
        np.testing.assert_array_equal(got, expr.evaluate(env))
        assert not np.isinf(got).any(), text
    with np.errstate(all="ignore"):
        ref = (env["nir"] - env["red"]) / (env["nir"] + env["red"])
    ref[np.isinf(ref)] = np.nan
    ndvi = parse_expression("(nir - red) / (nir + red)").evaluate(env, finite={"nir", "red"})
    np.testing.assert_array_equal(ndvi, ref)
    den = env["nir"] + env["red"]
    assert ((den == 0) & (env["nir"] != env["red"])).any()  # x / 0 happens: inf made NaN


def test_scalars_and_broadcasting():
    assert float(parse_expression("2").evaluate({})) == 2.0
    assert np.isnan(parse_expression("1 / 0").evaluate({}))
    out = parse_expression("nir * 2 + red").evaluate({"nir": np.ones((2, 3)), "red": np.arange(3.0)})
    np.testing.assert_array_equal(out, [[2, 3, 4], [2, 3, 4]])
    ints = parse_expression("nir / red").evaluate({"nir": np.array([1, 2], np.uint16), "red": np.array([2, 0], np.uint16)})
    np.testing.assert_array_equal(ints, [0.5, np.nan])


def test_missing_band_names_available():
    expr = parse_expression("(nir - swir1) / (nir + swir1)", name="ndmi")
    with pytest.raises(ExpressionError, match=r"'swir1'.*available: nir, red"):
        expr.evaluate({"nir": np.ones(2), "red": np.ones(2)})


@pytest.mark.parametrize(
    ("text", "construct"),
    [
        ("__import__('os').system('x')", "function calls other than where, clip"),
        ("().__class__", "attribute access"),
        ("a.b", "attribute access"),
        ("a[0]", "subscripts"),
        ("lambda: 1", "lambda"),
        ("[x for x in y]", "comprehensions"),
        ('"str"', "strings"),
        ("True", "booleans"),
        ("None", "NoneType"),
        ("1j", "complex"),
        ("f(x)", "function calls other than"),
        ("nir and red", "'and'/'or'"),
        ("not nir", "'not'"),
        ("sqrt(x, y)", r"sqrt\(\) takes 1 argument \(got 2\)"),
        ("where(a, b)", r"where\(\) takes 3 arguments"),
        ("clip(x, lo=0, hi=1)", "keyword arguments"),
        ("sqrt(*x)", "starred"),
        ("a % 2", "'%'"),
        ("a // 2", "'//'"),
        ("a if b else c", "conditional"),
        ("f'{a}'", "f-strings"),
        ("_secret + 1", "starting with '_'"),
        ("(x := 1)", "assignment"),
        ("nir in red", "'in'"),
        ("where(nir, 1, 0)", "comparison"),
        ("nir & red", "comparison"),
        ("where + 1", "function"),
        ("1e999", "numbers this large"),
        ("nir -", "invalid syntax"),
        ("a" * 5000, "too long"),
        ("-" * 900 + "a", "too complex"),
    ],
)
def test_rejected(text, construct):
    with pytest.raises(ExpressionError, match=construct) as info:
        parse_expression(text, name="ndmi")
    assert isinstance(info.value, SpecError)
    assert isinstance(info.value, ValueError)
    assert info.value.message.startswith("ndmi: ")


def test_rejection_names_expression_and_column():
    with pytest.raises(ExpressionError) as info:
        parse_expression('nir + __import__("os")', name="ndmi")
    assert info.value.message == (
        "ndmi: '__import__(\"os\")' is not allowed: function calls other than where, clip, "
        "abs, sqrt, log, log10, exp, minimum, maximum (column 7)"
    )
    assert info.value.column == 7
    with pytest.raises(ExpressionError, match=r"column \d+"):
        parse_expression("(nir - red", name="x")


def test_builtins_resolve(env):
    for name, text in BUILTIN_INDICES.items():
        expr = resolve_index(name, "builtin")
        assert expr.name == name
        assert expr.text == text
        assert expr.evaluate(env).shape == (16, 16)
    custom = resolve_index("ratio", "nir / red")
    np.testing.assert_allclose(custom.evaluate(env), env["nir"] / env["red"])


def test_unknown_builtin_and_bad_names():
    with pytest.raises(ExpressionError, match=r"no builtin index 'foo' \(builtins: ndvi, evi"):
        resolve_index("foo", "builtin")
    for bad in ("2x", "a-b", "_x", "where", "lambda"):
        with pytest.raises(ExpressionError, match="cannot be used as a name"):
            check_name(bad)


def test_pickle_and_equality():
    expr = resolve_index("ndvi", "builtin")
    again = pickle.loads(pickle.dumps(expr))
    assert again == expr
    assert hash(again) == hash(expr)
    env = {"nir": np.array([0.6]), "red": np.array([0.2])}
    np.testing.assert_allclose(again.evaluate(env), [0.5])
    direct = Expression(name="ndvi", text=expr.text, names=frozenset())
    assert direct.names == frozenset({"nir", "red"})
    assert direct.evaluate(env)[0] == pytest.approx(0.5)


reflectance = hnp.arrays(
    np.float64,
    st.integers(1, 50),
    elements=st.one_of(
        st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False), st.just(np.nan)
    ),
)


@given(data=st.data())
def test_ndvi_bounded_or_nan(data):
    nir = data.draw(reflectance)
    red = data.draw(hnp.arrays(np.float64, nir.shape, elements=st.floats(0.0, 1e6)))
    ndvi = resolve_index("ndvi", "builtin").evaluate({"nir": nir, "red": red})
    valid = ~np.isnan(ndvi)
    assert np.all((ndvi[valid] >= -1.0) & (ndvi[valid] <= 1.0))
    assert np.isnan(ndvi[np.isnan(nir)]).all()
