"""Bad-input matrix: every way a user can hand us broken input, one table row each.

Four families (plus the CLI): job specs, fields files, COGs at ingest, repositories and
run-time data problems. Each row asserts

1. an actionable error: the right class from :mod:`pixelquery_batch.errors` and a
   message naming the offending item (file and line, spec key, field id, band, scene,
   file name ...);
2. nothing lost: a bad run against an existing ``outputs.dir`` leaves its tables, its
   ``manifest.json`` and its files as they were; a bad ingest into an existing repository
   leaves its catalog and history as they were, or adds exactly the good files (per-file
   problems are *reported*, not raised: see :func:`pixelquery_batch.ingest`).

A new case that exposes an engine bug (wrong exception class, or a message that does not
name the item) may be marked ``xfail(strict=True)`` with the reason until it is fixed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd
import pytest
from shapely.geometry import Polygon, box

from pixelquery_batch import ingest, open_catalog, read_table, run_job
from pixelquery_batch.api import history, read_ledger
from pixelquery_batch.catalog.store import clear_caches, open_repository, resolve_snapshot
from pixelquery_batch.errors import (
    ConfigError,
    InputDataError,
    OutputError,
    PlanError,
    RepositoryError,
    SceneNotFoundError,
    SpecError,
    TaskError,
)
from pixelquery_batch.testing.cogs import make_cog, make_flavour

from .conftest import FLAVOUR_DATE

# --------------------------------------------------------------------------- helpers

#: The job every row starts from (line numbers matter: messages quote them).
BASE_SPEC = """\
version: 1
name: bad-inputs
repository: {path: '@REPO@'}
scenes: {start: 2021-09-01, end: 2025-12-31}
fields: {path: '@FIELDS@', @FIELDOPTS@}
bands: [red, nir]
indices: {ndvi: builtin}
stats: [mean, std, count, valid_fraction]
pixels: centre
masks: {nodata: true, cloud: auto}
outputs: {dir: '@OUT@', stats: {format: parquet}}
cluster: {n_workers: 1, threads_per_worker: 1, processes: false, dashboard: false}
on_error: skip
"""

STATS_KEYS = ["field_id", "scene_id", "variable"]


def spec_text(*, repo: Path | str, fields: Path | str, out: Path | str,
              field_opts: str = "id: id") -> str:
    return (BASE_SPEC.replace("@REPO@", str(repo)).replace("@FIELDS@", str(fields))
            .replace("@OUT@", str(out)).replace("@FIELDOPTS@", field_opts))


def edit(text: str, old: str, new: str) -> str:
    """``text`` with ``old`` (which must be there: a row cannot silently test nothing)
    replaced by ``new``."""
    assert old in text, f"{old!r} is not in the base spec"
    return text.replace(old, new, 1)


def pattern(template: str, **items: Path | str) -> str:
    """A regex from ``template`` with ``@NAME@`` placeholders replaced by escaped items."""
    for name, value in items.items():
        template = template.replace(f"@{name.upper()}@", re.escape(str(value)))
    assert "@" not in template, template
    return template


def tree(root: Path) -> dict[str, str]:
    """Every file below ``root`` with its content hash (``.work/``, the resumable staging
    area, is left out: it is durable by design)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != ".work"}


def outputs_state(out: Path) -> dict[str, Any]:
    stats = read_table(out, "stats")
    return {
        "stats": stats.sort_values(STATS_KEYS).reset_index(drop=True),
        "runs": read_table(out, "runs").sort_values("started_at").reset_index(drop=True),
        "manifest": (out / "manifest.json").read_text(),
        "tree": tree(out),
    }


def assert_outputs_unchanged(out: Path, before: dict[str, Any]) -> None:
    after = outputs_state(out)
    pd.testing.assert_frame_equal(after["stats"], before["stats"])
    pd.testing.assert_frame_equal(after["runs"], before["runs"])
    assert after["manifest"] == before["manifest"]
    assert after["tree"] == before["tree"]


def repo_state(repo: Path) -> tuple[list[str], list[str]]:
    """(catalog scene ids on main, snapshot ids of main's history, newest first)."""
    clear_caches()
    return open_catalog(repo).ids, [h["snapshot_id"] for h in history(repo)]


class Existing:
    """An ``outputs.dir`` holding a good run's results, and what it held before."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.before = outputs_state(out)

    def assert_unchanged(self) -> None:
        assert_outputs_unchanged(self.out, self.before)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def good_out(sample_small, sample_repo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good run of BASE_SPEC over the small sample (copied by each test that needs it)."""
    d = tmp_path_factory.mktemp("good_run")
    spec = d / "good.yaml"
    spec.write_text(spec_text(repo=sample_repo, fields=sample_small.fields_path, out=d / "out"))
    result = run_job(spec, cluster="sync")
    assert result.ok and result.manifest["execution"]["pairs_computed"] == 120
    return d / "out"


@pytest.fixture
def existing(good_out: Path, tmp_path: Path) -> Existing:
    shutil.copytree(good_out, tmp_path / "out")
    return Existing(tmp_path / "out")


