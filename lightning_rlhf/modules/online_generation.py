"""Rollout generation for the online loop: sampling under the strategy's generation switch, decoding, scoring
the answers, the task checker, and greedy validation."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
from torch import Tensor
from transformers import LogitsProcessorList

from lightning_rlhf.algorithms.sampler_mismatch import truncated_importance_weights
from lightning_rlhf.models import sequence_scores
from lightning_rlhf.models.context import check_context_length
from lightning_rlhf.models.prompt_cache import shared_prompt_cache
from lightning_rlhf.models.sampling import StreamedLogprobs, sampling_from_policy
from lightning_rlhf.modules.online_logging import log_samples
from lightning_rlhf.modules.pooled import pooled_mean
from lightning_rlhf.modules.rollout import Generated, Rollout, check_left_padded, pad_right, response_mask_from_tokens
from lightning_rlhf.rewards.combined import SampleRewards
from lightning_rlhf.strategies import generation_mode


class RolloutGeneration:
    """The generation half of :class:`~lightning_rlhf.modules.online.OnlineRLModule` (a LightningModule mixin)."""

    def logprobs_from_generation(self) -> bool:
        """Whether this rollout takes its log-probs from ``generate``: asked for, and the actor in float32 (in
        bf16/fp16 the KV-cache arithmetic drifts from the update's forward, so the first ratio would not be 1)."""
        low_precision = next(self.actor.parameters()).dtype != torch.float32 or torch.is_autocast_enabled(
            self.device.type)
        return self.hparams.logprobs_from_generation and not low_precision

    @torch.no_grad()
    def generate(self, batch: Mapping[str, Any], greedy: bool, with_logprobs: bool = False,
                 group_size: int = 1) -> Generated:
        """Responses to the prompts, in chunks of ``generation_batch_size`` rows.

        Args:
            batch: a prompt batch (``prompt_input_ids``, ``prompt_attention_mask``), already in group layout.
            greedy: decode greedily (validation) instead of with the rollout's sampling settings.
            with_logprobs: also return the sampled tokens' log-probs and entropies from the logits ``generate``
                computed (skipped when the generator is tensor-parallel).
            group_size: rows ``[i * n, (i + 1) * n)`` repeat one prompt; whole-group chunks share its prefill.
        """
        input_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        check_left_padded(prompt_mask)
        tok, prompt_length = self.tokenizer, input_ids.shape[1]
        chunk = self.hparams.generation_batch_size or len(input_ids)
        new = self.generation.max_new_tokens
        check_context_length(self.actor, prompt_length + new,
                             f"the prompt batch ({prompt_length} tokens wide) + "
                             f"model.generation.max_new_tokens ({new})",
                             "the prompts or model.generation.max_new_tokens")
        responses, logprobs, entropies, sampler_logprobs = [], [], [], []
        with generation_mode(self.trainer.strategy, self.actor) as policy, \
                sampling_from_policy(policy, tok) as stop_ids:
            kwargs = self.generation.generate_kwargs(tok.pad_token_id, stop_ids, greedy=greedy)
            engine = getattr(policy, "engine", False)  # vLLM: no logits to stream, its own prompt cache
            with_logits = with_logprobs and getattr(policy, "tp_group", None) is None and not engine
            share = group_size > 1 and chunk % group_size == 0 and self.shares_prompts() and not engine
            for start in range(0, len(input_ids), chunk):
                prompt, mask = input_ids[start : start + chunk], prompt_mask[start : start + chunk]
                stream = StreamedLogprobs(self.generation.logprob_temperature) if with_logits else None
                extra = {"logits_processor": LogitsProcessorList([stream])} if with_logits else {}
                # inference mode: no autograd bookkeeping per op; outputs are cloned into normal tensors
                with torch.inference_mode():
                    if share:
                        extra.update(shared_prompt_cache(policy, prompt[::group_size], mask[::group_size],
                                                         group_size))
                    sequences = policy.generate(input_ids=prompt, attention_mask=mask, **kwargs, **extra).clone()
                if sequences.shape[1] <= prompt_length or not torch.equal(sequences[:, :prompt_length], prompt):
                    raise RuntimeError(f"generate returned shape {tuple(sequences.shape)} that does not start with "
                                       f"the {tuple(prompt.shape)} prompts; expected prompt + response rows")
                responses.append(sequences[:, prompt_length:])
                if engine:
                    sampler_logprobs.append(policy.sampler_logprobs().to(sequences.device))
                if stream is not None:
                    step_logprobs, step_entropy = stream.result(responses[-1])
                    logprobs.append(step_logprobs.clone())
                    entropies.append(step_entropy.clone())
        responses = pad_right(responses, tok.pad_token_id)
        response_mask, eos_found = response_mask_from_tokens(responses, stop_ids)
        sequences = torch.cat([input_ids, responses], dim=1)
        attention_mask = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)
        sampled = pad_right(sampler_logprobs, 0.0) if sampler_logprobs else None
        if not logprobs:
            return Generated(sequences, attention_mask, response_mask, eos_found, sampler_logprobs=sampled)
        return Generated(sequences, attention_mask, response_mask, eos_found,
                         pad_right(logprobs, 0.0), pad_right(entropies, 0.0), sampled)

    def correct_sampler_mismatch(self, rollout: Rollout, sampler_logprobs: Tensor, metrics: dict[str, Any]) -> Rollout:
        """Log the gap between the trainer's log-probs and the generation engine's, and with
        ``sampler_importance_cap`` weight the advantages by the truncated importance ratio."""
        sampled, mask = sampler_logprobs.to(rollout.logprobs), rollout.response_mask
        metrics[f"{self.metric_prefix}/sampler_logprob_gap"] = pooled_mean((rollout.logprobs - sampled).abs(), mask)
        cap = self.hparams.sampler_importance_cap
        if cap is None:
            return rollout
        weights = truncated_importance_weights(rollout.logprobs, sampled, mask, cap)
        metrics[f"{self.metric_prefix}/sampler_importance_weight"] = pooled_mean(weights, mask)
        return dataclasses.replace(rollout, advantages=rollout.advantages * weights)

    def decode(self, responses: Tensor, response_mask: Tensor) -> list[str]:
        """Response texts without special tokens (masked positions dropped)."""
        return [self.tokenizer.decode(r[m], skip_special_tokens=True) for r, m in zip(responses, response_mask)]

    def responses(self, generated: Generated) -> list[str]:
        """The decoded responses of a :meth:`generate` result."""
        mask = generated.response_mask
        return self.decode(generated.sequences[:, -mask.shape[1]:], mask)

    def task_success(self, prompts: list[str], responses: list[str]) -> Tensor | None:
        """Per-sample success ``(B,)`` under the task checker, or None without one."""
        if self.task_checker is None:
            return None
        return torch.tensor([self.task_checker(p, r) for p, r in zip(prompts, responses)], device=self.device)

    def score(self, prompts: list[str], generated: Generated, responses: list[str],
              columns: Mapping[str, list[Any]] | None, model_scores: Tensor | None) -> SampleRewards:
        """Every answer's reward: the reward functions' weighted sum plus ``model_scores`` (None without a model)."""
        return self.rewards.score(prompts, responses, columns, generated.response_ids(), model_scores,
                                  self.training_iteration())

    def training_iteration(self) -> int | None:
        """The iteration ``fit`` is at (restored on resume; the reward schedule follows it), None outside ``fit``."""
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return None
        return max(trainer.fit_loop.epoch_loop.total_batch_idx, 0)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Greedy answers to held-out prompts: the mean reward, each reward function's mean, and task success."""
        batch = self.prompt_batch(batch)[0]
        generated, episodes = self.sample_answers(batch, greedy=True)
        responses, columns = self.scored_answers(batch, generated, episodes)
        model_scores = None
        if self.reward_model is not None:
            model_scores = sequence_scores(self.reward_model, generated.sequences, generated.attention_mask)
        rewards = self.score(batch["prompts"], generated, responses, columns, model_scores)
        n, totals = len(responses), torch.nan_to_num(rewards.total)
        self.log("val/reward_mean", totals.mean(), on_epoch=True, sync_dist=True, batch_size=n)
        for name in self.rewards.names:
            self.log(f"val/reward/{name}", torch.nan_to_num(rewards.per_source[name]).mean(), on_epoch=True,
                     sync_dist=True, batch_size=n)
        success = self.task_success(batch["prompts"], responses)
        if success is not None:
            self.log("val/task_success", success.float().mean(), on_epoch=True, sync_dist=True, batch_size=n)
        if batch_idx == 0:
            log_samples(self, "val/samples", batch["prompts"], responses, totals.tolist(),
                        limit=self.hparams.num_samples_to_log)
