"""What GRPO (and its family) reports each iteration: the curves a critic-free run is judged by.

Why these: a group-relative run fails quietly in ways PPO's curves do not show. The within-group reward std
falls to 0 when every answer to a prompt scores the same (no signal), the share of such groups tells how much
of the batch taught nothing, response lengths drift (the length bias DAPO and Dr. GRPO describe), and the
low/high clip fractions show whether clip-higher is active.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rlhf.algorithms.group_advantages import within_group_std
from lightning_rlhf.modules.pooled import Pooled, pooled_mean, pooled_mean_of, pooled_std
from lightning_rlhf.modules.ppo_logging import source_metrics
from lightning_rlhf.rewards.combined import SampleRewards

#: the curves every GRPO iteration logs (``grpo/reward/<source>`` per reward source, ``grpo/kl`` with a
#: reference, ``grpo/task_success`` with a task checker, ``grpo/groups_filtered`` with dynamic sampling and
#: ``grpo/truncated_filtered`` with ``filter_truncated`` come on top)
GRPO_TAGS: tuple[str, ...] = (
    "grpo/reward_mean", "grpo/reward_std", "grpo/reward_group_std", "grpo/groups_without_signal",
    "grpo/unscored_fraction", "grpo/response_length", "grpo/response_length_max", "grpo/eos_fraction",
    "grpo/entropy", "grpo/policy_loss", "grpo/clipfrac_low", "grpo/clipfrac_high", "grpo/approx_kl",
    "grpo/ratio_mean", "grpo/advantage_mean",
    "time/generation_s", "time/training_s", "throughput/generated_tokens_per_s",
)


def group_rollout_metrics(
    total: Tensor, rewards: SampleRewards, num_generations: int, groups_without_signal: int,
    response_mask: Tensor, eos_found: Tensor, entropy: Tensor, advantages: Tensor, loss_mask: Tensor,
) -> dict[str, Pooled | float]:
    """The rollout's curves, as statistics of the global batch once reduced over ranks.

    Args:
        total: ``(B,)`` the reward of each answer, shaped (``nan`` where no source scored it).
        rewards: the sources' rewards (their curves, and the share of answers none scored).
        num_generations: answers per prompt.
        groups_without_signal: groups whose scored rewards were all equal (what dynamic sampling drops).
        response_mask: ``(B, R)`` true on the response tokens.
        eos_found: ``(B,)`` whether each answer ended before the length limit.
        entropy: ``(B, R)`` entropies of the sampling distributions.
        advantages: ``(B, R)`` the advantages.
        loss_mask: ``(B, R)`` the tokens the update counts.
    """
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
    metrics.update(source_metrics("grpo", rewards))
    return metrics


__all__ = ["GRPO_TAGS", "group_rollout_metrics"]
