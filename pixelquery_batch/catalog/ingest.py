"""Ingest: COG headers -> virtual references -> one Icechunk commit with the scene catalog.

No pixel is copied (unless asked): each TIFF header is parsed once (:mod:`.parse`), checked for the
cases that parse but would read back wrong, grouped into scenes by a file-name pattern,
and written as one group per scene (one array per band file). The catalog tables are
rewritten in the same commit, so every snapshot carries exactly its own scenes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import icechunk as ic
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from ..config import StorageProfile
from ..errors import InputDataError, PixelQueryError, SpecError, StorageError
from ..geo import footprint_lonlat, footprint_native
from ..products import BandSpec, ProductProfile, load_product
from .models import FILE_SCHEMA, SCENE_SCHEMA, BandInfo
from .parse import ParsedFile, parse_file
from .patterns import FilenamePattern, PatternMatch, find_date, sanitize_scene_id
from .sources import SourceFile, list_source, object_store_for, split_url
from .store import (
    SCENES_GROUP,
    check_repository_location,
    commit_lock,
    container_prefix,
    open_repository,
    read_catalog_tables,
    repo_location,
    write_catalog_tables,
)

__all__ = ["FileOutcome", "IngestReport", "ingest"]

logger = logging.getLogger(__name__)

_MAX_COMMIT_TRIES = 8

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """What happened to one source file."""

    url: str
    status: str  # ingested | updated | unchanged | skipped | failed
    scene_id: str | None = None
    band: str | None = None
    reason: str | None = None
    copied_bytes: int = 0  # pixels copied into the repository (files virtual refs cannot serve)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in (("url", self.url), ("status", self.status),
                                 ("scene_id", self.scene_id), ("band", self.band),
                                 ("reason", self.reason)) if v is not None}
        if self.copied_bytes:
            out["copied_bytes"] = self.copied_bytes
        return out


@dataclass
class IngestReport:
    """Summary of one ingest call (``pqb ingest --json`` prints :meth:`to_dict`)."""

    repo: str
    source: str
    product: str
    snapshot_id: str | None = None
    files: list[FileOutcome] = field(default_factory=list)
    scenes_written: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def by_status(self, status: str) -> list[FileOutcome]:
        return [f for f in self.files if f.status == status]

    @property
    def ok(self) -> bool:
        """True when no file failed (the CLI exits 0 only then)."""
        return not self.by_status("failed")

    def counts(self) -> dict[str, int]:
        keys = ("ingested", "updated", "unchanged", "skipped", "failed")
        return {k: len(self.by_status(k)) for k in keys}

    @property
    def copied(self) -> list[FileOutcome]:
        """Files whose pixels were copied into the repository (not virtual references)."""
        return [f for f in self.files if f.copied_bytes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "source": self.source,
            "product": self.product,
            "snapshot_id": self.snapshot_id,
            "counts": self.counts(),
            "copied": {"files": len(self.copied),
                       "bytes": sum(f.copied_bytes for f in self.copied)},
            "scenes_written": self.scenes_written,
            "duration_s": round(self.duration_s, 3),
            "files": [f.to_dict() for f in self.files],
        }


@dataclass
class _SceneDraft:
    scene_id: str
    when: dt.datetime | None
    props: tuple[tuple[str, str], ...]
    members: list[tuple[SourceFile, str | None]] = field(default_factory=list)  # (file, band key)


def _group_files(
    files: Sequence[SourceFile], patterns: Sequence[FilenamePattern], product: ProductProfile,
    default_datetime: dt.datetime | None, report: IngestReport, explicit_pattern: bool,
) -> dict[str, _SceneDraft]:
    drafts: dict[str, _SceneDraft] = {}
    n_matched = 0
    for f in files:
        match: PatternMatch | None = None
        try:
            for pat in patterns:
                match = pat.match(f.relpath)
                if match is not None:
                    break
        except InputDataError as exc:
            report.files.append(FileOutcome(f.url, "failed", reason=exc.message))
            continue
        if patterns and match is None:
            report.files.append(FileOutcome(
                f.url, "skipped",
                reason=f"does not match pattern(s) {', '.join(p.text for p in patterns)}"))
            continue
        n_matched += 1
        if match is None:
            stem = f.relpath.rsplit(".", 1)[0]
            match = PatternMatch(sanitize_scene_id(stem), None, None, ())
        when = match.datetime or find_date(f.relpath) or default_datetime
        if when is None:
            report.files.append(FileOutcome(
                f.url, "failed", scene_id=match.scene_id,
                reason="no acquisition date: none in the file name; use a --pattern with "
                "{date}/{datetime} or pass --datetime"))
            continue
        band_key = match.band_key if product.layout == "band_per_file" else None
        draft = drafts.setdefault(match.scene_id, _SceneDraft(match.scene_id, when, match.properties))
        if draft.when != when:
            report.files.append(FileOutcome(
                f.url, "failed", scene_id=match.scene_id,
                reason=f"acquisition time {when.isoformat()} differs from the other files of "
                f"scene {match.scene_id} ({draft.when.isoformat() if draft.when else '?'})"))
            continue
        draft.members.append((f, band_key))
    if explicit_pattern and n_matched == 0:
        raise SpecError(
            f"pattern {patterns[0].text!r} matches none of the {len(files)} files",
            hint=f"e.g. {files[0].relpath!r} does not fit; fields are {{date}}, {{band}}, "
            "{scene}, {datetime}, any {name}, and * wildcards",
            pattern=patterns[0].text,
        )
    if patterns and n_matched == 0:
        raise SpecError(
            f"no file matches the patterns of product {product.name!r} "
            f"({', '.join(p.text for p in patterns)})",
            hint="pass --pattern (e.g. --pattern 'S2_{date}_{band}.tif') or another --product",
        )
    return drafts


def _band_specs(parsed: ParsedFile, product: ProductProfile,
                band_names: Sequence[str] | None) -> list[BandSpec]:
    if parsed.count is None:
        key = parsed.band_key or (band_names[0] if band_names else "band_1")
        spec = product.band_for_key(key) or BandSpec(name=key)
        return [spec]
    names = list(band_names) if band_names else None
    if names is None and product.layout == "multiband" and product.bands:
        names = [b.name for b in product.bands]
    if names is None:
        prefix = f"{parsed.band_key}_" if parsed.band_key else "band_"
        names = [f"{prefix}{i + 1}" for i in range(parsed.count)]
    if len(names) != parsed.count:
        raise InputDataError(
            f"file has {parsed.count} bands but {len(names)} band names were given "
            f"({', '.join(names)})", path=parsed.file.url)
    return list(product.with_band_names(names).bands)


def _grid_suffix(p: ParsedFile) -> str:
    """Dimension suffix of a non-base band grid (``20m``; ``0.0002deg`` style otherwise)."""
    res = abs(p.transform[0])
    text = f"{res:g}".replace(".", "p").replace("-", "m")
    return f"{text}m" if p.epsg != 4326 else f"{text}deg"


def _check_grids(draft: _SceneDraft, parsed: list[ParsedFile]) -> ParsedFile:
    """The file on the scene's finest grid; every other grid must align with it."""
    from pyproj import CRS

    from ..grids import align_problem

    base = min(parsed, key=lambda p: (abs(p.transform[0]) * abs(p.transform[4]), p.file.url))
    base_crs = CRS.from_user_input(base.crs)
    for p in parsed:
        if p is base:
            continue
        if p.crs != base.crs and not CRS.from_user_input(p.crs).equals(base_crs):
            problem = "different CRS"
        elif p.grid == base.grid:
            continue
        else:
            problem = align_problem(base.grid, p.grid)  # type: ignore[arg-type]
        if problem is not None:
            raise InputDataError(
                f"files of scene {draft.scene_id} are on grids that do not align: "
                f"{p.file.relpath} ({p.describe_grid()}) vs {base.file.relpath} "
                f"({base.describe_grid()}): {problem}",
                hint="bands of one scene must share the CRS, align on pixel edges and have "
                "integer resolution ratios (like Sentinel-2's 10/20/60 m); resample the file "
                "or give it its own scene via --pattern",
                scene_id=draft.scene_id)
    return base


