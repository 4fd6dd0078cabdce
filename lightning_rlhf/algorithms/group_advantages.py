"""Critic-free advantage estimators: GRPO, Dr. GRPO, RLOO, REINFORCE++ and REINFORCE++-baseline.

Why a family rather than one function: they differ only in the baseline subtracted from each sequence's
score and in how the result is normalised, and the peers disagree on which is best (2025 papers argue each
way). What differs, the shaping of a group's scores, is a named function with its paper here; each estimator is
that shaping plus a whitening flag (:class:`GroupAdvantageEstimator`) under a name in
:data:`GROUP_ADVANTAGE_ESTIMATORS`, so a config picks one (``advantage_estimator: rloo``) and nothing branches
on the name.

All share one shape of computation, the one OpenRLHF uses (``experience_maker.py`` of
https://github.com/OpenRLHF/OpenRLHF, ``advantage_estimator`` in ``rloo``, ``reinforce_baseline``,
``group_norm``, ``dr_grpo``, ``reinforce``):

1. the scores ``(num_prompts * num_generations,)`` are shaped by the estimator's baseline (per group of
   ``num_generations`` samples of one prompt, prompt-major: rows ``[i * G, (i + 1) * G)`` share prompt ``i``);
2. the shaped score is placed on the last response token and an optional per-token KL penalty is subtracted
   on every response token (REINFORCE++'s "KL in the reward");
3. the advantage of a token is its return-to-go (``gamma = 1``): without a KL penalty every token of a
   sequence gets that sequence's shaped score;
4. the REINFORCE++ pair then whiten over the global batch (every rank's tokens).

A ``nan`` score means "no reward for this row" (every reward function returned ``None``): such rows are left
out of their group's statistics and get advantage 0; drop them from the loss mask as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor

from lightning_rlhf.algorithms.masked import masked_mean, masked_sum, masked_whiten
from lightning_rlhf.algorithms.named import choose

#: added to the group std before dividing, as TRL's GRPOTrainer does, so a group of equal rewards gives 0
GRPO_STD_EPS = 1e-4

#: a shaping: ``(groups, scored)`` both ``(num_prompts, num_generations)`` -> shaped scores of that shape;
#: ``groups`` holds ``nan`` where ``scored`` is false, and the result may too
Shaping = Callable[[Tensor, Tensor], Tensor]


def group_std_normalized(groups: Tensor, scored: Tensor) -> Tensor:
    """GRPO's shaping: ``(r_i - mean(r)) / (std(r) + 1e-4)`` over the group.

    Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models"
    (https://arxiv.org/abs/2402.03300), section 4.1.2 (outcome supervision). The std is the unbiased one,
    as TRL's ``GRPOTrainer`` uses (the paper does not say); a group with one scored sample gets 0.
    """
    mean = _group_mean(groups, scored)
    return (groups - mean) / (_group_std(groups, scored, mean) + GRPO_STD_EPS)


def group_mean_baseline(groups: Tensor, scored: Tensor) -> Tensor:
    """``r_i - mean(r)`` over the group, without GRPO's division by the std.

    Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective"
    (https://arxiv.org/abs/2503.20783), section 3.2: dividing by the std up-weights prompts that are nearly
    always right or wrong (a difficulty bias). Also the first half of REINFORCE++-baseline.
    """
    return groups - _group_mean(groups, scored)


def leave_one_out_baseline(groups: Tensor, scored: Tensor) -> Tensor:
    """RLOO's shaping: ``r_i`` minus the mean of the *other* scored samples of its group.

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
    Feedback in LLMs" (https://arxiv.org/abs/2402.14740), equation 7: the baseline excludes the sample
    itself, so it stays unbiased. A sample whose group has no other scored sample gets 0.
    """
    total = masked_sum(groups, scored, dim=1).unsqueeze(1)
    others = scored.sum(1, keepdim=True) - scored.long()
    baseline = (total - torch.nan_to_num(groups, nan=0.0)) / others.clamp(min=1)
    shaped = torch.where(others > 0, groups - baseline, 0.0)
    return torch.where(scored, shaped, torch.nan)


def no_baseline(groups: Tensor, scored: Tensor) -> Tensor:
    """The scores as they are: REINFORCE++ (https://arxiv.org/abs/2501.03262) relies on the global
    whitening alone."""
    return groups


def _group_mean(groups: Tensor, scored: Tensor) -> Tensor:
    """Mean of each group's scored entries, ``(num_prompts, 1)``."""
    return masked_mean(groups, scored, dim=1).unsqueeze(1)


def _group_view(scores: Tensor, num_generations: int, mask: Tensor | None = None) -> Tensor:
    """``scores`` as ``(num_prompts, num_generations)`` after checking the shapes (and ``mask``'s) agree."""
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
    """Unbiased std of each group's scored entries around ``mean``, ``(num_prompts, 1)``; 0 below two entries."""
    count = scored.sum(1, keepdim=True)
    var = masked_sum((groups - mean) ** 2, scored, dim=1).unsqueeze(1) / (count - 1).clamp(min=1)
    return torch.where(count > 1, var.sqrt(), 0.0)


def _floating(values: Tensor) -> Tensor:
    """``values`` detached, as float32 unless already floating (float64 stays, for exact tests)."""
    return (values if values.is_floating_point() else values.float()).detach()


def _to_tokens(shaped: Tensor, mask: Tensor, kl_penalty: Tensor | None) -> Tensor:
    """Return-to-go of ``-kl_penalty`` per token plus ``shaped`` on the last token, zero outside ``mask``.

    Args:
        shaped: ``(batch,)`` shaped sequence scores; ``nan`` rows (no reward) become 0 on every token.
        mask: ``(batch, seq)`` true on response tokens.
        kl_penalty: ``(batch, seq)`` ``beta * KL_t`` per token, or ``None``.
    """
    mask = mask.bool() & ~shaped.isnan().unsqueeze(1)
    shaped = torch.nan_to_num(shaped, nan=0.0)
    if kl_penalty is None:
        return torch.where(mask, shaped.unsqueeze(1), 0.0)
    if kl_penalty.shape != mask.shape:
        raise ValueError(f"kl_penalty shape {tuple(kl_penalty.shape)} does not match mask shape {tuple(mask.shape)}")
    # The sequence reward sits on the last real token, so every real token's return-to-go contains it once.
    rewards = torch.where(mask, -_floating(kl_penalty), 0.0)
    returns = rewards.flip(1).cumsum(1).flip(1) + shaped.unsqueeze(1)
    return torch.where(mask, returns, 0.0)


@dataclass(frozen=True)
class GroupAdvantageEstimator:
    """One estimator: a shaping of each group's scores, then per-token returns, then optionally whitening.

    Attributes:
        name: the name a config uses.
        shaping: the group shaping (one of the functions above).
        whiten: whiten the advantages over the global batch (REINFORCE++), after the shaping.
        min_group: the smallest ``num_generations`` the shaping makes sense for.
        paper: where it comes from.
    """

    name: str
    shaping: Shaping
    whiten: bool
    min_group: int
    paper: str

    def __call__(
        self,
        scores: Tensor,
        num_generations: int,
        mask: Tensor,
        kl_penalty: Tensor | None = None,
        sum_across: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Per-token advantages.

        Args:
            scores: ``(num_prompts * num_generations,)`` sequence scores, prompt-major; ``nan`` = no reward
                (the row is left out of its group's statistics and gets advantage 0: drop it from the loss too).
            num_generations: samples per prompt ``G`` (the group size).
            mask: ``(batch, seq)`` true on response tokens; advantages are zero elsewhere.
            kl_penalty: ``(batch, seq)`` per-token ``beta * KL_t`` subtracted as a reward (KL in the reward,
                REINFORCE++'s design); ``None``: no KL in the reward (GRPO puts its KL in the loss instead).
            sum_across: all-reduce sum over the ranks sharing the batch (as :func:`masked_whiten`'s), so the
                whitening sees the global batch; ``None``: this rank's rows only. Unused without whitening: a
                group's samples are generated together on one rank, so group statistics are local.

        Returns:
            ``(batch, seq)`` float advantages.
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
        if not self.whiten:
            return _to_tokens(shaped, mask, kl_penalty)
        counted = mask.bool() & ~shaped.isnan().unsqueeze(1)
        return masked_whiten(_to_tokens(shaped, counted, kl_penalty), counted, sum_across=sum_across)


def within_group_std(scores: Tensor, num_generations: int) -> Tensor:
    """Mean over groups of the (unbiased) std of each group's scored rewards: how much signal the group
    estimators have to work with (0 when every group's answers score the same; GRPO's collapse curve).

    Args:
        scores: ``(num_prompts * num_generations,)`` rewards, prompt-major; ``nan`` = no reward.
        num_generations: samples per prompt.

    Returns:
        A detached scalar; groups with fewer than two scored rewards count as 0.
    """
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    groups = _group_view(scores, num_generations)
    scored = ~groups.isnan()
    return _group_std(groups, scored, _group_mean(groups, scored)).mean()


#: Shao et al. 2024, DeepSeekMath (GRPO): the group's mean and std, the same advantage on every token
grpo_advantages = GroupAdvantageEstimator("grpo", group_std_normalized, False, 2, "https://arxiv.org/abs/2402.03300")
#: Liu et al. 2025, Dr. GRPO: no std (its constant length normaliser is the ``seq_mean_token_sum_norm`` loss)
dr_grpo_advantages = GroupAdvantageEstimator(
    "dr_grpo", group_mean_baseline, False, 2, "https://arxiv.org/abs/2503.20783"
)
#: Ahmadian et al. 2024, RLOO: the leave-one-out baseline
rloo_advantages = GroupAdvantageEstimator("rloo", leave_one_out_baseline, False, 2, "https://arxiv.org/abs/2402.14740")
#: Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models": no critic, no
#: groups; whitening over every rank's tokens keeps the variance down, so it must see the global batch
reinforce_pp_advantages = GroupAdvantageEstimator(
    "reinforce_pp", no_baseline, True, 1, "https://arxiv.org/abs/2501.03262"
)
#: REINFORCE++-baseline (v2 of the paper, OpenRLHF's ``reinforce_baseline``): the group mean removes the
#: prompt's difficulty, the global whitening sets the scale without GRPO's per-group std
reinforce_pp_baseline_advantages = GroupAdvantageEstimator(
    "reinforce_pp_baseline", group_mean_baseline, True, 2, "https://arxiv.org/abs/2501.03262"
)

#: the estimators by name, for configuration (``advantage_estimator: grpo``)
GROUP_ADVANTAGE_ESTIMATORS: Mapping[str, GroupAdvantageEstimator] = {
    estimator.name: estimator
    for estimator in (grpo_advantages, dr_grpo_advantages, rloo_advantages, reinforce_pp_advantages,
                      reinforce_pp_baseline_advantages)
}


def get_group_advantage_estimator(name: str) -> GroupAdvantageEstimator:
    """The estimator called ``name`` (one of :data:`GROUP_ADVANTAGE_ESTIMATORS`), with a clear error otherwise."""
    return choose(GROUP_ADVANTAGE_ESTIMATORS, name, "advantage estimator")
