"""Where scores come from: reward functions (TRL's signature, by import path), built-in checkers, and a remote
scorer over HTTP (docs/rewards.md)."""

from lightning_rlhf.rewards.builtin import (
    BUILTIN_REWARD_FUNCTIONS,
    FormatReward,
    answer_match,
    answer_match_shaped,
    answer_only_format,
    brevity,
    completion_text,
    exact_answer,
    math_verify_match,
)
from lightning_rlhf.rewards.reasoning_gym import final_answer, reasoning_gym_score, reasoning_gym_score_flexible
from lightning_rlhf.rewards.remote import RemoteScorer
from lightning_rlhf.rewards.resolve import (
    NAMED_REWARD_FUNCTIONS,
    RewardSpec,
    resolve_reward_function,
    resolve_reward_functions,
)
from lightning_rlhf.rewards.scoring import (
    NamedRewardFunction,
    RewardError,
    RewardFunction,
    RewardScores,
    compute_rewards,
)

__all__ = [
    "BUILTIN_REWARD_FUNCTIONS",
    "FormatReward",
    "NAMED_REWARD_FUNCTIONS",
    "NamedRewardFunction",
    "RemoteScorer",
    "RewardError",
    "RewardFunction",
    "RewardScores",
    "RewardSpec",
    "answer_match",
    "answer_match_shaped",
    "answer_only_format",
    "brevity",
    "completion_text",
    "compute_rewards",
    "exact_answer",
    "final_answer",
    "math_verify_match",
    "reasoning_gym_score",
    "reasoning_gym_score_flexible",
    "resolve_reward_function",
    "resolve_reward_functions",
]
