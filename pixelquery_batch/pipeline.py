"""The job pipeline: spec -> prepared job -> plans -> Dask execution -> outputs + manifest.

Stages of :func:`run_job`, all on one Dask client:

1. per-field statistics (``outputs.stats``), and the per-field *day rows* the time series
   are built from (``outputs.timeseries``);
2. point series (``points``);
3. pixel rollups (``outputs.rollup`` with ``kinds: [pixel]``), tree-reduced on the cluster;
4. on the client, from small tables only: time-series composites and field rollups.

Everything is written through the output layer (:mod:`.storage`: a local directory or an
``s3://`` prefix alike) into the run's staging prefix, published together at the end;
``manifest.json`` is written last.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .catalog.models import Catalog
from .catalog.store import RepoRef, resolve_snapshot
from .errors import InputDataError, OutputError, PixelQueryError, SpecError
from .storage import Location, OutputSink

if TYPE_CHECKING:
    import pandas as pd

    from .executor import ClusterOptions, ExecutionSummary
    from .planner import Plan
    from .tasks import JobContext

__all__ = [
    "PreparedJob",
    "RunResult",
    "load_job",
    "plan_prepared",
    "plan_summary",
    "prepare_job",
    "run_job",
    "validate_job",
]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]

#: Fields per time-series compositing task.
_FIELDS_PER_BUCKET = 2000


@dataclass
class PreparedJob:
    """A job spec resolved against its repository: what planning and running need."""

    spec: Any
    ref: RepoRef
    scenes: Catalog
    fields: Any  # GeoDataFrame (field_id, geometry) or None
    variables: dict[str, Any]  # name -> Expression
    bands: tuple[str, ...]
    cloud: dict[str, Any] | None  # {"band", "classes"|"bits"}
    points: Any = None  # GeoDataFrame (field_id = point id) or None
    regions: Any = None  # GeoDataFrame (region_id, geometry) or None
    problems: list[str] = field(default_factory=list)
    unmasked_scenes: tuple[str, ...] = ()  # scenes without the cloud band (masks.cloud: auto)

    @property
    def optional_bands(self) -> tuple[str, ...]:
        """Bands read where a scene has them: the cloud band of ``masks.cloud: auto``."""
        if self.cloud and self.cloud.get("auto") and self.cloud["band"] not in self.bands:
            return (self.cloud["band"],)
        return ()

    def needed_bands(self, variables: Any = None) -> tuple[str, ...]:
        """Bands every scene must have for ``variables`` (default: all the job's), plus an
        explicit cloud rule's band."""
        names = self.variables if variables is None else variables
        needed = [n for v in names for n in sorted(self.variables[v].names)]
        if self.cloud and not self.cloud.get("auto"):
            needed.append(self.cloud["band"])
        return tuple(dict.fromkeys(needed))

    def context(self, *, daily: bool = False) -> JobContext:
        from .tasks import JobContext

        cloud = self.cloud or {}
        return JobContext(
            repo=self.ref,
            job_hash=self.spec.job_hash(),
            variables=tuple((n, e.text) for n, e in self.variables.items()),
            stats=tuple(self.spec.stats),
            rule=self.spec.pixels,
            mask_nodata=self.spec.masks.nodata,
            cloud_band=cloud.get("band"),
            cloud_classes=tuple(cloud["classes"]) if cloud.get("classes") is not None else None,
            cloud_bits=tuple(cloud["bits"]) if cloud.get("bits") is not None else None,
            on_error=self.spec.on_error,
            daily=daily,
        )

    @property
    def window(self) -> tuple[Any, Any]:
        """The job's time window (spec bounds, else the matched scenes' first/last day)."""
        times = self.scenes.table.column("datetime").to_pylist()
        start = self.spec.scenes.start or (min(times) if times else None)
        end = self.spec.scenes.end or (max(times) if times else None)
        return start, end


def load_job(spec: str | os.PathLike[str] | Any) -> Any:
    """A :class:`~pixelquery_batch.spec.JobSpec` from a path (or the spec itself)."""
    from .spec import JobSpec, load_spec

    return spec if isinstance(spec, JobSpec) else load_spec(spec)


def cloud_rule(rule: Any, scenes: Catalog) -> dict[str, Any] | None:
    """Resolve a ``masks.cloud`` value (``None``, ``"auto"`` or a rule) against the scenes'
    product profiles: ``{"band", "classes", "bits"}`` or ``None``."""
    from .products import load_product

    if rule is None:
        return None
    if rule == "auto":  # scenes without the product's mask band are computed unmasked
        products = sorted({s.product for s in scenes.scenes()})
        masks = {}
        for p in products:
            try:
                cm = load_product(p).cloud_mask
            except PixelQueryError:
                cm = None
            masks[p] = cm
        distinct = {m.model_dump_json() if m else None for m in masks.values()}
        if len(distinct) > 1:
            raise SpecError(
                f"masks.cloud: auto is ambiguous: products {products} flag clouds differently",
                hint="give masks.cloud explicitly ({band, exclude} or {band, bits})")
        cm = next(iter(masks.values()), None)
        if cm is None:
            logger.info("no cloud mask: the product profile defines none")
            return None
        return {"band": cm.band, "classes": list(cm.classes) if cm.classes else None,
                "bits": list(cm.bits) if cm.bits else None, "auto": True}
    return {"band": rule.band, "classes": list(rule.exclude) if rule.exclude is not None else None,
            "bits": list(rule.bits) if rule.bits is not None else None, "auto": False}


def _load_points(spec: Any) -> Any:
    import shapely

    p = spec.points
    gdf = _load_points_file(p.path, p.id, p.layer)
    kinds = set(shapely.get_type_id(gdf.geometry.to_numpy()).tolist())
    if kinds != {0}:
        raise InputDataError(f"{p.path}: points must be Point geometries", path=p.path)
    return gdf


def _load_points_file(path: str, id_column: str, layer: str | None) -> Any:
    """Read a point file into (field_id, geometry), checking ids and CRS."""
    import geopandas as gpd

    p = Path(path)
    if not p.exists():
        raise InputDataError(f"file not found: {p}", path=str(p))
    try:
        gdf = gpd.read_parquet(p) if p.suffix.lower() in (".parquet", ".geoparquet") else \
            gpd.read_file(p, layer=layer) if layer else gpd.read_file(p)
    except Exception as exc:
        raise InputDataError(f"cannot read {p}: {exc}", path=str(p)) from exc
    if id_column not in gdf.columns:
        raise InputDataError(f"{p}: no id column {id_column!r}", path=str(p),
                             hint=f"columns: {[c for c in gdf.columns if c != gdf.geometry.name]}")
    ids = gdf[id_column].astype(str)
    dup = sorted(ids[ids.duplicated(keep=False)].unique().tolist())
    if dup:
        raise InputDataError(f"{p}: duplicate ids {dup[:10]}", path=str(p))
    if gdf.crs is None:
        raise InputDataError(f"{p}: no CRS", path=str(p))
    out = gpd.GeoDataFrame({"field_id": ids.to_numpy()}, geometry=gdf.geometry.to_numpy(), crs=gdf.crs)
    return out.sort_values("field_id", kind="stable").reset_index(drop=True)


def prepare_job(spec: str | os.PathLike[str] | Any, *, check_only: bool = False) -> PreparedJob:
    """Resolve a job spec: snapshot, matched scenes, fields, points, regions, bands.

    With ``check_only`` the consistency problems (bands missing from scenes, empty time
    window) are collected in ``problems`` instead of raised.
    """
    from .config import load_storage_profile
    from .fields import load_fields

    spec = load_job(spec)
    storage = load_storage_profile(spec.repository.storage).resolved()  # sent to workers
    ref = resolve_snapshot(spec.repository.path, spec.repository.snapshot, profile=storage)
    sc = spec.scenes
    scenes = ref.catalog().search(start=sc.start, end=sc.end, product=sc.product,
                                  max_cloud=sc.max_cloud, scene_ids=sc.ids)
    problems: list[str] = []
    if len(scenes) == 0:
        problems.append(f"scenes: no scene between {sc.start} and {sc.end}"
                        + (f" of product {sc.product}" if sc.product else "")
                        + f" at snapshot {ref.snapshot_id}")
    fields = None
    if spec.fields is not None:
        fields = load_fields(spec.fields.path, id_column=spec.fields.id, layer=spec.fields.layer,
                             fix_invalid=spec.fields.fix_invalid)
    points = _load_points(spec) if spec.points is not None else None
    regions = None
    rollup = spec.outputs.rollup
    if rollup is not None:
        r = rollup.regions
        regions = load_fields(r.path, id_column=r.id, layer=r.layer,
                              fix_invalid=r.fix_invalid).rename(columns={"field_id": "region_id"})
    variables = spec.variables()
    cloud = cloud_rule(spec.masks.cloud, scenes) if len(scenes) else None
    bands = tuple(dict.fromkeys(
        [n for e in variables.values() for n in sorted(e.names)]
        + ([cloud["band"]] if cloud and not cloud["auto"] else [])))
    unmasked: list[str] = []
    for scene in scenes.scenes():
        for name in bands:
            try:
                scene.band(name)
            except PixelQueryError:
                msg = (f"scene {scene.scene_id} has no band or role {name!r} "
                       f"(bands: {', '.join(scene.band_names)})")
                if cloud and name == cloud["band"]:
                    msg += (f"; the explicit cloud rule masks.cloud.band {name!r} needs it: use "
                            "`masks: {cloud: auto}` to mask where the band exists, or "
                            "`masks: {cloud: null}` to compute unmasked")
                problems.append(msg)
        if cloud and cloud["auto"]:
            try:
                scene.band(cloud["band"])
            except PixelQueryError:
                unmasked.append(scene.scene_id)
    if unmasked:
        logger.warning("scenes without the cloud-mask band are computed unmasked",
                       extra={"band": cloud["band"] if cloud else None, "scenes": len(unmasked)})
    if problems and not check_only:
        raise SpecError("; ".join(problems[:10]), path=str(spec.source_path))
    return PreparedJob(spec, ref, scenes, fields, variables, bands, cloud, points, regions,
                       problems, tuple(unmasked))


def plan_prepared(job: PreparedJob, *, workers: int = 2) -> Plan:
    """The per-field plan of a prepared job (pure: see :func:`~pixelquery_batch.planner.plan_job`).

    ``workers``: how many workers will share the units (at least two units each)."""
    from .planner import plan_job

    if job.fields is None:
        raise SpecError("this job has no fields (it only rolls pixels up to regions)")
    return plan_job(job.scenes, job.fields, bands=job.bands, optional_bands=job.optional_bands,
                    rule=job.spec.pixels, n_variables=len(job.variables),
                    resolution=job.spec.resolution, min_units=2 * max(1, workers))


def plan_summary(job: PreparedJob) -> dict[str, Any]:
    """What ``pqb plan`` prints: the field plan, plus the point and rollup plans if any.

    No pixel is read.
    """
    from .planner import plan_job, plan_rollup

    out: dict[str, Any] = {"job": job.spec.name, "snapshot_id": job.ref.snapshot_id}
    if job.fields is not None:
        out.update(plan_prepared(job).summary())
    if job.points is not None:
        out["points"] = plan_job(job.scenes, job.points, bands=job.bands,
                                 optional_bands=job.optional_bands, rule="point",
                                 resolution=job.spec.resolution).summary()
    rollup = job.spec.outputs.rollup
    if rollup is not None and "pixel" in rollup.kinds:
        _, period_of = _period_lookup(job, rollup.period)
        out["rollup"] = plan_rollup(job.scenes, job.regions, bands=job.bands,
                                    optional_bands=job.optional_bands, period_of=period_of,
                                    resolution=job.spec.resolution).summary()
    return out


def validate_job(spec_path: str | os.PathLike[str]) -> list[str]:
    """Every problem of a job spec (shape, then consistency with the repository)."""
    try:
        job = prepare_job(spec_path, check_only=True)
    except PixelQueryError as exc:
        problems = getattr(exc, "problems", None)
        if problems:
            return [f"{p['file']}:{p['line']} {p['path']}: {p['message']}" if p.get("path")
                    else f"{p['file']}:{p['line']} {p['message']}" for p in problems]
        return [str(exc)]
    return job.problems


@dataclass
class RunResult:
    """What :func:`run_job` produced."""

    manifest_path: str  # local path or s3:// URL
    manifest: dict[str, Any]
    outputs: dict[str, str]  # output name -> local path or s3:// URL
    summary: ExecutionSummary

    @property
    def ok(self) -> bool:
        return not self.manifest["failures"]


@contextmanager
def _client_for(cluster: Any) -> Iterator[Any]:
    """The client to run on: a started :class:`ClientStarter`'s, or ``cluster`` itself."""
    from .executor import ClientStarter

    if isinstance(cluster, ClientStarter):
        try:
            yield cluster.client()
        finally:
            cluster.close()
    else:
        yield cluster  # "sync" or an existing Client


def _cluster_options(spec: Any, cluster: Any) -> Any:
    from .executor import ClusterOptions

    if cluster is None:
        c = spec.cluster
        # an existing cluster: the spec's address, else DASK_SCHEDULER_ADDRESS (what
        # dask-jobqueue/dask-kubernetes deployments export), else a new LocalCluster
        address = c.address
        if address is None and c.slurm is None and c.kubernetes is None:
            address = os.environ.get("DASK_SCHEDULER_ADDRESS") or None
        return ClusterOptions(address=address, n_workers=c.n_workers,
                              threads_per_worker=c.threads_per_worker,
                              memory_limit=c.memory_limit, dashboard=c.dashboard,
                              processes=c.processes, slurm=c.slurm, kubernetes=c.kubernetes)
    if isinstance(cluster, str) and cluster != "sync":
        return ClusterOptions(address=cluster)
    return cluster


def run_job(
    spec: str | os.PathLike[str] | Any,
    *,
    cluster: ClusterOptions | str | Any | None = None,
    progress: ProgressFn | None = None,
    on_start: Callable[[ExecutionSummary], None] | None = None,
) -> RunResult:
    """Plan and run a job; write its tables and ``manifest.json`` atomically.

    Parameters
    ----------
    spec
        Path of a YAML job spec, or a loaded spec.
    cluster
        ``None``: the spec's ``cluster`` section (an address, else a LocalCluster);
        ``"sync"``: in-process; an address string (``tcp://host:8786``);
        :class:`ClusterOptions`; or an existing ``distributed.Client``.
    progress
        ``progress(stage, done, total)`` callback.
    on_start
        Called when the cluster is connected (scheduler address, dashboard link).
    """
    from . import __version__
    from .executor import ClientStarter, ClusterOptions, ExecutionSummary
    from .writers import RunOutputs, json_bytes

    started = dt.datetime.now(dt.UTC)
    t_start = time.time()
    spec = load_job(spec)
    cluster = _cluster_options(spec, cluster)
    workers_hint = 1 if cluster == "sync" else 4
    if isinstance(cluster, ClusterOptions):  # start it while the job is prepared and planned
        workers_hint = (0 if cluster.address else  # asked once connected
                        cluster.slurm.jobs * cluster.slurm.cores if cluster.slurm else
                        cluster.kubernetes.n_workers * 2 if cluster.kubernetes else
                        cluster.n_workers * cluster.threads)
        cluster = ClientStarter(cluster)
    try:
        job = prepare_job(spec)
    except BaseException:
        if isinstance(cluster, ClientStarter):
            cluster.close()
        raise
    spec = job.spec
    if isinstance(cluster, ClientStarter) and not workers_hint:
        # an existing cluster: plan for the threads it has (connecting is quick; a
        # cluster that cannot be reached fails here, before any planning)
        try:
            workers_hint = sum(cluster.client().nthreads().values()) or 4
        except BaseException:
            cluster.close()
            raise
    t_prepared = time.time()
    out = output_location(spec, job.ref.profile)
    outputs: dict[str, str] = {}
    manifest: dict[str, Any] = {
        "pixelquery_batch": __version__,
        "job": {"name": spec.name, "job_hash": spec.job_hash(),
                "spec_path": str(spec.source_path) if spec.source_path else None,
                "spec": spec.model_dump(mode="json")},
        "started_at": started.isoformat(),
        "repository": {"location": job.ref.location, "requested": spec.repository.snapshot or "main",
                       "snapshot_id": job.ref.snapshot_id},
        "scenes": job.scenes.ids,
        "cloud_mask": job.cloud,
        "failures": [],
        "warnings": [{"warning": f"no {job.cloud['band']!r} band: computed without a cloud "
                      "mask (rows have cloud_masked = false)", "scene_id": sid}
                     for sid in job.unmasked_scenes] if job.cloud else [],
    }
    summary = ExecutionSummary()
    series = None
    io_before: dict[str, Any] = {}
    try:
        run_outputs = RunOutputs(out)
        stage = run_outputs.stage  # every stage writes here; published together at the end
    except BaseException:
        if isinstance(cluster, ClientStarter):
            cluster.close()
        raise
    try:
        # planned while the cluster starts (pure: no pixel is read)
        field_plan = plan_prepared(job, workers=workers_hint) if job.fields is not None else None
        t_planned = time.time()
        ready_at = cluster.ready_at if isinstance(cluster, ClientStarter) else None
        with _client_for(cluster) as client:
            if isinstance(cluster, ClientStarter):
                ready_at = cluster.ready_at
            io_before = _io_counters(client)
            sink = output_sink(client, stage)
            manifest["output"] = {"location": out.display(),
                                  "written_by": "workers" if sink.direct else "client"}
            if field_plan is not None:
                summary, series = _run_fields(job, field_plan, client, sink, outputs, manifest,
                                              progress, on_start)
            elif on_start:
                on_start(summary)
            if job.points is not None:
                _run_points(job, client, stage, outputs, manifest, progress)
            if spec.outputs.rollup is not None and "pixel" in spec.outputs.rollup.kinds:
                _run_pixel_rollup(job, client, stage, outputs, manifest, progress)
            if spec.outputs.rollup is not None and spec.outputs.rollup.composite is not None:
                _run_composites(job, client, sink, outputs, manifest, progress)
            if spec.outputs.rollup is not None and "field" in spec.outputs.rollup.kinds:
                _run_field_rollup(job, series, stage, outputs)
            manifest["storage"] = _io_delta(io_before, _io_counters(client))
            final = run_outputs.publish(outputs)
    except BaseException:
        run_outputs.abort()
        if isinstance(cluster, ClientStarter):  # failed before the cluster was used
            cluster.close()
        raise
    finished = dt.datetime.now(dt.UTC)
    first = summary.first_unit_at
    manifest["timings"] = {  # seconds from the start of run_job: where time to first task goes
        "prepared_s": round(t_prepared - t_start, 3),
        "planned_s": round(t_planned - t_start, 3),
        "cluster_ready_s": round(ready_at - t_start, 3) if ready_at else None,
        "first_unit_started_s": round(first - t_start, 3) if first else None,
        "finished_s": round(time.time() - t_start, 3),
    }
    manifest["finished_at"] = finished.isoformat()
    manifest["duration_s"] = round((finished - started).total_seconds(), 3)
    manifest["outputs"] = final
    out.put("manifest.json", json_bytes(manifest))
    return RunResult(out.display("manifest.json"), manifest, final, summary)


def output_location(spec: Any, repo_profile: Any) -> Location:
    """Where a job's outputs go: ``outputs.dir`` with its storage profile (resolved here,
    on the client: workers get the result with their tasks)."""
    from .config import load_storage_profile

    profile = (load_storage_profile(spec.outputs.storage).resolved()
               if spec.outputs.storage else repo_profile)
    return Location.of(spec.outputs.dir, profile)


def output_sink(client: Any, stage: Location) -> OutputSink:
    """How workers deliver files: straight to ``stage`` when every worker can read a probe
    the client wrote there and write beside it; otherwise, for a local directory, back
    through the scheduler to the client. An ``s3://`` location the workers cannot reach
    stops the run, naming the location and the worker's error."""
    import uuid

    from .storage import probe_location

    if client == "sync" or not hasattr(client, "run"):
        return OutputSink(stage, direct=True)
    token = uuid.uuid4().hex
    key = f".probe/{token}"
    stage.put(key, token.encode())
    try:
        answers = client.run(probe_location, stage, key, token)
    finally:
        stage.delete_prefix(".probe")
    problems = {w: a for w, a in answers.items() if a is not None}
    if not problems:
        return OutputSink(stage, direct=True)
    worker, problem = sorted(problems.items())[0]
    if not stage.is_local:
        raise OutputError(f"workers cannot reach the output location {stage.display()}: "
                          f"{worker}: {problem}",
                          hint="give the workers network access and credentials for it "
                          "(storage profile), or write outputs to a local directory",
                          path=stage.display())
    logger.info("workers do not share the output directory: their files travel back to "
                "the client", extra={"location": stage.display(), "workers": len(problems)})
    return OutputSink(stage, direct=False)


def _io_counters(client: Any) -> dict[str, Any]:
    """Storage counters of the client process and of every worker process."""
    from .storage import io_counters

    out = {"client": io_counters()}
    if client != "sync" and hasattr(client, "run"):
        try:
            out.update(client.run(io_counters))
        except Exception:  # counters are informative: never fail a run on them
            logger.warning("could not collect the workers' storage counters")
    return out


def _io_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Requests, retries and failures of this run (processes sharing counters, as with
    threaded workers in the client process, are counted once)."""
    seen: dict[tuple[int, ...], dict[str, Any]] = {}
    for who, now in after.items():
        then = before.get(who, {"requests": 0, "retries": 0, "failures": 0, "by_op": {}})
        d = {k: now[k] - then[k] for k in ("requests", "retries", "failures")}
        d["by_op"] = {op: n - then["by_op"].get(op, 0) for op, n in now["by_op"].items()
                      if n - then["by_op"].get(op, 0)}
        seen.setdefault((now.get("pid", id(now)),), d)
    total = {k: sum(d[k] for d in seen.values()) for k in ("requests", "retries", "failures")}
    return {**total, "processes": len(seen)}


def _execution_record(summary: ExecutionSummary) -> dict[str, Any]:
    return {
        "scheduler": summary.scheduler, "workers": summary.n_workers,
        "dashboard": summary.dashboard_link, "units": summary.units_total,
        "units_done": summary.units_done, "units_failed": summary.units_failed,
        "rows": summary.rows, "chunks_read": summary.chunks_read,
        "wall_s": round(summary.wall_s, 3), "unit_s_total": round(summary.unit_s_total, 3),
        "unit_s_max": round(summary.unit_s_max, 3),
    }


def _run_fields(job: PreparedJob, plan: Plan, client: Any, sink: OutputSink,
                outputs: dict[str, str], manifest: dict[str, Any], progress: ProgressFn | None,
                on_start: Callable[[ExecutionSummary], None] | None,
                ) -> tuple[ExecutionSummary, pd.DataFrame | None]:
    """Per-field statistics (and day rows -> time series); returns the long series."""
    from .executor import execute
    from .tasks import day_parts, result_schema
    from .writers import TableWriter

    spec = job.spec
    stage = sink.stage
    ts_spec = spec.outputs.timeseries
    ctx = job.context(daily=ts_spec is not None)
    logger.info("plan ready", extra={"job": spec.name, "job_hash": ctx.job_hash,
                                     "snapshot_id": job.ref.snapshot_id, "tasks": len(plan.units),
                                     "pairs": plan.n_pairs})
    schema = result_schema(ctx.stats)
    writer = None
    if spec.outputs.stats is not None:
        writer = TableWriter(stage, "stats", schema, fmt=spec.outputs.stats.format,
                             sort_by=("field_id", "scene_id", "variable"))
    n_buckets = max(1, math.ceil(len(job.fields) / _FIELDS_PER_BUCKET))

    def on_result(res: Any) -> None:
        if writer is not None:
            writer.write_part(res.unit_id, res.table)
        if ts_spec is not None and res.day_table is not None:
            for key, data in day_parts(res.day_table, res.unit_id, n_buckets):
                stage.put(key, data)

    series = None
    try:
        summary = execute(plan, ctx, on_result=on_result, cluster=client, progress=progress,
                          on_start=on_start)
        if writer is not None:
            transform = _add_geometry(job.fields) if spec.outputs.stats.format == "geoparquet" else None
            outputs["stats"] = writer.commit(transform)
        if ts_spec is not None:
            series = _run_timeseries(job, client, sink, outputs, progress)
    finally:
        if writer is not None:
            writer.abort()
        if ts_spec is not None:
            stage.delete_prefix(".days")
    manifest["plan"] = plan.summary()
    manifest["execution"] = _execution_record(summary)
    manifest["failures"].extend(summary.failures)
    manifest["warnings"].extend(summary.warnings)
    return summary, series


def _run_timeseries(job: PreparedJob, client: Any, sink: OutputSink, outputs: dict[str, str],
                    progress: ProgressFn | None) -> pd.DataFrame:
    """Composite the day rows into per-field series, one task per bucket of fields (on the
    cluster: the client never holds every day row); returns the long series."""
    import pyarrow.csv as pacsv

    from .executor import execute_map
    from .tasks import SeriesBucket, SeriesContext, composite_bucket
    from .writers import read_parquet_prefix

    stage = sink.stage
    ts = job.spec.outputs.timeseries
    start, end = job.window
    sctx = SeriesContext(
        period=ts.period, aggregation=ts.aggregation,
        stats=tuple(s for s in job.spec.stats if s not in ("count", "valid_fraction")),
        start=str(start), end=str(end), fill=ts.fill,
        variables=tuple(ts.variables) if ts.variables else None,
        scene_times=tuple(str(t) for t in job.scenes.table.column("datetime").to_pylist()),
        wide=ts.wide, snapshot_id=job.ref.snapshot_id, job_hash=job.spec.job_hash(),
    )
    keys = stage.list(".days")
    names = sorted({k.rsplit("/", 1)[0] for k in keys})
    buckets = [SeriesBucket(n) if sink.direct else
               SeriesBucket(n, tuple(stage.get(k) for k in keys if k.startswith(n + "/")))
               for n in names]
    results = execute_map(composite_bucket, buckets, sctx, sink, cluster=client,
                          progress=progress, stage="timeseries",
                          key_prefix=f"pqb-series-{sctx.job_hash}")
    _write_returned(stage, results)
    tables = ["timeseries"] + (["timeseries_wide"] if ts.wide else [])
    long = None
    for name in tables:
        table = read_parquet_prefix(stage, name)
        if name == "timeseries":
            long = table.to_pandas() if table is not None else _empty_series()
        if ts.format == "csv":
            sink_buf = pa.BufferOutputStream()
            if table is not None:
                pacsv.write_csv(table, sink_buf)
            stage.put(f"{name}.csv", sink_buf.getvalue().to_pybytes())
            stage.delete_prefix(name)
            outputs[name] = f"{name}.csv"
        else:
            if table is None:  # no field had any day row
                from .writers import parquet_bytes

                stage.put(f"{name}/part-empty.parquet", parquet_bytes(
                    pa.Table.from_pandas(_empty_series(), preserve_index=False)))
            outputs[name] = name
    return long


def _write_returned(stage: Location, results: list[dict[str, Any]]) -> None:
    """Write the files workers sent back (when they cannot reach the output location)."""
    for res in results:
        for key, data in res.pop("files", ()):
            stage.put(key, data)


def _empty_series() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(columns=["field_id", "variable", "period_start", "period_end", "mean",
                                 "count", "n_scenes", "filled"])


def _write_frame(stage: Location, name: str, df: pd.DataFrame, fmt: str,
                 sort_by: tuple[str, ...]) -> str:
    from .writers import TableWriter

    table = pa.Table.from_pandas(df, preserve_index=False)
    writer = TableWriter(stage, name, table.schema, fmt=fmt, sort_by=sort_by)
    try:
        writer.write_part("all", table)
        return writer.commit()
    finally:
        writer.abort()


def _run_points(job: PreparedJob, client: Any, stage: Location, outputs: dict[str, str],
                manifest: dict[str, Any], progress: ProgressFn | None) -> None:
    from .executor import execute
    from .planner import plan_job

    plan = plan_job(job.scenes, job.points, bands=job.bands, optional_bands=job.optional_bands,
                    rule="point", n_variables=len(job.variables), resolution=job.spec.resolution)
    ctx = dataclasses.replace(job.context(), rule="point", stats=("mean",), daily=False)
    tables = []
    summary = execute(plan, ctx, on_result=lambda r: tables.append(r.table), cluster=client,
                      progress=progress)
    import pyarrow as pa

    df = pa.concat_tables(tables).to_pandas() if tables else None
    if df is None or df.empty:
        import pandas as pd

        df = pd.DataFrame(columns=["point_id", "scene_id", "datetime", "variable", "value",
                                   "valid", "cloud", "snapshot_id", "job_hash"])
    else:
        df = df.rename(columns={"field_id": "point_id", "mean": "value"})
        df["valid"] = df["count"] > 0
        df["cloud"] = df["cloud_count"] > 0
        df = df[["point_id", "scene_id", "datetime", "variable", "value", "valid", "cloud",
                 "snapshot_id", "job_hash"]]
    outputs["points"] = _write_frame(stage, "points", df, "parquet",
                                     ("point_id", "scene_id", "variable"))
    manifest["points"] = {"plan": plan.summary(), "execution": _execution_record(summary)}
    manifest["failures"].extend(summary.failures)


def _period_lookup(job: PreparedJob, period_text: str) -> tuple[Any, Callable[[str], str]]:
    import numpy as np

    from .kernels.timeseries import parse_period, period_bins

    start, end = job.window
    times = job.scenes.table.column("datetime").to_pylist()
    bins = period_bins(parse_period(period_text), start, end, times)
    starts = bins["period_start"].dt.date.astype(str).to_numpy()
    ends = bins["period_end"].dt.date.astype(str).to_numpy()

    def period_of(day: str) -> str:
        i = int(np.searchsorted(starts, day, side="right")) - 1
        if i < 0 or day > ends[i]:
            return ""  # outside every bin (cannot happen for scenes inside the window)
        return str(starts[i])

    return bins, period_of


def _run_pixel_rollup(job: PreparedJob, client: Any, stage: Location, outputs: dict[str, str],
                      manifest: dict[str, Any], progress: ProgressFn | None) -> None:
    import math

    import pandas as pd

    from .executor import execute_rollup
    from .kernels.rollup import histogram_for
    from .planner import plan_rollup
    from .tasks import RollupContext

    rollup = job.spec.outputs.rollup
    variables = tuple(rollup.variables or job.variables)
    bins, period_of = _period_lookup(job, rollup.period)
    plan = plan_rollup(job.scenes, job.regions, bands=job.needed_bands(variables),
                       optional_bands=job.optional_bands, period_of=period_of,
                       n_variables=len(variables), resolution=job.spec.resolution)
    ctx = job.context()
    rctx = RollupContext(
        job=dataclasses.replace(ctx, variables=tuple((n, t) for n, t in ctx.variables if n in variables)),
        variables=variables,
        histograms=tuple((v, tuple(h)) for v, h in (rollup.histogram or {}).items()),
    )
    result = execute_rollup(list(plan.units), rctx, cluster=client, progress=progress)
    rows = []
    region_ids = job.regions["region_id"].tolist()
    for region_id in region_ids:
        for variable in variables:
            spec = histogram_for(variable, (rollup.histogram or {}).get(variable))
            for b in bins.itertuples(index=False):
                key = (region_id, str(b.period_start.date()), variable)
                part = result.partials.get(key)
                stats = part.finalize(list(rollup.stats)) if part is not None and part.count > 0 \
                    else {s: (0.0 if s == "count" else math.nan) for s in rollup.stats}
                stats.setdefault("count", part.count if part is not None else 0.0)
                bound = stats.pop("quantile_error_bound", spec.error_bound())
                rows.append({"region_id": region_id, "period_start": b.period_start,
                             "period_end": b.period_end, "variable": variable,
                             **{s: float(stats[s]) for s in rollup.stats},
                             "count": float(stats["count"]),
                             "n_scenes": len(result.days.get(key, ())),
                             "quantile_error_bound": float(bound),
                             "snapshot_id": job.ref.snapshot_id, "job_hash": job.spec.job_hash()})
    df = pd.DataFrame(rows)
    outputs["rollup"] = _write_frame(stage, "rollup", df, "parquet",
                                     ("region_id", "variable", "period_start"))
    manifest["rollup"] = {"plan": plan.summary(), "units": result.units,
                          "chunks_read": result.chunks_read,
                          "unit_s_total": round(result.duration_s, 3)}
    manifest["failures"].extend(result.failures)


def _composite_units(job: PreparedJob) -> tuple[Any, ...]:
    from .planner import plan_composites

    rollup = job.spec.outputs.rollup
    comp = rollup.composite
    _, period_of = _period_lookup(job, rollup.period)
    names = [comp.variable] + (["ndvi"] if comp.method == "max_ndvi" else [])
    return plan_composites(job.scenes, job.regions, bands=job.needed_bands(names),
                           period_of=period_of, crs=comp.crs, resolution=comp.resolution,
                           variable=comp.variable, method=comp.method,
                           max_pixels=comp.max_pixels, optional_bands=job.optional_bands)


def _run_composites(job: PreparedJob, client: Any, sink: OutputSink, outputs: dict[str, str],
                    manifest: dict[str, Any], progress: ProgressFn | None) -> None:
    """Composite rasters per region and period: COGs written by the workers (or sent back
    to the client, see :func:`output_sink`) into ``composites/`` of the run's stage."""
    from .executor import execute_map
    from .tasks import run_composite_unit

    units = _composite_units(job)
    results = execute_map(run_composite_unit, list(units), job.context(), sink,
                          cluster=client, progress=progress, stage="composites",
                          key_prefix=f"pqb-composite-{job.spec.job_hash()}")
    _write_returned(sink.stage, results)
    outputs["composites"] = "composites"
    manifest["composites"] = results


def _run_field_rollup(job: PreparedJob, long: pd.DataFrame | None, stage: Location,
                      outputs: dict[str, str]) -> None:
    import geopandas as gpd

    from .kernels.rollup import field_rollup

    rollup = job.spec.outputs.rollup
    if long is None:
        raise SpecError("the field rollup needs outputs.timeseries")
    if rollup.variables:
        long = long[long["variable"].isin(rollup.variables)]
    ea = job.fields.to_crs("EPSG:6933")
    centroids = gpd.GeoDataFrame({"field_id": ea["field_id"], "area_m2": ea.area},
                                 geometry=ea.centroid, crs=ea.crs)
    joined = gpd.sjoin(centroids, job.regions.to_crs("EPSG:6933"), how="left", predicate="within")
    assignment = joined[["field_id", "region_id", "area_m2"]].drop_duplicates("field_id")
    df = field_rollup(long, assignment, threshold=rollup.threshold, stat="mean",
                      regions=job.regions["region_id"].tolist())
    df["snapshot_id"] = job.ref.snapshot_id
    df["job_hash"] = job.spec.job_hash()
    outputs["rollup_fields"] = _write_frame(stage, "rollup_fields", df, "parquet",
                                            ("region_id", "variable", "period_start"))


def _add_geometry(fields: Any) -> Callable[[Any], Any]:
    def transform(table: Any) -> Any:
        import geopandas as gpd

        df = table.to_pandas()
        geo = fields.to_crs("EPSG:4326").set_index("field_id").geometry
        gdf = gpd.GeoDataFrame(df, geometry=df["field_id"].map(geo).to_numpy(), crs="EPSG:4326")
        return gdf.to_arrow(geometry_encoding="WKB")

    return transform
