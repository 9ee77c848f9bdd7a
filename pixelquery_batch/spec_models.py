"""Sub-models of the job spec and their validation helpers (edge layer: pydantic).

:mod:`pixelquery_batch.spec` assembles them into :class:`~pixelquery_batch.spec.JobSpec`
and reads YAML with line numbers; this module holds the parts of a spec (repository,
scenes, fields, masks, outputs, cluster) so each stays small and documented.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .errors import SpecError

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


class PngOutput(BaseModel):
    """Per-field PNG pictures of a variable, rendered by the workers from the pixels the
    statistics read (no second read): ``png/<field_id>/<date>_<variable>.png``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variable: str = Field(
        description="An index or band of the job, or `truecolor` (red, green, blue bands).")
    scenes: Literal["all", "latest", "best"] = Field(
        default="all",
        description="`all` scenes, the `latest` per field, or the `best` (least masked) per "
        "field and `period`.")
    period: str = Field(default="month", description="Period for `scenes: best`.")
    colormap: str = Field(
        default="rdylgn",
        description="`rdylgn`, `viridis`, `inferno`, `greys` (any matplotlib name when "
        "matplotlib is installed).")
    vmin: float | None = Field(default=None, description="Value at the low end of the colormap.")
    vmax: float | None = Field(default=None, description="Value at the high end of the colormap.")
    stretch: tuple[float, float] | None = Field(
        default=None,
        description="Percentile stretch per picture, e.g. `[2, 98]` (instead of vmin/vmax).")
    min_size: int = Field(
        default=0, ge=0, le=4096,
        description="Upscale (nearest) so the longer side has at least this many pixels.")
    legend: bool = Field(default=False, description="Append a colormap strip under the picture.")

    @model_validator(mode="after")
    def _range(self) -> PngOutput:
        if self.stretch is None and (self.vmin is None) != (self.vmax is None):
            raise _error("png: give both vmin and vmax, or a stretch")
        if self.stretch is not None and not 0 <= self.stretch[0] < self.stretch[1] <= 100:
            raise _error(f"png.stretch: {list(self.stretch)} must be two percentiles, low < high")
        if self.vmin is not None and self.vmax is not None and self.vmin >= self.vmax:
            raise _error(f"png: vmin {self.vmin} must be below vmax {self.vmax}")
        _check_period_text(self.period)
        return self


