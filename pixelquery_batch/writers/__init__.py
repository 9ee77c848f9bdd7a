"""Writers: atomic, idempotent outputs (Parquet/CSV tables, JSON manifests)."""

from .files import atomic_write_bytes, atomic_write_json
from .tables import TableWriter

__all__ = ["TableWriter", "atomic_write_bytes", "atomic_write_json"]
