"""What PPO reports: the curve names, one cross-rank reduction per step, and sample generations as text."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from lightning_rlhf.modules.pooled import Pooled, pooled_explained_variance, pooled_mean, pooled_mean_of, pooled_std

#: the curves the progress bar shows (when logged), by curve prefix: what tells at a glance whether it learns
PROGRESS_BAR_TAGS: dict[str, tuple[str, ...]] = {
    "ppo": ("ppo/reward_mean", "ppo/kl", "ppo/task_success"),
    "grpo": ("grpo/reward_mean", "grpo/kl", "grpo/task_success"),
}

#: the curves every PPO iteration logs (``ppo/task_success`` is added when a task checker is known)
PPO_TAGS: tuple[str, ...] = (
    "ppo/reward_mean", "ppo/reward_std", "ppo/score_mean", "ppo/kl", "ppo/kl_coef", "ppo/policy_loss",
    "ppo/value_loss", "ppo/clipfrac", "ppo/approx_kl", "ppo/entropy", "ppo/response_length",
    "ppo/eos_fraction", "ppo/value_explained_variance", "ppo/advantage_mean", "ppo/return_mean",
    "ppo/value_mean",
    "time/generation_s", "time/training_s", "throughput/generated_tokens_per_s",
)


def reduce_metrics(strategy: Any, metrics: Mapping[str, Pooled | Tensor | float]) -> dict[str, float]:
    """Each metric over every rank, in one collective (every rank must pass the same keys).

    A :class:`~lightning_rlhf.modules.pooled.Pooled` metric (token-weighted means, standard deviations) is
    computed from its sums added over ranks: the statistic of the global batch. A plain value (a loss, a
    time) is averaged over ranks.

    Args:
        strategy: the trainer's strategy (its ``reduce`` sums across processes).
        metrics: :class:`Pooled` statistics, scalar tensors or floats by name.
    """
    names = sorted(metrics)
    pooled = {n: m if isinstance(m, Pooled) else pooled_mean(float(m)) for n, m in metrics.items()}
    sizes = [len(pooled[n].sums) for n in names]
    device = getattr(strategy, "root_device", torch.device("cpu"))
    stacked = torch.cat([pooled[n].sums for n in names]).to(device)
    totals = strategy.reduce(stacked, reduce_op="sum").cpu().split(sizes)
    return {n: float(pooled[n].combine(total)) for n, total in zip(names, totals)}


def rollout_metrics(
    raw_scores: Tensor, rewards: Tensor, kl: Tensor, kl_coef: float, entropy: Tensor, values: Tensor,
    advantages: Tensor, returns: Tensor, response_mask: Tensor, eos_found: Tensor,
) -> dict[str, Pooled | float]:
    """The curves of one rollout, as statistics of the global batch once reduced.

    Args:
        raw_scores: ``(B,)`` reward-model scores before normalisation and clipping.
        rewards: ``(B, R)`` per-token rewards (KL penalty + score).
        kl: this rank's mean KL per sequence.
        kl_coef: the KL coefficient the rewards used.
        entropy: ``(B, R)`` entropies of the sampling distributions.
        values: ``(B, R)`` critic values at sampling time.
        advantages: ``(B, R)`` advantages (before whitening).
        returns: ``(B, R)`` value targets.
        response_mask: ``(B, R)`` true on real response tokens.
        eos_found: ``(B,)`` whether each response ended.
    """
    rows, totals = len(rewards), rewards.sum(-1)
    return {
        "ppo/reward_mean": pooled_mean(totals), "ppo/reward_std": pooled_std(totals),
        "ppo/score_mean": pooled_mean(raw_scores), "ppo/kl": pooled_mean_of(kl, rows),
        "ppo/kl_coef": kl_coef, "ppo/entropy": pooled_mean(entropy, response_mask),
        "ppo/response_length": pooled_mean(response_mask.sum(1).float()),
        "ppo/eos_fraction": pooled_mean(eos_found.float()),
        "ppo/value_explained_variance": pooled_explained_variance(values, returns, response_mask),
        "ppo/advantage_mean": pooled_mean(advantages, response_mask),
        "ppo/return_mean": pooled_mean(returns, response_mask), "ppo/value_mean": pooled_mean(values, response_mask),
    }


def source_metrics(prefix: str, rewards: Any) -> dict[str, Pooled]:
    """Each reward source's mean over the answers it scored (``<prefix>/reward/<source>``) and the share of
    answers no source scored (``<prefix>/unscored_fraction``).

    Args:
        prefix: the curves' prefix (``ppo``, ``grpo``).
        rewards: a :class:`~lightning_rlhf.rewards.combined.SampleRewards`.
    """
    metrics = {f"{prefix}/reward/{name}": pooled_mean(torch.nan_to_num(values), ~values.isnan())
               for name, values in rewards.per_source.items()}
    metrics[f"{prefix}/unscored_fraction"] = pooled_mean(rewards.total.isnan().float())
    return metrics


def log_iteration(module: LightningModule, metrics: Mapping[str, float],
                  progress_bar_tags: Sequence[str] = PROGRESS_BAR_TAGS["ppo"]) -> None:
    """Record one PPO (or GRPO) iteration's metrics (already averaged over ranks by :func:`reduce_metrics`).

    Every iteration they go into ``trainer.callback_metrics`` (for ``ModelCheckpoint(monitor=...)``, early
    stopping and callbacks) and ``trainer.logged_metrics``, and ``progress_bar_tags`` into the progress
    bar; every ``Trainer(log_every_n_steps=...)``
    iterations (and when the trainer stops) to every logger, at the step Lightning uses for its own curves
    (the count of PPO iterations). That is what ``self.log_dict(on_step=True)`` does, minus its cost: Lightning's
    result collection took 8-13 ms per call for the 18 PPO curves (0.47-0.73 ms per key; ``python
    benchmarks/ppo_step_parts.py``, one CPU thread), 6-10% of a ~130 ms tiny-model PPO iteration, and its
    cross-rank reduction is already done.

    Args:
        module: the PPO module (its trainer and loggers are used).
        metrics: metric name -> value, identical on every rank.
        progress_bar_tags: the metrics shown in the progress bar (one of :data:`PROGRESS_BAR_TAGS`).
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
