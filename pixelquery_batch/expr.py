"""Band math: parse, validate and evaluate index expressions (kernel layer: numpy only).

An expression such as ``(nir - red) / (nir + red)`` is parsed once with
:func:`ast.parse` and checked against an allowlist: numbers, band names (or roles),
``+ - * / **``, unary ``-``/``+``, comparisons, ``&``/``|``/``~`` on comparisons and a
fixed table of functions (:data:`FUNCTIONS`). The checked tree is compiled into nested
closures over numpy functions, so evaluating never calls :func:`eval` or :func:`compile`.

Pixels are float64 with ``NaN`` meaning invalid (nodata, cloud, outside the field).
Every arithmetic step maps non-finite results (division by zero, ``log`` of a negative
number, overflow) to ``NaN``, so invalid pixels propagate as masked pixels. Comparisons
give truth values ``1.0``/``0.0``, or ``NaN`` when an operand is invalid; ``where`` with
an invalid condition gives ``NaN``.
"""

from __future__ import annotations

import ast
import keyword
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import ExpressionError

__all__ = [
    "BUILTIN_INDICES",
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_NODES",
    "Expression",
    "check_name",
    "parse_expression",
    "resolve_index",
]

#: Spectral indices available as ``<name>: builtin`` in a job spec.
BUILTIN_INDICES: dict[str, str] = {
    "ndvi": "(nir - red) / (nir + red)",
    "evi": "2.5 * (nir - red) / (nir + 6 * red - 7.5 * blue + 1)",
    "ndwi": "(green - nir) / (green + nir)",
    "savi": "1.5 * (nir - red) / (nir + red + 0.5)",
    "ndmi": "(nir - swir1) / (nir + swir1)",
    "nbr": "(nir - swir2) / (nir + swir2)",
}

#: Longest accepted expression text, in characters.
MAX_LENGTH = 1000
#: Most AST nodes an expression may have.
MAX_NODES = 500
#: Deepest nesting of AST nodes an expression may have.
MAX_DEPTH = 64

_Value = np.ndarray  # float64 array (0-d for scalars)
_Fn = Callable[[Mapping[str, np.ndarray]], _Value]
_Kind = Literal["num", "bool"]

_NAN = np.float64(np.nan)


