"""Record validation in one place for every format: errors that name the file, the record number and the field,
and skips (``on_bad_record="skip"``) counted by reason, so that nothing bad vanishes silently.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal, Mapping

OnBadRecord = Literal["error", "skip"]

RECORD_FIELDS = ("prompt", "response", "chosen", "rejected")


class FieldError(ValueError):
    """A ``problem`` (e.g. ``"missing"``) with one ``field`` of a record, raised by adapters, which know no file."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field!r}: {problem}")
        self.field = field
        self.problem = problem


class RecordError(ValueError):
    """A bad record: the ``source``, the 1-based ``record`` number (a JSON lines file's line), the ``field`` (``None``:
    the whole record, e.g. bad JSON) and the ``problem``."""

    def __init__(self, source: str, record: int | None, field: str | None, problem: str) -> None:
        where = f"{source}" if record is None else f"{source}, record {record}"
        what = f", field {field!r}" if field is not None else ""
        super().__init__(f"{where}{what}: {problem}")
        self.source = source
        self.record = record
        self.field = field
        self.problem = problem

    @property
    def reason(self) -> str:
        """A short, stable key for counting skipped records."""
        return f"{self.field}: {self.problem}" if self.field else self.problem


def require_text(row: Mapping[str, Any], field: str) -> str:
    """``row[field]`` if it is a non-blank string (UTF-8 bytes decoded), else a :class:`FieldError`."""
    if field not in row or row[field] is None:
        raise FieldError(field, "missing")
    value = row[field]
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise FieldError(field, f"undecodable bytes ({err.reason} at byte {err.start})") from None
    if not isinstance(value, str):
        raise FieldError(field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise FieldError(field, "empty string")
    return value


class DropCounter:
    """Counts dropped records by reason; ``on_bad_record="error"`` raises the first :class:`RecordError` instead."""

    def __init__(self, on_bad_record: OnBadRecord = "error") -> None:
        if on_bad_record not in ("error", "skip"):
            raise ValueError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
        self.on_bad_record = on_bad_record
        self.counts: Counter[str] = Counter()

    def bad(self, error: RecordError) -> None:
        if self.on_bad_record == "error":
            raise error
        self.counts[error.reason] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())
