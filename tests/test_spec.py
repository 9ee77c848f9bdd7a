"""Job spec: YAML with line numbers, validation of every key, paths, hashing, reference."""

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path

import numpy as np
import pytest

from pixelquery_batch.errors import SpecError
from pixelquery_batch.spec import (
    DEFAULT_STATS,
    CloudMaskRule,
    JobSpec,
    StatsOutput,
    load_spec,
    parse_spec,
    spec_reference_markdown,
)

JOBS_DIR = Path(__file__).resolve().parents[1] / "jobs"

FULL = """\
version: 1
name: nightly-field-stats
repository: {path: ./warehouse, snapshot: null, storage: null}
scenes: {start: 2025-01-01, end: 2025-12-31, product: null, max_cloud: null, ids: null}
fields: {path: fields.geojson, id: id, layer: null, fix_invalid: false}
bands: []
indices: {ndvi: builtin, ndmi: "(nir - swir1) / (nir + swir1)"}
stats: [mean, std, min, max, median, p10, p25, p75, p90, count, valid_fraction]
pixels: centre
masks: {nodata: true, cloud: {band: scl, exclude: [3, 8, 9, 10]}}
outputs: {dir: ./out/nightly, stats: {format: parquet}}
cluster: {address: null, n_workers: 2, threads_per_worker: 1, memory_limit: 2GiB, dashboard: true}
on_error: skip
"""

MINIMAL = """\
version: 1
name: minimal
repository: {path: s3://bucket/warehouse}
fields: {path: /data/fields.geojson}
bands: [red]
outputs: {dir: out}
"""


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(exc: pytest.ExceptionInfo[SpecError]) -> list[tuple[int, str]]:
    return [(p["line"], p["path"]) for p in exc.value.problems]


def test_full_spec_loads(tmp_path):
    spec = load_spec(write(tmp_path, FULL))
    assert spec.version == 1
    assert spec.name == "nightly-field-stats"
    assert spec.scenes.start == dt.date(2025, 1, 1)
    assert spec.scenes.end == dt.date(2025, 12, 31)
    assert spec.stats[-1] == "valid_fraction"
    assert spec.masks.cloud == CloudMaskRule(band="scl", exclude=(3, 8, 9, 10))
    assert spec.outputs.stats == StatsOutput(format="parquet")
    assert spec.cluster.memory_limit == "2GiB"
    assert spec.source_path == tmp_path / "job.yaml"
    # paths resolved against the spec file's directory
    assert spec.repository.path == str(tmp_path / "warehouse")
    assert spec.fields.path == str(tmp_path / "fields.geojson")
    assert spec.outputs.dir == str(tmp_path / "out" / "nightly")
    variables = spec.variables()
    assert list(variables) == ["ndvi", "ndmi"]
    env = {"nir": np.array([0.5]), "red": np.array([0.1]), "swir1": np.array([0.5])}
    assert variables["ndvi"].evaluate(env)[0] == pytest.approx(0.4 / 0.6)
    assert variables["ndmi"].evaluate(env)[0] == 0.0


def test_defaults_and_relative_dirs(tmp_path):
    sub = tmp_path / "jobs"
    sub.mkdir()
    path = write(sub, MINIMAL.replace("out}", "../results}"))
    spec = load_spec(path)
    assert spec.stats == DEFAULT_STATS
    assert spec.pixels == "centre"
    assert spec.masks.nodata is True
    assert spec.masks.cloud == "auto"
    assert spec.outputs.stats == StatsOutput(format="parquet")
    assert (spec.cluster.n_workers, spec.cluster.threads_per_worker, spec.cluster.processes) == (1, None, "auto")
    assert spec.cluster.address is None
    assert spec.on_error == "skip"
    assert spec.scenes.start is None
    assert spec.fields.id == "id"
    assert spec.repository.path == "s3://bucket/warehouse"  # URLs are kept
    assert spec.fields.path == "/data/fields.geojson"
    assert spec.outputs.dir == str(tmp_path / "results")
    assert list(spec.variables()) == ["red"]
    assert spec.resolve_paths() == spec  # idempotent


def test_parse_spec_base_dir_and_options():
    text = MINIMAL.replace(
        "bands: [red]",
        "bands: [red, nir]\nindices: {ndvi: builtin}\n"
        "scenes: {start: '2025-01-01T10:00:00Z', end: 2025-01-01}\n"
        "masks: {cloud: {band: qa_pixel, bits: [1, 3]}}",
    )
    spec = parse_spec(text, base_dir=Path("/base"))
    assert spec.source_path is None
    assert spec.outputs.dir == "out"
    assert spec.resolve_paths().outputs.dir == "/base/out"
    assert list(spec.variables()) == ["red", "nir", "ndvi"]
    assert spec.scenes.start == dt.datetime(2025, 1, 1, 10, tzinfo=dt.UTC)
    assert spec.masks.cloud == CloudMaskRule(band="qa_pixel", bits=(1, 3))
    skip = parse_spec(MINIMAL.replace("{dir: out}", "{dir: out, stats: null}"))
    assert skip.outputs.stats is None
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_job_hash(tmp_path):
    spec = load_spec(write(tmp_path, FULL))
    assert len(spec.job_hash()) == 16
    int(spec.job_hash(), 16)
    assert load_spec(write(tmp_path, FULL)).job_hash() == spec.job_hash()
    # comments, formatting and spelled-out defaults do not matter
    reformatted = "# a comment\n" + FULL.replace("on_error: skip\n", "")
    assert load_spec(write(tmp_path, reformatted)).job_hash() == spec.job_hash()
    fewer_stats = FULL.replace("p10, p25, ", "")
    assert load_spec(write(tmp_path, fewer_stats)).job_hash() != spec.job_hash()
    other_cluster = FULL.replace("n_workers: 2", "n_workers: 8").replace("address: null", "address: tcp://sched:8786")
    assert load_spec(write(tmp_path, other_cluster)).job_hash() == spec.job_hash()
    moved = tmp_path / "other"
    moved.mkdir()
    assert load_spec(write(moved, FULL)).job_hash() != spec.job_hash()  # other inputs


