"""Resolving reward functions and combining their rewards, against plain-loop references; every error names
the function and the row."""

from __future__ import annotations

import math
import random

import pytest
import torch

from lightning_rlhf.rewards import (
    FormatReward,
    RemoteScorer,
    RewardError,
    answer_match,
    compute_rewards,
    resolve_reward_function,
    resolve_reward_functions,
)
from lightning_rlhf.rewards.combined import RewardSources

PROMPTS = ["What is 3 + 4?", "What is 1 + 1?", "What is 2 + 2?", "What is 5 + 0?"]
COMPLETIONS = ["7", "The answer is 2.", "5", "five"]


def score(specs, completions=COMPLETIONS, weights=None, **columns):
    functions, weights = resolve_reward_functions(specs, weights)
    return compute_rewards(functions, weights, PROMPTS[:len(completions)], completions, columns)


def test_import_paths_builtins_urls_and_callables_resolve():
    assert resolve_reward_function("tests.rewards.funcs:reward_len").name == "reward_len"
    assert resolve_reward_function("tests.rewards.funcs:reward_len").source == "tests.rewards.funcs:reward_len"
    builtin = resolve_reward_function("answer_match")
    assert builtin.function is answer_match and builtin.source == "lightning_rlhf.rewards.builtin:answer_match"
    remote = resolve_reward_function("http://127.0.0.1:9/score")
    assert isinstance(remote.function, RemoteScorer) and remote.source == "http://127.0.0.1:9/score"
    lam = resolve_reward_function(lambda prompts, completions, **kw: [0.0] * len(completions))
    assert lam.name == "<lambda>" and lam.source.startswith("tests.rewards.test_scoring:test_import_paths")
    custom = resolve_reward_function(FormatReward(r"\d+", name="digits"))
    assert custom.name == "digits"


