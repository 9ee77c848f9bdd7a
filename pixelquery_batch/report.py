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
import pyarrow as pa
import pyarrow.compute as pc

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


#: Above this many fields the overview is a picture (one pixel colour per field cell)
#: instead of one SVG polygon per field: a page of 100,000 polygons weighs ~20 MB.
MAP_MAX_POLYGONS = 2000


def _map_colours(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """RGB (uint8, n x 3) of ``values`` on RdYlGn between their 2nd and 98th percentiles;
    grey where a value is missing."""
    from .render import colormap_lut

    ok = np.isfinite(values)
    lo, hi = (float(np.percentile(values[ok], 2)), float(np.percentile(values[ok], 98))) \
        if ok.any() else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1e-9
    idx = (np.clip((np.nan_to_num(values, nan=lo) - lo) / (hi - lo), 0, 1) * 255).astype(int)
    rgb = colormap_lut("rdylgn")[idx].astype(np.uint8)
    rgb[~ok] = 204
    return rgb, lo, hi


def _map_svg(fields: Any, value_by_field: dict[str, float], title: str,
             width: int = 560, height: int = 420) -> str:
    """Field polygons (exteriors) coloured by a value (RdYlGn), in their own CRS; above
    :data:`MAP_MAX_POLYGONS` fields, a picture of them (:func:`_map_picture`)."""
    if fields is None or len(fields) == 0:
        return ""
    vals = np.array([value_by_field.get(f, np.nan) for f in fields["field_id"]], dtype=float)
    rgb, lo, hi = _map_colours(vals)
    caption = f"{_e(title)} (colours: {lo:.2f} red .. {hi:.2f} green)"
    if len(fields) > MAP_MAX_POLYGONS:
        return _map_picture(fields, rgb, caption, width, height)
    x0, y0, x1, y1 = fields.total_bounds
    scale = min((width - 20) / max(x1 - x0, 1e-12), (height - 40) / max(y1 - y0, 1e-12))
    polys = []
    for fid, geom, v, c in zip(fields["field_id"], fields.geometry, vals, rgb, strict=True):
        color = "#" + "".join(f"{int(k):02x}" for k in c)
        for part in getattr(geom, "geoms", [geom]):
            d = " ".join(f"{10 + (x - x0) * scale:.1f},{30 + (y1 - y) * scale:.1f}"
                         for x, y in part.exterior.coords)
            polys.append(f'<polygon points="{d}" fill="{color}" stroke="#555" stroke-width="0.4">'
                         f"<title>{_e(fid)}: {v:.3f}</title></polygon>")
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(title)}">'
            f'<text x="10" y="14">{caption}</text>{"".join(polys)}</svg>')


def _map_picture(fields: Any, rgb: np.ndarray, caption: str, width: int, height: int) -> str:
    """The fields as a ``width`` x ``height`` PNG: each field fills the cells of its
    bounding box in its colour (at this scale a field is a few cells), transparent
    elsewhere. Vectorised bounds, no per-vertex work: 100,000 fields in well under 1 s."""
    import imagecodecs

    x0, y0, x1, y1 = (float(v) for v in fields.total_bounds)
    dx, dy = max(x1 - x0, 1e-12), max(y1 - y0, 1e-12)
    scale = min(width / dx, height / dy)
    w, h = max(1, round(dx * scale)), max(1, round(dy * scale))
    b = fields.geometry.bounds.to_numpy()
    c0 = np.clip(((b[:, 0] - x0) * scale).astype(int), 0, w - 1)
    c1 = np.clip(np.ceil((b[:, 2] - x0) * scale).astype(int), c0 + 1, w)
    r0 = np.clip(((y1 - b[:, 3]) * scale).astype(int), 0, h - 1)
    r1 = np.clip(np.ceil((y1 - b[:, 1]) * scale).astype(int), r0 + 1, h)
    img = np.zeros((h, w, 4), dtype=np.uint8)
    colour = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
    one = (c1 - c0 == 1) & (r1 - r0 == 1)
    img[r0[one], c0[one]] = colour[one]
    for k in np.flatnonzero(~one):
        img[r0[k]:r1[k], c0[k]:c1[k]] = colour[k]
    data = base64.b64encode(bytes(imagecodecs.png_encode(img))).decode()
    return (f'<p class="muted">{caption}; {len(fields):,} fields drawn as a picture</p>'
            f'<img alt="fields map" width="{w}" height="{h}" src="data:image/png;base64,{data}">')


