"""``lightning-rlhf evaluate``: greedy accuracy (strict and flexible) and pass@k per task, from the data path,
generation and rewards of training, on tiny models, the built-in task and a real reasoning-gym task."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from lightning_rlhf.commands.main import main

GCD = "reasoning_gym:gcd?min_numbers=2&max_numbers=2&min_value=1&max_value=12&size=12&seed=1"
ADDITION = "builtin?size=18&max_operand=2"
K = 3


@pytest.fixture(scope="module")
def always_one(tmp_path_factory, tiny_model_factory, tiny_tokenizer) -> Path:
    """A GPT-2 folder whose next-token distribution is the same everywhere: "1" at logit ln(V - 1), every other
    token at 0, so greedy answers are "1" repeated and samples are "1" half the time at temperature 1."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("gpt2", hidden_size=32, num_layers=1, num_heads=2))
    one, vocab = tiny_tokenizer.convert_tokens_to_ids("1"), model.config.vocab_size
    with torch.no_grad():  # ln_f's output is its bias alone; the tied embedding reads its first coordinate
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[one, 0] = 1.0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = math.log(vocab - 1)
    folder = tmp_path_factory.mktemp("always_one")
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, always_one, tiny_model_factory):
    """One CLI run: two models, two tasks, answers saved; ``(result, json_path, stdout)``."""
    import io
    from contextlib import redirect_stdout

    out = tmp_path_factory.mktemp("evaluate") / "results.json"
    models = [str(always_one), str(tiny_model_factory("llama", hidden_size=32, num_layers=1, num_heads=2))]
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        result = main(["evaluate", *models, "--tasks", json.dumps([GCD, ADDITION]), "--samples", str(K),
                       "--temperature", "1.0", "--max_new_tokens", "1", "--batch_size", "5", "--json", str(out),
                       "--save_answers", "true", "--seed", "3"])
    return result, out, stdout.getvalue()


def _records(task: str) -> list[dict]:
    from lightning_rlhf.commands.evaluate import builtin_task
    from lightning_rlhf.data.reasoning_gym import reasoning_gym_records

    if task.startswith("builtin"):
        synthetic, size = builtin_task(task)
        return synthetic.records(size)
    return reasoning_gym_records(task)


def test_greedy_accuracy_is_the_share_of_questions_whose_answer_is_what_the_model_always_says(evaluated, always_one):
    result, out, stdout = evaluated
    assert json.loads(out.read_text()) == result
    rows = {(r["model"], r["task"]): r for r in result["results"]}
    for task in (GCD, ADDITION):
        answers = [json.loads(r["columns"])["answer"] for r in _records(task)]
        expected = sum(str(a) == "1" for a in answers) / len(answers)
        row = rows[(str(always_one), task)]
        assert 0 < expected < 1 and row["questions"] == len(answers) and row["k"] == K
        assert row["greedy_accuracy_strict"] == row["greedy_accuracy_flexible"] == pytest.approx(expected)
        assert {q["greedy"] for q in row["answers"]} == {"1"}
    assert rows[(str(always_one), GCD)]["rewards"] == {"strict": "reasoning_gym_score",
                                                       "flexible": "reasoning_gym_score_flexible"}
    assert rows[(str(always_one), ADDITION)]["rewards"] == {"strict": "exact_answer", "flexible": "answer_match"}
    settings = result["settings"]
    assert settings["samples"] == K and settings["temperature"] == 1.0 and settings["max_new_tokens"] == 1
    assert settings["seed"] == 3 and settings["tasks"] == [GCD, ADDITION] and result["version"]
    # the table: one row per (model, task) and an "all tasks" row per model, with the mean of the tasks
    assert f"| pass@{K} strict | pass@{K} flexible |" in stdout
    for model in settings["models"]:
        summary = next(r for r in result["summary"] if r["model"] == model)
        task_rows = [rows[(model, t)] for t in (GCD, ADDITION)]
        assert summary["questions"] == sum(r["questions"] for r in task_rows)
        assert summary["pass_at_k_flexible"] == pytest.approx(sum(r["pass_at_k_flexible"] for r in task_rows) / 2)
        for row in [*task_rows, summary]:
            cells = [f"{row[m]:.3f}" for m in ("greedy_accuracy_strict", "greedy_accuracy_flexible",
                                               "pass_at_k_strict", "pass_at_k_flexible")]
            assert f"| {model} | {row['task']} | {row['questions']} | {' | '.join(cells)} |" in stdout


