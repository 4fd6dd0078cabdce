"""``lightning-rlhf evaluate``: model folders on a task set, scored by the tasks' verifiers as validation scores them.

The prompts come from ``RLHFDataModule(stage="rl")``, the answers from ``GRPOModule.generate`` (greedy, then
``--samples`` per question at ``--temperature``) and the scores from its ``RewardSources``; docs/tasks.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence
from urllib.parse import parse_qsl

import torch

import lightning_rlhf
from lightning_rlhf.data.sources import LOCAL_SUFFIXES
from lightning_rlhf.data.reasoning_gym import is_reasoning_gym_source, reasoning_gym_records
from lightning_rlhf.data.task import SyntheticTask
from lightning_rlhf.environments.episodes import EpisodeArgs
from lightning_rlhf.modules.generation_args import GenerationArgs
from lightning_rlhf.modules.grpo import GRPOModule
from lightning_rlhf.modules.rollout import repeat_groups
from lightning_rlhf.rewards.combined import RewardSources

BUILTIN = "builtin"
FILE = "file"
BUILTIN_SETTINGS = ("size", "seed", "min_operand", "max_operand", "style", "operation")
EXTRACTIONS = ("strict", "flexible")
#: the (strict, flexible) reward functions of each kind of task
REWARDS = {"builtin": ("exact_answer", "answer_match"), "file": ("exact_answer", "answer_match"),
           "reasoning_gym": ("reasoning_gym_score", "reasoning_gym_score_flexible")}
METRICS = ("greedy_accuracy_strict", "greedy_accuracy_flexible", "greedy_score_strict", "greedy_score_flexible",
           "pass_at_k_strict", "pass_at_k_flexible", "sample_accuracy_strict", "sample_accuracy_flexible")
TASK_USAGE = ("reasoning_gym:TASK?key=value&size=N&seed=S (pip install 'lightning-rlhf[reasoning-gym]') or "
              "builtin[?size=N&seed=S&min_operand=0&max_operand=9&style=plain|chat|tool&operation=%2B|*|-] (the "
              "addition task; %2B is +) or a local json / jsonl(.gz) / parquet / csv file of records with a prompt "
              "and a numeric answer")


def task_kind(task: str) -> str:
    """``reasoning_gym`` or ``builtin``; checks the task now (unknown names, settings, a missing package)."""
    if is_reasoning_gym_source(task):
        reasoning_gym_records(task)  # fails now with the task list, the bad setting or the extra to install
        return "reasoning_gym"
    if task.partition("?")[0] == BUILTIN:
        builtin_task(task)
        return BUILTIN
    if task.endswith(LOCAL_SUFFIXES):
        if not Path(task).is_file():
            raise FileNotFoundError(f"task file {task} does not exist; give a file of records with a 'prompt' and an "
                                    f"'answer' column")
        return FILE
    raise ValueError(f"unknown task {task!r}; give {TASK_USAGE}")


def builtin_task(task: str) -> tuple[SyntheticTask, int]:
    """The built-in addition task of ``builtin?key=value&...`` and its number of records (default 100)."""
    settings: dict[str, Any] = {}
    for key, raw in parse_qsl(task.partition("?")[2], keep_blank_values=True):
        if key not in BUILTIN_SETTINGS:
            raise ValueError(f"task {task!r}: unknown setting {key!r}; the built-in task takes {BUILTIN_SETTINGS}")
        try:
            settings[key] = raw if key in ("style", "operation") else int(raw)
        except ValueError:
            raise ValueError(f"task {task!r}: {key} must be an integer, got {raw!r}") from None
    size = settings.pop("size", 100)
    return SyntheticTask(**settings), size


def prompt_batches(task: str, model: str, max_new_tokens: int, batch_size: int, seed: int, use_chat_template: bool,
                   tools: list[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """The task's left-padded prompt batches as training's data path makes them (every record, in order), and
    the data module's report."""
    from torch.utils.data import DataLoader

    from lightning_rlhf.data import RLHFDataModule
    from lightning_rlhf.data.collate import COLLATORS
    from lightning_rlhf.models.context import max_positions, model_config

    positions = (max_positions(model_config(model)) or (1 << 20, ""))[0]
    if positions <= max_new_tokens + 1:
        raise ValueError(f"--max_new_tokens {max_new_tokens} leaves no room for a prompt in the {positions} "
                         f"positions of {model}; lower --max_new_tokens")
    builtin = task.partition("?")[0] == BUILTIN
    extra = dict(zip(("task", "task_size"), builtin_task(task))) if builtin else {"sources": [task]}
    data = RLHFDataModule(tokenizer=model, stage="rl", split="0,0,1", eval_fraction=0.0, seed=seed,
                          max_prompt_length=positions - max_new_tokens, max_length=positions,
                          use_chat_template=use_chat_template, batch_size=batch_size, tools=tools, **extra)
    data.setup()  # every record goes to rl/train, in record order
    loader = DataLoader(data.datasets["train"], batch_size=batch_size, collate_fn=COLLATORS["rl"](data.pad_id))
    return loader, data.report["tokenized"]["train"]


