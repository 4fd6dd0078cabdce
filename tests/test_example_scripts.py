"""The helper scripts shipped in ``examples/`` that are not configs."""

from __future__ import annotations

from pathlib import Path

from lightning_rlhf.rewards.builtin import answer_match, answer_only_format
from tests.helpers.scripts import load_script

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_sample_forms_counts_what_the_reward_functions_pay():
    count_forms = load_script(EXAMPLES / "smollm2_grpo" / "sample_forms.py").count_forms
    answers = ["7", "The answer is 7.", "3 + 4 = 8", "8.", "Let me think about it", " 12 "]
    sums = [7, 7, 7, 7, 7, 12]
    shares = count_forms(answers, sums)
    # the shares agree with the reward functions grpo.yaml uses
    right = answer_match([""] * len(answers), answers, sums)
    bare = answer_only_format([""] * len(answers), answers)
    assert shares["right"] == sum(right) / len(answers) == 3 / 6
    assert shares["bare"] == sum(bare) / len(answers) == 3 / 6
    assert shares["right_bare"] == 2 / 6
    assert shares["no_number"] == 1 / 6
    assert count_forms([], [])["right"] == 0.0
