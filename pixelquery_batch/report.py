"""``report.html``: one self-contained page about a job's outputs (no network: inline CSS,
inline SVG charts, pictures inlined as data URIs), rebuilt from the outputs alone.

Sections: run summary (the manifest), run history, failure ledger, per-variable
distributions of the field means, time series of a sample of fields, regional rollups,
a map-like overview of the fields coloured by their latest NDVI (or first variable), and
thumbnails of the rendered PNGs.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from .storage import Location

__all__ = ["build_report", "write_report"]

logger = logging.getLogger(__name__)

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ddd;padding:6px;font-size:11px}
.muted{color:#777}.ok{color:#1a7f37}.bad{color:#b42318}svg text{font:10px sans-serif}
"""
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str], limit: int = 50) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(r.get(c, ''))}</td>" for c in columns) + "</tr>"
                   for r in rows[:limit])
    more = f'<p class="muted">{len(rows) - limit} more</p>' if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _histogram_svg(values: np.ndarray, title: str, width: int = 260, height: int = 120) -> str:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return ""
    counts, edges = np.histogram(values, bins=24)
    top = counts.max() or 1
    bw = (width - 20) / len(counts)
    bars = "".join(
        f'<rect x="{10 + i * bw:.1f}" y="{height - 20 - c / top * (height - 40):.1f}" '
        f'width="{bw - 1:.1f}" height="{c / top * (height - 40):.1f}" fill="#4c78a8"/>'
        for i, c in enumerate(counts))
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(title)}">'
            f'<text x="10" y="12">{_e(title)} (n={values.size})</text>{bars}'
            f'<text x="10" y="{height - 6}">{edges[0]:.3g}</text>'
            f'<text x="{width - 10}" y="{height - 6}" text-anchor="end">{edges[-1]:.3g}</text></svg>')


def _lines_svg(series: dict[str, tuple[np.ndarray, np.ndarray]], title: str,
               width: int = 560, height: int = 180) -> str:
    """Lines of ``{label: (x as days since epoch, y)}``."""
    pts = [(x, y) for x, y in series.values() if len(x)]
    if not pts:
        return ""
    xs = np.concatenate([p[0] for p in pts])
    ys = np.concatenate([p[1] for p in pts])
    ok = np.isfinite(ys)
    if not ok.any():
        return ""
    x0, x1 = float(xs[ok].min()), float(xs[ok].max())  # the span that has values
    y0, y1 = float(ys[ok].min()), float(ys[ok].max())
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1e-9

    def sx(x: float) -> float:
        return 40 + (x - x0) / (x1 - x0) * (width - 60)

    def sy(y: float) -> float:
        return height - 25 - (y - y0) / (y1 - y0) * (height - 45)

    lines = []
    for k, (label, (x, y)) in enumerate(series.items()):
        good = np.isfinite(y) & (x >= x0) & (x <= x1)
        if not good.any():
            continue
        d = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(x[good], y[good], strict=True))
        color = _PALETTE[k % len(_PALETTE)]
        lines.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{d}"/>'
                     f'<text x="{width - 15}" y="{20 + 12 * k}" text-anchor="end" '
                     f'fill="{color}">{_e(label)}</text>')
    d0 = np.datetime64(int(x0), "D")
    d1 = np.datetime64(int(x1), "D")
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(title)}">'
            f'<text x="40" y="12">{_e(title)}</text>{"".join(lines)}'
            f'<text x="40" y="{height - 8}">{d0}</text>'
            f'<text x="{width - 20}" y="{height - 8}" text-anchor="end">{d1}</text>'
            f'<text x="2" y="{sy(y1) + 4:.1f}">{y1:.3g}</text>'
            f'<text x="2" y="{sy(y0):.1f}">{y0:.3g}</text></svg>')


def _map_svg(fields: Any, value_by_field: dict[str, float], title: str,
             width: int = 560, height: int = 420) -> str:
    """Field polygons (exteriors) coloured by a value (RdYlGn), in their own CRS."""
    from .render import colormap_lut

    if fields is None or len(fields) == 0:
        return ""
    x0, y0, x1, y1 = fields.total_bounds
    scale = min((width - 20) / max(x1 - x0, 1e-12), (height - 40) / max(y1 - y0, 1e-12))
    lut = colormap_lut("rdylgn")
    vals = np.array([value_by_field.get(f, np.nan) for f in fields["field_id"]], dtype=float)
    ok = np.isfinite(vals)
    lo, hi = (np.nanpercentile(vals, 2), np.nanpercentile(vals, 98)) if ok.any() else (0, 1)
    hi = hi if hi > lo else lo + 1e-9
    polys = []
    for fid, geom, v in zip(fields["field_id"], fields.geometry, vals, strict=True):
        parts = getattr(geom, "geoms", [geom])
        rgb = lut[int(np.clip((v - lo) / (hi - lo), 0, 1) * 255)] if np.isfinite(v) else None
        color = "#ccc" if rgb is None else "#" + "".join(f"{int(c):02x}" for c in rgb)
        for part in parts:
            d = " ".join(f"{10 + (x - x0) * scale:.1f},{30 + (y1 - y) * scale:.1f}"
                         for x, y in part.exterior.coords)
            polys.append(f'<polygon points="{d}" fill="{color}" stroke="#555" stroke-width="0.4">'
                         f"<title>{_e(fid)}: {v:.3f}</title></polygon>")
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(title)}">'
            f'<text x="10" y="14">{_e(title)} (colours: {lo:.2f} red .. {hi:.2f} green)</text>'
            f'{"".join(polys)}</svg>')


