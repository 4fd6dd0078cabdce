"""The reasoning-gym rewards on the real package: each task's own verifier through the path the modules use, the
flexible extraction, unscored rows, and a missing package."""

from __future__ import annotations

import json
import sys

import pytest

from lightning_rlhf.data import load_records
from lightning_rlhf.rewards import RewardError, final_answer, resolve_reward_function
from lightning_rlhf.rewards.combined import RewardSources
from lightning_rlhf.rewards.reasoning_gym import import_reasoning_gym

# (source, a wrong answer from the right one)
TASKS = [
    ("reasoning_gym:spell_backward?min_word_len=4&max_word_len=4&size=4&seed=0", lambda a: a[::-1]),
    ("reasoning_gym:lcm?size=4&seed=0", lambda a: str(int(a) + 1)),
    ("reasoning_gym:gcd?size=4&seed=0", lambda a: str(int(a) * 3 + 1)),
    ('reasoning_gym:basic_arithmetic?min_terms=2&max_terms=3&max_digits=2&operators=["+","-"]&size=4&seed=0',
     lambda a: str(int(a) - 7)),
]


def _batch(source: str) -> tuple[list[str], dict[str, list]]:
    records, _ = load_records(source)
    rows = [json.loads(r["columns"]) for r in records]
    return [r["prompt"] for r in records], {name: [row[name] for row in rows] for name in rows[0]}


@pytest.mark.parametrize(("source", "wrong"), TASKS, ids=[s.split(":")[1].split("?")[0] for s, _ in TASKS])
def test_the_tasks_own_verifier_scores_right_answers_1_and_wrong_ones_lower(source, wrong):
    prompts, columns = _batch(source)
    answers = columns["answer"]
    rewards = RewardSources(["reasoning_gym_score"])
    right = rewards.score(prompts, [f" {a}\n" for a in answers], columns)
    assert right.per_source["reasoning_gym_score"].tolist() == [1.0] * len(answers) and right.num_unscored == 0
    bad = [wrong(a) for a in answers]
    assert any(b != a for a, b in zip(answers, bad))
    scores = rewards.score(prompts, bad, columns).per_source["reasoning_gym_score"].tolist()
    assert all(0.0 <= s < 1.0 for s, a, b in zip(scores, answers, bad) if a != b)
    by_path = RewardSources(["lightning_rlhf.rewards.reasoning_gym:reasoning_gym_score"])
    assert by_path.score(prompts, answers, columns).total.tolist() == [1.0] * len(answers)


def test_the_verifier_reads_tuples_back_from_the_metadata():
    # rearc's verifier compares boards as tuples, which JSON writes as lists: the source tags them
    prompts, columns = _batch("reasoning_gym:rearc?size=2&seed=0")
    scores = RewardSources(["reasoning_gym_score"]).score(prompts, columns["answer"], columns)
    assert scores.total.tolist() == [1.0, 1.0]


def test_the_flexible_variant_reads_the_final_answer_and_the_strict_one_the_whole_text():
    prompts, columns = _batch("reasoning_gym:lcm?size=4&seed=0")
    forms = ["Working it out.\n<answer>{}</answer>", "so \\boxed{{{}}}", "steps #### {}", "Some steps.\n{}\n"]
    completions = [form.format(a) for form, a in zip(forms, columns["answer"])]
    scores = RewardSources(["reasoning_gym_score", "reasoning_gym_score_flexible"]).score(prompts, completions,
                                                                                            columns)
    assert scores.per_source["reasoning_gym_score_flexible"].tolist() == [1.0] * 4
    assert all(s < 1.0 for s in scores.per_source["reasoning_gym_score"].tolist())


@pytest.mark.parametrize(("text", "answer"), [
    ("<answer> 1 </answer> then <answer>2</answer>", "2"),
    ("x \\boxed{\\frac{1}{2}} y", "\\frac{1}{2}"),
    ("a #### b #### 42 ", "42"),
    ("first\n\n  last line  \n\n", "last line"),
    ("The final answer is: dud", "dud"),  # how SmolLM2-135M-Instruct answers, untrained
    ('The answer is: "no."', "no"),
    ("The final answer is 1.", "1"),
    ("Reasoning first.\nSo the ANSWER IS **42**", "42"),
    ("", ""),
])
def test_final_answer(text, answer):
    assert final_answer(text) == answer


