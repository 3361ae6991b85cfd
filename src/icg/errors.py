"""User-facing errors: what went wrong, where, and what was expected.

The CLI prints these as one line without a traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class ICGError(ValueError):
    """Base class for errors caused by the user's input, not by ICG."""


class DataError(ICGError):
    """A data file or folder is missing, empty or not in the expected layout."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        column: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.column = column
        self.expected = expected
        parts = [f"{self.path}: " if self.path is not None else "", message]
        if column is not None:
            parts.append(f" (column '{column}')")
        if expected is not None:
            parts.append(f"; expected {expected}")
        super().__init__("".join(parts))
