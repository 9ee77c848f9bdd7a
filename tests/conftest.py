"""Shared fixtures: flavour COGs, small sample data, ingested repositories."""

from __future__ import annotations

import datetime
import os
import warnings
from pathlib import Path

import pytest
from hypothesis import settings

from pixelquery_batch.catalog.store import clear_caches

settings.register_profile("ci", max_examples=50, deadline=None)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("nightly", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

warnings.filterwarnings("ignore", message="(Numcodecs|Imagecodecs) codecs are not in the Zarr")

#: a date per flavour so the file names carry an acquisition date
FLAVOUR_DATE = "2025-03-15"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: opt in with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_caches():
    """Per-process repository/session caches must not leak between tests."""
    clear_caches()
    yield
    clear_caches()


@pytest.fixture(scope="session")
def flavour_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file per supported flavour, named ``<flavour>_2025-03-15.tif``."""
    from pixelquery_batch.testing.cogs import SUPPORTED_FLAVOURS, make_flavour

    d = tmp_path_factory.mktemp("flavours")
    for name in SUPPORTED_FLAVOURS:
        make_flavour(d / f"{name}_{FLAVOUR_DATE}.tif", name)
    return d


@pytest.fixture(scope="session")
def flavour_repo(flavour_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The flavour files ingested (multiband profile: one file, one scene)."""
    from pixelquery_batch.catalog.ingest import ingest

    repo = tmp_path_factory.mktemp("flavour_repo") / "repo"
    report = ingest(str(flavour_dir), str(repo), product="multiband")
    assert report.ok, report.to_dict()
    return repo


@pytest.fixture(scope="session")
def sample_small(tmp_path_factory: pytest.TempPathFactory):
    """Small deterministic sample in the Element 84 layout: 3 scenes x 6 bands (B02-B08 at
    10 m, 1100 px = 3 x 3 chunks of 512; B11 and SCL at 20 m, 550 px = 3 x 3 chunks of 256),
    40 fields. Dates 2021-12-01, 2022-01-10 (DN = reflectance * 1e4) and 2022-02-19
    (baseline 04.00: DN = reflectance * 1e4 + 1000)."""
    from pixelquery_batch.sample import generate_sample

    return generate_sample(tmp_path_factory.mktemp("sample"), scenes=3, size=1100, fields=40, seed=1,
                           start=datetime.date(2021, 12, 1), interval_days=40)


@pytest.fixture(scope="session")
def sample_repo(sample_small, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small sample ingested (sentinel2-l2a, ``{scene}/{band}.tif``)."""
    from pixelquery_batch.catalog.ingest import ingest

    repo = tmp_path_factory.mktemp("sample_repo") / "warehouse"
    report = ingest(str(sample_small.cog_dir), str(repo), product="sentinel2-l2a",
                    pattern=sample_small.pattern)
    assert report.ok, report.to_dict()
    return repo


def write_spec(directory: Path, *, repo: Path, fields: Path, out: str = "out", **overrides) -> Path:
    """A job spec YAML in ``directory`` (overrides replace top-level keys)."""
    import yaml

    spec = {
        "version": 1,
        "name": "test-job",
        "repository": {"path": str(repo)},
        # Covers the sample's default dates (2021-10 .. 2022-04, both sides of baseline 04.00)
        # and the 2025 dates of the hand-made COG fixtures.
        "scenes": {"start": "2021-09-01", "end": "2025-12-31"},
        "fields": {"path": str(fields), "id": "id"},
        "bands": ["red", "nir"],
        "indices": {"ndvi": "builtin"},
        "stats": ["mean", "std", "min", "max", "median", "p10", "p90", "count", "valid_fraction"],
        "pixels": "centre",
        "masks": {"nodata": True, "cloud": "auto"},
        "outputs": {"dir": str(directory / out), "stats": {"format": "parquet"}},
        # real worker processes in the tests (the embedded default uses threads)
        "cluster": {"n_workers": 2, "threads_per_worker": 1, "processes": True, "memory_limit": "1GiB",
                    "dashboard": False},
        "on_error": "skip",
    }
    spec.update(overrides)
    path = directory / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
