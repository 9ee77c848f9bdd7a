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


def prepare_job(spec: str | os.PathLike[str] | Any, *, check_only: bool = False,
                on_scenes: Callable[[int], None] | None = None) -> PreparedJob:
    """Resolve a job spec: snapshot, matched scenes, fields, points, regions, bands.

    With ``check_only`` the consistency problems (bands missing from scenes, empty time
    window) are collected in ``problems`` instead of raised. ``on_scenes`` is told the
    number of matched scenes as soon as the catalog is searched.
    """
    from .config import load_storage_profile
    from .fields import load_fields

    spec = load_job(spec)
    storage = load_storage_profile(spec.repository.storage).resolved()  # sent to workers
    ref = resolve_snapshot(spec.repository.path, spec.repository.snapshot, profile=storage)
    sc = spec.scenes
    scenes = ref.catalog().search(start=sc.start, end=sc.end, product=sc.product,
                                  max_cloud=sc.max_cloud, scene_ids=sc.ids)
    if on_scenes is not None:
        on_scenes(len(scenes))
    problems: list[str] = []
    if sc.ids:
        unknown = sorted(set(sc.ids) - set(scenes.ids))
        if unknown:
            in_catalog = set(ref.catalog().search(scene_ids=tuple(unknown)).ids)
            missing = [i for i in unknown if i not in in_catalog]
            if missing:
                problems.append(f"scenes.ids: {', '.join(missing[:10])} not in the catalog at "
                                f"snapshot {ref.snapshot_id} (see `pqb scenes`)")
            filtered = [i for i in unknown if i in in_catalog]
            if filtered:
                problems.append(f"scenes.ids: {', '.join(filtered[:10])} outside the spec's "
                                "time window / product / cloud filter")
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
        full = plan_prepared(job)
        out.update(full.summary())
        out["incremental"] = _incremental_summary(job, full)
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


def _incremental_summary(job: PreparedJob, full: Plan) -> dict[str, Any]:
    """What ``pqb run`` would compute given what the outputs hold, and why."""
    from .incremental import STATS, field_hashes, load_state
    from .planner import restrict_plan
    from .writers import delta

    spec = job.spec
    out = output_location(spec, job.ref.profile)
    result_hash = spec.result_hash()
    state = load_state(out, result_hash, field_hashes(job.fields),
                       need_days=spec.outputs.timeseries is not None)
    todo = restrict_plan(full, lambda f, s: state.is_done(f, s))
    if not state.table_exists:
        reason = "first run: no stats table in the output location yet"
    elif state.other_result_rows and not state.done:
        prev = delta.read(out, STATS, columns=["result_hash"])
        old = sorted(set(prev.column("result_hash").to_pylist())) if prev is not None else []
        reason = (f"the spec changes what the results mean (result hash {', '.join(old)} -> "
                  f"{result_hash}: repository, bands/indices, statistics, pixel rule, masks or "
                  "resolution): every pair is recomputed and the table overwritten")
    elif state.rebuild:
        reason = "time series requested but no day rows stored: every pair is recomputed"
    elif todo.n_pairs == 0:
        reason = "nothing new: every pair is in the outputs (or in the failure ledger)"
    else:
        reason = (f"{todo.n_pairs} pair(s) missing from the outputs: new scenes or fields"
                  + (f"; {len(state.stale_fields)} field(s) with a changed geometry"
                     if state.stale_fields else ""))
    return {"pairs_to_compute": todo.n_pairs, "tasks": len(todo.units),
            "pairs_in_outputs": len(state.done), "pairs_staged_by_an_unfinished_run":
            len(state.staged), "pairs_in_failure_ledger": len(state.failed),
            "fields_with_changed_geometry": sorted(state.stale_fields)[:50], "reason": reason}


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
        except BaseException:
            cluster.close()
            raise
        cluster.close_soon()  # the caller's last steps overlap the shutdown; close() joins
    else:
        yield cluster  # "sync" or an existing Client