@pytest.fixture
def write_bad(tmp_path: Path, sample_small, sample_repo, existing: Existing
              ) -> Callable[..., Path]:
    """``write_bad(old, new, **spec_text_kwargs)``: BASE_SPEC with one edit (``@REPO@``,
    ``@FIELDS@``, ``@OUT@`` substituted in both), written to
    ``tmp_path/bad.yaml`` with ``outputs.dir`` = the existing outputs."""

    def write(old: str | None = None, new: str | None = None, **kw: Any) -> Path:
        args = {"repo": sample_repo, "fields": sample_small.fields_path, "out": existing.out, **kw}
        text = spec_text(**args)
        if old is not None:
            subs = {"@REPO@": args["repo"], "@FIELDS@": args["fields"], "@OUT@": args["out"]}
            for key, value in subs.items():
                old, new = old.replace(key, str(value)), (new or "").replace(key, str(value))
            text = edit(text, old, new)
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="module")
def cog_repo_template(flavour_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding one good scene (``uint16_lzw_2025-03-15``, multiband)."""
    repo = tmp_path_factory.mktemp("cog_repo") / "repo"
    report = ingest(str(flavour_dir / f"uint16_lzw_{FLAVOUR_DATE}.tif"), str(repo),
                    product="multiband")
    assert report.ok and report.counts()["ingested"] == 1
    return repo


@pytest.fixture
def cog_repo(cog_repo_template: Path, tmp_path: Path) -> Path:
    shutil.copytree(cog_repo_template, tmp_path / "repo")
    return tmp_path / "repo"


@pytest.fixture
def archive(sample_small, tmp_path: Path) -> dict[str, Any]:
    """A private copy of the sample COGs, ingested, and a good run over the first scene
    only into ``out/`` (so a later run over all scenes has pairs to compute)."""
    cogs = tmp_path / "cogs"
    shutil.copytree(sample_small.cog_dir, cogs)
    repo = tmp_path / "repo"
    assert ingest(str(cogs), str(repo), product="sentinel2-l2a", pattern=sample_small.pattern).ok
    first = tmp_path / "first.yaml"
    first.write_text(edit(spec_text(repo=repo, fields=sample_small.fields_path, out=tmp_path / "out"),
                          "end: 2025-12-31", "end: 2021-12-31"))
    assert run_job(first, cluster="sync").manifest["execution"]["pairs_computed"] == 40
    return {"cogs": cogs, "repo": repo, "out": tmp_path / "out", "scenes": sample_small.scene_ids,
            "fields": sample_small.fields_path}


# =========================================================================== job specs

SPEC_CASES = [
    # (old, new, error, regex): old None = the whole text is replaced by new;
    # new None = no file at all. @FILE@ is the spec path.
    pytest.param(None, None, SpecError, r"^job spec @FILE@ not found", id="spec-file-missing"),
    pytest.param(None, "", SpecError, r"^@FILE@:1: the job spec is empty", id="spec-empty"),
    pytest.param(None, "- version: 1\n- name: x\n", SpecError,
                 r"^@FILE@:1: a job spec must be a mapping of keys, got a list",
                 id="spec-not-a-mapping"),
    pytest.param("indices: {ndvi: builtin}", "indices: {ndvi: builtin", SpecError,
                 r"^@FILE@:8: invalid YAML: expected ',' or '\}'", id="spec-yaml-syntax"),
    pytest.param("repository: {path: '@REPO@'}",
                 "repository: !!python/object/apply:os.system ['touch PWNED']", SpecError,
                 r"^@FILE@:3: invalid YAML: .*tag", id="spec-yaml-python-tag"),
    pytest.param("on_error: skip", "on_error: skip\ncolour: blue", SpecError,
                 r"^@FILE@:14 colour: unknown key 'colour' \(expected one of version, name, ",
                 id="spec-unknown-key"),
    pytest.param("id: id}", "id: id, layr: parcels}", SpecError,
                 r"^@FILE@:5 fields\.layr: unknown key 'layr' .*did you mean 'layer'\?",
                 id="spec-unknown-nested-key"),
    pytest.param("on_error: skip", "on_eror: skip", SpecError,
                 r"^@FILE@:13 on_eror: unknown key 'on_eror' .*did you mean 'on_error'\?",
                 id="spec-misspelt-key"),
    pytest.param("stats: [mean, std, count, valid_fraction]", "stats: mean", SpecError,
                 r"^@FILE@:8 stats: expected a list, got 'mean'", id="spec-wrong-type-list"),
    pytest.param("masks: {nodata: true, cloud: auto}", "masks: yes", SpecError,
                 r"^@FILE@:10 masks: expected a mapping, got true", id="spec-wrong-type-mapping"),
    pytest.param("version: 1", "version: 2", SpecError,
                 r"^@FILE@:1 version: unsupported spec version 2 \(expected 1\)",
                 id="spec-version-2"),
    pytest.param("bands: [red, nir]\nindices: {ndvi: builtin}", "bands: []\nindices: {}",
                 SpecError, r"^@FILE@:7 indices: nothing to compute",
                 id="spec-nothing-to-compute"),
    pytest.param("bands: [red, nir]", "bands: [red, nir, red]", SpecError,
                 r"^@FILE@:6 bands\[2\]: duplicate band 'red' \(also bands\[0\]\)",
                 id="spec-duplicate-band"),
    pytest.param("indices: {ndvi: builtin}", "indices: {ndvi: builtin, bsi: 'nir - bogus'}",
                 SpecError, r"scene S2A_33UXP_20211201_0_L2A has no band or role 'bogus' "
                 r"\(bands: blue, green, red, nir, swir16, scl\)", id="spec-index-unknown-band"),
    pytest.param("indices: {ndvi: builtin}", "indices: {ndvi: builtin, x: 'red +'}", SpecError,
                 r"^@FILE@:7 indices\.x: invalid syntax in 'red \+'", id="spec-index-syntax"),
    pytest.param("indices: {ndvi: builtin}",
                 "indices: {ndvi: builtin, evil: \"__import__('os').system('touch PWNED')\"}",
                 SpecError, r"^@FILE@:7 indices\.evil: .* is not allowed: function calls other "
                 r"than where", id="spec-index-call"),
    pytest.param("indices: {ndvi: builtin}", "indices: {ndvi: builtin, re: 'nir.real'}",
                 SpecError, r"^@FILE@:7 indices\.re: 'nir\.real' is not allowed: attribute access",
                 id="spec-index-attribute"),
    pytest.param("indices: {ndvi: builtin}", "indices: {ndvi: builtin, foo: builtin}", SpecError,
                 r"^@FILE@:7 indices\.foo: .*no builtin index 'foo'", id="spec-index-no-builtin"),
    pytest.param("stats: [mean, std, count, valid_fraction]", "stats: [mean, p95x]", SpecError,
                 r"^@FILE@:8 stats\[1\]: unknown statistic 'p95x' \(expected one of mean, ",
                 id="spec-unknown-statistic"),
    pytest.param("stats: [mean, std, count, valid_fraction]", "stats: [mean, p100]", SpecError,
                 r"^@FILE@:8 stats\[1\]: percentile 'p100' out of range \(p1\.\.p99\)",
                 id="spec-percentile-out-of-range"),
    pytest.param("scenes: {start: 2021-09-01, end: 2025-12-31}",
                 "scenes: {start: 2025-06-01, end: 2025-01-31}", SpecError,
                 r"^@FILE@:4 scenes\.end: end 2025-01-31 is before start 2025-06-01",
                 id="spec-start-after-end"),
    pytest.param("start: 2021-09-01", "start: yesterday", SpecError,
                 r"^@FILE@:4 scenes\.start: expected a date like 2025-01-31 .*\(got 'yesterday'\)",
                 id="spec-bad-date"),
    pytest.param("start: 2021-09-01", "start: 2021-13-45", SpecError,
                 r"^@FILE@:4 scenes\.start: ", id="spec-impossible-calendar-date"),
    pytest.param("pixels: centre", "pixels: center", SpecError,
                 r"^@FILE@:9 pixels: invalid value 'center' \(expected one of 'centre', ",
                 id="spec-unknown-pixel-rule"),
    pytest.param("cloud: auto}", "cloud: sometimes}", SpecError,
                 r"^@FILE@:10 masks\.cloud: invalid value 'sometimes'", id="spec-bad-cloud-mask"),
    pytest.param("n_workers: 1,", "address: 'not an address', n_workers: 1,", SpecError,
                 r"^@FILE@:12 cluster\.address: invalid scheduler address 'not an address'",
                 id="spec-bad-cluster-address"),
    pytest.param("processes: false,", "processes: false, memory_limit: lots,", SpecError,
                 r"^@FILE@:12 cluster\.memory_limit: invalid memory size 'lots' \(expected e\.g\. ",
                 id="spec-bad-memory-size"),
    pytest.param("n_workers: 1,", "n_workers: 0,", SpecError,
                 r"^@FILE@:12 cluster\.n_workers: must be >= 1 \(got 0\)", id="spec-zero-workers"),
    pytest.param("outputs: {dir: '@OUT@', stats: {format: parquet}}",
                 "outputs: {stats: {format: parquet}}", SpecError,
                 r"^@FILE@:11 outputs\.dir: missing required key 'dir'", id="spec-outputs-dir-missing"),
    pytest.param("stats: {format: parquet}}", "stats: {format: xlsx}}", SpecError,
                 r"^@FILE@:11 outputs\.stats\.format: invalid value 'xlsx'",
                 id="spec-bad-output-format"),
    pytest.param("repository: {path: '@REPO@'}", "repository: {snapshot: main}", SpecError,
                 r"^@FILE@:3 repository\.path: missing required key 'path'",
                 id="spec-repository-path-missing"),
    pytest.param("repository: {path: '@REPO@'}",
                 "repository: {path: '@REPO@', storage: nowhere-profile}", ConfigError,
                 r"^storage profile not found: .*/storage/nowhere-profile\.yaml",
                 id="spec-storage-profile-not-found"),
    pytest.param("on_error: skip", "on_error: skip\nname: again", SpecError,
                 r"^@FILE@:14 name: duplicate key 'name' \(first defined at line 2\)",
                 id="spec-duplicate-key"),
    pytest.param("on_error: skip", "on_error: skip\nresolution: -10", SpecError,
                 r"^@FILE@:14 resolution: must be > 0", id="spec-negative-resolution"),
    pytest.param("on_error: skip", "on_error: skip\nresolution: ten", SpecError,
                 r"^@FILE@:14 resolution: expected a number, got 'ten'",
                 id="spec-resolution-not-a-number"),
    pytest.param("on_error: skip", "on_error: skip\nresolution: 5", PlanError,
                 r"^resolution 5 is finer than the finest band the job uses \(10 in scene "
                 r"S2A_33UXP_20211201_0_L2A\)", id="spec-resolution-finer-than-bands"),
    pytest.param("on_error: skip", "on_error: retry", SpecError,
                 r"^@FILE@:13 on_error: invalid value 'retry'", id="spec-bad-on-error"),
    pytest.param("stats: {format: parquet}}",
                 "stats: {format: parquet}, timeseries: {period: fortnight}}", SpecError,
                 r"^@FILE@:11 outputs\.timeseries\.period: invalid period 'fortnight'",
                 id="spec-bad-period"),
    pytest.param("stats: {format: parquet}}",
                 "stats: {format: parquet}, timeseries: {variables: [evi]}}", SpecError,
                 r"^@FILE@:\d+: outputs\.timeseries\.variables: variable\(s\) \['evi'\] are not "
                 r"defined", id="spec-timeseries-unknown-variable"),
]


@pytest.mark.parametrize(("old", "new", "error", "regex"), SPEC_CASES)
def test_bad_spec(old: str | None, new: str | None, error: type[Exception], regex: str,
                  write_bad: Callable[..., Path], existing: Existing, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a PWNED file would land here
    if new is None:  # the spec file does not exist
        path = tmp_path / "missing.yaml"
    elif old is None:
        path = write_bad()
        path.write_text(new)
    else:
        path = write_bad(old, new)
    with pytest.raises(error, match=pattern(regex, file=path)):
        run_job(path, cluster="sync")
    assert not (tmp_path / "PWNED").exists()  # nothing of the spec was ever executed
    existing.assert_unchanged()


# =========================================================================== fields files

BOWTIE = Polygon([(16.40, 47.80), (16.41, 47.81), (16.41, 47.80), (16.40, 47.81), (16.40, 47.80)])


def _sample_fields(sample) -> gpd.GeoDataFrame:
    return gpd.read_file(sample.fields_path)


def _fields_missing(tmp: Path, _f: gpd.GeoDataFrame) -> Path:
    return tmp / "nope.geojson"


def _fields_empty(tmp: Path, _f: gpd.GeoDataFrame) -> Path:
    path = tmp / "fields.geojson"
    path.write_text('{"type": "FeatureCollection", "features": []}')
    return path


def _fields_no_crs(tmp: Path, f: gpd.GeoDataFrame) -> Path:
    path = tmp / "fields.shp"  # a shapefile without its .prj
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "'crs' was not provided": that is the point
        gpd.GeoDataFrame(f.drop(columns="geometry"), geometry=list(f.geometry),
                         crs=None).to_file(path)
    assert not path.with_suffix(".prj").exists()
    return path


def _fields_with(**rows: tuple[int, str, Any]) -> Callable[[Path, gpd.GeoDataFrame], Path]:
    """Sample fields with some rows' (id, geometry) replaced: ``name=(row, id, geom)``."""

    def make(tmp: Path, f: gpd.GeoDataFrame) -> Path:
        f = f.copy()
        for row, fid, geom in rows.values():
            f.loc[row, "id"] = fid
            if geom is not None:
                f.loc[row, "geometry"] = geom(f.geometry.iloc[row])
        path = tmp / "fields.geojson"
        f.to_file(path)
        return path

    return make


def _fields_gpkg(tmp: Path, f: gpd.GeoDataFrame) -> Path:
    path = tmp / "fields.gpkg"
    f.to_file(path, layer="parcels")
    return path


def _fields_text(tmp: Path, _f: gpd.GeoDataFrame) -> Path:
    path = tmp / "fields.txt"
    path.write_text("field F0001 is the one by the river\n")
    return path


def _fields_not_json(tmp: Path, _f: gpd.GeoDataFrame) -> Path:
    path = tmp / "fields.geojson"
    path.write_text("<html>404 not found</html>\n")
    return path


def _fields_csv(tmp: Path, _f: gpd.GeoDataFrame) -> Path:
    path = tmp / "fields.csv"
    path.write_text("id,name,area_ha\nF0001,river,3.2\nF0002,hill,1.1\n")
    return path


FIELDS_CASES = [
    # (make(tmp, sample fields) -> path, fields options, error, regex); @FILE@ = the path
    pytest.param(_fields_missing, "id: id", InputDataError, r"^fields file not found: @FILE@$",
                 id="fields-file-missing"),
    pytest.param(_fields_empty, "id: id", InputDataError, r"^@FILE@: no features",
                 id="fields-empty-collection"),
    pytest.param(_fields_no_crs, "id: id", InputDataError, r"^@FILE@: the fields have no CRS",
                 id="fields-no-crs"),
    pytest.param(_fields_with(a=(3, "DUP-7", None), b=(7, "DUP-7", None)), "id: id",
                 InputDataError, r"^@FILE@: duplicate field ids 'DUP-7'",
                 id="fields-duplicate-ids"),
    pytest.param(_fields_with(), "id: parcel", InputDataError,
                 r"^@FILE@: no id column 'parcel' \(set fields\.id to one of \['id', 'name', "
                 r"'crop'\]\)", id="fields-missing-id-column"),
    pytest.param(_fields_with(a=(3, None, None)), "id: id", InputDataError,
                 r"^@FILE@: 1 feature\(s\) without an id in column 'id' \(feature index \[3\]\)",
                 id="fields-null-id"),
    pytest.param(_fields_with(a=(5, "BOWTIE", lambda _g: BOWTIE)), "id: id", InputDataError,
                 r"^@FILE@: invalid geometries for ids 'BOWTIE' .*fields\.fix_invalid: true",
                 id="fields-invalid-geometry"),
    pytest.param(_fields_with(a=(2, "WELL", lambda g: g.centroid)), "id: id", InputDataError,
                 r"^@FILE@: fields must be polygons; not polygonal: ids 'WELL'",
                 id="fields-points-not-polygons"),
    pytest.param(_fields_with(a=(4, "GHOST", lambda _g: Polygon())), "id: id", InputDataError,
                 r"^@FILE@: empty or missing geometry for ids 'GHOST'",
                 id="fields-empty-geometry"),
    pytest.param(_fields_gpkg, "id: id, layer: nope", InputDataError,
                 r"^cannot read fields file @FILE@: Layer 'nope' could not be opened",
                 id="fields-gpkg-missing-layer"),
    pytest.param(_fields_text, "id: id", InputDataError,
                 r"^cannot read fields file @FILE@: .*not recognized as being in a supported "
                 r"file format", id="fields-text-file"),
    pytest.param(_fields_not_json, "id: id", InputDataError, r"^cannot read fields file @FILE@: ",
                 id="fields-geojson-not-json"),
    pytest.param(_fields_csv, "id: id", InputDataError, r"@FILE@", id="fields-csv-without-geometry"),
]


@pytest.mark.parametrize(("make", "opts", "error", "regex"), FIELDS_CASES)
def test_bad_fields(make: Callable[[Path, gpd.GeoDataFrame], Path], opts: str,
                    error: type[Exception], regex: str, sample_small,
                    write_bad: Callable[..., Path], existing: Existing, tmp_path: Path) -> None:
    fields = make(tmp_path, _sample_fields(sample_small))
    spec = write_bad(fields=fields, field_opts=opts)
    with pytest.raises(error, match=pattern(regex, file=fields)):
        run_job(spec, cluster="sync")
    existing.assert_unchanged()


def test_fields_outside_every_scene_are_a_warning_listed_in_the_manifest(
        sample_small, write_bad: Callable[..., Path], existing: Existing, tmp_path: Path) -> None:
    """Not an error: the run succeeds, the manifest names the fields, no row is lost."""
    f = _sample_fields(sample_small)
    far = gpd.GeoDataFrame({"id": ["FAR-1", "FAR-2"], "name": "x", "crop": "x"},
                           geometry=[box(0.0, 0.0, 0.01, 0.01), box(120.0, -30.0, 120.01, -29.99)],
                           crs="EPSG:4326")
    path = tmp_path / "fields.geojson"
    pd.concat([f, far], ignore_index=True).to_file(path)
    result = run_job(write_bad(fields=path), cluster="sync")
    assert result.ok
    plan = result.manifest["plan"]
    assert plan["fields_outside_every_scene"] == ["FAR-1", "FAR-2"]
    assert "2 field(s) lie outside every matched scene" in plan["warnings"]
    assert result.manifest["execution"]["pairs_computed"] == 0
    after = read_table(existing.out, "stats").sort_values(STATS_KEYS).reset_index(drop=True)
    pd.testing.assert_frame_equal(after, existing.before["stats"])


# =========================================================================== COGs (ingest)
# Problems with the whole call raise; problems with single files are reported per file
# (the good files of the same call still go in, in one commit).

GOOD_SCENE = "good_2025-04-01"


def _good(src: Path) -> None:
    make_flavour(src / f"{GOOD_SCENE}.tif", "uint16_lzw")


def _bad_flavour(flavour: str) -> Callable[[Path], None]:
    def make(src: Path) -> None:
        _good(src)
        make_flavour(src / f"bad_{flavour}_2025-05-01.tif", flavour)

    return make


def _no_date(src: Path) -> None:
    _good(src)
    make_flavour(src / "ortho_block7.tif", "uint16_lzw")


def _band_count(src: Path) -> None:
    make_cog(src / f"{GOOD_SCENE}.tif", count=2, shape_yx=(64, 64))
    make_cog(src / "bad_three_bands_2025-05-01.tif", count=3, shape_yx=(64, 64))


def _not_matching(src: Path) -> None:
    _good(src)
    make_flavour(src / "notes_2025-05-01.tif", "uint16_lzw")


def _misaligned(src: Path) -> None:
    for band, origin in (("red", (600000.0, 5300000.0)), ("nir", (600005.0, 5300000.0))):
        make_cog(src / f"S2_33UXP_2025-05-01_{band}.tif", shape_yx=(64, 64), origin_xy=origin)
    for band in ("red", "nir"):
        make_cog(src / f"S2_33UXP_2025-04-01_{band}.tif", shape_yx=(64, 64),
                 origin_xy=(600000.0, 5300000.0))


def _only_bad(src: Path) -> None:
    make_flavour(src / "bad_truncated_2025-05-01.tif", "truncated")


COPY_HINT = r".*pass --copy-unsupported"
PER_FILE_CASES = [
    # (make(src), ingest kwargs, {bad file: (status, reason regex)}, good scene ids)
    pytest.param(_bad_flavour("not_a_tiff"), {}, {
        "bad_not_a_tiff_2025-05-01.tif": ("failed", r"^not a TIFF file \(bad magic bytes\)$")},
        [GOOD_SCENE], id="cog-not-a-tiff"),
    pytest.param(_bad_flavour("empty"), {}, {
        "bad_empty_2025-05-01.tif": ("failed", r"^empty file \(0 bytes\)$")},
        [GOOD_SCENE], id="cog-empty-file"),
    pytest.param(_bad_flavour("truncated"), {}, {
        "bad_truncated_2025-05-01.tif": ("failed", r"^truncated file: tile data extends past")},
        [GOOD_SCENE], id="cog-truncated"),
    pytest.param(_bad_flavour("jpeg_ycbcr"), {}, {
        "bad_jpeg_ycbcr_2025-05-01.tif": ("failed", r"^unsupported compression: JPEG" + COPY_HINT)},
        [GOOD_SCENE], id="cog-jpeg-ycbcr"),
    pytest.param(_bad_flavour("jpeg_rgb"), {}, {
        "bad_jpeg_rgb_2025-05-01.tif": ("failed", r"^unsupported compression: JPEG" + COPY_HINT)},
        [GOOD_SCENE], id="cog-jpeg-rgb"),
    pytest.param(_bad_flavour("bigendian_pred2"), {}, {
        "bad_bigendian_pred2_2025-05-01.tif": ("failed", r"^big-endian TIFF with a predictor: "
                                               r"virtual reads would return wrong pixels"
                                               + COPY_HINT)},
        [GOOD_SCENE], id="cog-bigendian-predictor"),
    pytest.param(_bad_flavour("sparse"), {}, {
        "bad_sparse_2025-05-01.tif": ("failed", r"^sparse TIFF \(tiles with no data\)" + COPY_HINT)},
        [GOOD_SCENE], id="cog-sparse"),
    pytest.param(_bad_flavour("striped_partial"), {}, {
        "bad_striped_partial_2025-05-01.tif": ("failed", r"^striped TIFF whose last strip is "
                                               r"partial" + COPY_HINT)},
        [GOOD_SCENE], id="cog-striped-partial-strip"),
    pytest.param(_bad_flavour("no_georef"), {}, {
        "bad_no_georef_2025-05-01.tif": ("failed", r"TIFF has no georeferencing")},
        [GOOD_SCENE], id="cog-no-georeferencing"),
    pytest.param(_no_date, {}, {
        "ortho_block7.tif": ("failed", r"^no acquisition date: none in the file name; .*--datetime")},
        [GOOD_SCENE], id="cog-no-date-in-name"),
    pytest.param(_band_count, {"bands": ["red", "nir"]}, {
        "bad_three_bands_2025-05-01.tif": ("failed", r"^file has 3 bands but 2 band names were "
                                           r"given \(red, nir\)")},
        [GOOD_SCENE], id="cog-band-count-mismatch"),
    pytest.param(_not_matching, {"pattern": "good_{date}.tif"}, {
        "notes_2025-05-01.tif": ("skipped", r"^does not match pattern\(s\) good_\{date\}\.tif$")},
        [GOOD_SCENE], id="cog-name-not-matching-pattern"),
    pytest.param(_misaligned, {"product": "sentinel2-l2a"}, {
        name: ("failed", r"files of scene S2_33UXP_2025-05-01 are on grids that do not align: "
               r".*S2_33UXP_2025-05-01_(nir|red)\.tif .* vs .*S2_33UXP_2025-05-01_(red|nir)\.tif")
        for name in ("S2_33UXP_2025-05-01_red.tif", "S2_33UXP_2025-05-01_nir.tif")},
        ["S2_33UXP_2025-04-01"], id="cog-bands-on-misaligned-grids"),
    pytest.param(_only_bad, {}, {
        "bad_truncated_2025-05-01.tif": ("failed", r"^truncated file")},
        [], id="cog-only-bad-files"),
]


@pytest.mark.parametrize(("make", "kwargs", "bad", "good_scenes"), PER_FILE_CASES)
def test_bad_cog_is_reported_and_the_rest_ingested(
        make: Callable[[Path], None], kwargs: dict[str, Any],
        bad: dict[str, tuple[str, str]], good_scenes: list[str],
        cog_repo: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make(src)
    ids_before, history_before = repo_state(cog_repo)
    report = ingest(str(src), str(cog_repo), **{"product": "multiband", **kwargs})

    outcomes = {Path(f.url).name: f for f in report.files}
    for name, (status, reason) in bad.items():
        assert outcomes[name].status == status, outcomes[name]
        assert re.search(reason, outcomes[name].reason or ""), outcomes[name].reason
    assert report.ok == all(status != "failed" for status, _ in bad.values())
    assert report.scenes_written == good_scenes
    # nothing lost: the earlier scene is there, the good files went in (one commit), the
    # previous snapshot still reads as before
    ids_after, history_after = repo_state(cog_repo)
    assert sorted(ids_after) == sorted([*ids_before, *good_scenes])
    assert history_after[len(history_after) - len(history_before):] == history_before
    assert len(history_after) == len(history_before) + (1 if good_scenes else 0)
    assert resolve_snapshot(cog_repo, history_before[0]).catalog().ids == ids_before


def _src_missing(tmp: Path) -> tuple[str, dict[str, Any]]:
    return str(tmp / "nowhere"), {}


def _src_empty(tmp: Path) -> tuple[str, dict[str, Any]]:
    (tmp / "empty").mkdir()
    return str(tmp / "empty"), {}


def _src_no_tiffs(tmp: Path) -> tuple[str, dict[str, Any]]:
    (tmp / "docs").mkdir()
    (tmp / "docs" / "README.md").write_text("scenes come next week\n")
    (tmp / "docs" / "scene.jp2").write_bytes(b"\x00\x00\x00\x0cjP  ")
    return str(tmp / "docs"), {}


def _src_one_cog(tmp: Path) -> Path:
    src = tmp / "src"
    make_cog(src / "S2_33UXP_2025-05-01_red.tif", shape_yx=(64, 64))
    return src


def _src_pattern(tmp: Path) -> tuple[str, dict[str, Any]]:
    return str(_src_one_cog(tmp)), {"pattern": "L8_{date}_{band}.tif"}


def _src_default_patterns(tmp: Path) -> tuple[str, dict[str, Any]]:
    make_cog(tmp / "src" / "field_survey_2025-05-01.tif", shape_yx=(64, 64))
    return str(tmp / "src"), {"product": "sentinel2-l2a"}


def _src_pattern_no_band(tmp: Path) -> tuple[str, dict[str, Any]]:
    return str(_src_one_cog(tmp)), {"pattern": "{scene}_{date}.tif", "product": "sentinel2-l2a"}


def _src_glob(tmp: Path) -> tuple[str, dict[str, Any]]:
    return str(_src_one_cog(tmp) / "*.jp2"), {}


def _src_list_file(tmp: Path) -> tuple[str, dict[str, Any]]:
    src = _src_one_cog(tmp)
    listing = tmp / "files.txt"
    listing.write_text(f"# tonight's files\n{src / 'S2_33UXP_2025-05-01_red.tif'}\n"
                       "/nonexistent/S2_33UXP_2025-05-01_nir.tif\n")
    return str(listing), {}


def _src_product(tmp: Path) -> tuple[str, dict[str, Any]]:
    return str(_src_one_cog(tmp)), {"product": "sentinel3-olci"}


WHOLE_CALL_CASES = [
    # (setup(tmp) -> (source, ingest kwargs), error, regex); @SRC@ = the source
    pytest.param(_src_missing, InputDataError, r"^source not found: @SRC@ \(give a directory of COGs, a glob", id="cog-source-missing"),
    pytest.param(_src_empty, InputDataError, r"^no \.tif/\.tiff files in @SRC@ \(check the path",
                 id="cog-empty-directory"),
    pytest.param(_src_no_tiffs, InputDataError, r"^no \.tif/\.tiff files in @SRC@ \(check the path",
                 id="cog-directory-without-tiffs"),
    pytest.param(_src_pattern, SpecError, r"^pattern 'L8_\{date\}_\{band\}\.tif' matches none of "
                 r"the 1 files \(e\.g\. 'S2_33UXP_2025-05-01_red\.tif' does not fit",
                 id="cog-pattern-matches-no-file"),
    pytest.param(_src_default_patterns, SpecError, r"^no file matches the patterns of product "
                 r"'sentinel2-l2a' \(S2_\{tile\}_\{date\}_\{band\}\.tif, .*pass --pattern",
                 id="cog-product-patterns-match-no-file"),
    pytest.param(_src_pattern_no_band, SpecError, r"^product 'sentinel2-l2a' keeps one band per "
                 r"file: the pattern needs \{band\}", id="cog-pattern-without-band"),
    pytest.param(_src_glob, InputDataError, r"^glob '@SRC@' matches no file$",
                 id="cog-glob-matches-no-file"),
    pytest.param(_src_list_file, InputDataError, r"^@SRC@:3: listed file not found: "
                 r"/nonexistent/S2_33UXP_2025-05-01_nir\.tif", id="cog-list-file-missing-entry"),
    pytest.param(_src_product, ConfigError, r"^unknown product profile 'sentinel3-olci'",
                 id="cog-unknown-product"),
]


@pytest.mark.parametrize(("setup", "error", "regex"), WHOLE_CALL_CASES)
def test_bad_ingest_source_raises_and_commits_nothing(
        setup: Callable[[Path], tuple[str, dict[str, Any]]], error: type[Exception], regex: str,
        cog_repo: Path, tmp_path: Path) -> None:
    source, kwargs = setup(tmp_path)
    before = repo_state(cog_repo)
    with pytest.raises(error, match=pattern(regex, src=source)):
        ingest(source, str(cog_repo), **{"product": "multiband", **kwargs})
    assert repo_state(cog_repo) == before


# =========================================================================== repositories


def _repo_is_file(tmp: Path) -> Path:
    (tmp / "warehouse").write_text("not a repository\n")
    return tmp / "warehouse"


def _repo_not_a_repository(tmp: Path) -> Path:
    (tmp / "warehouse").mkdir()
    (tmp / "warehouse" / "notes.txt").write_text("my thesis, do not delete\n")
    return tmp / "warehouse"


def _repo_parent_is_file(tmp: Path) -> Path:
    (tmp / "blocker").write_text("a file where a directory should be\n")
    return tmp / "blocker" / "warehouse"


INGEST_REPO_CASES = [
    pytest.param(_repo_is_file, RepositoryError,
                 r"^repository path @REPO@ is a file, not a repository", id="repo-path-is-a-file"),
    pytest.param(_repo_not_a_repository, RepositoryError,
                 r"^@REPO@ is not a pixelquery repository \(not an Icechunk repository and not "
                 r"empty\)", id="repo-not-a-repository"),
    pytest.param(_repo_parent_is_file, RepositoryError,
                 r"^cannot create repository @REPO@: .*blocker is not writable",
                 id="repo-cannot-be-created"),
]


@pytest.mark.parametrize(("setup", "error", "regex"), INGEST_REPO_CASES)
def test_ingest_into_bad_repository(setup: Callable[[Path], Path], error: type[Exception],
                                    regex: str, flavour_dir: Path, tmp_path: Path) -> None:
    repo = setup(tmp_path)
    before = tree(tmp_path)
    with pytest.raises(error, match=pattern(regex, repo=repo)):
        ingest(str(flavour_dir / f"uint16_lzw_{FLAVOUR_DATE}.tif"), str(repo), product="multiband")
    assert tree(tmp_path) == before  # the user's file/directory is untouched


def _run_repo_missing(tmp: Path, repo: Path) -> tuple[str, str, Path]:
    return "path: '@REPO@'", f"path: '{tmp / 'nowhere'}'", tmp / "nowhere"


def _run_repo_file(tmp: Path, repo: Path) -> tuple[str, str, Path]:
    return "path: '@REPO@'", f"path: '{_repo_is_file(tmp)}'", tmp / "warehouse"


def _run_repo_not_repo(tmp: Path, repo: Path) -> tuple[str, str, Path]:
    return "path: '@REPO@'", f"path: '{_repo_not_a_repository(tmp)}'", tmp / "warehouse"


def _run_repo_without_catalog(tmp: Path, repo: Path) -> tuple[str, str, Path]:
    open_repository(tmp / "fresh", create=True)  # an Icechunk repository nobody ingested into
    return "path: '@REPO@'", f"path: '{tmp / 'fresh'}'", tmp / "fresh"


def _run_snapshot(tmp: Path, repo: Path) -> tuple[str, str, Path]:
    return "path: '@REPO@'}", "path: '@REPO@', snapshot: release-2024}", repo


def _run_window(tmp: Path, repo: Path) -> tuple[str, str, Path]:
    return "start: 2021-09-01, end: 2025-12-31", "start: 2030-01-01, end: 2030-12-31", repo


def _run_band(tmp: Path, repo: Path) -> tuple[str, str, Path]:
    return "bands: [red, nir]", "bands: [red, nir, swir22]", repo


def _run_cloud_band(tmp: Path, repo: Path) -> tuple[str, str, Path]:
    return "cloud: auto}", "cloud: {band: qa_pixel, bits: [3]}}", repo


def _run_product(tmp: Path, repo: Path) -> tuple[str, str, Path]:
    return "end: 2025-12-31}", "end: 2025-12-31, product: landsat-c2l2}", repo


def _run_scene_ids(tmp: Path, repo: Path) -> tuple[str, str, Path]:
    return "end: 2025-12-31}", "end: 2025-12-31, ids: [S2A_33UXP_20211201_0_L2X]}", repo


RUN_REPO_CASES = [
    # (setup(tmp, sample repo) -> (old, new, repository path), error, regex); @REPO@ = path
    pytest.param(_run_repo_missing, RepositoryError, r"^no repository at @REPO@ \(create one with "
                 r"`pqb ingest", id="run-repo-missing"),
    pytest.param(_run_repo_file, RepositoryError, r"^repository path @REPO@ is a file",
                 id="run-repo-is-a-file"),
    pytest.param(_run_repo_not_repo, RepositoryError, r"^@REPO@ is not a pixelquery repository",
                 id="run-repo-not-a-repository"),
    pytest.param(_run_repo_without_catalog, RepositoryError,
                 r"^@REPO@ has no pixelquery catalog at snapshot \w+ \(ingest COGs",
                 id="run-repo-without-catalog"),
    pytest.param(_run_snapshot, RepositoryError,
                 r"^@REPO@: no branch, tag or snapshot named 'release-2024' \(branches: \['main'\]",
                 id="run-snapshot-not-found"),
    pytest.param(_run_window, SpecError, r"^scenes: no scene between 2030-01-01 and 2030-12-31 at "
                 r"snapshot \w+", id="run-no-scene-in-window"),
    pytest.param(_run_band, SpecError, r"^scene S2A_33UXP_20211201_0_L2A has no band or role "
                 r"'swir22' \(bands: blue, green, red, nir, swir16, scl\)", id="run-band-missing"),
    pytest.param(_run_cloud_band, SpecError, r"^scene S2A_33UXP_20211201_0_L2A has no band or role "
                 r"'qa_pixel' .*masks\.cloud\.band 'qa_pixel' needs it",
                 id="run-cloud-band-missing"),
    pytest.param(_run_product, SpecError, r"^scenes: no scene between 2021-09-01 and 2025-12-31 of "
                 r"product landsat-c2l2", id="run-no-scene-of-product"),
    pytest.param(_run_scene_ids, (SceneNotFoundError, SpecError), r"S2A_33UXP_20211201_0_L2X",
                 id="run-scene-id-not-in-catalog"),
]


@pytest.mark.parametrize(("setup", "error", "regex"), RUN_REPO_CASES)
def test_run_against_bad_repository(setup: Callable[[Path, Path], tuple[str, str, Path]],
                                    error: Any, regex: str, sample_repo: Path,
                                    write_bad: Callable[..., Path], existing: Existing,
                                    tmp_path: Path) -> None:
    old, new, repo = setup(tmp_path, sample_repo)
    spec = write_bad(old, new)
    repo_before = repo_state(sample_repo)
    user_files = tree(repo) if repo.is_dir() else repo.read_bytes() if repo.exists() else None
    with pytest.raises(error, match=pattern(regex, repo=repo)):
        run_job(spec, cluster="sync")
    existing.assert_unchanged()
    assert repo_state(sample_repo) == repo_before
    assert user_files == (tree(repo) if repo.is_dir() else repo.read_bytes() if repo.exists()
                          else None)  # a missing repository is not created by a run


def test_output_dir_that_is_a_file(sample_small, sample_repo: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("quarterly report, keep\n")
    spec = tmp_path / "bad.yaml"
    spec.write_text(spec_text(repo=sample_repo, fields=sample_small.fields_path, out=blocker))
    with pytest.raises(OutputError, match=re.escape(str(blocker))):
        run_job(spec, cluster="sync")
    assert blocker.read_text() == "quarterly report, keep\n"


# ---------------------------------------------------------------- run-time data problems


def _delete(cogs: Path, scene: str) -> Path:
    victim = cogs / scene / "B08.tif"
    victim.unlink()
    return victim


def _replace(cogs: Path, scene: str) -> Path:
    victim = cogs / scene / "B04.tif"
    shutil.copyfile(cogs / scene / "B03.tif", victim)  # another band's pixels under its name
    return victim


def _rewrite(cogs: Path, scene: str) -> Path:
    victim = cogs / scene / "B04.tif"
    victim.write_bytes(victim.read_bytes())  # rewritten in place (same bytes, newer mtime)
    later = victim.stat().st_mtime + 60
    os.utime(victim, (later, later))
    return victim


def _corrupt(cogs: Path, scene: str) -> Path:
    """Bytes of a tile changed in place, size and modification time kept: the reference's
    checksum still matches, so only decoding can tell."""
    victim = cogs / scene / "B04.tif"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0x5A for b in data[mid:mid + 64])
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    return victim


#: What a failing pair says: the file, what went wrong, what to do.
READ_FAILED = r"reading \d+ chunk\(s\) of @VICTIM@ failed: "
RUNTIME_CASES = [
    # (damage(cogs, scene) -> the damaged file, what the error says about it)
    pytest.param(_delete, r"Object at location @VICTIM@ not found", id="run-cog-deleted"),
    # icechunk notices the new modification time, or (same second) reads past the new end
    pytest.param(_replace, r"(Requested range was invalid|the checksum of the object owning the "
                 r"virtual chunk has changed)", id="run-cog-replaced-after-ingest"),
    pytest.param(_rewrite, r"the checksum of the object owning the virtual chunk has changed "
                 r"\(file://@VICTIM@\)", id="run-cog-rewritten-after-ingest"),
]


@pytest.mark.parametrize(("damage", "regex"), RUNTIME_CASES)
def test_broken_cog_fails_its_pairs_and_lands_in_the_ledger(
        damage: Callable[[Path, str], Path], regex: str, archive: dict[str, Any],
        tmp_path: Path) -> None:
    """``on_error: skip``: a partial run; the manifest and the ledger name the file; the
    rows already in the table are kept as they were."""
    scene = archive["scenes"][2]
    victim = damage(archive["cogs"], scene)
    before = outputs_state(archive["out"])
    spec = tmp_path / "all.yaml"
    spec.write_text(spec_text(repo=archive["repo"], fields=archive["fields"], out=archive["out"]))
    result = run_job(spec, cluster="sync")
    rx = pattern(READ_FAILED + ".*" + regex + r".*\(the source file may have changed or vanished "
                 r"since ingest: re-ingest it\)", victim=victim)
    assert not result.ok
    assert result.manifest["execution"]["pairs_failed"] == 40
    assert {f["scene_id"] for f in result.manifest["failures"]} == {scene}
    assert all(re.search(rx, f["error"]) for f in result.manifest["failures"])
    ledger = read_ledger(archive["out"])
    assert len(ledger) == 40 and set(ledger["scene_id"]) == {scene}
    # (the ledger keeps a short message: the file is named, the detail may be cut)
    assert ledger["message"].str.contains(pattern(READ_FAILED, victim=victim)).all()
    assert read_table(archive["out"], "runs").sort_values("started_at")["status"].tolist() == [
        "ok", "partial"]
    # nothing lost: the first scene's rows are as they were; the good scene was added
    stats = read_table(archive["out"], "stats")
    old = stats[stats["scene_id"] == archive["scenes"][0]].sort_values(STATS_KEYS)
    pd.testing.assert_frame_equal(old.reset_index(drop=True), before["stats"])
    assert set(stats["scene_id"]) == {archive["scenes"][0], archive["scenes"][1]}


@pytest.mark.parametrize(("damage", "regex"), RUNTIME_CASES)
def test_broken_cog_with_on_error_fail_stops_and_changes_nothing(
        damage: Callable[[Path, str], Path], regex: str, archive: dict[str, Any],
        tmp_path: Path) -> None:
    scene = archive["scenes"][2]
    victim = damage(archive["cogs"], scene)
    before = outputs_state(archive["out"])
    spec = tmp_path / "all.yaml"
    spec.write_text(edit(spec_text(repo=archive["repo"], fields=archive["fields"],
                                   out=archive["out"]), "on_error: skip", "on_error: fail"))
    with pytest.raises(TaskError, match=rf"failed on field 'F\d+', scene '{scene}': "
                       + pattern(READ_FAILED + ".*" + regex, victim=victim)):
        run_job(spec, cluster="sync")
    assert_outputs_unchanged(archive["out"], before)


# =========================================================================== CLI

PQB = [sys.executable, "-m", "pixelquery_batch.cli"]


def pqb(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*PQB, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


CLI_RUN_CASES = [
    # (old, new, exit code, stderr regex); @FILE@ = the spec, @TMP@ = its directory
    pytest.param("on_error: skip", "on_error: skip\ncolour: blue", 2,
                 r"error: @FILE@:14 colour: unknown key 'colour'", id="cli-spec-unknown-key"),
    pytest.param("start: 2021-09-01", "start: 2021-13-45", 2, r"error: @FILE@:4 scenes\.start: ",
                 id="cli-spec-impossible-calendar-date"),
    pytest.param("repository: {path: '@REPO@'}",
                 "repository: {path: '@REPO@', storage: nowhere-profile}", 2,
                 r"error: storage profile not found: @TMP@/configs/storage/nowhere-profile\.yaml",
                 id="cli-storage-profile-not-found"),
    pytest.param("path: '@FIELDS@'", "path: '@TMP@/parcels.geojson'", 3,
                 r"error: fields file not found: @TMP@/parcels\.geojson", id="cli-fields-missing"),
    pytest.param("path: '@REPO@'", "path: '@TMP@/warehouse'", 4,
                 r"error: no repository at @TMP@/warehouse", id="cli-repo-missing"),
    pytest.param("on_error: skip", "on_error: skip\nresolution: 5", 6,
                 r"error: resolution 5 is finer than the finest band the job uses \(10 in scene "
                 r"S2A_33UXP_20211201_0_L2A\)", id="cli-plan-resolution"),
]


@pytest.mark.parametrize(("old", "new", "code", "regex"), CLI_RUN_CASES)
def test_cli_run_exit_codes(old: str, new: str, code: int, regex: str, sample_small,
                            sample_repo: Path, existing: Existing, tmp_path: Path) -> None:
    subs = {"@REPO@": str(sample_repo), "@FIELDS@": str(sample_small.fields_path),
            "@TMP@": str(tmp_path)}
    for key, value in subs.items():
        old, new = old.replace(key, value), new.replace(key, value)
    spec = tmp_path / "bad.yaml"
    spec.write_text(edit(spec_text(repo=sample_repo, fields=sample_small.fields_path,
                                   out=existing.out), old, new))
    out = pqb("run", str(spec), cwd=tmp_path)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == code, out.stderr
    assert re.search(pattern(regex, file=spec, tmp=tmp_path), out.stderr), out.stderr
    existing.assert_unchanged()


UNCAUGHT = "Traceback (most recent call last)"


@pytest.mark.parametrize(("on_error", "code", "quiet"), [
    pytest.param("fail", 7, False, id="cli-task-failure"),
    pytest.param("fail", 7, True, id="cli-task-failure-without-worker-tracebacks"),
    pytest.param("skip", 1, False, id="cli-partial-run"),
])
def test_cli_run_with_a_deleted_cog(on_error: str, code: int, quiet: bool,
                                    archive: dict[str, Any], tmp_path: Path) -> None:
    scene = archive["scenes"][2]
    victim = _delete(archive["cogs"], scene)
    spec = tmp_path / "all.yaml"
    spec.write_text(edit(spec_text(repo=archive["repo"], fields=archive["fields"],
                                   out=archive["out"]), "on_error: skip", f"on_error: {on_error}"))
    out = pqb("run", str(spec), cwd=tmp_path)
    assert UNCAUGHT not in out.stderr, out.stderr
    assert out.returncode == code, out.stderr
    assert scene in out.stderr and str(victim) in out.stderr, out.stderr
    if quiet:
        assert "Traceback" not in out.stderr, out.stderr


def test_cli_ingest_lists_refused_files(flavour_dir: Path, cog_repo: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _bad_flavour("jpeg_ycbcr")(src)
    before_ids, before_history = repo_state(cog_repo)
    out = pqb("ingest", str(src), "--repo", str(cog_repo), "--product", "multiband", cwd=tmp_path)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 1  # partial: one file refused
    bad = src / "bad_jpeg_ycbcr_2025-05-01.tif"
    assert re.search(rf"failed: file://{re.escape(str(bad))}: unsupported compression: JPEG.*"
                     r"pass --copy-unsupported", out.stdout), out.stdout
    assert "1 ingested" in out.stdout
    ids, hist = repo_state(cog_repo)
    assert sorted(ids) == sorted([*before_ids, GOOD_SCENE]) and hist[1:] == before_history


def test_a_corrupt_chunk_is_reported_naming_the_file_not_read_as_garbage(archive: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    scene = archive["scenes"][2]
    victim = _corrupt(archive["cogs"], scene)
    before = outputs_state(archive["out"])
    spec = tmp_path / "all.yaml"
    spec.write_text(spec_text(repo=archive["repo"], fields=archive["fields"], out=archive["out"]))
    result = run_job(spec, cluster="sync")
    failed = result.manifest["failures"]
    assert failed and {f["scene_id"] for f in failed} == {scene}
    assert all(re.search(pattern(r"chunk \(\d+, \d+\) of @VICTIM@ cannot be decoded", victim=victim),
                         f["error"]) for f in failed)
    # the pairs whose chunks are intact were computed; no row of the corrupt chunk exists
    stats = read_table(archive["out"], "stats")
    bad_fields = {f["field_id"] for f in failed}
    assert not stats[(stats["scene_id"] == scene) & stats["field_id"].isin(bad_fields)].size
    old = stats[stats["scene_id"] == archive["scenes"][0]].sort_values(STATS_KEYS)
    pd.testing.assert_frame_equal(old.reset_index(drop=True), before["stats"])
