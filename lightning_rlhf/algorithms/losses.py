"""PPO's clipped policy and value losses (https://arxiv.org/abs/1707.06347, the value loss as DeepSpeed-Chat's),
InstructGPT's pairwise reward and ptx losses (https://arxiv.org/abs/2203.02155); each returns ``(loss, stats)``.
"""

from __future__ import annotations

from typing import NamedTuple, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_rlhf.algorithms.kl import kl_k3
from lightning_rlhf.algorithms.masked import masked_mean


class PolicyLossStats(TypedDict):
    """Detached scalars of one policy update."""

    clipfrac: Tensor
    #: k3 estimate of ``KL(pi_old || pi)``: how far the update moved the policy
    approx_kl: Tensor
    ratio_mean: Tensor


class ValueLossStats(TypedDict):
    """Detached scalars of one critic update."""

    #: fraction of tokens where the clipped error was the larger one
    value_clipfrac: Tensor
    value_mean: Tensor


class PairwiseLossStats(TypedDict):
    """Detached scalars of one reward-model batch."""

    accuracy: Tensor
    chosen_mean: Tensor
    rejected_mean: Tensor


class ClippedSurrogate(NamedTuple):
    """Per-token pieces of PPO's clipped objective, each ``(batch, seq)``; ``clipped_*``: that bound was active."""

    loss: Tensor
    ratio: Tensor
    clipped_low: Tensor
    clipped_high: Tensor


def check_clip_ranges(clip_range_low: float, clip_range_high: float) -> None:
    """Refuse clip ranges outside ``0 <= eps_low <= 1`` and ``eps_high >= 0`` (a ratio is never negative)."""
    if not 0 <= clip_range_low <= 1 or clip_range_high < 0:
        raise ValueError(
            f"clip ranges must satisfy 0 <= clip_range_low <= 1 and clip_range_high >= 0, "
            f"got clip_range_low={clip_range_low}, clip_range_high={clip_range_high}"
        )


def clipped_surrogate(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_range_low: float, clip_range_high: float
) -> ClippedSurrogate:
    """PPO's clipped surrogate per token, ``max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))``.

    A wider upper range is DAPO's clip-higher (https://arxiv.org/abs/2503.14476, section 3.1): unlikely tokens
    with a positive advantage may grow, against entropy collapse.

    Args:
        logprobs: ``(batch, seq)`` log-probabilities under the current policy (carries the gradient).
        old_logprobs: ``(batch, seq)`` the same at sampling time.
        advantages: ``(batch, seq)`` advantage estimates.
        clip_range_low: ``eps_low``.
        clip_range_high: ``eps_high``.
    """
    check_clip_ranges(clip_range_low, clip_range_high)
    ratio = torch.exp(logprobs.float() - old_logprobs.float().detach())
    advantages = advantages.float().detach()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range_low, 1.0 + clip_range_high)
    return ClippedSurrogate(
        loss=torch.maximum(unclipped, clipped),
        ratio=ratio,
        clipped_low=(advantages < 0) & (ratio < 1.0 - clip_range_low),
        clipped_high=(advantages > 0) & (ratio > 1.0 + clip_range_high),
    )


def clipped_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float = 0.2
) -> tuple[Tensor, PolicyLossStats]:
    """PPO's clipped surrogate ``mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))`` over ``mask``.

    Args as :func:`clipped_surrogate`, ``mask`` ``(batch, seq)`` true on real response tokens, ``clip_range`` ``eps``.
    """
    surrogate = clipped_surrogate(logprobs, old_logprobs, advantages, clip_range, clip_range)
    ratio = surrogate.ratio
    loss = masked_mean(surrogate.loss, mask)
    stats = PolicyLossStats(
        clipfrac=masked_mean((surrogate.clipped_low | surrogate.clipped_high).float(), mask).detach(),
        approx_kl=masked_mean(kl_k3(old_logprobs, logprobs, clamp=None), mask).detach(),
        ratio_mean=masked_mean(ratio, mask).detach(),
    )
    return loss, stats


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float = 0.2
) -> tuple[Tensor, ValueLossStats]:
    """``0.5 * mean(max((V - R)^2, (V_clipped - R)^2))`` with ``V_clipped = V_old + clip(V - V_old, -eps, eps)``.

    Args:
        values: ``(batch, seq)`` current critic values (carry the gradient).
        old_values: ``(batch, seq)`` critic values at sampling time.
        returns: ``(batch, seq)`` value targets.
        mask: ``(batch, seq)`` true on real response tokens.
        clip_range: ``eps``.
    """
    values = values.float()
    old_values, returns = old_values.float().detach(), returns.float().detach()
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    stats = ValueLossStats(
        value_clipfrac=masked_mean((clipped_error > unclipped_error).float(), mask).detach(),
        value_mean=masked_mean(values, mask).detach(),
    )
    return loss, stats


def pairwise_reward_loss(
    chosen_scores: Tensor, rejected_scores: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, PairwiseLossStats]:
    """Bradley-Terry loss ``mean(-log sigmoid(r_chosen - r_rejected))``.

    Args:
        chosen_scores: ``(batch,)`` scores of the preferred responses, or ``(batch, seq)`` token-wise (DeepSpeed-Chat).
        rejected_scores: same shape, scores of the rejected responses.
        mask: same shape, true on entries that count; ``None`` counts all.
    """
    if chosen_scores.shape != rejected_scores.shape:
        raise ValueError(
            f"chosen_scores {tuple(chosen_scores.shape)} and rejected_scores "
            f"{tuple(rejected_scores.shape)} differ in shape"
        )
    chosen, rejected = chosen_scores.float(), rejected_scores.float()
    loss = masked_mean(-F.logsigmoid(chosen - rejected), mask)
    if chosen.dim() > 1:
        chosen, rejected = masked_mean(chosen, mask, dim=-1), masked_mean(rejected, mask, dim=-1)
    stats = PairwiseLossStats(
        accuracy=((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean().detach(),
        chosen_mean=chosen.mean().detach(),
        rejected_mean=rejected.mean().detach(),
    )
    return loss, stats


def causal_lm_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Next-token cross-entropy of ``logits`` ``(batch, seq, vocab)`` against ``labels`` ``(batch, seq)``, the mean
    over the tokens not labelled ``ignore_index`` (prompt, padding); 0 when none count."""
    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:]
    counted = shifted_labels != ignore_index
    per_token = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    ).view_as(shifted_labels)
    return masked_mean(per_token, counted)
