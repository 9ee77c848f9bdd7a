"""A real separate cluster and object storage, end to end.

``dask scheduler`` and two ``dask worker`` processes run inside a private mount namespace
where the client's temporary directories (pytest's base temp: outputs, sample, everything
the tests write) are covered by empty tmpfs mounts, so nothing a worker writes to a client
path can reach the client. COGs and the repository are on moto's S3 server (signatures
enforced: only the generated key pair works), behind a loopback proxy that counts requests
and can inject faults. The workers' environment holds no credentials: they come from the job.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml

from pixelquery_batch import read_table, run_job
from pixelquery_batch.catalog.ingest import ingest
from pixelquery_batch.config import load_storage_profile
from pixelquery_batch.errors import TaskError
from pixelquery_batch.storage import Location
from pixelquery_batch.testing.cluster import can_hide_paths, separate_cluster

from .conftest import write_spec

pytestmark = pytest.mark.skipif(can_hide_paths() is not None,
                                reason=f"separate-cluster isolation unavailable: {can_hide_paths()}")

TABLES = {  # output -> sort key
    "stats": ["field_id", "scene_id", "variable"],
    "timeseries": ["field_id", "variable", "period_start"],
    "points": ["point_id", "scene_id", "variable"],
    "rollup": ["region_id", "variable", "period_start"],
}


@dataclasses.dataclass
class World:
    endpoint: str  # the proxy's
    secret: str
    proxy: object
    profile_path: Path
    points_path: Path
    cluster: object
    tmp: Path
    server: object


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + " " + repr(record.__dict__))


@pytest.fixture(scope="module")
def world(sample_small, tmp_path_factory):
    pytest.importorskip("boto3")
    import geopandas as gpd

    from pixelquery_batch.testing.proxy import FaultPlan, s3_proxy
    from pixelquery_batch.testing.s3 import moto_s3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    tmp = tmp_path_factory.mktemp("cluster_s3")
    base = tmp_path_factory.getbasetemp()
    with moto_s3(("cl-cogs", "cl-repos", "cl-outs")) as server, \
            s3_proxy(server.endpoint, FaultPlan()) as proxy, \
            pytest.MonkeyPatch.context() as mp:
        for path in sample_small.cog_paths:
            rel = path.relative_to(sample_small.cog_dir).as_posix()
            server.client.upload_file(str(path), "cl-cogs", f"s2/{rel}")
        # endpoint etc. in a storage profile; the key pair from the standard AWS variables
        # of the client process only
        profile_path = tmp / "moto.yaml"
        profile_path.write_text(yaml.safe_dump(
            {"s3": {"endpoint_url": proxy.endpoint, "allow_http": True, "region": "us-east-1"}}))
        for var in ("PIXELQUERY_S3_ACCESS_KEY_ID", "PIXELQUERY_S3_SECRET_ACCESS_KEY",
                    "PIXELQUERY_S3_ENDPOINT_URL", "AWS_SESSION_TOKEN", "DASK_SCHEDULER_ADDRESS"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", server.key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", server.secret)
        profile = load_storage_profile(str(profile_path))
        report = ingest("s3://cl-cogs/s2", "s3://cl-repos/warehouse", product="sentinel2-l2a",
                        pattern=sample_small.pattern, storage=profile)
        assert report.ok, report.to_dict()
        fields = gpd.read_file(sample_small.fields_path)
        points_path = tmp / "points.geojson"
        gpd.GeoDataFrame({"id": ["A", "B", "C"]},
                         geometry=[fields.geometry.iloc[i].representative_point() for i in (0, 7, 15)],
                         crs=fields.crs).to_file(points_path)
        with separate_cluster(workers=2, hide=[base], log_path=tmp.parent / "cluster-logs" / "cluster.log",
                              memory_limit="1GiB") as cluster:
            yield World(proxy.endpoint, server.secret, proxy, profile_path, points_path, cluster,
                        tmp, server)


def full_spec(world: World, sample_small, directory: Path, out: str, **extra) -> Path:
    """The sample job with every output kind the engine has: stats, time series, points,
    a pixel rollup and composites."""
    directory.mkdir(parents=True, exist_ok=True)
    outputs = {"dir": out, "stats": {"format": "parquet"},
               "timeseries": {"period": "month", "aggregation": "mean"},
               "rollup": {"regions": {"path": str(sample_small.regions_path)}, "period": "month",
                          "kinds": ["pixel"], "stats": ["mean", "std", "count", "median"],
                          "composite": {"crs": "EPSG:3035", "resolution": 40, "method": "median"}}}
    return write_spec(directory, repo="s3://cl-repos/warehouse", fields=sample_small.fields_path,
                      repository={"path": "s3://cl-repos/warehouse", "storage": str(world.profile_path)},
                      points={"path": str(world.points_path), "id": "id"},
                      outputs=outputs, **extra)


def read_outputs(result) -> dict[str, object]:
    """Every table (sorted) and every composite's pixels, read through the output layer."""
    out = {}
    manifest_loc = result.manifest_path.rsplit("/", 1)[0]
    profile = load_storage_profile(result.manifest["job"]["spec"]["repository"]["storage"]).resolved()
    loc = Location.of(manifest_loc, profile)
    for name, key in TABLES.items():
        df = read_table(manifest_loc, name, storage=profile)  # Delta (stats) or Parquet
        df = df.drop(columns=[c for c in ("job_hash", "run_id") if c in df.columns])
        out[name] = df.sort_values(key).reset_index(drop=True)
    for key in loc.list("composites"):
        with rasterio.MemoryFile(loc.get(key)) as mem, mem.open() as src:
            out[key] = (src.read(1), src.transform, src.crs.to_wkt())
    return out