def _build_scene(draft: _SceneDraft, parsed: list[ParsedFile], product: ProductProfile,
                 band_names: Sequence[str] | None, now: dt.datetime) -> tuple[Any, dict[str, Any]]:
    import xarray as xr

    ref = _check_grids(draft, parsed)
    when = draft.when
    if when is None:
        raise InputDataError(f"scene {draft.scene_id} has no acquisition time",
                             scene_id=draft.scene_id)
    variables: dict[str, Any] = {}
    bands: list[BandInfo] = []
    multi = sum(1 for p in parsed if p.count is not None)
    for p in parsed:
        specs = _band_specs(p, product, band_names)
        da = p.vds["0"]
        if p.count is None:
            array = specs[0].name
        else:
            array = "data" if product.layout == "multiband" else (p.band_key or "data")
            if multi > 1:
                da = da.rename({"band": f"{array}_band"})
        if p.grid != ref.grid:  # bands on a coarser grid get their own dims
            suffix = _grid_suffix(p)
            da = da.rename({"y": f"y_{suffix}", "x": f"x_{suffix}"})
        if array in variables:
            raise InputDataError(
                f"scene {draft.scene_id} has two files for band {array!r}",
                hint="make the pattern distinguish the files", scene_id=draft.scene_id)
        for i, spec in enumerate(specs):
            scale, offset, origin = product.scale_offset(spec, when)
            if p.file_scale_offset is not None:  # the file's own metadata wins
                scale, offset = p.file_scale_offset[i]
                origin = "file (GDAL scale/offset metadata)"
            bands.append(BandInfo(
                name=spec.name, role=spec.role, array=array,
                index=None if p.count is None else i, dtype=p.dtype,
                nodata=spec.nodata if spec.nodata is not None else p.nodata,
                scale=scale, offset=offset, chunks_yx=p.chunks_yx,
                source=p.file.url, transform=tuple(p.transform),  # type: ignore[arg-type]
                shape_yx=p.shape_yx, scale_source=origin, copied=p.copied_nbytes > 0,
                source_fingerprint=None if p.copied_nbytes > 0 else p.file.fingerprint))
        keep = {k: v for k, v in da.attrs.items()
                if k not in ("photometric_interpretation",) and not k.startswith("_")}
        keep["source"] = p.file.url
        variables[array] = da.assign_attrs(keep)
    names = [b.name for b in bands]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputDataError(f"scene {draft.scene_id} has duplicate band names {sorted(dup)}",
                             scene_id=draft.scene_id)
    crs = ref.crs
    fp = footprint_native(ref.transform, ref.shape_yx)  # type: ignore[arg-type]
    fp_ll = footprint_lonlat(fp, crs)
    ds = xr.Dataset(variables)
    ds.attrs.update({
        "scene_id": draft.scene_id,
        "datetime": when.isoformat().replace("+00:00", "Z"),
        "product": product.name,
        "crs": crs,
        "crs_epsg": ref.epsg,
        "transform": list(ref.transform),
        "shape_yx": list(ref.shape_yx),
        "bands": _json_safe([b.to_dict() for b in bands]),
        "properties": dict(draft.props),
    })
    row = {
        "scene_id": draft.scene_id,
        "datetime": when,
        "product": product.name,
        "group": f"{SCENES_GROUP}/{draft.scene_id}",
        "crs_epsg": ref.epsg,
        "crs_wkt": _wkt(crs),
        "transform": list(ref.transform),
        "height": ref.shape_yx[0],
        "width": ref.shape_yx[1],
        "bands": names,
        "bands_json": json.dumps([b.to_dict() for b in bands]),
        "footprint_wkb": shapely.to_wkb(fp),
        "footprint_lonlat_wkb": shapely.to_wkb(fp_ll),
        "minlon": fp_ll.bounds[0], "minlat": fp_ll.bounds[1],
        "maxlon": fp_ll.bounds[2], "maxlat": fp_ll.bounds[3],
        "cloud_cover": None,
        "properties_json": json.dumps(dict(draft.props), sort_keys=True),
        "sources": sorted({p.file.url for p in parsed}),
        "ingested_at": now,
    }
    return ds, row


