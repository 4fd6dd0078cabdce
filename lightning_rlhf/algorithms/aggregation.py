"""Loss aggregation: how per-token losses ``(batch, seq)`` become one scalar.

Why it is a choice: the three ways the peers reduce a critic-free loss weight tokens differently, and the
difference is visible in training (DAPO and Dr. GRPO both report that GRPO's per-sequence mean favours
short correct answers and long wrong ones). Each is a named function in :data:`LOSS_AGGREGATIONS`
(``loss_aggregation: token_mean``), all with one signature.

The reductions are over the rows given (one micro-batch on one rank); data-parallel training then
averages the ranks' gradients, as TRL's trainers do.
"""

from __future__ import annotations

from typing import Mapping, Protocol

from torch import Tensor

from lightning_rlhf.algorithms.masked import masked_mean, masked_sum
from lightning_rlhf.algorithms.named import choose


class LossAggregation(Protocol):
    """What every aggregation takes and returns (see :func:`seq_mean_token_mean` for the arguments)."""

    def __call__(self, per_token: Tensor, mask: Tensor, max_tokens: int | None = None) -> Tensor: ...


def _has_tokens(per_token: Tensor, mask: Tensor) -> Tensor:
    if per_token.shape != mask.shape or per_token.dim() != 2:
        raise ValueError(
            f"per_token {tuple(per_token.shape)} and mask {tuple(mask.shape)} must both be shaped (batch, seq)"
        )
    return mask.bool().any(dim=1)


def seq_mean_token_mean(per_token: Tensor, mask: Tensor, max_tokens: int | None = None) -> Tensor:
    """Mean over sequences of each sequence's token mean: every sequence weighs the same.

    The GRPO paper's objective, Shao et al. 2024 (https://arxiv.org/abs/2402.03300), equation 3
    (``1/G sum_i 1/|o_i| sum_t``). Rows without tokens are left out of the sequence mean.

    Args:
        per_token: ``(batch, seq)`` per-token losses (carry the gradient).
        mask: ``(batch, seq)`` true on the tokens that count.
        max_tokens: unused here (see :func:`seq_mean_token_sum_norm`); accepted so every aggregation has one
            signature.

    Returns:
        A scalar; 0 when no token counts.
    """
    has_tokens = _has_tokens(per_token, mask)
    return masked_mean(masked_mean(per_token, mask, dim=1), has_tokens)


def token_mean(per_token: Tensor, mask: Tensor, max_tokens: int | None = None) -> Tensor:
    """Mean over every token of the batch: long sequences weigh more, in proportion to their length.

    DAPO's token-level policy gradient loss, Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning
    System at Scale" (https://arxiv.org/abs/2503.14476), section 3.3: with the per-sequence mean, a token
    of a long (often wrong, repetitive) answer contributes less than one of a short answer, so bad
    patterns in long answers go unpunished. Args as :func:`seq_mean_token_mean`.
    """
    _has_tokens(per_token, mask)
    return masked_mean(per_token, mask)


def seq_mean_token_sum_norm(per_token: Tensor, mask: Tensor, max_tokens: int | None = None) -> Tensor:
    """Each sequence's token sum divided by one constant (``max_tokens``), averaged over sequences.

    Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective"
    (https://arxiv.org/abs/2503.20783), section 3.2: dividing by each sequence's own length is a length
    bias (wrong answers are pushed to grow longer); a constant normaliser removes it.

    Args:
        per_token: ``(batch, seq)`` per-token losses (carry the gradient).
        mask: ``(batch, seq)`` true on the tokens that count.
        max_tokens: the constant, usually the generation's ``max_new_tokens``; required.

    Returns:
        A scalar; 0 when no token counts.
    """
    if max_tokens is None or max_tokens < 1:
        raise ValueError(
            f"seq_mean_token_sum_norm divides by a constant max_tokens (>= 1; usually the generation's "
            f"max_new_tokens), got {max_tokens}"
        )
    has_tokens = _has_tokens(per_token, mask)
    return masked_mean(masked_sum(per_token, mask, dim=1) / max_tokens, has_tokens)


#: the aggregations by name, for configuration (``loss_aggregation: token_mean``)
LOSS_AGGREGATIONS: Mapping[str, LossAggregation] = {
    "seq_mean_token_mean": seq_mean_token_mean,
    "token_mean": token_mean,
    "seq_mean_token_sum_norm": seq_mean_token_sum_norm,
}


def get_loss_aggregation(name: str) -> LossAggregation:
    """The aggregation called ``name`` (one of :data:`LOSS_AGGREGATIONS`), with a clear error otherwise."""
    return choose(LOSS_AGGREGATIONS, name, "loss aggregation")

