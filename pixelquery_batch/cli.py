"""The ``pqb`` command line: thin commands over :mod:`pixelquery_batch.api`.

Results go to stdout (tables or ``--json``), logs and progress to stderr. Errors are
printed as one actionable line and mapped to exit codes (see
:func:`pixelquery_batch.errors.exit_code_for`).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__
from ._logging import setup_logging
from .errors import PixelQueryError, exit_code_for

# The engine runs in parallel through Dask; the numeric libraries' own thread pools only
# compete with it for the same cores (OpenBLAS threads spun ~0.1 s of CPU per run on
# 2 cores). Set before numpy loads; Dask does the same for its worker processes.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def _handle_errors[F: Callable[..., Any]](func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PixelQueryError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exit_code_for(exc))
        except KeyboardInterrupt:
            click.echo("interrupted: the next run resumes from the finished units", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug, not bad input: say so, keep the traceback in the log
            logging.getLogger("pixelquery_batch").debug("unexpected error", exc_info=True)
            click.echo(f"internal error: {type(exc).__name__}: {exc} (a bug: please report it; "
                       "--log-level DEBUG shows the traceback)", err=True)
            sys.exit(exit_code_for(exc))

    return wrapper  # type: ignore[return-value]


class _Progress:
    """Renders ``progress(stage, done, total)`` callbacks as tqdm bars on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="item", leave=False,
                                          file=sys.stderr, dynamic_ncols=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pqb")
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", default="text", show_default=True, type=click.Choice(["text", "json"]))
def main(log_level: str, log_format: str) -> None:
    """pixelquery_batch: batch analytics over Cloud-Optimized GeoTIFFs."""
    setup_logging(log_level, log_format)


@main.command("sample-data")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--scenes", default=8, show_default=True, help="Number of acquisition dates.")
@click.option("--size", default=1024, show_default=True, help="Image width/height in pixels.")
@click.option("--fields", default=60, show_default=True, help="Number of field polygons.")
@click.option("--seed", default=0, show_default=True, help="Random seed (same seed, same data).")
@_handle_errors
def sample_data_cmd(out_dir: Path, scenes: int, size: int, fields: int, seed: int) -> None:
    """Write deterministic Sentinel-2 L2A-like sample COGs, fields.geojson and regions.geojson.

    The COGs follow the Element 84 / AWS layout, OUT_DIR/cogs/{scene}/{band}.tif
    (B02 B03 B04 B08 at 10 m, B11 and SCL at 20 m), one scene every 30 days from
    2021-10-01. The default 8 scenes straddle processing baseline 04.00
    (2022-01-25), from which reflectance DN carry a +1000 offset.
    """
    from .sample import generate_sample

    try:
        info = generate_sample(out_dir, scenes=scenes, size=size, fields=fields, seed=seed,
                               progress=lambda msg: click.echo(msg, err=True))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    click.echo(f"wrote {len(info.cog_paths)} COGs in {len(info.scene_ids)} scene folders "
               f"({info.dates[0]} .. {info.dates[-1]}) to {info.cog_dir}")
    click.echo(f"fields:  {info.fields_path} ({info.n_fields} polygons)")
    click.echo(f"regions: {info.regions_path}")
    click.echo(f"ingest with: pqb ingest {info.cog_dir} --repo REPO --product sentinel2-l2a "
               f"--pattern \"{info.pattern}\"")


