"""Critic-free advantage estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++, REINFORCE++-baseline), as OpenRLHF's: a
per-group baseline (a shaping), optionally whitened or divided by the batch's reward std. Scores are prompt-major; a
``nan`` score (no reward) stays out of its group's statistics and gets advantage 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor

from lightning_rlhf.algorithms.masked import masked_mean, masked_sum, masked_whiten
from lightning_rlhf.algorithms.named import choose

#: as TRL's GRPOTrainer, so a group of equal rewards gives 0
GRPO_STD_EPS = 1e-4

#: ``(groups, scored)``, both ``(num_prompts, num_generations)``, -> shaped scores (``nan`` where unscored)
Shaping = Callable[[Tensor, Tensor], Tensor]


def group_std_normalized(groups: Tensor, scored: Tensor) -> Tensor:
    """GRPO (https://arxiv.org/abs/2402.03300): ``(r_i - mean(r)) / (std(r) + 1e-4)``, unbiased std as TRL."""
    mean = _group_mean(groups, scored)
    return (groups - mean) / (_group_std(groups, scored, mean) + GRPO_STD_EPS)


def group_mean_baseline(groups: Tensor, scored: Tensor) -> Tensor:
    """Dr. GRPO (https://arxiv.org/abs/2503.20783): ``r_i - mean(r)``; the std favours too easy/hard prompts."""
    return groups - _group_mean(groups, scored)


def leave_one_out_baseline(groups: Tensor, scored: Tensor) -> Tensor:
    """RLOO (https://arxiv.org/abs/2402.14740, eq. 7): ``r_i`` minus the other scored samples' mean; 0 if alone."""
    total = masked_sum(groups, scored, dim=1).unsqueeze(1)
    others = scored.sum(1, keepdim=True) - scored.long()
    baseline = (total - torch.nan_to_num(groups, nan=0.0)) / others.clamp(min=1)
    shaped = torch.where(others > 0, groups - baseline, 0.0)
    return torch.where(scored, shaped, torch.nan)


def no_baseline(groups: Tensor, scored: Tensor) -> Tensor:
    """The scores as they are: REINFORCE++ (https://arxiv.org/abs/2501.03262) relies on whitening alone."""
    return groups


def _group_mean(groups: Tensor, scored: Tensor) -> Tensor:
    return masked_mean(groups, scored, dim=1).unsqueeze(1)


def _group_view(scores: Tensor, num_generations: int, mask: Tensor | None = None) -> Tensor:
    if scores.dim() != 1 or scores.shape[0] % num_generations:
        raise ValueError(
            f"scores must be shaped (num_prompts * num_generations,) with num_generations={num_generations}, "
            f"got {tuple(scores.shape)}"
        )
    if mask is not None and (mask.dim() != 2 or mask.shape[0] != scores.shape[0]):
        raise ValueError(
            f"mask must be shaped (batch, seq) with batch = {scores.shape[0]} scores, got {tuple(mask.shape)}"
        )
    return _floating(scores).view(-1, num_generations)


def _group_std(groups: Tensor, scored: Tensor, mean: Tensor) -> Tensor:
    count = scored.sum(1, keepdim=True)
    var = masked_sum((groups - mean) ** 2, scored, dim=1).unsqueeze(1) / (count - 1).clamp(min=1)
    return torch.where(count > 1, var.sqrt(), 0.0)


def _batch_std(scores: Tensor, counted: Tensor, sum_across: Callable[[Tensor], Tensor] | None) -> Tensor:
    """Unbiased std of ``scores`` ``(batch,)`` where ``counted``, over every rank through ``sum_across``."""
    total = sum_across or (lambda t: t)
    sums = total(torch.stack([masked_sum(scores, counted), counted.sum().to(scores.dtype)]))
    count = sums[1]
    var = total(masked_sum((scores - sums[0] / count.clamp(min=1)) ** 2, counted)) / (count - 1).clamp(min=1)
    return torch.where(count > 1, var.sqrt(), 0.0)


def _floating(values: Tensor) -> Tensor:
    # float64 stays float64, for exact tests
    return (values if values.is_floating_point() else values.float()).detach()


def _to_tokens(shaped: Tensor, mask: Tensor, kl_penalty: Tensor | None) -> Tensor:
    """Return-to-go of ``-kl_penalty`` per token plus ``shaped`` ``(batch,)`` on the last token of ``mask``."""
    mask = mask.bool() & ~shaped.isnan().unsqueeze(1)
    shaped = torch.nan_to_num(shaped, nan=0.0)
    if kl_penalty is None:
        return torch.where(mask, shaped.unsqueeze(1), 0.0)
    if kl_penalty.shape != mask.shape:
        raise ValueError(f"kl_penalty shape {tuple(kl_penalty.shape)} does not match mask shape {tuple(mask.shape)}")
    rewards = torch.where(mask, -_floating(kl_penalty), 0.0)
    returns = rewards.flip(1).cumsum(1).flip(1) + shaped.unsqueeze(1)
    return torch.where(mask, returns, 0.0)


@dataclass(frozen=True)
class GroupAdvantageEstimator:
    """One estimator: a shaping of each group's scores, then per-token returns, then optional global whitening.

    Attributes:
        name: the name a config uses.
        shaping: the group shaping.
        whiten: whiten the advantages over the global batch (REINFORCE++).
        min_group: the smallest ``num_generations`` the shaping makes sense for.
        paper: where it comes from.
        batch_std: divide the shaped scores by the std of the global batch's scores, over the rows ``mask`` keeps.
    """

    name: str
    shaping: Shaping
    whiten: bool
    min_group: int
    paper: str
    batch_std: bool = False

    def __call__(
        self,
        scores: Tensor,
        num_generations: int,
        mask: Tensor,
        kl_penalty: Tensor | None = None,
        sum_across: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Per-token advantages ``(batch, seq)``, zero outside ``mask``.

        Args:
            scores: ``(num_prompts * num_generations,)`` sequence scores, prompt-major; ``nan`` = no reward.
            num_generations: samples per prompt ``G`` (the group size).
            mask: ``(batch, seq)`` true on response tokens.
            kl_penalty: ``(batch, seq)`` ``beta * KL_t`` subtracted as a reward (REINFORCE++); ``None``: none.
            sum_across: all-reduce sum over ranks so whitening and the batch std see the global batch (groups are
                rank-local).
        """
        if num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {num_generations}")
        if num_generations < self.min_group:
            raise ValueError(
                f"the {self.name!r} estimator compares samples of the same prompt, so it needs num_generations "
                f">= {self.min_group}, got {num_generations}; raise num_generations or use 'reinforce_pp'"
            )
        groups = _group_view(scores, num_generations, mask)
        shaped = self.shaping(groups, ~groups.isnan()).flatten()
        if self.batch_std:
            kept = mask.bool().any(dim=1) & ~shaped.isnan()
            shaped = shaped / (_batch_std(groups.flatten(), kept, sum_across) + GRPO_STD_EPS)
        if not self.whiten:
            return _to_tokens(shaped, mask, kl_penalty)
        counted = mask.bool() & ~shaped.isnan().unsqueeze(1)
        return masked_whiten(_to_tokens(shaped, counted, kl_penalty), counted, sum_across=sum_across)


def within_group_std(scores: Tensor, num_generations: int) -> Tensor:
    """Mean over groups of each group's reward std: the signal left to the group estimators (0 at collapse).

    ``scores``: ``(num_prompts * num_generations,)`` rewards, prompt-major, ``nan`` = none.
    """
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    groups = _group_view(scores, num_generations)
    scored = ~groups.isnan()
    return _group_std(groups, scored, _group_mean(groups, scored)).mean()


grpo_advantages = GroupAdvantageEstimator("grpo", group_std_normalized, False, 2, "https://arxiv.org/abs/2402.03300")
#: pairs with the ``seq_mean_token_sum_norm`` loss
dr_grpo_advantages = GroupAdvantageEstimator(
    "dr_grpo", group_mean_baseline, False, 2, "https://arxiv.org/abs/2503.20783"
)
rloo_advantages = GroupAdvantageEstimator("rloo", leave_one_out_baseline, False, 2, "https://arxiv.org/abs/2402.14740")
reinforce_pp_advantages = GroupAdvantageEstimator(
    "reinforce_pp", no_baseline, True, 1, "https://arxiv.org/abs/2501.03262"
)
#: OpenRLHF's ``reinforce_baseline``: the group mean removes the prompt's difficulty, whitening sets the scale
reinforce_pp_baseline_advantages = GroupAdvantageEstimator(
    "reinforce_pp_baseline", group_mean_baseline, True, 2, "https://arxiv.org/abs/2501.03262"
)

#: ``grpo`` with TRL's ``scale_rewards="batch"`` (Lite PPO, https://arxiv.org/abs/2508.08221): the group mean as
#: baseline, the std of the whole batch's rewards as scale, so a group of nearly equal rewards is not blown up
grpo_batch_std_advantages = GroupAdvantageEstimator(
    "grpo", group_mean_baseline, False, 2, "https://arxiv.org/abs/2508.08221", batch_std=True
)

GROUP_ADVANTAGE_ESTIMATORS: Mapping[str, GroupAdvantageEstimator] = {
    estimator.name: estimator
    for estimator in (grpo_advantages, dr_grpo_advantages, rloo_advantages, reinforce_pp_advantages,
                      reinforce_pp_baseline_advantages)
}

#: ``scale_rewards`` (TRL's names) -> what ``grpo`` becomes: divided by its group's std or by the batch's; TRL's
#: ``none`` is ``dr_grpo``, and the other estimators have their own scale
GRPO_REWARD_SCALES: Mapping[str, GroupAdvantageEstimator] = {
    "group": grpo_advantages,
    "batch": grpo_batch_std_advantages,
}


def get_group_advantage_estimator(name: str, scale_rewards: str = "group") -> GroupAdvantageEstimator:
    """The estimator called ``name`` in :data:`GROUP_ADVANTAGE_ESTIMATORS`; ``scale_rewards`` (a name in
    :data:`GRPO_REWARD_SCALES`) picks the std that ``grpo`` divides by, and only ``grpo`` takes another than ``group``.
    """
    estimator = choose(GROUP_ADVANTAGE_ESTIMATORS, name, "advantage estimator")
    scaled = choose(GRPO_REWARD_SCALES, scale_rewards, "scale_rewards")
    if estimator is grpo_advantages:
        return scaled
    if scale_rewards != "group":
        raise ValueError(f"scale_rewards={scale_rewards!r} replaces the group std that advantage_estimator 'grpo' "
                         f"divides by; {name!r} divides by none (dr_grpo, rloo) or whitens over the batch "
                         f"(reinforce_pp*): use advantage_estimator='grpo' or scale_rewards='group'")
    return estimator
