"""The calculator-tool example over several seeds: the pipeline (SFT warm-up, then GRPO on episodes), each step's
export scored with the tool available, as a user would with the example's commands.

For every seed it runs ``lightning-rlhf pipeline --config examples/calculator_tool/grpo.yaml`` with ``--seed`` and
its own output folder, then ``lightning-rlhf evaluate`` on the held-out questions with ``--tools``: the SFT export
(what the warm-up alone gives) and the GRPO export (what GRPO adds). The untrained model is scored once, without
the tool (the plain chat question: its untooled rate) and with it. Curves come from the runs' TensorBoard events;
everything lands in one JSON, rewritten after every seed.

    python benchmarks/calculator_tool.py --base_model <smollm2-hf-dir> --runs runs/calculator --seeds 0 1 2 \\
        --out benchmarks/results/calculator_tool.json --plot docs/images/calculator_tool_curves.png

``--plot`` alone (with ``--out`` an existing result) redraws the curves without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_across_tasks import curves, run  # noqa: E402

CONFIG = "examples/calculator_tool/grpo.yaml"
TOOL = "lightning_rlhf.environments.calculator:calc"
QUESTIONS = "operation=*&min_operand=10&max_operand=99&size={size}&seed=1"
CURVES = ("grpo/reward/answer_match", "val/reward/answer_match", "grpo/tool_calls_per_episode",
          "grpo/tool_errors_per_episode", "grpo/turns_per_episode", "grpo/episodes_at_max_turns",
          "grpo/episodes_at_max_tokens", "grpo/response_length", "grpo/entropy", "grpo/groups_without_signal")


def evaluate(model: str, style: str, tools: bool, json_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Greedy accuracy (strict, flexible) of ``model`` on the held-out questions in ``style``."""
    task = f"builtin?style={style}&" + QUESTIONS.format(size=args.eval_size)
    command = ["lightning-rlhf", "evaluate", model, "--tasks", json.dumps([task]), "--samples", "0",
               "--max_new_tokens", "24", "--json", str(json_path), "--save_answers", "true"]
    if tools:
        command += ["--tools", json.dumps([TOOL]), "--max_turns", "3"]
    status, _ = run(command, json_path.with_suffix(".log"))
    if status != 0:
        raise RuntimeError(f"evaluate failed ({status}); see {json_path.with_suffix('.log')}")
    (row,) = json.loads(json_path.read_text())["results"]
    called = sum("<tool>" in answer["greedy"] for answer in row["answers"]) / row["questions"]
    return {"task": task, "tools": tools, "questions": row["questions"], "tool_call_share": called,
            **{key: row[key] for key in ("greedy_accuracy_strict", "greedy_accuracy_flexible")}}


PANELS = (("grpo/reward/answer_match", "reward: final answer right (rollouts)"),
          ("grpo/tool_calls_per_episode", "tool calls per episode"),
          ("grpo/turns_per_episode", "model turns per episode"),
          ("grpo/tool_errors_per_episode", "tool errors per episode"))


def plot(results: dict[str, Any], path: Path) -> None:
    """Each seed's GRPO curves (:data:`PANELS`), one panel per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
    for ax, (tag, title) in zip(axes, PANELS):
        for record in results["runs"]:
            points = record.get("curves", {}).get(tag, [])
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], label=f"seed {record['seed']}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("rollout")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_model", default=None, help="SmolLM2-135M-Instruct's Hugging Face folder")
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--runs", default="runs/calculator_tool_benchmark", help="folder for the runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval_size", type=int, default=64)
    parser.add_argument("--out", required=True)
    parser.add_argument("--plot", default=None, help="draw the GRPO curves of every seed into this PNG")
    args = parser.parse_args()
    if args.plot and Path(args.out).is_file() and not args.base_model:
        plot(json.loads(Path(args.out).read_text()), Path(args.plot))
        return
    if not args.base_model:
        parser.error("--base_model is required to run (without it, --plot redraws an existing --out)")
    runs, out = Path(args.runs), Path(args.out)
    runs.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"settings": {"config": args.config, "seeds": args.seeds, "eval_size": args.eval_size},
                               "cpu": os.cpu_count(), "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"),
                               "before": {"untooled": evaluate(args.base_model, "chat", False, runs / "base_chat.json",
                                                               args),
                                          "with_tool": evaluate(args.base_model, "tool", True, runs / "base_tool.json",
                                                                args)},
                               "runs": []}
    for seed in args.seeds:
        folder = runs / f"s{seed}"
        start = time.perf_counter()
        status, _ = run(["lightning-rlhf", "pipeline", "--config", args.config, "--seed", str(seed), "--base_model",
                         args.base_model, "--output_dir", str(folder)], runs / f"s{seed}.log")
        record: dict[str, Any] = {"seed": seed, "status": status, "seconds": round(time.perf_counter() - start, 1)}
        if status == 0:
            summary = json.loads((folder / "summary.json").read_text())
            record["step_seconds"] = {step["step"]: step.get("fit_seconds") for step in summary}
            for step in ("sft", "grpo"):
                record[step] = evaluate(str(folder / step / "hf" / "final"), "tool", True,
                                        runs / f"s{seed}_{step}.json", args)
            record["curves"] = curves(folder / "grpo", CURVES)
        results["runs"].append(record)
        out.write_text(json.dumps(results, indent=1))
        print(json.dumps({k: v for k, v in record.items() if k != "curves"}), flush=True)
    if args.plot:
        plot(results, Path(args.plot))


if __name__ == "__main__":
    sys.exit(main())
