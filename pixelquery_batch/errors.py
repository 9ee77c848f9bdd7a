"""Exception hierarchy, error codes and warnings (bottom layer: stdlib only).

Errors are grouped by what a caller would do about them. Every error carries a
stable :class:`ErrorCode`, an optional ``hint`` (what to do next) and context
attributes (``path``, ``field_id``, ``scene_id`` ...), so the CLI can map them to exit
codes and machines can read them from JSON logs.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "CatalogError",
    "ConfigError",
    "ErrorCode",
    "ExpressionError",
    "InputDataError",
    "OutputError",
    "PixelQueryError",
    "PixelQueryWarning",
    "PlanError",
    "RepositoryError",
    "SceneNotFoundError",
    "SpecError",
    "StorageError",
    "TaskError",
    "UnsupportedFileWarning",
    "exit_code_for",
]


class ErrorCode(enum.IntEnum):
    """Stable, append-only error codes (never renumber)."""

    UNKNOWN = 1
    SPEC = 10
    EXPRESSION = 11
    CONFIG = 20
    INPUT_DATA = 30
    CATALOG = 40
    SCENE_NOT_FOUND = 41
    REPOSITORY = 42
    STORAGE = 50
    PLAN = 60
    TASK = 70
    OUTPUT = 80


class PixelQueryError(Exception):
    """Root of every error raised by pixelquery_batch.

    Parameters
    ----------
    message
        What failed and where.
    hint
        What to do next (appended to ``str(err)``).
    **context
        Structured context (``path``, ``field_id``, ``scene_id``, ...), kept as attributes
        and in :attr:`context`.
    """

    code: ErrorCode = ErrorCode.UNKNOWN

    def __init__(self, message: str, *, hint: str | None = None, **context: Any) -> None:
        self.message = message
        self.hint = hint
        self.context: dict[str, Any] = dict(context)
        for key, value in context.items():
            setattr(self, key, value)
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view: error class, code, message, hint and context."""
        return {
            "error": type(self).__name__,
            "code": int(self.code),
            "message": self.message,
            "hint": self.hint,
            **{k: (v if isinstance(v, str | int | float | bool | None) else str(v))
               for k, v in self.context.items()},
        }


class SpecError(PixelQueryError, ValueError):
    """A job spec (or CLI argument) is malformed: names the file, line and key path."""

    code = ErrorCode.SPEC


class ExpressionError(SpecError):
    """Band math that is rejected (syntax outside the allowlist, unknown band)."""

    code = ErrorCode.EXPRESSION


class ConfigError(PixelQueryError, ValueError):
    """A storage, cluster or product profile is missing or invalid."""

    code = ErrorCode.CONFIG


class InputDataError(PixelQueryError):
    """An input file is unusable: unreadable COG, bad fields file, bad geometry."""

    code = ErrorCode.INPUT_DATA


class CatalogError(PixelQueryError):
    """The scene catalog cannot answer (corrupt table, bad query)."""

    code = ErrorCode.CATALOG


class SceneNotFoundError(CatalogError, KeyError):
    """A scene id is not in the catalog at the requested snapshot."""

    code = ErrorCode.SCENE_NOT_FOUND

    def __str__(self) -> str:  # KeyError would repr() the message
        return PixelQueryError.__str__(self)


class RepositoryError(CatalogError):
    """The repository path is not a pixelquery repository, or cannot be written."""

    code = ErrorCode.REPOSITORY


class StorageError(PixelQueryError):
    """Object store or Icechunk I/O failed; often transient, so retryable."""

    code = ErrorCode.STORAGE


class PlanError(PixelQueryError):
    """A job cannot be planned (no overlap, plan too large)."""

    code = ErrorCode.PLAN


class TaskError(PixelQueryError):
    """A work unit failed on a worker; carries ``unit_id``, ``field_id``, ``scene_id``."""

    code = ErrorCode.TASK


class OutputError(PixelQueryError):
    """An output could not be written (permissions, destination conflict)."""

    code = ErrorCode.OUTPUT


class PixelQueryWarning(UserWarning):
    """Base class of non-fatal conditions worth telling the user about."""


class UnsupportedFileWarning(PixelQueryWarning):
    """A file was skipped because it cannot be served as virtual references."""


#: CLI exit codes per error class (most specific first). 0 = success, 1 = partial failure.
_EXIT_CODES: tuple[tuple[type[PixelQueryError], int], ...] = (
    (SpecError, 2),
    (ConfigError, 2),
    (InputDataError, 3),
    (SceneNotFoundError, 4),
    (CatalogError, 4),
    (StorageError, 5),
    (PlanError, 6),
    (TaskError, 7),
    (OutputError, 8),
)


def exit_code_for(err: BaseException) -> int:
    """Exit code for an error raised to the CLI (unknown errors give 70)."""
    for cls, code in _EXIT_CODES:
        if isinstance(err, cls):
            return code
    return 70