def _cluster_record(options: Any, asked: Any) -> dict[str, Any]:
    """The manifest's record of the cluster a run started or joined."""
    if not options.local:
        return {"address": options.address, "deployed": options.address is None}
    return {"processes": bool(options.processes), "n_workers": options.n_workers,
            "threads_per_worker": options.threads, "chosen": asked.processes == "auto"}


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
    retry_failed: bool = False,
) -> RunResult:
    """Plan and run a job incrementally; publish its tables and ``manifest.json``.

    Only the (field, scene) pairs the outputs do not hold yet (under the same result hash
    and field geometry) are computed: a rerun computes nothing, a run after new scenes
    computes only those, a run after a crash only what the crashed run did not finish
    (see :mod:`pixelquery_batch.incremental`).

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
    retry_failed
        Compute only the pairs recorded in the failure ledger.
    """
    import uuid

    from . import __version__
    from .executor import ClientStarter, ClusterOptions, ExecutionSummary
    from .fields import count_features
    from .gather import use_system_pool_for_arrow
    from .incremental import field_hashes, load_state
    from .planner import restrict_plan
    from .writers import RunOutputs

    use_system_pool_for_arrow()  # before the fields and the plan are read into Arrow
    started = dt.datetime.now(dt.UTC)
    t_start = time.time()
    run_id = started.strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    spec = load_job(spec)
    cluster = _cluster_options(spec, cluster)
    workers_hint = 1 if cluster == "sync" else 4
    if isinstance(cluster, ClusterOptions):  # start it while the job is prepared and planned
        workers_hint = (0 if cluster.address else  # asked once connected
                        cluster.slurm.jobs * cluster.slurm.cores if cluster.slurm else
                        cluster.kubernetes.n_workers * 2 if cluster.kubernetes else
                        cluster.n_workers * cluster.threads)
        fields = spec.fields
        cluster = ClientStarter(cluster, count_fields=None if fields is None else (
            lambda: count_features(fields.path, layer=fields.layer)))
    try:
        job = prepare_job(spec, on_scenes=cluster.scenes_found
                          if isinstance(cluster, ClientStarter) else None)
        spec = job.spec
        out = output_location(spec, job.ref.profile)
        result_hash = spec.result_hash()
        hashes = field_hashes(job.fields) if job.fields is not None else {}
        state = (load_state(out, result_hash, hashes,
                            need_days=spec.outputs.timeseries is not None)
                 if job.fields is not None else None)
    except BaseException:
        if isinstance(cluster, ClientStarter):
            cluster.close()
        raise
    if isinstance(cluster, ClientStarter) and not workers_hint:
        # an existing cluster: plan for the threads it has (connecting is quick; a
        # cluster that cannot be reached fails here, before any planning)
        try:
            workers_hint = sum(cluster.client().nthreads().values()) or 4
        except BaseException:
            cluster.close()
            raise
    t_prepared = time.time()
    outputs: dict[str, str] = {}
    manifest: dict[str, Any] = {
        "pixelquery_batch": __version__,
        "run_id": run_id,
        "job": {"name": spec.name, "job_hash": spec.job_hash(), "result_hash": result_hash,
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
        field_plan = todo = None
        if job.fields is not None:
            field_plan = plan_prepared(job, workers=workers_hint)
            todo = (field_plan if not (retry_failed or state.done or state.staged or state.failed)
                    else restrict_plan(field_plan,
                                       lambda f, s: state.is_done(f, s, retry_failed=retry_failed)))
        clips = _region_clip_units(job)  # a clip over its size limit: refused before any work
        from .gather import trim_heap

        trim_heap()  # reading and planning the fields left freed pages (~65 MB at 100,000)
        t_planned = time.time()
        changed = (todo is not None and (todo.units or state.staged)) or _derived_stale(
            out, spec, state, job)
        ready_at = None
        if not changed:  # nothing new: say so, start nothing
            if isinstance(cluster, ClientStarter):
                cluster.close()
            if on_start:
                on_start(summary)
            final = _previous_outputs(out, spec)
            manifest["plan"] = field_plan.summary() if field_plan is not None else None
            manifest["execution"] = {"pairs_computed": 0,
                                     "pairs_reused": field_plan.n_pairs if field_plan else 0,
                                     "units": 0}
            logger.info("nothing to compute", extra={"job": spec.name, "run_id": run_id})
        else:
            with _client_for(cluster) as client:
                if isinstance(cluster, ClientStarter):
                    ready_at = cluster.ready_at
                    manifest["cluster"] = _cluster_record(cluster.options, spec.cluster)
                io_before = _io_counters(client)
                sink = output_sink(client, stage)
                manifest["output"] = {"location": out.display(),
                                      "written_by": "workers" if sink.direct else "client"}
                series = None
                if todo is not None:
                    summary, series = _run_fields(job, field_plan, todo, state, client, sink,
                                                  outputs, manifest, progress, on_start,
                                                  run_id=run_id, hashes=hashes)
                elif on_start:
                    on_start(summary)
                if job.points is not None:
                    _run_points(job, client, stage, outputs, manifest, progress)
                if spec.outputs.rollup is not None and "pixel" in spec.outputs.rollup.kinds:
                    _run_pixel_rollup(job, client, stage, outputs, manifest, progress)
                if spec.outputs.rollup is not None and spec.outputs.rollup.composite is not None:
                    _run_composites(job, client, sink, outputs, manifest, progress)
                if clips is not None:
                    _run_region_clips(job, clips, client, sink, outputs, manifest, progress)
                if spec.outputs.rollup is not None and "field" in spec.outputs.rollup.kinds:
                    _run_field_rollup(job, series, stage, outputs)
                manifest["storage"] = _io_delta(io_before, _io_counters(client))
                stats_done = outputs.pop("stats", None)
                tables = _publish_tables(out, stage, outputs, manifest)
                final = {**run_outputs.publish(outputs), **tables}
                final.pop("stats_export", None)
                if stats_done is not None:
                    final["stats"] = stats_done
                final = {**_previous_outputs(out, spec), **final}
                dirs = out.list_dirs()
                final.update({k: out.display(k) for k in ("png", "cog")
                              if getattr(spec.outputs, k) is not None and k in dirs
                              and getattr(getattr(spec.outputs, k), "fields", True)})
    except BaseException:
        run_outputs.abort()
        if isinstance(cluster, ClientStarter):  # failed before the cluster was used
            cluster.close()
        raise
    try:
        return _finish(out, job, manifest, final, summary, started, t_start, t_prepared,
                       t_planned, ready_at)
    finally:
        if isinstance(cluster, ClientStarter):
            cluster.close()  # waits for the shutdown started as the cluster's work ended


def _finish(out: Location, job: PreparedJob, manifest: dict[str, Any], final: dict[str, str],
            summary: Any, started: dt.datetime, t_start: float, t_prepared: float,
            t_planned: float, ready_at: float | None) -> RunResult:
    """Timings, manifest, run record and report of a finished run."""
    from .writers import json_bytes

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
    final["report"] = out.display("report.html")
    manifest["outputs"] = final
    _record_run(out, manifest)
    out.put("manifest.json", json_bytes(manifest))
    try:
        from .gather import release_memory
        from .report import write_report

        release_memory()

        write_report(out, fields=job.fields)
    except Exception:  # the report summarises the outputs: it never fails the run
        logger.warning("could not write report.html", exc_info=True)
        final.pop("report", None)
    return RunResult(out.display("manifest.json"), manifest, final, summary)


#: Derived tables kept as Delta tables (rebuilt by a run that changed anything: one
#: overwrite commit each, earlier versions readable); CSV stays a plain file.
_DELTA_OUTPUTS = ("timeseries", "timeseries_wide", "points", "rollup", "rollup_fields")


def _publish_tables(out: Location, stage: Location, outputs: dict[str, str],
                    manifest: dict[str, Any]) -> dict[str, str]:
    """Commit the staged derived tables (Parquet parts under ``stage/<name>/``) to their
    Delta tables; removes them from ``outputs`` and returns their locations."""
    from .writers import delta, read_parquet_prefix

    done = {}
    dirs = set(out.list_dirs())
    for name in [n for n in _DELTA_OUTPUTS if n in outputs and outputs[n] == n]:
        table = read_parquet_prefix(stage, name)
        if table is None:
            continue
        if name in dirs and "_delta_log" not in out.list_dirs(name):
            out.delete_prefix(name)  # a plain Parquet directory of an older version
        delta.overwrite(out, name, table, metadata={"run_id": manifest["run_id"],
                                                    "snapshot_id": manifest["repository"]["snapshot_id"]})
        stage.delete_prefix(name)
        outputs.pop(name)
        done[name] = out.display(name)
    return done


def _derived_stale(out: Location, spec: Any, state: Any, job: PreparedJob) -> bool:
    """Whether outputs other than the per-field rows must be (re)built although no pair is
    missing: first run, another spec (job hash) than the last run, or an output missing."""
    from .incremental import RUNS
    from .writers import delta

    runs = delta.read(out, RUNS, columns=["job_hash", "status", "snapshot_id"])
    if runs is None or runs.num_rows == 0:
        return True
    last = runs.slice(runs.num_rows - 1).to_pylist()[0]
    if last["job_hash"] != spec.job_hash() or last["status"] == "failed":
        return True
    if job.fields is None and last["snapshot_id"] != job.ref.snapshot_id:
        return True  # points / rollups only: new data can only be seen by snapshot
    return set(_previous_outputs(out, spec)) != set(_expected_outputs(spec))


def _expected_outputs(spec: Any) -> list[str]:
    o = spec.outputs
    names = []
    if spec.fields is not None and o.stats is not None:
        names.append("stats")
    if o.timeseries is not None:
        names += ["timeseries"] + (["timeseries_wide"] if o.timeseries.wide else [])
    if spec.points is not None:
        names.append("points")
    if o.rollup is not None:
        if "pixel" in o.rollup.kinds:
            names.append("rollup")
        if "field" in o.rollup.kinds:
            names.append("rollup_fields")
        if o.rollup.composite is not None:
            names.append("composites")
    if o.cog is not None and o.cog.regions:
        names.append("cog_regions")
    return names


def _previous_outputs(out: Location, spec: Any) -> dict[str, str]:
    """Where the job's outputs are (those a run without new work leaves as they are)."""
    found = {}
    dirs = set(out.list_dirs())  # one listing, not every object of every table
    for name in _expected_outputs(spec):
        for key in (f"{name}.csv", f"{name}.geoparquet"):
            if out.exists(key):
                found[name] = out.display(key)
                break
        else:
            if name in dirs:
                found[name] = out.display(name)
    return found


def _record_run(out: Location, manifest: dict[str, Any]) -> None:
    """Append the run to the ``runs`` table (one commit)."""
    from .incremental import RUNS
    from .writers import delta

    ex = manifest.get("execution") or {}
    failed = ex.get("pairs_failed", 0)
    row = {
        "run_id": manifest["run_id"], "job_name": manifest["job"]["name"],
        "started_at": manifest["started_at"], "finished_at": manifest["finished_at"],
        "duration_s": float(manifest["duration_s"]),
        "snapshot_id": manifest["repository"]["snapshot_id"],
        "job_hash": manifest["job"]["job_hash"], "result_hash": manifest["job"]["result_hash"],
        "pairs_computed": int(ex.get("pairs_computed", 0)),
        "pairs_reused": int(ex.get("pairs_reused", 0)), "pairs_failed": int(failed),
        "status": "partial" if failed or manifest["failures"] else "ok",
    }
    delta.append(out, RUNS, pa.Table.from_pylist([row]),
                 metadata={"run_id": manifest["run_id"]})


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
        "per_worker": summary.worker_record(),
        "unit_phases": summary.phase_record(),
    }


def _run_fields(job: PreparedJob, full: Plan, plan: Plan, state: Any, client: Any,
                sink: OutputSink, outputs: dict[str, str], manifest: dict[str, Any],
                progress: ProgressFn | None, on_start: Callable[[ExecutionSummary], None] | None,
                *, run_id: str, hashes: dict[str, str],
                ) -> tuple[ExecutionSummary, pd.DataFrame | None]:
    """Per-field statistics and day rows of the pairs still to compute (``plan``; ``full``
    is the whole job): units' rows staged durably as they complete, then published in one
    commit per table; the time series rebuilt from every day row. Returns the long series."""
    from .executor import ExecutionSummary, execute
    from .gather import release_memory
    from .incremental import (
        DAYS,
        STATS,
        STATS_KEYS,
        FieldHashes,
        WorkArea,
        dedupe,
        drop_pairs,
        publish,
        publish_parts,
        stage_unit,
    )
    from .tasks import RowStage, result_schema

    spec = job.spec
    stage = sink.stage
    ts_spec = spec.outputs.timeseries
    result_hash = spec.result_hash()
    ctx = job.context(daily=ts_spec is not None)
    root = stage_root(stage)
    work = WorkArea(root, result_hash)
    render_at = root.child(work.prefix, "render")
    field_cog = spec.outputs.cog if spec.outputs.cog is not None and spec.outputs.cog.fields \
        else None
    if spec.outputs.png is not None or field_cog is not None:
        from .render import safe_names
        from .tasks import RenderSpec

        renames = safe_names(job.fields["field_id"].astype(str))
        ctx = dataclasses.replace(ctx, render=RenderSpec(
            spec.outputs.png, field_cog, tuple(sorted(renames.items())),
            OutputSink(render_at, direct=sink.direct)))
    logger.info("plan ready", extra={"job": spec.name, "job_hash": ctx.job_hash,
                                     "snapshot_id": job.ref.snapshot_id, "tasks": len(plan.units),
                                     "pairs": plan.n_pairs, "pairs_total": full.n_pairs})
    schema = result_schema(ctx.stats)
    lookup = FieldHashes.of(hashes)
    computed_parts: list[pa.Table] = []  # (field_id, scene_id) of every row computed

    if sink.direct:  # units stage their own rows: only which pairs were computed comes back
        plan = dataclasses.replace(plan, units=tuple(
            dataclasses.replace(u, fields=u.fields.with_hashes(lookup.take(u.fields.ids)))
            for u in plan.units))
        ctx = dataclasses.replace(ctx, rows_to=RowStage(work, run_id))
    units = {u.unit_id: u for u in plan.units}

    def on_result(res: Any) -> None:
        if not res.staged:  # rows (and pictures) relayed by workers that cannot reach us
            for key, data in res.files:
                render_at.put(key, data)
            stage_unit(work, units[res.unit_id], [res.table.cast(schema)],
                       None if res.day_table is None else [res.day_table.cast(schema)],
                       hashes=lookup, run_id=run_id)
        computed_parts.append(pa.table({c: res.table.column(c).cast(pa.string())
                                        for c in ("field_id", "scene_id")}))

    summary = ExecutionSummary()
    if plan.units:
        summary = execute(plan, ctx, on_result=on_result, cluster=client, progress=progress,
                          on_start=on_start)
    elif on_start:
        on_start(summary)
    release_memory()  # the units' garbage, before the rows are committed
    # publish everything staged (this run's units and an interrupted run's) in one commit
    # per table; pairs an interrupted run already published are dropped (same result hash
    # and geometry: same values), so a replay never appends twice
    replace_all = state.other_result_rows > 0 and not state.done
    computed = (pa.concat_tables(computed_parts).group_by(["field_id", "scene_id"]).aggregate([])
                if computed_parts else pa.table({"field_id": [], "scene_id": []}))
    meta = {"run_id": run_id, "snapshot_id": job.ref.snapshot_id, "job_hash": ctx.job_hash}
    drop = state.done if not replace_all else set()
    if state.staged or state.stale_fields or state.rebuild:
        # an interrupted run's parts may hold pairs this run computed again; rows being
        # replaced need an upsert: the whole staged table at once
        staged = dedupe(work.read("stats"), STATS_KEYS)
        if staged is not None:
            staged = drop_pairs(staged, drop)
        publish(root, STATS, staged, STATS_KEYS, replace_all=replace_all,
                upsert=bool(state.stale_fields) or state.rebuild, metadata=meta)
    else:  # this run's units only: disjoint pairs, streamed part by part
        publish_parts(work, "stats", root, STATS, STATS_KEYS, replace_all=replace_all,
                      drop=drop, metadata=meta)
    series = None
    if ts_spec is not None:
        days = dedupe(work.read("days"), ["field_id", "day_key", "variable"])
        publish(root, DAYS, days, ["field_id", "day_key", "variable"],
                replace_all=replace_all, upsert=True, metadata=meta)
        _stage_day_buckets(job, stage, hashes, result_hash)
        try:
            series = _run_timeseries(job, client, sink, outputs, progress, manifest)
        finally:
            stage.delete_prefix(".days")
    _record_failures(root, job, summary.failures, run_id, result_hash, computed,
                     manifest)
    if ctx.render is not None:
        manifest["renders"] = _publish_renders(job, root, render_at, dict(ctx.render.renames),
                                               result_hash)
    work.clear()
    if spec.outputs.stats is not None:
        outputs["stats"] = _export_stats(job, root, stage, outputs)
    n_failed = len({(f.get("field_id"), f.get("scene_id")) for f in summary.failures})
    manifest["plan"] = full.summary()
    manifest["execution"] = {**_execution_record(summary), "pairs_computed": computed.num_rows,
                             "pairs_reused": max(0, full.n_pairs - computed.num_rows - n_failed),
                             "pairs_failed": n_failed, "pairs_resumed": len(state.staged)}
    manifest["warnings"].extend(summary.warnings)
    return summary, series


def _publish_renders(job: PreparedJob, root: Location, staged: Location,
                     renames: dict[str, str], result_hash: str) -> dict[str, int]:
    """Publish the staged per-field pictures and clips as ``png|cog/<name>/<date>_<var>``
    (each an atomic put, so the pictures of earlier runs stay), keeping per field (and
    period) only the chosen scenes for ``scenes: latest | best``: choices are made on the
    whole stats table, so a later run may replace an earlier run's picture."""
    import pandas as pd

    from .incremental import STATS
    from .writers import delta

    out = {}
    names = {v: k for k, v in renames.items()}  # file name -> field id
    staged_prefix = staged.url[len(root.url) + 1:]
    for kind, cfg in (("png", job.spec.outputs.png), ("cog", job.spec.outputs.cog)):
        if cfg is None or (kind == "cog" and not cfg.fields):
            continue
        variables = ([cfg.variable] if kind == "png" else list(cfg.variables))
        keys = staged.list(kind)
        chosen = None
        if cfg.scenes != "all":
            stats = delta.read(root, STATS, columns=["field_id", "scene_id", "datetime", "variable",
                                                     "valid_fraction", "result_hash"])
            df = stats.to_pandas() if stats is not None else pd.DataFrame()
            var = "red" if variables[0] == "truecolor" else variables[0]
            df = df[(df["result_hash"] == result_hash) & (df["variable"] == var)
                    & (df["valid_fraction"] > 0)]
            df = df.sort_values(["field_id", "datetime", "scene_id"])
            if cfg.scenes == "latest":
                pick = df.groupby("field_id").tail(1)
            else:
                _, period_of = _period_lookup(job, cfg.period)
                df = df.assign(period=[period_of(str(t)[:10]) for t in df["datetime"]])
                pick = df.sort_values(["valid_fraction", "datetime"]).groupby(
                    ["field_id", "period"]).tail(1)
            chosen = set(zip(pick["field_id"], pick["scene_id"], strict=True))
            # earlier pictures no longer chosen go (same field, another scene of the period)
            keep_dates = {(f, str(t)[:10]) for f, t in zip(pick["field_id"], pick["datetime"],
                                                          strict=True)}
            stale = [k for k in root.list(kind) if k.count("/") == 2 and not k.endswith(".csv")
                     and (names.get(k.split("/")[1], k.split("/")[1]),
                          k.split("/")[2][:10]) not in keep_dates]
            root.delete(stale)
        moves = []
        for key in keys:
            _, name, base = key.split("/")
            date, rest = base[:10], base[11:]  # <date>_<scene>_<variable>.<ext>
            suffix = next(f"_{v}.{'png' if kind == 'png' else 'tif'}" for v in variables
                          if rest.endswith(f"_{v}.{'png' if kind == 'png' else 'tif'}"))
            scene_id = rest[: -len(suffix)]
            fid = names.get(name, name)
            if chosen is not None and (fid, scene_id) not in chosen:
                continue
            moves.append((f"{staged_prefix}/{key}", f"{kind}/{name}/{date}{suffix}"))
        # renames on a local disk (each field's directory made once), server-side copies
        # on S3 (never read back)
        root.place_many(moves)
        n = len(moves)
        if renames:
            lines = "field_id,name\n" + "".join(f'"{k}",{v}\n' for k, v in sorted(renames.items()))
            root.put(f"{kind}/ids.csv", lines.encode())
        out[f"{kind}_written"] = n
    return out


def stage_root(stage: Location) -> Location:
    """The output location a run's staging location belongs to."""
    return Location(stage.url.rsplit("/", 1)[0], stage.profile)


def _stage_day_buckets(job: PreparedJob, stage: Location, hashes: dict[str, str],
                       result_hash: str) -> None:
    """Every current day row of the job's fields and scenes (from the days table), in
    buckets of fields under ``.days/`` of the stage, for :func:`_run_timeseries`."""
    import pyarrow.compute as pc

    from .incremental import DAYS
    from .tasks import field_bucket
    from .writers import delta, parquet_bytes

    days = delta.read(stage_root(stage), DAYS)
    if days is None or days.num_rows == 0:
        return
    fids = days.column("field_id").to_pylist()
    scenes = set(job.scenes.ids)
    keep = [hashes.get(f) == h and r == result_hash and all(x in scenes for x in s.split("+"))
            for f, h, r, s in zip(fids, days.column("field_hash").to_pylist(),
                                  days.column("result_hash").to_pylist(),
                                  days.column("scene_id").to_pylist(), strict=True)]
    days = days.filter(pa.array(keep, pa.bool_()))
    days = days.drop_columns([c for c in ("field_hash", "result_hash", "run_id", "day_key")
                              if c in days.column_names])
    n_buckets = max(1, math.ceil(len(hashes) / _FIELDS_PER_BUCKET))
    buckets = pa.array([field_bucket(f, n_buckets) for f in days.column("field_id").to_pylist()])
    for k in pc.unique(buckets).to_pylist():
        part = days.filter(pc.equal(buckets, k))
        stage.put(f".days/b={int(k):05d}/part-all.parquet", parquet_bytes(part))


def _record_failures(out: Location, job: PreparedJob, failures: list[dict[str, Any]], run_id: str,
                     result_hash: str, computed: pa.Table | None, manifest: dict[str, Any]) -> None:
    """Failed pairs -> the ledger (one commit; pairs now computed marked resolved); full
    tracebacks -> ``logs/<run_id>.log``, once per distinct error; the manifest keeps
    short records."""
    import hashlib

    from .incremental import LEDGER, pair_keys
    from .writers import delta

    rows, seen, log = [], set(), []
    for f in failures:
        err = f.get("error", "")
        rows.append({"result_hash": result_hash, "field_id": str(f.get("field_id") or ""),
                     "scene_id": str(f.get("scene_id") or ""), "unit_id": f.get("unit_id", ""),
                     "stage": f.get("stage", "stats"), "error_class": err.split(":", 1)[0],
                     "message": err[:300], "attempts": int(f.get("attempts", 2)),
                     "run_id": run_id, "resolved": False})
        digest = hashlib.sha256(err.encode()).hexdigest()[:12]
        if digest not in seen and f.get("traceback"):
            seen.add(digest)
            log.append(f"--- error {digest} (first: field {f.get('field_id')!r}, scene "
                       f"{f.get('scene_id')!r})\n{f['traceback']}")
    open_rows = delta.read(out, LEDGER)
    if open_rows is not None and open_rows.num_rows:
        done = set(pair_keys(computed).to_pylist()) if computed is not None else set()
        for r in open_rows.to_pylist():
            if (not r["resolved"] and r["result_hash"] == result_hash
                    and f"{r['field_id']}\x1f{r['scene_id']}" in done):
                rows.append({**r, "resolved": True, "run_id": run_id})
    if rows:
        delta.merge_rows(out, LEDGER, pa.Table.from_pylist(rows),
                         ["result_hash", "field_id", "scene_id", "stage"],
                         metadata={"run_id": run_id})
    if log:
        out.put(f"logs/{run_id}.log", "\n".join(log).encode())
        manifest["failure_log"] = out.display(f"logs/{run_id}.log")
    manifest["failures"].extend({k: v for k, v in f.items() if k != "traceback"}
                                for f in failures[:1000])
    manifest["failures_total"] = manifest.get("failures_total", 0) + len(failures)


def _export_stats(job: PreparedJob, root: Location, stage: Location, outputs: dict[str, str]) -> str:
    """The stats output: the Delta table itself (``format: parquet``), or a CSV /
    GeoParquet export of its current rows for the job's fields and scenes."""
    from .incremental import STATS
    from .writers import delta

    fmt = job.spec.outputs.stats.format
    if fmt == "parquet":
        return root.display(STATS)
    table = delta.read(root, STATS)
    table = table.drop_columns([c for c in ("field_hash", "result_hash", "run_id")
                                if c in table.column_names]).sort_by(
        [("field_id", "ascending"), ("scene_id", "ascending"), ("variable", "ascending")])
    if fmt == "csv":
        import pyarrow.csv as pacsv

        buf = pa.BufferOutputStream()
        pacsv.write_csv(table, buf)
        key = "stats.csv"
    else:
        import pyarrow.parquet as pq

        buf = pa.BufferOutputStream()
        pq.write_table(_add_geometry(job.fields)(table), buf, compression="zstd")
        key = "stats.geoparquet"
    stage.put(key, buf.getvalue().to_pybytes())
    outputs["stats_export"] = key
    return root.display(key)


def _run_timeseries(job: PreparedJob, client: Any, sink: OutputSink, outputs: dict[str, str],
                    progress: ProgressFn | None, manifest: dict[str, Any]) -> pd.DataFrame:
    """Composite the day rows into per-field series, one task per bucket of fields (on the
    cluster: the client never holds every day row); returns the long series."""
    import pyarrow.csv as pacsv

    from .executor import execute_map
    from .tasks import SeriesBucket, SeriesContext
    from .tasks import composite_bucket_guarded as composite_bucket
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
        on_error=job.spec.on_error,
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
    _stage_failures(job, stage, results, manifest)
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


def _stage_failures(job: PreparedJob, stage: Location, results: list[Any],
                    manifest: dict[str, Any]) -> None:
    """Failure records of a stage's units (``on_error: skip``) -> the ledger."""
    failures = [r["failure"] for r in results if isinstance(r, dict) and "failure" in r]
    if failures:
        _record_failures(stage_root(stage), job, failures, manifest["run_id"],
                         job.spec.result_hash(), None, manifest)


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
    if result.failures:
        _record_failures(stage_root(stage), job, [{"stage": "rollup", **f} for f in result.failures],
                         manifest["run_id"], job.spec.result_hash(), None, manifest)


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
    from .tasks import run_composite_unit_guarded as run_composite_unit

    units = _composite_units(job)
    results = execute_map(run_composite_unit, list(units), job.context(), sink,
                          cluster=client, progress=progress, stage="composites",
                          key_prefix=f"pqb-composite-{job.spec.job_hash()}")
    _write_returned(sink.stage, results)
    _stage_failures(job, sink.stage, results, manifest)
    outputs["composites"] = "composites"
    manifest["composites"] = [r for r in results if "failure" not in r]


def _region_clip_units(job: PreparedJob) -> tuple[Any, ...] | None:
    """The region clips of ``outputs.cog.regions`` (``None`` when not asked for)."""
    from .planner import plan_region_clips

    cog = job.spec.outputs.cog
    if cog is None or not cog.regions or job.regions is None:
        return None
    return plan_region_clips(job.scenes, job.regions, bands=job.needed_bands(list(cog.variables)),
                             rule=job.spec.pixels, max_pixels=cog.max_pixels,
                             optional_bands=job.optional_bands, resolution=job.spec.resolution)


def _run_region_clips(job: PreparedJob, units: tuple[Any, ...], client: Any, sink: OutputSink,
                      outputs: dict[str, str], manifest: dict[str, Any],
                      progress: ProgressFn | None) -> None:
    """COG clips per region and scene, written by the workers (or sent back to the
    client) into ``cog_regions/`` of the run's stage; published with the run."""
    from .executor import execute_map
    from .render import safe_names
    from .tasks import run_region_clip_guarded

    variables = tuple(job.spec.outputs.cog.variables)
    names = safe_names(job.regions["region_id"].astype(str))
    results = execute_map(run_region_clip_guarded, list(units), job.context(), variables,
                          names, sink, cluster=client, progress=progress, stage="region clips",
                          key_prefix=f"pqb-regionclip-{job.spec.job_hash()}")
    _write_returned(sink.stage, results)
    _stage_failures(job, sink.stage, results, manifest)
    if names:
        lines = "region_id,name\n" + "".join(f'"{k}",{v}\n' for k, v in sorted(names.items()))
        sink.stage.put("cog_regions/ids.csv", lines.encode())
    outputs["cog_regions"] = "cog_regions"
    manifest["region_clips"] = {"units": len(units),
                                "written": sum(r.get("clips", 0) for r in results),
                                "failed": sum(1 for r in results if "failure" in r)}


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
