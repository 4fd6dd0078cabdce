"""GRPOModule: critic-free RL (GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++) on the loop PPO uses.

One ``training_step`` is one iteration on one batch of prompts, as in PPO
(:class:`~lightning_rlhf.modules.online.OnlineRLModule`): ``num_generations`` answers per prompt are sampled
(the prompts repeated inside ``generate``), scored by reward functions and/or a reward model, turned into
group-relative advantages by a named estimator, and the actor takes ``ppo_epochs`` passes of clipped updates.
No critic; no reference model at all unless a KL term asks for one.

The variants are names, not subclasses: ``advantage_estimator`` (``grpo``, ``dr_grpo``, ``rloo``,
``reinforce_pp``, ``reinforce_pp_baseline``), ``loss_aggregation`` (``seq_mean_token_mean``, ``token_mean``,
``seq_mean_token_sum_norm``), asymmetric clipping, and DAPO's dynamic sampling and overlong shaping. DAPO is
``clip_range_high=0.28, loss_aggregation=token_mean, dynamic_sampling=True, overlong_buffer_length=...``;
Dr. GRPO is ``advantage_estimator=dr_grpo, loss_aggregation=seq_mean_token_sum_norm``.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import Tensor

from lightning_rlhf.algorithms import get_kl_estimator
from lightning_rlhf.algorithms.aggregation import get_loss_aggregation
from lightning_rlhf.algorithms.dapo import dynamic_sampling, mask_truncated, overlong_penalty
from lightning_rlhf.algorithms.group_advantages import get_group_advantage_estimator
from lightning_rlhf.algorithms.grpo_loss import grpo_policy_loss
from lightning_rlhf.models import LoraArgs, load_causal_lm, load_tokenizer, load_value_model, sequence_scores
from lightning_rlhf.modules._common import (
    OptimizerArgs, attached_strategy, eval_mode, lightning_optimizer_config, sharded_loading)
from lightning_rlhf.modules.grpo_logging import GRPO_TAGS, group_rollout_metrics
from lightning_rlhf.modules.online import OnlineRLModule, freeze, repeat_rows, unsaved_reward_funcs
from lightning_rlhf.modules.pooled import pooled_mean, pooled_mean_of
from lightning_rlhf.modules.ppo_config import GenerationArgs
from lightning_rlhf.modules.rollout import Rollout, policy_logprobs
from lightning_rlhf.rewards.combined import RewardSources
from lightning_rlhf.rewards.resolve import RewardSpec
from lightning_rlhf.strategies import frozen_models

#: TRL's ``GRPOTrainer`` learning rate (1e-6, for full fine-tuning of 1B+ models); LoRA and tiny models need more
GRPO_OPTIMIZER = OptimizerArgs(learning_rate=1e-6)

torch.serialization.add_safe_globals([GenerationArgs, LoraArgs, OptimizerArgs])


class GRPOModule(OnlineRLModule):
    """Group-relative policy optimisation and its relatives, with reward functions (TRL's signature).

    Batches are PPO prompt batches (``prompt_input_ids``, ``prompt_attention_mask`` left-padded, ``prompts``,
    and ``columns``: the records' reference columns such as ``answer``, which reach the reward functions by
    name). Each iteration samples ``num_generations`` answers per prompt, so the rollout holds
    ``batch_size * num_generations`` rows, updated in mini-batches of ``train_batch_size`` rows.

    Args:
        actor: Hugging Face folder of the policy (an SFT or instruct model).
        reward_funcs: reward functions: import paths ``package.module:function``, built-in names (``answer_match``,
            ``answer_match_shaped``, ``answer_only_format``, ``exact_answer``, ``math_verify_match``),
            ``http(s)://`` URLs of remote scorers, or callables; each ``f(prompts, completions, **columns)``.
        reward_weights: one weight per reward function (None: 1.0 each).
        reward_start_iterations: one iteration per reward function from which its weight counts (0 before; it is
            still computed and logged): a schedule, e.g. ``[0, 20]`` pays correctness first and the format from
            iteration 20. None: every weight from the start. Validation outside ``fit`` uses every weight.
        reward_url: a remote scorer's ``http(s)://`` address (JSON batches over HTTP POST, see
            :class:`~lightning_rlhf.rewards.RemoteScorer`), one more reward function after ``reward_funcs``.
        reward_model: folder of a frozen reward model whose score is added to the functions' (None: none).
        reward_model_weight: weight of the reward model's score.
        reference: folder of the frozen reference policy for the KL term; ``None`` uses ``actor``: with
            ``actor_lora``, the actor itself with its adapters switched off (no second copy, as DPO does), else a
            frozen copy of ``actor``. Used only when ``beta > 0``.
        tokenizer: tokenizer folder; ``None`` uses ``actor``.
        actor_lora: LoRA settings of the actor (None: full fine-tuning).
        actor_gradient_checkpointing: recompute the actor's activations in backward.
        actor_optimizer: AdamW + schedule of the actor (default: lr 1e-6, TRL's, cosine over the run).
        max_grad_norm: gradient-norm clip of each update (None: no clipping); DeepSpeed's
            ``gradient_clipping`` under :class:`~lightning_rlhf.strategies.HybridDeepSpeedStrategy`.
        generation: sampling settings of the rollouts (validation decodes greedily).
        generation_batch_size: rows per ``generate`` call (None: every prompt's answers at once).
        logprobs_from_generation: take the rollout's log-probabilities from ``generate``'s logits (see
            :meth:`~lightning_rlhf.modules.online.OnlineRLModule.logprobs_from_generation`).
        num_generations: answers sampled per prompt (the group size ``G``).
        share_prompt_prefix: run each prompt's forward once per group and share its KV cache with the group's
            answers, in ``generate`` and in every log-probability forward, update included
            (:mod:`lightning_rlhf.models.prompt_cache`): the same numbers to float rounding, for a fraction of the
            prompt's cost. Under ZeRO-3 only generation shares. False runs every row in full.
        train_batch_size: rows per mini-batch of the update.
        ppo_epochs: passes over the rollout per iteration (1 with one mini-batch is on-policy: ratio 1).
        advantage_estimator: ``grpo`` (group mean and std), ``dr_grpo`` (no std), ``rloo`` (leave-one-out),
            ``reinforce_pp`` (global whitening) or ``reinforce_pp_baseline`` (group mean, then whitening).
        loss_aggregation: ``seq_mean_token_mean`` (GRPO), ``token_mean`` (DAPO) or ``seq_mean_token_sum_norm``
            (Dr. GRPO, normalised by ``generation.max_new_tokens``).
        clip_range_low: lower clip ``eps_low`` of the ratio.
        clip_range_high: upper clip ``eps_high`` (0.28 is DAPO's clip-higher).
        beta: coefficient of the KL to the reference; 0 (the default, as TRL and DAPO) loads no reference.
        kl_estimator: ``k1``, ``k2`` or ``k3`` (GRPO's) estimate of the per-token KL.
        entropy_coef: coefficient of an entropy bonus in the loss (PPO's ``c2``, veRL's ``entropy_coeff``; 0: off).
            It is the only gradient a group without signal gives, so it widens answers that have collapsed to one.
        kl_in_reward: subtract ``beta * KL_t`` from each token's reward (REINFORCE++) instead of adding it to
            the loss (GRPO).
        dynamic_sampling: leave groups whose rewards are all equal out of the loss (DAPO) and count them.
        overlong_buffer_length: DAPO's soft overlong penalty: the ramp, in tokens, before
            ``generation.max_new_tokens`` over which the penalty grows to ``overlong_penalty_factor``
            (None: off).
        overlong_penalty_factor: the penalty at the length limit.
        filter_truncated: leave answers cut at the length limit (no EOS) out of the loss (DAPO), counted.
        dropout: dropout probability of the actor (0: rollout and update log-probs agree).
        num_samples_to_log: sample generations written to TensorBoard text.
        log_samples_every_n_steps: how often (in iterations) samples are logged.
        seed: seed of the mini-batch shuffle.
    """

    metric_prefix = "grpo"

    def __init__(
        self,
        actor: str,
        reward_funcs: list[RewardSpec] | None = None,
        reward_weights: list[float] | None = None,
        reward_url: str | None = None,
        reward_model: str | None = None,
        reward_model_weight: float = 1.0,
        reference: str | None = None,
        tokenizer: str | None = None,
        actor_lora: LoraArgs | None = None,
        actor_gradient_checkpointing: bool = False,
        actor_optimizer: OptimizerArgs | None = GRPO_OPTIMIZER,
        max_grad_norm: float | None = 1.0,
        generation: GenerationArgs | None = GenerationArgs(),
        generation_batch_size: int | None = None,
        logprobs_from_generation: bool = True,
        num_generations: int = 8,
        train_batch_size: int = 16,
        ppo_epochs: int = 1,
        advantage_estimator: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"] = "grpo",
        loss_aggregation: Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"] = (
            "seq_mean_token_mean"),
        clip_range_low: float = 0.2,
        clip_range_high: float = 0.2,
        beta: float = 0.0,
        kl_estimator: Literal["k1", "k2", "k3"] = "k3",
        kl_in_reward: bool = False,
        dynamic_sampling: bool = False,
        overlong_buffer_length: int | None = None,
        overlong_penalty_factor: float = 1.0,
        filter_truncated: bool = False,
        dropout: float = 0.0,
        num_samples_to_log: int = 4,
        log_samples_every_n_steps: int = 10,
        seed: int = 0,
        reward_start_iterations: list[int] | None = None,
        entropy_coef: float = 0.0,
        share_prompt_prefix: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=unsaved_reward_funcs(reward_funcs))
        self.init_online()
        self.estimator = get_group_advantage_estimator(advantage_estimator)
        self.generation = copy.copy(generation or GenerationArgs())
        self._validate()
        self.rewards = RewardSources(reward_funcs, reward_weights, reward_model_weight, reward_url,
                                     reward_start_iterations)
        if not self.rewards and reward_model is None:
            raise ValueError("GRPOModule needs a reward: give reward_funcs (e.g. ['answer_match']), a reward_model, "
                             "or both")
        self.actor_optimizer = copy.copy(actor_optimizer or GRPO_OPTIMIZER)
        self.actor_lora = actor_lora
        self.tokenizer = load_tokenizer(tokenizer or actor)
        self.actor = self.reference = self.reward_model = None
        self._shuffle = torch.Generator().manual_seed(seed)

    def _validate(self) -> None:
        hp = self.hparams
        get_kl_estimator(hp.kl_estimator), get_loss_aggregation(hp.loss_aggregation)
        for name in ("num_generations", "train_batch_size", "ppo_epochs", "log_samples_every_n_steps"):
            if hp[name] < 1:
                raise ValueError(f"GRPOModule.{name} must be >= 1, got {hp[name]}")
        if hp.num_generations < self.estimator.min_group:
            raise ValueError(f"GRPOModule: advantage_estimator {hp.advantage_estimator!r} compares answers to the same "
                             f"prompt, so num_generations must be >= {self.estimator.min_group}, got "
                             f"{hp.num_generations}; raise num_generations or use 'reinforce_pp'")
        for name in ("clip_range_low", "clip_range_high", "beta", "overlong_penalty_factor", "entropy_coef"):
            if hp[name] < 0:
                raise ValueError(f"GRPOModule.{name} must be >= 0, got {hp[name]}")
        if hp.generation_batch_size is not None and hp.generation_batch_size < 1:
            raise ValueError(f"GRPOModule.generation_batch_size must be >= 1 or None, got {hp.generation_batch_size}")
        if hp.max_grad_norm is not None and hp.max_grad_norm < 0:
            raise ValueError(f"GRPOModule.max_grad_norm must be >= 0 or None, got {hp.max_grad_norm}")
        buffer, new = hp.overlong_buffer_length, self.generation.max_new_tokens
        if buffer is not None and not 0 < buffer <= new:
            raise ValueError(f"GRPOModule.overlong_buffer_length must be in [1, generation.max_new_tokens={new}] or "
                             f"None, got {buffer}")

    @property
    def uses_reference(self) -> bool:
        """Whether a KL term needs the reference policy (``beta > 0``)."""
        return self.hparams.beta > 0

    @property
    def loads_reference(self) -> bool:
        """Whether the reference is a model of its own: a KL term, and a ``reference`` folder or no LoRA.

        With LoRA and no folder the starting policy is the actor with its adapters off (their ``B`` starts at 0),
        so a second copy would cost memory and a sharded forward per rollout (SmolLM2-135M, 2 ranks: about 35 s
        per rollout against 21 without a reference) for the same numbers.
        """
        return self.uses_reference and (self.hparams.reference is not None or self.actor_lora is None)

    def model_paths(self) -> Sequence[str]:
        """Actor, reference (when loaded) and reward model folders."""
        hp = self.hparams
        reference = (hp.reference or hp.actor) if self.loads_reference else None
        return [p for p in (hp.actor, reference, hp.reward_model) if p]

    def reference_logprobs(self, sequences: Tensor, attention_mask: Tensor, length: int,
                           temperature: float) -> Tensor:
        """The reference policy's ``(B, R)`` log-probs of the responses (see :attr:`loads_reference`)."""
        if self.reference is not None:
            return policy_logprobs(self.reference, sequences, attention_mask, length, temperature,
                                   share_prompts=self.hparams.share_prompt_prefix)[0]
        with self.actor.disable_adapter(), eval_mode(self.actor):
            return policy_logprobs(self.actor, sequences, attention_mask, length, temperature,
                                   share_prompts=self.hparams.share_prompt_prefix)[0]

    # -- models and optimizers ------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the actor, and the frozen reference and reward model when used (in the strategy's context)."""
        if self.actor is not None:
            return
        hp, tok, p = self.hparams, self.tokenizer, self.hparams.dropout
        with sharded_loading(self):
            self.actor = load_causal_lm(hp.actor, lora=self.actor_lora, dropout=p, tokenizer=tok,
                                        gradient_checkpointing=hp.actor_gradient_checkpointing)
            with frozen_models(attached_strategy(self)):
                if self.loads_reference:
                    self.reference = load_causal_lm(hp.reference or hp.actor, dropout=p, tokenizer=tok)
                if hp.reward_model is not None:
                    self.reward_model = load_value_model(hp.reward_model, dropout=p, tokenizer=tok)
        self.actor.train()
        freeze(self.reference, self.reward_model)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW + schedule for the actor (stepped once per iteration)."""
        return lightning_optimizer_config(self.actor, self.actor_optimizer, self.trainer.estimated_stepping_batches,
                                          self.trainer)

    # -- the algorithm --------------------------------------------------------------------------------
    @torch.no_grad()
    def make_experience(self, batch: Mapping[str, Any]) -> tuple[Rollout, dict[str, Any], tuple]:
        """Sample ``num_generations`` answers per prompt, score them and compute group-relative advantages."""
        hp, group, temperature = self.hparams, self.hparams.num_generations, self.generation.logprob_temperature
        prompts = repeat_rows(batch["prompts"], group)
        columns = {name: repeat_rows(values, group) for name, values in (batch.get("columns") or {}).items()}
        start = time.perf_counter()
        generated = self.generate(batch, greedy=False, with_logprobs=self.logprobs_from_generation(),
                                  num_generations=group)
        generation_s = time.perf_counter() - start
        sequences, attention_mask = generated.sequences, generated.attention_mask
        response_mask = generated.response_mask
        length = response_mask.shape[1]
        logprobs, entropy = generated.logprobs, generated.entropy
        if logprobs is None:
            logprobs, entropy = policy_logprobs(self.actor, sequences, attention_mask, length, temperature, True,
                                                share_prompts=hp.share_prompt_prefix)
        ref_logprobs = None
        if self.uses_reference:
            ref_logprobs = self.reference_logprobs(sequences, attention_mask, length, temperature)
        responses = self.responses(generated)
        model_scores = None
        if self.reward_model is not None:
            model_scores = sequence_scores(self.reward_model, sequences, attention_mask)
        rewards = self.score(prompts, generated, responses, columns, model_scores)
        total = rewards.total.to(self.device)
        if hp.overlong_buffer_length is not None:
            total = total + overlong_penalty(response_mask.sum(1), self.generation.max_new_tokens,
                                             hp.overlong_buffer_length, hp.overlong_penalty_factor)
        advantages, loss_mask, counts = self.advantages(total, response_mask, generated.eos_found, logprobs,
                                                        ref_logprobs)
        metrics = group_rollout_metrics(total.cpu(), rewards, group, counts["groups_without_signal"],
                                        response_mask, generated.eos_found, entropy, advantages, loss_mask)
        metrics.update(self.extra_metrics(response_mask, counts, logprobs, ref_logprobs))
        metrics.update({"time/generation_s": generation_s,
                        "throughput/generated_tokens_per_s": response_mask.sum().item() / max(generation_s, 1e-9)})
        success = self.task_success(prompts, responses)
        if success is not None:
            metrics["grpo/task_success"] = pooled_mean(success.float())
        keep_ref = ref_logprobs if self.uses_reference and not hp.kl_in_reward else None
        rollout = Rollout(sequences, attention_mask, loss_mask, logprobs, advantages, ref_logprobs=keep_ref)
        return rollout, metrics, (prompts, responses, torch.nan_to_num(rewards.total).tolist())

    def advantages(self, total: Tensor, response_mask: Tensor, eos_found: Tensor, logprobs: Tensor,
                   ref_logprobs: Tensor | None) -> tuple[Tensor, Tensor, dict[str, int]]:
        """Group-relative advantages, the mask of the tokens the loss counts, and what was left out.

        Unscored answers (``nan``), answers cut at the length limit (``filter_truncated``) and groups without a
        signal (``dynamic_sampling``) stay in the batch, every rank keeping the same number of mini-batches, but
        out of the loss mask.
        """
        hp, group = self.hparams, self.hparams.num_generations
        kl_penalty = None
        if hp.kl_in_reward and ref_logprobs is not None:
            kl_penalty = hp.beta * get_kl_estimator(hp.kl_estimator)(logprobs, ref_logprobs)
        scored_mask = response_mask & ~total.isnan().unsqueeze(1)
        advantages = self.estimator(total, group, scored_mask, kl_penalty, sum_across=self.sum_across_ranks())
        sampling = dynamic_sampling(total, group)
        counts = {"groups_without_signal": sampling.num_dropped, "truncated": 0}
        loss_mask = scored_mask
        if hp.filter_truncated:
            loss_mask, counts["truncated"] = mask_truncated(loss_mask, ~eos_found)
        if hp.dynamic_sampling:
            loss_mask = loss_mask & sampling.keep.to(loss_mask.device).unsqueeze(1)
        return advantages, loss_mask, counts

    def extra_metrics(self, response_mask: Tensor, counts: Mapping[str, int], logprobs: Tensor,
                      ref_logprobs: Tensor | None) -> dict[str, Any]:
        """The curves that exist only with some settings, and the longest answer over every rank."""
        hp, rows = self.hparams, len(response_mask)
        longest = response_mask.sum(1).max().float()
        if self.trainer.world_size > 1:
            longest = self.trainer.strategy.reduce(longest.to(self.device), reduce_op="max")
        metrics: dict[str, Any] = {"grpo/response_length_max": float(longest)}
        if ref_logprobs is not None:
            kl = get_kl_estimator(hp.kl_estimator)(logprobs, ref_logprobs)
            metrics["grpo/kl"] = pooled_mean(kl, response_mask)
        if hp.dynamic_sampling:
            groups = rows // hp.num_generations
            metrics["grpo/groups_filtered"] = pooled_mean_of(counts["groups_without_signal"] / groups, groups)
        if hp.filter_truncated:
            metrics["grpo/truncated_filtered"] = pooled_mean_of(counts["truncated"] / rows, rows)
        return metrics

    def update(self, rollout: Rollout, extra_batch: Any = None) -> dict[str, Any]:
        """``ppo_epochs`` passes over shuffled mini-batches: one clipped, aggregated actor step each."""
        optimizer, hp = self.optimizers(), self.hparams
        beta = 0.0 if hp.kl_in_reward else hp.beta
        sums: dict[str, Tensor] = {}
        count = 0
        bonus = hp.entropy_coef > 0  # the entropies, with their gradient, only when they are in the loss
        for _ in range(hp.ppo_epochs):
            for mb in rollout.minibatches(hp.train_batch_size, self._shuffle):
                logprobs, entropy = policy_logprobs(
                    self.actor, mb.sequences, mb.attention_mask, mb.response_mask.shape[1],
                    self.generation.logprob_temperature, with_entropy=bonus, entropy_grad=bonus,
                    share_prompts=hp.share_prompt_prefix)
                loss, stats = grpo_policy_loss(
                    logprobs, mb.logprobs, mb.advantages, mb.response_mask, hp.clip_range_low, hp.clip_range_high,
                    hp.loss_aggregation, self.generation.max_new_tokens, mb.ref_logprobs, beta, hp.kl_estimator,
                    entropy, hp.entropy_coef)
                self.optimizer_step(optimizer, loss)
                step = {"grpo/policy_loss": loss.detach(), "grpo/clipfrac_low": stats["clipfrac_low"],
                        "grpo/clipfrac_high": stats["clipfrac_high"], "grpo/approx_kl": stats["approx_kl"],
                        "grpo/ratio_mean": stats["ratio_mean"]}
                sums = {k: sums.get(k, 0.0) + v for k, v in step.items()}
                count += 1
        return {k: v / count for k, v in sums.items()}





#: prompts per rollout (the data module's ``batch_size``) that :func:`tiny_grpo_settings` was tuned with
TINY_GRPO_ROLLOUT_PROMPTS = 16


def tiny_grpo_settings() -> dict[str, Any]:
    """``GRPOModule`` arguments for tiny models trained from scratch on the built-in task (CPU), with reward
    functions and no reward model: the answer's last number right (1.0) plus the answer alone (0.5)."""
    return dict(
        reward_funcs=["answer_match", "answer_only_format"], reward_weights=[1.0, 0.5],
        actor_optimizer=OptimizerArgs(learning_rate=3e-4, scheduler="constant"),
        generation=GenerationArgs(max_new_tokens=4, temperature=1.0), num_generations=4, train_batch_size=64,
        ppo_epochs=1,
    )

__all__ = ["GRPOModule", "GRPO_OPTIMIZER", "GRPO_TAGS", "TINY_GRPO_ROLLOUT_PROMPTS", "tiny_grpo_settings"]