class Evaluation(GRPOModule):
    """``GRPOModule``'s validation with every answer and score kept: greedy answers, then ``num_generations``
    sampled answers per question (none when ``sampling`` is False). Never trained."""

    sampling: bool = True

    def on_validation_epoch_start(self) -> None:
        self.kept: list[dict[str, Any]] = []

    def answers(self, batch: Mapping[str, Any], greedy: bool, group: int) -> tuple[list[str], dict[str, list]]:
        """The decoded answers (with ``--tools``: whole episodes) and each reward function's scores of the answer
        (with tools: the final turn) (``nan``: unscored, counted as 0)."""
        generated, episodes = self.sample_answers(batch, greedy, group_size=group)
        responses, columns = self.scored_answers(batch, generated, episodes)
        rewards = self.score(batch["prompts"], generated, responses, columns, None)
        scores = {name: torch.nan_to_num(rewards.per_source[name]).tolist() for name in self.rewards.names}
        return (responses if episodes is None else episodes.texts), scores

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        k, names = self.hparams.num_generations, self.rewards.names  # (strict, flexible)
        greedy, greedy_scores = self.answers(batch, greedy=True, group=1)
        sampled, sample_scores = self.answers(repeat_groups(batch, k), greedy=False, group=k) if self.sampling \
            else ([], {name: [] for name in names})
        for i, prompt in enumerate(batch["prompts"]):
            group = slice(i * k, (i + 1) * k)
            self.kept.append({"prompt": prompt, "greedy": greedy[i], "samples": sampled[group],
                              "greedy_scores": {e: greedy_scores[n][i] for e, n in zip(EXTRACTIONS, names)},
                              "sample_scores": {e: sample_scores[n][group] for e, n in zip(EXTRACTIONS, names)}})


def summarize(kept: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The task's numbers from its questions' scores; full credit is a score of 1.0."""
    n, out = len(kept), {"questions": len(kept)}
    for extraction in EXTRACTIONS:
        greedy = [q["greedy_scores"][extraction] for q in kept]
        samples = [q["sample_scores"][extraction] for q in kept]
        out[f"greedy_accuracy_{extraction}"] = sum(s >= 1.0 for s in greedy) / n
        out[f"greedy_score_{extraction}"] = sum(greedy) / n
        sampled = all(samples)
        out[f"pass_at_k_{extraction}"] = sum(any(s >= 1.0 for s in q) for q in samples) / n if sampled else None
        out[f"sample_accuracy_{extraction}"] = (sum(sum(s >= 1.0 for s in q) / len(q) for q in samples) / n
                                                if sampled else None)
    return out


def mean_row(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The "all tasks" row: each number's mean over the tasks (each task counts once), the questions summed."""
    out: dict[str, Any] = {"model": rows[0]["model"], "task": "all tasks",
                           "questions": sum(r["questions"] for r in rows)}
    for name in METRICS:
        values = [r[name] for r in rows]
        out[name] = None if None in values else sum(values) / len(values)
    return out


def table(rows: Sequence[Mapping[str, Any]], k: int) -> str:
    """A Markdown table: one row per (model, task)."""
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [f"| model | task | questions | greedy strict | greedy flexible | pass@{k} strict | pass@{k} flexible |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        numbers = [cell(r[m]) for m in ("greedy_accuracy_strict", "greedy_accuracy_flexible", "pass_at_k_strict",
                                        "pass_at_k_flexible")]
        lines.append(f"| {r['model']} | {r['task']} | {r['questions']} | {' | '.join(numbers)} |")
    return "\n".join(lines)


