"""Ingest: grouping by pattern, dedup, changed files, bad input, concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pixelquery_batch.catalog.ingest import ingest
from pixelquery_batch.catalog.reader import open_scene
from pixelquery_batch.catalog.store import clear_caches, resolve_snapshot
from pixelquery_batch.errors import ConfigError, InputDataError, RepositoryError, SpecError
from pixelquery_batch.testing.cogs import make_cog, read_with_rasterio

BANDS = ("blue", "green", "red", "nir", "scl")


def make_s2_scene(d: Path, date: str, *, tile: str = "33UXP", shape=(256, 300), seed=0,
                  bands=BANDS, origin=(600000.0, 5300000.0), crs="EPSG:32633") -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i, band in enumerate(bands):
        out.append(make_cog(d / f"S2_{tile}_{date}_{band}.tif", shape_yx=shape, predictor=2,
                            seed=seed * 10 + i, origin_xy=origin, crs=crs))
    return out


def test_band_files_grouped_into_scenes(tmp_path: Path) -> None:
    make_s2_scene(tmp_path / "cogs", "2025-03-15")
    make_s2_scene(tmp_path / "cogs", "2025-04-01", seed=1)
    report = ingest(str(tmp_path / "cogs"), str(tmp_path / "repo"), product="sentinel2-l2a")
    assert report.ok and report.counts()["ingested"] == 10
    cat = resolve_snapshot(tmp_path / "repo").catalog()
    assert cat.ids == ["S2_33UXP_2025-03-15", "S2_33UXP_2025-04-01"]
    scene = cat.get("S2_33UXP_2025-03-15")
    assert scene.band_names == ("blue", "green", "nir", "red", "scl")
    assert scene.band("red").role == "red" and scene.band("nir").scale == pytest.approx(1e-4)
    assert scene.band("nir").offset == pytest.approx(-0.1)
    assert dict(scene.properties) == {"tile": "33UXP"}
    assert scene.datetime.isoformat() == "2025-03-15T00:00:00+00:00"
    ds = open_scene(tmp_path / "repo", "S2_33UXP_2025-04-01", bands=["nir", "red"])
    assert list(ds.data_vars) == ["nir", "red"]
    expected, _ = read_with_rasterio(tmp_path / "cogs" / "S2_33UXP_2025-04-01_nir.tif")
    np.testing.assert_array_equal(ds["nir"].values, expected[0])
    # roles work as band selectors too
    assert list(open_scene(tmp_path / "repo", "S2_33UXP_2025-04-01", bands=["classification"]).data_vars) == ["scl"]


def test_explicit_pattern_with_strptime_format(tmp_path: Path) -> None:
    src = tmp_path / "cogs"
    src.mkdir()
    for band in ("B04", "B08"):
        make_cog(src / f"T33UXP_20250315T101031_{band}.tif", shape_yx=(64, 64))
    report = ingest(str(src), str(tmp_path / "repo"),
                    pattern="T{tile}_{datetime:%Y%m%dT%H%M%S}_{band}.tif")
    assert report.ok
    scene = resolve_snapshot(tmp_path / "repo").catalog().get("T33UXP_20250315T101031")
    assert scene.datetime.isoformat() == "2025-03-15T10:10:31+00:00"
    assert scene.band_names == ("red", "nir")  # aliases B04/B08 from the profile


def test_reingest_skips_unchanged_and_detects_changes(tmp_path: Path) -> None:
    files = make_s2_scene(tmp_path / "cogs", "2025-03-15")
    repo = tmp_path / "repo"
    first = ingest(str(tmp_path / "cogs"), str(repo))
    again = ingest(str(tmp_path / "cogs"), str(repo))
    assert again.counts()["unchanged"] == 5 and again.snapshot_id is None
    # rewrite one band with other pixels: the scene is re-ingested and reads the new pixels
    time.sleep(0.01)
    make_cog(files[2], shape_yx=(256, 300), predictor=2, seed=99, origin_xy=(600000.0, 5300000.0))
    clear_caches()
    changed = ingest(str(tmp_path / "cogs"), str(repo))
    assert changed.counts() == {"ingested": 0, "updated": 5, "unchanged": 0, "skipped": 0, "failed": 0}
    assert changed.snapshot_id not in (None, first.snapshot_id)
    expected, _ = read_with_rasterio(files[2])
    np.testing.assert_array_equal(open_scene(repo, "S2_33UXP_2025-03-15", bands=["red"])["red"].values,
                                  expected[0])
    # a new date next to the old ones: only it is ingested
    make_s2_scene(tmp_path / "cogs", "2025-05-01", seed=3)
    third = ingest(str(tmp_path / "cogs"), str(repo))
    assert third.counts()["ingested"] == 5 and third.counts()["unchanged"] == 5


def test_adding_a_band_later_keeps_the_earlier_bands(tmp_path: Path) -> None:
    make_s2_scene(tmp_path / "a", "2025-03-15", bands=("red", "nir"))
    ingest(str(tmp_path / "a"), str(tmp_path / "repo"))
    make_s2_scene(tmp_path / "b", "2025-03-15", bands=("scl",))
    report = ingest(str(tmp_path / "b"), str(tmp_path / "repo"))
    assert report.ok
    scene = resolve_snapshot(tmp_path / "repo").catalog().get("S2_33UXP_2025-03-15")
    assert scene.band_names == ("nir", "red", "scl")


def test_snapshot_consistency(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_s2_scene(tmp_path / "c1", "2025-03-15")
    s1 = ingest(str(tmp_path / "c1"), str(repo)).snapshot_id
    make_s2_scene(tmp_path / "c2", "2025-06-01")
    s2 = ingest(str(tmp_path / "c2"), str(repo)).snapshot_id
    assert resolve_snapshot(repo, s1).catalog().ids == ["S2_33UXP_2025-03-15"]
    assert resolve_snapshot(repo, s2).catalog().ids == ["S2_33UXP_2025-03-15", "S2_33UXP_2025-06-01"]
    assert resolve_snapshot(repo).snapshot_id == s2
    # open_scene at the old snapshot does not see the new scene
    from pixelquery_batch.errors import SceneNotFoundError

    with pytest.raises(SceneNotFoundError, match="S2_33UXP_2025-06-01"):
        open_scene(repo, "S2_33UXP_2025-06-01", snapshot=s1)


def test_files_of_one_scene_on_different_grids_fail(tmp_path: Path) -> None:
    src = tmp_path / "cogs"
    make_s2_scene(src, "2025-03-15", bands=("red",))
    make_s2_scene(src, "2025-03-15", bands=("nir",), origin=(600010.0, 5300000.0))
    make_s2_scene(src, "2025-04-15", bands=("red", "nir"))
    report = ingest(str(src), str(tmp_path / "repo"))
    failed = report.by_status("failed")
    assert {Path(f.url).name for f in failed} == {"S2_33UXP_2025-03-15_red.tif", "S2_33UXP_2025-03-15_nir.tif"}
    for f in failed:  # the message names both files and both grids
        assert "do not align" in (f.reason or "")
        assert "S2_33UXP_2025-03-15_red.tif" in f.reason and "S2_33UXP_2025-03-15_nir.tif" in f.reason
        assert "at (600010, 5300000)" in f.reason and "at (600000, 5300000)" in f.reason
    assert report.counts()["ingested"] == 2


def test_missing_date_is_an_error_for_that_file(tmp_path: Path) -> None:
    src = tmp_path / "cogs"
    src.mkdir()
    make_cog(src / "ortho_block7.tif", count=3, dtype="uint8", nodata=None, interleave="pixel")
    make_cog(src / "ortho_2025-06-01.tif", count=3, dtype="uint8", nodata=None, interleave="pixel")
    report = ingest(str(src), str(tmp_path / "repo"), product="multiband", bands=["red", "green", "blue"])
    assert [Path(f.url).name for f in report.by_status("failed")] == ["ortho_block7.tif"]
    assert "no acquisition date" in report.by_status("failed")[0].reason
    scene = resolve_snapshot(tmp_path / "repo").catalog().get("ortho_2025-06-01")
    assert scene.band_names == ("red", "green", "blue") and scene.band("red").role == "red"
    # --datetime gives undated files a time
    report = ingest(str(src), str(tmp_path / "repo"), product="multiband",
                    datetime=__import__("datetime").datetime(2025, 7, 1))
    assert report.ok and report.counts()["ingested"] == 1


@pytest.mark.parametrize(
    ("setup", "error", "match"),
    [
        ("missing", InputDataError, "source not found"),
        ("empty", InputDataError, "no .tif"),
        ("pattern", SpecError, "matches none"),
        ("product", ConfigError, "unknown product profile 'nope'"),
        ("notrepo", RepositoryError, "not a pixelquery repository"),
        ("repo_is_file", RepositoryError, "is a file"),
        ("unwritable", RepositoryError, "cannot create repository|not writable|is a file"),
    ],
)
def test_bad_input_errors(tmp_path: Path, setup: str, error: type, match: str) -> None:
    src = tmp_path / "cogs"
    make_s2_scene(src, "2025-03-15", bands=("red",))
    repo = tmp_path / "repo"
    kwargs: dict = {}
    source = str(src)
    if setup == "missing":
        source = str(tmp_path / "nowhere")
    elif setup == "empty":
        (tmp_path / "empty").mkdir()
        source = str(tmp_path / "empty")
    elif setup == "pattern":
        kwargs["pattern"] = "L8_{date}_{band}.tif"
    elif setup == "product":
        kwargs["product"] = "nope"
    elif setup == "notrepo":
        repo.mkdir()
        (repo / "notes.txt").write_text("hello")
    elif setup == "repo_is_file":
        repo.write_text("x")
    elif setup == "unwritable":
        (tmp_path / "blocker").write_text("a file where a directory should be")
        repo = tmp_path / "blocker" / "repo"
    with pytest.raises(error, match=match):
        ingest(source, str(repo), **kwargs)


def test_failed_ingest_loses_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_s2_scene(tmp_path / "good", "2025-03-15")
    snap = ingest(str(tmp_path / "good"), str(repo)).snapshot_id
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "S2_33UXP_2025-05-01_red.tif").write_bytes(b"II*\x00garbage")
    report = ingest(str(bad), str(repo))
    assert not report.ok and report.snapshot_id is None
    ref = resolve_snapshot(repo)
    assert ref.snapshot_id == snap and ref.catalog().ids == ["S2_33UXP_2025-03-15"]
    assert open_scene(repo, "S2_33UXP_2025-03-15")["red"].values.shape == (256, 300)


def test_list_file_and_glob_sources(tmp_path: Path) -> None:
    files = make_s2_scene(tmp_path / "cogs", "2025-03-15")
    listing = tmp_path / "files.txt"
    listing.write_text("# two bands\n" + "\n".join(str(f) for f in files[2:4]) + "\n")
    report = ingest(str(listing), str(tmp_path / "r1"))
    assert report.ok and report.counts()["ingested"] == 2
    report = ingest(str(tmp_path / "cogs" / "*_red.tif"), str(tmp_path / "r2"))
    assert report.ok and [Path(f.url).name for f in report.files] == ["S2_33UXP_2025-03-15_red.tif"]
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text(f"{files[0]}\n/nonexistent/x.tif\n")
    with pytest.raises(InputDataError, match=r"bad.txt:2"):
        ingest(str(bad_list), str(tmp_path / "r3"))


_CONCURRENT = """
import sys
from pixelquery_batch.catalog.ingest import ingest
r = ingest(sys.argv[1], sys.argv[2])
assert r.ok, r.to_dict()
print(r.snapshot_id)
"""


def test_concurrent_ingests_do_not_lose_commits(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    dirs = []
    for k in range(4):
        make_s2_scene(tmp_path / f"c{k}", f"2025-0{k + 3}-01", seed=k)
        dirs.append(tmp_path / f"c{k}")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT, str(d), str(repo)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
             for d in dirs]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    cat = resolve_snapshot(repo).catalog()
    assert cat.ids == [f"S2_33UXP_2025-0{k + 3}-01" for k in range(4)]
    from pixelquery_batch.api import history

    assert len(history(repo)) == 5  # 4 ingests + the repository's initial snapshot


def test_adding_a_band_later_with_a_directory_pattern(tmp_path: Path) -> None:
    for band in ("red", "nir"):
        make_cog(tmp_path / "a" / "S2B_33UXP_20250315" / f"{band}.tif", shape_yx=(64, 64))
    pattern = "{scene}/{band}.tif"
    assert ingest(str(tmp_path / "a"), str(tmp_path / "repo"), pattern=pattern).ok
    make_cog(tmp_path / "b" / "S2B_33UXP_20250315" / "scl.tif", shape_yx=(64, 64), dtype="uint8")
    report = ingest(str(tmp_path / "b"), str(tmp_path / "repo"), pattern=pattern)
    assert report.ok
    assert report.counts()["updated"] == 3  # files of the rewritten scene
    scene = resolve_snapshot(tmp_path / "repo").catalog().get("S2B_33UXP_20250315")
    assert scene.band_names == ("nir", "red", "scl")
    expected, _ = read_with_rasterio(tmp_path / "a" / "S2B_33UXP_20250315" / "red.tif")
    np.testing.assert_array_equal(open_scene(tmp_path / "repo", scene.scene_id, bands=["red"])["red"].values,
                                  expected[0])
