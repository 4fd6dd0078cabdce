"""Critic-free advantage estimators: GRPO, Dr. GRPO, RLOO, REINFORCE++ and REINFORCE++-baseline.

Why a family rather than one function: they differ only in the baseline subtracted from each sequence's
score and in how the result is normalised, and the peers disagree on which is best (2025 papers argue each
way). Each is a named function here and a name in :data:`GROUP_ADVANTAGE_ESTIMATORS`, so a config picks one
(``advantage_estimator: rloo``) and nothing branches on the name.

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

from typing import Callable, Mapping, Protocol

import torch
from torch import Tensor

from lightning_rlhf.algorithms.masked import masked_mean, masked_sum, masked_whiten

#: added to the group std before dividing, as TRL's GRPOTrainer does, so a group of equal rewards gives 0
GRPO_STD_EPS = 1e-4


def _group_view(scores: Tensor, num_generations: int, mask: Tensor) -> Tensor:
    """``scores`` as ``(num_prompts, num_generations)`` after checking the shapes agree."""
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    if scores.dim() != 1 or scores.shape[0] % num_generations:
        raise ValueError(
            f"scores must be shaped (num_prompts * num_generations,) with num_generations={num_generations}, "
            f"got {tuple(scores.shape)}"
        )
    if mask.dim() != 2 or mask.shape[0] != scores.shape[0]:
        raise ValueError(
            f"mask must be shaped (batch, seq) with batch = {scores.shape[0]} scores, got {tuple(mask.shape)}"
        )
    return _floating(scores).view(-1, num_generations)


def _floating(values: Tensor) -> Tensor:
    """``values`` detached, as float32 unless already floating (float64 stays, for exact tests)."""
    return (values if values.is_floating_point() else values.float()).detach()


def _need_pairs(num_generations: int, estimator: str) -> None:
    if num_generations < 2:
        raise ValueError(
            f"the {estimator!r} estimator compares samples of the same prompt, so it needs num_generations >= 2, "
            f"got {num_generations}; raise num_generations or use 'reinforce_pp'"
        )


def _group_mean(groups: Tensor, scored: Tensor) -> Tensor:
    """Mean of each group's scored entries, ``(num_prompts, 1)``."""
    return masked_mean(groups, scored, dim=1).unsqueeze(1)


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


