"""One GRPO recipe, several tasks and seeds: train, then score the export on held-out questions with the task's
own verifier, as a user would with the README's two commands (``grpo fit`` and ``evaluate``).

It evaluates the untrained model once per task (greedy answers do not depend on the seed), then for each seed and
task runs ``lightning-rlhf grpo fit --config RECIPE`` with only ``--data.sources`` changed, evaluates
``<run>/hf/final``, and reads the run's curves from its TensorBoard events. Everything lands in one JSON
(``--out``), rewritten after every run so that a stopped sweep keeps its part.

    python benchmarks/recipe_across_tasks.py --actor <smollm2-hf-dir> --runs runs/recipe \\
        --task chain_sum 'min_terms=2&max_terms=2&min_digits=1&max_digits=1' --seeds 0 1 2 \\
        --out benchmarks/results/recipe_across_tasks.json

A task is ``NAME SETTINGS``: the reasoning-gym task and its settings in the source string's ``key=value&...`` form
(docs/tasks.md). Training reads ``size=--train_size&seed=0``, evaluation ``size=--eval_size&seed=EVAL_SEED``
(reasoning-gym draws item ``i`` of seed ``s`` from ``Random(s + i)``, so seed 1 would repeat training items). The name
``builtin`` is the built-in task in chat form, ``SETTINGS`` its settings (``operation=*`` for the products sibling,
``%2B`` for +); it is trained with ``--data.task`` and the reward functions :data:`BUILTIN_REWARDS` in place of the
recipe's (the issue's "correctness plus exact format", and the recipe's brevity), every other setting the recipe's.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUILTIN = "builtin"
#: the held-out seed of a reasoning-gym task: past every training item's ``seed + index`` (the built-in task's
#: generator draws a whole set from one seed, so its held-out seed stays 1; :func:`held_out_seed`)
EVAL_SEED = 1_000_000
#: the built-in task's rewards, in the order of the recipe's: right (last number), right and alone, brevity
BUILTIN_REWARDS = ["answer_match", "answer_only_format", "brevity"]


def source(task: str, settings: str, size: int, seed: int) -> str:
    if task == BUILTIN:
        return f"{BUILTIN}?" + "&".join(part for part in (settings, "style=chat", f"size={size}", f"seed={seed}")
                                        if part)
    joined = "&".join(part for part in (settings, f"size={size}", f"seed={seed}") if part)
    return f"reasoning_gym:{task}?{joined}"


def held_out_seed(task: str) -> int:
    return 1 if task == BUILTIN else EVAL_SEED


def most_common(values: list[str]) -> tuple[str | None, float]:
    """The most common value (the first in sorted order on a tie) and its share; ``(None, 0.0)`` for none."""
    if not values:
        return None, 0.0
    common = max(sorted(set(values)), key=values.count)
    return common, values.count(common) / len(values)


def data_flags(task: str, settings: str, size: int) -> list[str]:
    """The ``grpo fit`` flags that set the training data (and, for the built-in task, its reward functions)."""
    if task != BUILTIN:
        return ["--data.sources", json.dumps([source(task, settings, size, 0)])]
    from urllib.parse import parse_qsl

    chosen: dict[str, Any] = {key: int(value) if value.isdigit() else value for key, value in parse_qsl(settings)}
    return ["--data.task", json.dumps({"style": "chat", "seed": 0} | chosen), "--data.task_size", str(size),
            "--model.reward_funcs", json.dumps(BUILTIN_REWARDS)]


def run(command: list[str], log: Path) -> tuple[int, float]:
    """Run ``command`` with its output in ``log``; the exit status and wall seconds."""
    start = time.perf_counter()
    with log.open("w") as out:
        status = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    return status, time.perf_counter() - start


def evaluate(model: str, task_source: str, json_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from lightning_rlhf.rewards import answer_only_format

    command = ["lightning-rlhf", "evaluate", model, "--tasks", json.dumps([task_source]), "--samples",
               str(args.eval_samples), "--temperature", "0.7", "--max_new_tokens", str(args.max_new_tokens),
               "--json", str(json_path), "--save_answers", "true"]
    status, _ = run(command, json_path.with_suffix(".log"))
    if status != 0:
        raise RuntimeError(f"evaluate failed ({status}); see {json_path.with_suffix('.log')}")
    (row,) = json.loads(json_path.read_text())["results"]
    keys = ("greedy_accuracy_strict", "greedy_accuracy_flexible", "pass_at_k_strict", "pass_at_k_flexible")
    greedy = [answer["greedy"] for answer in row.get("answers", [])]
    common, share = most_common(greedy)  # a policy that answers everything alike
    # the exact format of a numeric task, right or not (the strict score is right *and* in that form)
    alone = sum(answer_only_format([None] * len(greedy), greedy)) / max(1, len(greedy))
    return ({key: row[key] for key in keys if key in row} | {"questions": row["questions"]}
            | {"most_common_answer": common, "most_common_share": share,
               "number_alone_share": alone})


def held_out_baselines(task: str, settings: str, train_size: int, eval_size: int) -> dict[str, Any] | None:
    """What a held-out score is to be read against (reasoning-gym tasks; ``None`` for the built-in one): the share
    of the held-out questions that also occur in the training records (small settings have few distinct
    questions), and the held-out set's most common answer with its share, the score of giving it to every question."""
    if task == BUILTIN:
        return None
    from lightning_rlhf.data.reasoning_gym import reasoning_gym_records

    def columns(size: int, seed: int) -> list[dict[str, Any]]:
        return [json.loads(r["columns"]) for r in reasoning_gym_records(source(task, settings, size, seed))]

    trained = {record["question"] for record in columns(train_size, 0)}
    held_out = columns(eval_size, held_out_seed(task))
    common, share = most_common([str(record["answer"]) for record in held_out])
    return {"distinct_training_questions": len(trained),
            "held_out_in_training": sum(r["question"] in trained for r in held_out) / len(held_out),
            "most_common_answer": common, "most_common_answer_share": share}


