"""Sources and adapters: every file type loads, and every bad record is named (file, record, field)."""

from __future__ import annotations

import gzip
import json

import pytest

from lightning_rlhf.data import RecordError, available_formats, load_records, register_adapter, require_text
from tests.data.conftest import write_jsonl

GOOD = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}

# (case id, format, bad row written as record 3 after two good rows, field named, words in the problem)
MALFORMED = [
    ("missing field", "pairs", {"prompt": "p", "chosen": "c"}, "rejected", "missing"),
    ("null field", "auto", {"prompt": "p", "chosen": None, "rejected": "r"}, "chosen", "missing"),
    ("wrong type", "pairs", {"prompt": 3, "chosen": "c", "rejected": "r"}, "prompt", "expected a string, got int"),
    ("list type", "pairs", {"prompt": "p", "chosen": ["c"], "rejected": "r"}, "chosen", "got list"),
    ("empty string", "pairs", {"prompt": "p", "chosen": "c", "rejected": ""}, "rejected", "empty string"),
    ("blank string", "pairs", {"prompt": "  \n", "chosen": "c", "rejected": "r"}, "prompt", "empty string"),
    ("undecodable bytes", "pairs", b'{"prompt": "p", "chosen": "caf\xe9", "rejected": "r"}', "chosen", "undecodable"),
    ("sft missing response", "sft", {"prompt": "p", "reply": "x"}, "response", "missing"),
    ("rm_static missing response", "rm_static", {"prompt": "p", "chosen": "c", "rejected": "r"}, "response", "missing"),
    ("hh no shared turn", "hh_rlhf", {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "other"}, "chosen",
     "no shared"),
    ("hh empty response", "hh_rlhf",
     {"chosen": "\n\nHuman: a\n\nAssistant: ", "rejected": "\n\nHuman: a\n\nAssistant: b"}, "chosen", "empty response"),
    ("hh run-on turn", "hh_rlhf",
     {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: Human: c"}, "rejected",
     "further dialogue turn"),
    ("invalid json", "pairs", b'{"prompt": "p", "chosen": ', None, "invalid JSON"),
    ("not an object", "pairs", b'["p", "c", "r"]', None, "expected a JSON object"),
]


def _good_rows(fmt: str) -> list[dict]:
    if fmt == "sft":
        return [{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2"}]
    if fmt == "rm_static":
        return [{**GOOD, "response": "4"}] * 2
    if fmt == "hh_rlhf":
        return [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}] * 2
    return [GOOD, GOOD]


@pytest.mark.parametrize(("fmt", "bad", "field", "problem"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_record_error_names_file_record_and_field(tmp_path, fmt, bad, field, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", _good_rows(fmt) + [bad, GOOD])
    with pytest.raises(RecordError) as info:
        load_records(str(path), fmt)
    err, message = info.value, str(info.value)
    assert (err.source, err.record, err.field) == (str(path), 3, field)
    assert str(path) in message and "record 3" in message and problem in message
    if field is not None:
        assert f"field {field!r}" in message


@pytest.mark.parametrize(("fmt", "bad", "field", "problem"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_skip_drops_and_counts_each_bad_record(tmp_path, fmt, bad, field, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", _good_rows(fmt) + [bad, bad])
    records, report = load_records(str(path), fmt, on_bad_record="skip")
    assert (report.rows, report.kept, len(records)) == (4, 2, 2)
    assert sum(report.dropped.values()) == 2 and len(report.dropped) == 1
    reason = next(iter(report.dropped))
    assert problem in reason and (field is None or reason.startswith(f"{field}:"))
    assert [r["record"] for r in records] == [1, 2]


def test_bad_rows_in_parquet_and_csv_are_numbered(tmp_path):
    import datasets

    rows = [GOOD, GOOD, {"prompt": "p", "chosen": "c", "rejected": ""}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "d.csv"), index=False)
    for name in ("d.parquet", "d.csv"):
        with pytest.raises(RecordError, match=r"record 3, field 'rejected'") as info:
            load_records(str(tmp_path / name), cache_dir=str(tmp_path / "cache"))
        assert name in str(info.value)


def test_missing_file_and_unknown_format_are_named(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(RecordError, match="nope.jsonl: file does not exist"):
        load_records(missing)
    path = write_jsonl(tmp_path / "ok.jsonl", [GOOD])
    with pytest.raises(RecordError, match=r"ok.jsonl: unknown format 'alpaca'"):
        load_records(str(path), "alpaca")
    with pytest.raises(RecordError, match=r"record 1: cannot detect the format from fields \['answer', 'question'\]"):
        load_records(str(write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "a"}])))
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(RecordError, match="data.txt: unsupported file type"):
        load_records(str(tmp_path / "data.txt"))


def test_every_file_type_loads_the_same_records(tmp_path):
    import datasets

    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(5)]
    table = datasets.Dataset.from_list(rows)
    write_jsonl(tmp_path / "a.jsonl", rows)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows}))
    table.to_parquet(str(tmp_path / "a.parquet"))
    table.to_csv(str(tmp_path / "a.csv"), index=False)
    table.save_to_disk(str(tmp_path / "saved"))
    expected = [{"prompt": r["prompt"], "response": r["chosen"], "chosen": r["chosen"], "rejected": r["rejected"]}
                for r in rows]
    for name in ("a.jsonl", "a.jsonl.gz", "a.json", "wrapped.json", "a.parquet", "a.csv", "saved"):
        records, report = load_records(str(tmp_path / name), cache_dir=str(tmp_path / "cache"))
        assert report.format == "pairs", name
        assert [{k: r[k] for k in expected[0]} for r in records] == expected, name
        assert [r["record"] for r in records] == [1, 2, 3, 4, 5], name


def test_detection_prefers_the_most_specific_format(tmp_path):
    cases = {
        "rm_static": {"prompt": "p", "response": "a", "chosen": "a", "rejected": "b"},
        "pairs": {"prompt": "p", "chosen": "a", "rejected": "b"},
        "hh_rlhf": {"chosen": "\n\nHuman: p\n\nAssistant: a", "rejected": "\n\nHuman: p\n\nAssistant: b"},
        "sft": {"prompt": "p", "response": "a"},
    }
    for expected, row in cases.items():
        records, report = load_records(str(write_jsonl(tmp_path / f"{expected}.jsonl", [row])))
        assert report.format == expected
    assert records[0]["chosen"] is None and records[0]["response"] == "a"


def test_registered_adapter_is_used_and_detected(tmp_path):
    def convert(row):
        return {"prompt": require_text(row, "question"), "response": require_text(row, "answer"),
                "chosen": None, "rejected": None}

    register_adapter("qa_test", convert, lambda row: "question" in row, overwrite=True)
    assert "qa_test" in available_formats()
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}, {"question": "q2", "answer": ""}])
    records, report = load_records(str(path), on_bad_record="skip")
    assert report.format == "qa_test" and records[0]["prompt"] == "q"
    assert report.dropped == {"answer: empty string": 1}
    with pytest.raises(ValueError, match="already registered"):
        register_adapter("qa_test", convert)
