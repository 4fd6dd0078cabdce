"""What every online iteration reports: one cross-rank reduction of its metrics, the loggers, sample tables."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from lightning_rlhf.modules.pooled import Pooled, pooled_mean


def progress_bar_curves(prefix: str) -> tuple[str, ...]:
    """The curves the progress bar shows (when logged): what tells at a glance whether a run learns."""
    return (f"{prefix}/reward_mean", f"{prefix}/kl", f"{prefix}/task_success")


def reduce_metrics(strategy: Any, metrics: Mapping[str, Pooled | Tensor | float]) -> dict[str, float]:
    """Each metric over every rank in one collective (same keys on every rank); plain values are averaged."""
    names = sorted(metrics)
    pooled = {n: m if isinstance(m, Pooled) else pooled_mean(float(m)) for n, m in metrics.items()}
    sizes = [len(pooled[n].sums) for n in names]
    device = getattr(strategy, "root_device", torch.device("cpu"))
    stacked = torch.cat([pooled[n].sums for n in names]).to(device)
    totals = strategy.reduce(stacked, reduce_op="sum").cpu().split(sizes)
    return {n: float(pooled[n].combine(total)) for n, total in zip(names, totals)}


def source_metrics(prefix: str, rewards: Any) -> dict[str, Pooled]:
    """Each source's mean over the answers it scored, and the share no source scored, of ``SampleRewards``."""
    metrics = {f"{prefix}/reward/{name}": pooled_mean(torch.nan_to_num(values), ~values.isnan())
               for name, values in rewards.per_source.items()}
    metrics[f"{prefix}/unscored_fraction"] = pooled_mean(rewards.total.isnan().float())
    return metrics


def log_iteration(module: LightningModule, metrics: Mapping[str, float],
                  progress_bar_tags: Sequence[str] = progress_bar_curves("ppo")) -> None:
    """Record one iteration's rank-reduced metrics as ``self.log_dict(on_step=True)`` would, minus its per-key cost.

    Callback and progress-bar metrics every iteration; the loggers every ``log_every_n_steps`` iterations.
    """
    trainer = module.trainer
    scalars = {name: float(value) for name, value in metrics.items()}
    values = {name: torch.tensor(value) for name, value in scalars.items()}
    trainer.callback_metrics.update(values)
    trainer.logged_metrics.update(values)
    trainer.progress_bar_metrics.update({name: scalars[name] for name in progress_bar_tags if name in scalars})
    if not trainer.loggers or trainer.log_every_n_steps == 0:
        return
    loop = trainer.fit_loop.epoch_loop
    step = getattr(loop, "_batches_that_stepped", loop.total_batch_idx)  # Lightning's x axis for step metrics
    if (step + 1) % trainer.log_every_n_steps != 0 and not trainer.should_stop:
        return
    for logger in trainer.loggers:
        logger.log_metrics(scalars, step=step)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>") or "(empty)"


@rank_zero_only
def log_samples(
    module: LightningModule, tag: str, prompts: Sequence[str], responses: Sequence[str], scores: Sequence[float],
    limit: int = 4,
) -> None:
    """Write the first ``limit`` (prompt, response, score) rows as a Markdown table to loggers with ``add_text``."""
    if limit <= 0:
        return
    rows = ["| prompt | response | score |", "|---|---|---|"]
    rows += [f"| {_cell(p)} | {_cell(r)} | {s:.3f} |" for p, r, s in list(zip(prompts, responses, scores))[:limit]]
    for logger in module.loggers:
        add_text = getattr(getattr(logger, "experiment", None), "add_text", None)
        if callable(add_text):
            add_text(tag, "\n".join(rows), global_step=module.global_step)
