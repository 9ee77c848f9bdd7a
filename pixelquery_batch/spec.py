"""The YAML job spec, version 1 (edge layer: pydantic models, YAML with line numbers).

A job spec says which repository snapshot and scenes to read, which field polygons to
summarise, which bands and indices to compute, which statistics to report and where to
write them. :func:`load_spec` reads a file through PyYAML's safe loader only, keeping the
line of every key, validates it against :class:`JobSpec` and reports *all* problems at
once in one :class:`~pixelquery_batch.errors.SpecError`, one line per problem::

    job.yaml:12 stats[3]: unknown statistic 'p95x' (expected one of mean, std, ...)

This module checks the *shape* of a spec only; checks that need the catalog (bands exist
in the product, the time window has scenes) happen when the job is resolved.
:func:`spec_reference_markdown` renders the reference of every key from the models.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import os
import re
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ExpressionError, SpecError
from .expr import Expression, check_name, parse_expression, resolve_index

__all__ = [
    "BASIC_STATS",
    "DEFAULT_STATS",
    "SPEC_VERSION",
    "CloudMaskRule",
    "ClusterSpec",
    "FieldsSpec",
    "JobSpec",
    "MaskSpec",
    "OutputsSpec",
    "RepositorySpec",
    "SceneFilter",
    "StatsOutput",
    "load_spec",
    "parse_spec",
    "spec_reference_markdown",
]

from .spec_models import (  # noqa: F401  (re-exported and used by JobSpec)
    _ADDRESS,
    _CLOUD_AUTO,
    _CLOUD_RULE,
    _EXPECTED_STATS,
    _JOB_NAME,
    _MAX_YAML_NODES,
    _MEMORY,
    _MULTI,
    _PERCENTILE,
    BASIC_STATS,
    DEFAULT_STATS,
    SPEC_VERSION,
    CloudMask,
    CloudMaskRule,
    ClusterSpec,
    CompositeOutput,
    DateLike,
    FieldsSpec,
    MaskSpec,
    OutputsSpec,
    PointsSpec,
    RegionsSpec,
    RepositorySpec,
    RollupOutput,
    SceneFilter,
    StatsOutput,
    TimeseriesOutput,
    _check_period_text,
    _cloud_kind,
    _describe,
    _error,
    _problems_error,
    _sort_key,
    _stat_problem,
    _to_datelike,
)


class JobSpec(BaseModel):
    """A batch job: scenes x fields -> statistics of bands and indices (spec version 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = Field(description="Spec format version; must be `1`.")
    name: str = Field(
        description="Job name (letters, digits, `.`, `_`, `-`); used in output names and logs."
    )
    repository: RepositorySpec = Field(description="The repository to read.")
    scenes: SceneFilter = Field(
        default_factory=SceneFilter, description="Which scenes to read (default: all)."
    )
    fields: FieldsSpec | None = Field(
        default=None,
        description="The field polygons to summarise (needed unless the job only rolls "
        "pixels up to regions).",
    )
    points: PointsSpec | None = Field(
        default=None,
        description="Points whose pixel values are followed through time "
        "(`outputs.dir/points/`).",
    )
    bands: tuple[str, ...] = Field(
        default=(),
        description="Raw bands (names or roles such as `red`, `nir`) to report statistics "
        "on, besides the indices.",
    )
    indices: dict[str, str] = Field(
        default_factory=dict,
        validate_default=True,
        description="Indices to compute: `name: builtin` (ndvi, evi, ndwi, savi, ndmi, nbr) "
        "or `name: expression` in band math over band names/roles (`+ - * / **`, "
        "comparisons, `& | ~`, where, clip, abs, sqrt, log, log10, exp, minimum, maximum). "
        "At least one of `bands`/`indices` must be non-empty.",
    )
    stats: tuple[str, ...] = Field(
        default=DEFAULT_STATS,
        description="Statistics per field, band/index and scene: mean, std, min, max, "
        "median, sum, p1..p99 (percentiles), count (valid pixels), valid_fraction.",
    )
    pixels: Literal["centre", "all_touched", "coverage"] = Field(
        default="centre",
        description="Which pixels belong to a field: `centre` (centre inside the polygon), "
        "`all_touched` (every pixel touched) or `coverage` (weighted by covered fraction).",
    )
    masks: MaskSpec = Field(
        default_factory=MaskSpec, description="Which pixels are invalid."
    )
    resolution: float | None = Field(
        default=None,
        gt=0,
        description="Pixel size (CRS units) to compute on. Default: the finest grid among "
        "the bands the job uses (e.g. 10 m for NDVI on Sentinel-2, 20 m for an index of "
        "20 m bands); coarser bands and masks are brought onto it by nearest neighbour "
        "(each pixel takes the coarse pixel holding its centre). A coarser value computes "
        "on a grid of that size with the same origin (finer bands sampled by nearest; "
        "partial edge pixels dropped).",
    )
    outputs: OutputsSpec = Field(description="Where results are written.")
    cluster: ClusterSpec = Field(
        default_factory=ClusterSpec, description="Which Dask cluster runs the job."
    )
    on_error: Literal["skip", "fail"] = Field(
        default="skip",
        description="A failing work unit: `skip` (record it in the manifest and go on) or "
        "`fail` (stop the job).",
    )

    _source_path: Path | None = PrivateAttr(default=None)
    _base_dir: Path | None = PrivateAttr(default=None)

    # -- validators -------------------------------------------------------------------

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _JOB_NAME.match(value):
            raise _error(
                f"invalid job name {value!r} (use only letters, digits, '.', '_' and '-')"
            )
        return value

    @field_validator("bands")
    @classmethod
    def _check_bands(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        first: dict[str, int] = {}
        for i, band in enumerate(value):
            try:
                check_name(band)
            except ExpressionError as exc:
                problems.append(((i,), f"invalid band name: {exc.message}"))
            if band in first:
                problems.append(((i,), f"duplicate band {band!r} (also bands[{first[band]}])"))
            first.setdefault(band, i)
        if problems:
            raise _problems_error(problems)
        return value

    @field_validator("indices")
    @classmethod
    def _check_indices(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        bands = info.data.get("bands")
        for name, text in value.items():
            if bands is not None and name in bands:
                problems.append(((name,), f"index {name!r} has the name of a band in 'bands'"))
                continue
            try:
                resolve_index(name, text)
            except ExpressionError as exc:
                message = exc.message.removeprefix(f"{name}: ")
                problems.append(((name,), message))
        if not value and bands is not None and not bands:
            problems.append(((), "nothing to compute: list raw 'bands' or add 'indices'"))
        if problems:
            raise _problems_error(problems)
        return value

    @field_validator("stats")
    @classmethod
    def _check_stats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        first: dict[str, int] = {}
        for i, stat in enumerate(value):
            if (problem := _stat_problem(stat)) is not None:
                problems.append(((i,), problem))
            elif stat in first:
                problems.append(((i,), f"duplicate statistic {stat!r} (also stats[{first[stat]}])"))
            first.setdefault(stat, i)
        if not value:
            problems.append(((), f"no statistics listed (expected some of {_EXPECTED_STATS})"))
        if problems:
            raise _problems_error(problems)
        return value

    @model_validator(mode="after")
    def _check_outputs(self) -> JobSpec:
        out = self.outputs
        needs_fields = (out.stats is not None or out.timeseries is not None
                        or (out.rollup is not None and "field" in out.rollup.kinds))
        if needs_fields and self.fields is None:
            raise _error("missing required key 'fields' (the statistics, time series and field "
                         "rollups need field polygons)")
        if out.rollup is not None and "field" in out.rollup.kinds and out.timeseries is None:
            raise _error("outputs.rollup.kinds has 'field': it rolls up the per-field time "
                         "series, so outputs.timeseries is needed too")
        names = set(self.bands) | set(self.indices)
        if out.png is not None:
            if out.png.variable == "truecolor":
                missing = sorted({"red", "green", "blue"} - set(self.bands))
                if missing:
                    raise _error(f"outputs.png.variable truecolor needs the bands red, green and "
                                 f"blue in `bands` (missing: {missing})")
            elif out.png.variable not in names:
                raise _error(f"outputs.png.variable {out.png.variable!r} is not defined "
                             f"(bands/indices: {sorted(names)}, or truecolor)")
            if out.png.colormap not in _COLORMAPS:
                try:
                    import matplotlib as mpl
                except ImportError:
                    raise _error(f"outputs.png.colormap {out.png.colormap!r}: unknown (built in: "
                                 f"{', '.join(_COLORMAPS)}; other names need matplotlib)") from None
                if out.png.colormap not in mpl.colormaps:
                    raise _error(f"outputs.png.colormap {out.png.colormap!r}: not a matplotlib "
                                 "colormap") from None
        if (out.png is not None or (out.cog is not None and out.cog.fields)) and self.fields is None:
            raise _error("outputs.png / outputs.cog need field polygons (`fields`; or "
                         "outputs.cog.fields: false to clip regions only)")
        for where, chosen in (("outputs.timeseries.variables", out.timeseries and out.timeseries.variables),
                              ("outputs.rollup.variables", out.rollup and out.rollup.variables),
                              ("outputs.cog.variables", out.cog and out.cog.variables)):
            unknown = sorted(set(chosen or ()) - names)
            if unknown:
                raise _error(f"{where}: variable(s) {unknown} are not defined "
                             f"(bands/indices: {sorted(names)})")
        if (out.timeseries is not None and out.timeseries.aggregation == "max_ndvi"
                and "ndvi" not in names):
            raise _error("outputs.timeseries.aggregation max_ndvi needs an `ndvi` index")
        if out.rollup is not None and out.rollup.composite is not None:
            comp = out.rollup.composite
            if comp.variable not in names:
                raise _error(f"outputs.rollup.composite.variable {comp.variable!r} is not "
                             f"defined (bands/indices: {sorted(names)})")
            if comp.method == "max_ndvi" and "ndvi" not in names:
                raise _error("outputs.rollup.composite.method max_ndvi needs an `ndvi` index")
        return self

    # -- API ----------------------------------------------------------------------------

    @property
    def source_path(self) -> Path | None:
        """The YAML file the spec was loaded from (``None`` for specs built in code)."""
        return self._source_path

    def variables(self) -> dict[str, Expression]:
        """Everything to compute: raw bands as identity expressions, then the indices.

        Returns
        -------
        dict of str to Expression
            Bands in spec order, then indices in spec order.
        """
        out: dict[str, Expression] = {b: parse_expression(b, name=b) for b in self.bands}
        out.update({name: resolve_index(name, text) for name, text in self.indices.items()})
        return out

    def resolve_paths(self) -> JobSpec:
        """A copy whose relative local paths are absolute.

        ``repository.path``, ``fields.path`` and ``outputs.dir`` are resolved against the
        spec file's directory (or the ``base_dir`` given to :func:`parse_spec`, else the
        current directory); URLs (``s3://...``) are kept as they are.
        """
        if self._base_dir is not None:
            base = self._base_dir
        elif self._source_path is not None:
            base = self._source_path.parent
        else:
            base = Path.cwd()
        return self.model_copy(
            update={
                "repository": self.repository.model_copy(
                    update={"path": _resolve_path(self.repository.path, base)}
                ),
                "fields": None if self.fields is None else self.fields.model_copy(
                    update={"path": _resolve_path(self.fields.path, base)}
                ),
                "points": None if self.points is None else self.points.model_copy(
                    update={"path": _resolve_path(self.points.path, base)}
                ),
                "outputs": self.outputs.model_copy(
                    update={"dir": _resolve_path(self.outputs.dir, base),
                            "rollup": None if self.outputs.rollup is None else
                            self.outputs.rollup.model_copy(update={
                                "regions": self.outputs.rollup.regions.model_copy(update={
                                    "path": _resolve_path(self.outputs.rollup.regions.path, base)
                                })})}
                ),
            }
        )

    def result_hash(self) -> str:
        """Hash of what changes a (field, scene) row's values: repository, variables
        (bands, index expressions), statistics, pixel rule, masks and resolution. Rows
        computed under the same result hash (and the same field geometry) are reused by
        later runs; the name, scene window, fields file, outputs and cluster do not
        count."""
        return _result_hash(self)

    def job_hash(self) -> str:
        """Content hash of the spec: 16 hex characters of a SHA-256.

        The source path, ``cluster``, ``on_error`` and the output *location* are left out,
        as they do not change results; so are formatting, comments and keys spelled out at
        their default value.
        """
        content = self.model_dump(mode="json", exclude={"cluster", "on_error"})
        content["outputs"].pop("dir", None)
        content["outputs"].pop("storage", None)
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


_COLORMAPS = ("rdylgn", "viridis", "inferno", "greys")


def _result_hash(spec: Any) -> str:
    content = spec.model_dump(mode="json", include={
        "version", "bands", "indices", "stats", "pixels", "masks", "resolution"})
    content["repository"] = spec.repository.path
    content["variables"] = {n: e.text for n, e in spec.variables().items()}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _resolve_path(value: str, base: Path) -> str:
    """``value`` made absolute against ``base`` unless it is a URL or already absolute.

    >>> _resolve_path("s3://bucket/repo", Path("/jobs"))
    's3://bucket/repo'
    >>> _resolve_path("../data/fields.geojson", Path("/work/jobs"))
    '/work/data/fields.geojson'
    """
    if "://" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(base) / path
    return os.path.abspath(path)


# -- YAML with line numbers -----------------------------------------------------------------

Loc = tuple[str | int, ...]


def _render_path(loc: Iterable[Any]) -> str:
    """``("stats", 3, "x")`` -> ``stats[3].x``.

    >>> _render_path(("masks", "cloud", "bits", 0))
    'masks.cloud.bits[0]'
    """
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problem(file: str, line: int, loc: Loc, message: str) -> dict[str, Any]:
    return {"file": file, "line": line, "path": _render_path(loc), "message": message}


def _format_problem(p: dict[str, Any]) -> str:
    where = f"{p['file']}:{p['line']}"
    return f"{where} {p['path']}: {p['message']}" if p["path"] else f"{where}: {p['message']}"


def _spec_error(problems: list[dict[str, Any]], file: str, hint: str | None = None) -> SpecError:
    problems = sorted(problems, key=lambda p: p["line"])
    return SpecError(
        "\n".join(_format_problem(p) for p in problems),
        hint=hint,
        file=file,
        line=problems[0]["line"],
        problems=problems,
    )


class _LineMap:
    """Walk a composed YAML node tree: line of every key path, duplicate keys."""

    def __init__(self, loader: yaml.SafeLoader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.lines: dict[Loc, int] = {}
        self.problems: list[dict[str, Any]] = []
        self._visited = 0
        self._stack: set[int] = set()

    def walk(self, node: yaml.Node, path: Loc = ()) -> None:
        if not path:
            self.lines[()] = node.start_mark.line + 1
        if id(node) in self._stack:  # recursive alias
            return
        self._visited += 1
        if self._visited > _MAX_YAML_NODES:
            raise _spec_error(
                [_problem(self.file, node.start_mark.line + 1, path,
                          "document too large or too many aliases")],
                self.file,
            )
        self._stack.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                self._mapping(node, path)
            elif isinstance(node, yaml.SequenceNode):
                for i, item in enumerate(node.value):
                    self.lines[(*path, i)] = item.start_mark.line + 1
                    self.walk(item, (*path, i))
        finally:
            self._stack.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: Loc) -> None:
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [
                    value_node
                ]
                for m in merged:
                    self.walk(m, path)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # complex keys fail at construction with their own mark
            key = self.loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # pragma: no cover - scalar keys are hashable
                first = None
            if first is not None:
                self.problems.append(
                    _problem(self.file, line, (*path, key),
                             f"duplicate key {key!r} (first defined at line {first})")
                )
            else:
                seen[key] = line
            self.lines[(*path, key)] = line
            self.walk(value_node, (*path, key))


class _SpecLoader(yaml.SafeLoader):
    """The safe loader, except that a date-shaped scalar that is no real date (2021-13-45)
    stays a string, so validation reports it with its file, line and key."""

    def construct_yaml_timestamp(self, node: yaml.Node) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:
            return self.construct_scalar(node)


_SpecLoader.add_constructor("tag:yaml.org,2002:timestamp", _SpecLoader.construct_yaml_timestamp)


def _load_yaml(text: str, file: str) -> tuple[Any, _LineMap]:
    """Safe-load ``text``, keeping the line of every key path."""
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise _spec_error(
                [_problem(file, 1, (), "the job spec is empty (expected a mapping with "
                                       "version, name, repository, fields, outputs ...)")],
                file,
            )
        linemap = _LineMap(loader, file)
        linemap.walk(node)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        column = f" (column {mark.column + 1})" if mark is not None else ""
        what = exc.problem or exc.context or "invalid YAML"
        raise _spec_error(
            [_problem(file, line, (), f"invalid YAML: {what}{column}")], file
        ) from None
    except yaml.YAMLError as exc:
        raise _spec_error([_problem(file, 1, (), f"invalid YAML: {exc}")], file) from None
    except RecursionError:
        raise _spec_error([_problem(file, 1, (), "invalid YAML: nested too deeply")], file) from None
    finally:
        loader.dispose()
    return data, linemap


# -- translating pydantic errors ---------------------------------------------------------


def _submodels(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], type[BaseModel]]:
    """Key path (without list indices) -> model validating the mapping there."""
    out: dict[tuple[str, ...], type[BaseModel]] = {prefix: model}
    for name, info in model.model_fields.items():
        for sub in _models_in(info.annotation):
            out.update(_submodels(sub, (*prefix, name)))
    return out


def _models_in(tp: Any) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    args = get_args(tp)
    if get_origin(tp) is Annotated:
        args = args[:1]
    return [m for a in args for m in _models_in(a)]


def _is_internal(part: Any, path: Loc, lines: dict[Loc, int]) -> bool:
    """Whether a pydantic location element names a schema, not a key of the document."""
    if part == "[key]":
        return True
    if (*path, part) in lines:
        return False
    return part in (_CLOUD_AUTO, _CLOUD_RULE) or (
        isinstance(part, str) and re.match(r"^[\w-]+\[.*\]$", part) is not None
    )


def _message(err: dict[str, Any], loc: Loc) -> str:
    """A readable message for one pydantic error."""
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    got = _describe(value)
    if kind == "missing":
        return f"missing required key {loc[-1]!r}"
    if kind == "extra_forbidden":
        parent = tuple(p for p in loc[:-1] if isinstance(p, str))
        model = _submodels(JobSpec).get(parent)
        if model is None:  # pragma: no cover - every mapping in the spec is a model
            return f"unknown key {loc[-1]!r}"
        allowed = list(model.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.75)
        maybe = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key {loc[-1]!r} (expected one of {', '.join(allowed)}{maybe})"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace(" or ", ", ")
        if loc == ("version",):
            return f"unsupported spec version {got} (expected {SPEC_VERSION})"
        return f"invalid value {got} (expected one of {expected})"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping, got {got}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list, got {got}"
    if kind == "string_type":
        return f"expected a string, got {got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {got}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"expected a number, got {got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {got}"
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"must be {op} {ctx.get(key)} (got {got})"
    if kind == "too_short":
        if isinstance(value, str):
            return "must not be empty"
        return f"must list at least {ctx.get('min_length')} item(s)"
    if kind == "pqb":
        return str(err["msg"])
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return f"{err['msg']} (got {got})"


def _problems_from(exc: ValidationError, file: str, lines: dict[Loc, int]) -> list[dict[str, Any]]:
    problems = []
    for err in exc.errors():
        loc: Loc = ()
        for part in err["loc"]:
            if not _is_internal(part, loc, lines):
                loc = (*loc, part)
        if err["type"] == _MULTI:
            items = [((*loc, *sub), msg) for sub, msg in err["ctx"]["problems"]]
        else:
            items = [(loc, _message(err, loc))]
        for item_loc, msg in items:
            problems.append(_problem(file, _line_of(item_loc, lines), item_loc, msg))
    return problems


#: Where to point when a key is absent: ``indices`` missing -> the (empty) ``bands``.
_LINE_FALLBACKS: dict[Loc, Loc] = {("indices",): ("bands",)}


def _line_of(loc: Loc, lines: dict[Loc, int]) -> int:
    """Line of the deepest prefix of ``loc`` present in the document."""
    if loc not in lines and _LINE_FALLBACKS.get(loc) in lines:
        return lines[_LINE_FALLBACKS[loc]]
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


# -- public API --------------------------------------------------------------------------


def parse_spec(text: str, *, source: str = "<string>", base_dir: Path | None = None) -> JobSpec:
    """Parse and validate a job spec from YAML text.

    Parameters
    ----------
    text
        The YAML document.
    source
        File name used in messages (``job.yaml:12 stats[3]: ...``).
    base_dir
        Directory relative paths are resolved against by :meth:`JobSpec.resolve_paths`
        (default: the current directory). Paths are not resolved here.

    Returns
    -------
    JobSpec
        The validated spec.

    Raises
    ------
    SpecError
        Every problem at once, one ``file:line path: message`` line each; the error's
        ``problems`` attribute lists them as dicts (``file``, ``line``, ``path``,
        ``message``).

    Examples
    --------
    >>> spec = parse_spec('''
    ... version: 1
    ... name: demo
    ... repository: {path: /data/repo}
    ... fields: {path: /data/fields.geojson}
    ... indices: {ndvi: builtin}
    ... outputs: {dir: /data/out}
    ... ''')
    >>> spec.stats[:3], list(spec.variables())
    (('mean', 'std', 'min'), ['ndvi'])
    """
    data, linemap = _load_yaml(text, source)
    if not isinstance(data, dict):
        raise _spec_error(
            [_problem(source, linemap.lines.get((), 1), (),
                      f"a job spec must be a mapping of keys, got {_describe(data)}")],
            source,
        )
    problems = list(linemap.problems)
    spec: JobSpec | None = None
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems_from(exc, source, linemap.lines))
    if problems or spec is None:
        raise _spec_error(problems, source, hint=None)
    if base_dir is not None:
        spec._base_dir = Path(base_dir)
    return spec


def load_spec(path: str | os.PathLike[str]) -> JobSpec:
    """Load, validate and resolve a job spec file.

    Parameters
    ----------
    path
        The YAML file.

    Returns
    -------
    JobSpec
        The spec, with :attr:`JobSpec.source_path` set and relative paths made absolute
        against the file's directory.

    Raises
    ------
    SpecError
        The file is missing or unreadable, or the spec is invalid (all problems at once).
    """
    file = os.fspath(path)
    p = Path(file)
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "not found"
        raise SpecError(
            f"job spec {file} {what}",
            hint=f"check the path (relative paths start at {Path.cwd()})",
            file=file,
            problems=[{"file": file, "line": None, "path": "", "message": f"job spec {what}"}],
        )
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(
            f"cannot read job spec {file}: {exc}",
            file=file,
            problems=[{"file": file, "line": None, "path": "", "message": f"cannot read: {exc}"}],
        ) from exc
    spec = parse_spec(text, source=file, base_dir=p.absolute().parent)
    spec._source_path = p.absolute()
    return spec.resolve_paths()


# -- reference ---------------------------------------------------------------------------


def _type_text(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _type_text(args[0])
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        if {dt.date, dt.datetime} <= set(args):  # DateLike
            args = (dt.date, dt.datetime, *(a for a in args if a not in (dt.date, dt.datetime)))
        parts: list[str] = []
        for a in args:
            text = _type_text(a)
            if text not in parts:
                parts.append(text)
        return " or ".join(parts)
    if origin is Literal:
        return " or ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (list, tuple):
        return f"list of {_type_text(args[0])}"
    if origin is dict:
        return f"mapping of {_type_text(args[0])} to {_type_text(args[1])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping"
    names = {str: "string", int: "integer", float: "number", bool: "boolean",
             dt.date: "date", dt.datetime: "datetime"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _default_text(info: Any) -> str:
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`"


def _reference_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    rows = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        rows.append((key, _type_text(info.annotation), _default_text(info), info.description or ""))
        for sub in _models_in(info.annotation):
            rows.extend(_reference_rows(sub, f"{key}."))
    return rows


def spec_reference_markdown() -> str:
    """The job spec reference as Markdown, generated from the models.

    Returns
    -------
    str
        A table with every key path, its type, default and description.
    """
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        f"# Job spec reference (version {SPEC_VERSION})",
        "",
        "A job spec is a YAML mapping. Unknown keys are errors; relative paths are relative "
        "to the spec file. Errors name the file, line and key path of every problem.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for key, type_text, default, description in _reference_rows(JobSpec):
        lines.append(
            f"| `{key}` | {cell(type_text)} | {cell(default)} | {cell(description)} |"
        )
    return "\n".join(lines) + "\n"
