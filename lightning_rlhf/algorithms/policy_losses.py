"""The policy term of the critic-free loss, by name (:data:`POLICY_LOSSES`): PPO's clipped token ratio (GRPO, DAPO),
GSPO's clipped sequence ratio (https://arxiv.org/abs/2507.18071) or CISPO's clipped, detached importance weight on a
REINFORCE term (https://arxiv.org/abs/2506.13585). Each gives per-token losses for the aggregation to reduce.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Protocol

import torch
from torch import Tensor

from lightning_rlhf.algorithms.losses import check_clip_ranges, clipped_surrogate
from lightning_rlhf.algorithms.masked import masked_mean
from lightning_rlhf.algorithms.named import choose


class PolicyTerm(NamedTuple):
    """One policy loss: ``loss`` ``(batch, seq)`` per token, and detached scalars: the fractions clipped at each
    bound and the mean importance ratio (over tokens, or over answers for a sequence-level loss)."""

    loss: Tensor
    clipfrac_low: Tensor
    clipfrac_high: Tensor
    ratio_mean: Tensor


class PolicyLoss(Protocol):
    """What every policy loss takes (each ``(batch, seq)``; ``mask`` true on the tokens that count)."""

    def __call__(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                 clip_range_low: float, clip_range_high: float) -> PolicyTerm: ...


def clip_policy_term(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                     clip_range_low: float, clip_range_high: float) -> PolicyTerm:
    """PPO's clipped token ratio (GRPO, DAPO), :func:`~lightning_rlhf.algorithms.losses.clipped_surrogate`; the
    fractions count the tokens whose clip was active (no gradient)."""
    surrogate = clipped_surrogate(logprobs, old_logprobs, advantages, clip_range_low, clip_range_high)
    return PolicyTerm(
        loss=surrogate.loss,
        clipfrac_low=masked_mean(surrogate.clipped_low.float(), mask).detach(),
        clipfrac_high=masked_mean(surrogate.clipped_high.float(), mask).detach(),
        ratio_mean=masked_mean(surrogate.ratio, mask).detach(),
    )


def gspo_policy_term(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                     clip_range_low: float, clip_range_high: float) -> PolicyTerm:
    """GSPO, the sequence-level form: ``max(-A_i s_i, -A_i clip(s_i, 1 - eps_low, 1 + eps_high))`` per answer ``i``.

    ``s_i = exp(mean_t(logp_t - old_logp_t))`` over the answer's tokens: the length-normalised sequence ratio, so one
    clip decision per answer instead of one per token. ``A_i`` is the mean of its tokens' advantages (each token's
    when constant along the answer, as the group estimators give). Each term is spread evenly over its answer's
    tokens, so ``seq_mean_token_mean`` averages the terms over answers (the paper's ``1/G sum_i``). The fractions
    and the ratio mean are over answers. GSPO-token (``sg[s_i] pi_t / sg[pi_t]``) has the same value and gradient
    when ``A_i`` is constant along the answer. The sequence ratio moves little: the paper clips at 3e-4 / 4e-4.
    """
    check_clip_ranges(clip_range_low, clip_range_high)
    mask = mask.bool()
    answers = mask.any(dim=1)
    ratio = torch.exp(masked_mean(logprobs.float() - old_logprobs.float().detach(), mask, dim=1))
    advantage = masked_mean(advantages.float().detach(), mask, dim=1)
    clipped = ratio.clamp(1.0 - clip_range_low, 1.0 + clip_range_high)
    per_answer = torch.maximum(-advantage * ratio, -advantage * clipped)
    return PolicyTerm(
        loss=torch.where(mask, per_answer.unsqueeze(1), 0.0),
        clipfrac_low=masked_mean(((advantage < 0) & (ratio < 1.0 - clip_range_low)).float(), answers).detach(),
        clipfrac_high=masked_mean(((advantage > 0) & (ratio > 1.0 + clip_range_high)).float(), answers).detach(),
        ratio_mean=masked_mean(ratio, answers).detach(),
    )


def cispo_policy_term(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                      clip_range_low: float, clip_range_high: float) -> PolicyTerm:
    """CISPO: ``-sg(clip(r_t, 1 - eps_low, 1 + eps_high)) A_t log pi_t`` per token.

    The importance weight is clipped and detached, so every token keeps the REINFORCE gradient ``-w_t A_t grad log
    pi_t``, where PPO's clip drops the clipped tokens (often the rare, reflective ones). The paper bounds only the
    top of the weight (``clip_range_low=1`` lifts the bottom) and aggregates by ``token_mean``. The fractions count
    the tokens whose weight hit each bound, whatever the advantage's sign.
    """
    check_clip_ranges(clip_range_low, clip_range_high)
    logprobs = logprobs.float()
    ratio = torch.exp(logprobs.detach() - old_logprobs.float().detach())
    weight = ratio.clamp(1.0 - clip_range_low, 1.0 + clip_range_high)
    return PolicyTerm(
        loss=-weight * advantages.float().detach() * logprobs,
        clipfrac_low=masked_mean((ratio < 1.0 - clip_range_low).float(), mask).detach(),
        clipfrac_high=masked_mean((ratio > 1.0 + clip_range_high).float(), mask).detach(),
        ratio_mean=masked_mean(ratio, mask).detach(),
    )


POLICY_LOSSES: Mapping[str, PolicyLoss] = {
    "clip": clip_policy_term,
    "gspo": gspo_policy_term,
    "cispo": cispo_policy_term,
}


def get_policy_loss(name: str, aggregation: str = "seq_mean_token_mean") -> PolicyLoss:
    """The policy loss called ``name`` in :data:`POLICY_LOSSES`, for the loss ``aggregation``: GSPO's terms are one
    per answer, which only ``seq_mean_token_mean`` averages over answers, so it refuses the others."""
    policy_loss = choose(POLICY_LOSSES, name, "policy loss")
    if name == "gspo" and aggregation != "seq_mean_token_mean":
        raise ValueError(f"policy loss 'gspo' is one term per answer, averaged over answers: it needs the loss "
                         f"aggregation 'seq_mean_token_mean', got {aggregation!r} (which weighs answers otherwise)")
    return policy_loss
