"""What the pipeline reports: each step's before/after metrics, times and files, as a table and ``summary.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from lightning.pytorch import Callback, LightningModule, Trainer

# the metrics each step's summary row reports: (logged name, label)
SUMMARY_METRICS: dict[str, list[tuple[str, str]]] = {
    "sft": [("val/loss", "eval loss"), ("val/perplexity", "eval perplexity")],
    "reward": [("val/accuracy", "pair accuracy"), ("val/margin", "chosen - rejected")],
    "ppo": [("val/reward_mean", "reward"), ("val/task_success", "task success")],
    "dpo": [("val/rewards/accuracies", "pair accuracy"), ("val/rewards/margins", "chosen - rejected reward"),
            ("val/logps/accuracies", "log-prob pair accuracy")],
    "grpo": [("val/reward_mean", "reward"), ("val/task_success", "task success")],
}


class FitValidation(Callback):
    """The ``val/*`` metrics and global step of fit's last validation, reused for "after" when it ran at the end."""

    def __init__(self) -> None:
        self.global_step: int | None = None
        self.metrics: dict[str, float] = {}

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.global_step = trainer.global_step
        self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    def final_metrics(self, trainer: Trainer) -> dict[str, float] | None:
        """The metrics of a validation at the end of fit (same step, model untouched since), else None."""
        return self.metrics if self.metrics and self.global_step == trainer.global_step else None


@dataclass
class StepResult:
    """What one step did, for the summary."""

    step: str
    before: dict[str, float]
    after: dict[str, float]
    fit_seconds: float
    total_seconds: float
    model_dir: str
    log_dir: str | None
    generation: dict[str, float] | None = None  # the generation switch during fit (rank 0), if it ran


def format_summary(results: Sequence[StepResult], output_dir: str) -> str:
    """The end-of-run table: each step's metrics before and after, its time, and where its files are."""
    rows = [("step", "metric", "before", "after", "time")]
    for r in results:
        for name, label in SUMMARY_METRICS[r.step]:
            if name not in r.after and name not in r.before:
                continue
            fmt = (lambda v: "-" if v is None else f"{v:.4g}")
            rows.append((r.step, f"{label} ({name})", fmt(r.before.get(name)), fmt(r.after.get(name)),
                         f"{r.total_seconds:.0f}s (fit {r.fit_seconds:.0f}s)"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    for r in results:
        if r.generation:
            g = r.generation
            lines.append(f"{r.step:7s} generation switch (rank 0, during fit): {g['calls']} rollouts, gather "
                         f"{g['gather_s']:.1f}s, generate {g['generate_s']:.1f}s, {g['new_tokens']} tokens, "
                         f"{g['tokens_per_s']:.0f} tokens/s")
    for r in results:
        lines.append(f"{r.step:7s} model: {r.model_dir}")
        lines.append(f"{'':7s} logs:  {r.log_dir}")
    lines.append(f"TensorBoard: tensorboard --logdir {output_dir}")
    return "\n".join(lines)


def merge_summary(path: Path, results: Sequence[StepResult], order: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of ``summary.json``: this run's steps replace their earlier rows (from ``path``), others stay."""
    rows = {row["step"]: row for row in (json.loads(path.read_text()) if path.is_file() else [])}
    rows.update({r.step: asdict(r) for r in results})
    return [rows[step] for step in order if step in rows]