BAD = """\
version: 1
name: nightly-field-stats
repository: {path: ./warehouse}
scenes:
  start: 2025-06-01
  end: 2025-01-31
fields: {path: fields.geojson}
indices:
  ndvi: builtin
  ndmi: "(nir - swir1) / (nir + swir1"
  evil: "__import__('os').system('rm -rf /')"
stats:
  - mean
  - std
  - p95x
  - p90
pixels: center
outputs: {dir: ./out}
colour: blue
"""


def test_all_errors_reported_at_once(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, BAD))
    lines = str(info.value).splitlines()
    file = str(tmp_path / "job.yaml")
    assert lines == [
        f"{file}:6 scenes.end: end 2025-01-31 is before start 2025-06-01",
        f"{file}:10 indices.ndmi: invalid syntax in '(nir - swir1) / (nir + swir1': "
        "'(' was never closed (column 17)",
        f"{file}:11 indices.evil: \"__import__('os').system('rm -rf /')\" is not allowed: "
        "function calls other than where, clip, abs, sqrt, log, log10, exp, minimum, maximum "
        "(column 1)",
        f"{file}:15 stats[2]: unknown statistic 'p95x' (expected one of mean, std, min, max, "
        "median, sum, p1..p99, count, valid_fraction)",
        f"{file}:17 pixels: invalid value 'center' (expected one of 'centre', 'all_touched', "
        "'coverage')",
        f"{file}:19 colour: unknown key 'colour' (expected one of version, name, repository, "
        "scenes, fields, points, bands, indices, stats, pixels, masks, resolution, outputs, cluster, "
            "on_error)",
    ]
    assert problems_of(info) == [
        (6, "scenes.end"), (10, "indices.ndmi"), (11, "indices.evil"),
        (15, "stats[2]"), (17, "pixels"), (19, "colour"),
    ]
    assert info.value.problems[3] == {
        "file": file, "line": 15, "path": "stats[2]",
        "message": "unknown statistic 'p95x' (expected one of mean, std, min, max, median, "
        "sum, p1..p99, count, valid_fraction)",
    }
    assert info.value.file == file


def test_file_name_as_given_and_nested_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = FULL.replace("exclude: [3, 8, 9, 10]", "exclude: [3, x], colour: 1").replace(
        "n_workers: 2", "n_workers: 0"
    ).replace("memory_limit: 2GiB", "memory_limit: lots")
    write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec("job.yaml")
    assert str(info.value).splitlines() == [
        "job.yaml:10 masks.cloud.exclude[1]: expected an integer, got 'x'",
        "job.yaml:10 masks.cloud.colour: unknown key 'colour' (expected one of band, exclude, "
        "bits)",
        "job.yaml:12 cluster.n_workers: must be >= 1 (got 0)",
        "job.yaml:12 cluster.memory_limit: invalid memory size 'lots' (expected e.g. 2GiB, "
        "500MB or auto)",
    ]