def _finite(value: Any) -> _Value:
    """``value`` as float64 with every non-finite element replaced by NaN (in place)."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return arr if np.isfinite(arr) else np.asarray(_NAN)
    bad = np.isinf(arr)  # NaN stays NaN: only the infinities need replacing
    if bad.any():
        if not arr.flags.writeable:
            arr = arr.copy()
        arr[bad] = np.nan
    return arr


def _checked(fn: _Fn) -> _Fn:
    """Mark a closure whose results :func:`_finite` has already cleaned."""
    fn.finite = True  # type: ignore[attr-defined]
    return fn


def _truth(cond: _Value, value: Any) -> _Value:
    """Truth value ``value`` as 1.0/0.0, NaN wherever ``cond`` (invalid operands) holds."""
    return np.where(cond, _NAN, np.asarray(value, dtype=np.float64))


def _where(cond: _Value, a: _Value, b: _Value) -> _Value:
    # a and b are already finite or NaN, so the result needs no cleaning
    return np.where(np.isnan(cond), _NAN, np.where(cond != 0, a, b))


#: Functions callable in expressions: name -> (number of arguments, implementation).
FUNCTIONS: dict[str, tuple[int, Callable[..., Any]]] = {
    "where": (3, _where),
    "clip": (3, np.clip),
    "abs": (1, np.abs),
    "sqrt": (1, np.sqrt),
    "log": (1, np.log),
    "log10": (1, np.log10),
    "exp": (1, np.exp),
    "minimum": (2, np.minimum),
    "maximum": (2, np.maximum),
}

_ARITH: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.Pow: np.power,
}

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}

_OPERATOR_TEXT: dict[type[ast.AST], str] = {
    ast.Mod: "the '%' operator",
    ast.FloorDiv: "the '//' operator",
    ast.MatMult: "the '@' operator",
    ast.LShift: "the '<<' operator",
    ast.RShift: "the '>>' operator",
    ast.BitXor: "the '^' operator",
    ast.Not: "'not' (use ~ on a comparison, e.g. ~(ndvi > 0.3))",
    ast.In: "'in' comparisons",
    ast.NotIn: "'not in' comparisons",
    ast.Is: "'is' comparisons",
    ast.IsNot: "'is not' comparisons",
}

_NODE_TEXT: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Slice: "slices",
    ast.Lambda: "lambda functions",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.BoolOp: "'and'/'or' (combine comparisons with & and |, e.g. (a > 0) & (b < 1))",
    ast.IfExp: "conditional expressions (use where(cond, a, b))",
    ast.JoinedStr: "f-strings",
    ast.FormattedValue: "f-strings",
    ast.Starred: "starred arguments",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.NamedExpr: "assignment expressions",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}

_ALLOWED_SUMMARY = (
    "allowed: numbers, band names, + - * / **, unary -, comparisons (< <= > >= == !=), "
    "& | ~ on comparisons, and the functions " + ", ".join(FUNCTIONS)
)


def check_name(name: str) -> None:
    """Raise unless ``name`` can name a variable (band, role or index) in band math.

    Parameters
    ----------
    name
        Candidate variable name.

    Raises
    ------
    ExpressionError
        Not an identifier, a Python keyword, starts with ``_`` or is a function name.

    Examples
    --------
    >>> check_name("ndvi")
    >>> check_name("where")
    Traceback (most recent call last):
    ...
    pixelquery_batch.errors.ExpressionError: 'where' cannot be used as a name: it is a function
    """
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ExpressionError(
            f"{name!r} cannot be used as a name: use letters, digits and '_' "
            "(not starting with a digit)",
            name=str(name),
        )
    if name.startswith("_"):
        raise ExpressionError(
            f"{name!r} cannot be used as a name: names must not start with '_'", name=name
        )
    if name in FUNCTIONS:
        raise ExpressionError(
            f"{name!r} cannot be used as a name: it is a function", name=name
        )


def _rebuild(text: str, name: str) -> Expression:
    return parse_expression(text, name=name)


@dataclass(frozen=True, slots=True)
class Expression:
    """A validated band-math expression, compiled once and evaluated per chunk.

    Create it with :func:`parse_expression` or :func:`resolve_index`. Instances pickle
    by their text (they are re-parsed on unpickling) and compare by name and text.

    Parameters
    ----------
    name
        The variable the expression defines (``ndvi``), used in messages and outputs.
    text
        The expression source.
    names
        The band names or roles it reads.
    """

    name: str
    text: str
    names: frozenset[str]
    _fn: _Fn | None = field(default=None, repr=False, compare=False)
    _kind: _Kind = field(default="num", repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._fn is None:  # built directly: compile from the text
            parsed = parse_expression(self.text, name=self.name)
            object.__setattr__(self, "names", parsed.names)
            object.__setattr__(self, "_fn", parsed._fn)
            object.__setattr__(self, "_kind", parsed._kind)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.text, self.name))

    def __dask_tokenize__(self) -> tuple[str, str, str]:
        return ("pixelquery_batch.expr.Expression", self.name, self.text)

    @property
    def is_boolean(self) -> bool:
        """Whether the result is a truth value (a comparison or ``&``/``|``/``~`` of them)."""
        return self._kind == "bool"

    def evaluate(self, env: Mapping[str, np.ndarray], *,
                 finite: Container[str] = ()) -> np.ndarray:
        """Evaluate on float64 arrays keyed by band name (NaN = invalid pixel).

        Parameters
        ----------
        env
            Arrays (any shapes that broadcast together) for at least :attr:`names`.
            They are converted to float64; other keys are ignored.
        finite
            Names whose arrays hold no infinity (values of integer bands): not scanned.

        Returns
        -------
        numpy.ndarray
            A new float64 array; invalid or non-finite results are NaN, truth values are
            1.0/0.0. A 0-d array when the expression reads no band.

        Raises
        ------
        ExpressionError
            A name the expression reads is not in ``env``.
        """
        missing = sorted(self.names.difference(env))
        if missing:
            raise ExpressionError(
                f"{self.name}: {self.text!r} reads {', '.join(map(repr, missing))}, "
                f"which {'is' if len(missing) == 1 else 'are'} not available "
                f"(available: {', '.join(sorted(env)) or 'none'})",
                hint="check the band names and roles of the product",
                expression=self.text,
                missing=missing,
            )
        arrays = {}
        for n in self.names:
            arr = np.asarray(env[n], dtype=np.float64)
            if n in finite:
                arrays[n] = arr
                continue
            inf = np.isinf(arr)  # NaN already marks invalid pixels: only inf needs mapping
            arrays[n] = np.where(inf, _NAN, arr) if inf.any() else arr
        fn = self._fn
        if fn is None:  # pragma: no cover - always set by __post_init__
            raise RuntimeError("expression was not compiled")
        with np.errstate(all="ignore"):
            result = fn(arrays)
        if any(result is a for a in arrays.values()):
            result = result.copy()
        if getattr(fn, "finite", False):  # its last step cleaned it (a division, a function)
            return np.asarray(result, dtype=np.float64)
        return _finite(np.asarray(result, dtype=np.float64))


def _reject(text: str, name: str, node: ast.AST, what: str) -> ExpressionError:
    segment = ast.get_source_segment(text, node) or type(node).__name__
    col = getattr(node, "col_offset", 0) + 1
    return ExpressionError(
        f"{name}: {segment!r} is not allowed: {what} (column {col})",
        hint=_ALLOWED_SUMMARY,
        expression=text,
        column=col,
    )


def _depth(node: ast.AST) -> int:
    """Nesting depth of an AST, without recursion (hostile inputs may be deep)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        current, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(current))
    return deepest


