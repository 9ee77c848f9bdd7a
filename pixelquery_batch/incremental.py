"""Incremental, resumable per-field runs over versioned output tables.

State of a job's outputs (all under ``outputs.dir``, through the output layer):

- ``stats/`` and ``_state/days/``: Delta tables of the per-(field, scene) rows and the
  per-(field, day) rows the time series are built from. A row is *reused* by a later run
  when it was computed under the same result hash (:meth:`JobSpec.result_hash`) and the
  same field geometry (``field_hash``); everything else is recomputed.
- ``ledger/``: Delta table of the pairs that kept failing (one row per failed field and
  scene, short message; full tracebacks go to the log once per distinct error). A rerun
  leaves them alone; ``pqb run --retry-failed`` retries only them.
- ``runs/``: Delta table, one row per run (``pqb runs``).
- ``.work/<result_hash>/``: the parts of the units completed by an unfinished run, one
  Parquet object per unit with a stable name. A killed run leaves them; the next run
  counts their pairs as done and publishes them with its own. Each publication is one
  commit per table; staged pairs already in the table (published by a run that crashed
  before cleaning up) are dropped, so a replay never appends twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc
import pyarrow.parquet as pq

from .storage import Location
from .types import STATS_KEY
from .writers import delta
from .writers.tables import write_arrow

__all__ = ["FieldState", "WorkArea", "field_hashes", "load_state"]

STATS = "stats"
DAYS = "_state/days"
LEDGER = "ledger"
RUNS = "runs"
STATS_KEYS = list(STATS_KEY)
DAY_KEYS = ["field_id", "date", "variable"]


def field_hashes(fields: Any) -> dict[str, str]:
    """``field_id -> 16 hex`` of the field's geometry (WKB in its CRS, with the CRS)."""
    import shapely

    crs = fields.crs.to_wkt() if fields.crs is not None else ""
    out = {}
    for fid, wkb in zip(fields["field_id"].astype(str),
                        shapely.to_wkb(fields.geometry.to_numpy(), output_dimension=2),
                        strict=True):
        out[fid] = hashlib.sha256(crs.encode() + b"\x1f" + wkb).hexdigest()[:16]
    return out


@dataclass(frozen=True)
class WorkArea:
    """Durable parts of the units of an unfinished run: ``.work/<result_hash>/<table>/``."""

    out: Location
    result_hash: str

    @property
    def prefix(self) -> str:
        return f".work/{self.result_hash}"

    def put(self, table: str, unit_id: str, data: pa.Table | Iterable[pa.Table]) -> None:
        """Stage a unit's rows (a table, or slices of it written one after another) as an
        Arrow IPC stream (zstd buffers): ~4x cheaper to write than Parquet for rows that
        are read back once, by the same version. Streamed into the part (a local part
        holds no copy of itself in memory: by hand, a 300,000-row part of 22 MB was built
        in a buffer that grew to twice that, fresh pages every unit). Nothing is written
        for no rows."""
        tables = (t for t in ([data] if isinstance(data, pa.Table) else data) if t.num_rows)
        first = next(tables, None)
        if first is not None:
            self.out.put_stream(f"{self.prefix}/{table}/part-{unit_id}.arrow",
                                lambda sink: write_arrow(sink, itertools.chain([first], tables)))

    def keys(self, table: str) -> list[str]:
        """The staged parts of ``table`` (Parquet parts staged by older versions too)."""
        return sorted(k for k in self.out.list(f"{self.prefix}/{table}")
                      if k.endswith((".arrow", ".parquet")))

    def read_part(self, key: str) -> pa.Table:
        data = self.out.get(key)
        if key.endswith(".arrow"):
            return pa.ipc.open_stream(data).read_all()
        return pq.read_table(io.BytesIO(data))

    def read_batches(self, key: str, order: Iterable[str]) -> Iterator[pa.RecordBatch]:
        """The rows of one part, a batch at a time, sorted by ``order``: Arrow parts come
        sorted from the workers and are streamed; Parquet parts (staged by older
        versions) are read whole and sorted."""
        data = self.out.get(key)
        if key.endswith(".arrow"):
            yield from pa.ipc.open_stream(data)
            return
        part = pq.read_table(io.BytesIO(data))
        yield from part.sort_by([(c, "ascending") for c in order]).to_batches()

    def read(self, table: str) -> pa.Table | None:
        keys = self.keys(table)
        if not keys:
            return None
        return pa.concat_tables([self.read_part(k) for k in keys], promote_options="default")

    def clear(self) -> None:
        self.out.delete_prefix(self.prefix)
        if self.out.is_local:  # no empty .work/ left behind
            with contextlib.suppress(OSError):  # other jobs' parts, or already gone
                (self.out.local_path / ".work").rmdir()


