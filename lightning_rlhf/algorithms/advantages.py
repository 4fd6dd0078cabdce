"""Per-token KL-penalised rewards (as DeepSpeed-Chat's ``compute_rewards``) and generalised advantage estimation
(Schulman et al. 2015, https://arxiv.org/abs/1506.02438).
"""

from __future__ import annotations

from typing import TypedDict

import torch
from torch import Tensor

from lightning_rlhf.algorithms.kl import get_kl_estimator
from lightning_rlhf.algorithms.masked import masked_sum, masked_var


class RewardStats(TypedDict):
    """Detached per-sequence sums averaged over a rollout: ``kl`` in nats, ``non_score_reward`` = ``-beta * KL``."""

    kl: Tensor
    score: Tensor
    non_score_reward: Tensor
    reward_mean: Tensor
    reward_std: Tensor


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last true entry of each row of ``mask`` ``(batch, seq)``; ``-1`` for an all-false row."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).amax(dim=-1)


def process_scores(
    scores: Tensor,
    eos_found: Tensor | None = None,
    missing_eos_penalty: float = 0.0,
    score_mean: float = 0.0,
    score_std: float = 1.0,
    clip: float | None = 5.0,
) -> Tensor:
    """``(score - score_mean) / score_std - missing_eos_penalty`` (where no EOS), clipped to ``[-clip, clip]``.

    Args:
        scores: ``(batch,)`` raw scores.
        eos_found: ``(batch,)`` bool, whether each response ended with EOS; ``None`` skips the penalty.
        missing_eos_penalty: subtracted from the score of responses that never emit EOS.
        score_mean: mean of the reward model's scores (e.g. from ``reward_stats.json``).
        score_std: their standard deviation (must be > 0).
        clip: clip range; ``None`` disables clipping.
    """
    if score_std <= 0:
        raise ValueError(f"score_std must be > 0, got {score_std}")
    processed = (scores.float() - score_mean) / score_std
    if eos_found is not None and missing_eos_penalty:
        processed = processed - missing_eos_penalty * (~eos_found.bool()).float()
    return processed if clip is None else processed.clamp(-clip, clip)


def kl_penalized_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
) -> tuple[Tensor, RewardStats]:
    """Per-token rewards: ``-kl_coef * KL_t`` on every response token, plus ``scores`` on the last one.

    Args:
        scores: ``(batch,)`` processed sequence scores (see :func:`process_scores`).
        logprobs: ``(batch, seq)`` policy log-probabilities of the response tokens at sampling time.
        ref_logprobs: ``(batch, seq)`` the same under the reference model.
        mask: ``(batch, seq)`` true on real response tokens (through EOS); an all-false row gets no reward.
        kl_coef: the KL coefficient ``beta``.
        kl_estimator: name in :data:`lightning_rlhf.algorithms.kl.KL_ESTIMATORS`.
    """
    if logprobs.shape != ref_logprobs.shape or logprobs.shape != mask.shape or scores.shape != logprobs.shape[:1]:
        raise ValueError(
            f"shape mismatch: scores {tuple(scores.shape)}, logprobs {tuple(logprobs.shape)}, "
            f"ref_logprobs {tuple(ref_logprobs.shape)}, mask {tuple(mask.shape)}"
        )
    mask = mask.bool()
    kl = get_kl_estimator(kl_estimator)(logprobs, ref_logprobs)
    penalty = torch.where(mask, -kl_coef * kl, torch.zeros_like(kl))
    last = last_token_index(mask)
    has_tokens = last >= 0
    score_at_last = torch.zeros_like(penalty).scatter(
        1, last.clamp(min=0).unsqueeze(1), torch.where(has_tokens, scores.float(), 0.0).unsqueeze(1)
    )
    rewards = penalty + score_at_last
    totals = rewards.sum(-1)
    stats = RewardStats(
        kl=masked_sum(kl, mask, dim=-1).mean().detach(),
        score=scores.float().mean().detach(),
        non_score_reward=penalty.sum(-1).mean().detach(),
        reward_mean=totals.mean().detach(),
        reward_std=(totals.std() if totals.numel() > 1 else torch.zeros(())).detach(),
    )
    return rewards, stats


def generalized_advantage_estimation(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """GAE over the real tokens of each row: ``(advantages, returns)``, zero on masked entries.

    Masked positions are skipped, not treated as zero-value steps: a real token's successor is the next real
    token of its row.

    Args:
        rewards: ``(batch, seq)`` per-token rewards.
        values: ``(batch, seq)`` critic values at sampling time.
        mask: ``(batch, seq)`` true on real response tokens.
        gamma: discount factor.
        lam: GAE ``lambda``.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(
            f"shape mismatch: rewards {tuple(rewards.shape)}, values {tuple(values.shape)}, mask {tuple(mask.shape)}"
        )
    mask = mask.bool()
    rewards, values = rewards.float().detach(), values.float().detach()
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    columns = []
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        real = mask[:, t]
        columns.append(torch.where(real, advantage, 0.0))
        next_value = torch.where(real, values[:, t], next_value)
        next_advantage = torch.where(real, advantage, next_advantage)
    advantages = torch.stack(columns[::-1], dim=1)
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor | None = None) -> Tensor:
    """``1 - Var(returns - values) / Var(returns)`` over ``mask`` (``None``: all), each ``(batch, seq)``.

    1 is a perfect critic, 0 a constant, ``nan`` for returns of zero variance.
    """
    var_returns = masked_var(returns.float(), mask)
    residual = masked_var(returns.float() - values.float(), mask)
    undefined = torch.full_like(var_returns, float("nan"))
    return torch.where(var_returns > 0, 1.0 - residual / var_returns, undefined).detach()

