"""COGs and repository on an S3-compatible server (moto, on 127.0.0.1): the same code
paths as local files, with credentials kept out of outputs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio

import pixelquery_batch as pqb
from pixelquery_batch import read_table
from pixelquery_batch.catalog.ingest import ingest

from .conftest import write_spec


@pytest.fixture(scope="module")
def s3(sample_small):
    pytest.importorskip("boto3")
    from pixelquery_batch.testing.s3 import moto_s3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with moto_s3(("cogs", "repos")) as server:
        for path in sample_small.cog_paths:
            rel = path.relative_to(sample_small.cog_dir).as_posix()  # SCENE/B04.tif
            server.client.upload_file(str(path), "cogs", f"s2/{rel}")
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch):
    monkeypatch.setenv("PIXELQUERY_S3_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("PIXELQUERY_S3_ALLOW_HTTP", "true")
    monkeypatch.setenv("PIXELQUERY_S3_ACCESS_KEY_ID", s3.key)
    monkeypatch.setenv("PIXELQUERY_S3_SECRET_ACCESS_KEY", s3.secret)
    return s3


def test_ingest_open_and_run_on_s3(s3_env, sample_small, tmp_path: Path) -> None:
    report = ingest("s3://cogs/s2", "s3://repos/warehouse", product="sentinel2-l2a",
                    pattern="{scene}/{band}.tif")
    assert report.ok
    assert report.counts()["ingested"] == len(sample_small.cog_paths)
    assert ingest("s3://cogs/s2", "s3://repos/warehouse").counts()["unchanged"] == len(sample_small.cog_paths)
    catalog = pqb.open_catalog("s3://repos/warehouse")
    assert len(catalog) == 3
    scene = catalog.scenes()[1]
    assert scene.sources[0].startswith("s3://cogs/s2/")
    ds = pqb.open_scene("s3://repos/warehouse", scene.scene_id, bands=["nir"])
    with rasterio.open(sample_small.cog_dir / scene.scene_id / "B08.tif") as src:
        np.testing.assert_array_equal(ds["nir"].values, src.read(1))
    ds = pqb.open_scene("s3://repos/warehouse", scene.scene_id, bands=["swir16"])  # 20 m band
    with rasterio.open(sample_small.cog_dir / scene.scene_id / "B11.tif") as src:
        np.testing.assert_array_equal(ds["swir16"].values, src.read(1))
    # a job reading the S3 repository gives the same table as on local files
    spec = write_spec(tmp_path, repo="s3://repos/warehouse", fields=sample_small.fields_path, out="s3out")
    on_s3 = pqb.run_job(spec, cluster="sync")
    local_repo = tmp_path / "local"
    assert ingest(str(sample_small.cog_dir), str(local_repo)).ok
    spec = write_spec(tmp_path, repo=local_repo, fields=sample_small.fields_path, out="localout")
    local = pqb.run_job(spec, cluster="sync")

    cols = ["field_id", "scene_id", "variable", "mean", "median", "count", "cloud_count"]
    a = read_table(on_s3.outputs["stats"], None)[cols].sort_values(cols[:3]).reset_index(drop=True)
    b = read_table(local.outputs["stats"], None)[cols].sort_values(cols[:3]).reset_index(drop=True)
    import pandas as pd

    pd.testing.assert_frame_equal(a, b)
    text = Path(on_s3.manifest_path).read_text()
    assert s3_env.secret not in text
