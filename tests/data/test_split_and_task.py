"""The stage split (deterministic, disjoint, covering) and the built-in synthetic task."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lightning_rlhf.data import SyntheticTask, default_task, parse_ratios, split_indices


@pytest.mark.parametrize("n", [0, 1, 7, 100, 1001])
@pytest.mark.parametrize("split", ["2,4,4", "1,0,0", "0.5, 0.25, 0.25", "3,3,4"])
def test_split_is_disjoint_covering_and_proportional(n, split):
    parts = split_indices(n, split, seed=3, eval_fraction=0.1)
    flat = [i for by_part in parts.values() for ids in by_part.values() for i in ids]
    assert sorted(flat) == list(range(n))  # disjoint and covering
    for stage, ratio in zip(("sft", "reward", "rl"), parse_ratios(split)):
        size = len(parts[stage]["train"]) + len(parts[stage]["eval"])
        assert abs(size - ratio * n) <= 1
        if size >= 2:
            assert len(parts[stage]["eval"]) >= 1 and len(parts[stage]["eval"]) <= 0.1 * size + 1


def test_split_is_deterministic_and_depends_on_seed_and_source():
    first = split_indices(500, "2,4,4", seed=7, eval_fraction=0.05)
    assert split_indices(500, "2,4,4", seed=7, eval_fraction=0.05) == first
    assert split_indices(500, "2,4,4", seed=8, eval_fraction=0.05) != first
    assert split_indices(500, "2,4,4", seed=7, eval_fraction=0.05, source_index=1) != first
    assert [len(first[s]["train"]) + len(first[s]["eval"]) for s in ("sft", "reward", "rl")] == [100, 200, 200]


@pytest.mark.parametrize("bad", ["2,4", "a,b,c", "0,0,0", "-1,2,2"])
def test_split_rejects_bad_ratios(bad):
    with pytest.raises(ValueError, match="split"):
        parse_ratios(bad)


def test_task_records_are_deterministic_and_well_formed():
    task = default_task()
    records = task.records(300)
    assert records == SyntheticTask().records(300) and records != SyntheticTask(seed=1).records(300)
    for r in records:
        assert task.check(r["prompt"], r["chosen"]) and not task.check(r["prompt"], r["rejected"])
        assert r["chosen"].startswith(" ") and r["rejected"].startswith(" ")


def test_task_demonstrations_are_mixed_quality_with_a_systematic_carry_mistake():
    task = SyntheticTask(easy_error_rate=0.2, hard_error_rate=0.6)
    records = task.records(20000)
    hard = [r for r in records if sum(task.operands(r["prompt"])) >= 10]
    easy = [r for r in records if sum(task.operands(r["prompt"])) < 10]
    easy_ok = sum(task.check(r["prompt"], r["response"]) for r in easy) / len(easy)
    hard_ok = sum(task.check(r["prompt"], r["response"]) for r in hard) / len(hard)
    assert abs(easy_ok - 0.8) < 0.02 and abs(hard_ok - 0.4) < 0.02
    # the carry mistake is the most common demonstration of a hard prompt, so imitation fails there
    for prompt in ("5+7=", "9+9="):
        counts = Counter(r["response"] for r in hard if r["prompt"] == prompt)
        assert counts.most_common(1)[0][0] == f" {sum(task.operands(prompt)) % 10}"
    overall = task.success_rate([r["prompt"] for r in records], [r["response"] for r in records])
    assert 0.55 < overall < 0.7


def test_check_and_success_rate_read_formatted_prompts():
    task = default_task()
    assert task.check("Human: 3+4= Assistant:", " 7") and task.check("3+4=", "7\n")
    assert not task.check("3+4=", " 7 7") and not task.check("3+4=", " 7 Human:") and not task.check("hello", " 7")
    assert task.success_rate(["1+1=", "2+2=", "9+9="], [" 2", " 5", " 18"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        task.success_rate(["1+1=", "2+2="], [" 2"])


def test_corpus_covers_every_prompt_and_answer(task_tokenizer):
    task = default_task()
    corpus = task.corpus()
    assert len({t.split(" Assistant:")[0] for t in corpus}) == len(task.prompts()) == 100
    # the tokenizer trained on it reads prompts in a handful of tokens, one per digit
    ids = task_tokenizer("Human: 9+8= Assistant: 17")["input_ids"]
    assert len(ids) <= 14 and task_tokenizer.unk_token_id not in ids


@pytest.mark.parametrize("operation, check", [("*", lambda a, b: a * b), ("-", lambda a, b: a - b)])
def test_a_sibling_operation_asks_in_the_same_words_and_answers_its_own_result(operation, check):
    task = SyntheticTask(style="chat", operation=operation)
    records = task.records(200)
    for record in records:
        a, b = task.operands(record["prompt"])
        assert record["prompt"] == f"What is {a} {operation} {b}? Answer with the number only."
        assert json.loads(record["columns"])["answer"] == str(check(a, b)) == record["chosen"].strip()
        assert task.check(record["prompt"], f" {check(a, b)} ") and not task.check(record["prompt"], record["rejected"])
    assert all(check(*task.operands(p)) >= 0 for p in task.prompts())  # differences are never negative
    with pytest.raises(ValueError, match="operation must be one of"):
        SyntheticTask(operation="/")


def test_the_tool_style_offers_the_calculator_and_demonstrates_a_right_call_on_two_digit_operands():
    task = SyntheticTask(style="tool", operation="*", min_operand=10, max_operand=99, hard_error_rate=1.0,
                         easy_error_rate=1.0)
    assert len(task.prompts()) == 90 * 90
    for record in task.records(50):
        a, b = task.operands(record["prompt"])
        assert 10 <= a <= 99 and 10 <= b <= 99 and "<tool>calc(EXPRESSION)</tool>" in record["prompt"]
        # demonstrations are right whatever the error rates (they teach the protocol, not mistakes)
        assert record["response"] == f"<tool>calc({a} * {b})</tool>\n<result>{a * b}</result>\n{a * b}"
        assert json.loads(record["columns"])["answer"] == str(a * b)
    with pytest.raises(ValueError, match="min_operand must be in \\[0, max_operand=9\\], got 10"):
        SyntheticTask(min_operand=10)
    with pytest.raises(ValueError, match="style must be 'plain', 'chat' or 'tool'"):
        SyntheticTask(style="json")  # type: ignore[arg-type]
