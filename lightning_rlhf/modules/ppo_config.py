"""Typed settings of PPO sampling (grouped so rollouts and validation share them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GenerationArgs:
    """How the actor samples responses.

    Attributes:
        max_new_tokens: longest response in tokens (DeepSpeed-Chat's ``--max_answer_seq_len``, 256).
            Responses stop earlier at EOS; forcing full length causes repetition.
        do_sample: sample (True) or decode greedily (False).
        temperature: softmax temperature of sampling; the PPO log-probabilities use the same.
        top_k: keep only the ``top_k`` most likely tokens (0 disables). The PPO log-probabilities are those of
            the untruncated distribution (as in TRL and OpenRLHF); keep 0 for exact ratios.
        top_p: nucleus sampling threshold (1.0 disables; same caveat as ``top_k``).
    """

    max_new_tokens: int = 256
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"GenerationArgs.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"GenerationArgs.temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"GenerationArgs.top_p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self, pad_token_id: int, eos_token_id: int | list[int], greedy: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``generate`` (``greedy`` overrides ``do_sample`` for evaluation).

        These are the only sampling settings applied: the model's saved ``generation_config`` (repetition
        penalty, top-k, ...) is set aside during rollouts (:mod:`lightning_rlhf.models.sampling`).
        """
        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
            do_sample=self.do_sample and not greedy,
        )
        if kwargs["do_sample"]:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return kwargs

    @property
    def logprob_temperature(self) -> float:
        """Temperature the PPO log-probabilities divide the logits by (1 when decoding greedily)."""
        return self.temperature if self.do_sample else 1.0


#: prompts per rollout (the PPO data module's ``batch_size``) that :func:`tiny_ppo_settings` was tuned with
TINY_PPO_ROLLOUT_SIZE = 64


def tiny_ppo_settings() -> dict[str, Any]:
    """``PPOModule`` arguments tuned for tiny models trained from scratch on the built-in task (CPU).

    Measured with a llama of hidden size 64, 2 layers (tied embeddings, 2 KV heads), SFT'd and reward-trained
    on the addition task (``tests/modules/scripts/ppo_pipeline.py``), rollouts of :data:`TINY_PPO_ROLLOUT_SIZE`
    prompts, 3 epochs over 1,710 prompts, PPO seeds 0/1/2 from one SFT start (2-core AMD EPYC, AVX2 kernels,
    2026-12-01): held-out greedy task success 0.589 -> 0.933 / 0.922 / 0.844 (median lift +0.33), reward
    -1.11 -> 2.78 / 2.70 / 2.60 (median lift +3.8).
    What matters for tiny models: learning rates ~30x DeepSpeed-Chat's (3e-4 actor, 1e-3 critic), a strong
    KL coefficient (0.3: a reward model trained on few pairs rates unseen answers unreliably, and the
    penalty keeps the policy where it was trained), normalised rewards, and short responses
    (answers are 1-2 tokens + EOS).
    """
    from lightning_rlhf.modules._common import OptimizerArgs

    return dict(
        actor_optimizer=OptimizerArgs(learning_rate=3e-4, scheduler="constant"),
        critic_optimizer=OptimizerArgs(learning_rate=1e-3, scheduler="constant"),
        generation=GenerationArgs(max_new_tokens=4, temperature=1.0),
        train_batch_size=32, ppo_epochs=1, kl_coef=0.3, normalize_reward=True, missing_eos_penalty=1.0,
    )
