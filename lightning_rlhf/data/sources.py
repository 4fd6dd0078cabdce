"""Sources: read raw rows from local files, saved ``datasets`` folders or hub names, then adapt them.

JSON lines and CSV are read row by row here, not by ``datasets``, so that a bad line gets an error naming the file
and line (or is skipped alone) and CSV cells stay text. Rows are numbered from 1 in file order.
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lightning_rlhf.data.adapters import Adapter, Record, detect_format, get_adapter
from lightning_rlhf.data.reasoning_gym import is_reasoning_gym_source, reasoning_gym_records
from lightning_rlhf.data.records import DropCounter, FieldError, OnBadRecord, RecordError

#: the file endings read as local data files
LOCAL_SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json", ".parquet", ".csv")


@dataclass
class SourceReport:
    """What became of one source's ``rows``: ``kept`` as records by the ``format`` adapter, or ``dropped`` by reason."""

    source: str
    format: str = ""
    rows: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


def _undecodable(raw: bytes, name: str, number: int, err: UnicodeDecodeError) -> RecordError:
    problem = f"undecodable bytes (invalid UTF-8 at byte {err.start} of the line)"
    try:
        row = json.loads(raw.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError:
        return RecordError(name, number, None, problem)
    if isinstance(row, dict):
        for key, value in row.items():
            if isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value):
                return RecordError(name, number, str(key), problem)
    return RecordError(name, number, None, problem)


def _json_lines(path: Path, name: str, bad: DropCounter) -> Iterator[tuple[int, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                bad.bad(_undecodable(raw, name, number, err))
                yield number, None
            except json.JSONDecodeError as err:
                bad.bad(RecordError(name, number, None, f"invalid JSON ({err.msg} at column {err.colno})"))
                yield number, None


def _json_document(path: Path, name: str, bad: DropCounter) -> Iterator[tuple[int, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecordError(name, None, None, f"undecodable bytes ({err.reason} at byte {err.start})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        yield from _json_lines(path, name, bad)  # a .json file holding JSON lines
        return
    if isinstance(document, dict) and len(document) == 1 and isinstance(next(iter(document.values())), list):
        document = next(iter(document.values()))  # {"data": [...]} / {"train": [...]}
    if not isinstance(document, list):
        raise RecordError(name, None, None, "expected a JSON list of records or JSON lines")
    yield from enumerate(document, start=1)


def _csv_rows(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    # read as text ourselves: pandas (behind datasets' CSV loader) turns "5" into 5 and "" into NaN
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            yield from enumerate(csv.DictReader(handle), start=1)
    except UnicodeDecodeError as err:
        raise RecordError(name, None, None, f"undecodable bytes (invalid UTF-8 at byte {err.start})") from None


def _datasets_rows(source: str, cache_dir: str | None) -> Iterator[tuple[int, Any]]:
    import datasets

    path = Path(source)
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
    elif path.name.endswith(".parquet"):
        loaded = datasets.Dataset.from_parquet(str(path), cache_dir=cache_dir)
    else:
        loaded = datasets.load_dataset(source, split="train", cache_dir=cache_dir)
    if isinstance(loaded, datasets.DatasetDict):
        loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
    yield from enumerate(loaded, start=1)


def iter_rows(source: str, bad: DropCounter, cache_dir: str | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(record_number, row)`` for every row of ``source``; ``row`` is ``None`` for skipped lines.

    Args:
        source: a local json, jsonl(.gz), parquet or csv file, a ``save_to_disk`` folder, or a hub data set name.
        bad: where unreadable rows are raised or counted.
        cache_dir: ``datasets`` cache for parquet/csv/hub sources.
    """
    path = Path(source)
    looks_local = path.name.endswith(LOCAL_SUFFIXES) or path.is_absolute() or source.startswith(".")
    if looks_local and not path.exists():
        raise RecordError(source, None, None, "file does not exist")
    if path.is_file() and path.name.endswith((".jsonl", ".jsonl.gz")):
        yield from _json_lines(path, source, bad)
    elif path.is_file() and path.name.endswith((".json", ".json.gz")):
        yield from _json_document(path, source, bad)
    elif path.is_file() and path.name.endswith(".csv"):
        yield from _csv_rows(path, source)
    elif path.is_file() and not path.name.endswith(".parquet"):
        raise RecordError(source, None, None, f"unsupported file type; use one of {list(LOCAL_SUFFIXES)}")
    else:
        yield from _datasets_rows(source, cache_dir)


def _resolve_adapter(fmt: str, row: dict, source: str, number: int) -> Adapter:
    if fmt != "auto":
        return get_adapter(fmt)
    adapter = detect_format(row)
    if adapter is None:
        keys = sorted(row)
        raise RecordError(source, number, None, f"cannot detect the format from fields {keys}; pass format=")
    return adapter


def load_records(
    source: str, fmt: str = "auto", on_bad_record: OnBadRecord = "error", cache_dir: str | None = None
) -> tuple[list[Record], SourceReport]:
    """Read and adapt every row of ``source``: the records (with their ``source`` and ``record`` number), a report.

    Args:
        source: see :func:`iter_rows`, or ``reasoning_gym:TASK?key=value&...`` (prompt-only records generated by
            reasoning-gym, whatever ``fmt``; docs/tasks.md).
        fmt: an adapter name, or ``"auto"`` to detect it from the first readable row.
        on_bad_record: ``"error"`` raises :class:`RecordError` at the first bad row; ``"skip"`` counts it.
        cache_dir: ``datasets`` cache for parquet/csv/hub sources.
    """
    if is_reasoning_gym_source(source):
        generated = [{**r, "source": source, "record": i} for i, r in enumerate(reasoning_gym_records(source), 1)]
        return generated, SourceReport(source, "reasoning_gym", len(generated), len(generated))
    if fmt != "auto":
        try:
            get_adapter(fmt)
        except ValueError as err:
            raise RecordError(source, None, None, str(err)) from None
    bad = DropCounter(on_bad_record)
    report = SourceReport(source)
    adapter: Adapter | None = None
    records: list[Record] = []
    for number, row in iter_rows(source, bad, cache_dir):
        report.rows += 1
        if row is None:
            continue
        if not isinstance(row, dict):
            bad.bad(RecordError(source, number, None, f"expected a JSON object, got {type(row).__name__}"))
            continue
        adapter = adapter or _resolve_adapter(fmt, row, source, number)
        try:
            record = adapter.convert(row)
        except FieldError as err:
            bad.bad(RecordError(source, number, err.field, err.problem))
            continue
        records.append({**record, "source": source, "record": number})
    if report.rows == 0:
        raise RecordError(source, None, None, "holds no records (an empty file or table); remove it from "
                                              "data.sources or write records into it")
    report.format = adapter.name if adapter else fmt
    report.kept, report.dropped = len(records), dict(bad.counts)
    return records, report