class _Compiler:
    """Validate an AST against the allowlist and build the closure tree."""

    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name
        self.names: set[str] = set()

    def fail(self, node: ast.AST, what: str) -> ExpressionError:
        return _reject(self.text, self.name, node, what)

    def compile(self, node: ast.AST) -> tuple[_Fn, _Kind]:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            what = _NODE_TEXT.get(type(node), f"{type(node).__name__} expressions")
            raise self.fail(node, what)
        return method(node)

    def numeric(self, node: ast.AST) -> _Fn:
        fn, _ = self.compile(node)  # truth values are 1.0/0.0 and usable as numbers
        return fn

    def boolean(self, node: ast.AST, context: str) -> _Fn:
        fn, kind = self.compile(node)
        if kind != "bool":
            raise self.fail(
                node, f"{context} needs a comparison here, e.g. (ndvi > 0.3)"
            )
        return fn

    # -- leaves ---------------------------------------------------------------------

    def _Constant(self, node: ast.Constant) -> tuple[_Fn, _Kind]:
        value = node.value
        if isinstance(value, bool):
            raise self.fail(node, "booleans (True/False); use a comparison instead")
        if isinstance(value, str):
            raise self.fail(node, "strings")
        if isinstance(value, complex):
            raise self.fail(node, "complex numbers")
        if not isinstance(value, int | float):
            raise self.fail(node, f"{type(value).__name__} constants")
        try:
            number = float(value)
        except OverflowError:
            number = float("inf")
        if not np.isfinite(number):
            raise self.fail(node, "numbers this large")
        const = np.asarray(number, dtype=np.float64)
        return (lambda env: const.copy()), "num"

    def _Name(self, node: ast.Name) -> tuple[_Fn, _Kind]:
        ident = node.id
        if ident.startswith("_"):
            raise self.fail(node, "names starting with '_'")
        if ident in FUNCTIONS:
            raise self.fail(node, f"{ident} is a function; call it as {ident}(...)")
        self.names.add(ident)
        return (lambda env: env[ident]), "num"

    # -- operators ------------------------------------------------------------------

    def _BinOp(self, node: ast.BinOp) -> tuple[_Fn, _Kind]:
        op = type(node.op)
        if op in _ARITH:
            ufunc = _ARITH[op]
            left, right = self.numeric(node.left), self.numeric(node.right)
            if op in (ast.Add, ast.Sub, ast.Mult):
                # finite inputs give finite sums and products (barring float overflow,
                # which the final check maps to NaN): no per-operation scan
                return (lambda env: ufunc(left(env), right(env))), "num"
            return _checked(lambda env: _finite(ufunc(left(env), right(env)))), "num"
        if op in (ast.BitAnd, ast.BitOr):
            symbol = "&" if op is ast.BitAnd else "|"
            left = self.boolean(node.left, f"'{symbol}'")
            right = self.boolean(node.right, f"'{symbol}'")
            combine = np.logical_and if op is ast.BitAnd else np.logical_or

            def logical(env: Mapping[str, np.ndarray]) -> _Value:
                a, b = left(env), right(env)
                return _truth(np.isnan(a) | np.isnan(b), combine(a != 0, b != 0))

            return logical, "bool"
        raise self.fail(node, _OPERATOR_TEXT.get(op, f"the {op.__name__} operator"))

    def _UnaryOp(self, node: ast.UnaryOp) -> tuple[_Fn, _Kind]:
        op = type(node.op)
        if op is ast.USub:
            operand = self.numeric(node.operand)
            return (lambda env: np.negative(operand(env))), "num"
        if op is ast.UAdd:
            operand = self.numeric(node.operand)
            return (lambda env: np.positive(operand(env))), "num"
        if op is ast.Invert:
            cond = self.boolean(node.operand, "'~'")

            def invert(env: Mapping[str, np.ndarray]) -> _Value:
                c = cond(env)
                return _truth(np.isnan(c), c == 0)

            return invert, "bool"
        raise self.fail(node, _OPERATOR_TEXT.get(op, f"the {op.__name__} operator"))

    def _Compare(self, node: ast.Compare) -> tuple[_Fn, _Kind]:
        for op in node.ops:
            if type(op) not in _COMPARE:
                raise self.fail(node, _OPERATOR_TEXT.get(type(op), "this comparison"))
        operands = [self.numeric(n) for n in (node.left, *node.comparators)]
        ufuncs = [_COMPARE[type(op)] for op in node.ops]

        def compare(env: Mapping[str, np.ndarray]) -> _Value:
            values = [f(env) for f in operands]  # each operand evaluated once
            invalid = np.isnan(values[0])
            result: Any = True
            for ufunc, a, b in zip(ufuncs, values, values[1:], strict=False):
                invalid = invalid | np.isnan(b)
                result = np.logical_and(result, ufunc(a, b))
            return _truth(invalid, result)

        return compare, "bool"

    def _Call(self, node: ast.Call) -> tuple[_Fn, _Kind]:
        func = node.func
        if not isinstance(func, ast.Name) or func.id not in FUNCTIONS:
            raise self.fail(node, "function calls other than " + ", ".join(FUNCTIONS))
        if node.keywords:
            raise self.fail(node.keywords[0], "keyword arguments")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.fail(arg, "starred arguments")
        arity, impl = FUNCTIONS[func.id]
        if len(node.args) != arity:
            plural = "s" if arity != 1 else ""
            raise self.fail(
                node, f"{func.id}() takes {arity} argument{plural} (got {len(node.args)})"
            )
        if func.id == "where":
            cond = self.boolean(node.args[0], "where()")
            a, b = self.numeric(node.args[1]), self.numeric(node.args[2])
            return (lambda env: _where(cond(env), a(env), b(env))), "num"
        args = [self.numeric(a) for a in node.args]
        return _checked(lambda env: _finite(impl(*(f(env) for f in args)))), "num"


