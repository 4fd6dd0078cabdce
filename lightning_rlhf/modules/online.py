"""The online RL loop that PPO and the critic-free family (GRPO, DAPO, RLOO, REINFORCE++) share.

One ``training_step`` is one iteration on one batch of prompts:
rollout (generate) -> score -> advantages -> policy (and critic) update -> log.
:class:`OnlineRLModule` owns the loop and everything around it that does not depend on the algorithm:
generation under the strategy's generation switch (``num_generations`` samples per prompt by repeating the
prompts), decoding, the task checker, gradient clipping, one cross-rank reduction of the metrics per
iteration, sample tables, and the checkpoint state beyond the weights (shuffle and sampling RNGs). A subclass
supplies :meth:`make_experience` (rollout -> buffer) and :meth:`update` (buffer -> optimizer steps).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from transformers import LogitsProcessorList

from lightning_rlhf.models import sequence_scores
from lightning_rlhf.models.context import check_context_length
from lightning_rlhf.models.prompt_cache import shared_prompt_cache
from lightning_rlhf.models.sampling import StreamedLogprobs, sampling_from_policy
from lightning_rlhf.modules._common import rng_states, set_rng_states
from lightning_rlhf.modules.ppo_config import GenerationArgs
from lightning_rlhf.modules.ppo_logging import PROGRESS_BAR_TAGS, log_iteration, log_samples, reduce_metrics
from lightning_rlhf.modules.rollout import (
    Generated,
    Rollout,
    check_left_padded,
    pad_right,
    response_mask_from_tokens,
)
from lightning_rlhf.rewards.combined import SampleRewards
from lightning_rlhf.strategies import MultiEngineBackwardMixin, generation_mode

TaskChecker = Callable[[str, str], bool]


def unsaved_reward_funcs(reward_funcs: Sequence[Any] | None) -> list[str] | None:
    """``save_hyperparameters(ignore=...)`` for a module with ``reward_funcs``: callables cannot be saved as
    hyperparameters (checkpoints load with ``weights_only``), so a list holding one is left out."""
    return ["reward_funcs"] if any(callable(f) for f in reward_funcs or []) else None


def freeze(*models: Any) -> None:
    """Put the frozen children (reference, reward model; None where absent) in eval mode without gradients."""
    for model in models:
        if model is not None:
            model.requires_grad_(False)
            model.eval()


def repeat_rows(values: Sequence[Any], times: int) -> list[Any]:
    """Each entry ``times`` times in a row (prompt-major, as ``Tensor.repeat_interleave``): the layout of a group."""
    return [value for value in values for _ in range(times)]


class OnlineRLModule(MultiEngineBackwardMixin, LightningModule):
    """Base of :class:`~lightning_rlhf.modules.ppo.PPOModule` and :class:`~lightning_rlhf.modules.grpo.GRPOModule`.

    Subclasses set, in ``__init__``: ``self.tokenizer``, ``self.generation`` (:class:`GenerationArgs`),
    ``self.rewards`` (:class:`~lightning_rlhf.rewards.combined.RewardSources`), ``self.actor`` and
    ``self.reward_model`` (built in ``configure_model``; the reward model may stay None), ``self._shuffle`` (a
    seeded ``torch.Generator``) and call :meth:`init_online`; they implement :meth:`make_experience`,
    :meth:`update` and :meth:`model_paths`, and may override :meth:`on_iteration_end`, :meth:`extra_state` /
    :meth:`load_extra_state`.
    """

    #: prefix of the curves (``ppo/reward_mean``, ``grpo/reward_mean``) and of the checkpoint state key
    metric_prefix: str = "ppo"
    #: :class:`~lightning_rlhf.strategies.HybridDeepSpeedStrategy` gives every child its own engine (the actor
    #: alone too), the layout its generation switch and checkpoints are built for
    engine_per_child: bool = True

    def init_online(self) -> None:
        """State every online module has: manual optimization and no task checker yet."""
        self.automatic_optimization = False
        self.task_checker: TaskChecker | None = None
        self._rng_to_restore: Any = None

    # -- what a subclass supplies -----------------------------------------------------------------
    def make_experience(self, batch: Mapping[str, Any]) -> tuple[Rollout, dict[str, Any], tuple]:
        """Generate, score and compute advantages: ``(rollout, metrics, (prompts, responses, scores))``."""
        raise NotImplementedError

    def update(self, rollout: Rollout, extra_batch: Any = None) -> dict[str, Any]:
        """The optimizer steps of one iteration on ``rollout``; returns their metrics."""
        raise NotImplementedError

    def model_paths(self) -> Sequence[str]:
        """The model folders whose positions must hold a prompt plus a response."""
        raise NotImplementedError

    def on_iteration_end(self, metrics: Mapping[str, float], rows: int) -> None:
        """Called with the iteration's reduced metrics and its rollout's row count (PPO adapts its KL here)."""

    def extra_state(self) -> dict[str, Any]:
        """Checkpoint state beyond the shuffle and sampling RNGs (PPO: the KL controller)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    # -- the loop -----------------------------------------------------------------------------------
    @property
    def max_grad_norm(self) -> float | None:
        """The gradient-norm clip; DeepSpeed applies it inside ``engine.step``, so the strategy reads it from here."""
        return self.hparams.max_grad_norm

    def setup(self, stage: str) -> None:
        """Pick up the task checker of the data module's built-in task; check that sequences fit the models."""
        task = getattr(getattr(self.trainer, "datamodule", None), "task", None)
        if self.task_checker is None and callable(getattr(task, "check", None)):
            self.task_checker = task.check
        self.check_context_length()

    def check_context_length(self) -> None:
        """Refuse, before training, a prompt limit + ``max_new_tokens`` longer than any model's positions."""
        settings = getattr(getattr(self.trainer, "datamodule", None), "settings", None)
        prompt = getattr(settings, "max_prompt_length", None)
        if prompt is None:
            return  # a foreign data module: :meth:`generate` checks each batch instead
        new = self.generation.max_new_tokens
        what = f"data.max_prompt_length ({prompt}) + model.generation.max_new_tokens ({new})"
        for path in dict.fromkeys(p for p in self.model_paths() if p):
            check_context_length(path, prompt + new, what, "data.max_prompt_length or model.generation.max_new_tokens")

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """One iteration: rollout -> score -> advantages -> update -> log (``{"ppo": ..., "ptx": ...}`` batches
        pass their ``ptx`` part to :meth:`update`)."""
        prompts, extra = (batch["ppo"], batch.get("ptx")) if "ppo" in batch else (batch, None)
        rollout, metrics, samples = self.make_experience(prompts)
        start = time.perf_counter()
        metrics.update(self.update(rollout, extra))
        schedulers = self.lr_schedulers() or []  # one scheduler comes unwrapped, several as a list
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.step()
        metrics["time/training_s"] = time.perf_counter() - start
        metrics = reduce_metrics(self.trainer.strategy, metrics)
        self.on_iteration_end(metrics, len(rollout))
        log_iteration(self, metrics, PROGRESS_BAR_TAGS[self.metric_prefix])
        if batch_idx % self.hparams.log_samples_every_n_steps == 0:
            log_samples(self, f"{self.metric_prefix}/samples", *samples, limit=self.hparams.num_samples_to_log)

    def logprobs_from_generation(self) -> bool:
        """Whether this rollout takes its log-probs from ``generate``: asked for, and the actor in float32.

        In bf16/fp16 (parameters or autocast) generation's KV-cache arithmetic and a merged-LoRA replica score
        the sampled tokens up to 0.3 nats away from the update's forward (SmolLM2-135M, bf16, LoRA), so the
        first ratio would not be 1; the actor's own forward makes it exactly 1.
        """
        low_precision = next(self.actor.parameters()).dtype != torch.float32 or torch.is_autocast_enabled(
            self.device.type)
        return self.hparams.logprobs_from_generation and not low_precision

    def optimizer_step(self, optimizer: Any, loss: Tensor) -> None:
        """Backward, step (clipping in :meth:`on_before_optimizer_step`) and zero the gradients of one model."""
        self.manual_backward(loss, optimizer)
        optimizer.step()
        optimizer.zero_grad()

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Clip at ``max_grad_norm`` here: inside ``optimizer.step()``, after ``16-mixed``'s scaler unscaled the
        gradients (clipping before would clip the loss-scaled gradients, i.e. almost always, by ~the scale).

        Under DeepSpeed ``clip_gradients`` does nothing: the engine clips at ``max_grad_norm`` inside ``step``.
        """
        if self.hparams.max_grad_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")

    def sum_across_ranks(self) -> Callable[[Tensor], Tensor] | None:
        """An all-reduce sum over the data-parallel ranks, so whitening sees the global batch (None alone)."""
        if self.trainer.world_size <= 1:
            return None
        return lambda tensor: self.trainer.strategy.reduce(tensor.clone(), reduce_op="sum")

    # -- generation, decoding, task success ----------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: Mapping[str, Any], greedy: bool, with_logprobs: bool = False,
                 num_generations: int = 1) -> Generated:
        """Responses to the prompts, in chunks of ``generation_batch_size``.

        Args:
            batch: a prompt batch (``prompt_input_ids``, ``prompt_attention_mask``).
            greedy: decode greedily (validation) instead of with the rollout's sampling settings.
            with_logprobs: also return the sampled tokens' log-probabilities and entropies from the
                logits ``generate`` computed (skipped when the generator is tensor-parallel).
            num_generations: samples per prompt; rows ``[i * n, (i + 1) * n)`` answer prompt ``i``.
        """
        input_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        check_left_padded(prompt_mask)
        if num_generations > 1:
            input_ids = input_ids.repeat_interleave(num_generations, dim=0)
            prompt_mask = prompt_mask.repeat_interleave(num_generations, dim=0)
        tok, prompt_length = self.tokenizer, input_ids.shape[1]
        chunk = self.hparams.generation_batch_size or len(input_ids)
        new = self.generation.max_new_tokens
        check_context_length(self.actor, prompt_length + new,
                             f"the prompt batch ({prompt_length} tokens wide) + "
                             f"model.generation.max_new_tokens ({new})",
                             "the prompts or model.generation.max_new_tokens")
        responses, logprobs, entropies = [], [], []
        with generation_mode(self.trainer.strategy, self.actor) as policy, \
                sampling_from_policy(policy, tok) as stop_ids:
            kwargs = self.generation.generate_kwargs(tok.pad_token_id, stop_ids, greedy=greedy)
            # a tensor-parallel replica returns token ids only
            with_logits = with_logprobs and getattr(policy, "tp_group", None) is None
            # rows [i * n, (i + 1) * n) repeat one prompt: chunks of whole groups can share its prefill
            share = num_generations > 1 and chunk % num_generations == 0 and self.hparams.get("share_prompt_prefix")
            for start in range(0, len(input_ids), chunk):
                prompt, mask = input_ids[start : start + chunk], prompt_mask[start : start + chunk]
                stream = StreamedLogprobs(self.generation.logprob_temperature) if with_logits else None
                extra = {"logits_processor": LogitsProcessorList([stream])} if with_logits else {}
                # inference mode: no autograd bookkeeping per op (decoding a tiny OPT on one CPU thread took 38 ms
                # against 42-46 under no_grad: benchmarks/ppo_step_parts.py); outputs are cloned into normal
                # tensors before they go near autograd
                with torch.inference_mode():
                    if share:
                        extra.update(shared_prompt_cache(policy, prompt[::num_generations], mask[::num_generations],
                                                         num_generations))
                    sequences = policy.generate(input_ids=prompt, attention_mask=mask, **kwargs, **extra).clone()
                if sequences.shape[1] <= prompt_length or not torch.equal(sequences[:, :prompt_length], prompt):
                    raise RuntimeError(f"generate returned shape {tuple(sequences.shape)} that does not start with "
                                       f"the {tuple(prompt.shape)} prompts; expected prompt + response rows")
                responses.append(sequences[:, prompt_length:])
                if stream is not None:
                    step_logprobs, step_entropy = stream.result(responses[-1])
                    logprobs.append(step_logprobs.clone())
                    entropies.append(step_entropy.clone())
        responses = pad_right(responses, tok.pad_token_id)
        response_mask, eos_found = response_mask_from_tokens(responses, stop_ids)
        sequences = torch.cat([input_ids, responses], dim=1)
        attention_mask = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)
        if not logprobs:
            return Generated(sequences, attention_mask, response_mask, eos_found)
        return Generated(sequences, attention_mask, response_mask, eos_found,
                         pad_right(logprobs, 0.0), pad_right(entropies, 0.0))

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

    # -- rewards and validation -----------------------------------------------------------------------
    def score(self, prompts: list[str], generated: Generated, responses: list[str],
              columns: Mapping[str, list[Any]] | None, model_scores: Tensor | None) -> SampleRewards:
        """Every answer's reward: the reward functions' weighted sum plus ``model_scores`` (the reward model's,
        as the caller prepared them; None without a reward model)."""
        mask = generated.response_mask
        ids = [row[keep].tolist() for row, keep in zip(generated.sequences[:, -mask.shape[1]:], mask)]
        return self.rewards.score(prompts, responses, columns, ids, model_scores, self.training_iteration())

    def training_iteration(self) -> int | None:
        """The iteration ``fit`` is at (restored on resume; the reward schedule follows it), None outside ``fit``."""
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return None
        return max(trainer.fit_loop.epoch_loop.total_batch_idx, 0)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Greedy answers to held-out prompts: the mean reward (the reward model's raw score plus the reward
        functions'), each reward function's mean, and task success."""
        batch = batch["ppo"] if "ppo" in batch else batch
        generated = self.generate(batch, greedy=True)
        responses = self.responses(generated)
        model_scores = None
        if self.reward_model is not None:
            model_scores = sequence_scores(self.reward_model, generated.sequences, generated.attention_mask)
        rewards = self.score(batch["prompts"], generated, responses, batch.get("columns"), model_scores)
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

    # -- checkpoint state beyond the weights ------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the mini-batch shuffle state, the sampling RNG (rank 0's) and :meth:`extra_state`.

        With the data position the loader saves, a run resumed from an iteration's checkpoint draws the same
        rollouts as the uninterrupted run would have (on one rank, same threads: the same curve).
        """
        checkpoint[f"{self.metric_prefix}_state"] = {**self.extra_state(), "shuffle_rng": self._shuffle.get_state(),
                                                     "rng": rng_states()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore what :meth:`on_save_checkpoint` saved."""
        state = checkpoint.get(f"{self.metric_prefix}_state")
        if state is not None:
            self.load_extra_state(state)
            self._shuffle.set_state(state["shuffle_rng"])
            self._rng_to_restore = state.get("rng")
            rank_zero_info(f"{type(self).__name__}: restored the shuffle and sampling state of the checkpoint")

    def on_train_start(self) -> None:
        """Set the sampling RNG a checkpoint saved, now that model building and engine setup are done."""
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None


__all__ = ["GenerationArgs", "OnlineRLModule", "freeze", "repeat_rows", "unsaved_reward_funcs"]