def assert_same_outputs(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    assert any(k.startswith("composites/") for k in a)
    for key, value in a.items():
        if isinstance(value, pd.DataFrame):
            assert len(value) > 0, key
            pd.testing.assert_frame_equal(value, b[key], check_exact=True, obj=key)
        else:
            np.testing.assert_array_equal(value[0], b[key][0])
            assert value[1:] == b[key][1:]


@pytest.fixture(scope="module")
def reference(world, sample_small):
    """The same job on a LocalCluster of this host (worker processes), outputs local."""
    d = world.tmp / "reference"
    spec = full_spec(world, sample_small, d, str(d / "out"))
    result = run_job(spec)
    assert result.ok, result.manifest["failures"][:3]
    assert result.manifest["output"]["written_by"] == "workers"
    return read_outputs(result)


def test_local_outputs_with_workers_that_share_no_disk(world, sample_small, reference) -> None:
    d = world.tmp / "local-out"
    spec = full_spec(world, sample_small, d, str(d / "out"))
    result = run_job(spec, cluster=world.cluster.address)
    assert result.ok, result.manifest["failures"][:3]
    # the workers cannot see the client's directory: their files came back to the client
    assert result.manifest["output"]["written_by"] == "client"
    assert_same_outputs(read_outputs(result), reference)
    assert (d / "out" / "composites").is_dir() and any((d / "out" / "composites").iterdir())
    assert not [p for p in (d / "out").iterdir() if p.name.startswith(".staging")]


def test_everything_on_s3_with_a_separate_cluster(world, sample_small, reference) -> None:
    d = world.tmp / "s3-out"
    spec = full_spec(world, sample_small, d, "s3://cl-outs/nightly")
    result = run_job(spec, cluster=world.cluster.address)
    assert result.ok, result.manifest["failures"][:3]
    assert result.manifest["output"] == {"location": "s3://cl-outs/nightly", "written_by": "workers"}
    assert result.manifest_path == "s3://cl-outs/nightly/manifest.json"
    assert_same_outputs(read_outputs(result), reference)
    keys = [o["Key"] for o in world.server.client.list_objects_v2(Bucket="cl-outs")["Contents"]]
    assert not [k for k in keys if "/.staging" in k or "/.probe" in k], keys
    assert not (d / "s3:").exists()


def test_transient_faults_are_retried_and_counted(world, sample_small, reference) -> None:
    from pixelquery_batch.testing.proxy import FaultPlan

    d = world.tmp / "faults"
    spec = full_spec(world, sample_small, d, "s3://cl-outs/faulty")
    # random faults on every request (Icechunk's reads, chunk reads, output writes), and
    # for sure on the first output writes and listings of the run
    world.proxy.faults = FaultPlan(rate=0.08, kinds=("503", "reset", "delay"), delay_s=0.2, seed=7,
                                   first=4, first_applies=lambda m, p: p.startswith("/cl-outs/faulty"))
    world.proxy.clear()
    try:
        result = run_job(spec, cluster=world.cluster.address)
    finally:
        world.proxy.faults = FaultPlan()
    injected = [r for r in world.proxy.requests if r.fault in ("503", "reset")]
    assert len(injected) >= 5, "the proxy injected too few faults for the test to mean anything"
    assert result.ok, result.manifest["failures"][:3]
    assert_same_outputs(read_outputs(result), reference)
    storage = result.manifest["storage"]
    assert storage["retries"] >= 4 and storage["failures"] == 0, (storage, [(r.method, r.path, r.fault) for r in injected])
    assert storage["processes"] == 3  # the client and both workers reported


def test_permanent_errors_fail_fast_naming_the_object(world, sample_small) -> None:
    from pixelquery_batch.config import S3Options, StorageProfile
    from pixelquery_batch.errors import StorageError

    bad = StorageProfile(s3=S3Options(endpoint_url=world.endpoint, allow_http=True,
                                      access_key_id=world.server.key, secret_access_key="wrong-secret",
                                      from_environment=False))
    loc = Location.of("s3://cl-outs/denied", bad)
    with pytest.raises(StorageError, match=r"s3://cl-outs/denied/x\.bin: access denied \(SignatureDoesNotMatch"):
        loc.put("x.bin", b"1")
    good = Location.of("s3://cl-outs/denied", load_storage_profile(str(world.profile_path)).resolved())
    with pytest.raises(FileNotFoundError, match="s3://cl-outs/denied/missing"):
        good.get("missing")


def test_request_economy_no_header_reads_one_range_per_chunk(world, sample_small) -> None:
    d = world.tmp / "economy"
    d.mkdir(parents=True, exist_ok=True)
    spec = write_spec(d, repo="s3://cl-repos/warehouse", fields=sample_small.fields_path,
                      repository={"path": "s3://cl-repos/warehouse", "storage": str(world.profile_path)},
                      outputs={"dir": "s3://cl-outs/economy", "stats": {"format": "parquet"}})
    world.proxy.clear()
    result = run_job(spec, cluster=world.cluster.address)
    assert result.ok
    gets = world.proxy.matching("/cl-cogs/")
    planned = result.manifest["plan"]["chunks_read"]
    assert gets, "no COG reads went through the server"
    assert all(r.range and r.range.startswith("bytes=") for r in gets), gets[:3]
    # no TIFF header read: every range starts past the header, at a tile offset
    assert not [r for r in gets if r.range.startswith("bytes=0-")], gets[:3]
    assert not world.proxy.matching("/cl-cogs/", "HEAD")
    # at most one request per needed chunk (each chunk fetched once)
    assert len(gets) <= planned, (len(gets), planned)
    assert len({(r.path, r.range) for r in gets}) == len(gets)
    assert len(gets) == result.manifest["execution"]["chunks_read"]


def test_workers_get_credentials_from_the_job_and_secrets_never_leak(world, sample_small, caplog) -> None:
    """A run with a failing unit (a COG deleted after ingest: the worker records a
    traceback) and a good run; the secret appears in no log line and no output."""
    client = world.server.client
    first_scene = sample_small.cog_paths[0].parent
    scene_files = [p for p in sample_small.cog_paths if p.parent == first_scene]
    for path in scene_files:  # one scene, copied under another prefix
        rel = path.relative_to(sample_small.cog_dir).as_posix()
        client.upload_file(str(path), "cl-cogs", f"broken/{rel}")
    profile = load_storage_profile(str(world.profile_path))
    assert ingest("s3://cl-cogs/broken", "s3://cl-repos/broken", product="sentinel2-l2a",
                  pattern=sample_small.pattern, storage=profile).ok
    victim = f"broken/{first_scene.name}/B04.tif"  # the red band the job reads
    client.delete_object(Bucket="cl-cogs", Key=victim)
    lines = _Lines()
    root = logging.getLogger()
    root.addHandler(lines)
    old = root.level
    root.setLevel(logging.DEBUG)
    try:
        d = world.tmp / "secrets"
        d.mkdir(parents=True, exist_ok=True)
        spec = write_spec(d, repo="s3://cl-repos/broken", fields=sample_small.fields_path,
                          repository={"path": "s3://cl-repos/broken", "storage": str(world.profile_path)},
                          outputs={"dir": str(d / "out"), "stats": {"format": "parquet"}})
        failed = run_job(spec, cluster=world.cluster.address)
        strict = write_spec(d, repo="s3://cl-repos/broken", fields=sample_small.fields_path,
                            name="strict", on_error="fail",
                            repository={"path": "s3://cl-repos/broken", "storage": str(world.profile_path)},
                            outputs={"dir": str(d / "strict"), "stats": {"format": "parquet"}})
        with pytest.raises(TaskError, match=r"B04\.tif") as raised:  # raised in a worker
            run_job(strict, cluster=world.cluster.address)
        good = full_spec(world, sample_small, d / "good", "s3://cl-outs/secrets-good")
        ok = run_job(good, cluster=world.cluster.address)
    finally:
        root.removeHandler(lines)
        root.setLevel(old)
    assert failed.manifest["failures"], "the deleted COG should fail its units"
    assert "Traceback" in Path(failed.manifest["failure_log"]).read_text()
    assert ok.ok
    secret = world.secret
    import traceback

    assert "B04.tif" in str(raised.value)
    texts = {"client log": "\n".join(lines.lines) + caplog.text,
             "strict traceback": "".join(traceback.format_exception(raised.value)),
             "cluster log": world.cluster.logs()}
    for path in (d / "out").rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    for key in Location.of("s3://cl-outs/secrets-good", profile.resolved()).list():
        texts[key] = Location.of("s3://cl-outs/secrets-good", profile.resolved()).get(key).decode("latin-1")
    assert len(texts) > 5
    assert "Traceback" in texts[failed.manifest["failure_log"]]
    leaked = [name for name, text in texts.items() if secret in text]
    assert not leaked
    # nor in the repository the runs read
    for obj in client.list_objects_v2(Bucket="cl-repos").get("Contents", []):
        body = client.get_object(Bucket="cl-repos", Key=obj["Key"])["Body"].read()
        assert secret.encode() not in body, obj["Key"]
