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


def test_the_sibling_task_writes_prompt_only_records_whose_answer_column_reaches_the_rewards(tmp_path,
                                                                                              tiny_tokenizer):
    import json
    import subprocess
    import sys

    from lightning_rlhf.data import RLHFDataModule

    script = EXAMPLES / "reasoning_gym" / "sibling_task.py"
    path = tmp_path / "products.jsonl"
    subprocess.run([sys.executable, str(script), "--operator", "-", "--size", "50", "--out", str(path)], check=True)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 50
    for row in rows:  # "What is 7 - 3? Answer with the number only."
        a, _, b = row["prompt"].removeprefix("What is ").split("?")[0].split()
        assert int(row["answer"]) == int(a) - int(b) >= 0
    records = load_script(script).records("*", 9, 20, seed=1)
    assert records != load_script(script).records("*", 9, 20, seed=0) and all("*" in r["prompt"] for r in records)
    data = RLHFDataModule(tiny_tokenizer, stage="rl", sources=[str(path)], split="0,0,1", eval_fraction=0.1,
                          use_chat_template=False, max_prompt_length=64, max_length=80)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    answers = batch["columns"]["answer"]
    assert 0 < len(answers) and set(answers) <= {row["answer"] for row in rows}  # per row, as the rewards read it
