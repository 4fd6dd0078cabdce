"""What PPO reports each iteration: its curve names and the statistics of a rollout with a critic."""

from __future__ import annotations

from torch import Tensor

from lightning_rlhf.modules.pooled import Pooled, pooled_explained_variance, pooled_mean, pooled_mean_of, pooled_std

#: the curves every PPO iteration logs (``ppo/task_success`` is added when a task checker is known)
PPO_TAGS: tuple[str, ...] = (
    "ppo/reward_mean", "ppo/reward_std", "ppo/score_mean", "ppo/kl", "ppo/kl_coef", "ppo/policy_loss",
    "ppo/value_loss", "ppo/clipfrac", "ppo/approx_kl", "ppo/entropy", "ppo/response_length",
    "ppo/eos_fraction", "ppo/value_explained_variance", "ppo/advantage_mean", "ppo/return_mean",
    "ppo/value_mean",
    "time/generation_s", "time/logprobs_s", "time/training_s", "throughput/generated_tokens_per_s",
)


def rollout_metrics(
    raw_scores: Tensor, rewards: Tensor, kl: Tensor, kl_coef: float, entropy: Tensor, values: Tensor,
    advantages: Tensor, returns: Tensor, response_mask: Tensor, eos_found: Tensor,
) -> dict[str, Pooled | float]:
    """The curves of one rollout, as global-batch statistics once reduced.

    ``raw_scores`` are before normalisation and clipping, ``advantages`` before whitening; ``kl`` is this rank's
    mean KL per sequence.
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