def build_report(out: Location, *, max_thumbnails: int = 24, sample_fields: int = 6) -> str:
    """The report page of the outputs at ``out`` (reads only what is there)."""
    import pandas as pd

    from .api import read_table

    manifest = json.loads(out.get("manifest.json")) if out.exists("manifest.json") else {}
    job = manifest.get("job", {})
    ex = manifest.get("execution") or {}
    profile = out.profile

    def table(name: str) -> pd.DataFrame:
        try:
            return read_table(out.display(), name, storage=profile)
        except Exception:  # a missing or unreadable table: the section says so
            logger.warning("report: cannot read %s", name, exc_info=True)
            return pd.DataFrame()

    runs = table("runs")
    ledger = table("ledger")
    stats = table("stats")
    series = table("timeseries")
    rollup = table("rollup")
    parts = [f"<h1>{_e(job.get('name', 'job'))}: run report</h1>"]
    status = "partial" if manifest.get("failures") else "ok"
    summary = {
        "run": manifest.get("run_id", ""), "status": status,
        "started": manifest.get("started_at", ""), "duration s": manifest.get("duration_s", ""),
        "snapshot": manifest.get("repository", {}).get("snapshot_id", ""),
        "scenes": len(manifest.get("scenes", [])),
        "fields": (manifest.get("plan") or {}).get("fields", ""),
        "pairs computed": ex.get("pairs_computed", ""), "pairs reused": ex.get("pairs_reused", ""),
        "pairs failed": ex.get("pairs_failed", 0), "job hash": job.get("job_hash", ""),
    }
    parts.append("<h2>Summary</h2>" + _table([summary], list(summary)))
    timings = manifest.get("timings") or {}
    if timings:
        parts.append("<p class=\"muted\">timings (s from start): " + ", ".join(
            f"{_e(k)} {_e(v)}" for k, v in timings.items()) + "</p>")
    parts.append("<h2>Run history</h2>")
    if len(runs):
        runs = runs.sort_values("started_at", ascending=False)
        parts.append(_table(runs.to_dict("records"), ["run_id", "started_at", "duration_s",
                                                      "snapshot_id", "pairs_computed",
                                                      "pairs_reused", "pairs_failed", "status"]))
    else:
        parts.append('<p class="muted">no run history</p>')
    parts.append("<h2>Failure ledger</h2>")
    open_rows = ledger[~ledger["resolved"]] if len(ledger) else ledger
    parts.append(_table(open_rows.to_dict("records") if len(open_rows) else [],
                        ["stage", "field_id", "scene_id", "error_class", "message", "run_id"]))
    if len(stats) and "mean" in stats:
        parts.append("<h2>Distributions of the field means</h2><div class=\"grid\">")
        for var, rows in stats.groupby("variable"):
            parts.append(_histogram_svg(rows["mean"].to_numpy(dtype=float), str(var)))
        parts.append("</div>")
    if len(series):
        ids = sorted(series["field_id"].unique())[:sample_fields]
        parts.append("<h2>Time series (sample of fields)</h2>"
                     + _lines_by(series[series["field_id"].isin(ids)], "field_id", "mean per period"))
    if len(rollup):
        parts.append("<h2>Regions</h2>" + _lines_by(rollup, "region_id", "regional mean"))
    if len(stats):
        var = "ndvi" if "ndvi" in set(stats["variable"]) else sorted(stats["variable"].unique())[0]
        latest = (stats[(stats["variable"] == var) & (stats["count"] > 0)]
                  .sort_values("datetime").groupby("field_id").tail(1))
        fields = _fields_of(manifest)
        if fields is not None:
            parts.append("<h2>Fields</h2>" + _map_svg(
                fields, dict(zip(latest["field_id"], latest["mean"], strict=True)),
                f"latest {var} per field"))
    thumbs = [k for k in out.list("png") if k.endswith(".png")][:max_thumbnails]
    if thumbs:
        parts.append("<h2>Pictures</h2><div class=\"grid\">")
        for key in thumbs:
            data = base64.b64encode(out.get(key)).decode()
            parts.append(f'<div class="card"><img alt="{_e(key)}" src="data:image/png;base64,{data}" '
                         f'style="width:96px;image-rendering:pixelated"><br>{_e(key[4:])}</div>')
        parts.append("</div>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(job.get('name', 'job'))} report</title><style>{_CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>")


def _lines_by(df: Any, key: str, what: str) -> str:
    """One chart per variable, one line per ``key`` (field or region) over the periods."""
    charts = []
    for var, rows in df.groupby("variable"):
        lines = {}
        for ident, r in rows.groupby(key):
            r = r.sort_values("period_start")
            lines[str(ident)] = (_days(r["period_start"]), r["mean"].to_numpy(dtype=float))
        charts.append(_lines_svg(lines, f"{var}: {what}"))
    return '<div class="grid">' + "".join(charts) + "</div>"


def _days(dates: Any) -> np.ndarray:
    """Days since 1970 of dates or timestamps (time zones dropped)."""
    import pandas as pd

    stamps = pd.to_datetime(dates, utc=True).dt.tz_localize(None)
    return stamps.to_numpy().astype("datetime64[D]").astype(float)


def _fields_of(manifest: dict[str, Any]) -> Any:
    spec = (manifest.get("job") or {}).get("spec") or {}
    fields = spec.get("fields")
    if not fields:
        return None
    try:
        from .fields import load_fields

        return load_fields(fields["path"], id_column=fields.get("id", "id"),
                           layer=fields.get("layer"), fix_invalid=True)
    except Exception:  # moved or unreadable: the map is left out
        logger.warning("report: cannot read the fields for the map", exc_info=True)
        return None


def write_report(out: Location) -> str:
    """Build ``report.html`` in ``out``; returns its location."""
    out.put("report.html", build_report(out).encode())
    return out.display("report.html")
