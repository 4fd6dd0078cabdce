"""Settings for tiny models trained from scratch on the built-in addition task (CPU tests and the tiny pipeline):
far larger learning rates than pretrained models, short answers, for PPO a strong KL penalty (docs/measurements.md)."""

from __future__ import annotations

from typing import Any

from lightning_rlhf.modules.generation_args import GenerationArgs
from lightning_rlhf.modules.optim import OptimizerArgs

#: prompts per rollout (the data module's ``batch_size``) that :func:`tiny_ppo_settings` was tuned with
TINY_PPO_ROLLOUT_SIZE = 64

#: prompts per rollout (the data module's ``batch_size``) that :func:`tiny_grpo_settings` was tuned with
TINY_GRPO_ROLLOUT_PROMPTS = 16


def tiny_ppo_settings() -> dict[str, Any]:
    """``PPOModule`` arguments for a tiny model SFT'd and reward-trained on the built-in task."""
    return dict(
        actor_optimizer=OptimizerArgs(learning_rate=3e-4, scheduler="constant"),
        critic_optimizer=OptimizerArgs(learning_rate=1e-3, scheduler="constant"),
        generation=GenerationArgs(max_new_tokens=4, temperature=1.0),
        train_batch_size=32, update_epochs=1, kl_coef=0.3, normalize_reward=True, missing_eos_penalty=1.0,
    )


def tiny_grpo_settings() -> dict[str, Any]:
    """``GRPOModule`` arguments scored by reward functions only: the right last number (1.0), the answer alone (0.5)."""
    return dict(
        reward_funcs=["answer_match", "answer_only_format"], reward_weights=[1.0, 0.5],
        actor_optimizer=OptimizerArgs(learning_rate=3e-4, scheduler="constant"),
        generation=GenerationArgs(max_new_tokens=4, temperature=1.0), num_generations=4, train_batch_size=64,
        update_epochs=1,
    )