@pytest.mark.parametrize(
    ("change", "line", "path", "message"),
    [
        (("version: 1", "version: 2"), 1, "version", "unsupported spec version 2"),
        (("name: minimal", "name: has spaces"), 2, "name", "invalid job name"),
        (("name: minimal\n", ""), 1, "name", "missing required key 'name'"),
        (("bands: [red]", "bands: []"), 5, "indices", "nothing to compute"),
        (("bands: [red]", "bands: [red, red]"), 5, "bands[1]", "duplicate band 'red'"),
        (("bands: [red]", "bands: [red]\nindices: {red: builtin}"), 6, "indices.red",
         "name of a band"),
        (("bands: [red]", "bands: [red]\nindices: {foo: builtin}"), 6, "indices.foo",
         "no builtin index 'foo'"),
        (("bands: [red]", "bands: [red]\nstats: [mean, mean]"), 6, "stats[1]",
         "duplicate statistic 'mean'"),
        (("bands: [red]", "bands: [red]\nstats: [p0]"), 6, "stats[0]", "out of range"),
        (("bands: [red]", "bands: [red]\nstats: []"), 6, "stats", "no statistics"),
        (("bands: [red]", "bands: [red]\nscenes: {max_cloud: 101}"), 6, "scenes.max_cloud",
         "must be <= 100"),
        (("bands: [red]", "bands: [red]\nscenes: {start: tomorrow}"), 6, "scenes.start",
         "expected a date"),
        (("bands: [red]", "bands: [red]\nmasks: {cloud: sometimes}"), 6, "masks.cloud",
         "invalid value 'sometimes' (expected one of 'auto')"),
        (("bands: [red]", "bands: [red]\nmasks: {cloud: 5}"), 6, "masks.cloud",
         "expected null, 'auto' or a mapping"),
        (("bands: [red]", "bands: [red]\nmasks: {cloud: {band: qa, bits: [64]}}"), 6,
         "masks.cloud.bits[0]", "must be <= 63"),
        (("bands: [red]", "bands: [red]\nmasks: {cloud: {band: scl}}"), 6, "masks.cloud",
         "exactly one of 'exclude'"),
        (("bands: [red]", "bands: [red]\non_error: retry"), 6, "on_error",
         "expected one of 'skip', 'fail'"),
        (("bands: [red]", "bands: [red]\ncluster: {address: 'not an address'}"), 6,
         "cluster.address", "invalid scheduler address"),
        (("{dir: out}", "{dir: out, stats: {format: xlsx}}"), 6, "outputs.stats.format",
         "expected one of 'parquet', 'geoparquet', 'csv'"),
        (("{dir: out}", "5"), 6, "outputs", "expected a mapping, got 5"),
        (("repository: {path: s3://bucket/warehouse}", "repository: {path: x, snapshots: y}"),
         3, "repository.snapshots", "did you mean 'snapshot'?"),
    ],
)
def test_single_errors(change, line, path, message):
    old, new = change
    assert old in MINIMAL
    with pytest.raises(SpecError) as info:
        parse_spec(MINIMAL.replace(old, new), source="job.yaml")
    problem = info.value.problems[0]
    assert (problem["line"], problem["path"]) == (line, path), str(info.value)
    assert message in problem["message"]
    assert str(info.value).startswith(f"job.yaml:{line} {path}: ")


def test_duplicate_keys(tmp_path):
    text = MINIMAL + "cluster:\n  n_workers: 2\n  n_workers: 3\nname: again\n"
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    assert problems_of(info) == [(9, "cluster.n_workers"), (10, "name")]
    assert info.value.problems[0]["message"] == "duplicate key 'n_workers' (first defined at line 8)"
    assert info.value.problems[1]["message"] == "duplicate key 'name' (first defined at line 2)"


def test_yaml_syntax_error_has_line():
    text = MINIMAL + "indices: {ndvi: builtin\nstats: [mean]\n"
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="job.yaml")
    assert info.value.problems[0]["line"] >= 7
    assert str(info.value).startswith(f"job.yaml:{info.value.problems[0]['line']}: invalid YAML")
    with pytest.raises(SpecError, match=r"^job\.yaml:3: invalid YAML: .*tag"):
        parse_spec("version: 1\nname: x\nrepository: !!python/object/apply:os.system [ls]\n",
                   source="job.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "job.yaml:1: the job spec is empty"),
        ("# only a comment\n", "job.yaml:1: the job spec is empty"),
        ("- version: 1\n", "job.yaml:1: a job spec must be a mapping of keys, got a list"),
        ("just text\n", "job.yaml:1: a job spec must be a mapping of keys, got 'just text'"),
    ],
)
def test_empty_or_not_a_mapping(text, message):
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="job.yaml")
    assert str(info.value).startswith(message)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=r"nope\.yaml not found") as info:
        load_spec(missing)
    assert info.value.file == str(missing)
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)


def test_reference_mentions_every_key():
    ref = spec_reference_markdown()
    for key in JobSpec.model_fields:
        assert f"`{key}`" in ref
    for key in ("repository.snapshot", "masks.cloud.bits", "outputs.stats.format",
                "cluster.memory_limit", "scenes.max_cloud"):
        assert f"`{key}`" in ref
    assert "required" in ref


@pytest.mark.parametrize("name", ["nightly-field-stats.yaml", "moisture-custom-index.yaml"])
def test_example_jobs_load(name):
    spec = load_spec(JOBS_DIR / name)
    assert spec.name == name.removesuffix(".yaml")
    assert Path(spec.repository.path).is_absolute()
    assert spec.variables()
    if name == "nightly-field-stats.yaml":
        assert list(spec.variables()) == ["red", "nir", "ndvi", "evi", "ndmi"]
        assert spec.masks.cloud == "auto"
        assert spec.stats == ("mean", "std", "min", "max", "median", "p10", "p90", "count",
                              "valid_fraction")
        assert spec.repository.path == str(JOBS_DIR.parent / "demo" / "warehouse")


def test_committed_reference_doc_is_current():
    """docs/job-spec.md is generated: regenerate it with
    `python -c "from pixelquery_batch.spec import spec_reference_markdown as r; open('docs/job-spec.md','w').write(r())"`."""
    from pathlib import Path

    from pixelquery_batch.spec import spec_reference_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "job-spec.md"
    assert doc.read_text() == spec_reference_markdown()
