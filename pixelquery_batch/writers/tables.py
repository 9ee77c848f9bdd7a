"""Result tables: one Parquet part per work unit, staged, then published together.

Everything goes through the output layer (:class:`~pixelquery_batch.storage.Location`), so
the same code writes to a local directory and to an ``s3://`` prefix. Parts are written as
the units complete (the client never holds every row) under the run's staging prefix
``.staging-run-<id>/``; :meth:`RunOutputs.publish` then moves each staged output in place of
the previous one, so a run that fails half-way changes nothing that was published.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc
import pyarrow.parquet as pq

from ..storage import Location

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["RunOutputs", "TableWriter", "parquet_bytes", "read_parquet_prefix", "write_arrow"]


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as zstd-compressed Parquet bytes."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def write_arrow(sink: Any, tables: Iterable[pa.Table]) -> None:
    """Tables of one schema (the first one's; empty ones skipped), written one after
    another to ``sink`` (a file-like) as an Arrow IPC stream with zstd-compressed buffers
    (staging: no Parquet encoding, read back without decoding pages, a batch at a time).
    """
    tables = iter(tables)
    first = next(tables)
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, first.schema, options=options) as writer:
        for table in itertools.chain([first], tables):
            if table.num_rows:
                writer.write_table(table, max_chunksize=65_536)


def read_parquet_prefix(loc: Location, prefix: str) -> pa.Table | None:
    """Every ``*.parquet`` object under ``prefix`` concatenated (``None`` when there is none)."""
    keys = [k for k in loc.list(prefix) if k.endswith(".parquet")]
    if not keys:
        return None
    return pa.concat_tables([pq.read_table(io.BytesIO(loc.get(k))) for k in keys],
                            promote_options="default")


class TableWriter:
    """Collects Arrow parts for the table ``name`` of a run's staging location.

    Parameters
    ----------
    stage
        The run's staging location (:attr:`RunOutputs.stage`).
    name
        Table name (directory name), e.g. ``"stats"``.
    schema
        Schema of every part.
    fmt
        ``parquet``, ``geoparquet`` or ``csv``.
    sort_by
        Columns each part is sorted by (stable output for idempotent reruns).
    """

    def __init__(self, stage: Location, name: str, schema: pa.Schema, *,
                 fmt: str = "parquet", sort_by: tuple[str, ...] = ()) -> None:
        self.stage = stage
        self.name = name
        self.schema = schema
        self.fmt = fmt
        self.sort_by = sort_by
        self.parts_prefix = f".parts-{name}"
        self.rows = 0
        self.parts = 0

    def write_part(self, part_id: str, table: pa.Table) -> None:
        """Write one part (a no-op for an empty table)."""
        if table.num_rows == 0:
            return
        table = table.cast(self.schema)
        if self.sort_by:
            table = table.sort_by([(c, "ascending") for c in self.sort_by])
        self.stage.put(f"{self.parts_prefix}/part-{part_id}.parquet", parquet_bytes(table))
        self.rows += table.num_rows
        self.parts += 1

    def read_all(self) -> pa.Table:
        """Every part written so far, concatenated and sorted."""
        table = read_parquet_prefix(self.stage, self.parts_prefix)
        if table is None:
            return self.schema.empty_table()
        return table.sort_by([(c, "ascending") for c in self.sort_by]) if self.sort_by else table

    def commit(self, transform: Callable[[pa.Table], pa.Table] | None = None) -> str:
        """Finish the table in the staging location: ``<name>/`` (Parquet parts) or
        ``<name>.csv``; returns the key :meth:`RunOutputs.publish` publishes.

        ``transform`` (e.g. adding geometry for GeoParquet) is applied to the whole table
        for the single-file formats.
        """
        if self.fmt == "parquet" and transform is None:
            if self.parts == 0:  # an empty table still has its schema
                self.stage.put(f"{self.parts_prefix}/part-empty.parquet",
                               parquet_bytes(self.schema.empty_table()))
            self.stage.move_prefix(self.parts_prefix, self.name)
            return self.name
        table = self.read_all()
        if transform is not None:
            table = transform(table)
        if self.fmt == "csv":
            sink = pa.BufferOutputStream()
            pacsv.write_csv(table, sink)
            key = f"{self.name}.csv"
            self.stage.put(key, sink.getvalue().to_pybytes())
        else:
            key = self.name
            self.stage.put(f"{key}/part-all.parquet", parquet_bytes(table))
        self.abort()
        return key

    def abort(self) -> None:
        """Drop the parts not yet committed."""
        self.stage.delete_prefix(self.parts_prefix)


class RunOutputs:
    """All outputs of one run, staged together and published together.

    Stages write under :attr:`stage` (``<out>/.staging-run-<id>/``); :meth:`publish` moves
    every staged table, directory or file in place of the previous one, so a run that fails
    half-way changes nothing, and a finished run never mixes its tables with an older
    run's. On a local disk each output is swapped by renames; on S3 by server-side copies.
    """

    #: Staging prefixes of runs older than this are leftovers of killed runs: removed.
    STALE_S = 24 * 3600

    def __init__(self, out: Location) -> None:
        self.out = out
        now = time.time()
        self.stage_key = f".staging-run-{int(now)}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stage = out.child(self.stage_key)
        self.removed = self.clean_stale(now)

    def clean_stale(self, now: float) -> list[str]:
        """Remove the staging prefixes (and swapped-out ``.old-*`` directories) that killed
        runs left behind; returns them. A run's prefix is stale when the process that made
        it is gone (same host), or when it started more than :attr:`STALE_S` ago."""
        removed = []
        for name in self.out.list_dirs():
            if name.startswith(".old-"):
                stale = True
            elif name.startswith(".staging-run-"):
                parts = name.split("-")  # .staging-run-<start>-<host>-<pid>-<rand>
                try:
                    started, host, pid = int(parts[2]), parts[3], int(parts[4])
                except (IndexError, ValueError):
                    stale = True  # an older layout
                else:
                    stale = now - started > self.STALE_S or (host == _HOST and not _alive(pid))
            else:
                continue
            if stale:
                self.out.delete_prefix(name)
                removed.append(name)
        return removed

    def publish(self, staged: dict[str, str]) -> dict[str, str]:
        """Move the staged outputs (name -> key in the stage) into the output location;
        returns their final locations (local paths or ``s3://`` URLs)."""
        final: dict[str, str] = {}
        files = set(self.stage.list())
        for name, key in staged.items():
            src, dst = f"{self.stage_key}/{key}", key
            if key in files:
                self.out.move(src, dst)
            else:
                self.out.move_prefix(src, dst)
            final[name] = self.out.display(dst)
        self.abort()
        return final

    def abort(self) -> None:
        """Drop whatever was staged (the previous outputs stay untouched)."""
        self.out.delete_prefix(self.stage_key)
