"""``benchmarks/recipe_across_tasks.py``: what a held-out score is read against."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.scripts import load_script

pytest.importorskip("reasoning_gym")
BENCHMARK = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "recipe_across_tasks.py")


def test_held_out_baselines_count_recalled_questions_and_the_constant_answer():
    # count_bits up to 8 has 8 distinct questions: every held-out one was trained on, and "1" (1, 2, 4, 8) is common
    small = BENCHMARK.held_out_baselines("count_bits", "max_n=8", 200, 64)
    assert small["distinct_training_questions"] == 8 and small["held_out_in_training"] == 1.0
    assert small["most_common_answer"] == "1" and 0.3 < small["most_common_answer_share"] < 0.7
    wide = BENCHMARK.held_out_baselines("count_bits", "max_n=1000000", 200, 64)
    assert wide["distinct_training_questions"] > 190 and wide["held_out_in_training"] < 0.1
    assert BENCHMARK.held_out_baselines("builtin", "operation=*", 200, 64) is None
