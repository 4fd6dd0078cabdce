"""GRPOModule: critic-free RL (GRPO, Dr. GRPO, DAPO, GSPO, CISPO, RLOO, REINFORCE++) on the loop PPO uses.

On the shared online loop (:class:`~lightning_rlhf.modules.online.OnlineRLModule`) GRPO samples ``num_generations``
answers per prompt, turns their rewards into group-relative advantages by a named estimator, and takes clipped,
aggregated actor steps. No critic; no reference model unless a KL term asks for one. The variants are names, not
subclasses: DAPO is ``clip_range_high=0.28, loss_aggregation=token_mean, dynamic_sampling=True,
overlong_buffer_length=...``; Dr. GRPO is ``advantage_estimator=dr_grpo, loss_aggregation=seq_mean_token_sum_norm``;
GSPO and CISPO are ``policy_loss`` names.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import torch
from torch import Tensor

from lightning_rlhf.algorithms import get_kl_estimator
from lightning_rlhf.algorithms.aggregation import get_loss_aggregation
from lightning_rlhf.algorithms.dapo import dynamic_sampling, mask_truncated, overlong_penalty
from lightning_rlhf.algorithms.group_advantages import get_group_advantage_estimator
from lightning_rlhf.algorithms.grpo_loss import grpo_policy_loss
from lightning_rlhf.algorithms.guidance import imitation_loss
from lightning_rlhf.algorithms.policy_losses import get_policy_loss
from lightning_rlhf.models.forward import policy_logprobs
from lightning_rlhf.modules.answer_guidance import AnswerGuidance
from lightning_rlhf.modules.answer_replay import AnswerReplay
from lightning_rlhf.modules.deprecations import take_renamed
from lightning_rlhf.modules.grpo_logging import GRPO_TAGS, group_rollout_metrics
from lightning_rlhf.modules.online import OnlineRLModule
from lightning_rlhf.modules.optim import OptimizerArgs
from lightning_rlhf.modules.pooled import pooled_mean, pooled_mean_of
from lightning_rlhf.modules.rollout import Experience, Rollout
from lightning_rlhf.rewards.projection import resolve_projection

#: TRL's ``GRPOTrainer`` learning rate (for full fine-tuning of 1B+ models); LoRA and tiny models need more
GRPO_OPTIMIZER = OptimizerArgs(learning_rate=1e-6)


class GRPOModule(OnlineRLModule):
    """Group-relative policy optimisation and its relatives, with reward functions (TRL's signature).

    Each iteration samples ``num_generations`` answers per prompt, so the rollout holds ``batch_size *
    num_generations`` rows, updated in mini-batches of ``train_batch_size`` rows. The shared arguments are
    :class:`~lightning_rlhf.modules.online.OnlineRLModule`'s; ``reference`` None with ``actor_lora`` uses the actor
    with its adapters off (no second copy).

    Args:
        actor: Hugging Face folder of the policy (an SFT or instruct model).
        actor_optimizer: AdamW + schedule of the actor (default: lr 1e-6, TRL's, cosine over the run).
        train_batch_size: rows per mini-batch of the update.
        num_generations: answers sampled per prompt (the group size ``G``).
        share_prompt_prefix: run each prompt's forward once per group and share its KV cache with the group's
            answers, in ``generate`` and every log-prob forward (the same numbers to float rounding). Under
            ZeRO-3 only generation shares. False runs every row in full.
        advantage_estimator: ``grpo`` (group mean and std), ``dr_grpo`` (no std), ``rloo`` (leave-one-out),
            ``reinforce_pp`` (global whitening) or ``reinforce_pp_baseline`` (group mean, then whitening).
        scale_rewards: the std ``grpo`` divides by: ``group`` (each group's) or ``batch`` (the rewards of the whole
            batch, every rank, that the loss keeps: TRL's ``scale_rewards="batch"``, Lite PPO's). TRL's ``none`` is
            ``dr_grpo``; the other estimators keep their own scale and refuse ``batch``.
        policy_loss: ``clip`` (PPO's clipped token ratio: GRPO, DAPO), ``gspo`` (one clipped, length-normalised
            sequence ratio per answer; needs ``seq_mean_token_mean`` and no ``kl_in_reward``) or ``cispo`` (the
            clipped ratio as a detached weight on ``-A log pi``: no token loses its gradient; the paper aggregates
            by ``token_mean``).
        loss_aggregation: ``seq_mean_token_mean`` (GRPO), ``token_mean`` (DAPO) or ``seq_mean_token_sum_norm``
            (Dr. GRPO, normalised by ``generation.max_new_tokens``).
        clip_range_low: lower clip ``eps_low`` of the ratio (GSPO's paper: 3e-4, its sequence ratio moves little;
            CISPO's bounds only the top: 1 lifts the bottom).
        clip_range_high: upper clip ``eps_high`` (0.28 is DAPO's clip-higher; GSPO's paper: 4e-4).
        kl_coef: coefficient of the KL to the reference; 0 (the default, as TRL and DAPO) loads no reference.
        kl_estimator: ``k1``, ``k2`` or ``k3`` estimate of the per-token KL; None: ``k3`` in the loss (GRPO's),
            ``k1`` with ``kl_in_reward`` (the unbiased gradient of KL(pi||ref) through a detached reward).
        kl_in_reward: subtract ``kl_coef * KL_t`` from each token's reward (REINFORCE++) instead of adding it to
            the loss (GRPO).
        entropy_coef: coefficient of an entropy bonus in the loss (0: off); the only gradient a group without
            signal gives.
        entropy_target: the bonus counts only in mini-batches whose mean token entropy (nats) is below it, so it
            keeps the answers to a prompt different without growing the entropy when the rewards give no signal
            (None: always on); each rank decides for its own mini-batch (``grpo/entropy_bonus_on``).
        dynamic_sampling: leave groups whose rewards are all equal out of the loss (DAPO) and count them.
        overlong_buffer_length: DAPO's soft overlong penalty: the ramp, in tokens, before
            ``generation.max_new_tokens`` over which it grows to ``overlong_penalty_factor`` (None: off).
        overlong_penalty_factor: the penalty at the length limit.
        filter_truncated: leave answers cut at the length limit (no EOS) out of the loss (DAPO), counted.
        answer_projection: answer guidance, for a form of answer the policy never samples: a function mapping an
            answer to the form the rewards want (``final_answer``: the answer part alone, "7 * 8 = 56" -> "56"; or
            an import path, the reward functions' signature returning ``list[str | None]``). In each group where the
            best answer's projection earns more and no answer reads that way yet, it replaces the group's lowest
            answer (off-policy; log-probs from a forward pass), counted as ``grpo/guided_answers``. Needs reward
            functions and no reward model (docs/rewards.md, "Answer guidance"). None: off.
        answer_agreement: answer guidance only in groups where at least this share of the answers project to the
            candidate, so the form is taught on answers the policy already gives (0: every group).
        answer_form_parity: answer guidance pauses for a rollout whose answers already in the wanted form earn less
            on average than the others (over all ranks): the form is taught only while its answers are as good.
        answer_imitation_coef: coefficient of a negative log-likelihood on the guided answers beside their policy
            gradient (SFT mixed into RL): the right answer in the wanted form is learned as a fact, not only as a
            form whose pull depends on how the advantages are scaled (0: off; needs ``answer_projection``).
        answer_replay: each rank keeps the latest guided answer per prompt (or sampled one already in the wanted
            form that is its group's best) and adds this many, drawn at random, to every mini-batch's imitation term
            (0: off; needs ``answer_imitation_coef``).
        beta: deprecated name of ``kl_coef`` (removed in the next release).
    """

    metric_prefix = "grpo"

    def __init__(
        self,
        actor: str,
        *,
        actor_optimizer: OptimizerArgs | None = GRPO_OPTIMIZER,
        train_batch_size: int = 16,
        num_generations: int = 8,
        share_prompt_prefix: bool = True,
        advantage_estimator: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"] = "grpo",
        scale_rewards: Literal["group", "batch"] = "group",
        policy_loss: Literal["clip", "gspo", "cispo"] = "clip",
        loss_aggregation: Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"] = (
            "seq_mean_token_mean"),
        clip_range_low: float = 0.2,
        clip_range_high: float = 0.2,
        kl_coef: float = 0.0,
        kl_estimator: Literal["k1", "k2", "k3"] | None = None,
        kl_in_reward: bool = False,
        entropy_coef: float = 0.0,
        entropy_target: float | None = None,
        dynamic_sampling: bool = False,
        overlong_buffer_length: int | None = None,
        overlong_penalty_factor: float = 1.0,
        filter_truncated: bool = False,
        answer_projection: str | None = None,
        answer_agreement: float = 0.0,
        answer_form_parity: bool = False,
        answer_imitation_coef: float = 0.0,
        answer_replay: int = 0,
        beta: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(actor, actor_optimizer or GRPO_OPTIMIZER, train_batch_size, **kwargs)
        take_renamed(self.hparams, "GRPOModule", "beta", "kl_coef", default=0.0)
        self.hparams.kl_estimator = kl_estimator or ("k1" if kl_in_reward else "k3")
        self.estimator = get_group_advantage_estimator(advantage_estimator, scale_rewards)
        self._validate()
        self.replay = AnswerReplay(self.tokenizer.pad_token_id) if answer_replay else None
        if answer_projection is not None:
            self.answer_guidance = AnswerGuidance(resolve_projection(answer_projection), self.tokenizer,
                                                  answer_agreement, answer_form_parity)

    def _validate(self) -> None:
        hp = self.hparams
        get_kl_estimator(hp.kl_estimator), get_loss_aggregation(hp.loss_aggregation)
        get_policy_loss(hp.policy_loss, hp.loss_aggregation)
        if hp.policy_loss == "gspo" and hp.kl_in_reward:
            raise ValueError("GRPOModule: policy_loss 'gspo' weighs each answer by one advantage, and kl_in_reward "
                             "gives each token its own; set kl_in_reward=False (the KL goes to the loss)")
        if hp.num_generations < 1:
            raise ValueError(f"GRPOModule.num_generations must be >= 1, got {hp.num_generations}")
        if hp.num_generations < self.estimator.min_group:
            raise ValueError(f"GRPOModule: advantage_estimator {hp.advantage_estimator!r} compares answers to the same "
                             f"prompt, so num_generations must be >= {self.estimator.min_group}, got "
                             f"{hp.num_generations}; raise num_generations or use 'reinforce_pp'")
        for name in ("clip_range_low", "clip_range_high", "kl_coef", "overlong_penalty_factor", "entropy_coef",
                     "answer_imitation_coef", "answer_replay"):
            if hp[name] < 0:
                raise ValueError(f"GRPOModule.{name} must be >= 0, got {hp[name]}")
        if hp.entropy_target is not None and not hp.entropy_target > 0:
            raise ValueError(f"GRPOModule.entropy_target must be > 0 nats or None, got {hp.entropy_target}")
        if hp.entropy_target is not None and hp.entropy_coef == 0:
            raise ValueError("GRPOModule.entropy_target bounds the entropy bonus, which is off (entropy_coef=0); set "
                             "entropy_coef (e.g. 0.1) or leave entropy_target unset")
        if hp.answer_projection is not None and (hp.reward_model is not None or not self.rewards):
            raise ValueError("GRPOModule.answer_projection scores its candidates with the reward functions alone; give "
                             "reward_funcs and no reward_model, or set answer_projection=None")
        if hp.answer_agreement and hp.answer_projection is None:
            raise ValueError("GRPOModule.answer_agreement gates answer guidance, which is off; set answer_projection "
                             "(e.g. final_answer) or answer_agreement=0")
        if hp.answer_form_parity and hp.answer_projection is None:
            raise ValueError("GRPOModule.answer_form_parity pauses answer guidance, which is off; set answer_projection "
                             "(e.g. final_answer) or answer_form_parity=false")
        if hp.answer_imitation_coef and hp.answer_projection is None:
            raise ValueError("GRPOModule.answer_imitation_coef imitates the guided answers, and answer guidance is off; "
                             "set answer_projection (e.g. final_answer) or answer_imitation_coef=0")
        if hp.answer_replay and not hp.answer_imitation_coef:
            raise ValueError("GRPOModule.answer_replay replays guided answers into the imitation term, which is off; set "
                             "answer_imitation_coef (e.g. 3.0) or answer_replay=0")
        if hp.answer_projection is not None and hp.episodes is not None:
            raise ValueError("GRPOModule.answer_projection replaces single answers and does not apply to multi-turn "
                             "episodes; set answer_projection=None or episodes=None")
        buffer, new = hp.overlong_buffer_length, self.generation.max_new_tokens
        if buffer is not None and not 0 < buffer <= new:
            raise ValueError(f"GRPOModule.overlong_buffer_length must be in [1, generation.max_new_tokens={new}] or "
                             f"None, got {buffer}")

    @property
    def group_size(self) -> int:
        """``num_generations`` answers per prompt."""
        return self.hparams.num_generations

    @property
    def uses_reference(self) -> bool:
        """Whether a KL term needs the reference policy (``kl_coef > 0``)."""
        return self.hparams.kl_coef > 0

    def shares_prompts(self) -> bool:
        """``share_prompt_prefix``."""
        return self.hparams.share_prompt_prefix

    def advantages(self, experience: Experience) -> tuple[Rollout, dict[str, Any]]:
        """Group-relative advantages over the tokens the loss counts: unscored answers (``nan``), answers cut at the
        length limit (``filter_truncated``) and groups without signal (``dynamic_sampling``) stay in the batch (every
        rank keeps the same number of mini-batches) but out of the loss mask and the whitening."""
        hp, group, generated = self.hparams, self.hparams.num_generations, experience.generated
        response_mask, logprobs, ref_logprobs = generated.response_mask, experience.logprobs, experience.ref_logprobs
        total = experience.rewards.total.to(self.device)
        if hp.overlong_buffer_length is not None:
            total = total + overlong_penalty(response_mask.sum(1), self.generation.max_new_tokens,
                                             hp.overlong_buffer_length, hp.overlong_penalty_factor)
        sampling = dynamic_sampling(total, group)
        counts = {"groups_without_signal": sampling.num_dropped, "truncated": 0}
        loss_mask = response_mask & ~total.isnan().unsqueeze(1)
        if hp.filter_truncated:
            loss_mask, counts["truncated"] = mask_truncated(loss_mask, ~generated.eos_found)
        if hp.dynamic_sampling:
            loss_mask = loss_mask & sampling.keep.to(loss_mask.device).unsqueeze(1)
        kl_penalty = None
        if hp.kl_in_reward and ref_logprobs is not None:
            kl_penalty = hp.kl_coef * get_kl_estimator(hp.kl_estimator)(logprobs, ref_logprobs)
        # the filters first: whitening (REINFORCE++) must see only the rows the loss keeps
        advantages = self.estimator(total, group, loss_mask, kl_penalty, sum_across=self.sum_across_ranks())
        metrics = group_rollout_metrics(total.cpu(), group, counts["groups_without_signal"],
                                        response_mask, generated.eos_found, experience.entropy, advantages, loss_mask)
        metrics.update(self.setting_metrics(response_mask, counts, logprobs, ref_logprobs))
        keep_ref = ref_logprobs if self.uses_reference and not hp.kl_in_reward else None
        demonstrations = None
        if hp.answer_imitation_coef and experience.guided is not None:
            demonstrations = experience.guided.to(self.device)
            if self.replay is not None:  # the guided answers and the group-best ones already in the form
                kept = experience.guided | self.answer_guidance.exemplars
                self.replay.add(generated.sequences, generated.attention_mask, response_mask, kept)
        rollout = Rollout(generated.sequences, generated.attention_mask, loss_mask, logprobs, advantages,
                          ref_logprobs=keep_ref, demonstrations=demonstrations)
        return rollout, metrics

    def setting_metrics(self, response_mask: Tensor, counts: Mapping[str, int], logprobs: Tensor,
                        ref_logprobs: Tensor | None) -> dict[str, Any]:
        """The curves that exist only with some settings, and the longest answer over every rank."""
        hp, rows = self.hparams, len(response_mask)
        longest = response_mask.sum(1).max().float()
        if self.trainer.world_size > 1:
            longest = self.trainer.strategy.reduce(longest.to(self.device), reduce_op="max")
        metrics: dict[str, Any] = {"grpo/response_length_max": float(longest)}
        if ref_logprobs is not None:
            metrics["grpo/kl"] = pooled_mean(get_kl_estimator(hp.kl_estimator)(logprobs, ref_logprobs), response_mask)
        if hp.dynamic_sampling:
            groups = rows // hp.num_generations
            metrics["grpo/groups_filtered"] = pooled_mean_of(counts["groups_without_signal"] / groups, groups)
        if hp.filter_truncated:
            metrics["grpo/truncated_filtered"] = pooled_mean_of(counts["truncated"] / rows, rows)
        return metrics

    def update_step(self, mb: Rollout) -> dict[str, Tensor]:
        """One clipped, aggregated actor step (KL in the loss unless ``kl_in_reward``; optional entropy bonus)."""
        hp = self.hparams
        bonus = hp.entropy_coef > 0  # the entropies, with their gradient, only when they are in the loss
        sequences, attention_mask, demonstrations, imitated = self.with_replayed_answers(mb)
        logprobs, entropy = policy_logprobs(
            self.actor, sequences, attention_mask, mb.response_mask.shape[1],
            self.generation.logprob_temperature, with_entropy=bonus, entropy_grad=bonus,
            share_prompts=hp.share_prompt_prefix)
        rows = len(mb.sequences)  # the rollout's rows; replayed ones follow them and count in the imitation alone
        imitated_logprobs, logprobs = logprobs, logprobs[:rows]
        entropy = entropy[:rows] if entropy is not None else None
        loss, stats = grpo_policy_loss(
            logprobs, mb.logprobs, mb.advantages, mb.response_mask, hp.clip_range_low, hp.clip_range_high,
            hp.loss_aggregation, self.generation.max_new_tokens, mb.ref_logprobs,
            0.0 if hp.kl_in_reward else hp.kl_coef, hp.kl_estimator, entropy, hp.entropy_coef, hp.policy_loss,
            hp.entropy_target)
        imitation = None
        if demonstrations is not None:
            imitation = imitation_loss(imitated_logprobs, imitated, demonstrations)
            loss = loss + hp.answer_imitation_coef * imitation
        self.optimizer_step(self.optimizers(), loss)
        metrics = {"grpo/policy_loss": loss.detach(), "grpo/clipfrac_low": stats["clipfrac_low"],
                   "grpo/clipfrac_high": stats["clipfrac_high"], "grpo/approx_kl": stats["approx_kl"],
                   "grpo/ratio_mean": stats["ratio_mean"]}
        if hp.entropy_target is not None:
            metrics["grpo/entropy_bonus_on"] = stats["entropy_bonus_on"]
        if imitation is not None:
            metrics["grpo/imitation_nll"] = imitation.detach()
        if self.replay is not None:
            metrics["grpo/replayed_answers"] = torch.tensor(float(len(sequences) - rows))
        return metrics

    def with_replayed_answers(self, mb: Rollout) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """The mini-batch's sequences and attention mask followed by up to ``answer_replay`` kept answers, and
        the demonstration flags and response mask the imitation term reads."""
        replayed = None
        if self.replay is not None:
            replayed = self.replay.rows(self.hparams.answer_replay, mb.prompt_length, mb.response_mask.shape[1],
                                        self._shuffle, mb.sequences.device)
        if replayed is None:
            return mb.sequences, mb.attention_mask, mb.demonstrations, mb.response_mask
        sequences, attention_mask, answer_mask = replayed
        own = mb.demonstrations if mb.demonstrations is not None else torch.zeros(
            len(mb.sequences), dtype=torch.bool, device=mb.sequences.device)
        flags = torch.cat([own, torch.ones(len(sequences), dtype=torch.bool, device=own.device)])
        return (torch.cat([mb.sequences, sequences.to(mb.sequences.dtype)]),
                torch.cat([mb.attention_mask, attention_mask.to(mb.attention_mask.dtype)]), flags,
                torch.cat([mb.response_mask, answer_mask]))

    def extra_state(self) -> dict[str, Any]:
        """Every rank's kept answers (``answer_replay``; collective, as saving is)."""
        if self.replay is None:
            return {}
        return {"answer_replay_per_rank": self.gathered_per_rank(self.replay.state_dict())}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore this rank's kept answers (rank 0's where the world size changed)."""
        saved = state.get("answer_replay_per_rank")
        if self.replay is not None and saved:
            self.replay.load_state_dict(self.own_rank_of(saved))


__all__ = ["GRPOModule", "GRPO_OPTIMIZER", "GRPO_TAGS"]
