"""The online RL loop that PPO and the critic-free family (GRPO, DAPO, RLOO, REINFORCE++) share.

One ``training_step`` is one iteration on one batch of prompts: rollout (generate ``group_size`` answers per
prompt, log-probs, reference log-probs, scores) -> advantages -> ``update_epochs`` passes of mini-batch updates
-> one cross-rank reduction of the metrics -> log. :class:`OnlineRLModule` owns all of it; an algorithm supplies
its advantages (:meth:`~OnlineRLModule.advantages`), its loss and optimizer steps on a mini-batch
(:meth:`~OnlineRLModule.update_step`) and its extra models (PPO's critic), and nothing else.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Callable, ClassVar, ContextManager, Mapping, Sequence

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_rlhf.data.tool_schemas import tool_schemas_json
from lightning_rlhf.environments.episodes import EpisodeArgs
from lightning_rlhf.models import LoraArgs, load_causal_lm, load_tokenizer, load_value_model, sequence_scores
from lightning_rlhf.models.context import check_context_length
from lightning_rlhf.models.forward import eval_mode, policy_logprobs
from lightning_rlhf.models.packed_linear import PackedWeights, frozen_layers_packed
from lightning_rlhf.modules.answer_guidance import AnswerGuidance
from lightning_rlhf.modules.deprecations import take_renamed
from lightning_rlhf.modules.generation_args import GenerationArgs
from lightning_rlhf.modules.online_episodes import EpisodeGeneration, episode_metrics
from lightning_rlhf.modules.online_generation import RolloutGeneration
from lightning_rlhf.modules.online_logging import log_iteration, log_samples, progress_bar_curves, reduce_metrics
from lightning_rlhf.modules.online_logging import source_metrics
from lightning_rlhf.modules.optim import OptimizerArgs, lightning_optimizer_config
from lightning_rlhf.modules.placement import attached_strategy, sharded_loading
from lightning_rlhf.modules.pooled import pooled_mean
from lightning_rlhf.modules.rng import rng_states, set_rng_states
from lightning_rlhf.modules.rollout import Experience, Generated, Rollout, repeat_groups
from lightning_rlhf.rewards.combined import RewardSources
from lightning_rlhf.rewards.resolve import RewardSpec
from lightning_rlhf.strategies import MultiEngineBackwardMixin, frozen_models

# hparams' typed arguments unpickle under ``weights_only`` on resume, also from the previous release's module paths
torch.serialization.add_safe_globals([
    GenerationArgs, LoraArgs, OptimizerArgs, EpisodeArgs,
    (GenerationArgs, "lightning_rlhf.modules.ppo_config.GenerationArgs"),
    (OptimizerArgs, "lightning_rlhf.modules._common.OptimizerArgs"),
])


def unsaved_reward_funcs(reward_funcs: Sequence[Any] | None) -> list[str] | None:
    """``save_hyperparameters(ignore=...)``: callables cannot be saved (checkpoints load with ``weights_only``)."""
    return ["reward_funcs"] if any(callable(f) for f in reward_funcs or []) else None


def freeze(*models: Any) -> None:
    """Put the frozen children (reference, reward model; None where absent) in eval mode without gradients."""
    for model in models:
        if model is not None:
            model.requires_grad_(False)
            model.eval()


class OnlineRLModule(RolloutGeneration, EpisodeGeneration, MultiEngineBackwardMixin, LightningModule):
    """Base of :class:`~lightning_rlhf.modules.PPOModule` and :class:`~lightning_rlhf.modules.GRPOModule`.

    Manual optimization: every optimizer step advances ``trainer.global_step``, so bound a run by iterations
    (``max_epochs`` / ``limit_train_batches``) and checkpoint it with
    :class:`~lightning_rlhf.callbacks.IterationCheckpoint`; curves are logged once per iteration.

    Args:
        actor: Hugging Face folder of the policy (an SFT or instruct model).
        reward_model: folder of a frozen reward model (step 2's export) whose score is added to the reward
            functions' (None: reward functions only).
        reward_model_weight: weight of the reward model's score in the sum.
        reward_funcs: reward functions: import paths ``package.module:function``, built-in names (``answer_match``,
            ``answer_only_format``, ``exact_answer``, ...), ``http(s)://`` URLs or callables, each
            ``f(prompts, completions, **columns) -> list[float | None]`` (TRL's signature; ``docs/rewards.md``). An
            answer no source scored is left out of the update and counted.
        reward_weights: one weight per reward function (None: 1.0 each).
        reward_start_iterations: one iteration per reward function from which its weight counts (0 before; still
            logged), e.g. ``[0, 20]``. None: every weight from the start.
        reward_gate: pay every reward function after the first only in proportion to the first's reward (clipped to
            ``[0, 1]``): a format or brevity reward then pays only for correct answers (``docs/rewards.md``).
        reward_url: a remote scorer's ``http(s)://`` address, one more reward function after ``reward_funcs``.
        reference: folder of the frozen reference policy; None uses ``actor`` (see each algorithm).
        tokenizer: tokenizer folder; None uses ``actor``. Every model shares it.
        actor_lora: LoRA settings of the actor (None: full fine-tuning).
        actor_gradient_checkpointing: recompute the actor's activations in backward.
        packed_linears: frozen linear layers (LoRA's base weights, the head, reference, reward model) in the update
            and scoring run from oneDNN-packed weights on CPU float32 (docs/recipes/generation.md).
        max_grad_norm: gradient-norm clip of each model's update (None: none); DeepSpeed's ``gradient_clipping``
            under :class:`~lightning_rlhf.strategies.HybridDeepSpeedStrategy`.
        generation: sampling settings of the rollouts (validation decodes greedily).
        generation_batch_size: rows per ``generate`` call (None: the whole rollout at once).
        logprobs_from_generation: take the rollout's log-probs from the logits ``generate`` computed (as TRL)
            instead of a second actor forward (as DeepSpeed-Chat); bf16/fp16 actors and tensor-parallel
            generation always use the forward, so the first ratio is exactly 1.
        update_epochs: passes over the rollout per iteration (DeepSpeed-Chat's ``--ppo_epochs``).
        dropout: dropout probability of every model (0: rollout and update log-probs agree).
        num_samples_to_log: sample generations written to TensorBoard text.
        log_samples_every_n_steps: how often (in iterations) samples are logged.
        seed: seed of the mini-batch shuffle.
        sampler_importance_cap: with a generation engine of its own (``generation_backend="vllm"``), weight each
            token's policy-gradient term by ``min(pi_trainer / pi_engine, cap)`` (truncated importance sampling;
            TRL's ``vllm_importance_sampling_cap``). None: off; the gap is logged either way
            (``<prefix>/sampler_logprob_gap``).
        episodes: multi-turn rollouts (:class:`~lightning_rlhf.environments.episodes.EpisodeArgs`): tools or an
            environment answer the model between its turns; the loss, the KL and (PPO) the critic cover the model's
            tokens only, the reward functions score the final turn (``completions``) and get the whole episode as
            ``episode`` (docs/environments.md). None: one answer per prompt.
        ppo_epochs: deprecated name of ``update_epochs`` (removed in the next release).
    """

    #: prefix of the curves (``ppo/reward_mean``) and of the checkpoint state key
    metric_prefix: ClassVar[str] = ""
    #: :class:`~lightning_rlhf.strategies.HybridDeepSpeedStrategy` gives every child its own engine
    engine_per_child: bool = True

    def __init__(
        self,
        actor: str,
        actor_optimizer: OptimizerArgs,
        train_batch_size: int,
        reward_model: str | None = None,
        reward_model_weight: float = 1.0,
        reward_funcs: list[RewardSpec] | None = None,
        reward_weights: list[float] | None = None,
        reward_start_iterations: list[int] | None = None,
        reward_gate: bool = False,
        reward_url: str | None = None,
        reference: str | None = None,
        tokenizer: str | None = None,
        actor_lora: LoraArgs | None = None,
        actor_gradient_checkpointing: bool = False,
        packed_linears: bool = True,
        max_grad_norm: float | None = 1.0,
        generation: GenerationArgs | None = GenerationArgs(),
        generation_batch_size: int | None = None,
        logprobs_from_generation: bool = True,
        update_epochs: int = 1,
        dropout: float = 0.0,
        num_samples_to_log: int = 4,
        log_samples_every_n_steps: int = 10,
        seed: int = 0,
        sampler_importance_cap: float | None = None,
        episodes: EpisodeArgs | None = None,
        ppo_epochs: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=unsaved_reward_funcs(reward_funcs))
        take_renamed(self.hparams, type(self).__name__, "ppo_epochs", "update_epochs", default=1)
        self.automatic_optimization = False
        self.task_checker: Callable[[str, str], bool] | None = None
        self.answer_guidance: AnswerGuidance | None = None  # GRPOModule(answer_projection=...) sets it
        self.episode_args = episodes
        self._rng_to_restore: Any = None
        # copies of the signature's shared default objects; under LightningCLI ``hparams`` holds plain dicts
        self.actor_optimizer = copy.copy(actor_optimizer)
        self.generation = copy.copy(generation or GenerationArgs())
        self.actor_lora = actor_lora
        self.validate_online()
        self.rewards = RewardSources(reward_funcs, reward_weights, reward_model_weight, reward_url,
                                     reward_start_iterations, reward_gate)
        if not self.rewards and reward_model is None:
            raise ValueError(f"{type(self).__name__} needs a reward: give reward_funcs (e.g. ['answer_match']), a "
                             f"reward_model (step 2's export), or both")
        self.tokenizer = load_tokenizer(tokenizer or actor)
        if episodes is not None:
            self.environment = episodes.build(self.tokenizer)
        self.actor = self.reference = self.reward_model = None
        self._shuffle = torch.Generator().manual_seed(seed)
        self._packed_layers: dict[int, PackedWeights] = {}

    def validate_online(self) -> None:
        hp, name = self.hparams, type(self).__name__
        for arg in ("train_batch_size", "update_epochs", "log_samples_every_n_steps"):
            if hp[arg] < 1:
                raise ValueError(f"{name}.{arg} must be >= 1, got {hp[arg]}")
        if hp.generation_batch_size is not None and hp.generation_batch_size < 1:
            raise ValueError(f"{name}.generation_batch_size must be >= 1 or None, got {hp.generation_batch_size}")
        if hp.max_grad_norm is not None and hp.max_grad_norm < 0:
            raise ValueError(f"{name}.max_grad_norm must be >= 0 or None, got {hp.max_grad_norm}")
        if hp.sampler_importance_cap is not None and not hp.sampler_importance_cap > 0:
            raise ValueError(f"{name}.sampler_importance_cap must be > 0 or None, got {hp.sampler_importance_cap}")

    def advantages(self, experience: Experience) -> tuple[Rollout, dict[str, Any]]:
        """The rollout buffer (advantages and the tokens the loss counts) and the rollout's curves."""
        raise NotImplementedError

    def update_step(self, minibatch: Rollout) -> dict[str, Tensor]:
        """The loss and optimizer steps on one mini-batch; returns the step's metrics."""
        raise NotImplementedError

    @property
    def group_size(self) -> int:
        """Answers sampled per prompt."""
        return 1

    @property
    def uses_reference(self) -> bool:
        """Whether the rollout needs the reference policy's log-probs."""
        return True

    @property
    def loads_reference(self) -> bool:
        """Whether the reference is a model of its own; with LoRA and no ``reference`` folder, the actor with its
        adapters off is the starting policy (no second copy, as DPO does)."""
        return self.uses_reference and (self.hparams.reference is not None or self.actor_lora is None)

    def shares_prompts(self) -> bool:
        """Whether forwards over a group run its prompt once (:mod:`lightning_rlhf.models.prompt_cache`)."""
        return False

    def build_trained_models(self) -> None:
        """Build trained models beside the actor (PPO's critic), inside the sharded context."""

    def trained_models(self) -> list[tuple[nn.Module, OptimizerArgs]]:
        """Each trained model with its optimizer settings, one DeepSpeed engine each, the actor first."""
        return [(self.actor, self.actor_optimizer)]

    def rollout_values(self, sequences: Tensor, attention_mask: Tensor, length: int) -> Tensor | None:
        """``(B, R)`` critic values at sampling time (None without a critic)."""
        return None

    def reward_model_scores(self, raw: Tensor) -> Tensor:
        """The reward model's scores as they enter the reward sum (PPO normalises them)."""
        return raw

    def sample_scores(self, experience: Experience) -> list[float]:
        """The score shown beside each sample in TensorBoard."""
        return torch.nan_to_num(experience.rewards.total).tolist()

    def prompt_batch(self, batch: Mapping[str, Any]) -> tuple[Mapping[str, Any], Any]:
        """The prompt batch and any extra batch the update takes (PPO's ptx)."""
        return batch, None

    def model_paths(self) -> list[str]:
        """The model folders whose positions must hold a prompt plus a response."""
        hp = self.hparams
        reference = (hp.reference or hp.actor) if self.loads_reference else None
        return [p for p in (hp.actor, reference, hp.reward_model) if p]

    def on_iteration_end(self, metrics: Mapping[str, float], rows: int) -> None:
        """Called with the iteration's reduced metrics and its rollout's row count (PPO adapts its KL here)."""

    def extra_state(self) -> dict[str, Any]:
        """Checkpoint state beyond the shuffle and sampling RNGs (PPO: the KL controller)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def configure_model(self) -> None:
        """Build the actor, the algorithm's trained models, then the frozen reference and reward model, inside
        the strategy's sharded context (ZeRO-3 partitions them as they are created)."""
        if self.actor is not None:
            return
        hp, tok, p = self.hparams, self.tokenizer, self.hparams.dropout
        with sharded_loading(self):
            self.actor = load_causal_lm(hp.actor, lora=self.actor_lora, dropout=p, tokenizer=tok,
                                        gradient_checkpointing=hp.actor_gradient_checkpointing)
            self.build_trained_models()
            with frozen_models(attached_strategy(self)):  # offload_frozen_models: partitions created on the CPU
                if self.loads_reference:
                    self.reference = load_causal_lm(hp.reference or hp.actor, dropout=p, tokenizer=tok)
                if hp.reward_model is not None:
                    self.reward_model = load_value_model(hp.reward_model, dropout=p, tokenizer=tok)
        # from_pretrained returns eval mode; trained models need train mode (gradient checkpointing checks it)
        for model, _ in self.trained_models():
            model.train()
        freeze(self.reference, self.reward_model)

    def configure_optimizers(self) -> dict[str, Any] | list[dict[str, Any]]:
        """AdamW + schedule per trained model (one engine each), stepped once per iteration."""
        total = self.trainer.estimated_stepping_batches
        configs = [lightning_optimizer_config(model, args, total, self.trainer)
                   for model, args in self.trained_models()]
        return configs[0] if len(configs) == 1 else configs

    @property
    def max_grad_norm(self) -> float | None:
        """The gradient-norm clip; DeepSpeed applies it inside ``engine.step``, so the strategy reads it here."""
        return self.hparams.max_grad_norm

    def setup(self, stage: str) -> None:
        """Pick up the task checker of the data module's built-in task; check that sequences fit the models."""
        if stage == "fit" and self.trainer.max_steps not in (None, -1):
            rank_zero_warn(f"{type(self).__name__}: Trainer(max_steps={self.trainer.max_steps}) counts optimizer steps "
                           f"(several per iteration: each mini-batch, each trained model), while the learning-rate "
                           f"schedule steps once per iteration and is planned over max_steps iterations, so the run "
                           f"stops early in its schedule; bound online runs with max_epochs or limit_train_batches")
        task = getattr(getattr(self.trainer, "datamodule", None), "task", None)
        if self.task_checker is None and callable(getattr(task, "check", None)):
            self.task_checker = task.check
        settings = getattr(getattr(self.trainer, "datamodule", None), "settings", None)
        if settings is not None:
            self._check_prompt_tools(getattr(settings, "tools_json", None))
        prompt = getattr(settings, "max_prompt_length", None)
        if prompt is None:
            return  # a foreign data module: :meth:`generate` checks each batch instead
        new = self.generation.max_new_tokens
        what = f"data.max_prompt_length ({prompt}) + model.generation.max_new_tokens ({new})"
        for path in dict.fromkeys(p for p in self.model_paths() if p):
            check_context_length(path, prompt + new, what, "data.max_prompt_length or model.generation.max_new_tokens")

    def _check_prompt_tools(self, prompt_tools: str | None) -> None:
        """The tool schemas the prompts carry (the data module's ``tools``) must be the chat-format episodes' tools."""
        chat = self.episode_args is not None and self.episode_args.protocol == "chat_template"
        wanted = tool_schemas_json(self.episode_args.tools) if chat else None
        if prompt_tools == wanted:
            return
        name = type(self).__name__
        if not chat:
            raise ValueError(f"{name}: data.tools puts tool schemas in the prompts, and the model calls no tools in "
                             f"the chat format (model.episodes.protocol is not 'chat_template'); drop data.tools or "
                             f"set the protocol")
        raise ValueError(f"{name}: episodes.protocol='chat_template' calls {self.episode_args.tools}, and the prompts "
                         f"carry {'no tool schemas' if prompt_tools is None else 'the schemas of other tools'}; give "
                         f"the data module the same tools (data.tools: {self.episode_args.tools})")

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """One iteration: rollout -> score -> advantages -> update -> log."""
        prompts, extra = self.prompt_batch(batch)
        rollout, metrics, samples = self.make_experience(prompts)
        start = time.perf_counter()
        applied = getattr(self.trainer.strategy, "applied_since_reset", None)
        if applied is not None:
            self.trainer.strategy.reset_applied_steps()
        metrics.update(self.update(rollout, extra))
        schedulers = self.lr_schedulers() or []  # one scheduler comes unwrapped, several as a list
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if applied is None or applied(scheduler.optimizer):
                scheduler.step()  # an engine whose every step overflowed keeps its schedule where it was
        metrics["time/training_s"] = time.perf_counter() - start
        metrics = reduce_metrics(self.trainer.strategy, metrics)
        self.on_iteration_end(metrics, len(rollout))
        log_iteration(self, metrics, progress_bar_curves(self.metric_prefix))
        if batch_idx % self.hparams.log_samples_every_n_steps == 0:
            log_samples(self, f"{self.metric_prefix}/samples", *samples, limit=self.hparams.num_samples_to_log)

    @torch.no_grad()
    def make_experience(self, batch: Mapping[str, Any]) -> tuple[Rollout, dict[str, Any], tuple]:
        """Generate, score and compute advantages: ``(rollout, metrics, (prompts, responses, scores))``."""
        batch, temperature = repeat_groups(batch, self.group_size), self.generation.logprob_temperature
        start = time.perf_counter()
        generated, episodes = self.sample_answers(batch, greedy=False, with_logprobs=self.logprobs_from_generation(),
                                                  group_size=self.group_size)
        generation_s = time.perf_counter() - start
        guided = None
        if self.answer_guidance is not None:
            generated, guided = self.guide(batch, generated)
        sequences, attention_mask = generated.sequences, generated.attention_mask
        length = generated.response_mask.shape[1]
        logprobs, entropy = generated.logprobs, generated.entropy
        start = time.perf_counter()
        with self.frozen_layers_packed([self.reference, self.reward_model] + [m for m, _ in self.trained_models()]):
            if logprobs is None:
                logprobs, entropy = policy_logprobs(self.actor, sequences, attention_mask, length, temperature, True,
                                                    share_prompts=self.shares_prompts())
            ref_logprobs = self.reference_logprobs(sequences, attention_mask, length) if self.uses_reference else None
            values = self.rollout_values(sequences, attention_mask, length)
            logprobs_s = time.perf_counter() - start
            model_scores = None
            if self.reward_model is not None:
                model_scores = sequence_scores(self.reward_model, sequences, attention_mask)
        responses, columns = self.scored_answers(batch, generated, episodes)
        rewards = self.score(batch["prompts"], generated, responses, columns,
                             None if model_scores is None else self.reward_model_scores(model_scores))
        experience = Experience(batch["prompts"], responses, generated, logprobs, entropy, ref_logprobs, values,
                                rewards, model_scores, guided)
        rollout, metrics = self.advantages(experience)
        prefix = self.metric_prefix
        if generated.sampler_logprobs is not None:
            rollout = self.correct_sampler_mismatch(rollout, generated.sampler_logprobs, metrics)
        metrics.update(source_metrics(prefix, rewards))
        metrics.update({"time/generation_s": generation_s, "time/logprobs_s": logprobs_s,
                        "throughput/generated_tokens_per_s":
                        generated.response_mask.sum().item() / max(generation_s, 1e-9)})
        success = self.task_success(batch["prompts"], responses)
        if success is not None:
            metrics[f"{prefix}/task_success"] = pooled_mean(success.float())
        if guided is not None:
            metrics[f"{prefix}/guided_answers"] = pooled_mean(guided.float())
            if self.answer_guidance.form_parity:  # the same on every rank: the check sums over them
                metrics[f"{prefix}/guidance_paused"] = float(self.answer_guidance.paused)
        if episodes is not None:
            metrics.update(episode_metrics(prefix, episodes))
            responses = episodes.texts  # the samples table shows whole episodes
        return rollout, metrics, (batch["prompts"], responses, self.sample_scores(experience))

    def guide(self, batch: Mapping[str, Any], generated: Generated) -> tuple[Generated, Tensor]:
        """Answer guidance (``GRPOModule(answer_projection=...)``): candidates in place, and the streamed log-probs
        dropped on every rank where any rank placed one. Under ZeRO-3 the log-prob forward that replaces them is a
        collective: a rank that skipped it would leave the others waiting in its all-gathers."""
        summed = self.sum_across_ranks()
        reduce = None if summed is None else (lambda tensor: summed(tensor.to(self.device)).cpu())
        generated, guided = self.answer_guidance(self.rewards, batch, generated, self.responses(generated),
                                                 self.group_size, self.training_iteration(), reduce)
        anywhere = guided.any().float().to(self.device)
        if (summed(anywhere) if summed is not None else anywhere) > 0 and generated.logprobs is not None:
            generated = dataclasses.replace(generated, logprobs=None, entropy=None)
        return generated, guided

    def reference_logprobs(self, sequences: Tensor, attention_mask: Tensor, length: int) -> Tensor:
        """The reference policy's ``(B, R)`` log-probs of the responses (see :attr:`loads_reference`)."""
        temperature, share = self.generation.logprob_temperature, self.shares_prompts()
        if self.reference is not None:
            return policy_logprobs(self.reference, sequences, attention_mask, length, temperature,
                                   share_prompts=share)[0]
        with self.actor.disable_adapter(), eval_mode(self.actor):
            return policy_logprobs(self.actor, sequences, attention_mask, length, temperature, share_prompts=share)[0]

    def update(self, rollout: Rollout, extra_batch: Any = None) -> dict[str, Any]:
        """``update_epochs`` passes over shuffled mini-batches of ``train_batch_size`` rows; metrics averaged."""
        hp, sums, count = self.hparams, {}, 0
        with self.frozen_layers_packed([model for model, _ in self.trained_models()]):
            for _ in range(hp.update_epochs):
                for minibatch in rollout.minibatches(hp.train_batch_size, self._shuffle):
                    step = self.update_step(minibatch)
                    sums = {k: sums.get(k, 0.0) + v for k, v in step.items()}
                    count += 1
        return {k: v / count for k, v in sums.items()}

    def frozen_layers_packed(self, models: list[nn.Module | None]) -> ContextManager[int]:
        """:func:`~lightning_rlhf.models.packed_linear.frozen_layers_packed` over the given models (with
        ``packed_linears``); the packed copies are kept from one block to the next."""
        return frozen_layers_packed([m for m in models if m is not None] if self.hparams.packed_linears else [],
                                    self._packed_layers)

    def optimizer_step(self, optimizer: Any, loss: Tensor) -> None:
        """Backward, step (clipping in :meth:`on_before_optimizer_step`) and zero the gradients of one model."""
        self.manual_backward(loss, optimizer)
        optimizer.step()
        optimizer.zero_grad()

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Clip at ``max_grad_norm`` after ``16-mixed``'s scaler unscaled the gradients (under DeepSpeed the
        engine clips inside ``step`` and ``clip_gradients`` does nothing)."""
        if self.hparams.max_grad_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")

    def sum_across_ranks(self) -> Callable[[Tensor], Tensor] | None:
        """An all-reduce sum over the data-parallel ranks, so whitening sees the global batch (None alone)."""
        if self.trainer.world_size <= 1:
            return None
        return lambda tensor: self.trainer.strategy.reduce(tensor.clone(), reduce_op="sum")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the mini-batch shuffle state, every rank's sampling RNG and :meth:`extra_state`, so a resumed run
        draws the rollouts the uninterrupted run would have on every rank. Collective: every rank saves."""
        checkpoint[f"{self.metric_prefix}_state"] = {**self.extra_state(), "shuffle_rng": self._shuffle.get_state(),
                                                     "rng_per_rank": self.gathered_per_rank(rng_states())}

    def gathered_per_rank(self, value: Any) -> list[Any]:
        """``value`` of every rank, in rank order, for a checkpoint (collective under several ranks)."""
        if self.trainer.world_size <= 1:
            return [value]
        values = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def own_rank_of(self, saved: Sequence[Any]) -> Any:
        """This rank's entry of a :meth:`gathered_per_rank` list, rank 0's where the world size changed."""
        return saved[self.global_rank] if len(saved) == self.trainer.world_size else saved[0]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore what :meth:`on_save_checkpoint` saved; this rank's sampling RNG when the world size matches."""
        state = checkpoint.get(f"{self.metric_prefix}_state")
        if state is None:
            return
        self.load_extra_state(state)
        self._shuffle.set_state(state["shuffle_rng"])
        saved, world = state.get("rng_per_rank") or [state.get("rng")], self.trainer.world_size  # "rng": before
        self._rng_to_restore = self.own_rank_of(saved)
        if len(saved) != world:
            if world > 1:
                rank_zero_warn(f"{type(self).__name__}: the checkpoint holds {len(saved)} rank(s)' sampling RNG and "
                               f"this run has {world} ranks: every rank restarts from rank 0's, so rollouts differ "
                               f"from an uninterrupted run (the training state itself is restored)")
        rank_zero_info(f"{type(self).__name__}: restored the shuffle and sampling state of the checkpoint")

    def on_train_start(self) -> None:
        """Set the sampling RNG a checkpoint saved, now that model building and engine setup are done."""
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None


__all__ = ["Experience", "GenerationArgs", "OnlineRLModule", "freeze", "unsaved_reward_funcs"]
