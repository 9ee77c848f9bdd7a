"""Public entry points that join the layers (catalog, planner, executor, writers)."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalog.models import Catalog
from .catalog.reader import as_repo_ref
from .catalog.store import RepoRef, resolve_snapshot
from .config import StorageProfile
from .errors import PixelQueryError
from .types import BBox

if TYPE_CHECKING:
    from .executor import ClusterOptions, ExecutionSummary
    from .planner import Plan
    from .tasks import JobContext

__all__ = [
    "PreparedJob",
    "RunResult",
    "history",
    "load_job",
    "open_catalog",
    "plan_prepared",
    "prepare_job",
    "run_job",
    "search_scenes",
    "validate_job",
]

logger = logging.getLogger(__name__)


def open_catalog(
    repo: str | os.PathLike[str] | RepoRef,
    *,
    snapshot: str | None = None,
    storage: StorageProfile | None = None,
) -> Catalog:
    """The scene catalog of a repository at a branch, tag or snapshot (default ``main``)."""
    return as_repo_ref(repo, snapshot, storage=storage).catalog()


def search_scenes(
    repo: str | os.PathLike[str] | RepoRef,
    *,
    snapshot: str | None = None,
    start: dt.date | dt.datetime | str | None = None,
    end: dt.date | dt.datetime | str | None = None,
    bbox: BBox | None = None,
    bbox_crs: str = "EPSG:4326",
    product: str | None = None,
    storage: StorageProfile | None = None,
) -> Catalog:
    """Search the catalog (see :meth:`Catalog.search`)."""
    return open_catalog(repo, snapshot=snapshot, storage=storage).search(
        start=start, end=end, bbox=bbox, bbox_crs=bbox_crs, product=product
    )


def history(
    repo: str | os.PathLike[str], *, branch: str = "main", storage: StorageProfile | None = None
) -> list[dict[str, Any]]:
    """Snapshots of a branch, newest first (id, time, message)."""
    from .catalog.store import open_repository

    r = open_repository(repo, profile=storage)
    return [
        {"snapshot_id": s.id, "written_at": s.written_at.isoformat(), "message": s.message}
        for s in r.ancestry(branch=branch)
    ]


# --------------------------------------------------------------------------- jobs

@dataclass
class PreparedJob:
    """A job spec resolved against its repository: what planning and running need."""

    spec: Any
    ref: RepoRef
    scenes: Catalog
    fields: Any  # GeoDataFrame
    variables: dict[str, Any]  # name -> Expression
    bands: tuple[str, ...]
    cloud: dict[str, Any] | None  # {"band", "classes"|"bits"}
    problems: list[str] = field(default_factory=list)

    def context(self) -> JobContext:
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
        )


def load_job(spec: str | os.PathLike[str] | Any) -> Any:
    """A :class:`~pixelquery_batch.spec.JobSpec` from a path (or the spec itself)."""
    from .spec import JobSpec, load_spec

    return spec if isinstance(spec, JobSpec) else load_spec(spec)


def _cloud_rule(spec: Any, scenes: Catalog) -> dict[str, Any] | None:
    from .errors import SpecError
    from .products import load_product

    rule = spec.masks.cloud
    if rule is None:
        return None
    if rule == "auto":
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
                "bits": list(cm.bits) if cm.bits else None}
    return {"band": rule.band, "classes": list(rule.exclude) if rule.exclude is not None else None,
            "bits": list(rule.bits) if rule.bits is not None else None}


def prepare_job(spec: str | os.PathLike[str] | Any, *, check_only: bool = False) -> PreparedJob:
    """Resolve a job spec: snapshot, matched scenes, fields, variables, needed bands.

    With ``check_only`` the consistency problems (bands missing from scenes, empty time
    window) are collected in ``problems`` instead of raised.
    """
    from .config import load_storage_profile
    from .fields import load_fields

    spec = load_job(spec)
    storage = load_storage_profile(spec.repository.storage)
    ref = resolve_snapshot(spec.repository.path, spec.repository.snapshot, profile=storage)
    sc = spec.scenes
    scenes = ref.catalog().search(start=sc.start, end=sc.end, product=sc.product,
                                  max_cloud=sc.max_cloud, scene_ids=sc.ids)
    problems: list[str] = []
    if len(scenes) == 0:
        problems.append(f"scenes: no scene between {sc.start} and {sc.end}"
                        + (f" of product {sc.product}" if sc.product else "")
                        + f" at snapshot {ref.snapshot_id}")
    fields = load_fields(spec.fields.path, id_column=spec.fields.id, layer=spec.fields.layer,
                         fix_invalid=spec.fields.fix_invalid)
    variables = spec.variables()
    cloud = _cloud_rule(spec, scenes) if len(scenes) else None
    bands = tuple(dict.fromkeys(
        [n for e in variables.values() for n in sorted(e.names)]
        + ([cloud["band"]] if cloud else [])))
    for scene in scenes.scenes():
        for name in bands:
            try:
                scene.band(name)
            except PixelQueryError:
                problems.append(f"scene {scene.scene_id} has no band or role {name!r} "
                                f"(bands: {', '.join(scene.band_names)})")
    if problems and not check_only:
        from .errors import SpecError

        raise SpecError("; ".join(problems[:10]), path=str(spec.source_path))
    return PreparedJob(spec, ref, scenes, fields, variables, bands, cloud, problems)


def plan_prepared(job: PreparedJob) -> Plan:
    """The plan of a prepared job (pure: see :func:`pixelquery_batch.planner.plan_job`)."""
    from .planner import plan_job

    return plan_job(job.scenes, job.fields, bands=job.bands, rule=job.spec.pixels,
                    n_variables=len(job.variables))


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

    manifest_path: Path
    manifest: dict[str, Any]
    outputs: dict[str, Path]
    summary: ExecutionSummary

    @property
    def ok(self) -> bool:
        return not self.manifest["failures"]


def run_job(
    spec: str | os.PathLike[str] | Any,
    *,
    cluster: ClusterOptions | str | Any | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    on_start: Callable[[ExecutionSummary], None] | None = None,
) -> RunResult:
    """Plan and run a job; write the stats table and ``manifest.json`` atomically.

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
    from .executor import ClusterOptions, execute
    from .tasks import result_schema
    from .writers import TableWriter, atomic_write_json

    started = dt.datetime.now(dt.UTC)
    job = prepare_job(spec)
    spec = job.spec
    plan = plan_prepared(job)
    ctx = job.context()
    logger.info("plan ready", extra={"job": spec.name, "job_hash": ctx.job_hash,
                                     "snapshot_id": job.ref.snapshot_id, "tasks": len(plan.units),
                                     "pairs": plan.n_pairs})
    if cluster is None:
        c = spec.cluster
        cluster = ClusterOptions(address=c.address, n_workers=c.n_workers,
                                 threads_per_worker=c.threads_per_worker,
                                 memory_limit=c.memory_limit, dashboard=c.dashboard)
    elif isinstance(cluster, str) and cluster != "sync":
        cluster = ClusterOptions(address=cluster)
    out_dir = Path(spec.outputs.dir)
    outputs: dict[str, Path] = {}
    writer = None
    if spec.outputs.stats is not None:
        writer = TableWriter(out_dir, "stats", result_schema(ctx.stats), fmt=spec.outputs.stats.format,
                             sort_by=("field_id", "scene_id", "variable"))

    def on_result(res: Any) -> None:
        if writer is not None:
            writer.write_part(res.unit_id, res.table)

    try:
        summary = execute(plan, ctx, on_result=on_result, cluster=cluster, progress=progress,
                          on_start=on_start)
        if writer is not None:
            transform = _add_geometry(job.fields) if spec.outputs.stats.format == "geoparquet" else None
            outputs["stats"] = writer.commit(transform)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finished = dt.datetime.now(dt.UTC)
    manifest = {
        "pixelquery_batch": __version__,
        "job": {"name": spec.name, "job_hash": ctx.job_hash,
                "spec_path": str(spec.source_path) if spec.source_path else None,
                "spec": spec.model_dump(mode="json")},
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "duration_s": round((finished - started).total_seconds(), 3),
        "repository": {"location": job.ref.location, "requested": spec.repository.snapshot or "main",
                       "snapshot_id": job.ref.snapshot_id},
        "scenes": list(plan.scene_ids),
        "plan": plan.summary(),
        "execution": {
            "scheduler": summary.scheduler, "workers": summary.n_workers,
            "dashboard": summary.dashboard_link, "units": summary.units_total,
            "units_done": summary.units_done, "units_failed": summary.units_failed,
            "rows": summary.rows, "chunks_read": summary.chunks_read,
            "wall_s": round(summary.wall_s, 3), "unit_s_total": round(summary.unit_s_total, 3),
            "unit_s_max": round(summary.unit_s_max, 3),
        },
        "cloud_mask": job.cloud,
        "outputs": {k: str(v) for k, v in outputs.items()},
        "failures": summary.failures,
        "warnings": summary.warnings,
    }
    manifest_path = atomic_write_json(out_dir / "manifest.json", manifest)
    return RunResult(manifest_path, manifest, outputs, summary)


def _add_geometry(fields: Any) -> Callable[[Any], Any]:
    def transform(table: Any) -> Any:
        import geopandas as gpd

        df = table.to_pandas()
        geo = fields.to_crs("EPSG:4326").set_index("field_id").geometry
        gdf = gpd.GeoDataFrame(df, geometry=df["field_id"].map(geo).to_numpy(), crs="EPSG:4326")
        return gdf.to_arrow(geometry_encoding="WKB")

    return transform