def _parse_when(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    from .catalog.patterns import parse_datetime

    try:
        return parse_datetime(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO date/datetime") from exc


@main.command("ingest")
@click.argument("source")
@click.option("--repo", required=True, help="Repository directory or s3:// URL (created if missing).")
@click.option("--pattern", default=None,
              help="File-name pattern, e.g. 'S2_{date}_{band}.tif' (fields: {scene} {date} "
              "{datetime} {band}, any {name}, * wildcards; {date:%Y%m%d} formats).")
@click.option("--product", default="sentinel2-l2a", show_default=True,
              help="Product profile name or YAML path (sentinel2-l2a, landsat-c2l2, multiband, ...).")
@click.option("--bands", default=None, help="Comma-separated band names for multi-band files.")
@click.option("--datetime", "when", default=None,
              help="Acquisition time for files whose names carry no date (ISO 8601).")
@click.option("--storage", default=None, help="Storage profile name or path (configs/storage/).")
@click.option("--message", default=None, help="Commit message.")
@click.option("--cloud-cover/--no-cloud-cover", default=True, show_default=True,
              help="Compute scene cloud cover from the product's cloud-mask band.")
@click.option("--copy-unsupported", is_flag=True,
              help="Copy the pixels of files virtual references cannot serve (JPEG, striped with "
              "a partial last strip, big-endian with a predictor, sparse) into the repository "
              "instead of refusing them.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_handle_errors
def ingest_cmd(source: str, repo: str, pattern: str | None, product: str, bands: str | None,
               when: str | None, storage: str | None, message: str | None, cloud_cover: bool,
               copy_unsupported: bool, as_json: bool) -> None:
    """Ingest COGs from SOURCE (directory, glob, file or list file) as virtual references."""
    from .catalog.ingest import ingest
    from .config import load_storage_profile

    progress = _Progress(enabled=not as_json and sys.stderr.isatty())
    try:
        report = ingest(
            source, repo, pattern=pattern, product=product,
            bands=[b.strip() for b in bands.split(",")] if bands else None,
            datetime=_parse_when(when), storage=load_storage_profile(storage),
            message=message, cloud_cover=cloud_cover, copy_unsupported=copy_unsupported,
            progress=progress,
        )
    finally:
        progress.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        counts = report.counts()
        click.echo(
            f"{report.repo}: {counts['ingested']} ingested, {counts['updated']} updated, "
            f"{counts['unchanged']} unchanged, {counts['skipped']} skipped, "
            f"{counts['failed']} failed file(s); {len(report.scenes_written)} scene(s) written"
            + (f"; snapshot {report.snapshot_id}" if report.snapshot_id else "; nothing to commit")
        )
        for f in report.files:
            if f.status in ("failed", "skipped"):
                click.echo(f"  {f.status}: {f.url}: {f.reason}")
        if report.copied:
            total = sum(f.copied_bytes for f in report.copied)
            click.echo(f"  {len(report.copied)} file(s) copied into the repository "
                       f"({total / 2**20:.1f} MiB of pixels, not virtual references):")
            for f in report.copied:
                click.echo(f"    {f.url}: {f.reason}")
    if not report.ok:
        sys.exit(1)


def _parse_bbox(value: str | None) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: expected minx,miny,maxx,maxy numbers") from exc
    if len(parts) != 4 or parts[0] > parts[2] or parts[1] > parts[3]:
        raise click.BadParameter(f"{value!r}: expected minx,miny,maxx,maxy with min <= max")
    return parts[0], parts[1], parts[2], parts[3]


@main.command("scenes")
@click.option("--repo", required=True, help="Repository directory or s3:// URL.")
@click.option("--start", default=None, help="Earliest date/datetime (inclusive).")
@click.option("--end", default=None, help="Latest date/datetime (inclusive; a date means the whole day).")
@click.option("--bbox", default=None, help="minx,miny,maxx,maxy (in --bbox-crs).")
@click.option("--bbox-crs", default="EPSG:4326", show_default=True, help="CRS of --bbox.")
@click.option("--product", default=None, help="Only scenes of this product.")
@click.option("--max-cloud", default=None, type=float, help="Only scenes with at most this cloud cover (%).")
@click.option("--snapshot", default=None, help="Branch, tag or snapshot id (default: main).")
@click.option("--storage", default=None, help="Storage profile name or path.")
@click.option("--json", "as_json", is_flag=True, help="Shorthand for --format json.")
@click.option("--format", "fmt", default="table", show_default=True,
              type=click.Choice(["table", "json", "stac"]),
              help="table, json records, or a STAC Collection with its Items.")
@_handle_errors
def scenes_cmd(repo: str, start: str | None, end: str | None, bbox: str | None, bbox_crs: str,
               product: str | None, max_cloud: float | None, snapshot: str | None,
               storage: str | None, as_json: bool, fmt: str) -> None:
    """List the scenes of a repository, filtered by time, area and product."""
    from .api import open_catalog
    from .config import load_storage_profile

    catalog = open_catalog(repo, snapshot=snapshot, storage=load_storage_profile(storage))
    found = catalog.search(start=start, end=end, bbox=_parse_bbox(bbox), bbox_crs=bbox_crs,
                           product=product, max_cloud=max_cloud)
    if as_json:
        fmt = "json"
    if fmt == "json":
        click.echo(json.dumps({"snapshot_id": catalog.snapshot_id,
                               "scenes": found.to_records()}, indent=2))
    elif fmt == "stac":
        from .catalog.stac import catalog_to_item_collection

        click.echo(json.dumps(catalog_to_item_collection(found), indent=2))
    else:
        click.echo(f"{len(found)} of {len(catalog)} scene(s) at snapshot {catalog.snapshot_id}")
        for r in found.to_records():
            cc = "   -  " if r["cloud_cover"] is None else f"{r['cloud_cover']:5.1f}%"
            click.echo(f"  {r['scene_id']:<40} {r['datetime']:<21} {r['crs']:<11} "
                       f"{r['shape_yx'][0]}x{r['shape_yx'][1]}  cloud {cc}")
            for line in _band_lines(r["band_info"]):
                click.echo(f"      {line}")


def _band_lines(info: list[dict[str, Any]]) -> list[str]:
    """Bands grouped by resolution, then the scale/offset applied and where it came from."""
    by_res: dict[float, list[str]] = {}
    by_scale: dict[tuple[float, float, str], list[str]] = {}
    for b in info:
        by_res.setdefault(b["resolution"], []).append(b["name"])
        by_scale.setdefault((b["scale"], b["offset"], b["scale_source"]), []).append(b["name"])
    lines = ["bands " + " | ".join(f"{res:g}: {','.join(names)}" for res, names in sorted(by_res.items()))]
    for (scale, offset, origin), names in by_scale.items():
        if scale == 1.0 and offset == 0.0:
            continue
        lines.append(f"x{scale:g} {offset:+g} ({origin}): {','.join(names)}")
    copied = [b["name"] for b in info if b.get("copied")]
    if copied:
        lines.append(f"pixels copied into the repository: {','.join(copied)}")
    return lines


@main.command("history")
@click.option("--repo", required=True, help="Repository directory or s3:// URL.")
@click.option("--branch", default="main", show_default=True)
@click.option("--storage", default=None, help="Storage profile name or path.")
@click.option("--json", "as_json", is_flag=True)
@_handle_errors
def history_cmd(repo: str, branch: str, storage: str | None, as_json: bool) -> None:
    """List the snapshots of a branch, newest first."""
    from .api import history
    from .config import load_storage_profile

    rows = history(repo, branch=branch, storage=load_storage_profile(storage))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['snapshot_id']}  {r['written_at'][:19]}  {r['message']}")


@main.command("validate")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@_handle_errors
def validate_cmd(spec: Path, as_json: bool) -> None:
    """Check a job spec: schema (every error, with its line) and consistency with the repository."""
    from .api import validate_job

    problems = validate_job(spec)
    if as_json:
        click.echo(json.dumps({"spec": str(spec), "valid": not problems, "problems": problems}, indent=2))
    elif problems:
        for p in problems:
            click.echo(p, err=True)
    else:
        click.echo(f"{spec}: valid")
    if problems:
        sys.exit(2)


@main.command("plan")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@_handle_errors
def plan_cmd(spec: Path, as_json: bool) -> None:
    """Dry run: scenes and fields matched, tasks, chunks and bytes to read. No pixel I/O."""
    from .pipeline import plan_summary, prepare_job

    job = prepare_job(spec)
    summary = plan_summary(job)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"job {job.spec.name} @ snapshot {job.ref.snapshot_id}")
    if "tasks" in summary:
        click.echo(f"  scenes matched:        {summary['scenes_matched']}")
        click.echo(f"  fields:                {summary['fields']} ({summary['fields_matched']} in some scene)")
        outside = summary["fields_outside_every_scene"]
        if outside:
            click.echo(f"  outside every scene:   {len(outside)}: {', '.join(outside[:20])}"
                       + (" ..." if len(outside) > 20 else ""))
        click.echo(f"  field-scene pairs:     {summary['field_scene_pairs']}")
        click.echo(f"  tasks:                 {summary['tasks']} ({summary['pairs_per_task']} pairs per task)")
        extra = summary.get("bands_read_where_present") or []
        click.echo(f"  bands read:            {', '.join(summary['bands_read'])}"
                   + (f" (+ {', '.join(extra)} where a scene has it)" if extra else ""))
        click.echo(f"  chunks to read:        {summary['chunks_read']} "
                   f"(touched by fields: {summary['chunks_touched']}, "
                   f"read amplification {summary['read_amplification']})")
        click.echo(f"  decoded bytes (est.):  {summary['bytes_decoded_estimate'] / 1e6:.1f} MB")
        for w in summary["warnings"]:
            click.echo(f"  warning: {w}")
        inc = summary.get("incremental")
        if inc:
            click.echo(f"  to compute now:        {inc['pairs_to_compute']} pair(s) in {inc['tasks']} "
                       f"task(s) ({inc['pairs_in_outputs']} in the outputs, "
                       f"{inc['pairs_staged_by_an_unfinished_run']} staged by an unfinished run, "
                       f"{inc['pairs_in_failure_ledger']} in the failure ledger)")
            click.echo(f"  why:                   {inc['reason']}")
    if "points" in summary:
        p = summary["points"]
        click.echo(f"  points:                {p['fields']} ({p['fields_matched']} in some scene), "
                   f"{p['tasks']} task(s)")
    if "rollup" in summary:
        r = summary["rollup"]
        click.echo(f"  rollup:                {r['regions']} regions, {r['tasks']} task(s), "
                   f"{r['chunks_read']} chunks to read")
        if r["regions_outside_every_scene"]:
            click.echo(f"  regions outside every scene: {', '.join(r['regions_outside_every_scene'])}")


@main.command("run")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cluster", default=None,
              help="Scheduler address (tcp://host:8786), or 'sync' to run in-process; "
              "default: the spec's cluster section (a LocalCluster unless it names an address).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
@click.option("--retry-failed", is_flag=True,
              help="Compute only the pairs recorded in the failure ledger (pqb runs --ledger).")
@_handle_errors
def run_cmd(spec: Path, cluster: str | None, as_json: bool, retry_failed: bool) -> None:
    """Run a job spec on Dask: compute what the outputs do not hold yet, then publish.

    A rerun computes nothing; after new scenes only their pairs; after a crash only what
    was not finished."""
    from .api import run_job

    progress = _Progress(enabled=sys.stderr.isatty() and not as_json)
    try:
        result = run_job(spec, cluster=cluster, progress=progress, on_start=_announce,
                         retry_failed=retry_failed)
    finally:
        progress.close()
    m = result.manifest
    if as_json:
        click.echo(json.dumps({k: m[k] for k in ("job", "repository", "plan", "execution", "rollup",
                                                 "points", "outputs") if k in m}
                              | {"failures": len(m["failures"]), "manifest": str(result.manifest_path)},
                              indent=2, default=str))
    else:
        click.echo(f"{m['job']['name']}: done in {m['duration_s']:.1f} s "
                   f"(snapshot {m['repository']['snapshot_id']})")
        if "execution" in m:
            ex = m["execution"]
            click.echo(f"  per-field: {ex.get('pairs_computed', 0)} field-scene pairs computed, "
                       f"{ex.get('pairs_reused', 0)} reused"
                       + (f", {ex['pairs_failed']} failed" if ex.get("pairs_failed") else "")
                       + (f" ({ex['units_done']}/{ex['units']} tasks on {ex['workers'] or 1} "
                          "worker(s))" if ex.get("units") else " (nothing to compute)"))
        if "rollup" in m:
            click.echo(f"  rollup: {m['rollup']['units']} task(s), {m['rollup']['chunks_read']} chunks read")
        for name, path in m["outputs"].items():
            click.echo(f"  {name}: {path}")
        click.echo(f"  manifest: {result.manifest_path}")
        if m["failures"]:
            click.echo(f"  {m.get('failures_total', len(m['failures']))} failure(s): "
                       f"see the ledger (pqb runs {m['output']['location'] if 'output' in m else 'OUT_DIR'}"
                       " --ledger)", err=True)
            seen: dict[str, list[str]] = {}
            for f in m["failures"]:
                seen.setdefault(f.get("error", ""), []).append(str(f.get("scene_id") or ""))
            for error, scenes in list(seen.items())[:5]:
                where = ", ".join(sorted(set(s for s in scenes if s))[:3])
                click.echo(f"    {len(scenes)} x {error[:300]}" + (f" [scene {where}]" if where else ""),
                           err=True)
        if m["warnings"]:
            click.echo(f"  {len(m['warnings'])} warning(s) in the manifest", err=True)
        _print_head(result.outputs.get("stats"))
    if m["failures"]:
        sys.exit(1)


@main.command("runs")
@click.argument("out_dir")
@click.option("--storage", default=None, help="Storage profile for an s3:// OUT_DIR.")
@click.option("--ledger", is_flag=True, help="List the failure ledger instead.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@_handle_errors
def runs_cmd(out_dir: str, storage: str | None, ledger: bool, as_json: bool) -> None:
    """Past runs of the job writing OUT_DIR (newest first), or its failure ledger."""
    from .api import read_ledger, read_runs

    df = (read_ledger if ledger else read_runs)(out_dir, storage=storage)
    if as_json:
        for row in df.to_dict(orient="records"):
            click.echo(json.dumps(row, default=str))
        return
    if df.empty:
        click.echo("no failure recorded" if ledger else f"no run recorded in {out_dir}")
        return
    click.echo(df.to_string(index=False))
    if not ledger:
        click.echo(f"report of the last run: {out_dir.rstrip('/')}/report.html")


@main.command("report")
@click.argument("out_dir")
@click.option("--storage", default=None, help="Storage profile for an s3:// OUT_DIR.")
@_handle_errors
def report_cmd(out_dir: str, storage: str | None) -> None:
    """Rebuild OUT_DIR/report.html from the outputs (self-contained: open it anywhere)."""
    from .config import load_storage_profile
    from .report import write_report
    from .storage import Location

    click.echo(write_report(Location.of(out_dir, load_storage_profile(storage).resolved())))


def _announce(summary: Any) -> None:
    where = summary.scheduler if summary.scheduler != "sync" else "in-process (sync)"
    if summary.units_total:
        click.echo(f"running {summary.units_total} per-field task(s) on {where}"
                   + (f" with {summary.n_workers} worker(s)" if summary.n_workers else ""), err=True)
    if summary.dashboard_link:
        click.echo(f"dashboard: {summary.dashboard_link}", err=True)


def _print_head(location: str | None, n: int = 8) -> None:
    if location is None or location.startswith("s3://"):
        return
    df = _first_rows(Path(location), n)
    keep = [c for c in ("field_id", "scene_id", "variable", "mean", "median", "std", "count",
                        "valid_fraction") if c in df.columns]
    click.echo("first rows:")
    click.echo(df[keep].to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def _first_rows(path: Path, n: int) -> Any:
    """The first ``n`` rows of a local stats output, read in this thread.

    Not ``dataset.head(n)``: a scan stopped early leaves Arrow reading further files in
    its threads, and a process that exits meanwhile aborts, crashes or hangs (a Delta
    table's Python filesystem is released by an Arrow thread during finalisation).
    """
    import pandas as pd
    import pyarrow.parquet as pq

    if path.suffix == ".csv":
        return pd.read_csv(path, nrows=n)
    if (path / "_delta_log").is_dir():
        from deltalake import DeltaTable

        files = DeltaTable(str(path)).file_uris()
    else:
        files = [str(path)] if path.is_file() else sorted(map(str, path.rglob("*.parquet")))
    for file in files:
        batch = next(pq.ParquetFile(file).iter_batches(batch_size=n, use_threads=False), None)
        if batch is not None and batch.num_rows:
            return batch.to_pandas()
    return pd.DataFrame()


_DEMO_SPEC = """\
# Written by `pqb demo`: the nightly per-field statistics job on the sample data.
version: 1
name: nightly-field-stats
repository: {{path: warehouse}}
scenes: {{start: {start}, end: {end}}}
fields: {{path: sample/fields.geojson, id: id}}
bands: [red, nir]
indices: {{ndvi: builtin, evi: builtin, ndmi: builtin}}   # ndmi uses B11 (20 m)
stats: [mean, std, min, max, median, p10, p90, count, valid_fraction]
pixels: centre
masks: {{nodata: true, cloud: auto}}                       # SCL (20 m) on the 10 m grid
outputs: {{dir: out/nightly-field-stats, stats: {{format: parquet}}}}
cluster: {{address: {address}, n_workers: 1, processes: false}}   # a thread per core
on_error: skip
"""


@main.command("demo")
@click.argument("workdir", default="demo", type=click.Path(file_okay=False, path_type=Path))
@click.option("--scenes", default=8, show_default=True)
@click.option("--size", default=1024, show_default=True)
@click.option("--fields", default=60, show_default=True)
@click.option("--cluster", default=None, help="Scheduler address; default: a LocalCluster.")
@_handle_errors
def demo_cmd(workdir: Path, scenes: int, size: int, fields: int, cluster: str | None) -> None:
    """End to end on the embedded default: sample data -> ingest -> nightly field statistics."""
    from .api import open_catalog, run_job
    from .catalog.ingest import ingest
    from .sample import generate_sample

    click.echo(f"[1/4] sample data -> {workdir / 'sample'}")
    info = generate_sample(workdir / "sample", scenes=scenes, size=size, fields=fields)
    click.echo(f"[2/4] ingest {len(info.cog_paths)} COGs as virtual references -> {workdir / 'warehouse'}")
    report = ingest(str(info.cog_dir), str(workdir / "warehouse"), product="sentinel2-l2a",
                    pattern="{scene}/{band}.tif")
    c = report.counts()
    click.echo(f"      {c['ingested']} ingested, {c['updated']} updated, {c['unchanged']} unchanged, "
               f"{c['failed']} failed; snapshot {report.snapshot_id or '(unchanged)'}")
    if not report.ok:
        for f in report.by_status("failed"):
            click.echo(f"      failed: {f.url}: {f.reason}", err=True)
        sys.exit(1)
    catalog = open_catalog(workdir / "warehouse")
    click.echo(f"[3/4] {len(catalog)} scenes at snapshot {catalog.snapshot_id}:")
    for r in catalog.to_records():
        click.echo(f"      {r['scene_id']:<28} {r['datetime'][:10]}  {','.join(r['bands'])}")
    spec_path = workdir / "nightly-field-stats.yaml"
    # The window covers every sample scene (with the defaults 2021-10-01 .. 2022-12-31).
    spec_path.write_text(_DEMO_SPEC.format(address=cluster or "null",
                                           start=f"{info.dates[0]:%Y-%m}-01",
                                           end=f"{info.dates[-1].year}-12-31"))
    click.echo(f"[4/4] pqb run {spec_path}")
    progress = _Progress(enabled=sys.stderr.isatty())
    try:
        result = run_job(spec_path, progress=progress, on_start=_announce)
    finally:
        progress.close()
    m = result.manifest
    ex = m["execution"]
    if ex.get("units"):
        click.echo(f"      {ex['rows']} rows ({m['plan']['field_scene_pairs']} field-scene pairs x "
                   f"{len(m['job']['spec']['bands']) + len(m['job']['spec']['indices'])} "
                   f"variables) from {ex['units']} tasks on {ex['workers']} workers in "
                   f"{m['duration_s']:.1f} s")
    else:  # a second demo in the same directory: its outputs already hold every pair
        click.echo(f"      nothing new to compute: the outputs already hold all "
                   f"{ex.get('pairs_reused', 0)} field-scene pairs ({m['duration_s']:.1f} s)")
    outside = m["plan"]["fields_outside_every_scene"]
    if outside:
        click.echo(f"      fields outside every scene: {', '.join(outside)}")
    click.echo(f"      stats:    {result.outputs['stats']}")
    click.echo(f"      manifest: {result.manifest_path}")
    _print_head(result.outputs.get("stats"))


if __name__ == "__main__":  # pragma: no cover
    main()
