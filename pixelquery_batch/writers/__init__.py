"""Writers: atomic, idempotent outputs (Parquet/CSV tables, JSON manifests, COGs), all
through the output layer (:mod:`pixelquery_batch.storage`)."""

from .files import json_bytes
from .tables import RunOutputs, TableWriter, parquet_bytes, read_parquet_prefix

__all__ = ["RunOutputs", "TableWriter", "json_bytes",
           "parquet_bytes", "read_parquet_prefix"]