def test_every_number_is_what_the_reward_functions_give_the_saved_answers(evaluated):
    from lightning_rlhf.rewards.resolve import NAMED_REWARD_FUNCTIONS

    result = evaluated[0]
    for row in result["results"]:
        records = _records(row["task"])
        assert [q["prompt"] for q in row["answers"]] == [r["prompt"] for r in records]  # every question, in order
        columns = [json.loads(r["columns"]) for r in records]
        for extraction, name in row["rewards"].items():
            reward = NAMED_REWARD_FUNCTIONS[name]

            def scores(answers: list[str], cols: list[dict]) -> list[float]:
                return reward([None] * len(answers), answers, **{c: [x[c] for x in cols] for c in cols[0]})

            greedy = scores([q["greedy"] for q in row["answers"]], columns)
            samples = [scores(q["samples"], [c] * K) for q, c in zip(row["answers"], columns)]
            assert all(len(q["samples"]) == K for q in row["answers"])
            assert [q["greedy_scores"][extraction] for q in row["answers"]] == pytest.approx(greedy)
            saved = [s for q in row["answers"] for s in q["sample_scores"][extraction]]
            assert saved == pytest.approx([s for q in samples for s in q])
            n = len(greedy)
            assert row[f"greedy_accuracy_{extraction}"] == pytest.approx(sum(s == 1.0 for s in greedy) / n)
            assert row[f"greedy_score_{extraction}"] == pytest.approx(sum(greedy) / n)
            assert row[f"pass_at_k_{extraction}"] == pytest.approx(sum(1.0 in s for s in samples) / n)
            assert row[f"sample_accuracy_{extraction}"] == pytest.approx(sum(s.count(1.0) / K for s in samples) / n)


def test_sampled_answers_follow_the_temperature(evaluated, always_one):
    # "1" has probability 1/2 at temperature 1: a third to two thirds of the samples, over 30 questions x 3
    rows = [r for r in evaluated[0]["results"] if r["model"] == str(always_one)]
    samples = [s for r in rows for q in r["answers"] for s in q["samples"]]
    assert len(samples) == 30 * K and 1 / 3 < samples.count("1") / len(samples) < 2 / 3


def test_greedy_scores_equal_the_validation_curves_of_the_same_prompts(always_one):
    from lightning.pytorch import Trainer

    from lightning_rlhf.commands.evaluate import prompt_batches
    from lightning_rlhf.modules.generation_args import GenerationArgs
    from lightning_rlhf.modules.grpo import GRPOModule

    result = main(["evaluate", str(always_one), "--tasks", json.dumps([ADDITION]), "--samples", "0",
                   "--max_new_tokens", "1", "--batch_size", "4"])
    row = result["results"][0]
    assert row["pass_at_k_strict"] is None and row["pass_at_k_flexible"] is None and not result["summary"]

    module = GRPOModule(str(always_one), reward_funcs=["exact_answer", "answer_match"], num_generations=2,
                        generation=GenerationArgs(max_new_tokens=1))
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False)
    loader, _ = prompt_batches(ADDITION, str(always_one), 1, 4, 0, True)
    metrics = trainer.validate(module, dataloaders=loader, verbose=False)[0]
    assert row["greedy_score_strict"] > 0
    assert metrics["val/reward/exact_answer"] == pytest.approx(row["greedy_score_strict"])
    assert metrics["val/reward/answer_match"] == pytest.approx(row["greedy_score_flexible"])


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--tasks", "--samples", "--temperature", "--json", "--save_answers"))
    main(["--help"])
    assert "evaluate MODEL_DIR" in capsys.readouterr().out


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"the model folder .*nowhere does not exist; give an export"):
        main(["evaluate", str(tmp_path / "nowhere"), "--tasks", json.dumps([ADDITION])])
    with pytest.raises(FileNotFoundError, match=r"has no config.json"):
        main(["evaluate", str(tmp_path), "--tasks", json.dumps([ADDITION])])


