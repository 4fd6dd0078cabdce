"""The built-in reward functions: answer match (exact and shaped), the answer-only format, math_verify."""

from __future__ import annotations

import importlib.util

import pytest

from lightning_rlhf.rewards import (
    FormatReward,
    answer_match,
    answer_match_shaped,
    answer_only_format,
    compute_rewards,
    exact_answer,
    math_verify_match,
    resolve_reward_function,
    resolve_reward_functions,
)

# (completion, answer, exact, shaped, answer-only format)
CASES = [
    ("7", "7", 1.0, 1.0, 1.0),
    (" 7.", "7", 1.0, 1.0, 1.0),
    ("The answer is 7.", "7", 1.0, 1.0, 0.0),  # SmolLM2's habit: right number, wrong format
    ("7 is what 3 + 4 gives", "7", 0.0, 0.5, 0.0),  # right number, not last
    ("The answer is 8.", "7", 0.0, 0.25 * (1 - 1 / 7), 0.0),  # close miss
    ("The answer is 70.", "7", 0.0, 0.0, 0.0),  # far miss
    ("seven", "7", 0.0, 0.0, 0.0),  # no number
    ("It is 1,234", "1234", 1.0, 1.0, 0.0),  # thousands commas
    ("-3", -3, 1.0, 1.0, 1.0),  # numeric answer column
    ("so 72", "Natalia sold 48/2 = 24 clips in May. #### 72", 1.0, 1.0, 0.0),  # GSM8K's answer format
    ("7.5", "7.50", 1.0, 1.0, 1.0),
]


@pytest.mark.parametrize("completion,answer,exact,shaped,fmt", CASES)
def test_answer_rewards(completion, answer, exact, shaped, fmt):
    assert answer_match(["p"], [completion], [answer]) == [exact]
    assert answer_match_shaped(["p"], [completion], [answer]) == [pytest.approx(shaped)]
    assert answer_only_format(["p"], [completion]) == [fmt]
    assert exact_answer(["p"], [completion], [answer]) == [exact * fmt]  # right number, alone


def test_rows_without_a_reference_number_are_not_applicable():
    assert answer_match(["p", "p"], ["7", "7"], [None, "no number here"]) == [None, None]
    assert answer_match_shaped(["p"], ["7"], [None]) == [None]
    assert exact_answer(["p", "p"], ["7", "8"], [None, "8"]) == [None, 1.0]


def test_conversational_completions_are_read():
    chat = [[{"role": "assistant", "content": "The answer is 7."}], {"role": "assistant", "content": "7"}]
    assert answer_match(["p", "p"], chat, ["7", "7"]) == [1.0, 1.0]
    assert answer_only_format(["p", "p"], chat) == [0.0, 1.0]
    with pytest.raises(TypeError, match="text or chat messages"):
        answer_match(["p"], [42], ["7"])


def test_format_reward_is_a_named_full_match():
    think = FormatReward(r"<think>.*</think>.*", name="think_format")
    assert think(["p", "p"], ["<think>a\nb</think> 7", "7 <think></think>"]) == [1.0, 0.0]
    assert resolve_reward_function(think).name == "think_format"


def test_builtins_combine_by_name_with_weights():
    functions, weights = resolve_reward_functions(["answer_match", "answer_only_format"], [1.0, 0.5])
    got = compute_rewards(functions, weights, ["a", "b"], ["7", "The answer is 7."], {"answer": ["7", "7"]})
    assert got.total.tolist() == [1.5, 1.0]
    assert got.means() == {"answer_match": 1.0, "answer_only_format": 0.5}


@pytest.mark.skipif(importlib.util.find_spec("math_verify") is not None, reason="math-verify is installed here")
def test_math_verify_missing_is_a_clear_error_at_resolution():
    with pytest.raises(ImportError, match="'lightning_rlhf.rewards.builtin:math_verify_match' needs the "
                                          "'math_verify' module.*pip install math-verify"):
        resolve_reward_function("math_verify_match")


@pytest.mark.skipif(importlib.util.find_spec("math_verify") is None, reason="math-verify is not installed")
def test_math_verify_equivalence():
    completions = ["The answer is $\\frac{1}{2}$", "It is 0.5", "$\\frac{2}{3}$"]
    assert math_verify_match(["p"] * 3, completions, ["$0.5$"] * 3) == [1.0, 1.0, 0.0]
    assert resolve_reward_function("math_verify_match").function is math_verify_match


def test_brevity_pays_one_over_the_words():
    from lightning_rlhf.rewards import brevity
    assert brevity(["p"] * 4, ["12", "The answer is 12.", "", [{"role": "assistant", "content": "a b"}]]) == [
        1.0, 0.25, 0.0, 0.5]


def test_the_builtins_load_by_file_path_without_the_package(tmp_path):
    """``benchmarks/grpo_vs_trl.py`` runs these functions in TRL's environment, which has no Lightning: loaded by
    path with ``lightning_rlhf`` unimportable, they still score (the file once imported the package, and the TRL
    side of the benchmark failed with ModuleNotFoundError: No module named 'lightning')."""
    import subprocess
    import sys
    from pathlib import Path

    builtin = Path(__file__).resolve().parents[2] / "lightning_rlhf" / "rewards" / "builtin.py"
    script = (
        "import importlib.util, sys\n"
        "sys.modules['lightning_rlhf'] = None  # any import of the package fails\n"
        f"spec = importlib.util.spec_from_file_location('rewards_by_path', {str(builtin)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "print(module.answer_match(['q'], ['so 12'], ['12']), module.answer_only_format(['q'], ['12']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[1.0]", "[1.0]"]