@dataclass
class FieldState:
    """What earlier runs left for this job (pairs as ``field_id\\x1fscene_id``)."""

    done: set[str] = field(default_factory=set)  # in stats, same result & field hash
    staged: set[str] = field(default_factory=set)  # in the work area (an unfinished run)
    failed: set[str] = field(default_factory=set)  # in the ledger, this result hash
    stale_fields: set[str] = field(default_factory=set)  # rows under another geometry
    table_exists: bool = False
    other_result_rows: int = 0  # rows computed under another result hash
    rebuild: bool = False  # rows exist but must all be recomputed (day rows missing)

    def is_done(self, field_id: str, scene_id: str, *, retry_failed: bool = False) -> bool:
        key = f"{field_id}\x1f{scene_id}"
        if retry_failed:
            return key not in self.failed
        return key in self.done or key in self.staged or key in self.failed


def pair_keys(table: pa.Table) -> pa.Array:
    """``field_id\x1fscene_id`` of every row: the key pairs are compared by."""
    return pc.binary_join_element_wise(table.column("field_id").cast(pa.string()),
                                       table.column("scene_id").cast(pa.string()), "\x1f")


def _pairs(table: pa.Table | None) -> set[str]:
    if table is None or table.num_rows == 0:
        return set()
    return set(pair_keys(table).to_pylist())


def drop_pairs(table: pa.Table | pa.RecordBatch, pairs: set[str]) -> pa.Table | pa.RecordBatch:
    """The rows of ``table`` whose pair is not in ``pairs`` (keys as :func:`pair_keys`)."""
    if not pairs or table.num_rows == 0:
        return table
    return table.filter(pc.invert(pc.is_in(pair_keys(table),
                                           value_set=pa.array(list(pairs), pa.string()))))


def load_state(out: Location, result_hash: str, hashes: dict[str, str], *,
               need_days: bool = False) -> FieldState:
    """Read the job's reusable rows, staged parts and ledger (cheap: key columns only).

    ``need_days``: the job builds time series, which need the day rows of every pair: when
    an earlier run did not keep them, nothing is reused."""
    state = FieldState()
    rows = delta.read(out, STATS, columns=["field_id", "scene_id", "result_hash", "field_hash"])
    if rows is not None:
        state.table_exists = True
        same = pc.equal(rows.column("result_hash"), result_hash) if "result_hash" in rows.column_names \
            else pa.array([False] * rows.num_rows)
        state.other_result_rows = rows.num_rows - pc.sum(same).as_py() if rows.num_rows else 0
        rows = rows.filter(same)
        fids = rows.column("field_id").to_pylist()
        fh = rows.column("field_hash").to_pylist()
        keep = [hashes.get(f) == h for f, h in zip(fids, fh, strict=True)]
        state.stale_fields = {f for f, k in zip(fids, keep, strict=True) if not k}
        state.done = _pairs(rows.filter(pa.array(keep, pa.bool_())))
    staged = WorkArea(out, result_hash).read(STATS)
    if staged is not None:
        fh = staged.column("field_hash").to_pylist()
        fids = staged.column("field_id").to_pylist()
        keep = [hashes.get(f) == h for f, h in zip(fids, fh, strict=True)]
        state.staged = _pairs(staged.filter(pa.array(keep, pa.bool_())))
    ledger = delta.read(out, LEDGER, columns=["field_id", "scene_id", "result_hash", "resolved"])
    if ledger is not None and ledger.num_rows:
        open_rows = ledger.filter(pc.and_(pc.equal(ledger.column("result_hash"), result_hash),
                                          pc.invert(ledger.column("resolved"))))
        state.failed = _pairs(open_rows)
    if need_days and state.done and not delta.exists(out, DAYS):
        state.done, state.staged, state.rebuild = set(), set(), True
    return state


def with_run_columns(table: pa.Table, *, hashes: dict[str, str] | FieldHashes, result_hash: str,
                     run_id: str) -> pa.Table:
    """Add ``field_hash``, ``result_hash`` and ``run_id`` to a unit's rows (vectorised:
    a unit brings hundreds of thousands of rows)."""
    lookup = hashes if isinstance(hashes, FieldHashes) else FieldHashes.of(hashes)
    n = table.num_rows
    return (table.append_column("field_hash", lookup.take(table.column("field_id")))
            .append_column("result_hash", pa.repeat(pa.scalar(result_hash, pa.string()), n))
            .append_column("run_id", pa.repeat(pa.scalar(run_id, pa.string()), n)))


def day_keys(table: pa.Table, unit: Any) -> pa.Table:
    """Add ``day_key`` (local day | work grid) to a unit's day rows: the key under which a
    later run replaces a field's day when a scene of that day arrives late."""
    grid = hashlib.sha256(repr((unit.crs, unit.transform)).encode()).hexdigest()[:8]
    day_of = {s.scene_id: s.day or s.datetime[:10] for s in unit.scenes}
    keys = [f"{day_of.get(d.split('+')[0], d)}|{grid}" for d in table.column("scene_id").to_pylist()]
    return table.append_column("day_key", pa.array(keys, pa.string()))


