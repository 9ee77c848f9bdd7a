"""report.html: self-contained (no network), rebuilt from the outputs alone, and rendered
by headless Chromium without console errors or network requests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pytest

from pixelquery_batch import run_job

from .conftest import write_spec


@pytest.fixture(scope="module")
def report_run(sample_small, sample_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    spec = write_spec(tmp, repo=sample_repo, fields=sample_small.fields_path,
                      outputs={"dir": str(tmp / "out"), "stats": {"format": "parquet"},
                               "timeseries": {"period": "month", "aggregation": "mean"},
                               "rollup": {"regions": {"path": str(sample_small.regions_path)},
                                          "period": "month", "kinds": ["pixel"],
                                          "stats": ["mean", "count"]},
                               "png": {"variable": "ndvi", "vmin": -0.2, "vmax": 0.9,
                                       "scenes": "latest", "min_size": 48}})
    result = run_job(spec, cluster="sync")
    assert result.ok
    return result, tmp / "out"


def test_report_is_self_contained_and_has_every_section(report_run) -> None:
    result, out = report_run
    page = (out / "report.html").read_text()
    assert result.outputs["report"] == str(out / "report.html")
    for heading in ("Summary", "Run history", "Failure ledger", "Distributions of the field means",
                    "Time series (sample of fields)", "Regions", "Fields", "Pictures"):
        assert f"<h2>{heading}</h2>" in page, heading
    # nothing fetched from anywhere: no external URL in any attribute or style
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)
    assert "url(" not in page and "<script" not in page
    assert page.count("data:image/png;base64,") == min(24, len(list((out / "png").rglob("*.png"))))
    assert result.manifest["run_id"] in page


def test_pqb_report_rebuilds_it_from_the_outputs(report_run) -> None:
    _, out = report_run
    before = (out / "report.html").read_bytes()
    (out / "report.html").unlink()
    cli = subprocess.run([sys.executable, "-m", "pixelquery_batch.cli", "report", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert (out / "report.html").read_bytes() == before


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _render(page: Path, tmp: Path) -> tuple[subprocess.CompletedProcess, set[str], Path]:
    """Open ``page`` in headless Chromium: (process, URLs the *page* requested, screenshot).

    The browser's own background requests (time sync, accounts ...) carry the initiator
    "not an origin" in the net log; anything a page asks for carries the page's origin."""
    shot, netlog = tmp / "shot.png", tmp / "net.json"
    run = subprocess.run(
        [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--enable-logging=stderr", "--v=0", f"--log-net-log={netlog}",
         f"--user-data-dir={tmp / 'profile'}", "--window-size=1200,2400",
         f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    urls = {e["params"]["url"] for e in log.get("events", [])
            if names.get(e["type"]) == "URL_REQUEST_START_JOB" and "url" in e.get("params", {})
            and e["params"].get("initiator") != "not an origin"}
    return run, urls, shot


@pytest.mark.skipif(_browser() is None, reason="no Chromium/Chrome on this machine "
                    "(.ci/run installs Debian's chromium package)")
def test_report_renders_in_headless_chromium(report_run, tmp_path: Path) -> None:
    _, out = report_run
    # control: the detectors see a page that fetches something and logs an error
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="http://127.0.0.1:9/x.png">'
                   '<script>console.error("broken")</script></body></html>')
    (tmp_path / "b").mkdir()
    run, urls, _ = _render(bad, tmp_path / "b")
    assert urls == {"http://127.0.0.1:9/x.png"}
    assert "CONSOLE" in run.stderr
    (tmp_path / "r").mkdir()
    run, urls, shot = _render(out / "report.html", tmp_path / "r")
    assert run.returncode == 0, run.stderr[-2000:]
    assert not [ln for ln in run.stderr.splitlines() if "CONSOLE" in ln], run.stderr[-2000:]
    assert not urls, urls
    img = imagecodecs.png_decode(shot.read_bytes())
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    assert np.unique(img.reshape(-1, img.shape[-1])[:, :3], axis=0).shape[0] > 50  # not blank
    shutil.copy(shot, out / "report-screenshot.png")  # kept beside the report, to look at


def test_large_field_sets_are_drawn_as_a_picture_with_each_field_in_its_colour() -> None:
    """Above MAP_MAX_POLYGONS fields the map is one PNG (a page of 100,000 SVG polygons
    weighs ~20 MB): each field's cells carry its value's RdYlGn colour, gaps stay clear."""
    import base64

    import geopandas as gpd
    from shapely.geometry import box

    from pixelquery_batch.render import colormap_lut
    from pixelquery_batch.report import MAP_MAX_POLYGONS, _map_svg

    n = 60  # 3,600 fields of 80 m in a 100 m grid
    ids = [f"f{i}" for i in range(n * n)]
    geoms = [box(i % n * 100, i // n * 100, i % n * 100 + 80, i // n * 100 + 80) for i in range(n * n)]
    fields = gpd.GeoDataFrame({"field_id": ids}, geometry=geoms, crs="EPSG:32631")
    assert len(fields) > MAP_MAX_POLYGONS
    values = {f: float(i % 97) / 96 for i, f in enumerate(ids) if i % 11}  # some missing
    page = _map_svg(fields, values, "latest ndvi per field", width=600, height=600)
    assert "<polygon" not in page and len(page) < 200_000
    data = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    img = imagecodecs.png_decode(base64.b64decode(data))
    assert img.shape == (600, 600, 4)
    vals = np.array([values.get(f, np.nan) for f in ids])
    lo, hi = np.nanpercentile(vals, 2), np.nanpercentile(vals, 98)
    lut = colormap_lut("rdylgn")
    px = 600 / (n * 100 - 20)  # pixels per metre
    for i in (0, 1, 11, 500, 1234, n * n - 1):
        col, row = i % n * 100 + 40, i // n * 100 + 40  # the field's centre
        y, x = int((n * 100 - 20 - row) * px), int(col * px)
        rgba = img[y, x]
        assert rgba[3] == 255
        if np.isnan(vals[i]):
            assert tuple(rgba[:3]) == (204, 204, 204), i
        else:
            want = lut[int(np.clip((vals[i] - lo) / (hi - lo), 0, 1) * 255)]
            assert tuple(rgba[:3]) == tuple(int(c) for c in want), i
    assert img[int((n * 100 - 20 - 90) * px), int(90 * px), 3] == 0  # between fields


def test_latest_value_per_field_matches_pandas() -> None:
    import pandas as pd
    import pyarrow as pa

    from pixelquery_batch.report import _latest_by_field

    rng = np.random.default_rng(3)
    n = 5000
    df = pd.DataFrame({
        "field_id": rng.choice([f"f{i}" for i in range(700)], n),
        "variable": rng.choice(["ndvi", "ndmi"], n),
        "datetime": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.permutation(n), "h"),
        "mean": rng.normal(size=n),
        "count": rng.integers(0, 3, n),
    })
    want = (df[(df["variable"] == "ndvi") & (df["count"] > 0)].sort_values("datetime")
            .groupby("field_id").tail(1))
    got = _latest_by_field(pa.Table.from_pandas(df, preserve_index=False), "ndvi")
    assert got == dict(zip(want["field_id"], want["mean"], strict=True))