@pytest.mark.parametrize(("task", "error"), [
    ("data/train.txt", r"unknown task 'data/train.txt'; give reasoning_gym:TASK\?key=value"),
    ("reasoning_gym:gdc?size=4", r"unknown reasoning-gym task 'gdc'; did you mean gcd"),
    ("builtin?colour=red", r"unknown setting 'colour'; the built-in task takes"),
])
def test_an_unknown_task_is_named_before_any_model_loads(always_one, task, error):
    with pytest.raises(ValueError, match=error):
        main(["evaluate", str(always_one), "--tasks", json.dumps([task])])


def test_without_reasoning_gym_the_extra_to_install_is_named(always_one, monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(ImportError, match=r"pip install 'lightning-rlhf\[reasoning-gym\]'"):
        main(["evaluate", str(always_one), "--tasks", json.dumps([GCD])])


def test_a_builtin_sibling_operation_is_a_task_setting():
    from lightning_rlhf.commands.evaluate import builtin_task

    task, size = builtin_task("builtin?size=7&operation=*&style=chat")
    assert (task.operation, task.style, size) == ("*", "chat", 7)
    assert builtin_task("builtin?operation=%2B")[0].operation == "+"  # a bare + in a query string is a space


def test_with_tools_an_answer_that_calls_none_scores_as_without(tmp_path, always_one):
    """``--tools``: answers are episodes (the tag protocol); a model that never calls a tool ends every episode
    after its first turn, so the numbers are those of the plain run, and the settings record the tools."""
    common = ["evaluate", str(always_one), "--tasks", json.dumps([ADDITION]), "--samples", "2", "--max_new_tokens",
              "3", "--batch_size", "6", "--save_answers", "true", "--seed", "3"]
    plain = main(common + ["--json", str(tmp_path / "plain.json")])
    tooled = main(common + ["--tools", '["tests.environments.test_tools:calc"]', "--max_turns", "2",
                            "--json", str(tmp_path / "tools.json")])
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds",)}  # noqa: E731
    assert [strip(r) for r in tooled["results"]] == [strip(r) for r in plain["results"]]
    assert tooled["settings"]["tools"] == ["tests.environments.test_tools:calc"]
    with pytest.raises(ValueError, match="tool 'no_such_module:calc': cannot import module"):
        main(common + ["--tools", '["no_such_module:calc"]'])


def test_a_local_file_of_prompts_and_answers_is_a_task_scored_by_its_answer_column(tmp_path, always_one):
    """A user's own questions: a JSON lines file with ``prompt`` and ``answer``, scored by the answer checks
    (strict: the number alone; flexible: the last number)."""
    path = tmp_path / "mine.jsonl"
    rows = [{"prompt": "What is 5 + 6?", "answer": "11"}, {"prompt": "What is 3 + 4?", "answer": "7"},
            {"prompt": "What is 10 + 1?", "answer": 11}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = main(["evaluate", str(always_one), "--tasks", json.dumps([str(path)]), "--samples", "0",
                   "--max_new_tokens", "2", "--save_answers", "true"])
    (row,) = result["results"]
    assert [a["greedy"] for a in row["answers"]] == ["11"] * 3  # the model says "1" at every step
    assert row["rewards"] == {"strict": "exact_answer", "flexible": "answer_match"}
    assert (row["questions"], row["greedy_accuracy_strict"], row["greedy_accuracy_flexible"]) == (3, 2 / 3, 2 / 3)
    with pytest.raises(FileNotFoundError, match="task file .*missing.jsonl does not exist"):
        main(["evaluate", str(always_one), "--tasks", json.dumps([str(tmp_path / "missing.jsonl")])])
