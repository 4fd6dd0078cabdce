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
    PairwiseLossStats,
    PolicyLossStats,
    ValueLossStats,
    causal_lm_loss,
    clipped_policy_loss,
    clipped_value_loss,
    pairwise_reward_loss,
)
from lightning_rlhf.algorithms.masked import masked_mean, masked_sum, masked_var, masked_whiten
from lightning_rlhf.algorithms.preference import (
    PREFERENCE_LOSSES,
    PreferenceLoss,
    PreferenceStats,
    get_preference_loss,
    hinge_loss,
    implicit_rewards,
    ipo_loss,
    preference_loss,
    response_token_mask,
    sequence_logprobs,
    sigmoid_loss,
    simpo_loss,
)

__all__ = [
    "KL_ESTIMATORS",
    "PREFERENCE_LOSSES",
    "AdaptiveKLController",
    "FixedKLController",
    "KLController",
    "PairwiseLossStats",
    "PolicyLossStats",
    "PreferenceLoss",
    "PreferenceStats",
    "RewardStats",
    "ValueLossStats",
    "causal_lm_loss",
    "clipped_policy_loss",
    "clipped_value_loss",
    "entropy_from_logits",
    "explained_variance",
    "generalized_advantage_estimation",
    "get_kl_estimator",
    "get_preference_loss",
    "hinge_loss",
    "implicit_rewards",
    "ipo_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalized_rewards",
    "last_token_index",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "pairwise_reward_loss",
    "preference_loss",
    "process_scores",
    "response_token_mask",
    "sequence_logprobs",
    "sigmoid_loss",
    "simpo_loss",
]