def build_parser() -> Any:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="lightning-rlhf evaluate", default_env=False,
                            description="Score model folders on tasks with the tasks' verifiers: greedy accuracy "
                                        "(strict and flexible answer extraction) and pass@k of sampled answers.")
    parser.add_argument("models", type=str, nargs="+", help="model folders (an export or any Hugging Face causal LM)")
    parser.add_argument("--tasks", type=list[str] | str, default=[BUILTIN],
                        help=f"a JSON list of tasks (or one task), each {TASK_USAGE}")
    parser.add_argument("--samples", type=int, default=8, help="k of pass@k: sampled answers per question (0: none)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the k answers")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="longest answer in tokens")
    parser.add_argument("--batch_size", type=int, default=16, help="questions per batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling (set again before each task)")
    parser.add_argument("--use_chat_template", type=bool, default=True,
                        help="format prompts with the tokenizer's chat template (as the data module did in training)")
    parser.add_argument("--tools", type=list[str] | None, default=None,
                        help="tool functions by import path: answers become episodes with the tag protocol "
                             "(docs/environments.md) and the final turn is scored")
    parser.add_argument("--max_turns", type=int, default=4, help="most model turns per episode (with --tools)")
    parser.add_argument("--tool_protocol", type=Literal["tags", "chat_template"], default="tags",
                        help="how --tools are called: tags (<tool>calc(17*23)</tool>) or chat_template (the model's "
                             "own format; the prompts carry the tools' schemas)")
    parser.add_argument("--accelerator", type=str, default="auto", help="Lightning accelerator (one device)")
    parser.add_argument("--json", type=str | None, default=None, help="write every number and the settings here")
    parser.add_argument("--save_answers", type=bool, default=False,
                        help="keep every question's answers and scores in the JSON")
    return parser


def evaluate_main(argv: Sequence[str], out: Any = None) -> dict[str, Any]:
    """Run ``lightning-rlhf evaluate`` on ``argv``; prints the table and returns what ``--json`` writes."""
    from lightning.pytorch import Trainer, seed_everything

    args = build_parser().parse_args(list(argv))
    args.tasks = [args.tasks] if isinstance(args.tasks, str) else args.tasks
    if args.samples < 0 or args.batch_size < 1:
        raise ValueError(f"--samples must be >= 0 and --batch_size >= 1, got {args.samples} and {args.batch_size}")
    if not args.tasks:
        raise ValueError(f"--tasks is empty; give a JSON list of tasks, each {TASK_USAGE}")
    for model in args.models:
        if not (Path(model) / "config.json").is_file():
            what = "has no config.json" if Path(model).is_dir() else "does not exist"
            raise FileNotFoundError(f"the model folder {model} {what}; give an export (e.g. runs/grpo/hf/final) or "
                                    f"a Hugging Face model folder")
    kinds = {task: task_kind(task) for task in args.tasks}
    generation = GenerationArgs(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    trainer = Trainer(accelerator=args.accelerator, devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    settings = {key: value for key, value in vars(args).items() if key not in ("json", "save_answers")}
    result: dict[str, Any] = {"version": lightning_rlhf.__version__, "settings": {
        **settings, "device": str(trainer.strategy.root_device)}, "results": [], "summary": []}
    for model in args.models:
        episodes = EpisodeArgs(tools=args.tools, max_turns=args.max_turns,
                               protocol=args.tool_protocol) if args.tools else None
        module = Evaluation(model, reward_funcs=list(REWARDS[kinds[args.tasks[0]]]), generation=generation,
                            num_generations=max(args.samples, 1), advantage_estimator="reinforce_pp",
                            episodes=episodes)
        module.sampling = args.samples > 0
        rows = []
        for task in args.tasks:
            start = time.perf_counter()
            module.rewards = RewardSources(list(REWARDS[kinds[task]]))
            loader, report = prompt_batches(task, model, args.max_new_tokens, args.batch_size, args.seed,
                                            args.use_chat_template,
                                            args.tools if args.tool_protocol == "chat_template" else None)
            seed_everything(args.seed, verbose=False)
            trainer.validate(module, dataloaders=loader, verbose=False)
            row = {"model": model, "task": task, "k": args.samples, "dropped": report["dropped"],
                   "rewards": dict(zip(EXTRACTIONS, REWARDS[kinds[task]])), **summarize(module.kept),
                   "seconds": round(time.perf_counter() - start, 1)}
            if args.save_answers:
                row["answers"] = module.kept
            rows.append(row)
            dropped = f", dropped {report['dropped']}" if report["dropped"] else ""
            passed = f", pass@{args.samples} flexible {row['pass_at_k_flexible']:.3f}" if args.samples else ""
            print(f"[evaluate] {model} | {task}: {row['questions']} questions{dropped}, greedy strict "
                  f"{row['greedy_accuracy_strict']:.3f} flexible {row['greedy_accuracy_flexible']:.3f}{passed} "
                  f"({row['seconds']} s)", file=sys.stderr, flush=True)
        result["results"] += rows
        if len(rows) > 1:
            result["summary"].append(mean_row(rows))
    shown = [r for m in dict.fromkeys(args.models) for r in result["results"] + result["summary"] if r["model"] == m]
    print(table(shown, args.samples), file=out or sys.stdout, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result