@pytest.mark.parametrize("spec,message", [
    ("tests.rewards.nope:f", "cannot import module 'tests.rewards.nope'"),
    ("tests.rewards.funcs:missing", "has no attribute 'missing'"),
    ("tests.rewards.funcs:NOT_CALLABLE", "is a int, not a callable"),
    ("answer-match", "neither a built-in .*answer_match.* nor an import path"),
])
def test_bad_specs_fail_at_resolution_with_the_spec_named(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        resolve_reward_function(spec)
    assert repr(spec) in str(info.value)


def test_weights_are_checked_and_duplicate_names_kept_apart():
    with pytest.raises(ValueError, match="reward_weights has 1 entries for 2 reward_funcs"):
        resolve_reward_functions(["answer_match", "answer_match_shaped"], [1.0])
    with pytest.raises(ValueError, match="finite numbers"):
        resolve_reward_functions(["answer_match"], [float("nan")])
    with pytest.raises(TypeError, match="must be a list"):
        resolve_reward_functions("answer_match")
    functions, _ = resolve_reward_functions(["answer_match", "answer_match"])
    assert [f.name for f in functions] == ["answer_match", "answer_match_2"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_sum_skips_none_and_counts_it(seed):
    """Random rewards with random Nones from three functions: total = sum of w * r over the non-None ones."""
    rng = random.Random(seed)
    batch = 12
    table = [[None if rng.random() < 0.3 else rng.uniform(-2, 2) for _ in range(batch)] for _ in range(3)]
    table[0][5] = table[1][5] = table[2][5] = None  # a row no function scores
    weights = [rng.uniform(0.1, 2) for _ in range(3)]
    functions = [lambda prompts, completions, _c=column, **kw: list(_c) for column in table]
    resolved, weights = resolve_reward_functions(functions, weights)
    got = compute_rewards(resolved, weights, [f"p{i}" for i in range(batch)], [f"c{i}" for i in range(batch)])
    for row in range(batch):
        applied = [(w, col[row]) for w, col in zip(weights, table) if col[row] is not None]
        if applied:
            assert got.total[row].item() == pytest.approx(sum(w * r for w, r in applied), rel=1e-5, abs=1e-6)
        else:
            assert math.isnan(got.total[row].item())
        for column in range(3):
            value = table[column][row]
            assert math.isnan(got.per_function[row, column]) if value is None else \
                got.per_function[row, column].item() == pytest.approx(value, rel=1e-6)
    assert got.num_none == tuple(sum(v is None for v in col) for col in table)
    assert got.num_unscored == sum(all(col[r] is None for col in table) for r in range(batch))
    for name, column in zip(got.names, table):
        values = [v for v in column if v is not None]
        assert got.means()[name] == pytest.approx(sum(values) / len(values), rel=1e-5)


def test_trl_style_functions_run_unchanged():
    """TRL's styles: no prompts parameter, conversational completions, a column by name, completion_ids."""
    got = score(["tests.rewards.funcs:reward_len"], completions=["abc", "abcdefg"])
    assert got.total.tolist() == [-2.0, -2.0]
    chat = [[{"role": "assistant", "content": "\\boxed{7}"}], [{"role": "assistant", "content": "7"}]]
    assert score(["tests.rewards.funcs:boxed_format"], completions=chat).total.tolist() == [1.0, 0.0]
    got = score(["tests.rewards.funcs:solution_match"], completions=["7", " 2", "9"], solution=["7", "2", None])
    assert got.total[:2].tolist() == [1.0, 1.0] and math.isnan(got.total[2]) and got.num_none == (1,)
    functions, weights = resolve_reward_functions(["tests.rewards.funcs:ids_length"])
    got = compute_rewards(functions, weights, PROMPTS[:2], ["a", "b"], completion_ids=[[1, 2, 3], [4]])
    assert got.total.tolist() == [3.0, 1.0]


def test_a_raising_function_is_named_with_the_row_that_fails():
    with pytest.raises(RewardError, match=r"'tests.rewards.funcs:raises_on_seven' raised ValueError: cannot score "
                                          r"a seven on row 0 \(prompt 'What is 3 \+ 4\?'\)"):
        score(["tests.rewards.funcs:raises_on_seven"])
    with pytest.raises(RewardError, match="raises_on_pairs' raised RuntimeError.*the batch of 4 rows"):
        score(["tests.rewards.funcs:raises_on_pairs"])


@pytest.mark.parametrize("name,message", [
    ("wrong_length", "returned 3 rewards for 4 completions"),
    ("returns_nan", r"returned nan for row 2 \(prompt 'What is 2 \+ 2\?'\)"),
    ("returns_text", r"returned 'good' \(str\) for row 1 \(prompt 'What is 1 \+ 1\?'\); return a float or None"),
    ("returns_scalar", "returned a float; return a list"),
])
def test_bad_returns_are_named(name, message):
    with pytest.raises(RewardError, match=message) as info:
        score([f"tests.rewards.funcs:{name}"])
    assert f"tests.rewards.funcs:{name}" in str(info.value)


def test_tensor_returns_and_column_checks():
    tensor_fn = lambda prompts, completions, **kw: torch.arange(len(completions), dtype=torch.float32)  # noqa: E731
    assert score([tensor_fn]).total.tolist() == [0.0, 1.0, 2.0, 3.0]
    scalars_fn = lambda prompts, completions, **kw: [torch.tensor(0.5)] * len(completions)  # noqa: E731
    assert score([scalars_fn]).total.tolist() == [0.5] * 4
    with pytest.raises(ValueError, match="answer has 3 entries for a batch of 4 prompts"):
        score(["answer_match"], answer=["7", "2", "4"])
    with pytest.raises(ValueError, match="data column 'completion_ids' clashes"):
        score(["answer_match"], completion_ids=[[1]] * 4)


def ones(completions, **kwargs):
    return [1.0] * len(completions)


def twos(completions, **kwargs):
    return [2.0] * len(completions)


def test_a_reward_schedule_counts_each_function_from_its_start_iteration_and_still_logs_it():
    sources = RewardSources([ones, twos], [1.0, 0.5], reward_start_iterations=[0, 3])
    before, after = (sources.score(["p"] * 2, ["a", "b"], iteration=i) for i in (2, 3))
    assert before.total.tolist() == [1.0, 1.0] and after.total.tolist() == [2.0, 2.0]
    assert before.per_source["twos"].tolist() == [2.0, 2.0]  # computed and logged before its start
    assert sources.score(["p"], ["a"]).total.tolist() == [2.0]  # no iteration (validate alone): every weight


@pytest.mark.parametrize("starts,message", [
    ([0], "1 entries for 2 reward functions"), ([0, -1], r"integers >= 0, got \[-1\]"),
    ([0, 1.5], r"integers >= 0, got \[1.5\]"),
])
def test_a_bad_reward_schedule_fails_at_construction(starts, message):
    with pytest.raises(ValueError, match=message):
        RewardSources([ones, twos], reward_start_iterations=starts)


def _none_for_the_last(prompts, completions, **kwargs):
    return [1.0] * (len(completions) - 1) + [None]


def test_a_gated_reward_pays_the_format_only_with_the_answer_and_not_where_correctness_is_unknown():
    """The trap this closes: a format or length reward collected by wrong answers. With the gate every function
    after the first is scaled by the first clipped to [0, 1]; the logged per-function curves stay unscaled."""
    completions = ["7", "2", "The answer is 4.", "5"]  # right bare, wrong bare, right sentence, right bare
    answers = ["7", "1", "4", "5"]
    specs, weights = ["answer_match", "answer_only_format", "brevity"], [1.0, 1.0, 0.5]
    functions, weights = resolve_reward_functions(specs, weights)
    plain = compute_rewards(functions, weights, PROMPTS, completions, {"answer": answers})
    gated = compute_rewards(functions, weights, PROMPTS, completions, {"answer": answers}, gate_on_first=True)
    assert plain.total.tolist() == pytest.approx([2.5, 1.5, 1.125, 2.5])  # the wrong bare "2" beats nothing
    assert gated.total.tolist() == pytest.approx([2.5, 0.0, 1.125, 2.5])
    assert torch.equal(gated.per_function, plain.per_function)
    partial = compute_rewards(*resolve_reward_functions([lambda prompts, completions, **kw: [0.5, 2.0], twos]),
                              PROMPTS[:2], ["a", "b"], gate_on_first=True)
    assert partial.total.tolist() == [0.5 + 1.0, 2.0 + 2.0]  # scaled by clip(first, 0, 1)
    unknown = compute_rewards(*resolve_reward_functions([_none_for_the_last, twos]), PROMPTS[:2], ["a", "b"],
                              gate_on_first=True)
    assert unknown.total[0].item() == 3.0 and unknown.total[1].isnan() and unknown.num_unscored == 1


def test_the_gate_needs_a_first_function_and_another():
    with pytest.raises(ValueError, match="reward_gate pays the reward functions after the first"):
        RewardSources([ones], reward_gate=True)
    gated = RewardSources([ones, twos], [1.0, 0.5], reward_gate=True)
    assert gated.score(["p"], ["a"]).total.tolist() == [2.0]
