"""Versioned output tables: Delta Lake through ``deltalake`` (delta-rs), local or ``s3://``.

Every write is one atomic commit: a reader sees the table before or after it, never half
of it, and every version stays readable (DuckDB, polars, pandas and Spark read the tables
as they are). A replayed publication does not append twice because the caller drops the
rows already in the table (:mod:`pixelquery_batch.incremental`).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ..errors import OutputError
from ..storage import Location

__all__ = ["append", "exists", "merge_rows", "overwrite", "read", "storage_options", "table_uri"]


def table_uri(loc: Location, name: str) -> str:
    """The table's URI for deltalake (a local path or an ``s3://`` URL)."""
    return str(loc.local_path / name) if loc.is_local else f"{loc.url}/{name}"


def storage_options(loc: Location) -> dict[str, str] | None:
    """deltalake's storage options for ``loc`` (credentials in memory only)."""
    if loc.is_local:
        return None
    s3 = loc.profile.s3.resolved()
    opts = {"AWS_REGION": s3.region,
            "AWS_ALLOW_HTTP": "true" if s3.allow_http else "false",
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false" if s3.force_path_style else "true",
            # commits are put-if-absent: concurrent writers cannot overwrite each other
            "conditional_put": "etag"}
    if s3.endpoint_url:
        opts["AWS_ENDPOINT_URL"] = s3.endpoint_url
    if s3.anonymous:
        opts["AWS_SKIP_SIGNATURE"] = "true"
    keys = s3.static_keys()
    if keys:
        opts["AWS_ACCESS_KEY_ID"] = keys["access_key_id"]
        opts["AWS_SECRET_ACCESS_KEY"] = keys["secret_access_key"]
        if "session_token" in keys:
            opts["AWS_SESSION_TOKEN"] = keys["session_token"]
    return opts


def _table(loc: Location, name: str) -> Any | None:
    from deltalake import DeltaTable

    # existence through the output layer: deltalake's is_deltatable keeps the GIL while it
    # waits on the network (a deadlock with an S3 server in the same process, as in tests)
    if not loc.list(f"{name}/_delta_log"):
        return None
    return DeltaTable(table_uri(loc, name), storage_options=storage_options(loc))


def exists(loc: Location, name: str) -> bool:
    return _table(loc, name) is not None


def read(loc: Location, name: str, *, columns: list[str] | None = None,
         version: int | None = None) -> pa.Table | None:
    """The table's current (or ``version``) rows; ``None`` when it does not exist."""
    table = _table(loc, name)
    if table is None:
        return None
    if version is not None:
        table.load_as_version(version)
    schema_names = set(table.schema().to_arrow().names) if columns else set()
    cols = [c for c in columns if c in schema_names] if columns else None
    return table.to_pyarrow_table(columns=cols, filesystem=_arrow_filesystem(loc, name))


def _arrow_filesystem(loc: Location, name: str) -> Any:
    """A native Arrow filesystem rooted at the table, for reading its data files.

    Not deltalake's default (a Python filesystem): Arrow's threads release the scan's
    buffers after ``to_pyarrow_table`` returns, and a buffer of a Python filesystem needs
    the GIL; when that happens while the interpreter finalises, the thread exits inside a
    C++ destructor and the process aborts ("terminate called without an active
    exception", rc 134: seen in ``pqb plan`` under load). Native buffers need no GIL.
    """
    import pyarrow.fs as pa_fs

    if loc.is_local:
        return pa_fs.SubTreeFileSystem(str(loc.local_path / name), pa_fs.LocalFileSystem())
    s3 = loc.profile.s3.resolved()
    keys = s3.static_keys()
    scheme, endpoint = "https", None
    if s3.endpoint_url:
        scheme, _, endpoint = s3.endpoint_url.rpartition("://")
        scheme = scheme or "https"
    fs = pa_fs.S3FileSystem(access_key=keys.get("access_key_id"),
                            secret_key=keys.get("secret_access_key"),
                            session_token=keys.get("session_token"),
                            anonymous=s3.anonymous, region=s3.region, scheme=scheme,
                            endpoint_override=endpoint,
                            force_virtual_addressing=not s3.force_path_style)
    return pa_fs.SubTreeFileSystem(f"{loc.url[len('s3://'):]}/{name}", fs)


_ROW_GROUP = 131_072


def _commit(metadata: dict[str, Any] | None) -> Any:
    from deltalake import CommitProperties

    return CommitProperties(custom_metadata={k: str(v) for k, v in (metadata or {}).items()})


def _write(loc: Location, name: str, data: pa.Table | pa.RecordBatchReader, mode: str, *,
           metadata: dict[str, Any] | None) -> None:
    from deltalake import WriterProperties, write_deltalake

    # row groups of 128 Ki rows: the writer buffers one row group per file in memory
    # (the default of 1 Mi rows held ~230 MB more for a 1,200,000-row commit)
    props = WriterProperties(max_row_group_size=_ROW_GROUP)
    try:
        write_deltalake(table_uri(loc, name), data, mode=mode, schema_mode="merge" if mode == "append"
                        else "overwrite", storage_options=storage_options(loc),
                        commit_properties=_commit(metadata), writer_properties=props)
    except Exception as exc:
        raise OutputError(f"cannot write table {loc.display(name)}: {_head(exc)}",
                          path=loc.display(name)) from None


def _head(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def append(loc: Location, name: str, data: pa.Table | pa.RecordBatchReader, *,
           metadata: dict[str, Any] | None = None) -> None:
    """Append ``data`` (a table, or a stream of batches: never all in memory) in one
    commit."""
    _write(loc, name, data, "append", metadata=metadata)


def overwrite(loc: Location, name: str, data: pa.Table | pa.RecordBatchReader, *,
              metadata: dict[str, Any] | None = None) -> None:
    """Replace the table's rows (and schema) with ``data`` in one commit (the previous
    versions stay readable)."""
    _write(loc, name, data, "overwrite", metadata=metadata)


def merge_rows(loc: Location, name: str, data: pa.Table, keys: list[str], *,
               metadata: dict[str, Any] | None = None) -> None:
    """Upsert ``data`` on ``keys`` in one commit: matching rows replaced, others inserted."""
    table = _table(loc, name)
    if table is None:
        _write(loc, name, data, "append", metadata=metadata)
        return
    predicate = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    try:
        (table.merge(data, predicate=predicate, source_alias="s", target_alias="t",
                     commit_properties=_commit(metadata))
         .when_matched_update_all().when_not_matched_insert_all().execute())
    except Exception as exc:
        raise OutputError(f"cannot update table {loc.display(name)}: {_head(exc)}",
                          path=loc.display(name)) from None