def _read(out: Location, name: str, dirs: set[str],
          columns: list[str] | None = None) -> pa.Table | None:
    """The current rows of an output table (only ``columns``), or ``None`` when absent or
    unreadable (the section then says so)."""
    import io

    import pyarrow.parquet as pq

    from .writers import delta

    if name not in dirs:
        return None
    try:
        table = delta.read(out, name, columns=columns)
        if table is None:  # a plain Parquet directory
            keys = [k for k in out.list(name) if k.endswith(".parquet")]
            if not keys:
                return None
            table = pa.concat_tables([pq.read_table(io.BytesIO(out.get(k)), columns=columns)
                                      for k in keys])
        return table
    except Exception:
        logger.warning("report: cannot read %s", name, exc_info=True)
        return None


def _pandas(table: pa.Table | None) -> Any:
    import pandas as pd

    return table.to_pandas() if table is not None else pd.DataFrame()


def _latest_by_field(stats: pa.Table, variable: str) -> dict[str, float]:
    """The mean of each field's latest observed scene for ``variable``."""
    t = stats.filter(pc.and_(pc.equal(stats["variable"], variable), pc.greater(stats["count"], 0)))
    if t.num_rows == 0:
        return {}
    ids = pc.dictionary_encode(t["field_id"].combine_chunks())
    order = np.argsort(t["datetime"].to_numpy(), kind="stable")
    codes = ids.indices.to_numpy(zero_copy_only=False)[order]
    last = len(codes) - 1 - np.unique(codes[::-1], return_index=True)[1]
    means = t["mean"].to_numpy()[order][last]
    names = ids.dictionary.take(pa.array(codes[last])).to_pylist()
    return dict(zip(names, means.tolist(), strict=True))


def build_report(out: Location, *, fields: Any = None, max_thumbnails: int = 24,
                 sample_fields: int = 6) -> str:
    """The report page of the outputs at ``out`` (reads only what is there, and of the
    per-field table only the columns it draws). ``fields``: the job's fields when the
    caller has them loaded (else read from the spec's path)."""
    manifest = json.loads(out.get("manifest.json")) if out.exists("manifest.json") else {}
    job = manifest.get("job", {})
    ex = manifest.get("execution") or {}
    dirs = set(out.list_dirs())
    runs = _pandas(_read(out, "runs", dirs))
    ledger = _pandas(_read(out, "ledger", dirs))
    stats = _read(out, "stats", dirs, ["field_id", "variable", "datetime", "mean", "count"])
    if stats is not None and not {"variable", "mean", "count"} <= set(stats.column_names):
        stats = None
    series = _read(out, "timeseries", dirs)
    if series is not None and series.num_rows:
        ids = pc.unique(series["field_id"]).to_pylist()
        sample = sorted(ids)[:sample_fields]
        series = series.filter(pc.is_in(series["field_id"], value_set=pa.array(sample)))
    series = _pandas(series)
    rollup = _pandas(_read(out, "rollup", dirs))
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
    variables = sorted(pc.unique(stats["variable"]).to_pylist()) if stats is not None else []
    if variables:
        parts.append("<h2>Distributions of the field means</h2><div class=\"grid\">")
        for var in variables:
            means = stats.filter(pc.equal(stats["variable"], var))["mean"]
            parts.append(_histogram_svg(means.to_numpy().astype(float), str(var)))
        parts.append("</div>")
    if len(series):
        parts.append("<h2>Time series (sample of fields)</h2>"
                     + _lines_by(series, "field_id", "mean per period"))
    if len(rollup):
        parts.append("<h2>Regions</h2>" + _lines_by(rollup, "region_id", "regional mean"))
    if variables:
        var = "ndvi" if "ndvi" in variables else variables[0]
        fields = fields if fields is not None else _fields_of(manifest)
        if fields is not None:
            parts.append("<h2>Fields</h2>" + _map_svg(fields, _latest_by_field(stats, var),
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
                           layer=fields.get("layer"), fix_invalid=fields.get("fix_invalid", True))
    except Exception:  # moved or unreadable: the map is left out
        logger.warning("report: cannot read the fields for the map", exc_info=True)
        return None


def write_report(out: Location, *, fields: Any = None) -> str:
    """Build ``report.html`` in ``out``; returns its location. ``fields``: the job's fields
    if already loaded."""
    out.put("report.html", build_report(out, fields=fields).encode())
    return out.display("report.html")