class GroupAdvantageEstimator(Protocol):
    """What every estimator takes and returns (see :func:`grpo_advantages` for the arguments)."""

    def __call__(
        self,
        scores: Tensor,
        num_generations: int,
        mask: Tensor,
        kl_penalty: Tensor | None = None,
        sum_across: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor: ...


def grpo_advantages(
    scores: Tensor,
    num_generations: int,
    mask: Tensor,
    kl_penalty: Tensor | None = None,
    sum_across: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """GRPO: ``(r_i - mean(r)) / (std(r) + 1e-4)`` over the group, the same for every token.

    Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models"
    (https://arxiv.org/abs/2402.03300), section 4.1.2 (outcome supervision). The std is the unbiased one,
    as TRL's ``GRPOTrainer`` uses; the paper does not say.

    Args:
        scores: ``(num_prompts * num_generations,)`` sequence scores, prompt-major; ``nan`` = no reward.
        num_generations: samples per prompt ``G`` (the group size), at least 2.
        mask: ``(batch, seq)`` true on response tokens; advantages are zero elsewhere.
        kl_penalty: ``(batch, seq)`` per-token ``beta * KL_t`` to subtract as a reward (KL in the reward);
            ``None``: no KL in the reward (GRPO's own KL term goes in the loss instead).
        sum_across: unused by the group estimators: a group's samples are generated together on one rank
            (prompts are repeated inside ``generate``), so its statistics are local. Accepted so every
            estimator has one signature.

    Returns:
        ``(batch, seq)`` float advantages.
    """
    _need_pairs(num_generations, "grpo")
    groups = _group_view(scores, num_generations, mask)
    scored = ~groups.isnan()
    mean = _group_mean(groups, scored)
    count = scored.sum(1, keepdim=True)
    var = masked_sum((groups - mean) ** 2, scored, dim=1).unsqueeze(1) / (count - 1).clamp(min=1)
    std = torch.where(count > 1, var.sqrt(), 0.0)
    return _to_tokens(((groups - mean) / (std + GRPO_STD_EPS)).flatten(), mask, kl_penalty)


def dr_grpo_advantages(
    scores: Tensor,
    num_generations: int,
    mask: Tensor,
    kl_penalty: Tensor | None = None,
    sum_across: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Dr. GRPO: ``r_i - mean(r)`` over the group, without GRPO's division by the std.

    Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective"
    (https://arxiv.org/abs/2503.20783), section 3.2: dividing by the std up-weights prompts that are
    nearly always right or wrong (a difficulty bias). Its other half, a constant length normaliser instead
    of each sequence's length, is the loss aggregation ``seq_mean_token_sum_norm``. Args as
    :func:`grpo_advantages`.
    """
    _need_pairs(num_generations, "dr_grpo")
    groups = _group_view(scores, num_generations, mask)
    return _to_tokens((groups - _group_mean(groups, ~groups.isnan())).flatten(), mask, kl_penalty)


def rloo_advantages(
    scores: Tensor,
    num_generations: int,
    mask: Tensor,
    kl_penalty: Tensor | None = None,
    sum_across: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """RLOO: ``r_i`` minus the mean of the other samples' scores of its group (leave one out).

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
    Feedback in LLMs" (https://arxiv.org/abs/2402.14740), equation 7: the baseline excludes the sample
    itself, so it stays unbiased. A sample whose group has no other scored sample gets 0. Args as
    :func:`grpo_advantages`.
    """
    _need_pairs(num_generations, "rloo")
    groups = _group_view(scores, num_generations, mask)
    scored = ~groups.isnan()
    total = masked_sum(groups, scored, dim=1).unsqueeze(1)
    others = scored.sum(1, keepdim=True) - scored.long()
    baseline = (total - torch.nan_to_num(groups, nan=0.0)) / others.clamp(min=1)
    shaped = torch.where(others > 0, groups - baseline, 0.0)
    return _to_tokens(torch.where(scored, shaped, torch.nan).flatten(), mask, kl_penalty)


def reinforce_pp_advantages(
    scores: Tensor,
    num_generations: int,
    mask: Tensor,
    kl_penalty: Tensor | None = None,
    sum_across: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """REINFORCE++: returns-to-go of the score and the per-token KL penalty, whitened over the global batch.

    Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models"
    (https://arxiv.org/abs/2501.03262): no critic and no groups; the whitening over every rank's tokens is
    what keeps the variance down, so it must see the global batch (``sum_across``), not one rank's rows.

    Args:
        scores: ``(batch,)`` sequence scores; ``nan`` = no reward (advantage 0, left out of the statistics).
        num_generations: samples per prompt; any value >= 1 (only the shapes are checked).
        mask: ``(batch, seq)`` true on response tokens.
        kl_penalty: ``(batch, seq)`` per-token ``beta * KL_t`` subtracted as a reward (the paper's design).
        sum_across: all-reduce sum over the ranks sharing the batch (as :func:`masked_whiten`'s); ``None``
            whitens over this rank's rows only.

    Returns:
        ``(batch, seq)`` float advantages, zero mean and unit variance over the global batch's tokens.
    """
    _group_view(scores, num_generations, mask)
    return _whiten_returns(_floating(scores), mask, kl_penalty, sum_across)


def reinforce_pp_baseline_advantages(
    scores: Tensor,
    num_generations: int,
    mask: Tensor,
    kl_penalty: Tensor | None = None,
    sum_across: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """REINFORCE++-baseline: the group mean subtracted from each score first, then as :func:`reinforce_pp_advantages`.

    Hu 2025 (https://arxiv.org/abs/2501.03262), the variant for several samples per prompt (v2 of the paper,
    OpenRLHF's ``reinforce_baseline``): the group mean removes the prompt's difficulty, the global
    whitening sets the scale without GRPO's per-group std. Args as :func:`reinforce_pp_advantages`, with
    ``num_generations >= 2``.
    """
    _need_pairs(num_generations, "reinforce_pp_baseline")
    groups = _group_view(scores, num_generations, mask)
    shaped = (groups - _group_mean(groups, ~groups.isnan())).flatten()
    return _whiten_returns(shaped, mask, kl_penalty, sum_across)


def _whiten_returns(
    shaped: Tensor, mask: Tensor, kl_penalty: Tensor | None, sum_across: Callable[[Tensor], Tensor] | None
) -> Tensor:
    counted = mask.bool() & ~shaped.isnan().unsqueeze(1)
    return masked_whiten(_to_tokens(shaped, counted, kl_penalty), counted, sum_across=sum_across)


#: the estimators by name, for configuration (``advantage_estimator: grpo``)
GROUP_ADVANTAGE_ESTIMATORS: Mapping[str, GroupAdvantageEstimator] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
    "reinforce_pp_baseline": reinforce_pp_baseline_advantages,
}


def get_group_advantage_estimator(name: str) -> GroupAdvantageEstimator:
    """The estimator called ``name`` (one of :data:`GROUP_ADVANTAGE_ESTIMATORS`), with a clear error otherwise."""
    try:
        return GROUP_ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown advantage estimator {name!r}; choose one of {sorted(GROUP_ADVANTAGE_ESTIMATORS)}"
        ) from None
