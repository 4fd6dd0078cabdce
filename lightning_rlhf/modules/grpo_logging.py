"""What GRPO (and its family) reports each iteration: the curves a critic-free run is judged by (docs/grpo.md)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rlhf.algorithms.group_advantages import within_group_std
from lightning_rlhf.modules.pooled import Pooled, pooled_mean, pooled_mean_of, pooled_std

#: the curves every GRPO iteration logs (per-source rewards, KL, task success and filter counts come on top)
GRPO_TAGS: tuple[str, ...] = (
    "grpo/reward_mean", "grpo/reward_std", "grpo/reward_group_std", "grpo/groups_without_signal",
    "grpo/unscored_fraction", "grpo/response_length", "grpo/response_length_max", "grpo/eos_fraction",
    "grpo/entropy", "grpo/policy_loss", "grpo/clipfrac_low", "grpo/clipfrac_high", "grpo/approx_kl",
    "grpo/ratio_mean", "grpo/advantage_mean",
    "time/generation_s", "time/logprobs_s", "time/training_s", "throughput/generated_tokens_per_s",
)


def group_rollout_metrics(
    total: Tensor, num_generations: int, groups_without_signal: int,
    response_mask: Tensor, eos_found: Tensor, entropy: Tensor, advantages: Tensor, loss_mask: Tensor,
) -> dict[str, Pooled | float]:
    """The rollout's curves as global-batch statistics once reduced; ``total`` is ``nan`` where no source scored."""
    scored = ~total.isnan()
    values = torch.nan_to_num(total)
    lengths = response_mask.sum(1).float()
    groups = len(total) // num_generations
    metrics: dict[str, Pooled | float] = {
        "grpo/reward_mean": pooled_mean(values, scored), "grpo/reward_std": pooled_std(values, scored),
        "grpo/reward_group_std": pooled_mean_of(within_group_std(total, num_generations), groups),
        "grpo/groups_without_signal": pooled_mean_of(groups_without_signal / max(groups, 1), groups),
        "grpo/response_length": pooled_mean(lengths), "grpo/eos_fraction": pooled_mean(eos_found.float()),
        "grpo/entropy": pooled_mean(entropy, response_mask),
        "grpo/advantage_mean": pooled_mean(advantages, loss_mask),
    }
    return metrics


__all__ = ["GRPO_TAGS", "group_rollout_metrics"]
