"""PPOModule: step 3 of the InstructGPT / DeepSpeed-Chat pipeline (actor, critic, reference, reward).

On the shared online loop (:class:`~lightning_rlhf.modules.online.OnlineRLModule`) PPO adds a critic, KL-penalised
per-token rewards with GAE and whitening as its advantages, a clipped policy step then a clipped value step per
mini-batch, and the optional pretraining (ptx) step.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, Literal, Mapping

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_rlhf.algorithms import (
    AdaptiveKLController, FixedKLController, KLController, causal_lm_loss, clipped_policy_loss, clipped_value_loss,
    generalized_advantage_estimation, get_kl_estimator, kl_penalized_rewards, masked_whiten, process_scores)
from lightning_rlhf.data.datamodule import reshuffled_passes
from lightning_rlhf.models import LoraArgs, load_value_model
from lightning_rlhf.models.forward import critic_values, forward_kwargs, policy_logprobs
from lightning_rlhf.modules.generation_args import GenerationArgs
from lightning_rlhf.modules.online import OnlineRLModule
from lightning_rlhf.modules.optim import OptimizerArgs
from lightning_rlhf.modules.ppo_logging import PPO_TAGS, rollout_metrics
from lightning_rlhf.modules.reward import read_reward_stats
from lightning_rlhf.modules.rollout import Experience, Rollout

#: DeepSpeed-Chat's learning rates (tuned for 1B+ models)
ACTOR_OPTIMIZER = OptimizerArgs(learning_rate=9.65e-6)
CRITIC_OPTIMIZER = OptimizerArgs(learning_rate=5e-6)


class PPOModule(OnlineRLModule):
    """PPO with a KL penalty against a frozen reference, scored by a frozen reward model and/or reward functions.

    Defaults follow DeepSpeed-Chat (tuned for 1B+ models); tiny models need larger learning rates and a stronger
    KL penalty (:func:`~lightning_rlhf.modules.tiny_presets.tiny_ppo_settings`). Batches are prompt batches, or
    ``{"ppo": <prompt batch>, "ptx": <SFT batch>}`` (Lightning's ``CombinedLoader``); with ``ptx_coef > 0`` and
    plain batches the SFT batches come from the data module's ``ptx_dataloader``. The shared arguments are
    :class:`~lightning_rlhf.modules.online.OnlineRLModule`'s.

    Args:
        actor: Hugging Face folder of the policy (the SFT output of step 1).
        critic: folder the critic starts from; None uses ``reward_model`` (DeepSpeed-Chat's choice), or the actor
            (with a fresh value head) without a reward model.
        critic_lora: LoRA settings of the critic.
        critic_gradient_checkpointing: recompute the critic's activations in backward.
        actor_optimizer: AdamW + schedule of the actor (default: lr 9.65e-6, cosine over the run).
        critic_optimizer: AdamW + schedule of the critic (default: lr 5e-6, cosine over the run).
        train_batch_size: rows per mini-batch.
        clip_range: PPO ratio clip ``eps``.
        clip_range_value: value clip ``eps``.
        gamma: discount factor.
        lam: GAE lambda.
        whiten_advantages: normalise advantages over the rollout (masked), across all ranks' rows.
        kl_coef: initial coefficient of the per-token KL penalty in the reward.
        kl_estimator: ``k1`` (log-ratio, DeepSpeed-Chat), ``k2`` or ``k3``.
        kl_target: if set, adapt the coefficient towards this KL per sequence (Ziegler et al.).
        kl_horizon: horizon of the adaptive controller, in samples.
        clip_reward_value: clip the (normalised) score to ``[-v, v]``; None disables the clip.
        normalize_reward: normalise the reward model's scores with ``reward_stats.json`` (``mean``, ``std``) saved
            beside it, and the critic's values the same way.
        missing_eos_penalty: subtracted from the score of responses that never emit EOS.
        ptx_coef: weight of the language-modelling loss on SFT batches (0 disables; DeepSpeed-Chat's
            ``--unsup_coef`` is 27.8).
        ptx_batch_size: SFT rows per ptx step (None: the data module's batch size).
    """

    metric_prefix = "ppo"

    def __init__(
        self,
        actor: str,
        *,
        critic: str | None = None,
        critic_lora: LoraArgs | None = None,
        critic_gradient_checkpointing: bool = False,
        actor_optimizer: OptimizerArgs | None = ACTOR_OPTIMIZER,
        critic_optimizer: OptimizerArgs | None = CRITIC_OPTIMIZER,
        train_batch_size: int = 4,
        clip_range: float = 0.2,
        clip_range_value: float = 0.2,
        gamma: float = 1.0,
        lam: float = 0.95,
        whiten_advantages: bool = True,
        kl_coef: float = 0.1,
        kl_estimator: Literal["k1", "k2", "k3"] = "k1",
        kl_target: float | None = None,
        kl_horizon: int = 10000,
        clip_reward_value: float | None = 5.0,
        normalize_reward: bool = False,
        missing_eos_penalty: float = 0.0,
        ptx_coef: float = 0.0,
        ptx_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(actor, actor_optimizer or ACTOR_OPTIMIZER, train_batch_size, **kwargs)
        self._validate()
        if normalize_reward and self.hparams.reward_model is None:
            raise ValueError("PPOModule(normalize_reward=True) normalises the reward model's scores with its "
                             "reward_stats.json, but no reward_model is given; set normalize_reward=False")
        self.critic_optimizer = copy.copy(critic_optimizer or CRITIC_OPTIMIZER)
        self.critic_lora = critic_lora
        self.kl_controller: KLController = (
            FixedKLController(kl_coef) if kl_target is None else AdaptiveKLController(kl_coef, kl_target, kl_horizon)
        )
        self.score_mean, self.score_std = read_reward_stats(self.hparams.reward_model) if normalize_reward else (0.0, 1.0)
        self.critic = None
        self._ptx_iterator: Iterator[Any] | None = None

    def _validate(self) -> None:
        hp = self.hparams
        get_kl_estimator(hp.kl_estimator)
        if hp.kl_horizon < 1:
            raise ValueError(f"PPOModule.kl_horizon must be >= 1, got {hp.kl_horizon}")
        if hp.ptx_batch_size is not None and hp.ptx_batch_size < 1:
            raise ValueError(f"PPOModule.ptx_batch_size must be >= 1 or None, got {hp.ptx_batch_size}")
        for name in ("clip_range", "clip_range_value", "kl_coef", "ptx_coef"):
            if hp[name] < 0:
                raise ValueError(f"PPOModule.{name} must be >= 0, got {hp[name]}")
        if hp.clip_reward_value is not None and hp.clip_reward_value <= 0:
            raise ValueError(f"PPOModule.clip_reward_value must be > 0 (a clip of 0 would zero every score), or None "
                             f"to disable the clip; got {hp.clip_reward_value}")
        if not (0.0 <= hp.gamma <= 1.0 and 0.0 <= hp.lam <= 1.0):
            raise ValueError(f"PPOModule.gamma and lam must be in [0, 1], got gamma={hp.gamma}, lam={hp.lam}")

    @property
    def loads_reference(self) -> bool:
        """PPO always keeps a frozen reference of its own."""
        return True

    def build_trained_models(self) -> None:
        """The critic: from ``critic``, else the reward model, else the actor with a fresh value head."""
        hp = self.hparams
        self.critic = load_value_model(hp.critic or hp.reward_model or hp.actor, lora=self.critic_lora,
                                       dropout=hp.dropout, tokenizer=self.tokenizer,
                                       gradient_checkpointing=hp.critic_gradient_checkpointing)

    def trained_models(self) -> list[tuple[nn.Module, OptimizerArgs]]:
        """The actor, then the critic (one DeepSpeed engine each)."""
        return [*super().trained_models(), (self.critic, self.critic_optimizer)]

    def model_paths(self) -> list[str]:
        """Actor, reference, reward model and critic folders."""
        return [*super().model_paths(), *([self.hparams.critic] if self.hparams.critic else [])]

    def rollout_values(self, sequences: Tensor, attention_mask: Tensor, length: int) -> Tensor:
        """The critic's values at sampling time, on the normalised scores' scale."""
        return critic_values(self.critic, sequences, attention_mask, length, self.score_mean, self.score_std)

    def reward_model_scores(self, raw: Tensor) -> Tensor:
        """The reward model's scores normalised with ``reward_stats.json`` (identity without it)."""
        return (raw.float() - self.score_mean) / self.score_std

    def sample_scores(self, experience: Experience) -> list[float]:
        """The reward model's raw score (the reward functions' total without one)."""
        return self._raw_scores(experience).tolist()

    @staticmethod
    def _raw_scores(experience: Experience) -> Tensor:
        raw = experience.model_scores
        return raw if raw is not None else torch.nan_to_num(experience.rewards.total)

    def advantages(self, experience: Experience) -> tuple[Rollout, dict[str, Any]]:
        """KL-penalised per-token rewards, GAE, then whitening across ranks."""
        hp, generated, rewards = self.hparams, experience.generated, experience.rewards
        device = generated.sequences.device
        scores = process_scores(torch.nan_to_num(rewards.total).to(device), generated.eos_found,
                                hp.missing_eos_penalty, 0.0, 1.0, hp.clip_reward_value)
        scored = ~rewards.total.isnan().to(device)
        response_mask = generated.response_mask & scored.unsqueeze(1)  # an answer no source scored: out
        kl_coef = self.kl_controller.value
        token_rewards, stats = kl_penalized_rewards(scores, experience.logprobs, experience.ref_logprobs,
                                                    response_mask, kl_coef, hp.kl_estimator)
        advantages, returns = generalized_advantage_estimation(token_rewards, experience.values, response_mask,
                                                               hp.gamma, hp.lam)
        metrics = rollout_metrics(self._raw_scores(experience), token_rewards, stats["kl"], kl_coef,
                                  experience.entropy, experience.values, advantages, returns, response_mask,
                                  generated.eos_found)
        if hp.whiten_advantages:
            advantages = masked_whiten(advantages, response_mask, sum_across=self.sum_across_ranks())
        rollout = Rollout(generated.sequences, generated.attention_mask, response_mask, experience.logprobs,
                          advantages, values=experience.values, returns=returns)
        return rollout, metrics

    def update_step(self, mb: Rollout) -> dict[str, Tensor]:
        """A clipped policy step on the actor, then a clipped value step on the critic."""
        hp, (actor_opt, critic_opt), length = self.hparams, self.optimizers(), mb.response_mask.shape[1]
        logprobs, _ = policy_logprobs(self.actor, mb.sequences, mb.attention_mask, length,
                                      self.generation.logprob_temperature)
        policy_loss, policy_stats = clipped_policy_loss(logprobs, mb.logprobs, mb.advantages, mb.response_mask,
                                                        hp.clip_range)
        self.optimizer_step(actor_opt, policy_loss)
        values = critic_values(self.critic, mb.sequences, mb.attention_mask, length, self.score_mean, self.score_std)
        value_loss, value_stats = clipped_value_loss(values, mb.values, mb.returns, mb.response_mask,
                                                     hp.clip_range_value)
        self.optimizer_step(critic_opt, value_loss)
        return {"ppo/policy_loss": policy_loss.detach(), "ppo/value_loss": value_loss.detach(),
                "ppo/clipfrac": policy_stats["clipfrac"], "ppo/approx_kl": policy_stats["approx_kl"],
                "ppo/value_clipfrac": value_stats["value_clipfrac"]}

    def on_iteration_end(self, metrics: Mapping[str, float], rows: int) -> None:
        """Adapt the KL coefficient (a no-op for the fixed controller) to the iteration's KL."""
        self.kl_controller.update(metrics["ppo/kl"], n_steps=rows * self.trainer.world_size)

    def extra_state(self) -> dict[str, Any]:
        """The KL coefficient (the adaptive controller's state), saved in checkpoints."""
        return {"kl_controller": self.kl_controller.state_dict()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore the KL coefficient."""
        self.kl_controller.load_state_dict(state["kl_controller"])
        rank_zero_info(f"PPOModule: restored KL coefficient {self.kl_controller.value:.6g}")

    def prompt_batch(self, batch: Mapping[str, Any]) -> tuple[Mapping[str, Any], Any]:
        """``{"ppo": ..., "ptx": ...}`` batches pass their ``ptx`` part to the update."""
        return (batch["ppo"], batch.get("ptx")) if "ppo" in batch else (batch, None)

    def update(self, rollout: Rollout, extra_batch: Any = None) -> dict[str, Any]:
        """The PPO update, then the ptx step (on ``extra_batch``, or the next SFT batch)."""
        metrics = super().update(rollout)
        if self.hparams.ptx_coef > 0:
            metrics["ppo/ptx_loss"] = self.ptx_step(extra_batch if extra_batch is not None else self.next_ptx_batch())
        return metrics

    def ptx_step(self, batch: Mapping[str, Tensor]) -> Tensor:
        """One actor step on ``ptx_coef`` x the language-modelling loss of an SFT batch (InstructGPT's PPO-ptx)."""
        actor_opt, _ = self.optimizers()
        logits = self.actor(input_ids=batch["input_ids"], **forward_kwargs(self.actor, batch["attention_mask"])).logits
        loss = causal_lm_loss(logits, batch["labels"])
        self.optimizer_step(actor_opt, self.hparams.ptx_coef * loss)
        return loss.detach()

    def next_ptx_batch(self) -> Mapping[str, Tensor]:
        """The next SFT batch from the data module's ``ptx_dataloader`` (cycled), on this device."""
        if self._ptx_iterator is None:
            loader = getattr(self.trainer.datamodule, "ptx_dataloader", None) if self.trainer.datamodule else None
            if loader is None:
                raise RuntimeError("PPOModule(ptx_coef > 0) needs a data module with ptx_dataloader() "
                                   "or batches of the form {'ppo': ..., 'ptx': ...}")
            self._ptx_iterator = reshuffled_passes(loader(self.hparams.ptx_batch_size))
        return self.transfer_batch_to_device(next(self._ptx_iterator), self.device, 0)


__all__ = ["ACTOR_OPTIMIZER", "CRITIC_OPTIMIZER", "GenerationArgs", "PPOModule", "PPO_TAGS"]