def _wkt(crs: str) -> str:
    from pyproj import CRS

    return CRS.from_user_input(crs).to_wkt()


def _json_safe(value: Any) -> Any:
    """Strict-JSON copy (zarr attributes): non-finite floats become strings."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _existing_tables(location: str, profile: StorageProfile) -> tuple[pa.Table, pa.Table]:
    try:
        repo = open_repository(location, profile=profile)
    except PixelQueryError:
        return SCENE_SCHEMA.empty_table(), FILE_SCHEMA.empty_table()
    tables = read_catalog_tables(repo.readonly_session("main").store)
    if tables is None:
        return SCENE_SCHEMA.empty_table(), FILE_SCHEMA.empty_table()
    return tables


def _select_changed(
    drafts: dict[str, _SceneDraft], old_files: pa.Table, storage: StorageProfile,
    report: IngestReport,
) -> tuple[list[_SceneDraft], dict[str, str]]:
    """Scenes to (re)write and their status (``ingested``/``updated``).

    A scene whose files are all known with the same fingerprint is reported unchanged. A
    scene with a new or changed file is rewritten whole, keeping the earlier files of that
    scene this listing did not name (so bands can be added later), if they still exist.
    """
    known = {r["url"]: r for r in old_files.to_pylist()}
    old_members: dict[str, list[str]] = {}
    for r in known.values():
        old_members.setdefault(r["scene_id"], []).append(r["url"])
    todo: list[_SceneDraft] = []
    status_of: dict[str, str] = {}
    for draft in drafts.values():
        urls = {f.url for f, _ in draft.members}
        prev = set(old_members.get(draft.scene_id, []))
        if any(u in known and known[u]["scene_id"] != draft.scene_id for u in urls):
            for f, band in draft.members:
                other = known.get(f.url, {}).get("scene_id")
                report.files.append(FileOutcome(
                    f.url, "failed", draft.scene_id, band,
                    reason=f"already ingested as part of scene {other}; a different pattern "
                    "would move it" if other and other != draft.scene_id
                    else "another file of this scene belongs to a different scene"))
            continue
        changed = [f for f, _ in draft.members
                   if f.url not in known or known[f.url]["fingerprint"] != f.fingerprint]
        if not changed and prev <= urls:
            for f, band in draft.members:
                report.files.append(FileOutcome(f.url, "unchanged", draft.scene_id, band))
            continue
        for url in sorted(prev - urls):
            try:
                _, extra = list_source(url[len("file://"):] if url.startswith("file://") else url,
                                       profile=storage, suffixes=None)
            except PixelQueryError:
                continue  # gone: the scene is rewritten without it
            draft.members.append((extra[0], known[url].get("band")))
        status_of[draft.scene_id] = "updated" if draft.scene_id in old_members else "ingested"
        todo.append(draft)
    return todo, status_of


def ingest(
    source: str,
    repo: str,
    *,
    pattern: str | None = None,
    product: str | ProductProfile = "sentinel2-l2a",
    bands: Sequence[str] | None = None,
    datetime: dt.datetime | None = None,
    storage: StorageProfile | None = None,
    message: str | None = None,
    threads: int = 8,
    cloud_cover: bool = True,
    copy_unsupported: bool = False,
    progress: ProgressFn | None = None,
) -> IngestReport:
    """Ingest the COGs a SOURCE names into a repository, in one commit.

    Parameters
    ----------
    source
        Directory/prefix, glob, single file, or list file (local path or ``s3://``).
    repo
        Repository location (created when missing).
    pattern
        File-name pattern grouping files into scenes (default: the product's patterns;
        for ``multiband`` products every file is a scene).
    product
        Product profile name/path or a loaded profile.
    bands
        Band names for multi-band files.
    datetime
        Acquisition time for files whose names carry no date.
    storage
        Storage profile (S3 endpoint and credentials).
    message
        Commit message (default: a summary of the ingest).
    threads
        Header-parsing threads.
    cloud_cover
        Compute each scene's cloud cover from the product's cloud-mask band (reads that
        band once, through the virtual references) for ``scenes.max_cloud`` filters.
    copy_unsupported
        Files virtual references cannot serve (JPEG, striped with a partial last strip,
        big-endian with a predictor, sparse) are read once with rasterio and stored as
        real chunks in the repository (a pixel copy, reported with its size). Without
        it they are refused with the reason.
    progress
        ``progress(stage, done, total)`` callback.

    Returns
    -------
    IngestReport
        Ingested / updated / unchanged / skipped / failed files with reasons, and the new
        snapshot id (``None`` when nothing changed).

    Raises
    ------
    InputDataError, SpecError, ConfigError, RepositoryError
        For problems with the whole call (missing source, pattern matching nothing, unknown
        product, bad repository). Problems with single files are reported, not raised.
    """
    t0 = time.perf_counter()
    storage = storage or StorageProfile()
    prof = product if isinstance(product, ProductProfile) else load_product(product)
    location = repo_location(repo)
    check_repository_location(location)
    report = IngestReport(repo=location, source=str(source), product=prof.name)
    if datetime is not None and datetime.tzinfo is None:
        datetime = datetime.replace(tzinfo=dt.UTC)

    _, files = list_source(source, profile=storage,
                           suffixes=None if pattern else (".tif", ".tiff"))
    if pattern:
        patterns = [FilenamePattern.compile(pattern)]
    elif prof.layout == "band_per_file":
        patterns = [FilenamePattern.compile(p) for p in prof.patterns]
    else:
        patterns = []
    if prof.layout == "band_per_file" and patterns and not any(p.has_band for p in patterns):
        raise SpecError(f"product {prof.name!r} keeps one band per file: the pattern needs {{band}}",
                        pattern=patterns[0].text)
    drafts = _group_files(files, patterns, prof, datetime, report, explicit_pattern=bool(pattern))

    # Dedup against the current catalog: skip scenes whose files are all unchanged.
    _, old_files = _existing_tables(location, storage)
    todo, status_of = _select_changed(drafts, old_files, storage, report)

    # Parse headers (threads: each parse is a few small reads).
    registry = _registry_for([f for d in todo for f, _ in d.members], storage)
    jobs = [(d, f, band) for d in todo for f, band in d.members]
    parsed: dict[str, ParsedFile] = {}
    failures: dict[str, str] = {}
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        futs = {pool.submit(parse_file, f, band, registry, storage, copy_unsupported): (d, f)
                for d, f, band in jobs}
        for fut, (_d, f) in futs.items():
            try:
                parsed[f.url] = fut.result()
            except PixelQueryError as exc:
                failures[f.url] = exc.message
            done += 1
            if progress:
                progress("parse", done, len(jobs))

    now = dt.datetime.now(dt.UTC)
    datasets: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    file_rows: list[dict[str, Any]] = []
    for draft in todo:
        bad = [(f, band) for f, band in draft.members if f.url in failures]
        if bad:
            for f, band in draft.members:
                reason = failures.get(f.url) or f"another file of scene {draft.scene_id} failed"
                report.files.append(FileOutcome(f.url, "failed", draft.scene_id, band, reason))
            continue
        try:
            members = sorted(draft.members, key=lambda m: (m[1] or "", m[0].url))
            ds, row = _build_scene(draft, [parsed[f.url] for f, _ in members], prof, bands, now)
        except InputDataError as exc:
            for f, band in draft.members:
                report.files.append(FileOutcome(f.url, "failed", draft.scene_id, band, exc.message))
            continue
        datasets[draft.scene_id] = ds
        rows.append(row)
        for f, band in draft.members:
            file_rows.append({"url": f.url, "scene_id": draft.scene_id, "band": band,
                              "size": f.size, "fingerprint": f.fingerprint})
            p = parsed[f.url]
            report.files.append(FileOutcome(
                f.url, status_of[draft.scene_id], draft.scene_id, band,
                reason=f"pixels copied into the repository ({p.copied_nbytes / 2**20:.1f} MiB): "
                f"{p.copy_reason}" if p.copied_nbytes else None,
                copied_bytes=p.copied_nbytes))

    if datasets:
        prefixes = tuple(sorted({container_prefix(f.url) for d in todo for f, _ in d.members}))
        n_new = sum(1 for s in datasets if status_of[s] == "ingested")
        msg = message or (f"ingest {n_new} new, {len(datasets) - n_new} updated scene(s) "
                          f"from {source} (product {prof.name})")
        report.snapshot_id = _commit(location, storage, prefixes, datasets, rows, file_rows, msg,
                                     report, progress, cloud=prof.cloud_mask if cloud_cover else None)
        report.scenes_written = sorted(datasets)
    report.duration_s = time.perf_counter() - t0
    logger.info("ingest finished", extra={"counts": report.counts(),
                                          "snapshot_id": report.snapshot_id,
                                          "duration_s": round(report.duration_s, 3)})
    return report


def _registry_for(files: Sequence[SourceFile], storage: StorageProfile) -> Any:
    from obspec_utils.registry import ObjectStoreRegistry

    roots = {split_url(f.url)[0] for f in files}
    mapping = {("file://" if r == "file:///" else r): object_store_for(
        r + ("" if r == "file:///" else "/x"), storage) for r in roots}
    return ObjectStoreRegistry(mapping)


def _merge_tables(old_scenes: pa.Table, old_files: pa.Table, rows: list[dict[str, Any]],
                  file_rows: list[dict[str, Any]]) -> tuple[pa.Table, pa.Table]:
    ids = pa.array([r["scene_id"] for r in rows], pa.string())
    keep = pc.invert(pc.is_in(old_scenes.column("scene_id"), ids))
    scenes = pa.concat_tables([old_scenes.filter(keep).cast(SCENE_SCHEMA),
                               pa.Table.from_pylist(rows, SCENE_SCHEMA)])
    keep_f = pc.invert(pc.is_in(old_files.column("scene_id"), ids))
    urls = pa.array([r["url"] for r in file_rows], pa.string())
    keep_f = pc.and_(keep_f, pc.invert(pc.is_in(old_files.column("url"), urls)))
    files = pa.concat_tables([old_files.filter(keep_f).cast(FILE_SCHEMA),
                              pa.Table.from_pylist(file_rows, FILE_SCHEMA)])
    order = pc.sort_indices(scenes, [("datetime", "ascending"), ("scene_id", "ascending")])
    return scenes.take(order), files.sort_by("url")


def _fill_cloud_cover(session: Any, rows: list[dict[str, Any]], cloud: Any,
                      progress: ProgressFn | None) -> None:
    """Scene-level cloud cover (percent of valid mask-band pixels flagged as cloud), read
    through the session's virtual references (every chunk of the mask band, no GDAL)."""
    from .chunks import ChunkRequest, IcechunkChunkReader, chunks_for_window
    from .models import BandInfo

    reader = IcechunkChunkReader(session)
    for i, row in enumerate(rows, 1):
        bands = [BandInfo.from_dict(d) for d in json.loads(row["bands_json"])]
        band = next((b for b in bands if b.name.lower() == cloud.band.lower()
                     or (b.role or "").lower() == cloud.band.lower()), None)
        if band is None:
            continue
        h, w = band.shape_yx or (int(row["height"]), int(row["width"]))
        window = (0, h, 0, w)  # the mask band's own grid (SCL is at 20 m)
        raw = reader.read([ChunkRequest(row["group"], band, window,
                                        frozenset(chunks_for_window(window, band.chunks_yx)))])[0]
        valid = raw != band.nodata if band.nodata is not None else np.ones(raw.shape, bool)
        if cloud.classes is not None:
            flagged = np.isin(raw, np.asarray(cloud.classes, dtype=raw.dtype))
        else:
            bits = sum(1 << b for b in cloud.bits or ())
            flagged = (raw.astype(np.int64) & bits) != 0
        n_valid = int(valid.sum())
        row["cloud_cover"] = 100.0 * float((flagged & valid).sum()) / n_valid if n_valid else None
        if progress:
            progress("cloud cover", i, len(rows))


def _commit(location: str, storage: StorageProfile, prefixes: tuple[str, ...],
            datasets: dict[str, Any], rows: list[dict[str, Any]], file_rows: list[dict[str, Any]],
            message: str, report: IngestReport, progress: ProgressFn | None,
            cloud: Any = None) -> str:
    """Write scenes + catalog and commit; serialised locally, retried on conflicts remotely.

    With a cloud-mask rule (``cloud``), each new scene's cloud cover is computed from its
    mask band before the catalog is written, in the same commit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with commit_lock(location):
            repo = open_repository(location, profile=storage, create=True, extra_containers=prefixes)
            for attempt in range(1, _MAX_COMMIT_TRIES + 1):
                session = repo.writable_session("main")
                tables = read_catalog_tables(session.store)
                old_scenes, old_files = tables if tables else (SCENE_SCHEMA.empty_table(),
                                                               FILE_SCHEMA.empty_table())
                for i, (sid, ds) in enumerate(sorted(datasets.items()), 1):
                    ds.vz.to_icechunk(session.store, group=f"{SCENES_GROUP}/{sid}", mode="w")
                    if progress:
                        progress("write", i, len(datasets))
                if cloud is not None and attempt == 1:
                    _fill_cloud_cover(session, rows, cloud, progress)
                scenes, files = _merge_tables(old_scenes, old_files, rows, file_rows)
                write_catalog_tables(session.store, scenes, files)
                try:
                    return session.commit(message, metadata={
                        "pixelquery_batch": {"kind": "ingest", "counts": report.counts(),
                                             "scenes": len(datasets)}})
                except (ic.ConflictError, ic.RebaseFailedError) as exc:
                    logger.warning("commit conflict, retrying",
                                   extra={"attempt": attempt, "error": str(exc)})
                    time.sleep(min(2.0, 0.1 * 2**attempt))
            raise StorageError(
                f"could not commit to {location} after {_MAX_COMMIT_TRIES} attempts "
                "(concurrent writers)", hint="retry later", path=location)