def stage_unit(work: WorkArea, unit: Any, rows: Iterable[pa.Table],
               day_rows: Iterable[pa.Table] | None, *,
               hashes: dict[str, str] | FieldHashes, run_id: str) -> None:
    """Stage one unit's rows in the run's work area, with their run columns: the day rows
    first, the stats part last. The stats part is what marks the unit's pairs done for a
    resumed run, so a kill between the two puts never leaves done pairs without their
    day rows (or pictures: those are written before the unit's rows). Rows may come as
    slices (the columns are added slice by slice: a unit's rows are never copied whole)."""
    def run_columns(tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        for t in tables:
            yield with_run_columns(t, hashes=hashes, result_hash=work.result_hash, run_id=run_id)

    if day_rows is not None:
        work.put("days", unit.unit_id, (day_keys(t, unit) for t in run_columns(day_rows)))
    work.put("stats", unit.unit_id, run_columns(rows))


@dataclass(frozen=True)
class FieldHashes:
    """``field_id -> field hash`` as two Arrow arrays, for vectorised lookups."""

    ids: pa.Array
    values: pa.Array

    @classmethod
    def of(cls, hashes: dict[str, str]) -> FieldHashes:
        return cls(pa.array(list(hashes), pa.string()), pa.array(list(hashes.values()), pa.string()))

    def take(self, field_ids: Any) -> pa.Array:
        """The hashes of ``field_ids`` ("" for an unknown id)."""
        idx = pc.index_in(pc.cast(field_ids, pa.string()), value_set=self.ids)
        return pc.fill_null(self.values.take(idx), "")


def publish(out: Location, name: str, rows: pa.Table | None, keys: list[str], *,
            replace_all: bool, upsert: bool, metadata: dict[str, Any]) -> int:
    """Commit a run's rows to table ``name`` in one commit: overwrite (rows of another
    result hash), upsert on ``keys`` (rows being replaced exist) or append. Returns rows
    written."""
    if rows is None or rows.num_rows == 0:
        return 0
    rows = rows.sort_by([(k, "ascending") for k in keys])
    if replace_all:
        delta.overwrite(out, name, rows, metadata=metadata)
    elif upsert:
        delta.merge_rows(out, name, rows, keys, metadata=metadata)
    else:
        delta.append(out, name, rows, metadata=metadata)
    return rows.num_rows


#: Rows per batch handed to the Delta writer: it keeps a number of batches in flight,
#: so their size is what the commit holds (1,200,000 staged rows in 64 Ki-row batches:
#: ~215 MB of Arrow buffers at once; in 8 Ki-row slices of them under 60 MB; same time).
_PUBLISH_ROWS = 8192


def publish_parts(work: WorkArea, table: str, out: Location, name: str, keys: list[str], *,
                  replace_all: bool, drop: set[str], metadata: dict[str, Any]) -> int:
    """Append (or, ``replace_all``, overwrite with) the staged parts of ``table`` in one
    commit, streamed part by part (each sorted on ``keys``): the client never holds every
    row of a large run. Pairs in ``drop`` (``field_id\\x1fscene_id`` already published)
    are left out. Only for parts that hold no pair twice (see :func:`dedupe`)."""
    part_keys = work.keys(table)
    # a batch at a time (a part is never whole in memory: two 600,000-row parts of a
    # 100,000-field run, read whole and sorted here, took the client +0.9 GB); the first
    # batch gives the schema every later one is cast to
    stream = (batch for key in part_keys for batch in work.read_batches(key, keys))
    first = next(stream, None)
    if first is None:
        return 0
    schema = first.schema
    written = 0

    def batches() -> Iterable[pa.RecordBatch]:
        nonlocal written
        for batch in itertools.chain([first], stream):
            batch = drop_pairs(batch if batch.schema == schema else batch.cast(schema), drop)
            written += batch.num_rows
            for i in range(0, batch.num_rows, _PUBLISH_ROWS):
                yield batch.slice(i, _PUBLISH_ROWS)

    reader = pa.RecordBatchReader.from_batches(schema, batches())
    if replace_all:
        delta.overwrite(out, name, reader, metadata=metadata)
    else:
        delta.append(out, name, reader, metadata=metadata)
    return written


def dedupe(table: pa.Table | None, keys: Iterable[str]) -> pa.Table | None:
    """Last row per key (a unit re-run after a crash may have staged a pair twice)."""
    if table is None or table.num_rows == 0:
        return table
    keys = list(keys)
    idx = pa.array(range(table.num_rows), pa.int64())
    t = table.append_column("__i", idx)
    last = t.group_by(keys).aggregate([("__i", "max")]).column("__i_max")
    return table.take(pc.sort_indices(last))
