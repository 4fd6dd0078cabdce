"""PPOModule: step 3 of the InstructGPT / DeepSpeed-Chat pipeline (actor, critic, reference, reward).

One ``training_step`` is one PPO iteration on one batch of prompts:
rollout (generate) -> score -> KL-penalised rewards -> GAE and whitening -> ``ppo_epochs`` over
mini-batches (actor step, then critic step) -> optional pretraining (ptx) step -> log.
An EMA of the actor is :class:`~lightning_rlhf.callbacks.ema.EMACallback` with ``model_attr="actor"``.
The maths lives in :mod:`lightning_rlhf.algorithms`; buffers and forward plumbing in
:mod:`lightning_rlhf.modules.rollout`; placement (ZeRO-3, generation switch) in the strategy.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_rlhf.algorithms import (
    AdaptiveKLController,
    FixedKLController,
    KLController,
    causal_lm_loss,
    clipped_policy_loss,
    clipped_value_loss,
    generalized_advantage_estimation,
    get_kl_estimator,
    kl_penalized_rewards,
    masked_whiten,
    process_scores,
)
from lightning_rlhf.data.datamodule import reshuffled_passes
from lightning_rlhf.models import LoraArgs, load_causal_lm, load_tokenizer, load_value_model, sequence_scores
from lightning_rlhf.modules._common import (
    OptimizerArgs, attached_strategy, lightning_optimizer_config, sharded_loading)
from lightning_rlhf.modules.online import OnlineRLModule, freeze, unsaved_reward_funcs
from lightning_rlhf.modules.ppo_config import GenerationArgs
from lightning_rlhf.modules.pooled import pooled_mean
from lightning_rlhf.modules.ppo_logging import PPO_TAGS, rollout_metrics, source_metrics
from lightning_rlhf.modules.rollout import Rollout, critic_values, forward_kwargs, policy_logprobs
from lightning_rlhf.rewards.combined import RewardSources
from lightning_rlhf.rewards.resolve import RewardSpec
from lightning_rlhf.strategies import frozen_models

#: DeepSpeed-Chat's learning rates (tuned for 1B+ models); None for either argument means these
ACTOR_OPTIMIZER = OptimizerArgs(learning_rate=9.65e-6)
CRITIC_OPTIMIZER = OptimizerArgs(learning_rate=5e-6)

# the typed arguments kept in ``hparams`` must unpickle under ``torch.load(weights_only=True)`` on resume
torch.serialization.add_safe_globals([GenerationArgs, LoraArgs, OptimizerArgs])


class PPOModule(OnlineRLModule):
    """PPO with a KL penalty against a frozen reference, scored by a frozen reward model.

    Defaults follow DeepSpeed-Chat (actor lr 9.65e-6, critic lr 5e-6, KL coefficient 0.1, reward clip 5,
    clip ranges 0.2, gamma 1, lambda 0.95, one PPO epoch), which are tuned for 1B+ models; tiny models
    need larger learning rates and a stronger KL penalty: see
    :func:`~lightning_rlhf.modules.ppo_config.tiny_ppo_settings` (measured on the built-in task).

    Batches are PPO prompt batches (``prompt_input_ids``, ``prompt_attention_mask`` left-padded,
    ``prompts``). With ``ptx_coef > 0`` the SFT batches of the language-modelling loss come from the data
    module's ``ptx_dataloader`` (cycled), or from the batch itself when it is a mapping
    ``{"ppo": <prompt batch>, "ptx": <SFT batch>}`` (as Lightning's ``CombinedLoader`` yields).

    Manual optimization: every optimizer step of either model advances ``trainer.global_step`` (one PPO
    iteration is ``2 * ppo_epochs * ceil(buffer / train_batch_size)`` steps, plus one with ptx), so bound a
    run by PPO iterations with ``max_epochs`` / ``limit_train_batches``, checkpoint it by iteration with
    :class:`~lightning_rlhf.callbacks.IterationCheckpoint`; curves are logged against the
    iteration (batch) count; set ``log_every_n_steps=1`` to record every point. Learning-rate schedules
    step once per PPO iteration.

    Args:
        actor: Hugging Face folder of the policy (the SFT output of step 1).
        reward_model: folder of the reward model (step 2), frozen; None scores with ``reward_funcs`` only.
        critic: folder the critic starts from; ``None`` uses ``reward_model`` (DeepSpeed-Chat's choice), or the
            actor (with a fresh value head) without a reward model.
        reference: folder of the frozen reference policy; ``None`` uses ``actor``.
        tokenizer: tokenizer folder; ``None`` uses ``actor``. Actor, reference and reward model share it.
        actor_lora: LoRA settings of the actor (None: full fine-tuning).
        critic_lora: LoRA settings of the critic.
        actor_gradient_checkpointing: recompute the actor's activations in backward.
        critic_gradient_checkpointing: recompute the critic's activations in backward.
        actor_optimizer: AdamW + schedule of the actor (default: lr 9.65e-6, cosine over the run).
        critic_optimizer: AdamW + schedule of the critic (default: lr 5e-6, cosine over the run).
        max_grad_norm: gradient-norm clip of each model's update (None: no clipping). Under
            :class:`~lightning_rlhf.strategies.HybridDeepSpeedStrategy` it becomes every trained engine's
            DeepSpeed ``gradient_clipping`` (an engine's ``engine_configs`` entry wins).
        generation: sampling settings of the rollouts.
        generation_batch_size: prompts per ``generate`` call (None: the whole batch at once). The
            dataloader's batch size is the rollout buffer size.
        logprobs_from_generation: take the rollout's log-probabilities (and entropies) from the logits
            ``generate`` already computed, as TRL does, instead of a second actor forward over the
            sequences, as DeepSpeed-Chat does. They are read as each token is drawn (one step's ``(B, V)``
            distribution held at a time, not every step's logits) and are exactly the distribution the tokens
            were drawn from; a full forward agrees to float rounding (KV cache vs full attention). A bf16/fp16
            actor (or autocast) and tensor-parallel generation (``inference_tp_size > 1``) always use the
            forward, so the first PPO ratio is exactly 1 (see :meth:`logprobs_from_generation`).
        train_batch_size: rows per PPO mini-batch (the training batch size).
        ppo_epochs: passes over the rollout buffer per PPO iteration.
        clip_range: PPO ratio clip ``eps``.
        clip_range_value: value clip ``eps``.
        gamma: discount factor.
        lam: GAE lambda.
        whiten_advantages: normalise advantages over the rollout (masked), across all ranks' rows.
        kl_coef: initial coefficient of the per-token KL penalty.
        kl_estimator: ``k1`` (log-ratio, DeepSpeed-Chat), ``k2`` or ``k3``.
        kl_target: if set, adapt the coefficient towards this KL per sequence (Ziegler et al.).
        kl_horizon: horizon of the adaptive controller, in samples.
        clip_reward_value: clip the (normalised) score to ``[-v, v]``; None disables the clip.
        normalize_reward: normalise scores with ``reward_stats.json`` (``mean``, ``std``) saved beside
            the reward model, and the critic's values the same way (so they start on the returns' scale).
        missing_eos_penalty: subtracted from the score of responses that never emit EOS.
        ptx_coef: weight of the language-modelling loss on SFT batches (0 disables; DeepSpeed-Chat's
            ``--unsup_coef`` is 27.8).
        ptx_batch_size: SFT rows per ptx step (None: the data module's batch size).
        dropout: dropout probability of every model during PPO (0: rollout and update log-probs agree).
        num_samples_to_log: sample generations written to TensorBoard text.
        log_samples_every_n_steps: how often (in PPO iterations) samples are logged.
        seed: seed of the mini-batch shuffle.
        reward_funcs: reward functions added to the reward model's score (or used alone): import paths
            ``package.module:function``, built-in names, ``http(s)://`` URLs or callables, each
            ``f(prompts, completions, **columns) -> list[float | None]`` (TRL's signature; see ``docs/rewards.md``).
            The score is ``(rm - mean) / std + sum(weight * f)``, then ``missing_eos_penalty`` and the clip; an answer
            no source scored is left out of the update and counted.
        reward_weights: one weight per reward function (None: 1.0 each).
        reward_start_iterations: one iteration per reward function from which its weight counts (0 before; it is
            still computed and logged): a schedule, e.g. ``[0, 20]`` pays correctness first and the format from
            iteration 20. None: every weight from the start. Validation outside ``fit`` uses every weight.
        reward_url: a remote scorer's ``http(s)://`` address, one more reward function after ``reward_funcs``.
    """

    def __init__(
        self,
        actor: str,
        reward_model: str | None = None,
        critic: str | None = None,
        reference: str | None = None,
        tokenizer: str | None = None,
        actor_lora: LoraArgs | None = None,
        critic_lora: LoraArgs | None = None,
        actor_gradient_checkpointing: bool = False,
        critic_gradient_checkpointing: bool = False,
        actor_optimizer: OptimizerArgs | None = ACTOR_OPTIMIZER,
        critic_optimizer: OptimizerArgs | None = CRITIC_OPTIMIZER,
        max_grad_norm: float | None = 1.0,
        generation: GenerationArgs | None = GenerationArgs(),
        generation_batch_size: int | None = None,
        logprobs_from_generation: bool = True,
        train_batch_size: int = 4,
        ppo_epochs: int = 1,
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
        dropout: float = 0.0,
        num_samples_to_log: int = 4,
        log_samples_every_n_steps: int = 10,
        seed: int = 0,
        reward_funcs: list[RewardSpec] | None = None,
        reward_weights: list[float] | None = None,
        reward_url: str | None = None,
        reward_start_iterations: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=unsaved_reward_funcs(reward_funcs))
        self._validate()
        self.init_online()
        self.rewards = RewardSources(reward_funcs, reward_weights, reward_url=reward_url,
                                     reward_start_iterations=reward_start_iterations)
        if reward_model is None and not self.rewards:
            raise ValueError("PPOModule needs a reward: a reward_model (step 2's export), reward_funcs "
                             "(e.g. ['answer_match']), or both")
        if normalize_reward and reward_model is None:
            raise ValueError("PPOModule(normalize_reward=True) normalises the reward model's scores with its "
                             "reward_stats.json, but no reward_model is given; set normalize_reward=False")
        # copies: the defaults in the signature are shared objects (they are there for --print_config to show)
        self.actor_optimizer = copy.copy(actor_optimizer or ACTOR_OPTIMIZER)
        self.critic_optimizer = copy.copy(critic_optimizer or CRITIC_OPTIMIZER)
        self.generation = copy.copy(generation or GenerationArgs())
        # kept as objects: under LightningCLI `self.hparams` holds the parsed config (plain dicts), not these
        self.actor_lora, self.critic_lora = actor_lora, critic_lora
        self.tokenizer = load_tokenizer(tokenizer or actor)
        self.kl_controller: KLController = (
            FixedKLController(kl_coef) if kl_target is None else AdaptiveKLController(kl_coef, kl_target, kl_horizon)
        )
        self.score_mean, self.score_std = self._reward_stats() if normalize_reward else (0.0, 1.0)
        self.actor = self.critic = self.reference = self.reward_model = None
        self._shuffle = torch.Generator().manual_seed(seed)
        self._ptx_iterator: Iterator[Any] | None = None

    def _validate(self) -> None:
        hp = self.hparams
        get_kl_estimator(hp.kl_estimator)
        for name in ("train_batch_size", "ppo_epochs", "kl_horizon", "log_samples_every_n_steps"):
            if hp[name] < 1:
                raise ValueError(f"PPOModule.{name} must be >= 1, got {hp[name]}")
        for name in ("generation_batch_size", "ptx_batch_size"):
            if hp[name] is not None and hp[name] < 1:
                raise ValueError(f"PPOModule.{name} must be >= 1 or None, got {hp[name]}")
        for name in ("clip_range", "clip_range_value", "kl_coef", "ptx_coef"):
            if hp[name] < 0:
                raise ValueError(f"PPOModule.{name} must be >= 0, got {hp[name]}")
        if hp.clip_reward_value is not None and hp.clip_reward_value <= 0:
            raise ValueError(f"PPOModule.clip_reward_value must be > 0 (a clip of 0 would zero every score), or None "
                             f"to disable the clip; got {hp.clip_reward_value}")
        if hp.max_grad_norm is not None and hp.max_grad_norm < 0:
            raise ValueError(f"PPOModule.max_grad_norm must be >= 0 or None, got {hp.max_grad_norm}")
        if not (0.0 <= hp.gamma <= 1.0 and 0.0 <= hp.lam <= 1.0):
            raise ValueError(f"PPOModule.gamma and lam must be in [0, 1], got gamma={hp.gamma}, lam={hp.lam}")

    def _reward_stats(self) -> tuple[float, float]:
        path = Path(self.hparams.reward_model) / "reward_stats.json"
        if not path.is_file():
            raise FileNotFoundError(f"PPOModule(normalize_reward=True) needs {path} (written by the reward step)")
        stats = json.loads(path.read_text())
        if not stats.get("std", 0) > 0:
            raise ValueError(f"{path}: 'std' must be > 0, got {stats.get('std')}")
        return float(stats["mean"]), float(stats["std"])

    def model_paths(self) -> Sequence[str]:
        """Actor, reference, critic and reward model folders (each must hold a prompt plus a response)."""
        hp = self.hparams
        return [p for p in (hp.actor, hp.reference, hp.critic, hp.reward_model) if p]

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

    # -- models and optimizers ------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the four models (inside the strategy's sharded context, so ZeRO-3 ``zero.Init`` applies)."""
        if self.actor is not None:
            return
        hp, tok, p = self.hparams, self.tokenizer, self.hparams.dropout
        with sharded_loading(self):  # ZeRO-3: from_pretrained loads straight into partitions
            self.actor = load_causal_lm(hp.actor, lora=self.actor_lora, dropout=p, tokenizer=tok,
                                        gradient_checkpointing=hp.actor_gradient_checkpointing)
            critic = hp.critic or hp.reward_model or hp.actor
            self.critic = load_value_model(critic, lora=self.critic_lora, dropout=p, tokenizer=tok,
                                           gradient_checkpointing=hp.critic_gradient_checkpointing)
            # offload_frozen_models: their ZeRO-3 partitions are created on the CPU
            with frozen_models(attached_strategy(self)):
                self.reference = load_causal_lm(hp.reference or hp.actor, dropout=p, tokenizer=tok)
                if hp.reward_model is not None:
                    self.reward_model = load_value_model(hp.reward_model, dropout=p, tokenizer=tok)
        # from_pretrained returns eval mode; trained models need train mode (gradient checkpointing checks it)
        self.actor.train(), self.critic.train()
        freeze(self.reference, self.reward_model)

    def configure_optimizers(self) -> list[dict[str, Any]]:
        """AdamW + schedule for the actor, then for the critic (one DeepSpeed engine each)."""
        total = self.trainer.estimated_stepping_batches
        return [lightning_optimizer_config(self.actor, self.actor_optimizer, total, self.trainer),
                lightning_optimizer_config(self.critic, self.critic_optimizer, total, self.trainer)]

    # -- the algorithm --------------------------------------------------------------------------------
    @torch.no_grad()
    def make_experience(self, batch: Mapping[str, Any]) -> tuple[Rollout, dict[str, Any], tuple]:
        """Generate responses, score them, and turn the scores into advantages (the rollout buffer)."""
        hp, temperature = self.hparams, self.generation.logprob_temperature
        start = time.perf_counter()
        generated = self.generate(batch, greedy=False, with_logprobs=self.logprobs_from_generation())
        generation_s = time.perf_counter() - start
        sequences, attention_mask, response_mask, eos_found = (generated.sequences, generated.attention_mask,
                                                                generated.response_mask, generated.eos_found)
        length = response_mask.shape[1]
        logprobs, entropy = generated.logprobs, generated.entropy
        if logprobs is None:
            logprobs, entropy = policy_logprobs(self.actor, sequences, attention_mask, length, temperature, True)
        ref_logprobs, _ = policy_logprobs(self.reference, sequences, attention_mask, length, temperature)
        values = critic_values(self.critic, sequences, attention_mask, length, self.score_mean, self.score_std)
        responses = self.responses(generated)
        raw_scores, sample_rewards = self.rewards_of(batch, generated, responses)
        scores = process_scores(torch.nan_to_num(sample_rewards.total).to(sequences.device), eos_found,
                                hp.missing_eos_penalty, 0.0, 1.0, hp.clip_reward_value)
        scored = ~sample_rewards.total.isnan().to(sequences.device)
        response_mask = response_mask & scored.unsqueeze(1)  # an answer no source scored: out of the update
        kl_coef = self.kl_controller.value
        rewards, stats = kl_penalized_rewards(scores, logprobs, ref_logprobs, response_mask, kl_coef, hp.kl_estimator)
        advantages, returns = generalized_advantage_estimation(rewards, values, response_mask, hp.gamma, hp.lam)
        metrics = rollout_metrics(raw_scores, rewards, stats["kl"], kl_coef, entropy, values, advantages, returns,
                                  response_mask, eos_found)
        if self.rewards:
            metrics.update(source_metrics("ppo", sample_rewards))
        metrics.update({"time/generation_s": generation_s,
                        "throughput/generated_tokens_per_s": response_mask.sum().item() / max(generation_s, 1e-9)})
        if hp.whiten_advantages:
            advantages = masked_whiten(advantages, response_mask, sum_across=self.sum_across_ranks())
        success = self.task_success(batch["prompts"], responses)
        if success is not None:
            metrics["ppo/task_success"] = pooled_mean(success.float())
        rollout = Rollout(sequences, attention_mask, response_mask, logprobs, advantages, values=values,
                          returns=returns)
        return rollout, metrics, (batch["prompts"], responses, raw_scores.tolist())

    def rewards_of(self, batch: Mapping[str, Any], generated: Any, responses: list[str]) -> tuple[Tensor, Any]:
        """The raw reward-model scores (for ``ppo/score_mean``; the reward functions' total without a reward
        model) and every answer's reward, the reward model's score normalised."""
        normalised = raw = None
        if self.reward_model is not None:
            raw = sequence_scores(self.reward_model, generated.sequences, generated.attention_mask)
            normalised = (raw.float() - self.score_mean) / self.score_std
        rewards = self.score(batch["prompts"], generated, responses, batch.get("columns"), normalised)
        return (raw if raw is not None else torch.nan_to_num(rewards.total)), rewards

    def update(self, rollout: Rollout, extra_batch: Any = None) -> dict[str, Any]:
        """The PPO update, then the ptx step (on ``extra_batch``, the batch's SFT part, or the next SFT batch)."""
        metrics = self.ppo_update(rollout)
        if self.hparams.ptx_coef > 0:
            metrics["ppo/ptx_loss"] = self.ptx_step(extra_batch if extra_batch is not None else self.next_ptx_batch())
        return metrics

    def ppo_update(self, rollout: Rollout) -> dict[str, Tensor]:
        """``ppo_epochs`` passes over shuffled mini-batches of the buffer: actor step, then critic step."""
        actor_opt, critic_opt = self.optimizers()
        hp, sums, count = self.hparams, {}, 0
        for _ in range(hp.ppo_epochs):
            for mb in rollout.minibatches(hp.train_batch_size, self._shuffle):
                length = mb.response_mask.shape[1]
                logprobs, _ = policy_logprobs(self.actor, mb.sequences, mb.attention_mask, length,
                                              self.generation.logprob_temperature)
                policy_loss, policy_stats = clipped_policy_loss(logprobs, mb.logprobs, mb.advantages,
                                                                mb.response_mask, hp.clip_range)
                self.optimizer_step(actor_opt, policy_loss)
                values = critic_values(self.critic, mb.sequences, mb.attention_mask, length, self.score_mean,
                                       self.score_std)
                value_loss, value_stats = clipped_value_loss(values, mb.values, mb.returns, mb.response_mask,
                                                             hp.clip_range_value)
                self.optimizer_step(critic_opt, value_loss)
                step = {"ppo/policy_loss": policy_loss.detach(), "ppo/value_loss": value_loss.detach(),
                        "ppo/clipfrac": policy_stats["clipfrac"], "ppo/approx_kl": policy_stats["approx_kl"],
                        "ppo/value_clipfrac": value_stats["value_clipfrac"]}
                sums = {k: sums.get(k, 0.0) + v for k, v in step.items()}
                count += 1
        return {k: v / count for k, v in sums.items()}

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


__all__ = ["GenerationArgs", "PPOModule", "PPO_TAGS"]