def parse_expression(text: str, *, name: str = "<expr>") -> Expression:
    """Parse and validate band math, and compile it for evaluation.

    Parameters
    ----------
    text
        The expression, e.g. ``"(nir - red) / (nir + red)"``.
    name
        The variable it defines, used in error messages.

    Returns
    -------
    Expression
        The compiled expression.

    Raises
    ------
    ExpressionError
        Syntax errors, constructs outside the allowlist (the message names the construct
        and its 1-based column), and expressions over :data:`MAX_LENGTH` characters,
        :data:`MAX_NODES` nodes or :data:`MAX_DEPTH` levels.

    Examples
    --------
    >>> import numpy as np
    >>> e = parse_expression("(nir - red) / (nir + red)", name="ndvi")
    >>> sorted(e.names)
    ['nir', 'red']
    >>> e.evaluate({"nir": np.array([0.5, 0.0]), "red": np.array([0.1, 0.0])}).round(3)
    array([0.667,   nan])
    """
    if not isinstance(text, str):
        raise ExpressionError(
            f"{name}: expected the expression as a string, got {type(text).__name__}",
            expression=repr(text),
        )
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            f"{name}: expression is too long ({len(text)} characters, at most {MAX_LENGTH})",
            hint="split it into several indices",
            expression=text[:80] + "...",
        )
    if not text.strip():
        raise ExpressionError(f"{name}: expression is empty", expression=text)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        col = exc.offset or 1
        raise ExpressionError(
            f"{name}: invalid syntax in {text!r}: {exc.msg} (column {col})",
            hint=_ALLOWED_SUMMARY,
            expression=text,
            column=col,
        ) from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        raise ExpressionError(
            f"{name}: cannot parse {text!r}: {exc}", expression=text
        ) from None
    text = text.strip()
    n_nodes = sum(1 for _ in ast.walk(tree))
    if n_nodes > MAX_NODES:
        raise ExpressionError(
            f"{name}: expression is too complex ({n_nodes} syntax nodes, at most {MAX_NODES})",
            hint="split it into several indices",
            expression=text,
        )
    if _depth(tree) > MAX_DEPTH:
        raise ExpressionError(
            f"{name}: expression is nested too deeply (at most {MAX_DEPTH} levels)",
            hint="split it into several indices",
            expression=text,
        )
    compiler = _Compiler(text, name)
    fn, kind = compiler.compile(tree.body)
    return Expression(name=name, text=text, names=frozenset(compiler.names), _fn=fn, _kind=kind)


def resolve_index(name: str, value: str) -> Expression:
    """The expression of a spec's ``indices`` entry (``builtin`` or band math).

    Parameters
    ----------
    name
        The index name (a valid variable name, see :func:`check_name`).
    value
        ``"builtin"`` for :data:`BUILTIN_INDICES` ``[name]``, else an expression.

    Returns
    -------
    Expression
        The compiled expression, named ``name``.

    Raises
    ------
    ExpressionError
        Invalid name, unknown builtin (the message lists them) or invalid expression.

    Examples
    --------
    >>> resolve_index("ndvi", "builtin").text
    '(nir - red) / (nir + red)'
    >>> sorted(resolve_index("ratio", "nir / red").names)
    ['nir', 'red']
    """
    check_name(name)
    if isinstance(value, str) and value.strip() == "builtin":
        if name not in BUILTIN_INDICES:
            raise ExpressionError(
                f"{name}: there is no builtin index {name!r} "
                f"(builtins: {', '.join(BUILTIN_INDICES)})",
                hint=f"write the expression instead, e.g. {name}: \"(nir - red) / (nir + red)\"",
                name=name,
            )
        return parse_expression(BUILTIN_INDICES[name], name=name)
    return parse_expression(value, name=name)
