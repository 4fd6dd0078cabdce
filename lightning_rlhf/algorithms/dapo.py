"""DAPO's data-side pieces: dynamic sampling, the soft overlong penalty, and filtering truncated responses.

Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale"
(https://arxiv.org/abs/2503.14476). Its clip-higher and token-level loss live in
:mod:`lightning_rlhf.algorithms.grpo_loss` and :mod:`lightning_rlhf.algorithms.aggregation`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class DynamicSampling(NamedTuple):
    """Which rows survive dynamic sampling, and how many groups were dropped (to log, never silently)."""

    #: ``(batch,)`` bool, true on the rows of the groups that keep a learning signal
    keep: Tensor
    #: groups dropped because their scored rewards were all equal (or fewer than two were scored)
    num_dropped: int
    #: groups in the batch
    num_groups: int


def dynamic_sampling(scores: Tensor, num_generations: int, atol: float = 0.0) -> DynamicSampling:
    """Drop the groups whose rewards are all equal: their group-relative advantages are all zero.

    DAPO section 3.2 (dynamic sampling): a group that is all right or all wrong gives no gradient yet still
    counts in the batch, so fewer and fewer prompts carry the update as accuracy rises. DAPO over-samples
    and keeps only informative groups; the caller decides whether to refill the batch.

    Args:
        scores: ``(num_prompts * num_generations,)`` rewards, prompt-major; ``nan`` = no reward for the row.
        num_generations: samples per prompt (the group size).
        atol: rewards within ``atol`` of each other count as equal (0: exactly equal, as in the paper).

    Returns:
        :class:`DynamicSampling`; a group with fewer than two scored rows is dropped too (nothing to compare).
    """
    if num_generations < 1 or scores.dim() != 1 or scores.shape[0] % num_generations:
        raise ValueError(
            f"scores must be shaped (num_prompts * num_generations,) with num_generations={num_generations} >= 1, "
            f"got {tuple(scores.shape)}"
        )
    if atol < 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    groups = scores.detach().double().view(-1, num_generations)
    scored = ~groups.isnan()
    spread = groups.masked_fill(~scored, -torch.inf).amax(1) - groups.masked_fill(~scored, torch.inf).amin(1)
    informative = (scored.sum(1) >= 2) & (spread > atol)
    return DynamicSampling(
        keep=informative.repeat_interleave(num_generations),
        num_dropped=int((~informative).sum()),
        num_groups=groups.shape[0],
    )


def overlong_penalty(
    lengths: Tensor, max_length: int, buffer_length: int, penalty_factor: float = 1.0
) -> Tensor:
    """DAPO's soft overlong punishment: 0 up to ``max_length - buffer_length``, then linear down to
    ``-penalty_factor`` at ``max_length``, and ``-penalty_factor`` beyond.

    DAPO section 3.4, equation 13: truncated samples punished with a flat penalty add reward noise (a sound
    reasoning cut off looks like a wrong one); a penalty that grows over a buffer before the limit tells the
    policy to finish in time without that noise. Add it to the task reward.

    Args:
        lengths: ``(batch,)`` response lengths in tokens.
        max_length: ``L_max``, the longest response wanted (usually the generation's ``max_new_tokens``).
        buffer_length: ``L_cache``, the length of the linear ramp before ``max_length`` (DAPO: 4096 of 20480).
        penalty_factor: the penalty at and beyond ``max_length`` (veRL's ``overlong_penalty_factor``).

    Returns:
        ``(batch,)`` float penalties, each in ``[-penalty_factor, 0]``.
    """
    if not 0 < buffer_length <= max_length:
        raise ValueError(f"need 0 < buffer_length <= max_length, got buffer_length={buffer_length}, "
                         f"max_length={max_length}")
    if penalty_factor < 0:
        raise ValueError(f"penalty_factor must be >= 0, got {penalty_factor}")
    over = (lengths.float() - (max_length - buffer_length)) / buffer_length
    return -penalty_factor * over.clamp(0.0, 1.0)


def mask_truncated(mask: Tensor, truncated: Tensor) -> tuple[Tensor, int]:
    """Take responses cut off at the length limit out of the loss (DAPO's overlong filtering, section 3.4).

    Args:
        mask: ``(batch, seq)`` true on the response tokens that count.
        truncated: ``(batch,)`` bool, true where the response ended without EOS (hit the length limit).

    Returns:
        ``(mask, num_truncated)``: a new mask with the truncated rows all false, and how many rows those
        were (log it: the filtered samples are otherwise invisible).
    """
    if truncated.shape != mask.shape[:1]:
        raise ValueError(f"truncated must be shaped (batch,) = {tuple(mask.shape[:1])}, got {tuple(truncated.shape)}")
    truncated = truncated.bool()
    return mask.bool() & ~truncated.unsqueeze(1), int(truncated.sum())
