"""What the maths is: pure torch functions for RLHF, no Lightning, no I/O.

Shapes are ``(batch, seq)`` with a boolean mask marking the real tokens; losses return
``(loss, stats)`` with ``stats`` a typed dict of detached scalars; inputs are never modified.
"""

from lightning_rlhf.algorithms.advantages import (
    RewardStats,
    explained_variance,
    generalized_advantage_estimation,
    kl_penalized_rewards,
    last_token_index,
    process_scores,
)
from lightning_rlhf.algorithms.aggregation import (
    LOSS_AGGREGATIONS,
    get_loss_aggregation,
    seq_mean_token_mean,
    seq_mean_token_sum_norm,
    token_mean,
)
from lightning_rlhf.algorithms.dapo import DynamicSampling, dynamic_sampling, mask_truncated, overlong_penalty
from lightning_rlhf.algorithms.group_advantages import (
    GROUP_ADVANTAGE_ESTIMATORS,
    GroupAdvantageEstimator,
    dr_grpo_advantages,
    get_group_advantage_estimator,
    grpo_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    within_group_std,
)
from lightning_rlhf.algorithms.grpo_loss import GRPOLossStats, grpo_policy_loss
from lightning_rlhf.algorithms.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    KLController,
    get_kl_estimator,
    kl_k1,
    kl_k2,
    kl_k3,
)
from lightning_rlhf.algorithms.logits import entropy_from_logits, logprobs_from_logits
from lightning_rlhf.algorithms.losses import (
    ClippedSurrogate,
    PairwiseLossStats,
    PolicyLossStats,
    ValueLossStats,
    causal_lm_loss,
    clipped_policy_loss,
    clipped_surrogate,
    clipped_value_loss,
    pairwise_reward_loss,
)
from lightning_rlhf.algorithms.masked import masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "GROUP_ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "AdaptiveKLController",
    "ClippedSurrogate",
    "DynamicSampling",
    "FixedKLController",
    "GRPOLossStats",
    "GroupAdvantageEstimator",
    "KLController",
    "PairwiseLossStats",
    "PolicyLossStats",
    "RewardStats",
    "ValueLossStats",
    "causal_lm_loss",
    "clipped_policy_loss",
    "clipped_surrogate",
    "clipped_value_loss",
    "dr_grpo_advantages",
    "dynamic_sampling",
    "entropy_from_logits",
    "explained_variance",
    "generalized_advantage_estimation",
    "get_group_advantage_estimator",
    "get_kl_estimator",
    "get_loss_aggregation",
    "grpo_advantages",
    "grpo_policy_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalized_rewards",
    "last_token_index",
    "logprobs_from_logits",
    "mask_truncated",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "overlong_penalty",
    "pairwise_reward_loss",
    "process_scores",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "rloo_advantages",
    "seq_mean_token_mean",
    "seq_mean_token_sum_norm",
    "token_mean",
    "within_group_std",
]
