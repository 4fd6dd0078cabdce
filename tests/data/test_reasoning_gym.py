"""The ``reasoning_gym:`` data source on the real package: settings reach the task, records carry the verifier's
columns, bad task names and settings are named, and a missing package says how to install it."""

from __future__ import annotations

import json
import sys

import pytest

from lightning_rlhf.data import RecordError, load_records
from lightning_rlhf.data.reasoning_gym import parse_source

SPELL = "reasoning_gym:spell_backward?min_word_len=3&max_word_len=3&size=12&seed=0"


def _columns(records: list[dict]) -> list[dict]:
    return [json.loads(r["columns"]) for r in records]


def test_settings_size_and_seed_reach_the_task():
    records, report = load_records(SPELL)
    assert (report.format, report.rows, report.kept, len(records)) == ("reasoning_gym", 12, 12, 12)
    for record, columns in zip(records, _columns(records)):
        word = json.loads(columns["metadata"])["word"]
        assert len(word) == 3 and columns["answer"] == word[::-1]
        assert record["prompt"] == f"{columns['question']} Give only the final answer."
        assert record["response"] is record["chosen"] is record["rejected"] is None
    assert [r["record"] for r in records] == list(range(1, 13)) and records[0]["source"] == SPELL
    assert load_records(SPELL)[0] == records  # same seed, same records
    other = load_records(SPELL.replace("seed=0", "seed=1"))[0]
    assert [r["prompt"] for r in other] != [r["prompt"] for r in records]


def test_records_carry_what_the_verifier_needs():
    columns = _columns(load_records("reasoning_gym:lcm?size=3&seed=0&max_value=20")[0])
    for row in columns:
        assert set(row) == {"answer", "question", "task", "metadata", "task_config"}
        assert row["task"] == "lcm" and json.loads(row["task_config"]) == {"max_value": 20}
        metadata = json.loads(row["metadata"])
        assert metadata["source_dataset"] == "lcm" and str(metadata["result"]) == row["answer"]
        assert all(n <= 20 for n in metadata["numbers"])


def test_values_are_json_where_they_parse_and_text_otherwise():
    parsed = parse_source('reasoning_gym:basic_arithmetic?min_terms=2&max_terms=2&operators=["+"]'
                          '&allow_parentheses=false&format_style=simple&seed=4')
    assert parsed.task == "basic_arithmetic" and parsed.instruction == "Give only the final answer."
    assert parsed.settings == {"min_terms": 2, "max_terms": 2, "operators": ["+"], "allow_parentheses": False,
                               "format_style": "simple", "seed": 4, "size": 500}
    assert parse_source("reasoning_gym:lcm?x=%22007%22&y=a%26b&z=1.5").settings == {
        "x": "007", "y": "a&b", "z": 1.5, "size": 500, "seed": 0}
    records, _ = load_records('reasoning_gym:basic_arithmetic?min_terms=2&max_terms=2&operators=["+"]'
                              "&allow_negation=false&size=5")
    for row in _columns(records):
        assert "+" in row["question"] and not any(op in row["question"] for op in "*/")


def test_the_instruction_is_replaced_or_dropped():
    records, _ = load_records("reasoning_gym:gcd?size=2&instruction=Answer%20with%20a%20number.")
    assert all(r["prompt"] == f"{c['question']} Answer with a number." for r, c in zip(records, _columns(records)))
    bare, _ = load_records("reasoning_gym:gcd?size=2&instruction=")
    assert [r["prompt"] for r in bare] == [c["question"] for c in _columns(bare)]


def test_a_composite_mixes_tasks_and_names_each_rows_own_task():
    records, _ = load_records("reasoning_gym:composite?datasets=lcm,gcd&size=12&seed=3")
    tasks = [row["task"] for row in _columns(records)]
    assert set(tasks) == {"lcm", "gcd"}
    spec = ('reasoning_gym:composite?size=6&datasets=[{"name": "spell_backward", "weight": 3, '
            '"config": {"min_word_len": 4, "max_word_len": 4}}, "lcm"]')
    for row in _columns(load_records(spec)[0]):
        if row["task"] == "spell_backward":
            assert len(row["answer"]) == 4 and json.loads(row["task_config"]) == {"max_word_len": 4,
                                                                                   "min_word_len": 4}


@pytest.mark.parametrize(("source", "words"), [
    ("reasoning_gym:spel_backward", ["unknown reasoning-gym task 'spel_backward'", "did you mean spell_backward",
                                     "the tasks are:", "basic_arithmetic"]),
    ("reasoning_gym:spell_backward?colour=red", ["rejected the settings of 'spell_backward'", "colour",
                                                 "'min_word_len'"]),
    ("reasoning_gym:spell_backward?min_word_len=5&max_word_len=3", ["rejected", "max_word_len must be >= "]),
    ("reasoning_gym:lcm?size=0", ["size must be an integer >= 1"]),
    ("reasoning_gym:lcm?seed=x", ["seed must be an integer >= 0"]),
    ("reasoning_gym:lcm?size", ["'size' is not key=value"]),
    ("reasoning_gym:lcm?seed=1&seed=2", ["'seed' is given twice"]),
    ("reasoning_gym:", ["names no task"]),
    ("reasoning_gym:composite?size=3", ["composite needs datasets="]),
    ("reasoning_gym:composite?datasets=lcm,nope", ["unknown reasoning-gym task 'nope'"]),
])
def test_bad_sources_are_named_with_what_to_do(source, words):
    with pytest.raises(RecordError) as info:
        load_records(source)
    message = str(info.value)
    assert message.startswith(source + ":") and info.value.source == source
    for word in words:
        assert word in message


def test_without_the_package_the_source_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(ImportError, match=r"reasoning_gym:lcm.*pip install 'lightning-rlhf\[reasoning-gym\]'"):
        load_records("reasoning_gym:lcm?size=2")
