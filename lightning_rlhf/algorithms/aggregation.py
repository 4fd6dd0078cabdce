"""Loss aggregation: how per-token losses ``(batch, seq)`` of one micro-batch become one scalar. The peers'
reductions weight tokens differently, visibly in training, so the choice is a name in :data:`LOSS_AGGREGATIONS`.
"""

from __future__ import annotations

from typing import Mapping, Protocol

from torch import Tensor

from lightning_rlhf.algorithms.masked import masked_mean, masked_sum
from lightning_rlhf.algorithms.named import choose


class LossAggregation(Protocol):
    """What every aggregation takes and returns (arguments as :func:`seq_mean_token_mean`)."""

    def __call__(self, per_token: Tensor, mask: Tensor, max_tokens: int | None = None) -> Tensor: ...


def _has_tokens(per_token: Tensor, mask: Tensor) -> Tensor:
    if per_token.shape != mask.shape or per_token.dim() != 2:
        raise ValueError(
            f"per_token {tuple(per_token.shape)} and mask {tuple(mask.shape)} must both be shaped (batch, seq)"
        )
    return mask.bool().any(dim=1)


def seq_mean_token_mean(per_token: Tensor, mask: Tensor, max_tokens: int | None = None) -> Tensor:
    """Mean over sequences of each one's token mean (GRPO, https://arxiv.org/abs/2402.03300, eq. 3); 0 if empty.

    ``per_token``: ``(batch, seq)`` losses; ``mask``: true on the tokens that count; ``max_tokens``: unused here.
    """
    has_tokens = _has_tokens(per_token, mask)
    return masked_mean(masked_mean(per_token, mask, dim=1), has_tokens)


def token_mean(per_token: Tensor, mask: Tensor, max_tokens: int | None = None) -> Tensor:
    """Mean over every token of the batch (DAPO, https://arxiv.org/abs/2503.14476, section 3.3).

    Long answers weigh more, so their bad patterns are not diluted. Args as :func:`seq_mean_token_mean`.
    """
    _has_tokens(per_token, mask)
    return masked_mean(per_token, mask)


def seq_mean_token_sum_norm(per_token: Tensor, mask: Tensor, max_tokens: int | None = None) -> Tensor:
    """Each sequence's token sum over a constant ``max_tokens`` (required), averaged over sequences.

    Dr. GRPO (https://arxiv.org/abs/2503.20783, section 3.2): dividing by each sequence's own length is a length
    bias. Args as :func:`seq_mean_token_mean`; ``max_tokens`` is usually the generation's ``max_new_tokens``.
    """
    if max_tokens is None or max_tokens < 1:
        raise ValueError(
            f"seq_mean_token_sum_norm divides by a constant max_tokens (>= 1; usually the generation's "
            f"max_new_tokens), got {max_tokens}"
        )
    has_tokens = _has_tokens(per_token, mask)
    return masked_mean(masked_sum(per_token, mask, dim=1) / max_tokens, has_tokens)


LOSS_AGGREGATIONS: Mapping[str, LossAggregation] = {
    "seq_mean_token_mean": seq_mean_token_mean,
    "token_mean": token_mean,
    "seq_mean_token_sum_norm": seq_mean_token_sum_norm,
}


def get_loss_aggregation(name: str) -> LossAggregation:
    """The aggregation called ``name`` in :data:`LOSS_AGGREGATIONS`."""
    return choose(LOSS_AGGREGATIONS, name, "loss aggregation")

