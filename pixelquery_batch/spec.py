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
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

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

#: The job spec version this module reads.
SPEC_VERSION = 1

#: Statistics other than percentiles (``p1`` ... ``p99``).
BASIC_STATS: tuple[str, ...] = (
    "mean", "std", "min", "max", "median", "sum", "count", "valid_fraction",
)
#: Statistics reported when a spec has no ``stats`` key.
DEFAULT_STATS: tuple[str, ...] = (
    "mean", "std", "min", "max", "median", "count", "valid_fraction",
)

_EXPECTED_STATS = "mean, std, min, max, median, sum, p1..p99, count, valid_fraction"
_PERCENTILE = re.compile(r"^p(\d+)$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_ADDRESS = re.compile(
    r"^(?:(?:tcp|tls|ws|wss|ucx)://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::\d{1,5})?$"
)
_MEMORY = re.compile(r"^\s*(?:\d+(?:\.\d*)?|\.\d+)\s*(?:[kmgtpe]i?b?|b)?\s*$", re.IGNORECASE)

#: Tags of the ``masks.cloud`` union (they appear in pydantic error locations).
_CLOUD_AUTO, _CLOUD_RULE = "cloud-auto", "cloud-rule"
_MULTI = "pqb_multi"  # error type carrying several (sub-location, message) problems
_MAX_YAML_NODES = 100_000


# -- validation helpers ----------------------------------------------------------------


def _error(message: str) -> PydanticCustomError:
    """A validation error whose message is ``message`` verbatim."""
    return PydanticCustomError("pqb", "{message}", {"message": message})


def _problems_error(problems: list[tuple[tuple[str | int, ...], str]]) -> PydanticCustomError:
    """One validation error carrying several problems below the current location."""
    return PydanticCustomError(
        _MULTI, "{summary}", {"summary": "; ".join(m for _, m in problems), "problems": problems}
    )


def _stat_problem(stat: str) -> str | None:
    """Why ``stat`` is not a statistic name, or ``None`` when it is.

    >>> _stat_problem("p90") is None
    True
    >>> _stat_problem("p100")
    "percentile 'p100' out of range (p1..p99)"
    """
    if stat in BASIC_STATS:
        return None
    m = _PERCENTILE.match(stat)
    if m:
        q = int(m.group(1))
        if not 1 <= q <= 99:
            return f"percentile {stat!r} out of range (p1..p99)"
        if m.group(1) != str(q):
            return f"write percentile {stat!r} as 'p{q}'"
        return None
    return f"unknown statistic {stat!r} (expected one of {_EXPECTED_STATS})"


def _to_datelike(value: Any) -> Any:
    """YAML dates/datetimes pass through; ISO strings are parsed (date first)."""
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            pass
        try:
            return dt.datetime.fromisoformat(text)
        except ValueError:
            pass
    raise _error(
        f"expected a date like 2025-01-31 or an ISO datetime like 2025-01-31T12:00:00Z "
        f"(got {_describe(value)})"
    )


def _sort_key(value: dt.date, *, end: bool) -> dt.datetime:
    """Comparable naive-UTC datetime; a date means its whole day."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value
    return dt.datetime.combine(value, dt.time.max if end else dt.time.min)


DateLike = Annotated[dt.datetime | dt.date, BeforeValidator(_to_datelike)]


def _cloud_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return _CLOUD_AUTO
    if isinstance(value, dict | CloudMaskRule):
        return _CLOUD_RULE
    return None


# -- models ------------------------------------------------------------------------------


class RepositorySpec(BaseModel):
    """Which pixelquery repository to read, and at which version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        min_length=1,
        description="Repository location: a local directory (relative to the spec file) "
        "or an `s3://` URL.",
    )
    snapshot: str | None = Field(
        default=None,
        description="Snapshot id, tag or branch to read; `null` reads the `main` branch. "
        "It is resolved to a snapshot id once, so every task reads the same version.",
    )
    storage: str | None = Field(
        default=None,
        description="Storage profile name (`configs/storage/NAME.yaml`) or path, used to "
        "reach `s3://` repositories and COGs.",
    )


class SceneFilter(BaseModel):
    """Which scenes of the catalog the job reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: DateLike | None = Field(
        default=None,
        description="First acquisition date (inclusive), as a YAML date, an ISO date or an "
        "ISO datetime; `null`: no lower bound.",
    )
    end: DateLike | None = Field(
        default=None,
        description="Last acquisition date (inclusive: a date covers its whole day); "
        "`null`: no upper bound. Must not be before `start`.",
    )
    product: str | None = Field(
        default=None, description="Only scenes of this product profile (e.g. `sentinel2-l2a`)."
    )
    max_cloud: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Only scenes whose scene-level cloud cover (percent, 0-100) is at most this.",
    )
    ids: tuple[str, ...] | None = Field(
        default=None, min_length=1, description="Only these scene ids (`null`: all)."
    )

    @field_validator("end")
    @classmethod
    def _check_window(cls, end: dt.date | None, info: ValidationInfo) -> dt.date | None:
        start = info.data.get("start")
        if (
            start is not None
            and end is not None
            and _sort_key(start, end=False) > _sort_key(end, end=True)
        ):
            raise _error(f"end {end.isoformat()} is before start {start.isoformat()}")
        return end


class FieldsSpec(BaseModel):
    """The field polygons to summarise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        min_length=1,
        description="Vector file of field polygons (GeoJSON, GeoPackage, GeoParquet, "
        "Shapefile ...), relative to the spec file, or a URL.",
    )
    id: str = Field(
        default="id",
        min_length=1,
        description="Attribute holding the field id (values are used as strings).",
    )
    layer: str | None = Field(
        default=None, description="Layer to read from multi-layer files (GeoPackage)."
    )
    fix_invalid: bool = Field(
        default=False,
        description="Repair invalid geometries instead of failing on them.",
    )


