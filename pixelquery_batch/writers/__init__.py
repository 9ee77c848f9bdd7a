"""Writers: atomic, idempotent outputs (Parquet/CSV tables, JSON manifests)."""

from .files import atomic_write_bytes, atomic_write_json
from .tables import RunOutputs, TableWriter

__all__ = ["RunOutputs", "TableWriter", "atomic_write_bytes", "atomic_write_json"]
