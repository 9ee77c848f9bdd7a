"""Result tables: one Parquet part per work unit, published atomically at the end.

Parts are written as the units complete (the client never holds every row) into a
staging directory next to the destination; :meth:`TableWriter.commit` swaps the staging
directory in place of the previous output, so a crashed run never leaves a half-written
table that looks complete, and a rerun replaces the previous result whole.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import OutputError
from .files import atomic_write_bytes

__all__ = ["RunOutputs", "TableWriter", "swap_dir"]


def _make_staging(out_dir: Path, label: str) -> Path:
    """A new hidden staging directory ``out_dir/.staging-<label>-<random>``."""
    path = out_dir / f".staging-{label}-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {out_dir}: {exc}",
                          path=str(out_dir)) from exc
    return path


class TableWriter:
    """Collects Arrow parts for ``out_dir/<name>/`` and publishes them atomically.

    Parameters
    ----------
    out_dir
        The job's output directory.
    name
        Table name (directory name), e.g. ``"stats"``.
    schema
        Schema of every part.
    fmt
        ``parquet``, ``geoparquet`` or ``csv``.
    sort_by
        Columns each part is sorted by (stable output for idempotent reruns).
    """

    def __init__(self, out_dir: str | os.PathLike[str], name: str, schema: pa.Schema, *,
                 fmt: str = "parquet", sort_by: tuple[str, ...] = ()) -> None:
        self.out_dir = Path(out_dir)
        self.name = name
        self.schema = schema
        self.fmt = fmt
        self.sort_by = sort_by
        self.staging = _make_staging(self.out_dir, name)
        self.rows = 0
        self.parts = 0

    def write_part(self, part_id: str, table: pa.Table) -> None:
        """Write one part (a no-op for an empty table)."""
        if table.num_rows == 0:
            return
        table = table.cast(self.schema)
        if self.sort_by:
            table = table.sort_by([(c, "ascending") for c in self.sort_by])
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        atomic_write_bytes(self.staging / f"part-{part_id}.parquet", sink.getvalue().to_pybytes())
        self.rows += table.num_rows
        self.parts += 1

    def read_all(self) -> pa.Table:
        """Every part written so far, concatenated and sorted."""
        files = sorted(self.staging.glob("part-*.parquet"))
        if not files:
            return self.schema.empty_table()
        table = pa.concat_tables([pq.read_table(f) for f in files])
        return table.sort_by([(c, "ascending") for c in self.sort_by]) if self.sort_by else table

    def commit(self, transform: Callable[[pa.Table], pa.Table] | None = None) -> Path:
        """Publish: ``out_dir/<name>/`` (Parquet parts) or ``out_dir/<name>.csv``.

        ``transform`` (e.g. adding geometry for GeoParquet) is applied to the whole table
        for the single-file formats.
        """
        if self.fmt == "parquet" and transform is None:
            final = self.out_dir / self.name
            swap_dir(self.staging, final)
            return final
        table = self.read_all()
        if transform is not None:
            table = transform(table)
        if self.fmt == "csv":
            final = self.out_dir / f"{self.name}.csv"
            sink = pa.BufferOutputStream()
            pacsv.write_csv(table, sink)
            atomic_write_bytes(final, sink.getvalue().to_pybytes())
        else:
            final = self.out_dir / self.name
            tmp = _make_staging(self.out_dir, f"{self.name}-single")
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd")
            atomic_write_bytes(tmp / "part-all.parquet", sink.getvalue().to_pybytes())
            swap_dir(tmp, final)
        shutil.rmtree(self.staging, ignore_errors=True)
        return final

    def abort(self) -> None:
        """Drop the staging directory (the previous output stays untouched)."""
        shutil.rmtree(self.staging, ignore_errors=True)


def swap_dir(new: Path, final: Path) -> None:
    """Put directory ``new`` in place of ``final`` (the old one is removed afterwards)."""
    old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
    try:
        if final.exists():
            os.replace(final, old)
        os.replace(new, final)
    except OSError as exc:
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise OutputError(f"cannot publish {final}: {exc}", path=str(final)) from exc
    shutil.rmtree(old, ignore_errors=True)


class RunOutputs:
    """All outputs of one run, staged together and published together.

    Stages write into :attr:`root` (a hidden directory inside the output directory);
    :meth:`publish` then moves every staged table/directory/file in place of the previous
    one, so a run that fails half-way changes nothing, and a finished run never mixes
    its tables with an older run's.
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir)
        self.root = _make_staging(self.out_dir, "run")

    def publish(self, staged: dict[str, Path]) -> dict[str, Path]:
        """Move the staged outputs into the output directory; returns their final paths."""
        final: dict[str, Path] = {}
        for name, path in staged.items():
            dest = self.out_dir / path.relative_to(self.root)
            if path.is_dir():
                swap_dir(path, dest)
            else:
                os.replace(path, dest)
            final[name] = dest
        self.abort()
        return final

    def abort(self) -> None:
        """Drop whatever was staged (the previous outputs stay untouched)."""
        shutil.rmtree(self.root, ignore_errors=True)