class CloudMaskRule(BaseModel):
    """An explicit cloud mask: classes of a classification band, or bits of a QA band."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    band: str = Field(min_length=1, description="Band holding the classes or flags (e.g. `scl`).")
    exclude: tuple[int, ...] | None = Field(
        default=None,
        min_length=1,
        description="Class values to mask out (e.g. Sentinel-2 SCL `[3, 8, 9, 10]`).",
    )
    bits: tuple[Annotated[int, Field(ge=0, le=63)], ...] | None = Field(
        default=None,
        min_length=1,
        description="Bit positions (0-63) to mask out when set (e.g. Landsat QA_PIXEL "
        "`[1, 2, 3, 4]`).",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> CloudMaskRule:
        if (self.exclude is None) == (self.bits is None):
            raise _error("give exactly one of 'exclude' (class values) or 'bits' (bit positions)")
        return self


CloudMask = Annotated[
    Annotated[Literal["auto"], Tag(_CLOUD_AUTO)] | Annotated[CloudMaskRule, Tag(_CLOUD_RULE)],
    Discriminator(
        _cloud_kind,
        custom_error_type="pqb",
        custom_error_message="expected null, 'auto' or a mapping {band, exclude} or "
        "{band, bits}",
    ),
]


class MaskSpec(BaseModel):
    """Which pixels are invalid (excluded from statistics)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodata: bool = Field(
        default=True, description="Mask pixels equal to each band's nodata value."
    )
    cloud: CloudMask | None = Field(
        default="auto",
        description="Cloud mask: `auto` uses the product profile's rule (none if it has "
        "none); `null` disables it; or `{band, exclude: [classes]}` / `{band, bits: [bits]}`.",
    )


class StatsOutput(BaseModel):
    """The per-field statistics table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["parquet", "geoparquet", "csv"] = Field(
        default="parquet",
        description="`parquet`, `geoparquet` (with field geometries) or `csv`.",
    )


def _check_period_text(value: str) -> str:
    from .kernels.timeseries import parse_period

    try:
        parse_period(value)
    except SpecError as exc:
        raise _error(exc.message) from None
    return value


class TimeseriesOutput(BaseModel):
    """Per-field time series and temporal composites, from the per-scene results."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    period: str = Field(
        default="scene",
        description="Composite period: `scene` (one value per acquisition day), `day`, "
        "`week`, `month`, or an ISO-8601 duration such as `P10D`, `P2W`, `P3M`.",
    )
    aggregation: Literal["mean", "median", "max", "min", "last", "max_ndvi"] = Field(
        default="mean",
        description="How the scenes of a period combine: mean/median/max/min of each "
        "statistic, `last` (latest valid scene) or `max_ndvi` (the scene with the highest "
        "field NDVI).",
    )
    variables: tuple[str, ...] | None = Field(
        default=None, description="Variables to include (default: all bands and indices)."
    )
    fill: Literal["none", "linear"] = Field(
        default="none",
        description="Gap filling: `none` (gaps are rows with count 0) or `linear` "
        "(interpolated, flagged in the `filled` column).",
    )
    wide: bool = Field(
        default=False,
        description="Also write a wide table (field x period columns of the mean).",
    )
    format: Literal["parquet", "csv"] = Field(default="parquet", description="Table format.")

    @field_validator("period")
    @classmethod
    def _check_period(cls, value: str) -> str:
        return _check_period_text(value)


class PointsSpec(BaseModel):
    """Points whose pixel values are followed through time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, description="Vector file of points (any CRS), relative "
                      "to the spec file.")
    id: str = Field(default="id", min_length=1, description="Attribute holding the point id.")
    layer: str | None = Field(default=None, description="Layer of multi-layer files.")


class RegionsSpec(BaseModel):
    """Large polygons (districts, basins) to roll results up to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, description="Vector file of region polygons.")
    id: str = Field(default="id", min_length=1, description="Attribute holding the region id.")
    layer: str | None = Field(default=None, description="Layer of multi-layer files.")
    fix_invalid: bool = Field(default=False, description="Repair invalid geometries.")