@pytest.mark.parametrize(("text", "reference", "answer"), [
    ("7 * 8 = 56", "56", "56"),  # how SmolLM2 answers products after training: the equation alone
    ("1. 4 * 1 = 4\n\nThe answer is ", "4", "4"),
    ("7 * 8 = 56\n\nThe final answer is 5", "56", "5"),  # a stated answer is read as stated, right or wrong
    ("5 - 9 = -4", "-4", "-4"),
    ("x = 2.50 so", "2.5", "2.50"),
    ("no digits here", "3", "no digits here"),
    ("all 3 say: Yes", "Yes", "all 3 say: Yes"),  # a word answer keeps the last line
])
def test_final_answer_reads_the_last_number_where_the_reference_is_a_number(text, reference, answer):
    assert final_answer(text, reference) == answer


def test_the_flexible_verifier_scores_an_equation_by_its_result():
    prompts, columns = _batch("reasoning_gym:products?min_terms=2&max_terms=2&min_digits=1&max_digits=1&size=3&seed=0")
    worked = [f"{q.split(': ')[-1].split('.')[0]} = {a}" for q, a in zip(columns["question"], columns["answer"])]
    scores = RewardSources(["reasoning_gym_score", "reasoning_gym_score_flexible"]).score(prompts, worked, columns)
    assert scores.per_source["reasoning_gym_score_flexible"].tolist() == [1.0] * 3
    assert all(s < 1.0 for s in scores.per_source["reasoning_gym_score"].tolist())  # partial credit at most


def test_rows_without_the_reasoning_gym_columns_are_unscored_and_counted():
    prompts, columns = _batch("reasoning_gym:gcd?size=2&seed=0")
    mixed = {name: values + [None] for name, values in columns.items()}
    scores = RewardSources(["reasoning_gym_score"]).score(prompts + ["2+2="], columns["answer"] + ["4"], mixed)
    assert scores.per_source["reasoning_gym_score"].tolist()[:2] == [1.0, 1.0]
    assert scores.num_unscored == 1 and scores.total[2].isnan()
    only_answer = RewardSources(["reasoning_gym_score"]).score(["2+2="], ["4"], {"answer": ["4"]})
    assert only_answer.num_unscored == 1


def test_a_task_column_that_is_not_a_reasoning_gym_task_fails_naming_the_row():
    with pytest.raises(RewardError, match=r"reasoning_gym_score.*'addition', which is not a reasoning-gym task.*row 0"):
        RewardSources(["reasoning_gym_score"]).score(["2+2="], ["4"], {"task": ["addition"], "metadata": ["{}"]})


def test_without_the_package_the_reward_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    message = r"pip install 'lightning-rlhf\[reasoning-gym\]'"
    with pytest.raises(ImportError, match=r"reward function .*reasoning_gym_score.* not installed; " + message):
        resolve_reward_function("reasoning_gym_score")
    with pytest.raises(ImportError, match=message):
        RewardSources(["reasoning_gym_score_flexible"])
    with pytest.raises(ImportError, match=message):
        import_reasoning_gym()


def test_a_verifier_that_raises_on_an_answer_scores_it_0_unless_it_also_rejects_the_records_own_answer():
    # prime_factorization's verifier raises ValueError on text that is no factorisation
    prompts, columns = _batch("reasoning_gym:prime_factorization?size=2&seed=0")
    rewards = RewardSources(["reasoning_gym_score"])
    assert rewards.score(prompts, ["}{ not a product", columns["answer"][1]], columns).total.tolist() == [0.0, 1.0]
    broken = {**columns, "answer": ["}{ also not one"] * 2}
    with pytest.raises(RewardError, match=r"reasoning_gym_score.*ValueError.*row 0"):
        rewards.score(prompts, ["}{ not a product"] * 2, broken)