def curves(run_dir: Path, tags: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """The run's scalar curves by tag, from its TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(run_dir.glob("lightning_logs/version_*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in tags:
            if tag in accumulator.Tags()["scalars"]:
                found[tag] = [(e.step, round(e.value, 4)) for e in accumulator.Scalars(tag)]
    return found


CURVES = ("val/reward/reasoning_gym_score", "val/reward/reasoning_gym_score_flexible", "grpo/entropy",
          "grpo/reward/reasoning_gym_score", "grpo/reward/reasoning_gym_score_flexible", "grpo/response_length",
          "grpo/groups_without_signal", "grpo/entropy_bonus_on", "grpo/guided_answers",
          "val/reward/answer_match", "val/reward/answer_only_format", "grpo/reward/answer_match",
          "grpo/reward/answer_only_format", "grpo/reward/brevity", "val/reward/brevity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actor", required=True, help="the untrained model's Hugging Face folder")
    parser.add_argument("--recipe", default="examples/reasoning_gym/grpo.yaml")
    parser.add_argument("--runs", required=True, help="folder for the runs")
    parser.add_argument("--task", nargs=2, action="append", required=True, metavar=("NAME", "SETTINGS"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train_size", type=int, default=1000)
    parser.add_argument("--eval_size", type=int, default=64)
    parser.add_argument("--eval_samples", type=int, default=0, help="sampled answers per question (0: greedy only)")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--extra", default="", help="more grpo fit flags in one string, the same for every run, "
                        "e.g. --extra='--trainer.limit_train_batches 40'")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    runs.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k not in ("actor", "runs", "out")},
                               "cpu": os.cpu_count(), "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"),
                               "tasks": []}
    entries = {}
    for name, settings in args.task:  # the untrained model once per task: greedy answers do not depend on a seed
        held_out = source(name, settings, args.eval_size, held_out_seed(name))
        entries[name] = {"task": name, "settings": settings, "eval_source": held_out,
                         "held_out": held_out_baselines(name, settings, args.train_size, args.eval_size),
                         "before": evaluate(args.actor, held_out, runs / f"{name}_before.json", args), "runs": []}
        results["tasks"].append(entries[name])
    for seed in args.seeds:  # seed-major, so that a stopped sweep has every task at its first seeds
        for name, settings in args.task:
            entry, run_dir = entries[name], runs / f"{name}_s{seed}"
            command = ["lightning-rlhf", "grpo", "fit", "--config", args.recipe, "--seed_everything", str(seed),
                       "--model.actor", args.actor, "--trainer.default_root_dir", str(run_dir),
                       *data_flags(name, settings, args.train_size),
                       *shlex.split(args.extra)]
            status, seconds = run(command, runs / f"{name}_s{seed}.log")
            record: dict[str, Any] = {"seed": seed, "status": status, "fit_seconds": round(seconds, 1)}
            if status == 0:
                record["after"] = evaluate(str(run_dir / "hf" / "final"), entry["eval_source"],
                                           runs / f"{name}_s{seed}.json", args)
                record["curves"] = curves(run_dir, CURVES)
            entry["runs"].append(record)
            out.write_text(json.dumps(results, indent=1))
            print(json.dumps({"task": name, "seed": seed, "before": entry["before"],
                              "after": record.get("after"), "seconds": record["fit_seconds"]}), flush=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