class CompositeOutput(BaseModel):
    """A composite raster per region and period, written as a COG."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crs: str = Field(description="Target CRS, e.g. `EPSG:3035` or `EPSG:32633`.")
    resolution: float = Field(gt=0, description="Target pixel size in CRS units.")
    method: Literal["max_ndvi", "median", "mean", "max"] = Field(
        default="max_ndvi",
        description="`max_ndvi` (per pixel, the value of the scene with the highest NDVI), "
        "or the per-pixel median/mean/max over the period's scenes.",
    )
    variable: str = Field(default="ndvi", description="Variable to composite.")
    max_pixels: int = Field(
        default=100_000_000, gt=0,
        description="Refuse composites larger than this many pixels per region and period.",
    )


class RollupOutput(BaseModel):
    """Region-wide rollups per period."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    regions: RegionsSpec = Field(description="The regions.")
    period: str = Field(default="month", description="Rollup period (as in timeseries).")
    variables: tuple[str, ...] | None = Field(
        default=None, description="Variables to roll up (default: all)."
    )
    stats: tuple[str, ...] = Field(
        default=("mean", "std", "min", "max", "median", "p10", "p90", "count"),
        description="Pixel rollup statistics (mean, std, min, max, sum, count exact; median "
        "and pNN from a histogram, with the error bound in `quantile_error_bound`).",
    )
    kinds: tuple[Literal["pixel", "field"], ...] = Field(
        default=("pixel",),
        description="`pixel`: statistics over every valid pixel of each region; `field`: "
        "statistics of the per-field results of the fields inside each region.",
    )
    threshold: float | None = Field(
        default=None, description="Field rollup: share of fields whose mean is above this."
    )
    histogram: dict[str, tuple[float, float, int]] | None = Field(
        default=None,
        description="Quantile histogram per variable: `[lo, hi, bins]` (default: [-1, 1, "
        "4000] for indices, [-0.5, 1.5, 4000] otherwise).",
    )
    composite: CompositeOutput | None = Field(
        default=None, description="Optional composite raster per region and period."
    )

    @field_validator("period")
    @classmethod
    def _check_period(cls, value: str) -> str:
        return _check_period_text(value)

    @field_validator("stats")
    @classmethod
    def _check_stats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in value
               if s == "valid_fraction" or (s != "count" and _stat_problem(s) is not None)]
        if bad:
            raise _error(f"unsupported rollup statistic(s) {bad} (expected mean, std, min, "
                         "max, sum, median, p1..p99, count)")
        return value


class OutputsSpec(BaseModel):
    """Where results are written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dir: str = Field(
        min_length=1,
        description="Output directory (relative to the spec file) or `s3://` URL; the "
        "run manifest is written here too.",
    )
    stats: StatsOutput | None = Field(
        default_factory=StatsOutput,
        description="Per-field statistics table; `null` skips it.",
    )
    timeseries: TimeseriesOutput | None = Field(
        default=None,
        description="Per-field time series / temporal composites (`outputs.dir/timeseries/`).",
    )
    rollup: RollupOutput | None = Field(
        default=None, description="Region rollups per period (`outputs.dir/rollup/`)."
    )


class ClusterSpec(BaseModel):
    """Which Dask cluster runs the job (does not change results)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(
        default=None,
        description="Scheduler of an existing cluster, e.g. `tcp://host:8786`; `null` starts "
        "a local cluster.",
    )
    n_workers: int = Field(default=2, ge=1, description="Local cluster: worker processes.")
    threads_per_worker: int = Field(
        default=1, ge=1, description="Local cluster: threads per worker."
    )
    memory_limit: str = Field(
        default="2GiB",
        description="Local cluster: memory per worker, a Dask size (`2GiB`, `500MB`) or `auto`.",
    )
    dashboard: bool = Field(default=True, description="Serve (and print) the Dask dashboard.")

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is not None and not _ADDRESS.match(value.strip()):
            raise _error(f"invalid scheduler address {value!r} (expected e.g. tcp://host:8786)")
        return None if value is None else value.strip()

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _check_memory(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.strip().lower() != "auto" and not _MEMORY.match(
            value
        ):
            raise _error(f"invalid memory size {value!r} (expected e.g. 2GiB, 500MB or auto)")
        return value


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
        for where, chosen in (("outputs.timeseries.variables", out.timeseries and out.timeseries.variables),
                              ("outputs.rollup.variables", out.rollup and out.rollup.variables)):
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

    def job_hash(self) -> str:
        """Content hash of the spec: 16 hex characters of a SHA-256.

        The source path, ``cluster``, ``on_error`` and the output *location* are left out,
        as they do not change results; so are formatting, comments and keys spelled out at
        their default value.
        """
        content = self.model_dump(mode="json", exclude={"cluster", "on_error"})
        content["outputs"].pop("dir", None)
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


def _describe(value: Any) -> str:
    """Short description of a YAML value for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | int | float):
        return repr(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


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


def _load_yaml(text: str, file: str) -> tuple[Any, _LineMap]:
    """Safe-load ``text``, keeping the line of every key path."""
    loader = yaml.SafeLoader(text)
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
