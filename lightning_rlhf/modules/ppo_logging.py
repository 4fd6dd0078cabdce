"""What PPO reports: the curve names, one cross-rank reduction per step, and sample generations as text."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_only

#: the curves every PPO iteration logs (``ppo/task_success`` is added when a task checker is known)
PPO_TAGS: tuple[str, ...] = (
    "ppo/reward_mean", "ppo/reward_std", "ppo/score_mean", "ppo/kl", "ppo/kl_coef", "ppo/policy_loss",
    "ppo/value_loss", "ppo/clipfrac", "ppo/approx_kl", "ppo/entropy", "ppo/response_length",
    "ppo/eos_fraction", "ppo/value_explained_variance", "ppo/advantage_mean", "ppo/return_mean",
    "ppo/value_mean",
    "time/generation_s", "time/training_s", "throughput/generated_tokens_per_s",
)


def reduce_metrics(strategy: Any, metrics: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Mean of each metric over ranks, in one collective (every rank must pass the same keys).

    Args:
        strategy: the trainer's strategy (its ``reduce`` averages across processes).
        metrics: scalar tensors or floats by name.
    """
    names = sorted(metrics)
    device = getattr(strategy, "root_device", torch.device("cpu"))
    stacked = torch.stack([torch.as_tensor(metrics[n], dtype=torch.float32).detach().to(device).reshape(())
                           for n in names])
    reduced = strategy.reduce(stacked, reduce_op="mean")
    return dict(zip(names, reduced.tolist()))


def log_iteration(module: LightningModule, metrics: Mapping[str, float]) -> None:
    """Record one PPO iteration's metrics (already averaged over ranks by :func:`reduce_metrics`).

    Every iteration they go into ``trainer.callback_metrics`` (for ``ModelCheckpoint(monitor=...)``,
    early stopping and callbacks) and ``trainer.logged_metrics``; every ``Trainer(log_every_n_steps=...)``
    iterations (and when the trainer stops) to every logger, at the step Lightning uses for its own curves
    (the count of PPO iterations). That is what ``self.log_dict(on_step=True)`` does, minus its cost: Lightning's
    result collection took 8-13 ms per call for the 18 PPO curves (0.47-0.73 ms per key; ``python
    benchmarks/ppo_step_parts.py``, one CPU thread), 6-10% of a ~130 ms tiny-model PPO iteration, and its
    cross-rank reduction is already done.

    Args:
        module: the PPO module (its trainer and loggers are used).
        metrics: metric name -> value, identical on every rank.
    """
    trainer = module.trainer
    scalars = {name: float(value) for name, value in metrics.items()}
    values = {name: torch.tensor(value) for name, value in scalars.items()}
    trainer.callback_metrics.update(values)
    trainer.logged_metrics.update(values)
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
    """Write the first ``limit`` (prompt, response, score) triples as a Markdown table to TensorBoard text.

    Loggers without ``add_text`` (CSV, ...) are skipped.
    """
    if limit <= 0:
        return
    rows = ["| prompt | response | score |", "|---|---|---|"]
    rows += [f"| {_cell(p)} | {_cell(r)} | {s:.3f} |" for p, r, s in list(zip(prompts, responses, scores))[:limit]]
    for logger in module.loggers:
        add_text = getattr(getattr(logger, "experiment", None), "add_text", None)
        if callable(add_text):
            add_text(tag, "\n".join(rows), global_step=module.global_step)
