"""Record validation: errors that name the file, the record number and the field; counted skips.

Why here and not in each adapter: every source format ends in the same normalised record (``prompt``,
``response``, ``chosen``, ``rejected``), so the checks and the wording of their errors live in one place.
Nothing bad vanishes silently: with ``on_bad_record="error"`` the first bad record raises
:class:`RecordError`; with ``"skip"`` it is dropped and counted by reason in a :class:`DropCounter`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal, Mapping

OnBadRecord = Literal["error", "skip"]

#: The fields of a normalised record. ``chosen``/``rejected`` are ``None`` for SFT-only data.
RECORD_FIELDS = ("prompt", "response", "chosen", "rejected")


class FieldError(ValueError):
    """A problem with one field of one record, raised by adapters before the file and record are known.

    Args:
        field: the offending field (as named in the source, e.g. ``chosen``).
        problem: what is wrong, e.g. ``"missing"`` or ``"empty string"``.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field!r}: {problem}")
        self.field = field
        self.problem = problem


class RecordError(ValueError):
    """A bad record in a data source; the message names the file, the record number and the field.

    Args:
        source: the file, folder or hub name the record came from.
        record: 1-based record number in that source (the line number for json lines files).
        field: the offending field, or ``None`` when the record as a whole is broken (bad JSON).
        problem: what is wrong.
    """

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
        """A short, stable description used as the key when skipped records are counted."""
        return f"{self.field}: {self.problem}" if self.field else self.problem


def require_text(row: Mapping[str, Any], field: str) -> str:
    """Return ``row[field]`` if it is a non-blank string, else raise :class:`FieldError`.

    Args:
        row: one raw record.
        field: the field to read.
    """
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
    """Counts records dropped by reason, so every dropped record is accounted for in the logs.

    Args:
        on_bad_record: ``"error"`` raises the first :class:`RecordError`; ``"skip"`` counts it.
    """

    def __init__(self, on_bad_record: OnBadRecord = "error") -> None:
        if on_bad_record not in ("error", "skip"):
            raise ValueError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
        self.on_bad_record = on_bad_record
        self.counts: Counter[str] = Counter()

    def bad(self, error: RecordError) -> None:
        """Raise ``error`` or count it, following ``on_bad_record``."""
        if self.on_bad_record == "error":
            raise error
        self.counts[error.reason] += 1

    @property
    def total(self) -> int:
        """How many records were dropped."""
        return sum(self.counts.values())