class CogOutput(BaseModel):
    """Per-field Cloud-Optimized GeoTIFF clips: ``cog/<field_id>/<date>_<variable>.tif``,
    the field's pixel window, NaN outside the polygon and where masked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variables: tuple[str, ...] = Field(min_length=1, description="Indices and/or bands.")
    scenes: Literal["all", "latest", "best"] = Field(
        default="all", description="As for `png`.")
    period: str = Field(default="month", description="Period for `scenes: best`.")
    fields: bool = Field(
        default=True, description="Clip every field (`false`: regions only).")
    regions: bool = Field(
        default=False,
        description="Also clip every region of `outputs.rollup.regions`, per scene: "
        "`cog_regions/<region_id>/<date>_<variable>.tif` on the scene's own grid, NaN "
        "outside the region (job's pixel rule) and where masked; rebuilt when anything "
        "changed, as rollups are.")
    max_pixels: int = Field(
        default=25_000_000, gt=0,
        description="Refuse region clips larger than this many pixels (before any work).")


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
    storage: str | None = Field(
        default=None,
        description="Storage profile (`configs/storage/NAME.yaml` or a path) for an `s3://` "
        "`dir`; `null`: the repository's profile.",
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
    png: PngOutput | None = Field(
        default=None, description="Per-field PNG pictures (`outputs.dir/png/`).")
    cog: CogOutput | None = Field(
        default=None, description="Per-field COG clips (`outputs.dir/cog/`), and per region "
        "with `regions: true` (`outputs.dir/cog_regions/`).")

    @model_validator(mode="after")
    def _region_clips(self) -> OutputsSpec:
        if self.cog is not None and self.cog.regions and self.rollup is None:
            raise _error("outputs.cog.regions clips the regions of outputs.rollup.regions: "
                         "add outputs.rollup (with its regions)")
        if self.cog is not None and not (self.cog.fields or self.cog.regions):
            raise _error("outputs.cog clips nothing: set fields and/or regions to true")
        return self


class SlurmClusterSpec(BaseModel):
    """Workers as SLURM jobs (dask-jobqueue's ``SLURMCluster``; `pip install
    "pixelquery_batch[jobqueue]"`). Each job runs ``processes`` worker processes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    jobs: int = Field(default=1, ge=1, description="SLURM jobs to start.")
    cores: int = Field(ge=1, description="Cores per job (`--cpus-per-task`).")
    memory: str = Field(description="Memory per job, e.g. `16GiB`.")
    processes: int = Field(default=1, ge=1, description="Worker processes per job.")
    walltime: str = Field(default="02:00:00", pattern=r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$",
                          description="Job time limit, `HH:MM:SS` or `D-HH:MM:SS`.")
    queue: str | None = Field(default=None, description="Partition (`-p`).")
    account: str | None = Field(default=None, description="Account (`-A`).")
    job_script_prologue: tuple[str, ...] = Field(
        default=(), description="Shell lines run before the worker starts (e.g. activating "
        "the environment where pixelquery_batch is installed).")
    job_extra_directives: tuple[str, ...] = Field(
        default=(), description="Extra `#SBATCH` options, e.g. `--constraint=skylake`.")
    local_directory: str | None = Field(
        default=None, description="Worker scratch directory on the compute node.")
    interface: str | None = Field(default=None, description="Network interface, e.g. `ib0`.")

    @field_validator("memory")
    @classmethod
    def _check_memory(cls, value: str) -> str:
        if not _MEMORY.match(value):
            raise _error(f"invalid memory size {value!r} (expected e.g. 16GiB)")
        return value


class KubernetesClusterSpec(BaseModel):
    """A Dask cluster on Kubernetes (dask-kubernetes' operator ``KubeCluster``; `pip install
    dask-kubernetes` and the Dask operator in the cluster)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63,
                      description="Cluster name (a Kubernetes resource name).")
    image: str = Field(min_length=1, description="Container image with pixelquery_batch "
                       "installed (same version as the client).")
    n_workers: int = Field(default=2, ge=1, description="Worker pods.")
    namespace: str | None = Field(default=None, description="Namespace; `null`: the current.")
    resources: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Worker pod resources, e.g. `{requests: {cpu: '2', memory: 8Gi}, "
        "limits: {memory: 8Gi}}`.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment of the pods (never credentials: they travel with the "
        "tasks).")

    @field_validator("resources")
    @classmethod
    def _check_resources(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        bad = set(value) - {"requests", "limits"}
        if bad:
            raise _error(f"resources: unknown key(s) {sorted(bad)} (use requests / limits)")
        return value

    @field_validator("env")
    @classmethod
    def _no_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        secret = [k for k in value if re.search(r"SECRET|TOKEN|PASSWORD|KEY_ID", k, re.I)]
        if secret:
            raise _error(f"env: {secret} look like credentials: they must not be put in pod "
                         "specs (the job sends them to the workers with the tasks)")
        return value


class ClusterSpec(BaseModel):
    """Which Dask cluster runs the job (does not change results)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(
        default=None,
        description="Scheduler of an existing cluster, e.g. `tcp://host:8786`; `null`: the "
        "`DASK_SCHEDULER_ADDRESS` environment variable if set, else a new local cluster.",
    )
    n_workers: int = Field(default=1, ge=1, description="Local cluster: workers.")
    threads_per_worker: int | None = Field(
        default=None, ge=1,
        description="Local cluster: threads per worker (`null`: one per CPU core).",
    )
    processes: bool | Literal["auto"] = Field(
        default="auto",
        description="Local cluster: workers are threads of this process (`false`: no "
        "worker start-up, one shared cache of field pixels) or separate processes (`true`: "
        "no GIL shared, a memory limit enforced per worker, each holding only its strips "
        "of fields). `auto` (the default): threads for jobs under 1,000,000 field-scene "
        "pairs, else as many single-thread worker processes as the threads asked for. "
        "Measured by hand on 2 cores with 12 scenes: 100,000 fields, the same wall time, "
        "execution 3.6-3.8 s instead of 4.2-4.4 s, under 0.5 GB per worker where the "
        "threaded process peaks at 1.1-1.2 GB; 20,000 and 50,000 fields, threads 0.5-0.6 s "
        "sooner (worker start-up).",
    )
    memory_limit: str = Field(
        default="auto",
        description="Local cluster: memory per worker, a Dask size (`2GiB`, `500MB`) or "
        "`auto` (the machine's memory shared among the workers).",
    )
    dashboard: bool = Field(default=True, description="Serve (and print) the Dask dashboard.")
    slurm: SlurmClusterSpec | None = Field(
        default=None, description="Start the workers as SLURM jobs (dask-jobqueue).")
    kubernetes: KubernetesClusterSpec | None = Field(
        default=None, description="Start the cluster on Kubernetes (dask-kubernetes).")

    @model_validator(mode="after")
    def _one_kind(self) -> ClusterSpec:
        kinds = [k for k in ("address", "slurm", "kubernetes") if getattr(self, k) is not None]
        if len(kinds) > 1:
            raise _error(f"cluster: {' and '.join(kinds)} are exclusive (choose one)")
        return self

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
